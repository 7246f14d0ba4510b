"""Retention: the manual purge endpoint and the daily job, both audited."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.choices import AuditEventType
from audit.models import AuditEntry
from audit.services import audit_flush
from audit.tasks import purge_expired_entries

URL = "/api/v1/ssh-audit-logs/purge"


@pytest.fixture
def aged_entries(db):
    """One entry each 100, 50 and 10 days old."""
    now = timezone.now()
    return AuditEntry.objects.bulk_create(
        AuditEntry(event_type=AuditEventType.LOGIN, created_at=now - timedelta(days=age))
        for age in (100, 50, 10)
    )


def ages_left() -> list[int]:
    now = timezone.now()
    rows = AuditEntry.objects.exclude(event_type=AuditEventType.AUDIT_PURGED)
    return sorted((now - entry.created_at).days for entry in rows)


def test_purge_without_days_uses_90_day_retention(admin_client, aged_entries):
    response = admin_client.post(URL)

    assert response.status_code == 200
    assert response.json() == {"deleted": 1, "retention_days": 90}
    assert ages_left() == [10, 50]


def test_purge_with_days_deletes_older_entries(admin_client, aged_entries):
    response = admin_client.post(f"{URL}?days=30")

    assert response.json() == {"deleted": 2, "retention_days": 30}
    assert ages_left() == [10]


def test_purge_follows_retention_setting(admin_client, aged_entries, settings):
    settings.CLAWORC_AUDIT_RETENTION_DAYS = 5

    assert admin_client.post(URL).json() == {"deleted": 3, "retention_days": 5}


def test_purge_is_itself_audited_with_the_admin(admin_client, aged_entries):
    admin_client.post(f"{URL}?days=30")

    assert audit_flush(10)
    entry = AuditEntry.objects.get(event_type=AuditEventType.AUDIT_PURGED)
    assert entry.username == "admin"
    assert entry.data["deleted"] == 2
    assert entry.data["retention_days"] == 30


@pytest.mark.parametrize("days", ["0", "-1", "abc", "1.5", "100001"])
def test_purge_with_bad_days_gives_400_and_deletes_nothing(admin_client, aged_entries, days):
    response = admin_client.post(f"{URL}?days={days}")

    assert response.status_code == 400
    assert "days" in response.json()["fields"]
    assert ages_left() == [10, 50, 100]


def test_daily_purge_logs_count_and_is_audited_as_system(aged_entries, caplog):
    caplog.set_level(logging.INFO, logger="audit.services")

    assert purge_expired_entries() == 1

    assert "audit purge deleted=1 retention_days=90" in caplog.text
    assert audit_flush(10)
    entry = AuditEntry.objects.get(event_type=AuditEventType.AUDIT_PURGED)
    assert (entry.username, entry.source_ip) == ("system", None)


def test_daily_purge_is_scheduled(settings):
    schedule = settings.CELERY_BEAT_SCHEDULE["purge-expired-audit-entries"]

    assert schedule["task"] == purge_expired_entries.name
    assert schedule["schedule"] == 24 * 60 * 60
