"""The one place audit entries are written.

Callers describe what happened; the actor, client IP and request id come from the
explicit arguments or from the request context bound by the middleware. Entries reach the
database through the non-blocking writer (`audit.writer`), so recording never waits for,
or fails with, the database.
"""

import json
import logging
import uuid
from datetime import timedelta

from django.utils import timezone

from audit import context
from audit.choices import AuditEventType
from audit.logsafe import escape_control_characters
from audit.models import AuditEntry
from audit.writer import default_writer

logger = logging.getLogger(__name__)

SYSTEM_USERNAME = "system"


def sanitize_text(value: str, *, limit: int = 4000) -> str:
    """Control characters escaped, so a value cannot forge lines in logs or exports."""
    return escape_control_characters(str(value))[:limit]


def audit_record(
    event_type: str,
    *,
    instance=None,
    instance_id: int | None = None,
    instance_name: str = "",
    actor=None,
    details: str = "",
    duration_ms: int | None = None,
    data: dict | None = None,
) -> uuid.UUID:
    """Queue one audit entry and return its `entry_id`; never raises, never blocks.

    `actor` is a user, a username, or None for the request's user (`system` outside a
    request). `instance_id` keeps the id of an instance that no longer exists. The entry is
    in the database once `audit_flush()` returns True.
    """
    bound = context.current()
    entry_id = uuid.uuid4()
    entry = {
        "entry_id": str(entry_id),
        "instance_id": getattr(instance, "pk", None) or instance_id,
        "instance_name": sanitize_text(getattr(instance, "name", "") or instance_name, limit=63),
        "event_type": str(event_type),
        "username": sanitize_text(_username(actor, bound), limit=150),
        "source_ip": bound.source_ip,
        "details": sanitize_text(details),
        "duration_ms": duration_ms,
        "request_id": str(bound.request_id) if bound.request_id else None,
        "data": _json_safe(data or {}),
        "created_at": timezone.now().isoformat(),
    }
    default_writer().submit(entry)
    return entry_id


def audit_flush(timeout: float = 10.0) -> bool:
    """Block until every entry recorded so far is in the database; False on timeout.

    Tests call it before reading entries; shutdown calls it before the process exits.
    """
    return default_writer().flush(timeout)


def audit_purge(*, days: int, actor=None) -> int:
    """Delete entries older than `days` days; the retention purge is the only deletion."""
    cutoff = timezone.now() - timedelta(days=days)
    deleted, _ = AuditEntry.objects.filter(created_at__lt=cutoff).delete()
    logger.info("audit purge deleted=%s retention_days=%s", deleted, days)

    audit_record(
        AuditEventType.AUDIT_PURGED,
        actor=actor,
        details=f"{deleted} audit entries older than {days} days purged",
        data={"deleted": deleted, "retention_days": days, "cutoff": cutoff.isoformat()},
    )
    return deleted


def _username(actor, bound: context.ActorContext) -> str:
    if actor is None:
        return bound.username or SYSTEM_USERNAME
    if isinstance(actor, str):
        return actor
    return actor.get_username()


def _json_safe(data: dict) -> dict:
    """The data as plain JSON values, so it survives the spool unchanged."""
    try:
        return json.loads(json.dumps(data, default=str))
    except (TypeError, ValueError) as exc:
        logger.warning("audit data not serialisable reason=%s", sanitize_text(str(exc)))
        return {"unserialisable": sanitize_text(repr(data))}
