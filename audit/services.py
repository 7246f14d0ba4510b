"""The one place audit entries are written.

Callers describe what happened; the actor, client IP and request id come from the
explicit arguments or from the request context bound by the middleware.
"""

import logging
import re
from datetime import timedelta

from django.utils import timezone

from audit import context
from audit.models import AuditEntry

logger = logging.getLogger(__name__)

SYSTEM_USERNAME = "system"
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def sanitize_text(value: str, *, limit: int = 4000) -> str:
    """Control characters escaped, so a value cannot forge lines in logs or exports."""
    cleaned = _CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", value)
    return cleaned[:limit]


def audit_record(
    event_type: str,
    *,
    instance=None,
    instance_name: str = "",
    actor=None,
    details: str = "",
    duration_ms: int | None = None,
    data: dict | None = None,
) -> AuditEntry | None:
    """Write one audit entry; never raises, since auditing must not break the action.

    `actor` is a user, a username, or None for the request's user (`system` outside a
    request).
    """
    bound = context.current()
    if actor is None:
        username = bound.username or SYSTEM_USERNAME
    elif isinstance(actor, str):
        username = actor
    else:
        username = actor.get_username()

    entry = AuditEntry(
        instance_id=getattr(instance, "pk", None),
        instance_name=getattr(instance, "name", "") or instance_name,
        event_type=event_type,
        username=sanitize_text(username, limit=150),
        source_ip=bound.source_ip,
        details=sanitize_text(details),
        duration_ms=duration_ms,
        request_id=bound.request_id,
        data=data or {},
        created_at=timezone.now(),
    )
    try:
        entry.save()
    except Exception as exc:
        # TODO(#3): spool to disk and replay instead of dropping the entry.
        logger.error("[ssh-audit] failed to write audit log: %s", sanitize_text(str(exc)))
        return None
    return entry


def audit_purge(*, days: int) -> int:
    """Delete entries older than `days` days; the retention purge is the only deletion."""
    cutoff = timezone.now() - timedelta(days=days)
    deleted, _ = AuditEntry.objects.filter(created_at__lt=cutoff).delete()
    logger.info("audit purge deleted=%s retention_days=%s", deleted, days)
    return deleted
