"""`ssh_control.ssh` against a real sshd: algorithms, host key check, timed round trips."""

import signal
import socket
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ssh_control import ssh
from ssh_control.exceptions import (
    ConnectionLimitReached,
    HostKeyMismatch,
    SSHConnectionError,
    SSHUnreachable,
)
from ssh_control.manager.gate import SlotPool
from tests.agents import Agent

pytestmark = pytest.mark.slow


@pytest.fixture
def client_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def agent_for(tmp_path, client_key):
    agents = []
    public = client_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )

    def start(extra_config: str = "") -> Agent:
        agent = Agent(tmp_path, f"agent-{len(agents)}", extra_config=extra_config)
        agent.authorize(public.decode())
        agents.append(agent.start().wait_ready())
        return agent

    yield start
    for agent in agents:
        agent.signal_connections(signal.SIGCONT)
        agent.stop()


def _connect(agent: Agent, key, *, pinned=None) -> ssh.Connection:
    family, sockaddr = ssh.resolve("127.0.0.1", agent.port)[0]
    return ssh.connect(
        family=family, sockaddr=sockaddr, username="root", private_key=key, pinned=pinned, timeout=3
    )


def test_manager_ssh_connect_runs_commands_and_keepalives(agent_for, client_key):
    agent = agent_for()
    connection = _connect(agent, client_key)
    try:
        assert connection.host_key.fingerprint == agent.host_fingerprint
        assert connection.local_address == "127.0.0.1"
        result = connection.run("echo ping; echo oops >&2; exit 3", timeout=3)
        assert (result.exit_status, result.stdout, result.stderr) == (3, b"ping\n", b"oops\n")
        assert connection.keepalive(timeout=1) < 1
    finally:
        connection.close()


def test_manager_ssh_cbc_only_server_refused(agent_for, client_key):
    agent = agent_for("Ciphers aes128-cbc,aes256-cbc\n")
    with pytest.raises(SSHConnectionError, match="handshake failed"):
        _connect(agent, client_key)
    assert agent.accepted_count() == 0


def test_manager_ssh_sha1_mac_only_server_refused(agent_for, client_key):
    agent = agent_for("Ciphers aes128-ctr\nMACs hmac-sha1\n")
    with pytest.raises(SSHConnectionError, match="handshake failed"):
        _connect(agent, client_key)


def test_manager_ssh_other_host_key_refused_before_auth(agent_for, client_key):
    agent = agent_for()
    pinned = ssh.HostKey("ssh-ed25519", "AAAA", "SHA256:" + "B" * 43)
    with pytest.raises(HostKeyMismatch) as refused:
        _connect(agent, client_key, pinned=pinned)
    assert refused.value.offered.fingerprint == agent.host_fingerprint
    assert str(refused.value) == (
        f"SSH key fingerprint mismatch: expected {pinned.fingerprint}, got {agent.host_fingerprint}"
    )
    assert "Accepted publickey" not in agent.log_path.read_text()
    assert "Postponed publickey" not in agent.log_path.read_text()


def test_manager_ssh_frozen_peer_fails_timed_keepalive(agent_for, client_key):
    agent = agent_for()
    connection = _connect(agent, client_key)
    try:
        agent.signal_connections(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(SSHConnectionError, match="no reply within 0.5s"):
            connection.keepalive(timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 1.0
        # paramiko still believes the transport is fine; only the round trip tells.
        assert connection.is_open
        with pytest.raises(SSHConnectionError, match="(timed out|Timeout)"):
            connection.run("echo ping", timeout=0.5)
        agent.signal_connections(signal.SIGCONT)
        assert connection.keepalive(timeout=2) < 2
    finally:
        connection.close()


@pytest.mark.django_db
def test_manager_slot_pool_full_refuses_with_runbook_message(settings):
    settings.CLAWORC_SSH_MAX_CONNECTIONS = 2
    slots = SlotPool()
    slots.reserve()
    slots.reserve()
    with pytest.raises(
        ConnectionLimitReached, match=r"^connect: maximum connections \(2\) reached$"
    ):
        slots.reserve()
    slots.release()
    slots.reserve()


def test_manager_ssh_connect_timeout_uses_runbook_message(client_key):
    # A listener whose accept queue is full drops further SYNs, so the TCP connect hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        started = time.monotonic()
        with pytest.raises(SSHUnreachable) as refused:
            ssh.connect(
                family=socket.AF_INET,
                sockaddr=listener.getsockname(),
                username="root",
                private_key=client_key,
                pinned=None,
                timeout=0.5,
            )
        elapsed = time.monotonic() - started
    finally:
        for sock in (*fillers, listener):
            sock.close()

    assert refused.value.message == "connect: context cancelled (timed out after 0.5s)"
    assert 0.4 <= elapsed < 2
