"""Fixtures for the connection manager tests: real sshd agents and real SSH workers.

The workers are `celery worker` subprocesses pointed at this test run's database, Redis
and data dir, with timers shrunk through the environment; tests that use them need
committed data (`transactional_db`).
"""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

from ssh_control.manager.counters import KEY_PREFIX
from ssh_control.models import ConnectionStatus, InstanceLease
from tests.agents import Agent, wait_until

REPO = Path(__file__).resolve().parents[2]

# Shrunk timers shared by every test worker; a test passes its own overrides.
WORKER_ENV = {
    "CLAWORC_SSH_KEEPALIVE_INTERVAL_SECONDS": "1",
    "CLAWORC_SSH_HEALTH_CHECK_TIMEOUT_SECONDS": "1",
    "CLAWORC_SSH_HEALTH_CHECK_INTERVAL_SECONDS": "30",
    "CLAWORC_SSH_CONNECT_TIMEOUT_SECONDS": "3",
    "CLAWORC_SSH_RECONNECT_MAX_RETRIES": "10",
    "CLAWORC_SSH_RECONNECT_BASE_DELAY_SECONDS": "0.2",
    "CLAWORC_SSH_RECONNECT_MAX_DELAY_SECONDS": "0.8",
    "CLAWORC_SSH_FAILED_RETRY_INTERVAL_SECONDS": "0",
    "CLAWORC_SSH_LEASE_TTL_SECONDS": "3",
    "CLAWORC_SSH_MANAGER_THREADS": "4",
}


class Worker:
    """One SSH worker process serving node `node`."""

    def __init__(self, node: str, env: dict, log_path: Path):
        self.node = node
        self.log_path = log_path
        log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "claworc", "worker",
                "--pool", "threads", "--concurrency", "4",
                "-Q", f"ssh.{node}", "--hostname", f"ssh@{node}",
                "--without-heartbeat", "--without-gossip", "--without-mingle",
                "--loglevel", "INFO",
            ],
            cwd=REPO, env=env, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()

    def wait_ready(self, timeout: float = 30) -> "Worker":
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.node} exited: {self.log()}")
            return " ready." in self.log()

        wait_until(ready, timeout=timeout, interval=0.1, message=f"worker {self.node} ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, the leases must expire."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: Celery's warm shutdown, which releases the leases."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_worker(transactional_db, tmp_path):
    """Start SSH worker processes (not waiting); every one is killed at teardown."""
    workers = []
    database = connection.settings_dict

    def start(node: str | None = None, **overrides) -> Worker:
        node = node or f"node-{uuid.uuid4().hex[:6]}"
        env = dict(os.environ)
        env.update(WORKER_ENV)
        env.update(
            DJANGO_SETTINGS_MODULE="claworc.settings",
            DATABASE_URL=f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}"
            f"/{database['NAME']}",
            REDIS_URL=settings.REDIS_URL,
            CLAWORC_DATA_DIR=str(settings.DATA_DIR),
            CLAWORC_KEY_ENCRYPTION_SECRET=settings.CLAWORC_KEY_ENCRYPTION_SECRET,
            # Given, so workers starting together do not race to create the secret file.
            DJANGO_SECRET_KEY=settings.SECRET_KEY,
            CLAWORC_SSH_NODE=node,
        )
        env.update({key: str(value) for key, value in overrides.items()})
        worker = Worker(node, env, tmp_path / f"worker-{node}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()


@pytest.fixture
def make_agent(tmp_path):
    """Start sshd agents (not waiting), each authorizing the given instance's key; with
    `serve=True` the instance is also pointed at the agent's port."""
    agents = []

    def make(
        instance=None, *, name: str | None = None, port: int | None = None, serve: bool = False
    ) -> Agent:
        agent = Agent(tmp_path / "agents", name or f"agent-{len(agents)}", port=port)
        if instance is not None:
            agent.authorize(instance.ssh_public_key)
        agents.append(agent.start())
        if serve:
            instance.ssh_port = agent.port
            instance.save(update_fields=["ssh_port"])
        return agent

    yield make
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.signal_connections(signal.SIGCONT)
        agent.stop()


@pytest.fixture(autouse=True)
def clean_attempt_counters():
    """Instance ids repeat between runs, so their Redis counters must not."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(f"{KEY_PREFIX}:*"))
    if keys:
        client.delete(*keys)
    yield
    client.close()


def status_of(instance) -> ConnectionStatus:
    return ConnectionStatus.objects.get(instance=instance)


def wait_status(instance, *, timeout: float, message: str = "", **expected) -> ConnectionStatus:
    """Poll the published status until every expected field matches."""

    def matches():
        status = status_of(instance)
        return status if all(getattr(status, k) == v for k, v in expected.items()) else None

    try:
        return wait_until(matches, timeout=timeout, message=message or str(expected))
    except AssertionError:
        status = status_of(instance)
        raise AssertionError(
            f"{expected} not reached in {timeout}s; now state={status.state} "
            f"healthy={status.is_healthy} error={status.last_error!r}"
        ) from None


def lease_node(instance) -> str | None:
    lease = InstanceLease.objects.filter(instance=instance).first()
    return lease.node if lease else None
