"""Benchmark of the audit writer: the latency `audit_record` adds to an audited action, and
the sustained rate at which entries reach the database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/claworc python bench/audit_bench.py

On PostgreSQL it creates a scratch database beside the one DATABASE_URL names, migrates
it, and drops it at the end, so existing data is never touched. Without DATABASE_URL it
runs on a scratch SQLite file.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-calls", type=int, default=20_000)
    parser.add_argument("--throughput-entries", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=8)
    options = parser.parse_args()

    os.environ.setdefault("CLAWORC_DATA_DIR", tempfile.mkdtemp(prefix="claworc-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claworc.settings")
    scratch = ScratchDatabase(os.environ.get("DATABASE_URL"))
    with scratch:
        run(options, scratch.description)


def run(options, description: str) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    print(f"database: {description}")

    baseline = sync_insert_latencies(2_000)
    report("synchronous insert (the old audit_record), 1 thread", baseline)

    paced = record_latencies(options.latency_calls, threads=1, rate_per_second=5_000)
    report("audit_record, 1 thread at 5,000/s", paced)

    burst = record_latencies(options.latency_calls, threads=options.threads)
    report(f"audit_record, {options.threads} threads unpaced", burst)

    throughput(options.throughput_entries, threads=1, queue_size=options.throughput_entries)
    throughput(options.throughput_entries, threads=options.threads)


def sync_insert_latencies(count: int) -> list[int]:
    from django.utils import timezone

    from audit.models import AuditEntry

    timings = []
    for seq in range(count):
        started = time.perf_counter_ns()
        AuditEntry.objects.create(
            event_type="command_execution", details=f"sync {seq}", created_at=timezone.now()
        )
        timings.append(time.perf_counter_ns() - started)
    return timings


def record_latencies(count: int, *, threads: int, rate_per_second: float = 0) -> list[int]:
    """Time each `audit_record` call; the writer drains concurrently, as in production."""
    from audit.services import audit_flush, audit_record

    per_thread = count // threads
    timings: list[int] = []
    lock = threading.Lock()

    def produce() -> None:
        own, interval = [], (1 / rate_per_second if rate_per_second else 0)
        next_at = time.perf_counter()
        for seq in range(per_thread):
            started = time.perf_counter_ns()
            audit_record("command_execution", instance_name="bench", details=f"entry {seq}")
            own.append(time.perf_counter_ns() - started)
            if interval:
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
        with lock:
            timings.extend(own)

    run_threads(produce, threads)
    audit_flush(120)
    return timings


def throughput(count: int, *, threads: int, queue_size: int | None = None) -> None:
    """Entries per second from the first `audit_record` until all are in the database.

    With `queue_size` the writer gets a queue that holds the whole run, which measures how
    fast it drains into the database; without, the configured queue overflows into the
    spool, as under a real overload.
    """
    from django.conf import settings

    from audit import writer as audit_writer
    from audit.models import AuditEntry
    from audit.services import audit_flush, audit_record

    if queue_size:
        audit_writer.shutdown_default_writer()
        audit_writer._default = audit_writer.AuditWriter(
            spool_dir=settings.CLAWORC_AUDIT_SPOOL_DIR, queue_size=queue_size
        )
    writer = audit_writer.default_writer()
    run_id = uuid.uuid4().hex
    spilled_before = writer.spilled_count
    per_thread = count // threads

    def produce() -> None:
        for seq in range(per_thread):
            audit_record("command_execution", details=f"entry {seq}", data={"run": run_id})

    started = time.perf_counter()
    run_threads(produce, threads)
    produced = time.perf_counter() - started
    if not audit_flush(300):
        print("throughput: flush timed out")
        return
    elapsed = time.perf_counter() - started

    stored = AuditEntry.objects.filter(data__run=run_id).count()
    spilled = writer.spilled_count - spilled_before
    queue = f"queue {queue_size:,}" if queue_size else "configured queue"
    print(
        f"sustained, {threads} thread(s), {queue}: {stored:,} of {per_thread * threads:,} "
        f"entries in {elapsed:.2f} s = {stored / elapsed:,.0f} entries/s (callers done after "
        f"{produced:.2f} s; {spilled:,} overflowed into the spool)"
    )
    if queue_size:
        audit_writer.shutdown_default_writer()


def run_threads(target, count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def report(label: str, timings: list[int]) -> None:
    micros = sorted(timing / 1000 for timing in timings)
    p50 = statistics.median(micros)
    p99 = micros[int(len(micros) * 0.99) - 1]
    print(
        f"{label}: n={len(micros):,} p50={p50:,.1f} us p99={p99:,.1f} us max={micros[-1]:,.0f} us"
    )


class ScratchDatabase:
    """A database created for the run and dropped after it."""

    def __init__(self, database_url: str | None):
        self.database_url = database_url
        self.name = f"claworc_audit_bench_{os.getpid()}"
        self.description = ""

    def __enter__(self):
        if not self.database_url:
            path = Path(os.environ["CLAWORC_DATA_DIR"]) / "claworc.sqlite3"
            self.description = f"SQLite {path}"
            return self
        import dj_database_url
        import psycopg

        config = dj_database_url.parse(self.database_url)
        self._maintenance = psycopg.connect(
            dbname="postgres",
            user=config["USER"] or None,
            password=config["PASSWORD"] or None,
            host=config["HOST"] or None,
            port=config["PORT"] or None,
            autocommit=True,
        )
        self._maintenance.execute(f'CREATE DATABASE "{self.name}"')
        parts = urlsplit(self.database_url)
        os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{self.name}"))
        self.description = f"PostgreSQL scratch database {self.name} on {config['HOST']}"
        return self

    def __exit__(self, *exc_info):
        if not self.database_url:
            return
        from django.db import connections

        from audit.writer import shutdown_default_writer

        shutdown_default_writer()
        connections.close_all()
        self._maintenance.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._maintenance.close()


if __name__ == "__main__":
    main()
