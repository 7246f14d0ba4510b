"""Custom tunnels through the API: validation, standard tunnels protected, 404s."""

import importlib

import pytest
from django.apps import apps

from audit.choices import AuditEventType
from audit.models import AuditEntry
from audit.services import audit_flush
from ssh_control.models import Tunnel


def tunnels_url(instance) -> str:
    return f"/api/v1/instances/{instance.pk}/tunnels"


RUNBOOK_STATUSES = {"active", "unhealthy"}


def test_tunnels_of_fresh_instance_show_only_runbook_statuses(admin_client, instance):
    # A row written with the model's defaults, as any code path that omits `status` does.
    Tunnel.objects.create(instance=instance, service="custom", name="bare", remote_port=9100)

    listed = admin_client.get(tunnels_url(instance)).json()

    assert {row["name"] for row in listed} == {"vnc", "gateway", "bare"}
    assert {row["status"] for row in listed} <= RUNBOOK_STATUSES


def test_pending_tunnel_rows_are_migrated_to_unhealthy(admin_client, instance):
    vnc = Tunnel.objects.get(instance=instance, service="vnc")
    Tunnel.objects.filter(pk=vnc.pk).update(status="pending", last_error="")
    migration = importlib.import_module("ssh_control.migrations.0005_tunnel_status_unhealthy")

    migration.pending_to_unhealthy(apps, None)
    listed = {row["service"]: row for row in admin_client.get(tunnels_url(instance)).json()}

    assert listed["vnc"]["status"] == "unhealthy"
    assert listed["vnc"]["last_error"] == "waiting for the SSH connection"


def test_custom_tunnel_is_listed_after_creation(admin_client, instance):
    created = admin_client.post(
        tunnels_url(instance), {"name": "metrics", "remote_port": 9100}, format="json"
    )
    listed = admin_client.get(tunnels_url(instance)).json()

    assert created.status_code == 201
    assert created.json()["service"] == "custom" and created.json()["type"] == "reverse"
    assert ("custom", "metrics", 9100) in {
        (row["service"], row["name"], row["remote_port"]) for row in listed
    }


def test_custom_tunnel_create_and_delete_are_audited(admin_client, instance):
    created = admin_client.post(
        tunnels_url(instance), {"name": "metrics", "remote_port": 9100}, format="json"
    )
    tunnel_id = created.json()["id"]
    deleted = admin_client.delete(f"{tunnels_url(instance)}/{tunnel_id}")

    assert (created.status_code, deleted.status_code) == (201, 204)
    assert audit_flush()
    entries = AuditEntry.objects.filter(
        event_type__in=[AuditEventType.TUNNEL_CREATED, AuditEventType.TUNNEL_DELETED]
    ).order_by("id")
    assert [
        (entry.event_type, entry.instance_id, entry.username, entry.source_ip) for entry in entries
    ] == [
        (AuditEventType.TUNNEL_CREATED, instance.pk, "admin", "127.0.0.1"),
        (AuditEventType.TUNNEL_DELETED, instance.pk, "admin", "127.0.0.1"),
    ]
    for entry in entries:
        assert entry.data == {"tunnel_id": tunnel_id, "name": "metrics", "remote_port": 9100}
        assert "metrics" in entry.details and "9100" in entry.details
    # Two API calls, two request ids.
    assert entries[0].request_id != entries[1].request_id


def test_refused_tunnel_changes_are_not_audited(admin_client, instance):
    vnc = Tunnel.objects.get(instance=instance, service="vnc")

    admin_client.post(tunnels_url(instance), {"name": "m", "remote_port": 0}, format="json")
    admin_client.delete(f"{tunnels_url(instance)}/{vnc.pk}")

    assert audit_flush()
    assert not AuditEntry.objects.filter(event_type__startswith="tunnel_").exists()


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "m", "remote_port": 0}, "remote_port"),
        ({"name": "m", "remote_port": 70000}, "remote_port"),
        ({"name": "m"}, "remote_port"),
        ({"name": "Bad Name!", "remote_port": 9100}, "name"),
        ({"service": "vnc", "name": "m", "remote_port": 9100}, "service"),
    ],
)
def test_custom_tunnel_with_bad_body_gives_400(admin_client, instance, body, field):
    response = admin_client.post(tunnels_url(instance), body, format="json")

    assert response.status_code == 400
    assert response.json()["error"].startswith(field)


def test_custom_tunnel_with_duplicate_name_gives_400(admin_client, instance):
    admin_client.post(tunnels_url(instance), {"name": "m", "remote_port": 9100}, format="json")

    response = admin_client.post(
        tunnels_url(instance), {"name": "m", "remote_port": 9200}, format="json"
    )

    assert response.status_code == 400
    assert "already exists" in response.json()["error"]


def test_standard_tunnel_cannot_be_deleted(admin_client, instance):
    vnc = Tunnel.objects.get(instance=instance, service="vnc")

    response = admin_client.delete(f"{tunnels_url(instance)}/{vnc.pk}")

    assert response.status_code == 400
    assert Tunnel.objects.filter(pk=vnc.pk).exists()


def test_unknown_tunnel_id_gives_404(admin_client, instance, make_instance):
    other = make_instance("agent-other")
    foreign = Tunnel.objects.get(instance=other, service="vnc")

    missing = admin_client.delete(f"{tunnels_url(instance)}/999999")
    cross = admin_client.delete(f"{tunnels_url(instance)}/{foreign.pk}")

    assert missing.status_code == 404
    assert cross.status_code == 404
    assert Tunnel.objects.filter(pk=foreign.pk).exists()


def test_unknown_tunnel_id_delete_names_the_id(admin_client, instance):
    response = admin_client.delete(f"{tunnels_url(instance)}/999999")

    assert response.status_code == 404
    assert response.json()["error"] == "no tunnel with id 999999 for instance agent-1"


def test_standard_tunnels_follow_instance_ports(admin_client, instance):
    admin_client.patch(f"/api/v1/instances/{instance.pk}", {"vnc_port": 5901}, format="json")

    assert Tunnel.objects.get(instance=instance, service="vnc").remote_port == 5901
