"""Tunnels held by a real SSH worker follow its connection to the agent."""

import socket

import pytest

from ssh_control.choices import ConnectionState, TunnelStatus
from ssh_control.models import Tunnel
from tests.agents import wait_until
from tests.ssh_control.conftest import wait_status
from tests.tunnels.conftest import EchoService

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _active_port(instance, service: str, *, other_than: int | None = None) -> int:
    def active():
        row = Tunnel.objects.get(instance=instance, service=service)
        if row.status == TunnelStatus.ACTIVE and row.local_port not in (None, other_than):
            return row.local_port
        return None

    return wait_until(active, timeout=20, message=f"{service} tunnel active")


def _echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as stream:
        stream.sendall(payload)
        return stream.recv(len(payload))


def test_worker_tunnels_come_back_on_the_new_connection_after_sshd_restart(
    make_instance, make_agent, start_worker
):
    echo = EchoService()
    instance = make_instance("tun-follow", vnc_port=echo.port)
    agent = make_agent(instance, serve=True)
    worker = start_worker()
    agent.wait_ready()
    worker.wait_ready()
    first_port = _active_port(instance, "vnc")
    assert _echo(first_port, b"first") == b"first"

    # The old connection's tunnels go down with it: its listener stops accepting.
    agent.stop()
    wait_status(instance, timeout=10, state=ConnectionState.RECONNECTING)
    down = Tunnel.objects.get(instance=instance, service="vnc")
    assert down.status == TunnelStatus.UNHEALTHY and down.local_port is None
    assert down.last_error.startswith("SSH connection down")
    with pytest.raises(OSError):
        _echo(first_port, b"stale")

    agent.start().wait_ready()
    wait_status(instance, timeout=20, state=ConnectionState.CONNECTED)
    second_port = _active_port(instance, "vnc", other_than=first_port)
    assert _echo(second_port, b"second") == b"second"
    echo.stop()
