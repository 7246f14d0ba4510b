"""Agents with web services behind them, and SSH connections to them, for tunnel tests."""

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import uvicorn
from websockets.sync.server import serve as ws_serve

from ssh_control import keys, ssh
from ssh_control.choices import TunnelStatus
from ssh_control.tunnels.supervisor import TunnelSupervisor
from tests.agents import Agent, free_port, wait_until
from tests.conftest import PASSWORD
from tests.ssh_control.conftest import (  # noqa: F401  (fixtures for the worker tests)
    clean_attempt_counters,
    make_agent,
    start_worker,
)


class EchoService:
    """A TCP service on the agent that sends back every byte it receives."""

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
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


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
    instance = make_instance(
        "tunnel-1",
        ssh_port=agent.port,
        vnc_port=echo_service.port,
        gateway_port=http_service.port,
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
def live_web(transactional_db):
    """claworc.asgi served by uvicorn in a thread of the test process."""
    from claworc.asgi import application

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            application, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, message="uvicorn started")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


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
    instance = make_instance(
        "proxy-1",
        ssh_port=agent.port,
        vnc_port=ws_echo_service,
        gateway_port=http_service.port,
        grants=[{"user": viewer, "level": "view"}],
    )
    agent.authorize(instance.ssh_public_key)
    return instance


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


def login(base: str, username: str) -> requests.Session:
    session = requests.Session()
    response = session.post(
        f"{base}/api/v1/auth/login", json={"username": username, "password": PASSWORD}, timeout=5
    )
    assert response.status_code == 200
    return session
