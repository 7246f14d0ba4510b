"""The audit admin: read-only, filtered, searchable, and exported as safe CSV."""

import csv
import io
from datetime import UTC, datetime

import pytest

from audit.choices import AuditEventType
from audit.models import AuditEntry

CHANGELIST = "/admin/audit/auditentry/"
EXPORT = "/admin/audit/auditentry/export-csv/"
# As the admin's own date filter writes it: an aware timestamp, URL-encoded.
SINCE = "2026-02-15%2000:00:00%2B00:00"


@pytest.fixture
def entries(db):
    rows = [
        ("login", "alice", "198.51.100.7", "", "logged in", datetime(2026, 2, 1, tzinfo=UTC)),
        ("login_failed", '=HYPERLINK("http://x")', "203.0.113.9", "", "refused", None),
        ("key_rotation", "system", None, "agent-7", "line one\nline two", None),
        ("ip_restricted", "bob", "192.0.2.1", "agent-8", "@SUM(1+1)", None),
    ]
    return AuditEntry.objects.bulk_create(
        AuditEntry(
            event_type=event_type,
            username=username,
            source_ip=source_ip,
            instance_name=instance_name,
            details=details,
            created_at=created_at or datetime(2026, 3, 1, tzinfo=UTC),
        )
        for event_type, username, source_ip, instance_name, details, created_at in rows
    )


def read_csv(response) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("event_type__exact=key_rotation", {"agent-7"}),
        ("q=agent-8", {"agent-8"}),
        ("q=alice", {"alice"}),
        ("q=203.0.113.9", {"203.0.113.9"}),
        (f"created_at__gte={SINCE}", {"agent-7", "agent-8", "203.0.113.9"}),
    ],
)
def test_admin_changelist_filters_and_searches(admin_browser, entries, query, expected):
    response = admin_browser.get(f"{CHANGELIST}?{query}")

    assert response.status_code == 200
    shown = {entry for entry in expected if entry.encode() in response.content}
    assert shown == expected
    assert response.context["cl"].result_count == len(expected)


def test_admin_changelist_offers_export_of_filtered_list(admin_browser, entries):
    response = admin_browser.get(f"{CHANGELIST}?event_type__exact=login")

    assert f'href="{EXPORT}?event_type__exact=login"'.encode() in response.content


def test_admin_export_respects_filters_and_search(admin_browser, entries):
    rows = read_csv(admin_browser.get(f"{EXPORT}?created_at__gte={SINCE}&q=agent"))

    assert rows[0][:4] == ["created_at", "id", "entry_id", "event_type"]
    assert sorted(row[5] for row in rows[1:]) == ["agent-7", "agent-8"]


def test_admin_export_cannot_inject_formulas_or_lines(admin_browser, entries):
    rows = read_csv(admin_browser.get(EXPORT))

    assert len(rows) == 1 + len(entries)
    cells = [cell for row in rows[1:] for cell in row]
    assert '\'=HYPERLINK("http://x")' in cells
    assert "'@SUM(1+1)" in cells
    assert "line one\\x0aline two" in cells
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)


def test_admin_export_selected_action_exports_only_selected(admin_browser, entries):
    chosen = [entries[0].pk, entries[3].pk]
    response = admin_browser.post(
        CHANGELIST, {"action": "export_selected_csv", "_selected_action": chosen}
    )

    rows = read_csv(response)
    assert sorted(int(row[1]) for row in rows[1:]) == sorted(chosen)


def test_admin_export_for_staff_without_permission_is_refused(make_user, entries):
    from django.test import Client

    client = Client()
    client.force_login(make_user("staffer", is_staff=True))

    assert client.get(EXPORT).status_code == 403


def test_admin_entries_cannot_be_added_changed_or_deleted(admin_browser, entries):
    entry = entries[0]

    assert admin_browser.get(f"{CHANGELIST}add/").status_code == 403
    admin_browser.post(f"{CHANGELIST}{entry.pk}/change/", {"details": "edited"})
    admin_browser.post(f"{CHANGELIST}{entry.pk}/delete/", {"post": "yes"})
    entry.refresh_from_db()
    assert entry.details == "logged in"
    assert AuditEntry.objects.count() == len(entries)


def test_admin_event_type_filter_lists_every_type(admin_browser, entries):
    response = admin_browser.get(CHANGELIST)

    for event_type in (AuditEventType.FINGERPRINT_MISMATCH, AuditEventType.AUDIT_PURGED):
        assert f"event_type__exact={event_type.value}".encode() in response.content
