"""The tunnel listener over a real SSH connection: exact bytes, counts, limits, no leaks."""

import os
import socket
import threading
import time

import pytest

from ssh_control.tunnels.forwarder import ConnectionLimiter, TunnelListener
from tests.agents import wait_until
from tests.tunnels.conftest import TcpService

PAYLOAD_BYTES = 1024 * 1024


def open_listener(connection, port, *, limit=64, on_refused=None) -> TunnelListener:
    return TunnelListener(
        label="test",
        bind_host="127.0.0.1",
        remote_port=port,
        open_channel=lambda remote: connection.open_direct_tcpip("127.0.0.1", remote, timeout=5),
        limiters=(ConnectionLimiter(limit, scope="instance"), ConnectionLimiter(1000)),
        on_refused=on_refused,
    )


def exchange(port: int, payload: bytes) -> bytes:
    """Send `payload` to the echo service through the tunnel while reading the echo."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        sender = threading.Thread(
            target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR))
        )
        sender.start()
        while chunk := client.recv(65536):
            received += chunk
        sender.join()
    return bytes(received)


def test_tunnel_carries_random_megabyte_exactly_both_ways(connection, echo_service):
    listener = open_listener(connection, echo_service.port)
    payload = os.urandom(PAYLOAD_BYTES)

    try:
        echoed = exchange(listener.port, payload)
        wait_until(lambda: listener.active_connections == 0, timeout=5)
        counted = listener.take_bytes()
    finally:
        listener.close()

    assert echoed == payload
    assert counted == 2 * PAYLOAD_BYTES


def test_tunnel_over_connection_limit_refuses_extra_clients(connection, echo_service):
    listener = open_listener(connection, echo_service.port, limit=2)
    held = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(2)]
    try:
        for client in held:
            client.sendall(b"x")
            assert client.recv(1) == b"x"

        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as extra:
            assert extra.recv(1) == b""
        assert listener.refused == 1
    finally:
        for client in held:
            client.close()
        listener.close()


def test_tunnel_over_connection_limit_reports_reason_before_closing(connection, echo_service):
    reasons = []
    listener = open_listener(
        connection, echo_service.port, limit=1, on_refused=lambda r, n: reasons.extend([r] * n)
    )
    held = socket.create_connection(("127.0.0.1", listener.port))
    try:
        held.sendall(b"x")
        assert held.recv(1) == b"x"

        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as extra:
            # The refused client gets no bytes at all: the tunnel may carry any protocol.
            assert extra.recv(1) == b""
            assert reasons == ["the tunnel's connection limit (1 per instance) was reached"]
    finally:
        held.close()
        listener.close()


def test_refusal_flood_costs_no_thread_per_connection_and_is_reported_in_batches(
    connection, echo_service
):
    reports = []
    first_report = threading.Event()

    def on_refused(reason, count):
        reports.append(count)
        first_report.set()
        time.sleep(0.2)  # a slow database: the refusals behind it pile into one batch

    listener = open_listener(connection, echo_service.port, limit=1, on_refused=on_refused)
    held = socket.create_connection(("127.0.0.1", listener.port))
    held.sendall(b"x")
    assert held.recv(1) == b"x"
    threads_before = threading.active_count()
    try:
        flood = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(1)]
        first_report.wait(5)
        flood += [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(199)]
        peak_threads = threading.active_count()
        for client in flood:
            client.settimeout(5)
            assert client.recv(1) == b""
            client.close()
    finally:
        held.close()
        listener.close()

    assert peak_threads <= threads_before + 1  # the reporter, at most
    assert sum(reports) == 200 and listener.refused == 200
    assert len(reports) < 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_abandoned_clients_leak_no_threads_or_descriptors(connection, echo_service):
    listener = open_listener(connection, echo_service.port, limit=1000)
    threads_before, fds_before = threading.active_count(), open_fds()

    # 500 clients: half vanish at once, half send a little and reset mid-transfer.
    for index in range(500):
        client = socket.create_connection(("127.0.0.1", listener.port))
        if index % 2:
            client.sendall(b"partial request")
            client.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        client.close()

    try:
        wait_until(lambda: listener.active_connections == 0, timeout=30, message="relays closed")
        wait_until(
            lambda: threading.active_count() <= threads_before, timeout=10, message="threads"
        )
        wait_until(lambda: open_fds() <= fds_before, timeout=10, message="descriptors")
    finally:
        listener.close()
    assert connection.is_open


def test_closed_listener_drops_its_connections(connection, echo_service):
    listener = open_listener(connection, echo_service.port)
    client = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
    client.sendall(b"ping")
    assert client.recv(4) == b"ping"

    listener.close()

    assert client.recv(4) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=1)
    client.close()


class SpeakFirstService(TcpService):
    """Sends `payload` to each client as soon as it connects, then closes (server first,
    as a VNC server does), so data can reach the channel before anyone reads it."""

    def __init__(self, payload: bytes):
        self.payload = payload
        super().__init__()

    def handle(self, conn):
        conn.sendall(self.payload)


def test_slow_client_gets_every_byte_in_order_with_bounded_buffering(connection):
    # Small receive buffer and a client that waits: the transport thread's direct sends
    # fail, data queues in the channel, and the agent is held back by the window.
    payload = os.urandom(8 * PAYLOAD_BYTES)
    service = SpeakFirstService(payload)
    listener = open_listener(connection, service.port)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", listener.port))
    client.settimeout(10)
    try:
        wait_until(lambda: listener.active_connections == 1, timeout=5)
        (relay,) = listener._relays
        window = relay.channel.transport.default_window_size
        queued = []
        for _ in range(20):
            queued.append(len(relay.channel.in_buffer))
            threading.Event().wait(0.05)
        received = bytearray()
        while chunk := client.recv(65536):
            received += chunk
    finally:
        client.close()
        listener.close()
        service.stop()

    assert max(queued) > 0  # the slow path was taken
    assert max(queued) <= window  # the window, not the buffer, held the agent back
    assert bytes(received) == payload


def test_transfer_survives_key_exchange_midway(connection, echo_service):
    # Window credit due while keys are renegotiated cannot be sent from the transport
    # thread; it must go out afterwards, or the transfer would stall.
    listener = open_listener(connection, echo_service.port)
    payload = os.urandom(16 * PAYLOAD_BYTES)
    result = {}
    exchanger = threading.Thread(
        target=lambda: result.update(echo=exchange(listener.port, payload))
    )
    try:
        exchanger.start()
        wait_until(lambda: listener.active_connections == 1, timeout=5)
        for _ in range(3):
            connection._transport.renegotiate_keys()
        exchanger.join(timeout=60)
    finally:
        listener.close()

    assert not exchanger.is_alive(), "transfer stalled"
    assert result["echo"] == payload
