"""The writer: nothing blocks the caller, nothing is lost, nothing is written twice.

Outages are made with `TcpProxy`: the writer reaches PostgreSQL through a forwarder the
test cuts (open connections reset, new ones refused) and restores. The shared PostgreSQL
server keeps running for everyone else; to the writer it looks exactly like the server
going away and coming back.
"""

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from celery import signals
from django.db import connections
from django.utils import timezone

from audit import writer as audit_writer
from audit.choices import AuditEventType
from audit.models import AuditEntry
from audit.services import audit_flush, audit_record
from audit.spool import AuditSpool
from audit.writer import AuditWriter
from tests.audit.conftest import OUTAGE_ALIAS
from tests.audit.tcp_proxy import TcpProxy

FAILURE_MESSAGE = "[ssh-audit] failed to write audit log: "


def make_entry(run: str, seq: int, **fields) -> dict:
    entry = {
        "entry_id": str(uuid.uuid4()),
        "instance_id": None,
        "instance_name": "agent-burst",
        "event_type": AuditEventType.COMMAND_EXECUTION.value,
        "username": "burst",
        "source_ip": None,
        "details": f"entry {seq}",
        "duration_ms": seq,
        "request_id": None,
        "data": {"run": run, "seq": seq},
        "created_at": timezone.now().isoformat(),
    }
    entry.update(fields)
    return entry


def rows_of(run: str):
    return AuditEntry.objects.filter(data__run=run)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


outage_db = pytest.mark.django_db(databases=["default", OUTAGE_ALIAS])


@pytest.fixture
def proxy(outage_alias):
    """PostgreSQL behind a forwarder; the outage alias connects through it."""
    settings_dict = connections.settings[outage_alias]
    direct = (settings_dict["HOST"], settings_dict["PORT"])
    forwarder = TcpProxy((direct[0] or "127.0.0.1", int(direct[1] or 5432))).start()
    settings_dict.update(HOST="127.0.0.1", PORT=str(forwarder.port))
    yield forwarder
    forwarder.close()
    settings_dict.update(HOST=direct[0], PORT=direct[1])


@pytest.fixture
def make_writer(tmp_path):
    writers = []

    def make(**options) -> AuditWriter:
        options.setdefault("spool_dir", tmp_path / "spool")
        options.setdefault("retry_max_seconds", 0.5)
        writer = AuditWriter(**options)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.stop(10)


def test_audit_record_with_10000_entries_from_50_threads_writes_all(db):
    run = uuid.uuid4().hex
    barrier = threading.Barrier(50)
    slowest = []

    def produce(thread_number: int) -> None:
        barrier.wait()
        worst = 0.0
        for seq in range(200):
            started = time.perf_counter()
            audit_record(
                AuditEventType.COMMAND_EXECUTION,
                instance_name=f"agent-{thread_number}",
                details=f"thread {thread_number} entry {seq}",
                data={"run": run, "thread": thread_number, "seq": seq},
            )
            worst = max(worst, time.perf_counter() - started)
        slowest.append(worst)

    threads = [threading.Thread(target=produce, args=(number,)) for number in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert audit_flush(60)
    assert rows_of(run).count() == 10_000
    pairs = set(rows_of(run).values_list("data__thread", "data__seq"))
    assert pairs == {(thread, seq) for thread in range(50) for seq in range(200)}
    # Recording is a queue put (or, when the queue is full, one spooled line).
    assert max(slowest) < 0.5


@outage_db
def test_writer_with_database_cut_mid_burst_writes_every_entry_once(proxy, make_writer, caplog):
    """3,000 entries; the database goes away after 1,000 and returns after 2,000."""
    writer = make_writer(using=OUTAGE_ALIAS, batch_size=50)
    run = uuid.uuid4().hex
    entries = [make_entry(run, seq) for seq in range(3000)]
    slowest = 0.0

    for seq, entry in enumerate(entries):
        if seq == 1000:
            assert wait_until(lambda: rows_of(run).count() > 0)
            proxy.cut()
        if seq == 2000:
            assert wait_until(lambda: writer.failure_count > 0)
            assert writer.spool.has_pending()
            proxy.restore()
        started = time.perf_counter()
        writer.submit(entry)
        slowest = max(slowest, time.perf_counter() - started)
        if seq % 100 == 99:
            time.sleep(0.01)  # a burst spread over time, so the cut lands mid-stream

    assert writer.flush(30)
    stored = list(rows_of(run).order_by("id").values_list("entry_id", flat=True))
    assert len(stored) == 3000
    assert {str(entry_id) for entry_id in stored} == {entry["entry_id"] for entry in entries}
    assert writer.spilled_count > 0
    assert not writer.spool.has_pending()
    assert slowest < 0.5
    failures = [r.getMessage() for r in caplog.records if FAILURE_MESSAGE in r.getMessage()]
    assert failures and all("\n" not in message for message in failures)


@outage_db
def test_writer_with_database_cut_replays_spool_in_order(proxy, make_writer):
    writer = make_writer(using=OUTAGE_ALIAS, batch_size=20)
    run = uuid.uuid4().hex
    proxy.cut()

    for seq in range(200):
        writer.submit(make_entry(run, seq))
    assert wait_until(lambda: writer.spilled_count == 200)
    proxy.restore()

    assert writer.flush(30)
    seqs = list(rows_of(run).order_by("id").values_list("data__seq", flat=True))
    assert seqs == list(range(200))


@outage_db
def test_writer_with_full_queue_spills_without_blocking(proxy, make_writer):
    writer = make_writer(using=OUTAGE_ALIAS, queue_size=5, batch_size=5)
    run = uuid.uuid4().hex
    proxy.cut()

    started = time.perf_counter()
    for seq in range(500):
        writer.submit(make_entry(run, seq))
    elapsed = time.perf_counter() - started
    proxy.restore()

    assert writer.flush(30)
    assert rows_of(run).count() == 500
    assert writer.spilled_count >= 500
    assert elapsed < 10


def test_spool_replay_of_entries_already_written_adds_no_duplicates(db, make_writer, tmp_path):
    run = uuid.uuid4().hex
    entries = [make_entry(run, seq) for seq in range(50)]
    writer = make_writer()
    for entry in entries:
        writer.submit(entry)
    assert writer.flush(10)

    # As after a commit whose acknowledgement was lost: the same batch is spooled again.
    spool = AuditSpool(tmp_path / "spool")
    spool.append(entries)
    spool.seal()
    replaying = make_writer()

    assert replaying.flush(10)
    assert rows_of(run).count() == 50
    assert not list((tmp_path / "spool").glob("segment-*"))


def test_spool_with_torn_last_line_replays_the_rest_and_keeps_the_line(db, make_writer, tmp_path):
    run = uuid.uuid4().hex
    spool = AuditSpool(tmp_path / "spool")
    spool.append([make_entry(run, seq) for seq in range(3)])
    spool.seal()
    segment = next((tmp_path / "spool").glob("segment-*"))
    with open(segment, "ab") as handle:
        handle.write(b'{"entry_id": "torn')

    assert make_writer().flush(10)
    assert rows_of(run).count() == 3
    rejected = (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1
    assert "torn" in json.loads(rejected[0])["entry"]["raw"]


def test_spool_segment_locked_by_live_process_is_left_alone(db, tmp_path):
    run = uuid.uuid4().hex
    other_process = AuditSpool(tmp_path / "spool")
    other_process.append([make_entry(run, 0)])
    written = []

    replayed = AuditSpool(tmp_path / "spool").replay(written.extend, batch_size=10)

    assert replayed == 0
    assert written == []
    other_process.seal()
    assert AuditSpool(tmp_path / "spool").replay(written.extend, batch_size=10) == 1


def test_writer_with_rejected_row_writes_the_rest_and_keeps_it(db, make_writer, tmp_path, caplog):
    run = uuid.uuid4().hex
    writer = make_writer(batch_size=10)
    bad = make_entry(run, 5, duration_ms=-1)  # violates the column's CHECK (>= 0)
    for seq in range(10):
        writer.submit(bad if seq == 5 else make_entry(run, seq))

    assert writer.flush(10)
    assert rows_of(run).count() == 9
    rejected = (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()
    assert json.loads(rejected[0])["entry"]["entry_id"] == bad["entry_id"]
    assert any("entry rejected" in record.getMessage() for record in caplog.records)


def test_celery_worker_shutdown_writes_queued_entries(db):
    run = uuid.uuid4().hex
    for seq in range(100):
        audit_record(AuditEventType.CONNECTION_TERMINATED, data={"run": run, "seq": seq})

    signals.worker_shutdown.send(sender=None)

    assert rows_of(run).count() == 100
    assert audit_writer._default is None


@outage_db
def test_shutdown_with_database_down_spools_queued_entries(proxy, make_writer, tmp_path):
    """Stopping while the database is away puts every queued entry in the spool."""
    writer = make_writer(using=OUTAGE_ALIAS)
    run = uuid.uuid4().hex
    proxy.cut()
    for seq in range(100):
        writer.submit(make_entry(run, seq))

    assert not writer.stop(5)

    spooled = [
        json.loads(line)
        for segment in sorted((tmp_path / "spool").glob("segment-*"))
        for line in segment.read_text().splitlines()
    ]
    assert sorted(entry["data"]["seq"] for entry in spooled) == list(range(100))


@outage_db
def test_shutdown_with_database_hanging_spools_the_batch_in_flight(proxy, make_writer, tmp_path):
    """The insert never returns; stopping still leaves every entry in the spool, and the
    replay after the database is back writes each exactly once."""
    writer = make_writer(using=OUTAGE_ALIAS, batch_size=20)
    run = uuid.uuid4().hex
    writer.submit(make_entry(run, 100))
    assert writer.flush(10)  # connected through the proxy
    proxy.freeze()
    for seq in range(100):
        writer.submit(make_entry(run, seq))
    assert wait_until(lambda: writer._in_flight)

    assert not writer.stop(1)

    proxy.cut()  # the hung insert fails now and spools its batch a second time
    proxy.restore()
    assert make_writer(using=OUTAGE_ALIAS).flush(30)
    assert sorted(rows_of(run).values_list("data__seq", flat=True)) == list(range(101))


@pytest.mark.slow
def test_process_exit_writes_queued_entries(db, tmp_path):
    """A process that records and exits at once: atexit writes what is still queued."""
    run = uuid.uuid4().hex
    settings_dict = connections["default"].settings_dict
    database_url = (
        f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}"
        f"/{settings_dict['NAME']}"
    )
    script = (
        "import django; django.setup()\n"
        "from audit.services import audit_record\n"
        f"for seq in range(2000): audit_record('login', data={{'run': '{run}', 'seq': seq}})\n"
    )
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "claworc.settings",
        "DATABASE_URL": database_url,
        "CLAWORC_DATA_DIR": str(tmp_path / "data"),
    }
    if settings_dict.get("PASSWORD"):
        environment["PGPASSWORD"] = settings_dict["PASSWORD"]

    subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
        timeout=60,
    )

    assert rows_of(run).count() == 2000


@outage_db
def test_failure_message_names_reason_on_one_line(proxy, make_writer, caplog):
    caplog.set_level(logging.ERROR, logger="audit.writer")
    writer = make_writer(using=OUTAGE_ALIAS)
    proxy.cut()

    writer.submit(make_entry(uuid.uuid4().hex, 0))

    assert wait_until(lambda: writer.failure_count > 0)
    message = next(r.getMessage() for r in caplog.records if FAILURE_MESSAGE in r.getMessage())
    assert "OperationalError" in message
    assert "\n" not in message
