"""Fixtures for the remote-operation tests: sshd agents serving SFTP, and SSH workers.

Operation-level tests talk to the agent over a connection opened directly with
`ssh.connect`; API and terminal tests go through a real SSH worker subprocess (the
connection manager's `start_worker`), the real dispatch and the real data endpoints.
"""

import pytest

from audit.models import AuditEntry
from audit.services import audit_flush
from audit.testing import audit_writes_isolated  # noqa: F401  (autouse fixture)
from ssh_control import keys, ssh
from ssh_control.choices import ConnectionState, GrantLevel
from tests.agents import Agent, wait_until
from tests.ssh_control.conftest import (  # noqa: F401  (fixtures)
    clean_attempt_counters,
    start_worker,
    wait_status,
)

AUDIT_TIMEOUT_SECONDS = 10


class SftpAgent(Agent):
    """An agent whose sshd also serves SFTP, as a real agent's does."""

    def _write_config(self):
        config = super()._write_config()
        with config.open("a") as handle:
            handle.write("Subsystem sftp internal-sftp\n")
        return config


@pytest.fixture
def agent_for(tmp_path):
    """Start (and wait for) an SFTP-serving agent that authorizes an instance's key."""
    agents = []

    def make(instance, **options) -> SftpAgent:
        agent = SftpAgent(tmp_path / "agents", f"agent-{len(agents)}", **options)
        agent.authorize(instance.ssh_public_key)
        agents.append(agent.start())
        agent.wait_ready()
        instance.ssh_port = agent.port
        instance.save(update_fields=["ssh_port"])
        return agent

    yield make
    for agent in agents:
        agent.stop()


@pytest.fixture
def remote_instance(make_instance, viewer, operator):
    """An instance `viewer` may view and `operator` may operate."""
    return make_instance(
        "remote-1",
        grants=[
            {"user": viewer, "level": GrantLevel.VIEW},
            {"user": operator, "level": GrantLevel.OPERATE},
        ],
    )


def connect_directly(instance) -> ssh.Connection:
    """A connection to the instance's agent opened here, without a worker."""
    family, sockaddr = ssh.resolve("127.0.0.1", instance.ssh_port)[0]
    return ssh.connect(
        family=family,
        sockaddr=sockaddr,
        username="root",
        private_key=keys.load_private_key(instance.name),
        pinned=None,
        timeout=10,
    )


@pytest.fixture
def connection(remote_instance, agent_for):
    """A connection opened directly to the instance's agent (no worker)."""
    agent_for(remote_instance)
    opened = connect_directly(remote_instance)
    yield opened
    opened.close()


@pytest.fixture
def owned_instance(remote_instance, agent_for, start_worker):  # noqa: F811
    """The instance held by a running SSH worker; returns (instance, worker)."""
    agent_for(remote_instance)
    worker = start_worker()
    worker.wait_ready()
    wait_status(remote_instance, timeout=20, state=ConnectionState.CONNECTED, is_healthy=True)
    return remote_instance, worker


def audit_entries(instance, event_type: str, *, count: int = 1) -> list:
    """Poll until at least `count` entries of the type exist for the instance."""
    audit_flush()

    def found():
        entries = list(
            AuditEntry.objects.filter(instance_id=instance.pk, event_type=event_type).order_by(
                "created_at"
            )
        )
        return entries if len(entries) >= count else None

    return wait_until(found, timeout=AUDIT_TIMEOUT_SECONDS, message=f"{count} {event_type}")
