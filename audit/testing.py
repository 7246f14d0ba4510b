"""Test support for code that records audit entries (imported by the test suite only).

The writer inserts on its own connection, so its rows are committed outside a test's
transaction and would outlive the test. `audit_writes_isolated` gives every test an empty
audit table and a fresh writer: after the test it flushes the writer, deletes the rows it
committed, and discards the writer and its spool.
"""

import logging
import shutil
import threading

import pytest
from django.db import connections

from audit import writer as audit_writer

logger = logging.getLogger(__name__)

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
    yield
    writer = audit_writer._default
    if writer is None:
        return
    audit_writer._default = None

    uses_db = bool(DB_FIXTURES & set(request.fixturenames)) or bool(
        request.node.get_closest_marker("django_db")
    )
    if uses_db:
        with django_db_blocker.unblock():
            writer.flush(TEARDOWN_TIMEOUT_SECONDS)
            writer.stop(TEARDOWN_TIMEOUT_SECONDS)
            delete_committed_entries()
    else:
        # Without database access the writer spooled everything; nothing reached a table.
        writer.stop(TEARDOWN_TIMEOUT_SECONDS)
    shutil.rmtree(writer.spool.directory, ignore_errors=True)


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
