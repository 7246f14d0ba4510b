"""Key rotation against real sshd agents and real SSH workers.

The worker and agent fixtures are the connection manager tests' own; a rotation is paused
at a step through the worker's test-only pause hook (a file in the data dir).
"""

import stat
from pathlib import Path

import pytest
from django.conf import settings

from claworc.celery import app
from ssh_control import keys, ssh
from ssh_control.choices import ConnectionState
from ssh_control.exceptions import SSHConnectionError
from ssh_control.models import Instance, KeyRotation
from ssh_control.rotation.authorized_keys import key_identity
from tests.agents import wait_until
from tests.ssh_control.conftest import (  # noqa: F401  (fixtures)
    clean_attempt_counters,
    make_agent,
    start_worker,
    wait_status,
)

OPERATOR_LINE = (
    'from="10.9.8.7" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyThatMustStay00000000000000 '
    "operator@laptop"
)
# Lease expiry is what hands a killed worker's instances to the next one.
ROTATION_WORKER_ENV = {"CLAWORC_SSH_LEASE_TTL_SECONDS": "2"}


class Rig:
    """One instance, its agent (with an operator's own line) and the worker owning it."""

    def __init__(self, instance, agent, worker):
        self.instance = instance
        self.agent = agent
        self.worker = worker

    def refresh(self) -> Instance:
        self.instance.refresh_from_db()
        return self.instance

    def agent_keys(self) -> list[tuple[str, str]]:
        lines = self.agent.authorized_keys.read_text().splitlines()
        return [key_identity(line) for line in lines if line.strip()]

    def logs_in(self, private_key) -> bool:
        try:
            connection = ssh.connect(
                family=2,
                sockaddr=("127.0.0.1", self.agent.port),
                username="root",
                private_key=private_key,
                pinned=None,
                timeout=5,
            )
        except SSHConnectionError:
            return False
        connection.close()
        return True

    def send_rotation(self, actor: str = "pytest"):
        return app.send_task(
            "ssh_control.rotate_key",
            kwargs={"instance_id": self.instance.pk, "actor": actor},
            queue=f"ssh.{self.worker.node}",
        )

    def assert_consistent(self) -> str:
        """The database's key is the only claworc key on the agent, its file is the only
        key file, 0600, and it logs in; the operator's line is untouched."""
        instance = self.refresh()
        assert not KeyRotation.objects.filter(instance=instance, status="in_progress").exists()
        assert key_identity(instance.ssh_public_key) in self.agent_keys()
        assert key_identity(OPERATOR_LINE) in self.agent_keys()
        assert len(self.agent_keys()) == 2, self.agent.authorized_keys.read_text()
        assert OPERATOR_LINE in self.agent.authorized_keys.read_text().splitlines()
        assert stat.S_IMODE(self.agent.authorized_keys.stat().st_mode) == 0o600
        assert not keys.pending_key_path(instance.name).exists()
        key_file = keys.key_path(instance.name)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        private_key = keys.load_private_key(instance.name)
        assert keys.private_key_fingerprint(private_key) == instance.ssh_key_fingerprint
        assert self.logs_in(private_key)
        return instance.ssh_key_fingerprint


@pytest.fixture
def rig(make_instance, make_agent, start_worker):  # noqa: F811
    """Build a connected rig; `worker_env` overrides the worker's settings."""

    def build(name: str = "rot-1", *, fields: dict | None = None, **worker_env) -> Rig:
        instance = make_instance(name)
        agent = make_agent(instance, name=f"agent-{name}")
        agent.authorize(OPERATOR_LINE)
        agent.authorized_keys.chmod(0o600)
        Instance.objects.filter(pk=instance.pk).update(
            ssh_port=agent.port, authorized_keys_path=str(agent.authorized_keys), **(fields or {})
        )
        instance.refresh_from_db()
        worker = start_worker(**ROTATION_WORKER_ENV, **worker_env)
        agent.wait_ready()
        worker.wait_ready()
        wait_status(instance, timeout=20, state=ConnectionState.CONNECTED, owner_node=worker.node)
        return Rig(instance, agent, worker)

    return build


def pause_file(step: str) -> Path:
    return Path(settings.DATA_DIR) / f"rotation-paused-{step}"


def wait_paused(step: str, timeout: float = 20) -> None:
    wait_until(pause_file(step).exists, timeout=timeout, message=f"rotation paused at {step}")


def resume(step: str) -> None:
    (Path(settings.DATA_DIR) / f"rotation-resume-{step}").touch()
