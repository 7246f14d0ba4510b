"""Ownership between SSH workers: one owner per instance, taken over when the owner dies."""

import time

import pytest
from django.db import connection

from ssh_control.choices import ConnectionEventType, ConnectionState
from ssh_control.models import ConnectionEvent, InstanceLease
from tests.agents import wait_until
from tests.audit.tcp_proxy import TcpProxy
from tests.ssh_control.conftest import lease_node, status_of, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_manager_owner_killed_instances_move_to_second_worker(
    make_instance, make_agent, start_worker
):
    instances, agents = [], []
    for index in range(3):
        instance = make_instance(f"owned-{index}")
        agent = make_agent(instance, serve=True)
        instances.append(instance)
        agents.append(agent)
    first, second = start_worker(), start_worker()
    for process in (*agents, first, second):
        process.wait_ready()

    # Each instance has exactly one owner and one connection, whichever worker it is.
    for instance in instances:
        wait_status(instance, timeout=15, state=ConnectionState.CONNECTED, is_healthy=True)
    assert InstanceLease.objects.count() == 3
    for instance, agent in zip(instances, agents, strict=True):
        assert status_of(instance).owner_node == lease_node(instance)
        assert agent.accepted_count() == 1

    # Kill the owner of the first instance (and of whatever else it held).
    victim = first if lease_node(instances[0]) == first.node else second
    survivor = second if victim is first else first
    moved = [instance for instance in instances if lease_node(instance) == victim.node]
    victim.kill()
    killed_at = time.monotonic()
    for instance in moved:
        wait_until(lambda i=instance: lease_node(i) == survivor.node, timeout=10)
        wait_status(instance, timeout=10, state=ConnectionState.CONNECTED, owner_node=survivor.node)
    # Within lease TTL (3 s) + one claim round (1 s) + one connect.
    assert time.monotonic() - killed_at <= 6
    for instance in moved:
        change = ConnectionEvent.objects.get(
            instance=instance, event_type=ConnectionEventType.OWNER_CHANGED
        )
        assert change.reason == (
            f"claimed by {survivor.node} after the lease of {victim.node} expired"
        )
    assert [agent.accepted_count() for agent in agents] == [
        2 if instance in moved else 1 for instance in instances
    ]


def test_manager_database_unreachable_past_lease_ttl_drops_connections(
    make_instance, make_agent, start_worker
):
    """A worker that cannot renew its leases stops using them: another may own them now."""
    database = connection.settings_dict
    proxy = TcpProxy((database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432))).start()
    instance = make_instance("own-fence")
    agent = make_agent(instance, serve=True)
    worker = start_worker(
        DATABASE_URL=f"postgres://{database['USER']}@127.0.0.1:{proxy.port}/{database['NAME']}"
    )
    agent.wait_ready()
    worker.wait_ready()
    wait_status(instance, timeout=15, state=ConnectionState.CONNECTED)
    assert agent.connection_pids()

    proxy.cut()
    try:
        # TTL 3 s: the SSH connection ends although the agent never failed.
        wait_until(lambda: not agent.connection_pids(), timeout=10, message="connection dropped")
        assert "leases not renewed" in worker.log()
    finally:
        proxy.restore()

    wait_until(lambda: agent.accepted_count() == 2, timeout=20, message="reclaimed")
    wait_status(instance, timeout=10, state=ConnectionState.CONNECTED, owner_node=worker.node)
