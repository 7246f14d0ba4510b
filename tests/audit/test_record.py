"""audit_record: what one entry holds, and that it arrives without blocking the caller."""

import uuid

from audit.choices import AuditEventType
from audit.models import AuditEntry
from audit.services import audit_flush, audit_record


def test_audit_record_outside_request_has_system_user_and_no_ip(db):
    entry_id = audit_record(AuditEventType.KEY_ROTATION, instance_name="agent-9", details="x")

    assert audit_flush(10)
    entry = AuditEntry.objects.get(entry_id=entry_id)
    assert entry.username == "system"
    assert entry.source_ip is None
    assert entry.request_id is None
    assert entry.instance_name == "agent-9"


def test_audit_record_keeps_instance_id_of_deleted_instance(db):
    entry_id = audit_record(AuditEventType.INSTANCE_DELETED, instance_id=41, instance_name="gone")

    assert audit_flush(10)
    assert AuditEntry.objects.get(entry_id=entry_id).instance_id == 41


def test_audit_record_with_control_characters_stays_on_one_line(db):
    entry_id = audit_record(
        AuditEventType.LOGIN_FAILED,
        actor="mallory\n2026-01-01 INFO forged",
        details="a\r\nb\x1b[31m\u2028c",
    )

    assert audit_flush(10)
    entry = AuditEntry.objects.get(entry_id=entry_id)
    assert entry.username == "mallory\\x0a2026-01-01 INFO forged"
    assert entry.details == "a\\x0d\\x0ab\\x1b[31m\\x2028c"


def test_audit_record_with_unserialisable_data_keeps_it_as_text(db):
    marker = uuid.uuid4()
    entry_id = audit_record(AuditEventType.FILE_OPERATION, data={"id": marker, "n": 1})

    assert audit_flush(10)
    assert AuditEntry.objects.get(entry_id=entry_id).data == {"id": str(marker), "n": 1}
