"""Keeps every connected instance's expected tunnels alive on the SSH worker.

The connection manager calls `attach(instance_id, connection)` when a connection is
established and `detach(instance_id, reason)` when it is lost, so a tunnel never outlives
the connection it runs on. In between, the supervisor's loop runs the two health tiers:
a per-instance monitor (every `CLAWORC_TUNNEL_MONITOR_INTERVAL_SECONDS`) that probes the
tunnels and recreates missing or failed ones with backoff, and a global check of every
tunnel (every `CLAWORC_TUNNEL_GLOBAL_CHECK_INTERVAL_SECONDS`). A probe opens a channel
through the SSH connection to the agent's service, so it fails when either is dead.
Everything observed is published to the `Tunnel` rows.
"""

import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import F
from django.utils import timezone

from ssh_control.choices import TunnelStatus
from ssh_control.models import Tunnel
from ssh_control.tunnels import services as tunnel_services
from ssh_control.tunnels.forwarder import ConnectionLimiter, TunnelListener

logger = logging.getLogger(__name__)

AGENT_HOST = "127.0.0.1"
PROBE_ERROR = "TCP probe to {address} failed: {reason}"


@dataclass
class _Retry:
    failures: int = 0
    next_attempt: float = 0.0


class InstanceTunnels:
    """The listeners of one instance, all carried by one SSH connection."""

    def __init__(self, supervisor: "TunnelSupervisor", instance_id: int, connection):
        self.supervisor = supervisor
        self.instance_id = instance_id
        self.connection = connection
        self.listeners: dict[int, TunnelListener] = {}
        self.retries: dict[int, _Retry] = {}
        self.limiter = ConnectionLimiter(
            settings.CLAWORC_TUNNEL_MAX_CONNECTIONS_PER_INSTANCE, scope="instance"
        )
        self.next_monitor = 0.0
        self.busy = threading.Lock()
        self.closed = False

    def open_channel(self, port: int):
        return self.connection.open_direct_tcpip(
            AGENT_HOST, port, timeout=settings.CLAWORC_TUNNEL_PROBE_TIMEOUT_SECONDS
        )

    def probe(self, listener: TunnelListener) -> str | None:
        """None when a channel reaches the agent's service, else the error text."""
        try:
            self.open_channel(listener.remote_port).close()
        except Exception as exc:
            return PROBE_ERROR.format(address=listener.address, reason=exc)
        return None

    def monitor(self) -> None:
        """Probe existing tunnels, create missing ones that are due, drop removed ones."""
        rows = {row.pk: row for row in tunnel_services.tunnel_rows_for_worker(self.instance_id)}
        for tunnel_id in set(self.listeners) - set(rows):
            self._close_listener(tunnel_id)

        now = time.monotonic()
        for row in rows.values():
            listener = self.listeners.get(row.pk)
            if listener is not None and listener.remote_port != row.remote_port:
                self._close_listener(row.pk)
                listener = None
            if listener is not None:
                self._check(row.pk, listener)
            elif self.retries.get(row.pk, _Retry()).next_attempt <= now:
                self._create(row)
        self.flush_bytes()

    def check_all(self) -> None:
        for tunnel_id, listener in list(self.listeners.items()):
            self._check(tunnel_id, listener)
        self.flush_bytes()

    def due_for_retry(self, now: float) -> bool:
        return any(
            retry.failures and retry.next_attempt <= now and tunnel_id not in self.listeners
            for tunnel_id, retry in self.retries.items()
        )

    def _create(self, row: Tunnel) -> None:
        if self.closed:
            return
        listener = TunnelListener(
            label=f"{self.instance_id}-{row.name or row.service}",
            bind_host=settings.CLAWORC_TUNNEL_BIND_HOST,
            remote_port=row.remote_port,
            open_channel=self.open_channel,
            limiters=(self.limiter, self.supervisor.limiter),
            on_refused=functools.partial(_publish_refusal, row.pk),
        )
        error = self.probe(listener)
        if error:
            listener.close()
            self._schedule_retry(row.pk)
            _publish(row.pk, status=TunnelStatus.UNHEALTHY, local_port=None, last_error=error)
            logger.warning("tunnel not started instance=%s tunnel=%s error=%s",
                           self.instance_id, row.pk, error)  # fmt: skip
            return

        self.listeners[row.pk] = listener
        self.retries.pop(row.pk, None)
        now = timezone.now()
        _publish(
            row.pk,
            status=TunnelStatus.ACTIVE,
            bind_host=listener.bind_host,
            local_port=listener.port,
            started_at=now,
            last_check_at=now,
            last_error="",
        )
        logger.info("tunnel started instance=%s tunnel=%s listen=%s remote_port=%s",
                    self.instance_id, row.pk, listener.address, row.remote_port)  # fmt: skip

    def _check(self, tunnel_id: int, listener: TunnelListener) -> None:
        error = self.probe(listener)
        if error is None:
            _publish(
                tunnel_id,
                status=TunnelStatus.ACTIVE,
                local_port=listener.port,
                last_check_at=timezone.now(),
            )
            return
        self._close_listener(tunnel_id)
        self._schedule_retry(tunnel_id)
        _publish(tunnel_id, status=TunnelStatus.UNHEALTHY, local_port=None, last_error=error)
        logger.warning("tunnel unhealthy instance=%s tunnel=%s error=%s",
                       self.instance_id, tunnel_id, error)  # fmt: skip

    def _schedule_retry(self, tunnel_id: int) -> None:
        retry = self.retries.setdefault(tunnel_id, _Retry())
        retry.failures += 1
        delay = min(
            settings.CLAWORC_TUNNEL_MAX_BACKOFF_SECONDS,
            settings.CLAWORC_TUNNEL_BASE_BACKOFF_SECONDS * 2 ** (retry.failures - 1),
        )
        retry.next_attempt = time.monotonic() + delay

    def _close_listener(self, tunnel_id: int) -> None:
        listener = self.listeners.pop(tunnel_id, None)
        if listener is not None:
            listener.close()
            _add_bytes(tunnel_id, listener.take_bytes())

    def flush_bytes(self) -> None:
        for tunnel_id, listener in list(self.listeners.items()):
            _add_bytes(tunnel_id, listener.take_bytes())

    def shutdown(self, reason: str) -> None:
        """Close every listener and publish the tunnels as down with `reason`."""
        self.closed = True
        with self.busy:
            listeners, self.listeners = self.listeners, {}
            # Closed first, so no database trouble keeps one open.
            for listener in listeners.values():
                listener.close()
            try:
                for tunnel_id, listener in listeners.items():
                    _add_bytes(tunnel_id, listener.take_bytes())
                Tunnel.objects.filter(instance_id=self.instance_id).update(
                    status=TunnelStatus.UNHEALTHY, local_port=None, last_error=reason
                )
            except DatabaseError:
                # The listeners are closed all the same; the rows catch up at the next attach.
                logger.exception("tunnel state not published instance=%s", self.instance_id)


def _publish(tunnel_id: int, **fields) -> None:
    Tunnel.objects.filter(pk=tunnel_id).update(**fields)


def _publish_refusal(tunnel_id: int, reason: str, count: int) -> None:
    """Count connections refused over a cap on the row, where the browser proxy reads it."""
    # Runs on the forwarder's long-lived refusal thread: a connection broken since the
    # last batch (the database restarted) is replaced, not used.
    close_old_connections()
    Tunnel.objects.filter(pk=tunnel_id).update(
        refused_count=F("refused_count") + count, last_refusal=reason
    )


def _add_bytes(tunnel_id: int, count: int) -> None:
    if count:
        Tunnel.objects.filter(pk=tunnel_id).update(bytes_transferred=F("bytes_transferred") + count)


class TunnelSupervisor:
    """All instances' tunnels on this worker, and the loop that keeps them healthy."""

    def __init__(self):
        self.limiter = ConnectionLimiter(
            settings.CLAWORC_TUNNEL_MAX_CONNECTIONS_PER_WORKER, scope="worker"
        )
        self._instances: dict[int, InstanceTunnels] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tunnel-check")
        self._next_global = time.monotonic() + settings.CLAWORC_TUNNEL_GLOBAL_CHECK_INTERVAL_SECONDS
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tunnel-supervisor")
        self._thread.start()

    def attach(self, instance_id: int, connection) -> None:
        """Serve the instance's tunnels over `connection`, replacing any older one's."""
        with self._lock:
            previous = self._instances.get(instance_id)
            if previous is not None and previous.connection is connection:
                return
            self._instances.pop(instance_id, None)
        # The old set publishes its tunnels as down before the new set publishes any.
        if previous is not None:
            previous.shutdown("SSH connection replaced")
        with self._lock:
            self._instances[instance_id] = InstanceTunnels(self, instance_id, connection)
        self._wake.set()

    def detach(self, instance_id: int, reason: str, *, connection=None) -> None:
        """Close the instance's tunnels; with `connection`, only if they ride that one."""
        with self._lock:
            tunnels = self._instances.get(instance_id)
            if tunnels is None or (connection is not None and tunnels.connection is not connection):
                return
            del self._instances[instance_id]
        tunnels.shutdown(f"SSH connection down: {reason}")

    def tunnels_of(self, instance_id: int) -> InstanceTunnels | None:
        return self._instances.get(instance_id)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for instance_id in list(self._instances):
            self.detach(instance_id, "worker stopping")
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        tick = min(0.5, settings.CLAWORC_TUNNEL_MONITOR_INTERVAL_SECONDS / 4)
        while not self._stop.is_set():
            now = time.monotonic()
            run_global = now >= self._next_global
            if run_global:
                self._next_global = now + settings.CLAWORC_TUNNEL_GLOBAL_CHECK_INTERVAL_SECONDS
            for tunnels in list(self._instances.values()):
                if run_global:
                    self._submit(tunnels, tunnels.check_all)
                if now >= tunnels.next_monitor or tunnels.due_for_retry(now):
                    tunnels.next_monitor = now + settings.CLAWORC_TUNNEL_MONITOR_INTERVAL_SECONDS
                    self._submit(tunnels, tunnels.monitor)
            self._wake.wait(tick)
            self._wake.clear()

    def _submit(self, tunnels: InstanceTunnels, job) -> None:
        def run():
            # One job per instance at a time; a slow probe delays only its own instance.
            if not tunnels.busy.acquire(blocking=False):
                return
            try:
                if not tunnels.closed:
                    job()
            except Exception:
                logger.exception("tunnel job failed instance=%s", tunnels.instance_id)
            finally:
                tunnels.busy.release()
                close_old_connections()

        try:
            self._pool.submit(run)
        except RuntimeError:
            logger.debug("tunnel pool stopped; job dropped instance=%s", tunnels.instance_id)


_supervisor: TunnelSupervisor | None = None
_supervisor_lock = threading.Lock()


def get_supervisor() -> TunnelSupervisor:
    """This worker's supervisor, started on first use."""
    global _supervisor
    with _supervisor_lock:
        if _supervisor is None:
            _supervisor = TunnelSupervisor()
        return _supervisor
