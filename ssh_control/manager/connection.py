"""One instance's connection on its owning worker: the state machine and its healing.

States move `disconnected -> connecting -> connected -> reconnecting -> (connected |
failed)`; every move is published to ConnectionStatus and stored as a ConnectionEvent.
A generation number cancels scheduled retries when a manual reconnect or a shutdown
supersedes them, and a single `reconnecting` flag merges duplicate triggers.
"""

import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from ssh_control import ssh
from ssh_control.choices import ConnectionEventType, ConnectionState
from ssh_control.exceptions import (
    ClaworcError,
    HostKeyMismatch,
    NoSSHConnection,
    SSHConnectionError,
)
from ssh_control.manager import publish
from ssh_control.manager.gate import PING_COMMAND, gate_open
from ssh_control.models import Instance
from ssh_control.tunnels.supervisor import get_supervisor

logger = logging.getLogger(__name__)

# How often a connection replaced by a key rotation is checked for open channels.
DRAIN_POLL_SECONDS = 1.0


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt` (1-based): base, doubling, capped."""
    base = settings.CLAWORC_SSH_RECONNECT_BASE_DELAY_SECONDS
    return min(base * 2 ** (attempt - 1), settings.CLAWORC_SSH_RECONNECT_MAX_DELAY_SECONDS)


class ManagedConnection:
    def __init__(self, manager, instance_id: int, state: str):
        self.manager = manager
        self.instance_id = instance_id
        self.state = state
        self.connection: ssh.Connection | None = None
        self.lock = threading.RLock()
        self.generation = 0
        self.retry = 0
        self.is_reconnecting = False
        self.is_closed = False
        self.check_lock = threading.Lock()
        self._connected_since = 0.0
        # (ssh_host, ssh_port, ssh_user) of the latest connect attempt.
        self.endpoint: tuple | None = None

    def __repr__(self):
        return f"ManagedConnection(instance={self.instance_id}, state={self.state})"

    def instance(self) -> Instance:
        return Instance.objects.get(pk=self.instance_id)

    def live_connection(self) -> ssh.Connection:
        """The open connection, for tunnels, commands and files on this worker."""
        connection = self.connection
        if connection is None:
            raise NoSSHConnection(f"instance {self.instance_id} is {self.state}")
        return connection

    # State publication; callers hold `lock`, so events are stored in transition order.

    def _transition(self, to_state: str, event_type: str, reason: str, **fields) -> None:
        from_state, self.state = self.state, to_state
        # The event first: whoever reads the new state finds the event that led to it.
        publish.event_record(
            self.instance_id, event_type, from_state=from_state, to_state=to_state, reason=reason
        )
        publish.status_update(
            self.instance_id, state=to_state, owner_node=self.manager.node, **fields
        )
        logger.info(
            "state instance=%s from=%s to=%s reason=%s",
            self.instance_id,
            from_state,
            to_state,
            reason,
        )

    # Opening and closing.

    def start(self, reason: str) -> None:
        """Begin connecting after the lease was claimed; a failed instance stays failed."""
        with self.lock:
            if self.state == ConnectionState.FAILED:
                publish.status_update(self.instance_id, owner_node=self.manager.node)
                return
            self._transition(ConnectionState.CONNECTING, ConnectionEventType.CONNECTING, reason)
            generation = self.generation
        self.manager.submit(self._first_connect, generation)

    def _first_connect(self, generation: int) -> None:
        try:
            connection = self._open()
        except HostKeyMismatch as exc:
            self._fail(generation, exc.message)
        except ClaworcError as exc:
            retry_after = getattr(exc, "retry_after", 0) or 0
            self._begin_reconnect(generation, f"connect failed: {exc.message}", retry_after)
        else:
            self._connected(generation, connection, "connected")

    def _open(self) -> ssh.Connection:
        if not self.manager.owns(self.instance_id):
            raise NoSSHConnection(f"lease on instance {self.instance_id} no longer held")
        try:
            instance = self.instance()
            self.endpoint = (instance.ssh_host, instance.ssh_port, instance.ssh_user)
            return gate_open(
                instance, slots=self.manager.slots, holds_lease=self.manager.holds_lease
            )
        except ClaworcError:
            raise
        except Exception as exc:
            # A database or programming error counts as a failed attempt, so the healing
            # goes on instead of leaving the instance stuck mid-attempt.
            logger.exception("connect attempt failed instance=%s", self.instance_id)
            raise SSHConnectionError(f"connect attempt failed: {type(exc).__name__}") from exc

    def _connected(self, generation, connection, reason: str, *, actor=None) -> bool:
        with self.lock:
            if generation != self.generation or self.is_closed:
                connection.close()
                self.manager.slots.release()
                return False
            self.connection = connection
            self._connected_since = time.monotonic()
            self.is_reconnecting = False
            self.retry = 0
            now = timezone.now()
            self._transition(
                ConnectionState.CONNECTED,
                ConnectionEventType.CONNECTED,
                reason,
                is_healthy=True,
                connected_at=now,
                last_health_check_at=now,
                last_error="",
            )
            # The instance's tunnels now ride this connection (replacing any older one's);
            # attached under the lock, so a concurrent drop cannot leave them on a dead one.
            get_supervisor().attach(self.instance_id, connection)
        publish.audit_established(
            self.instance(),
            fingerprint=connection.host_key.fingerprint,
            local_address=connection.local_address,
            actor=actor,
        )
        return True

    def _drop(self, reason: str, *, actor=None, expected=None) -> bool:
        """Close the current connection (caller holds no lock) and audit its end.

        With `expected`, only if that is still the current connection: a check that
        judged one connection dead must not drop the one that replaced it meanwhile.
        """
        with self.lock:
            connection = self.connection
            if connection is None or (expected is not None and expected is not connection):
                return False
            self.connection = None
            duration = time.monotonic() - self._connected_since
        try:
            # A tunnel never outlives the connection it runs on.
            get_supervisor().detach(self.instance_id, reason, connection=connection)
        finally:
            connection.close()
            self.manager.slots.release()
        try:
            instance = self.instance()
        except Instance.DoesNotExist:
            return True
        except DatabaseError:
            instance = None  # the audit writer keeps the entry until the database is back
        publish.audit_terminated(
            instance,
            instance_id=self.instance_id,
            reason=reason,
            duration_seconds=duration,
            actor=actor,
        )
        return True

    def close(self, reason: str, *, publish_state: bool) -> None:
        """Stop managing: on shutdown (publishing `disconnected`) or when the lease is lost."""
        with self.lock:
            self.is_closed = True
            self.generation += 1
        self._drop(reason)
        if publish_state:
            with self.lock:
                self._transition(
                    ConnectionState.DISCONNECTED,
                    ConnectionEventType.DISCONNECTED,
                    reason,
                    is_healthy=False,
                )

    # Healing.

    def _begin_reconnect(self, generation: int, reason: str, retry_after: float = 0) -> None:
        with self.lock:
            if generation != self.generation or self.is_closed or self.is_reconnecting:
                return
            self.is_reconnecting = True
            self.retry = 0
            # Scheduled before the writes, so a failing database cannot stall the healing.
            self.manager.schedule(max(backoff_delay(1), retry_after), self._retry, generation)
            self._transition(
                ConnectionState.RECONNECTING,
                ConnectionEventType.RECONNECTING,
                reason,
                is_healthy=False,
                last_error=reason,
            )

    def _retry(self, generation: int) -> None:
        with self.lock:
            if generation != self.generation or self.is_closed or not self.is_reconnecting:
                return
            self.retry += 1
            attempt = self.retry
        try:
            connection = self._open()
        except HostKeyMismatch as exc:
            self._fail(generation, exc.message)
            return
        except ClaworcError as exc:
            self._retry_failed(generation, attempt, exc)
            return
        self._connected(generation, connection, f"reconnected after {attempt} attempt(s)")

    def _retry_failed(self, generation: int, attempt: int, exc: ClaworcError) -> None:
        limit = settings.CLAWORC_SSH_RECONNECT_MAX_RETRIES
        if attempt >= limit:
            self._fail(generation, f"reconnection failed after {attempt} attempts: {exc.message}")
            return
        delay = max(backoff_delay(attempt + 1), getattr(exc, "retry_after", 0) or 0)
        with self.lock:
            if generation != self.generation:
                return
            # Scheduled before the writes, so a failing database cannot stall the healing.
            self.manager.schedule(delay, self._retry, generation)
            publish.event_record(
                self.instance_id,
                ConnectionEventType.RECONNECT_FAILED,
                from_state=self.state,
                to_state=self.state,
                reason=f"attempt {attempt}/{limit} failed: {exc.message}; "
                f"next attempt in {delay:g}s",
            )
            publish.status_update(self.instance_id, last_error=exc.message)

    def _fail(self, generation: int, reason: str) -> None:
        with self.lock:
            if generation != self.generation:
                return
            self.is_reconnecting = False
            self._transition(
                ConnectionState.FAILED,
                ConnectionEventType.FAILED,
                reason,
                is_healthy=False,
                last_error=reason,
            )

    def connection_lost(self, reason: str, connection: ssh.Connection | None = None) -> None:
        """The connection (`connection`, else whichever is current) is dead: close it,
        audit, and start reconnecting."""
        with self.lock:
            generation = self.generation
        if self._drop(reason, expected=connection):
            self._begin_reconnect(generation, reason)

    def endpoint_seen(self, endpoint: tuple) -> None:
        """The lease round read the instance's (host, port, user): a change reconnects a
        connected instance at once and gives a failed one a fresh attempt."""
        if self.endpoint is None or endpoint == self.endpoint:
            return
        host, port, user = endpoint
        # An attempt in flight is judged once it ends; the next attempt of a reconnect
        # reads the new endpoint anyway.
        if self.state == ConnectionState.CONNECTED:
            self.endpoint = endpoint
            self.manager.submit(
                self.connection_lost,
                f"SSH endpoint changed to {user}@{host}:{port}",
                self.connection,
            )
        elif self.state == ConnectionState.FAILED:
            self.endpoint = endpoint
            self.manager.submit(self.retry_failed)

    # Health.

    def keepalive_failed(self, connection: ssh.Connection, error: str) -> None:
        """Second tier: a failed keepalive is confirmed (or not) by `echo ping`.

        The caller took `check_lock`, so sweeps skip this instance until the check ends.
        """
        try:
            if connection is not self.connection:
                return
            publish.event_record(
                self.instance_id,
                ConnectionEventType.KEEPALIVE_FAILED,
                from_state=self.state,
                to_state=self.state,
                reason=error,
            )
            self._health_check()
        finally:
            self.check_lock.release()

    def health_check(self) -> bool:
        """`echo ping` over the connection; one check at a time, later triggers merge."""
        if not self.check_lock.acquire(blocking=False):
            return False
        try:
            return self._health_check()
        finally:
            self.check_lock.release()

    def _health_check(self) -> bool:
        connection = self.connection
        if connection is None:
            return False
        try:
            result = connection.run(
                PING_COMMAND, timeout=settings.CLAWORC_SSH_HEALTH_CHECK_TIMEOUT_SECONDS
            )
            if result.stdout.strip() != b"ping":
                raise NoSSHConnection(f"'{PING_COMMAND}' answered {result.stdout[:40]!r}")
        except ClaworcError as exc:
            if connection is not self.connection:
                return False
            reason = f"health check failed: {exc.message}"
            publish.check_failed(self.instance_id, reason)
            publish.event_record(
                self.instance_id,
                ConnectionEventType.HEALTH_CHECK_FAILED,
                from_state=self.state,
                to_state=self.state,
                reason=reason,
            )
            self.connection_lost(reason, connection)
            return False
        publish.checks_passed([self.instance_id])
        return True

    # Requests from the API.

    def reconnect_now(self, *, actor: str | None) -> None:
        """Drop the connection and connect afresh, also from `failed`; raises on failure."""
        who = actor or "system"
        with self.lock:
            if self.is_closed:
                raise NoSSHConnection(f"instance {self.instance_id} is no longer managed here")
            self.generation += 1
            generation = self.generation
            self.is_reconnecting = False
        self._drop("manual reconnect", actor=actor)
        with self.lock:
            self._transition(
                ConnectionState.CONNECTING,
                ConnectionEventType.CONNECTING,
                f"manual reconnect requested by {who}",
            )
        try:
            connection = self._open()
        except HostKeyMismatch as exc:
            self._fail(generation, exc.message)
            raise
        except ClaworcError as exc:
            retry_after = getattr(exc, "retry_after", 0) or 0
            self._begin_reconnect(generation, f"connect failed: {exc.message}", retry_after)
            raise
        if not self._connected(generation, connection, f"manual reconnect by {who}", actor=actor):
            raise NoSSHConnection(
                f"reconnect of instance {self.instance_id} superseded by a later request"
            )

    def retry_failed(self) -> None:
        """The slow background retry: one attempt for a `failed` instance."""
        with self.lock:
            if self.state != ConnectionState.FAILED or self.is_closed:
                return
            generation = self.generation
            self._transition(
                ConnectionState.CONNECTING,
                ConnectionEventType.CONNECTING,
                "periodic retry of a failed instance",
            )
        try:
            connection = self._open()
        except ClaworcError as exc:
            self._fail(generation, f"periodic retry failed: {exc.message}")
            return
        self._connected(generation, connection, "periodic retry succeeded")

    # Key rotation (#5).

    def switch_connection(self, connection: ssh.Connection, reason: str, *, actor=None) -> None:
        """Make `connection` (opened through the gate, holding a slot) the live one.

        The tunnels keep their listeners and ports and open their next channels over it;
        the old connection closes once its open channels (requests in flight, sessions)
        end or CLAWORC_KEY_ROTATION_DRAIN_SECONDS pass.
        """
        with self.lock:
            if self.is_closed:
                connection.close()
                self.manager.slots.release()
                raise NoSSHConnection(f"instance {self.instance_id} is no longer managed here")
            self.generation += 1
            self.is_reconnecting = False
            old, since = self.connection, self._connected_since
            tunnels = get_supervisor().tunnels_of(self.instance_id)
            if tunnels is not None and old is not None and tunnels.connection is old:
                tunnels.connection = connection
            self._connected(self.generation, connection, reason, actor=actor)
        if old is not None:
            deadline = time.monotonic() + settings.CLAWORC_KEY_ROTATION_DRAIN_SECONDS
            self._close_when_drained(old, since, deadline)

    def _close_when_drained(self, old: ssh.Connection, since: float, deadline: float) -> None:
        if old.is_open and ssh.open_channel_count(old) and time.monotonic() < deadline:
            self.manager.schedule(
                DRAIN_POLL_SECONDS, self._close_when_drained, old, since, deadline
            )
            return
        old.close()
        self.manager.slots.release()
        publish.audit_terminated(
            self.instance(),
            reason="replaced by a connection with the rotated key",
            duration_seconds=time.monotonic() - since,
        )
