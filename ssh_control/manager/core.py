"""The connection manager of one SSH worker: leases, the health sweeps and the work pool.

A handful of long-lived threads do the periodic work (lease heartbeat and claims,
keepalive sweep, `echo ping` sweep, slow retry of failed instances); connects, retries
and health checks run on a bounded pool, so hundreds of instances need neither a thread
nor a database connection each.
"""

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import DateTimeField, ExpressionWrapper, Q
from django.db.models.functions import Now

from ssh_control.choices import ConnectionEventType, ConnectionState
from ssh_control.exceptions import ClaworcError, SSHManagerUnavailable
from ssh_control.manager import publish
from ssh_control.manager.connection import ManagedConnection
from ssh_control.manager.gate import SlotPool
from ssh_control.models import ConnectionStatus, Instance, InstanceLease

logger = logging.getLogger(__name__)


class Scheduler:
    """Runs callables on the pool after a delay, from one timer thread."""

    def __init__(self, submit):
        self._submit = submit
        self._heap = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="ssh-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify()

    def call_later(self, delay: float, function, *args) -> None:
        with self._condition:
            due = time.monotonic() + delay
            heapq.heappush(self._heap, (due, next(self._order), function, args))
            self._condition.notify()

    def _run(self) -> None:
        with self._condition:
            while not self._stopped:
                if not self._heap:
                    self._condition.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                _, _, function, args = heapq.heappop(self._heap)
                self._submit(function, *args)


def _lease_deadline():
    """The database's now() plus the lease TTL: one clock for every worker."""
    return ExpressionWrapper(
        Now() + timedelta(seconds=settings.CLAWORC_SSH_LEASE_TTL_SECONDS),
        output_field=DateTimeField(),
    )


class ConnectionManager:
    def __init__(self, node: str):
        self.node = node
        self.slots = SlotPool()
        self.connections: dict[int, ManagedConnection] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # When the last lease renewal that reached the database was issued.
        self._renewed_at = time.monotonic()
        self._pool = ThreadPoolExecutor(
            max_workers=settings.CLAWORC_SSH_MANAGER_THREADS, thread_name_prefix="ssh-pool"
        )
        self._scheduler = Scheduler(self.submit)
        self._threads = [
            self._loop("ssh-leases", self._lease_interval, self.lease_round),
            self._loop(
                "ssh-keepalive",
                lambda: settings.CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS,
                self.keepalive_sweep,
            ),
            self._loop(
                "ssh-health",
                lambda: settings.CLAWORC_SSH_HEALTH_CHECK_INTERVAL_SECONDS,
                self.health_sweep,
            ),
        ]
        if settings.CLAWORC_SSH_FAILED_RETRY_INTERVAL_SECONDS > 0:
            self._threads.append(
                self._loop(
                    "ssh-failed-retry",
                    lambda: settings.CLAWORC_SSH_FAILED_RETRY_INTERVAL_SECONDS,
                    self.failed_retry_sweep,
                )
            )

    def __repr__(self):
        return f"ConnectionManager(node={self.node}, instances={len(self.connections)})"

    # Life cycle.

    def start(self) -> None:
        logger.info("connection manager starting node=%s", self.node)
        self._scheduler.start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Close every connection, publish `disconnected`, and release the leases."""
        logger.info(
            "connection manager stopping node=%s instances=%s", self.node, len(self.connections)
        )
        self._stopping.set()
        self._scheduler.stop()
        with self._lock:
            managed = list(self.connections.values())
            self.connections.clear()
        for connection in managed:
            self._safely(connection.close, "worker shutdown", publish_state=True)
        ids = [connection.instance_id for connection in managed]
        self._safely(InstanceLease.objects.filter(node=self.node, instance_id__in=ids).delete)
        self._pool.shutdown(wait=False, cancel_futures=True)
        close_old_connections()

    def submit(self, function, *args) -> None:
        if not self._stopping.is_set():
            self._pool.submit(self._safely, function, *args)

    def schedule(self, delay: float, function, *args) -> None:
        self._scheduler.call_later(delay, function, *args)

    def _safely(self, function, *args, **kwargs):
        """Run one unit of work; a failure is logged, never kills the thread."""
        close_old_connections()
        try:
            return function(*args, **kwargs)
        except Exception:
            logger.exception(
                "manager work failed function=%s", getattr(function, "__name__", function)
            )
        finally:
            close_old_connections()

    def _loop(self, name: str, interval, step) -> threading.Thread:
        def run():
            while not self._stopping.is_set():
                started = time.monotonic()
                self._safely(step)
                self._stopping.wait(max(0.0, interval() - (time.monotonic() - started)))

        return threading.Thread(target=run, name=name, daemon=True)

    # Ownership.

    def owns(self, instance_id: int) -> bool:
        managed = self.connections.get(instance_id)
        return managed is not None and not managed.is_closed

    def holds_lease(self, instance_id: int) -> bool:
        """Owned here, with leases renewed recently enough that no other worker can have
        taken the instance over: the connection gate's first check."""
        return self.owns(instance_id) and not self._leases_stale()

    def _leases_stale(self) -> bool:
        return time.monotonic() - self._renewed_at >= settings.CLAWORC_SSH_LEASE_TTL_SECONDS

    def managed(self, instance_id: int) -> ManagedConnection:
        """The instance's managed connection here; SSHManagerUnavailable if not owned."""
        managed = self.connections.get(instance_id)
        if managed is None or managed.is_closed:
            raise SSHManagerUnavailable()
        return managed

    def _lease_interval(self) -> float:
        return min(settings.CLAWORC_SSH_LEASE_TTL_SECONDS / 3, 1.0)

    def lease_round(self) -> None:
        """Claim free or expired instances; every third of the TTL also renew our leases
        and let go of lost ones.

        Leases are timed by the database's clock, so workers on several machines agree on
        when one expires whatever their own clocks say.
        """
        self._fence_if_stale()
        renewal_due = self._renewed_at + settings.CLAWORC_SSH_LEASE_TTL_SECONDS / 3
        if not self.connections or time.monotonic() >= renewal_due:
            self._renew()
        self._claim()

    def _renew(self) -> None:
        owned = list(self.connections)
        issued = time.monotonic()
        InstanceLease.objects.filter(node=self.node, instance_id__in=owned).update(
            expires_at=_lease_deadline()
        )
        self._renewed_at = issued
        rows = InstanceLease.objects.filter(node=self.node, instance_id__in=owned).values_list(
            "instance_id", "instance__ssh_host", "instance__ssh_port", "instance__ssh_user"
        )
        held = {instance_id: tuple(endpoint) for instance_id, *endpoint in rows}
        for instance_id in set(owned) - set(held):
            self._let_go(instance_id)
        for instance_id, endpoint in held.items():
            managed = self.connections.get(instance_id)
            if managed is not None:
                managed.endpoint_seen(endpoint)

    def _fence_if_stale(self) -> None:
        """Drop every connection once the leases may have expired unrenewed (the database
        was unreachable): another worker may own those instances by now."""
        if not self.connections or not self._leases_stale():
            return
        logger.error(
            "leases not renewed for %.1fs; dropping every connection node=%s instances=%s",
            time.monotonic() - self._renewed_at,
            self.node,
            len(self.connections),
        )
        for instance_id in list(self.connections):
            self._safely(self._let_go, instance_id)

    def _let_go(self, instance_id: int) -> None:
        with self._lock:
            managed = self.connections.pop(instance_id, None)
        if managed is not None:
            logger.warning("lease lost instance=%s node=%s", instance_id, self.node)
            managed.close("lease lost to another worker or instance deleted", publish_state=False)

    def _claim(self) -> None:
        capacity = settings.CLAWORC_SSH_MAX_CONNECTIONS - len(self.connections)
        if capacity <= 0:
            return
        # First come, first served: a worker takes every free instance it has room for;
        # CLAWORC_SSH_MAX_CONNECTIONS bounds what one worker holds.
        free = (
            Instance.objects.filter(Q(lease__isnull=True) | Q(lease__expires_at__lte=Now()))
            .exclude(pk__in=list(self.connections))
            .values_list("pk", "lease__node")[:capacity]
        )
        for instance_id, previous in list(free):
            if self._take_lease(instance_id, previous):
                self._adopt(instance_id, previous)

    def _take_lease(self, instance_id: int, previous: str | None) -> bool:
        if previous is None:
            try:
                with transaction.atomic():
                    InstanceLease.objects.create(
                        instance_id=instance_id,
                        node=self.node,
                        acquired_at=Now(),
                        expires_at=_lease_deadline(),
                    )
            except IntegrityError:
                return False
            return True
        taken = InstanceLease.objects.filter(instance_id=instance_id, expires_at__lte=Now()).update(
            node=self.node, acquired_at=Now(), expires_at=_lease_deadline()
        )
        return taken == 1

    def _adopt(self, instance_id: int, previous: str | None) -> None:
        if self._stopping.is_set():
            # Claimed while shutting down: give it straight back.
            InstanceLease.objects.filter(instance_id=instance_id, node=self.node).delete()
            return
        status = ConnectionStatus.objects.filter(instance_id=instance_id).first()
        state = status.state if status else ConnectionState.DISCONNECTED
        managed = ManagedConnection(self, instance_id, state)
        with self._lock:
            self.connections[instance_id] = managed
        reason = f"claimed by {self.node}"
        if previous:
            reason += f" after the lease of {previous} expired"
            publish.event_record(
                instance_id,
                ConnectionEventType.OWNER_CHANGED,
                from_state=state,
                to_state=state,
                reason=reason,
            )
        logger.info(
            "lease claimed instance=%s node=%s previous=%s", instance_id, self.node, previous
        )
        managed.start(reason)

    # Health sweeps.

    def keepalive_sweep(self) -> None:
        """One timed keepalive to every connected instance at once, then one bulk write."""
        timeout = settings.CLAWORC_SSH_HEALTH_CHECK_TIMEOUT_SECONDS
        targets = [
            (managed, managed.connection)
            for managed in list(self.connections.values())
            if managed.connection is not None
            and managed.state == ConnectionState.CONNECTED
            and not managed.check_lock.locked()
        ]
        started = time.monotonic()
        sent, failed = [], []
        for managed, connection in targets:
            try:
                sent.append((managed, connection, connection.send_keepalive()))
            except ClaworcError as exc:
                failed.append((managed, connection, exc.message))
        passed = []
        for managed, connection, reply in sent:
            try:
                connection.await_keepalive(reply, started=started, timeout=timeout)
                passed.append(managed.instance_id)
            except ClaworcError as exc:
                failed.append((managed, connection, exc.message))
        publish.checks_passed(passed)
        for managed, connection, error in failed:
            logger.warning("keepalive failed instance=%s error=%s", managed.instance_id, error)
            publish.check_failed(managed.instance_id, f"keepalive failed: {error}")
            # Taken here and released by the check, so the next sweep cannot trigger twice.
            if managed.check_lock.acquire(blocking=False):
                self.submit(managed.keepalive_failed, connection, error)

    def health_sweep(self) -> None:
        for managed in list(self.connections.values()):
            if managed.state == ConnectionState.CONNECTED:
                self.submit(managed.health_check)

    def failed_retry_sweep(self) -> None:
        for managed in list(self.connections.values()):
            if managed.state == ConnectionState.FAILED:
                self.submit(managed.retry_failed)


_current: ConnectionManager | None = None


def manager_start(node: str) -> ConnectionManager:
    global _current
    if _current is None:
        _current = ConnectionManager(node)
        _current.start()
    return _current


def manager_stop() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def current_manager() -> ConnectionManager:
    """This worker's manager; SSHManagerUnavailable in a process that runs none."""
    if _current is None:
        raise SSHManagerUnavailable()
    return _current
