"""GET /api/v1/ssh-audit-logs: every filter and combination against a known data set,
pages that hold still under concurrent inserts, and a 400 naming each bad parameter."""

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from audit.choices import AuditEventType
from audit.models import AuditEntry
from audit.services import audit_flush, audit_record

URL = "/api/v1/ssh-audit-logs"
T0 = datetime(2026, 2, 20, tzinfo=UTC)
INSTANCES = [(5, "my-instance"), (6, "my-bot"), (None, "")]
EVENTS = [
    AuditEventType.CONNECTION_FAILED,
    AuditEventType.KEY_ROTATION,
    AuditEventType.IP_RESTRICTED,
    AuditEventType.CONNECTION_ESTABLISHED,
    AuditEventType.FINGERPRINT_MISMATCH,
]
USERS = ["admin", "alice", "system", "bob"]


@pytest.fixture
def dataset(db):
    """150 entries over 75 hours, two per hour, so every timestamp has a tie."""
    AuditEntry.objects.bulk_create(
        AuditEntry(
            instance_id=INSTANCES[n % 3][0],
            instance_name=INSTANCES[n % 3][1],
            event_type=EVENTS[n % 5],
            username=USERS[n % 4],
            source_ip=f"192.0.2.{n % 7}",
            details=f"entry {n}",
            created_at=T0 + timedelta(hours=n // 2),
        )
        for n in range(150)
    )
    return sorted(AuditEntry.objects.all(), key=lambda e: (e.created_at, e.id), reverse=True)


def expect(dataset, **conditions) -> list[int]:
    def matches(entry) -> bool:
        checks = {
            "instance_id": lambda value: entry.instance_id == value,
            "instance_name": lambda value: entry.instance_name == value,
            "event_type": lambda values: entry.event_type in values,
            "username": lambda value: entry.username == value,
            "since": lambda value: entry.created_at >= value,
            "until": lambda value: entry.created_at <= value,
        }
        return all(checks[name](value) for name, value in conditions.items())

    return [entry.id for entry in dataset if matches(entry)]


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


CASES = {
    "": {},
    "instance_id=5": {"instance_id": 5},
    "instance_name=my-bot": {"instance_name": "my-bot"},
    "event_type=key_rotation": {"event_type": {"key_rotation"}},
    "event_type=key_rotation&event_type=ip_restricted": {
        "event_type": {"key_rotation", "ip_restricted"}
    },
    "event_type=key_rotation,ip_restricted": {"event_type": {"key_rotation", "ip_restricted"}},
    "event_type=key_rotation, ip_restricted&event_type=connection_failed": {
        "event_type": {"key_rotation", "ip_restricted", "connection_failed"}
    },
    "username=alice": {"username": "alice"},
    "since=2026-02-21T00:00:00Z": {"since": T0 + timedelta(days=1)},
    "until=2026-02-21T00:00:00Z": {"until": T0 + timedelta(days=1)},
    "since=2026-02-20T10:00:00Z&until=2026-02-21T00:00:00Z": {
        "since": T0 + timedelta(hours=10),
        "until": T0 + timedelta(days=1),
    },
    "since=2026-02-20T12:00:00%2B02:00": {"since": T0 + timedelta(hours=10)},
    "since=2026-02-20T12:00:00+02:00": {"since": T0 + timedelta(hours=10)},
    "instance_name=my-instance&event_type=connection_failed&username=admin": {
        "instance_name": "my-instance",
        "event_type": {"connection_failed"},
        "username": "admin",
    },
    "instance_id=6&event_type=key_rotation,fingerprint_mismatch&since=2026-02-21T00:00:00Z": {
        "instance_id": 6,
        "event_type": {"key_rotation", "fingerprint_mismatch"},
        "since": T0 + timedelta(days=1),
    },
    "username=bob&until=2026-02-20T20:00:00Z&instance_name=": {
        "username": "bob",
        "until": T0 + timedelta(hours=20),
    },
    "instance_name=nobody": {"instance_name": "nobody"},
}


@pytest.mark.parametrize("query", CASES)
def test_audit_list_with_filters_returns_matching_entries_newest_first(
    admin_client, dataset, query
):
    response = admin_client.get(f"{URL}?{query}&limit=1000")

    expected = expect(dataset, **CASES[query])
    assert ids(response) == expected
    assert response.json()["count"] == len(expected)


def test_audit_list_without_limit_returns_100_newest_and_total(admin_client, dataset):
    body = admin_client.get(URL).json()

    assert [row["id"] for row in body["results"]] == [entry.id for entry in dataset[:100]]
    assert body["count"] == 150
    assert body["max_id"] == max(entry.id for entry in dataset)


def test_audit_list_pages_cover_every_entry_once_in_order(admin_client, dataset):
    pages = [
        ids(admin_client.get(f"{URL}?event_type=key_rotation,ip_restricted&limit=7&offset={n}"))
        for n in range(0, 70, 7)
    ]

    walked = [entry_id for page in pages for entry_id in page]
    assert walked == expect(dataset, event_type={"key_rotation", "ip_restricted"})


def test_audit_list_entries_carry_runbook_fields(admin_client, dataset):
    row = admin_client.get(f"{URL}?limit=1").json()["results"][0]

    for field in ("id", "instance_id", "instance_name", "event_type", "username", "source_ip"):
        assert field in row
    for field in ("details", "duration_ms", "created_at", "request_id", "data"):
        assert field in row


def test_audit_list_following_next_links_under_inserts_has_no_duplicates_or_gaps(
    admin_client, dataset
):
    """New entries land at the head of a newest-first list while the pages are walked."""
    walked, url, inserted = [], f"{URL}?limit=25", 0
    while url:
        body = admin_client.get(url).json()
        walked += [row["id"] for row in body["results"]]
        url = body["next"] and _path(body["next"])
        for _ in range(10):
            audit_record(AuditEventType.COMMAND_EXECUTION, details="concurrent insert")
            inserted += 1
        assert audit_flush(10)

    assert walked == [entry.id for entry in dataset]
    assert AuditEntry.objects.count() == 150 + inserted


def test_audit_list_plain_offsets_under_inserts_would_repeat_entries(admin_client, dataset):
    """Why pages pin `max_id`: without it, the same walk sees entries twice."""
    walked = []
    for offset in range(0, 150, 25):
        walked += ids(admin_client.get(f"{URL}?limit=25&offset={offset}&max_id=999999999"))
        for _ in range(10):
            audit_record(AuditEventType.COMMAND_EXECUTION, details="concurrent insert")
        assert audit_flush(10)

    assert len(walked) != len(set(walked))


BAD_PARAMETERS = [
    ("event_type=bogus", "event_type"),
    ("event_type=key_rotation,bogus", "event_type"),
    ("event_type=key_rotation&event_type=Key_Rotation", "event_type"),
    ("since=yesterday", "since"),
    ("since=2026-02-30T00:00:00Z", "since"),
    ("until=2026-13-01T00:00:00Z", "until"),
    ("until=1700000000", "until"),
    ("since=2026-02-21T00:00:00Z&until=2026-02-20T00:00:00Z", "since"),
    ("limit=-1", "limit"),
    ("limit=0", "limit"),
    ("limit=abc", "limit"),
    ("limit=1001", "limit"),
    ("limit=1.5", "limit"),
    ("offset=-1", "offset"),
    ("offset=abc", "offset"),
    ("instance_id=abc", "instance_id"),
    ("instance_id=1.5", "instance_id"),
    ("instance_id=-3", "instance_id"),
    ("max_id=abc", "max_id"),
    ("max_id=0", "max_id"),
]


@pytest.mark.parametrize(("query", "parameter"), BAD_PARAMETERS)
def test_audit_list_with_bad_parameter_gives_400_naming_it(admin_client, query, parameter):
    response = admin_client.get(f"{URL}?{query}")

    assert response.status_code == 400
    body = response.json()
    assert parameter in body["fields"]
    assert body["error"].startswith(parameter)


def test_audit_list_with_max_limit_returns_up_to_1000(admin_client, dataset):
    assert len(ids(admin_client.get(f"{URL}?limit=1000"))) == 150


def test_audit_list_for_non_admin_is_refused(client_for_viewer):
    assert client_for_viewer.get(URL).status_code == 403


@pytest.fixture
def client_for_viewer(viewer):
    from tests.conftest import client_for

    return client_for(viewer)


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"
