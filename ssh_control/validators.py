"""Validation of operator input shared by the API, the admin and the services."""

import ipaddress
import re

from django.core.exceptions import ValidationError

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def validate_ssh_host(value: str) -> None:
    """A DNS name or an IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if not value or len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValidationError(f"{value[:80]!r} is not a host name or IP address", code="invalid")


def parse_allowed_ips(value: str) -> str:
    """Normalise a comma-separated list of IPs and CIDRs; empty means unrestricted.

    Raises ValidationError naming the first entry that is neither.
    """
    if not isinstance(value, str):
        raise ValidationError("allowed_ips must be a string", code="invalid")
    entries = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            shown = entry if len(entry) <= 80 else entry[:80] + "..."
            raise ValidationError(
                f"invalid IP address or CIDR: {shown!r}", code="invalid"
            ) from None
        if "/" in entry:
            entries.append(str(network))
        else:
            entries.append(str(network.network_address))
    return ", ".join(dict.fromkeys(entries))


def allowed_networks(value: str) -> list:
    """The parsed networks of a stored allowed list (already normalised)."""
    return [
        ipaddress.ip_network(entry.strip(), strict=False)
        for entry in value.split(",")
        if entry.strip()
    ]
