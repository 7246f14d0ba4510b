"""The supervisor keeps an instance's tunnels alive over its connection and publishes them."""

import os
import socket

import pytest

from ssh_control.choices import TunnelStatus
from ssh_control.models import Tunnel
from ssh_control.tunnels.services import tunnel_create_custom
from ssh_control.tunnels.supervisor import TunnelSupervisor
from tests.agents import wait_until
from tests.tunnels.conftest import EchoService, connect
from tests.tunnels.test_forwarder import exchange

MONITOR_SECONDS = 0.5


@pytest.fixture
def fast_tunnels(settings):
    settings.CLAWORC_TUNNEL_MONITOR_INTERVAL_SECONDS = MONITOR_SECONDS
    settings.CLAWORC_TUNNEL_GLOBAL_CHECK_INTERVAL_SECONDS = 2
    settings.CLAWORC_TUNNEL_PROBE_TIMEOUT_SECONDS = 1
    settings.CLAWORC_TUNNEL_BASE_BACKOFF_SECONDS = 0.1
    settings.CLAWORC_TUNNEL_MAX_BACKOFF_SECONDS = 0.4


@pytest.fixture
def supervisor(transactional_db, fast_tunnels):
    running = TunnelSupervisor()
    yield running
    running.stop()


def tunnel(instance, service: str, name: str = "") -> Tunnel:
    return Tunnel.objects.get(instance=instance, service=service, name=name)


def wait_for_status(instance, service, status, *, name="", timeout=10) -> Tunnel:
    return wait_until(
        lambda: (row := tunnel(instance, service, name)).status == status and row,
        timeout=timeout,
        message=f"{service} tunnel {status}",
    )


def test_attached_connection_brings_up_standard_tunnels(supervisor, tunnel_instance, connection):
    supervisor.attach(tunnel_instance.pk, connection)

    vnc = wait_for_status(tunnel_instance, "vnc", TunnelStatus.ACTIVE)
    gateway = wait_for_status(tunnel_instance, "gateway", TunnelStatus.ACTIVE)

    assert vnc.local_port and gateway.local_port and vnc.local_port != gateway.local_port
    assert vnc.bind_host == "127.0.0.1"
    assert vnc.started_at and vnc.last_check_at and vnc.last_error == ""


def test_bytes_transferred_match_what_was_sent(supervisor, tunnel_instance, connection):
    supervisor.attach(tunnel_instance.pk, connection)
    vnc = wait_for_status(tunnel_instance, "vnc", TunnelStatus.ACTIVE)
    payload = os.urandom(300_000)

    assert exchange(vnc.local_port, payload) == payload

    wait_until(
        lambda: tunnel(tunnel_instance, "vnc").bytes_transferred == 2 * len(payload),
        timeout=5,
        message="bytes published",
    )


def test_service_down_marks_tunnel_unhealthy_and_restart_heals(
    supervisor, tunnel_instance, connection, echo_service
):
    supervisor.attach(tunnel_instance.pk, connection)
    wait_for_status(tunnel_instance, "vnc", TunnelStatus.ACTIVE)

    echo_service.stop()
    unhealthy = wait_for_status(
        tunnel_instance, "vnc", TunnelStatus.UNHEALTHY, timeout=MONITOR_SECONDS + 2
    )
    restarted = EchoService(port=echo_service.port)
    healed = wait_for_status(tunnel_instance, "vnc", TunnelStatus.ACTIVE)

    assert unhealthy.last_error.startswith("TCP probe to 127.0.0.1:")
    assert " failed" in unhealthy.last_error
    assert exchange(healed.local_port, b"back again") == b"back again"
    restarted.stop()


def test_lost_connection_takes_tunnels_down_and_new_one_brings_them_back(
    supervisor, tunnel_instance, connection, agent
):
    supervisor.attach(tunnel_instance.pk, connection)
    before = wait_for_status(tunnel_instance, "vnc", TunnelStatus.ACTIVE)

    connection.close()
    supervisor.detach(tunnel_instance.pk, "connection closed")
    down = tunnel(tunnel_instance, "vnc")
    replacement = connect(tunnel_instance, agent)
    supervisor.attach(tunnel_instance.pk, replacement)
    after = wait_for_status(tunnel_instance, "vnc", TunnelStatus.ACTIVE)

    assert down.status == TunnelStatus.UNHEALTHY and down.local_port is None
    assert "connection closed" in down.last_error
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", before.local_port), timeout=1).close()
    assert exchange(after.local_port, b"new connection") == b"new connection"
    replacement.close()


def test_dead_transport_fails_probe_without_detach(supervisor, tunnel_instance, connection):
    supervisor.attach(tunnel_instance.pk, connection)
    wait_for_status(tunnel_instance, "vnc", TunnelStatus.ACTIVE)

    connection.close()

    unhealthy = wait_for_status(
        tunnel_instance, "vnc", TunnelStatus.UNHEALTHY, timeout=MONITOR_SECONDS + 3
    )
    assert unhealthy.last_error.startswith("TCP probe to")


def test_custom_tunnel_is_started_and_removed_with_its_row(
    supervisor, tunnel_instance, connection, http_service
):
    supervisor.attach(tunnel_instance.pk, connection)
    custom = tunnel_create_custom(
        tunnel_instance, name="metrics", remote_port=http_service.port, actor="pytest"
    )
    active = wait_for_status(tunnel_instance, "custom", TunnelStatus.ACTIVE, name="metrics")

    custom_id = custom.pk
    custom.delete()

    wait_until(
        lambda: supervisor.tunnels_of(tunnel_instance.pk).listeners.get(custom_id) is None,
        timeout=5,
        message="custom listener closed",
    )
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", active.local_port), timeout=1).close()
