"""The non-blocking audit writer: a bounded queue drained into the database in batches.

Callers only put an entry on the queue. One thread per process takes entries off it in
batches and inserts them on its own connection. When the database refuses, the batch goes
to the durable spool and the writer retries with backoff; spooled entries are replayed
before newer ones are written, and the unique `entry_id` makes a replay of entries that
did reach the database a no-op. A full queue never blocks the caller: the entry goes
straight to the spool.
"""

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.db import DataError, IntegrityError, connections, transaction

from audit.logsafe import escape_control_characters
from audit.spool import AuditSpool

logger = logging.getLogger(__name__)

# Serialises audit inserts across processes on PostgreSQL, so ids become visible in id
# order and a page snapshot taken by id (`max_id`) never gains an older id later.
INSERT_LOCK_KEY = 0x5A0D17
# Rows per INSERT: bounds the statement's size and the bulk path's parameter count.
INSERT_CHUNK_ROWS = 1000
IDLE_WAKEUP_SECONDS = 1.0
FIRST_RETRY_SECONDS = 0.25


@dataclass
class _FlushRequest:
    done: threading.Event = field(default_factory=threading.Event)
    is_written: bool = False

    def answer(self, is_written: bool) -> None:
        self.is_written = is_written
        self.done.set()


_STOP = object()


class AuditWriter:
    """One queue, one writer thread and one spool; see the module docstring."""

    # Threads started by any writer in this process; lets test isolation skip cleanup.
    started_count = 0

    def __init__(
        self,
        *,
        spool_dir: Path | str,
        using: str = "default",
        queue_size: int = 10_000,
        batch_size: int = 500,
        retry_max_seconds: float = 30.0,
    ):
        self.using = using
        self.spool = AuditSpool(spool_dir)
        self.batch_size = batch_size
        self.retry_max_seconds = retry_max_seconds
        self.spilled_count = 0
        self.failure_count = 0
        self._count_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._is_stopped = False
        self._waiting: list[_FlushRequest] = []
        # The batch being inserted, for `stop` to spool if the insert hangs.
        self._in_flight: list[dict] = []
        self._retry_delay = 0.0
        self._next_attempt_at = 0.0

    def submit(self, entry: dict) -> None:
        """Queue one entry; never waits for the database, and never drops the entry."""
        if self._ensure_started():
            try:
                self._queue.put_nowait(entry)
                return
            except queue.Full:
                pass
        # The writer thread fsyncs within a moment; a caller never waits for the disk.
        self._spill([entry], sync=False)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is in the database; False on timeout."""
        deadline = time.monotonic() + timeout
        if not self._ensure_started():
            return False
        request = _FlushRequest()
        try:
            self._queue.put(request, timeout=timeout)
        except queue.Full:
            return False
        return request.done.wait(max(0.0, deadline - time.monotonic())) and request.is_written

    def stop(self, timeout: float = 10.0) -> bool:
        """Write or spool everything queued and end the thread; True if nothing was left.

        Whatever the thread could not finish within `timeout` is spooled here, including a
        batch it is still inserting into a database that hangs: if that insert completes
        after all, the replay finds the entries present and skips them.
        """
        with self._start_lock:
            self._is_stopped = True
            thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            thread.join(timeout)

        leftover = self._drain_nowait()
        if thread is not None and thread.is_alive():
            leftover = list(self._in_flight) + leftover
        self._spill(leftover)
        # Released, so another process (or the next writer here) may replay it.
        self.spool.seal()
        is_empty = not leftover and not self.spool.has_pending()
        for request in self._waiting:
            request.answer(is_empty)
        return is_empty

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def is_failing(self) -> bool:
        """True from a failed write until the next successful one."""
        return self._retry_delay > 0

    def _ensure_started(self) -> bool:
        if self._thread is not None and self._thread.is_alive():
            return True
        with self._start_lock:
            if self._is_stopped:
                return False
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, name="ssh-audit-writer", daemon=True)
                try:
                    thread.start()
                except RuntimeError:
                    return False  # interpreter shutting down: the caller spools instead
                self._thread = thread
                AuditWriter.started_count += 1
        return True

    def _run(self) -> None:
        try:
            is_stopping = False
            while not is_stopping:
                entries, requests, is_stopping = self._take()
                self._sync_spool()
                if entries:
                    self._deliver(entries)
                self._waiting.extend(requests)
                if self.spool.is_dirty:
                    self._replay_if_due(force=is_stopping)
                self._answer_flush_requests()
        except Exception:
            logger.exception("[ssh-audit] failed to write audit log: writer thread crashed")
        finally:
            self.spool.seal()
            connections[self.using].close()

    def _take(self) -> tuple[list, list, bool]:
        """The next batch: entries, flush requests among them, and whether to stop."""
        try:
            first = self._queue.get(timeout=self._idle_timeout())
        except queue.Empty:
            return [], [], False

        entries, requests, is_stopping = [], [], False
        item = first
        while True:
            if item is _STOP:
                is_stopping = True
            elif isinstance(item, _FlushRequest):
                requests.append(item)
            else:
                entries.append(item)
            if len(entries) >= self.batch_size:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return entries, requests, is_stopping

    def _idle_timeout(self) -> float:
        if self.spool.is_dirty:
            return max(0.01, min(IDLE_WAKEUP_SECONDS, self._next_attempt_at - time.monotonic()))
        return IDLE_WAKEUP_SECONDS

    def _deliver(self, entries: list[dict]) -> None:
        """Insert a batch, unless older spooled entries must go first or the database is down."""
        if self.spool.is_dirty and not self._replay_if_due():
            self._spill(entries)
            return
        self._in_flight = entries
        try:
            self._insert(entries)
        except Exception as exc:
            self._record_failure(exc)
            self._spill(entries)
        else:
            self._retry_delay = 0.0
        finally:
            self._in_flight = []

    def _replay_if_due(self, *, force: bool = False) -> bool:
        """Replay the spool when the backoff allows; True if it is now empty."""
        if not force and time.monotonic() < self._next_attempt_at:
            return False
        try:
            replayed = self.spool.replay(self._insert, batch_size=self.batch_size)
        except Exception as exc:
            self._record_failure(exc)
            return False
        if replayed:
            # After an outage this is news; after a full queue overflowed, it is routine.
            level = logging.INFO if self.is_failing() else logging.DEBUG
            logger.log(level, "[ssh-audit] replayed spooled audit entries count=%s", replayed)
        self._retry_delay = 0.0
        return not self.spool.has_pending()

    def _insert(self, entries: list[dict]) -> None:
        """Insert entries; ones already present are skipped, rejected rows set aside."""
        for start in range(0, len(entries), INSERT_CHUNK_ROWS):
            chunk = entries[start : start + INSERT_CHUNK_ROWS]
            try:
                self._insert_chunk(chunk)
            except (DataError, IntegrityError):
                # One bad row must not hold back the rest: find it row by row.
                for entry in chunk:
                    self._insert_or_reject(entry)

    def _insert_or_reject(self, entry: dict) -> None:
        try:
            self._insert_chunk([entry])
        except (DataError, IntegrityError) as exc:
            reason = escape_control_characters(str(exc))
            self.spool.reject(entry, reason)
            logger.error(
                "[ssh-audit] failed to write audit log: entry rejected entry_id=%s reason=%s",
                entry.get("entry_id"),
                reason,
            )

    def _insert_chunk(self, entries: list[dict]) -> None:
        connection = connections[self.using]
        connection.close_if_unusable_or_obsolete()
        with transaction.atomic(using=self.using):
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [INSERT_LOCK_KEY])
                    cursor.execute(_postgresql_insert(connection), _columns_of(entries))
            else:
                _bulk_create(self.using, entries)

    def _record_failure(self, exc: Exception) -> None:
        self.failure_count += 1
        self._retry_delay = min(
            self.retry_max_seconds, max(FIRST_RETRY_SECONDS, self._retry_delay * 2)
        )
        self._next_attempt_at = time.monotonic() + self._retry_delay
        logger.error(
            "[ssh-audit] failed to write audit log: %s retry_in_seconds=%.2f",
            escape_control_characters(f"{type(exc).__name__}: {exc}".strip()),
            self._retry_delay,
        )
        # A broken connection is not reused; the next attempt opens a fresh one.
        try:
            connections[self.using].close()
        except Exception:
            logger.debug("closing the audit connection failed", exc_info=True)

    def _spill(self, entries: list[dict], *, sync: bool = True) -> None:
        if not entries:
            return
        try:
            self.spool.append(entries, sync=sync)
            with self._count_lock:
                self.spilled_count += len(entries)
        except OSError as exc:
            # Database and disk both refuse: the log is the last place left for them.
            for entry in entries:
                logger.error(
                    "[ssh-audit] failed to write audit log: spool unavailable (%s), entry=%s",
                    escape_control_characters(str(exc)),
                    escape_control_characters(repr(entry)),
                )

    def _sync_spool(self) -> None:
        try:
            self.spool.sync()
        except OSError as exc:
            logger.error(
                "[ssh-audit] failed to write audit log: spool sync failed: %s",
                escape_control_characters(str(exc)),
            )

    def _answer_flush_requests(self) -> None:
        if self._waiting and not self.spool.has_pending():
            for request in self._waiting:
                request.answer(True)
            self._waiting = []

    def _drain_nowait(self) -> list[dict]:
        entries = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return entries
            if isinstance(item, _FlushRequest):
                item.answer(False)  # its entries are spooled, not written
            elif item is not _STOP:
                entries.append(item)


# The entry's keys with their PostgreSQL types, for one INSERT of whole columns.
POSTGRESQL_COLUMNS = (
    ("entry_id", "uuid"),
    ("instance_id", "bigint"),
    ("instance_name", "text"),
    ("event_type", "text"),
    ("username", "text"),
    ("source_ip", "inet"),
    ("details", "text"),
    ("duration_ms", "bigint"),
    ("request_id", "uuid"),
    ("data", "jsonb"),
    ("created_at", "timestamptz"),
)


def _postgresql_insert(connection) -> str:
    """One statement per batch: each column an array, unnested into rows.

    Several times faster than the ORM's bulk insert, which prepares every value of every
    row in Python; `ON CONFLICT DO NOTHING` skips entries a replay already wrote.
    """
    from audit.models import AuditEntry

    table = connection.ops.quote_name(AuditEntry._meta.db_table)
    names = ", ".join(connection.ops.quote_name(name) for name, _ in POSTGRESQL_COLUMNS)
    arrays = ", ".join(f"%s::{kind}[]" for _, kind in POSTGRESQL_COLUMNS)
    return (
        f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) "
        f'ON CONFLICT ("entry_id") DO NOTHING'
    )


def _columns_of(entries: list[dict]) -> list[list]:
    columns = [[entry[name] for entry in entries] for name, _ in POSTGRESQL_COLUMNS]
    columns[9] = [json.dumps(data) for data in columns[9]]
    return columns


def _bulk_create(using: str, entries: list[dict]) -> None:
    """The portable path (SQLite, the embedded default)."""
    from audit.models import AuditEntry

    rows = []
    for entry in entries:
        fields = dict(entry, created_at=datetime.fromisoformat(entry["created_at"]))
        rows.append(AuditEntry(**fields))
    AuditEntry.objects.using(using).bulk_create(rows, ignore_conflicts=True)


_default: AuditWriter | None = None
_default_lock = threading.Lock()


def default_writer() -> AuditWriter:
    """This process's writer, created on first use from the settings."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = _writer_from_settings()
    return _default


def shutdown_default_writer(timeout: float | None = None) -> None:
    """Flush and stop this process's writer, if it ever started (atexit, worker shutdown)."""
    global _default
    from django.conf import settings

    with _default_lock:
        writer, _default = _default, None
    if writer is None:
        return
    timeout = timeout or getattr(settings, "CLAWORC_AUDIT_SHUTDOWN_TIMEOUT_SECONDS", 10.0)
    # With the database away, waiting for it only delays the exit: spool at once.
    is_flushed = writer.is_alive() and not writer.is_failing() and writer.flush(timeout)
    if not writer.stop(timeout) and not is_flushed:
        logger.warning(
            "[ssh-audit] shutdown left audit entries in the spool spool_dir=%s",
            writer.spool.directory,
        )


def _writer_from_settings() -> AuditWriter:
    from django.conf import settings

    return AuditWriter(
        spool_dir=getattr(settings, "CLAWORC_AUDIT_SPOOL_DIR", settings.DATA_DIR / "audit-spool"),
        queue_size=getattr(settings, "CLAWORC_AUDIT_QUEUE_SIZE", 10_000),
        batch_size=getattr(settings, "CLAWORC_AUDIT_BATCH_SIZE", 500),
        retry_max_seconds=getattr(settings, "CLAWORC_AUDIT_RETRY_MAX_SECONDS", 30.0),
    )


def _forget_writer_in_child() -> None:
    """A forked child has no writer thread; it starts its own, with an empty queue."""
    global _default, _default_lock
    _default_lock = threading.Lock()
    if _default is not None:
        _default.spool.forget_after_fork()
    _default = None


os.register_at_fork(after_in_child=_forget_writer_in_child)
