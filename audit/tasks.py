"""Scheduled audit work."""

from celery import shared_task
from django.conf import settings

from audit.services import audit_purge


@shared_task(name="audit.purge_expired_entries", time_limit=600, soft_time_limit=540)
def purge_expired_entries() -> int:
    """The daily retention purge; the service logs and audits how many entries went."""
    return audit_purge(days=settings.CLAWORC_AUDIT_RETENTION_DAYS)
