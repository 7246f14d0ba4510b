"""Bad input gets a 4xx with a message naming what was wrong, never a 500."""

import pytest

from ssh_control import keys
from ssh_control.models import HostKeyPin, Instance

BIG = "9" * 30


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/instances/abc/ssh-status",
        f"/api/v1/instances/{BIG}/ssh-status",
        f"/api/v1/instances/{BIG}",
        "/api/v1/instances/-1/ssh-events",
        "/api/v1/instances/0/tunnels",
        "/api/v1/instances/1.5/ssh-fingerprint",
        "/api/v1/instances/%00/ssh-status",
    ],
)
def test_malformed_instance_id_gives_404(admin_client, instance, path):
    response = admin_client.get(path)

    assert response.status_code == 404


def test_huge_instance_id_on_post_gives_404(admin_client, instance):
    response = admin_client.post(f"/api/v1/instances/{BIG}/ssh-test")

    assert response.status_code == 404
    assert response.json()["error"]


@pytest.mark.parametrize(
    "method,path",
    [
        ("post", "/api/v1/instances"),
        ("patch", "/api/v1/instances/{id}"),
        ("put", "/api/v1/instances/{id}/ssh-allowed-ips"),
    ],
)
def test_malformed_json_body_gives_400(admin_client, instance, method, path):
    response = getattr(admin_client, method)(
        path.format(id=instance.pk), '{"allowed_ips": ', content_type="application/json"
    )

    assert response.status_code == 400
    assert "JSON parse error" in response.json()["error"]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "../etc", "ssh_host": "10.0.0.1"}, "name"),
        ({"name": "Agent", "ssh_host": "10.0.0.1"}, "name"),
        ({"name": "a" * 64, "ssh_host": "10.0.0.1"}, "name"),
        ({"name": "agent-1", "ssh_host": "10.0.0.1"}, "name"),
        ({"name": "agent-2", "ssh_host": "bad host!"}, "ssh_host"),
        ({"name": "agent-2"}, "ssh_host"),
        ({"name": "agent-2", "ssh_host": "10.0.0.1", "ssh_port": 70000}, "ssh_port"),
        ({"name": "agent-2", "ssh_host": "10.0.0.1", "vnc_port": 0}, "vnc_port"),
        ({"name": "agent-2", "ssh_host": "10.0.0.1", "gateway_port": "x"}, "gateway_port"),
        ({"name": "agent-2", "ssh_host": "h", "grants": [{"user": 99999}]}, "grants"),
        ({"name": "agent-2", "ssh_host": "h", "grants": [{"user": 1, "level": "root"}]}, "grants"),
        ({"name": "agent-2", "ssh_host": "h", "key_rotation_policy_days": -1}, "key_rotation"),
    ],
)
def test_instance_create_with_bad_field_gives_400_naming_it(admin_client, instance, body, field):
    response = admin_client.post("/api/v1/instances", body, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["error"].startswith(field)
    assert Instance.objects.count() == 1


def test_instance_create_with_bad_field_leaves_no_key_file(admin_client, settings):
    admin_client.post("/api/v1/instances", {"name": "agent-9", "ssh_host": "bad host!"})

    assert not (settings.CLAWORC_SSH_KEY_DIR / "agent-9.key").exists()


@pytest.fixture
def competing_create(monkeypatch):
    """Forces the race of two creations of one name: the other request's work lands just
    after this one passed validation, while its key pair is generated."""

    def arrange(competitor):
        generate = keys.generate_key_pair

        def generate_then_compete(name):
            key = generate(name)
            competitor(name)
            return key

        monkeypatch.setattr(keys, "generate_key_pair", generate_then_compete)

    return arrange


def test_instance_create_racing_duplicate_row_gives_400_and_no_key_file(
    admin_client, settings, competing_create
):
    competing_create(lambda name: Instance.objects.create(name=name, ssh_host="10.0.0.2"))

    response = admin_client.post(
        "/api/v1/instances", {"name": "agent-race", "ssh_host": "10.0.0.1"}, format="json"
    )

    assert response.status_code == 400, response.content
    assert response.json()["error"] == "name: an instance named 'agent-race' already exists"
    assert list(response.json()["fields"]) == ["name"]
    assert Instance.objects.get(name="agent-race").ssh_host == "10.0.0.2"
    assert not (settings.CLAWORC_SSH_KEY_DIR / "agent-race.key").exists()


def test_instance_create_racing_duplicate_key_file_gives_400_and_keeps_that_file(
    admin_client, settings, competing_create
):
    other_key = keys.generate_key_pair("agent-race")
    competing_create(lambda name: keys.write_private_key(name, other_key))

    response = admin_client.post(
        "/api/v1/instances", {"name": "agent-race", "ssh_host": "10.0.0.1"}, format="json"
    )

    stored = (settings.CLAWORC_SSH_KEY_DIR / "agent-race.key").read_bytes()
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "name: an instance named 'agent-race' already exists"
    assert not Instance.objects.filter(name="agent-race").exists()
    assert stored == other_key.encrypted_private_key


FINGERPRINT = "SHA256:" + "A" * 43


@pytest.mark.parametrize(
    "body",
    [
        f'["{FINGERPRINT}"]',
        f'"{FINGERPRINT}"',
        "42",
        "null",
        "{}",
        '{"fingerprint": null}',
        '{"fingerprint": 5}',
        f'{{"fingerprint": ["{FINGERPRINT}"]}}',
        '{"fingerprint": "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48"}',
        '{"fingerprint": "SHA256:short"}',
    ],
)
def test_host_key_accept_with_bad_body_gives_400_naming_fingerprint(admin_client, instance, body):
    response = admin_client.post(
        f"/api/v1/instances/{instance.pk}/ssh-host-key/accept",
        body,
        content_type="application/json",
    )

    assert response.status_code == 400, response.content
    assert response.json()["error"].startswith("fingerprint: ")
    assert list(response.json()["fields"]) == ["fingerprint"]
    assert not HostKeyPin.objects.filter(instance=instance).exists()


def test_instance_rename_is_refused(admin_client, instance):
    response = admin_client.patch(
        f"/api/v1/instances/{instance.pk}", {"name": "renamed"}, format="json"
    )

    assert response.status_code == 400
    assert "cannot be changed" in response.json()["error"]


@pytest.mark.parametrize(
    "body,message",
    [
        ({"allowed_ips": "10.0.0.5, banana"}, "'banana'"),
        ({"allowed_ips": "10.0.0.0/33"}, "'10.0.0.0/33'"),
        ({"allowed_ips": "300.1.1.1"}, "'300.1.1.1'"),
        ({"allowed_ips": "fe80::1::2"}, "'fe80::1::2'"),
        ({"allowed_ips": ["10.0.0.5"]}, "allowed_ips"),
        ({"allowed_ips": None}, "allowed_ips"),
        ({}, "allowed_ips"),
    ],
)
def test_allowed_ips_with_garbage_gives_400_naming_entry(admin_client, instance, body, message):
    response = admin_client.put(
        f"/api/v1/instances/{instance.pk}/ssh-allowed-ips", body, format="json"
    )

    instance.refresh_from_db()
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert instance.allowed_source_ips == ""


def test_allowed_ips_accepts_ipv4_ipv6_and_cidrs_normalised(admin_client, instance):
    response = admin_client.put(
        f"/api/v1/instances/{instance.pk}/ssh-allowed-ips",
        {"allowed_ips": " 10.0.0.5, 192.168.1.7/24,2001:DB8::1 , 2001:db8::/32,10.0.0.5"},
        format="json",
    )

    expected = "10.0.0.5, 192.168.1.0/24, 2001:db8::1, 2001:db8::/32"
    assert response.status_code == 200
    assert response.json() == {"allowed_ips": expected}
    assert admin_client.get(f"/api/v1/instances/{instance.pk}/ssh-allowed-ips").json() == {
        "allowed_ips": expected
    }


def test_allowed_ips_empty_clears_restriction(admin_client, instance):
    url = f"/api/v1/instances/{instance.pk}/ssh-allowed-ips"
    admin_client.put(url, {"allowed_ips": "10.0.0.5"}, format="json")

    response = admin_client.put(url, {"allowed_ips": ""}, format="json")

    assert response.json() == {"allowed_ips": ""}


def test_allowed_ips_not_writable_through_instance_update(admin_client, instance):
    admin_client.patch(
        f"/api/v1/instances/{instance.pk}", {"allowed_source_ips": "10.0.0.1"}, format="json"
    )

    instance.refresh_from_db()
    assert instance.allowed_source_ips == ""


@pytest.mark.parametrize("limit", ["abc", "-1", "0", "1001", "1e3"])
def test_events_with_bad_limit_gives_400(admin_client, instance, limit):
    response = admin_client.get(f"/api/v1/instances/{instance.pk}/ssh-events?limit={limit}")

    assert response.status_code == 400
    assert response.json()["error"].startswith("limit")


@pytest.mark.parametrize("query", ["limit=abc", "limit=-5", "offset=-1", "offset=x"])
def test_audit_list_with_bad_paging_gives_400(admin_client, query):
    response = admin_client.get(f"/api/v1/ssh-audit-logs?{query}")

    assert response.status_code == 400
    assert response.json()["error"].startswith(query.split("=")[0])


@pytest.mark.parametrize("days", ["0", "-3", "abc", "1.5"])
def test_audit_purge_with_bad_days_gives_400(admin_client, days):
    response = admin_client.post(f"/api/v1/ssh-audit-logs/purge?days={days}")

    assert response.status_code == 400
    assert response.json()["error"].startswith("days")


def test_unsupported_method_gives_405(admin_client, instance):
    response = admin_client.delete(f"/api/v1/instances/{instance.pk}/ssh-status")

    assert response.status_code == 405
    assert response.json()["error"]
