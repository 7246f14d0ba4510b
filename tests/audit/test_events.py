"""Entries written by the real actions, through the API, with a trustworthy source IP.

Covered here: login, login_failed, instance_created/updated/deleted, allowed_ips_changed
and audit_purged. The SSH events (connections, commands, files, terminals, key rotation,
fingerprint mismatch, IP restriction) are written by actions that other issues add; their
tests belong with those actions.
"""

import ipaddress

import pytest
from django.test import Client, override_settings

from audit.choices import AuditEventType
from audit.models import AuditEntry
from audit.services import audit_flush
from tests.conftest import PASSWORD

PEER = "203.0.113.5"
PROXY = "10.0.0.1"
CLIENT = "198.51.100.7"
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def login(username: str, password: str = PASSWORD, *, peer: str = PEER, **headers):
    return Client(REMOTE_ADDR=peer).post(
        "/api/v1/auth/login",
        {"username": username, "password": password},
        content_type="application/json",
        headers=headers,
    )


def only_entry(event_type: str) -> AuditEntry:
    assert audit_flush(10)
    return AuditEntry.objects.get(event_type=event_type)


@pytest.fixture
def admin_session(admin_user):
    client = Client(REMOTE_ADDR=PEER)
    client.force_login(admin_user)
    return client


def test_login_is_audited_with_user_ip_and_request_id(admin_user):
    assert login("admin").status_code == 200

    entry = only_entry(AuditEventType.LOGIN)
    assert (entry.username, entry.source_ip) == ("admin", PEER)
    assert entry.request_id is not None


def test_login_failed_is_audited_with_the_name_tried(db):
    assert login("nobody\nINFO forged line", "wrong").status_code == 401

    entry = only_entry(AuditEventType.LOGIN_FAILED)
    assert entry.username == "nobody\\x0aINFO forged line"
    assert entry.source_ip == PEER


def test_instance_life_cycle_is_audited_with_names_that_outlive_it(admin_session):
    created = admin_session.post(
        "/api/v1/instances",
        {"name": "agent-7", "ssh_host": "127.0.0.1"},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    instance_id = created.json()["id"]
    url = f"/api/v1/instances/{instance_id}"
    assert (
        admin_session.patch(url, {"ssh_port": 2222}, content_type="application/json").status_code
        == 200
    )
    assert admin_session.delete(url).status_code == 204

    assert audit_flush(10)
    entries = list(AuditEntry.objects.order_by("id"))
    assert [entry.event_type for entry in entries] == [
        AuditEventType.INSTANCE_CREATED,
        AuditEventType.INSTANCE_UPDATED,
        AuditEventType.INSTANCE_DELETED,
    ]
    assert {entry.instance_name for entry in entries} == {"agent-7"}
    assert {entry.username for entry in entries} == {"admin"}
    assert {entry.source_ip for entry in entries} == {PEER}
    assert entries[0].instance_id == entries[1].instance_id == instance_id
    # Each API call is its own request.
    assert len({entry.request_id for entry in entries}) == 3


def test_allowed_ips_change_is_audited_with_before_and_after(admin_session, instance):
    response = admin_session.put(
        f"/api/v1/instances/{instance.pk}/ssh-allowed-ips",
        {"allowed_ips": "10.0.0.5, 192.168.1.0/24"},
        content_type="application/json",
    )
    assert response.status_code == 200

    entry = only_entry(AuditEventType.ALLOWED_IPS_CHANGED)
    assert entry.instance_id == instance.pk
    assert entry.data["from"] == ""
    assert "192.168.1.0/24" in entry.data["to"]
    assert entry.username == "admin"


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(admin_user):
    with override_settings(CLAWORC_TRUSTED_PROXIES=TRUSTED):
        login("admin", peer=PEER, x_forwarded_for=CLIENT, x_real_ip=CLIENT)

    assert only_entry(AuditEventType.LOGIN).source_ip == PEER


def test_spoofed_forwarded_for_without_trusted_proxies_is_ignored(admin_user):
    login("admin", peer=PROXY, x_forwarded_for=CLIENT)

    assert only_entry(AuditEventType.LOGIN).source_ip == PROXY


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x_forwarded_for": CLIENT}, CLIENT),
        # The right-most address that is not a trusted proxy; left of it is client-chosen.
        ({"x_forwarded_for": f"6.6.6.6, {CLIENT}, 10.0.0.2"}, CLIENT),
        ({"x_real_ip": CLIENT}, CLIENT),
        ({}, PROXY),
    ],
)
def test_forwarded_for_from_trusted_proxy_is_honoured(admin_user, headers, expected):
    with override_settings(CLAWORC_TRUSTED_PROXIES=TRUSTED):
        login("admin", peer=PROXY, **headers)

    assert only_entry(AuditEventType.LOGIN).source_ip == expected
