"""The connection gate on real SSH workers: rate limit, failure block, IP restriction."""

import socket
import time

import pytest

from audit.models import AuditEntry
from audit.services import audit_flush
from ssh_control import services, ssh
from ssh_control.choices import ConnectionEventType, ConnectionState
from ssh_control.exceptions import SSHUnreachable
from ssh_control.manager.counters import attempt_counters
from ssh_control.manager.gate import SlotPool, gate_open, source_ip_allowed
from ssh_control.models import ConnectionEvent, InstanceLease
from tests.agents import CountingListener, free_port, wait_until
from tests.conftest import client_for
from tests.ssh_control.conftest import lease_node, status_of, wait_status


def _url(instance, action: str) -> str:
    return f"/api/v1/instances/{instance.pk}/{action}"


def _blocked_events(instance):
    return ConnectionEvent.objects.filter(
        instance=instance,
        event_type=ConnectionEventType.RATE_LIMITED,
        reason__startswith=f"connection blocked for {instance.name}",
    )


@pytest.mark.parametrize(
    ("source", "allowed", "expected"),
    [
        ("127.0.0.1", "", True),
        ("127.0.0.1", "127.0.0.0/8", True),
        ("127.0.0.1", "::ffff:127.0.0.1", True),
        ("127.0.0.1", "10.0.0.0/8, 192.168.1.5", False),
        ("::1", "127.0.0.1", False),
    ],
)
def test_manager_source_ip_allowed_mapped_ipv6_normalised(source, allowed, expected):
    assert source_ip_allowed(source, allowed) is expected


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_manager_rate_limit_exact_across_two_workers(
    make_instance, make_agent, start_worker, admin_user
):
    instance = make_instance("gate-1")
    agent = make_agent(instance, serve=True)
    first, second = start_worker(), start_worker()
    agent.wait_ready()
    first.wait_ready()
    second.wait_ready()
    client = client_for(admin_user)

    # Attempt 1 is the owner's own connect; 2-5 are tests on the same owner.
    wait_status(instance, timeout=15, state=ConnectionState.CONNECTED)
    owner = lease_node(instance)
    for _ in range(4):
        response = client.post(_url(instance, "ssh-test"))
        assert response.status_code == 200, response.json()
        assert response.json()["success"] is True
    steps = response.json()["steps"]
    assert [step["name"] for step in steps] == [
        "endpoint_resolution",
        "key_fingerprint",
        "ip_restriction",
        "ssh_connection",
    ]
    assert all(step["success"] and step["duration_ms"] >= 0 for step in steps)
    assert agent.host_fingerprint in steps[3]["detail"]

    # Ownership moves when the owner dies; attempt 6 is the new owner's connect.
    (first if first.node == owner else second).kill()
    killed_at = time.monotonic()
    survivor = second.node if first.node == owner else first.node
    wait_until(lambda: lease_node(instance) == survivor, timeout=10, message="lease moved")
    wait_status(instance, timeout=10, state=ConnectionState.CONNECTED, owner_node=survivor)
    # Lease TTL (3 s) plus one claim round (1 s) plus one connect.
    assert time.monotonic() - killed_at <= 6

    for _ in range(4):
        assert client.post(_url(instance, "ssh-test")).status_code == 200
    response = client.post(_url(instance, "ssh-test"))
    assert response.status_code == 429
    assert response.json() == {
        "error": "rate limit exceeded for gate-1: 10 connection attempts in the last minute "
        "(max 10)",
        "code": "rate_limited",
    }
    assert 1 <= int(response["Retry-After"]) <= 60
    assert agent.accepted_count() == 10


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_manager_failure_block_exact_across_two_workers(make_instance, start_worker, admin_user):
    listener = CountingListener()
    instance = make_instance("gate-2", ssh_port=listener.port)
    timers = {"CLAWORC_SSH_BLOCK_SECONDS": 30, "CLAWORC_SSH_RECONNECT_MAX_DELAY_SECONDS": 0.4}
    first, second = start_worker(**timers), start_worker(**timers)
    first.wait_ready()
    second.wait_ready()

    wait_until(_blocked_events(instance).exists, timeout=15, message="block event")
    assert listener.count == 5
    owner = lease_node(instance)
    wait_until(
        lambda: "due to 5 consecutive failures; retry after" in status_of(instance).last_error,
        timeout=5,
        message="block published",
    )

    # The block holds in the other worker too, and nothing reaches the port.
    refusals = _blocked_events(instance).count()
    (first if first.node == owner else second).kill()
    survivor = second.node if first.node == owner else first.node
    wait_until(lambda: lease_node(instance) == survivor, timeout=10, message="lease moved")
    wait_until(lambda: _blocked_events(instance).count() > refusals, timeout=10)
    assert status_of(instance).owner_node == survivor
    response = client_for(admin_user).post(_url(instance, "ssh-test"))
    assert response.status_code == 429
    assert response.json()["code"] == "connection_blocked"
    assert response.json()["error"].startswith(
        "connection blocked for gate-2 due to 5 consecutive failures; retry after 20"
    )
    assert 1 <= int(response["Retry-After"]) <= 30
    assert listener.count == 5
    listener.close()
    metrics = client_for(admin_user).get("/api/v1/ssh-metrics").json()
    assert metrics["rate_limit_blocks"] >= 2
    assert metrics["connections_by_state"]["reconnecting"] == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_manager_ip_restriction_refuses_reconnect(
    make_instance, make_agent, start_worker, admin_user
):
    instance = make_instance("gate-3")
    agent = make_agent(instance, serve=True)
    worker = start_worker(CLAWORC_SSH_RECONNECT_MAX_RETRIES=3)
    agent.wait_ready()
    worker.wait_ready()
    wait_status(instance, timeout=15, state=ConnectionState.CONNECTED)
    client = client_for(admin_user)

    services.instance_set_allowed_ips(instance, allowed_ips="10.9.9.0/24", actor=admin_user)
    response = client.post(_url(instance, "ssh-reconnect"))
    assert response.status_code == 403
    assert response.json() == {
        "error": "connection blocked: source IP 127.0.0.1 is not in the allowed list",
        "code": "ip_restricted",
    }
    # The background reconnection is refused the same way; no login reaches the agent.
    status = wait_status(instance, timeout=10, state=ConnectionState.FAILED)
    assert status.last_error == (
        "reconnection failed after 3 attempts: connection blocked: source IP 127.0.0.1 "
        "is not in the allowed list"
    )
    restricted = ConnectionEvent.objects.filter(
        instance=instance, event_type=ConnectionEventType.IP_RESTRICTED
    )
    assert restricted.count() == 4
    assert agent.accepted_count() == 1
    wait_until(
        AuditEntry.objects.filter(instance_id=instance.pk, event_type="ip_restricted").exists,
        timeout=5,
    )

    # An IPv4-mapped IPv6 entry names the same source address.
    services.instance_set_allowed_ips(instance, allowed_ips="::ffff:127.0.0.1", actor=admin_user)
    response = client.post(_url(instance, "ssh-reconnect"))
    assert response.status_code == 200, response.json()
    assert status_of(instance).state == ConnectionState.CONNECTED
    assert agent.accepted_count() == 2


def _resolving_to(monkeypatch, *addresses):
    """The resolver answers with `addresses` (a fake: no name here resolves to several)."""
    answer = [(socket.AF_INET, address) for address in addresses]
    monkeypatch.setattr(ssh, "resolve", lambda host, port: answer)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_manager_gate_with_first_address_unreachable_connects_to_the_next(
    make_instance, make_agent, monkeypatch
):
    instance = make_instance("gate-multi")
    agent = make_agent(instance)
    agent.wait_ready()
    # Nothing listens on 127.0.0.2: the first address refuses the TCP connection.
    _resolving_to(monkeypatch, ("127.0.0.2", agent.port), ("127.0.0.1", agent.port))
    slots = SlotPool()

    connection = gate_open(instance, slots=slots)
    try:
        assert connection.run("echo ping", timeout=5).stdout == b"ping\n"
    finally:
        connection.close()
    assert agent.accepted_count() == 1
    assert slots.used == 1
    # The success reset the consecutive failures: the next failure is the first.
    assert attempt_counters().failure(instance.pk) == 1


@pytest.mark.django_db(transaction=True)
def test_manager_gate_with_every_address_unreachable_counts_one_failure(make_instance, monkeypatch):
    instance = make_instance("gate-none")
    port = free_port()
    _resolving_to(monkeypatch, ("127.0.0.2", port), ("127.0.0.1", port))
    slots = SlotPool()

    with pytest.raises(SSHUnreachable, match=r"^connect: "):
        gate_open(instance, slots=slots)

    assert slots.used == 0
    assert attempt_counters().failure(instance.pk) == 2  # one failure for both addresses
    assert audit_flush()
    failed = AuditEntry.objects.filter(instance_id=instance.pk, event_type="connection_failed")
    assert failed.count() == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_manager_global_limit_refuses_connection_past_max(
    make_instance, make_agent, start_worker, admin_user
):
    first, second = make_instance("gate-max-1"), make_instance("gate-max-2")
    agents = [make_agent(first, serve=True), make_agent(second, serve=True)]
    worker = start_worker(CLAWORC_SSH_MAX_CONNECTIONS=1)
    for process in (*agents, worker):
        process.wait_ready()

    # One connection is all this worker may hold: it owns one instance, and the ssh-test's
    # own connection finds no free slot.
    wait_until(
        lambda: (
            status_of(first).state == ConnectionState.CONNECTED
            or status_of(second).state == ConnectionState.CONNECTED
        ),
        timeout=15,
        message="one instance connected",
    )
    held = first if status_of(first).state == ConnectionState.CONNECTED else second
    other = second if held is first else first
    # A renewal of the held lease proves a later lease round ran, and each round claims
    # after renewing: the other instance stayed unclaimed through it.
    renewed = InstanceLease.objects.get(instance=held).expires_at
    wait_until(
        lambda: InstanceLease.objects.get(instance=held).expires_at > renewed,
        timeout=10,
        message="a later lease round",
    )
    response = client_for(admin_user).post(_url(held, "ssh-test"))

    assert lease_node(other) is None
    assert response.status_code == 503
    assert response.json() == {
        "error": "connect: maximum connections (1) reached",
        "code": "max_connections",
    }
    assert sum(agent.accepted_count() for agent in agents) == 1
