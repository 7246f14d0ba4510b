"""Agents with web services behind them, and SSH connections to them, for tunnel tests."""

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.sync.server import serve as ws_serve

from ssh_control import keys, ssh
from ssh_control.choices import TunnelStatus
from ssh_control.tunnels.supervisor import TunnelSupervisor
from tests.agents import Agent
from tests.ssh_control.conftest import (  # noqa: F401  (fixtures for the worker tests)
    clean_attempt_counters,
    make_agent,
    start_worker,
)


class TcpService:
    """A TCP service on the agent; each client is served by `handle(conn)` on a thread."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle_closing, args=(conn,), daemon=True).start()

    def _handle_closing(self, conn):
        with conn:
            self.handle(conn)

    def handle(self, conn):
        raise NotImplementedError

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class EchoService(TcpService):
    """Sends back every byte it receives."""

    def handle(self, conn):
        while data := conn.recv(65536):
            conn.sendall(data)


class _PageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"gateway page for {self.path} cookie={self.headers.get('Cookie')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HttpService:
    """A small HTTP service standing in for the agent's Gateway UI."""

    def __init__(self, port: int = 0):
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _PageHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo_service():
    service = EchoService()
    yield service
    service.stop()


@pytest.fixture
def http_service():
    service = HttpService()
    yield service
    service.stop()


@pytest.fixture
def agent(tmp_path):
    started = Agent(tmp_path / "agents", "tunnel-agent").start().wait_ready()
    yield started
    started.stop()


def connect(instance, agent) -> ssh.Connection:
    """An authenticated connection to the agent with the instance's own key."""
    return ssh.connect(
        family=socket.AF_INET,
        sockaddr=("127.0.0.1", agent.port),
        username="root",
        private_key=keys.load_private_key(instance.name),
        pinned=None,
        timeout=5,
    )


@pytest.fixture
def tunnel_instance(make_instance, agent, echo_service, http_service, viewer, stranger):
    return instance_on_agent(
        make_instance, agent, "tunnel-1", echo_service.port, http_service.port, viewer
    )


def instance_on_agent(make_instance, agent, name, vnc_port, gateway_port, viewer):
    """An instance on `agent` with its services at these ports, viewable by `viewer`."""
    instance = make_instance(
        name,
        ssh_port=agent.port,
        vnc_port=vnc_port,
        gateway_port=gateway_port,
        grants=[{"user": viewer, "level": "view"}],
    )
    agent.authorize(instance.ssh_public_key)
    return instance


@pytest.fixture
def connection(tunnel_instance, agent):
    opened = connect(tunnel_instance, agent)
    yield opened
    opened.close()


# The browser proxy's tests: the ASGI app served for real, tunnels kept by a supervisor.


@pytest.fixture
def ws_echo_service():
    """A WebSocket service standing in for the agent's noVNC (websockify)."""

    def echo(websocket):
        for message in websocket:
            websocket.send(message)

    server = ws_serve(echo, "127.0.0.1", 0, subprotocols=["binary"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.socket.getsockname()[1]
    server.shutdown()


@pytest.fixture
def proxied_instance(make_instance, agent, http_service, ws_echo_service, viewer, settings):
    settings.CLAWORC_TUNNEL_MONITOR_INTERVAL_SECONDS = 0.5
    return instance_on_agent(
        make_instance, agent, "proxy-1", ws_echo_service, http_service.port, viewer
    )


@contextlib.contextmanager
def running_tunnels(instance, agent):
    from tests.tunnels.test_supervisor import wait_for_status

    connection = connect(instance, agent)
    supervisor = TunnelSupervisor()
    supervisor.attach(instance.pk, connection)
    try:
        wait_for_status(instance, "gateway", TunnelStatus.ACTIVE)
        wait_for_status(instance, "vnc", TunnelStatus.ACTIVE)
        yield supervisor
    finally:
        supervisor.stop()
        connection.close()


@pytest.fixture
def tunnels_up(proxied_instance, agent):
    with running_tunnels(proxied_instance, agent) as supervisor:
        yield supervisor


@pytest.fixture
def one_connection_tunnels_up(proxied_instance, agent, settings):
    settings.CLAWORC_TUNNEL_MAX_CONNECTIONS_PER_INSTANCE = 1
    with running_tunnels(proxied_instance, agent) as supervisor:
        yield supervisor
