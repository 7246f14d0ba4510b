"""Status, events, tunnels and metrics read what the database holds; SSH actions dispatch."""

import base64
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from django.utils import timezone

from claworc.celery import app
from ssh_control import keys
from ssh_control.choices import ConnectionEventType, ConnectionState, TunnelStatus
from ssh_control.models import ConnectionEvent, ConnectionStatus, InstanceLease, Tunnel
from tests.conftest import client_for

RUNBOOK_STATUS_FIELDS = {
    "state",
    "healthy",
    "connected_at",
    "last_health_check",
    "successful_checks",
    "failed_checks",
    "uptime",
    "tunnels",
    "recent_events",
}
RUNBOOK_TUNNEL_FIELDS = {
    "service",
    "type",
    "local_port",
    "remote_port",
    "status",
    "started_at",
    "last_check",
    "last_error",
    "bytes_transferred",
}


def test_status_of_new_instance_is_disconnected_and_well_formed(admin_client, instance):
    body = admin_client.get(f"/api/v1/instances/{instance.pk}/ssh-status").json()

    assert RUNBOOK_STATUS_FIELDS <= set(body)
    assert body["state"] == "disconnected"
    assert body["healthy"] is False
    assert body["recent_events"] == []
    assert body["uptime"] == "0s"
    # The standard tunnels exist from the start and wait for the connection.
    assert {(tunnel["service"], tunnel["remote_port"]) for tunnel in body["tunnels"]} == {
        ("vnc", 3000),
        ("gateway", 8080),
    }
    assert {tunnel["status"] for tunnel in body["tunnels"]} == {"unhealthy"}


@pytest.fixture
def connected(instance):
    now = timezone.now()
    ConnectionStatus.objects.filter(instance=instance).update(
        state=ConnectionState.CONNECTED,
        is_healthy=True,
        connected_at=now - timedelta(hours=1, minutes=2, seconds=3),
        last_health_check_at=now,
        successful_check_count=7,
        failed_check_count=2,
    )
    for event_type in (ConnectionEventType.CONNECTING, ConnectionEventType.CONNECTED):
        ConnectionEvent.objects.create(instance=instance, event_type=event_type, reason="test")
    Tunnel.objects.filter(instance=instance, service="vnc").update(
        local_port=41000, status=TunnelStatus.ACTIVE, bytes_transferred=1234, last_error=""
    )
    Tunnel.objects.filter(instance=instance, service="gateway").update(
        status=TunnelStatus.UNHEALTHY, last_error="TCP probe to 127.0.0.1:41001 failed"
    )
    return instance


def test_status_reflects_published_connection_state(viewer, connected):
    body = client_for(viewer).get(f"/api/v1/instances/{connected.pk}/ssh-status").json()

    assert body["state"] == "connected"
    assert body["healthy"] is True
    assert body["successful_checks"] == 7 and body["failed_checks"] == 2
    assert body["uptime"].startswith("1h2m")
    assert [event["event_type"] for event in body["recent_events"]] == ["connected", "connecting"]
    assert {tunnel["service"] for tunnel in body["tunnels"]} == {"vnc", "gateway"}


def test_tunnels_list_has_runbook_fields(admin_client, connected):
    tunnels = admin_client.get(f"/api/v1/instances/{connected.pk}/tunnels").json()

    by_service = {tunnel["service"]: tunnel for tunnel in tunnels}
    assert all(RUNBOOK_TUNNEL_FIELDS <= set(tunnel) for tunnel in tunnels)
    assert by_service["vnc"]["type"] == "reverse"
    assert by_service["vnc"]["bytes_transferred"] == 1234
    assert by_service["gateway"]["status"] == "unhealthy"
    assert by_service["gateway"]["last_error"].startswith("TCP probe to")


def test_events_newest_first_and_limited(admin_client, instance):
    for index in range(5):
        ConnectionEvent.objects.create(
            instance=instance, event_type=ConnectionEventType.RECONNECTING, reason=f"try {index}"
        )

    events = admin_client.get(f"/api/v1/instances/{instance.pk}/ssh-events?limit=3").json()

    assert [event["reason"] for event in events] == ["try 4", "try 3", "try 2"]


def test_metrics_aggregate_published_state(admin_client, connected, make_instance):
    make_instance("agent-2")

    metrics = admin_client.get("/api/v1/ssh-metrics").json()

    assert metrics["total_instances"] == 2
    assert metrics["connections_by_state"]["connected"] == 1
    assert metrics["connections_by_state"]["disconnected"] == 1
    assert metrics["healthy_connections"] == 1
    assert metrics["successful_checks"] == 7
    # agent-2's two standard tunnels wait for its connection.
    assert metrics["tunnels"] == {
        "total": 4,
        "active": 1,
        "unhealthy": 3,
        "bytes_transferred": 1234,
    }


def test_fleet_status_counts_by_state(admin_client, connected, make_instance):
    make_instance("agent-2")

    body = admin_client.get("/api/v1/ssh-status").json()

    assert body["total"] == 2
    assert body["healthy"] == 1
    assert body["by_state"]["connected"] == 1 and body["by_state"]["disconnected"] == 1


@pytest.mark.parametrize("route", ["ssh-test", "ssh-reconnect", "rotate-ssh-key"])
def test_ssh_action_without_worker_gives_503_manager_not_initialized(admin_client, instance, route):
    response = admin_client.post(f"/api/v1/instances/{instance.pk}/{route}")

    assert response.status_code == 503
    assert response.json()["error"] == "SSH manager not initialized"


def test_ssh_action_with_expired_lease_gives_503(admin_client, instance):
    now = timezone.now()
    InstanceLease.objects.create(
        instance=instance, node="gone", acquired_at=now - timedelta(minutes=5),
        expires_at=now - timedelta(seconds=1),
    )  # fmt: skip

    response = admin_client.post(f"/api/v1/instances/{instance.pk}/ssh-test")

    assert response.status_code == 503


@pytest.fixture
def silent_queue():
    """A queue nobody consumes; purged afterwards so the unanswered task does not linger."""
    name = "pytest-no-such-worker"
    yield name
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(f"ssh.{name}")


def test_ssh_action_with_silent_owner_gives_504_after_timeout(
    admin_client, instance, settings, silent_queue
):
    settings.CLAWORC_SSH_REQUEST_TIMEOUT_SECONDS = 1
    now = timezone.now()
    InstanceLease.objects.create(
        instance=instance, node=silent_queue, acquired_at=now,
        expires_at=now + timedelta(minutes=1),
    )  # fmt: skip

    started = time.monotonic()
    response = admin_client.post(f"/api/v1/instances/{instance.pk}/ssh-reconnect")

    assert response.status_code == 504
    assert "pytest-no-such-worker did not answer within 1s" in response.json()["error"]
    assert time.monotonic() - started < 5


def test_key_material_never_logged_on_create(make_instance, settings, caplog):
    caplog.set_level("DEBUG")

    make_instance("agent-log")

    private = (settings.CLAWORC_SSH_KEY_DIR / "agent-log.key").read_text()
    seed = keys.load_private_key("agent-log").private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert "PRIVATE" not in caplog.text
    assert private.splitlines()[1] not in caplog.text
    for encoded in (seed.hex(), base64.b64encode(seed).decode().rstrip("=")):
        assert encoded not in caplog.text
