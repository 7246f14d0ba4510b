"""Typed readers for settings taken from the environment.

Every reader names the variable in its error, so a bad value stops start-up with a
message an operator can act on.
"""

import ipaddress
import os

from django.core.exceptions import ImproperlyConfigured


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str | None = None) -> str | None:
    value = _raw(name)
    return default if value is None else value


def env_seconds(name: str, default: float, *, allow_zero: bool = False) -> float:
    """A duration in (float) seconds; must be positive, or zero where zero means off."""
    value = _raw(name)
    if value is None:
        return float(default)
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number of seconds") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name}={value!r} is not a finite number of seconds")
    if number < 0 or (number == 0 and not allow_zero):
        limit = "zero or more" if allow_zero else "more than zero"
        raise ImproperlyConfigured(f"{name}={value!r} must be {limit} seconds")
    return number


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} must be at least {minimum}")
    return number


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true or false)")


def env_networks(name: str) -> tuple:
    """A comma-separated list of IP addresses and CIDR networks."""
    value = _raw(name)
    if value is None:
        return ()
    networks = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {entry!r} is not an IP address or CIDR") from None
    return tuple(networks)


def env_ip(name: str, default: str) -> str:
    value = _raw(name) or default
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an IP address") from None
    return value
