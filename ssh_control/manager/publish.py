"""What the connection manager writes to the database: status, events and audit entries.

Every write tolerates an instance deleted under it, since the manager notices deletions
only at its next lease round.
"""

import logging

from django.db import IntegrityError
from django.db.models import F
from django.utils import timezone

from audit.choices import AuditEventType
from audit.services import audit_record
from ssh_control.models import ConnectionEvent, ConnectionStatus

logger = logging.getLogger(__name__)


def event_record(
    instance_id: int, event_type: str, *, from_state: str = "", to_state: str = "", reason: str = ""
) -> None:
    try:
        ConnectionEvent.objects.create(
            instance_id=instance_id,
            event_type=event_type,
            from_state=from_state,
            to_state=to_state,
            reason=reason[:2000],
        )
    except IntegrityError:
        logger.info("event dropped instance=%s event=%s: instance deleted", instance_id, event_type)


def status_update(instance_id: int, **fields) -> None:
    """Publish status fields; creates the row for instances made before it existed."""
    updated = ConnectionStatus.objects.filter(instance_id=instance_id).update(
        updated_at=timezone.now(), **fields
    )
    if not updated:
        try:
            ConnectionStatus.objects.create(instance_id=instance_id)
            ConnectionStatus.objects.filter(instance_id=instance_id).update(**fields)
        except IntegrityError:
            logger.info("status dropped instance=%s: instance deleted", instance_id)


def checks_passed(instance_ids: list[int]) -> None:
    """One write for every instance whose check succeeded in a sweep."""
    if instance_ids:
        ConnectionStatus.objects.filter(instance_id__in=instance_ids).update(
            is_healthy=True,
            last_health_check_at=timezone.now(),
            successful_check_count=F("successful_check_count") + 1,
            updated_at=timezone.now(),
        )


def check_failed(instance_id: int, error: str) -> None:
    ConnectionStatus.objects.filter(instance_id=instance_id).update(
        is_healthy=False,
        last_health_check_at=timezone.now(),
        failed_check_count=F("failed_check_count") + 1,
        last_error=error[:2000],
        updated_at=timezone.now(),
    )


def audit_established(instance, *, fingerprint: str, local_address: str, actor=None) -> None:
    audit_record(
        AuditEventType.CONNECTION_ESTABLISHED,
        instance=instance,
        actor=actor,
        details=f"connected to {instance.ssh_user}@{instance.ssh_host}:{instance.ssh_port} "
        f"from {local_address}, host key {fingerprint}",
        data={"host": instance.ssh_host, "port": instance.ssh_port, "fingerprint": fingerprint},
    )


def audit_terminated(
    instance, *, reason: str, duration_seconds: float, actor=None, instance_id=None
) -> None:
    """`instance` may be None when the database is out of reach; `instance_id` then names it."""
    audit_record(
        AuditEventType.CONNECTION_TERMINATED,
        instance=instance,
        instance_id=instance_id,
        actor=actor,
        details=f"connection closed after {duration_seconds:.1f}s: {reason}",
        duration_ms=int(duration_seconds * 1000),
        data={"reason": reason},
    )


def audit_failed(instance, *, error: str, duration_ms: int | None = None) -> None:
    audit_record(
        AuditEventType.CONNECTION_FAILED,
        instance=instance,
        details=f"connection to {instance.ssh_host}:{instance.ssh_port} failed: {error}",
        duration_ms=duration_ms,
        data={"error": error},
    )
