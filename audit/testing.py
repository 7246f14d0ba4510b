"""Test support for code that records audit entries (imported by the test suite only).

The writer inserts on its own connection, so its rows are committed outside a test's
transaction and would outlive the test. `audit_writes_isolated` gives every test an empty
audit table and a fresh writer: after the test it flushes the writer, deletes the rows it
committed, and discards the writer and its spool.
"""

import contextlib
import shutil
import threading

import pytest
from django.db import connections

from audit import writer as audit_writer

DB_FIXTURES = {
    "db",
    "transactional_db",
    "django_db_reset_sequences",
    "django_db_serialized_rollback",
    "live_server",
}
TEARDOWN_TIMEOUT_SECONDS = 30.0


@pytest.fixture(autouse=True)
def audit_writes_isolated(request, django_db_blocker):
    started_before = audit_writer.AuditWriter.started_count
    yield
    if audit_writer.AuditWriter.started_count == started_before:
        return  # no writer ran: nothing was committed behind the test's back
    writer, audit_writer._default = audit_writer._default, None

    uses_db = bool(DB_FIXTURES & set(request.fixturenames)) or bool(
        request.node.get_closest_marker("django_db")
    )
    with django_db_blocker.unblock() if uses_db else contextlib.nullcontext():
        if writer is not None:
            # Without database access the writer spooled everything instead.
            writer.flush(TEARDOWN_TIMEOUT_SECONDS if uses_db else 0)
            writer.stop(TEARDOWN_TIMEOUT_SECONDS)
            shutil.rmtree(writer.spool.directory, ignore_errors=True)
        if uses_db:
            delete_committed_entries()


def delete_committed_entries() -> None:
    """Delete committed audit rows from a connection of its own, outside the test's transaction."""
    failures = []
    thread = threading.Thread(target=_delete_all, args=(failures,), name="audit-test-cleanup")
    thread.start()
    thread.join(TEARDOWN_TIMEOUT_SECONDS)
    if failures:
        raise failures[0]


def _delete_all(failures: list) -> None:
    from audit.models import AuditEntry

    connection = connections["default"]
    try:
        # Only ever a test database: never clean a real one by accident.
        if not connection.settings_dict["NAME"].startswith("test_"):
            return
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # A test that still holds row locks must not hang the teardown forever.
                cursor.execute("SET lock_timeout = '5s'")
        AuditEntry.objects.all().delete()
    except Exception as exc:
        failures.append(exc)
    finally:
        connection.close()
