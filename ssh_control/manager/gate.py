"""The connection gate: every path that opens an SSH connection goes through `gate_open`.

In order: a free connection slot, the rate limit and failure block (shared counters),
the source-IP restriction, then the connection itself with the pinned host key, proven
by running `echo ping`. A refusal sends nothing to the agent.
"""

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from audit.choices import AuditEventType
from audit.services import audit_record
from ssh_control import keys, ssh
from ssh_control.choices import ConnectionEventType, HostKeyPinSource
from ssh_control.exceptions import (
    ConnectionBlocked,
    ConnectionLimitReached,
    HostKeyMismatch,
    NoSSHConnection,
    RateLimited,
    SourceIPBlocked,
    SSHConnectionError,
    SSHUnreachable,
)
from ssh_control.manager.counters import attempt_counters
from ssh_control.manager.publish import audit_failed, event_record
from ssh_control.models import HostKeyPin, Instance
from ssh_control.validators import allowed_networks

logger = logging.getLogger(__name__)

PING_COMMAND = "echo ping"


class SlotPool:
    """Counts open connections against CLAWORC_SSH_MAX_CONNECTIONS."""

    def __init__(self):
        self._lock = threading.Lock()
        self.used = 0

    def reserve(self) -> None:
        limit = settings.CLAWORC_SSH_MAX_CONNECTIONS
        with self._lock:
            if self.used >= limit:
                raise ConnectionLimitReached(limit)
            self.used += 1

    def release(self) -> None:
        with self._lock:
            self.used = max(0, self.used - 1)


@dataclass(frozen=True)
class Endpoint:
    family: int
    sockaddr: tuple
    source_ip: str


def endpoints_resolve(instance: Instance) -> list[Endpoint]:
    """Every address of the agent, in resolver order, each with our source address toward
    it (no packet sent); an address with no route is left out unless none has one."""
    endpoints, error = [], None
    for family, sockaddr in dict.fromkeys(ssh.resolve(instance.ssh_host, instance.ssh_port)):
        try:
            source_ip = ssh.route_source_address(family, sockaddr)
        except SSHConnectionError as exc:
            error = error or exc
            continue
        endpoints.append(Endpoint(family, sockaddr, source_ip))
    if not endpoints:
        raise error
    return endpoints


def source_ip_allowed(source_ip: str, allowed: str) -> bool:
    networks = allowed_networks(allowed)
    if not networks:
        return True
    address = ipaddress.ip_address(source_ip)
    candidates = [address]
    if address.version == 4:
        candidates.append(ipaddress.ip_address(f"::ffff:{address}"))
    return any(candidate in network for candidate in candidates for network in networks)


def source_ip_filter(instance: Instance, endpoints: list[Endpoint]) -> list[Endpoint]:
    """The endpoints our source address may reach; refused (audited) when there are none."""
    allowed = [
        endpoint
        for endpoint in endpoints
        if source_ip_allowed(endpoint.source_ip, instance.allowed_source_ips)
    ]
    if not allowed:
        _source_ip_refuse(instance, endpoints[0])
    return allowed


def _source_ip_refuse(instance: Instance, endpoint: Endpoint) -> None:
    """Record and raise the refusal of our source address toward `endpoint`."""
    error = SourceIPBlocked(endpoint.source_ip)
    logger.warning("connection refused instance=%s reason=ip_restricted", instance.name)
    event_record(instance.pk, ConnectionEventType.IP_RESTRICTED, reason=error.message)
    audit_record(
        AuditEventType.IP_RESTRICTED,
        instance=instance,
        details=f"{error.message} (allowed: {instance.allowed_source_ips})",
        data={"source_ip": endpoint.source_ip, "allowed": instance.allowed_source_ips},
    )
    raise error


def attempt_check(instance: Instance) -> None:
    """Count this attempt against the rate limit, or refuse it while limited or blocked."""
    verdict = attempt_counters().attempt(instance.pk)
    if verdict.verdict == "ok":
        return
    if verdict.verdict == "blocked":
        until = datetime.fromtimestamp(time.time() + verdict.retry_after, tz=UTC)
        error = ConnectionBlocked(
            f"connection blocked for {instance.name} due to {verdict.count} consecutive "
            f"failures; retry after {until.isoformat(timespec='seconds')}"
        )
    else:
        error = RateLimited(
            f"rate limit exceeded for {instance.name}: {verdict.count} connection attempts "
            f"in the last minute (max {settings.CLAWORC_SSH_RATE_LIMIT_ATTEMPTS})"
        )
    error.retry_after = verdict.retry_after
    logger.warning("connection refused instance=%s reason=%s", instance.name, verdict.verdict)
    event_record(instance.pk, ConnectionEventType.RATE_LIMITED, reason=error.message)
    raise error


def gate_open(
    instance: Instance,
    *,
    slots: SlotPool,
    holds_lease: Callable[[int], bool] | None = None,
    private_key=None,
    password: str | None = None,
) -> ssh.Connection:
    """Open a verified connection; the caller owns one slot until it closes it.

    `holds_lease(instance_id)` is the owning worker's check that its lease on the
    instance is still live (the one-time key installation, which runs before any worker
    can log in, has none). `private_key` (an Ed25519PrivateKey) replaces the instance's
    stored key, for a key rotation's test of its new key; `password` logs in with a
    password instead, for the one-time installation of the instance's key.
    """
    if holds_lease is not None and not holds_lease(instance.pk):
        raise NoSSHConnection(f"lease on instance {instance.name} is not held by this worker")
    slots.reserve()
    try:
        attempt_check(instance)
        endpoints = source_ip_filter(instance, _resolve_counted(instance))
        return _connect_counted(instance, endpoints, private_key, password)
    except BaseException:
        slots.release()
        raise


def _resolve_counted(instance: Instance) -> list[Endpoint]:
    """The agent's addresses; a name that does not resolve is a failed attempt."""
    started = time.monotonic()
    try:
        return endpoints_resolve(instance)
    except SSHConnectionError as exc:
        _failure_record(instance, exc, started)
        raise


def _connect_counted(
    instance: Instance, endpoints: list[Endpoint], private_key, password
) -> ssh.Connection:
    """One counted attempt over the agent's addresses: the next address is tried only when
    the TCP connection to the previous one failed, as OpenSSH's client does."""
    counters = attempt_counters()
    started = time.monotonic()
    try:
        connection = _connect_first_reachable(instance, endpoints, private_key, password)
    except HostKeyMismatch as exc:
        counters.failure(instance.pk)
        _record_mismatch(instance, exc)
        raise
    except SSHConnectionError as exc:
        _failure_record(instance, exc, started)
        raise
    counters.success(instance.pk)
    return connection


def _failure_record(instance: Instance, exc: SSHConnectionError, started: float) -> None:
    failures = attempt_counters().failure(instance.pk)
    logger.warning("connect failed instance=%s failures=%s error=%s", instance.name, failures, exc)
    audit_failed(instance, error=exc.message, duration_ms=_elapsed_ms(started))


def _connect_first_reachable(
    instance: Instance, endpoints: list[Endpoint], private_key, password
) -> ssh.Connection:
    for endpoint in endpoints[:-1]:
        try:
            return _connect(instance, endpoint, private_key, password)
        except SSHUnreachable as exc:
            logger.info(
                "address unreachable instance=%s address=%s error=%s; trying the next",
                instance.name,
                endpoint.sockaddr[0],
                exc,
            )
    return _connect(instance, endpoints[-1], private_key, password)


def _connect(instance: Instance, endpoint: Endpoint, private_key, password) -> ssh.Connection:
    pin = HostKeyPin.objects.filter(instance=instance).first()
    pinned = ssh.HostKey(pin.key_type, pin.public_key, pin.fingerprint) if pin else None
    target = {"family": endpoint.family, "sockaddr": endpoint.sockaddr, "pinned": pinned}
    timeout = settings.CLAWORC_SSH_CONNECT_TIMEOUT_SECONDS
    if password is not None:
        connection = ssh.connect_with_password(
            **target, username=instance.ssh_user, password=password, timeout=timeout
        )
    else:
        # The key file the database names, which may still be a rotation's pending file.
        private_key = private_key or keys.load_private_key(
            instance.name, fingerprint=instance.ssh_key_fingerprint
        )
        connection = ssh.connect(
            **target, username=instance.ssh_user, private_key=private_key, timeout=timeout
        )
    try:
        # A first command also ends sshd's Nagle delay for the later ones.
        result = connection.run(
            PING_COMMAND, timeout=settings.CLAWORC_SSH_HEALTH_CHECK_TIMEOUT_SECONDS
        )
        if result.stdout.strip() != b"ping":
            raise SSHConnectionError(f"'{PING_COMMAND}' answered {result.stdout[:40]!r}")
        if pin is None:
            _pin_first_contact(instance, connection.host_key)
    except BaseException:
        connection.close()
        raise
    return connection


def _pin_first_contact(instance: Instance, host_key: ssh.HostKey) -> None:
    try:
        HostKeyPin.objects.create(
            instance=instance,
            key_type=host_key.key_type,
            public_key=host_key.public_key,
            fingerprint=host_key.fingerprint,
            source=HostKeyPinSource.FIRST_CONTACT,
        )
    except IntegrityError:
        # Pinned concurrently: the stored pin wins, so check against it.
        pin = HostKeyPin.objects.get(instance=instance)
        if pin.fingerprint != host_key.fingerprint:
            raise ssh.host_key_mismatch(pin.fingerprint, host_key) from None
        return
    logger.info("host key pinned instance=%s fingerprint=%s", instance.name, host_key.fingerprint)


def _record_mismatch(instance: Instance, exc: HostKeyMismatch) -> None:
    offered = exc.offered
    HostKeyPin.objects.filter(instance=instance).update(
        offered_key_type=offered.key_type,
        offered_public_key=offered.public_key,
        offered_fingerprint=offered.fingerprint,
        offered_at=timezone.now(),
    )
    logger.warning("host key refused instance=%s offered=%s", instance.name, offered.fingerprint)
    event_record(instance.pk, ConnectionEventType.FINGERPRINT_MISMATCH, reason=exc.message)
    audit_record(
        AuditEventType.FINGERPRINT_MISMATCH,
        instance=instance,
        details=exc.message,
        data={"expected": exc.expected, "actual": offered.fingerprint},
    )


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
