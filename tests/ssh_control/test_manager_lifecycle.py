"""Connection life cycle on a real SSH worker against real sshd agents."""

import os
import signal
import time

import pytest

from audit.models import AuditEntry
from ssh_control.choices import ConnectionEventType, ConnectionState
from ssh_control.models import ConnectionEvent
from tests.agents import free_port, wait_until
from tests.ssh_control.conftest import status_of, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _events(instance, event_type=None):
    events = ConnectionEvent.objects.filter(instance=instance).order_by("created_at", "id")
    return list(events.filter(event_type=event_type) if event_type else events)


def test_manager_agent_killed_and_restarted_reconnects(make_instance, make_agent, start_worker):
    instance = make_instance("life-1")
    agent = make_agent(instance, serve=True)
    worker = start_worker()
    agent.wait_ready()
    worker.wait_ready()

    status = wait_status(instance, timeout=15, state=ConnectionState.CONNECTED, is_healthy=True)
    assert status.owner_node == worker.node
    established = AuditEntry.objects.filter(
        instance_id=instance.pk, event_type="connection_established"
    )
    wait_until(established.exists, timeout=5, message="connection_established audited")
    assert instance.host_key_pin.fingerprint == agent.host_fingerprint

    agent.stop()
    wait_status(instance, timeout=5, state=ConnectionState.RECONNECTING)
    agent.start().wait_ready()

    wait_status(instance, timeout=15, state=ConnectionState.CONNECTED, is_healthy=True)
    reasons = [event.reason for event in _events(instance, ConnectionEventType.CONNECTED)]
    assert reasons[0] == "connected"
    assert reasons[-1].startswith("reconnected after")
    terminated = wait_until(
        lambda: AuditEntry.objects.filter(
            instance_id=instance.pk, event_type="connection_terminated"
        ).first(),
        timeout=5,
    )
    assert "health check failed" in terminated.details
    assert agent.accepted_count() == 2


def test_manager_retries_exhausted_fails_on_backoff_schedule(make_instance, start_worker):
    instance = make_instance("life-2", ssh_port=free_port())
    worker = start_worker(
        CLAWORC_SSH_RECONNECT_MAX_RETRIES=4,
        CLAWORC_SSH_RECONNECT_BASE_DELAY_SECONDS=0.3,
        CLAWORC_SSH_RECONNECT_MAX_DELAY_SECONDS=1.2,
        CLAWORC_SSH_FAILURE_THRESHOLD=100,
    ).wait_ready()

    status = wait_status(instance, timeout=15, state=ConnectionState.FAILED)
    assert status.last_error.startswith("reconnection failed after 4 attempts: connect:")
    assert status.owner_node == worker.node

    # reconnecting, then attempts 1-3 failing, then attempt 4 ending in failed.
    marks = _events(instance, ConnectionEventType.RECONNECTING)
    marks += _events(instance, ConnectionEventType.RECONNECT_FAILED)
    marks += _events(instance, ConnectionEventType.FAILED)
    assert [event.event_type for event in marks] == ["reconnecting"] + ["reconnect_failed"] * 3 + [
        "failed"
    ]
    gaps = [
        (later.created_at - earlier.created_at).total_seconds()
        for earlier, later in zip(marks, marks[1:], strict=False)
    ]
    for gap, expected in zip(gaps, [0.3, 0.6, 1.2, 1.2], strict=True):
        assert expected - 0.05 <= gap <= expected + 0.5, (gaps, expected)
    assert "next attempt in 0.6s" in marks[1].reason
    assert (
        AuditEntry.objects.filter(instance_id=instance.pk, event_type="connection_failed").count()
        == 5
    )


def test_manager_frozen_sshd_detected_unhealthy_and_healed(make_instance, make_agent, start_worker):
    instance = make_instance("life-3")
    agent = make_agent(instance, serve=True)
    worker = start_worker()
    agent.wait_ready()
    worker.wait_ready()
    wait_status(instance, timeout=15, state=ConnectionState.CONNECTED, is_healthy=True)
    before = status_of(instance).successful_check_count
    wait_until(lambda: status_of(instance).successful_check_count > before, timeout=5)

    frozen = agent.signal_connections(signal.SIGSTOP)
    assert frozen
    frozen_at = time.monotonic()
    wait_status(instance, timeout=5, is_healthy=False)
    detected = time.monotonic() - frozen_at
    # Keepalive interval (1 s) plus its timeout (1 s), plus a poll and a write.
    assert detected <= 2.6, detected
    assert status_of(instance).failed_check_count >= 1

    # The `echo ping` check confirms the failure and a new connection replaces the frozen one.
    wait_until(lambda: _events(instance, ConnectionEventType.HEALTH_CHECK_FAILED), timeout=5)
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)
    status = wait_status(instance, timeout=15, state=ConnectionState.CONNECTED, is_healthy=True)
    kinds = [event.event_type for event in _events(instance)]
    healing = ["keepalive_failed", "health_check_failed", "reconnecting", "connected"]
    assert kinds[2:6] == healing, kinds
    assert status.successful_check_count > before


def test_manager_failed_instance_recovered_by_slow_retry(make_instance, make_agent, start_worker):
    port = free_port()
    instance = make_instance("life-4", ssh_port=port)
    start_worker(
        CLAWORC_SSH_RECONNECT_MAX_RETRIES=2, CLAWORC_SSH_FAILED_RETRY_INTERVAL_SECONDS=1
    ).wait_ready()
    wait_status(instance, timeout=10, state=ConnectionState.FAILED)

    make_agent(instance, port=port).wait_ready()
    wait_status(instance, timeout=10, state=ConnectionState.CONNECTED, is_healthy=True)
    connected = _events(instance, ConnectionEventType.CONNECTED)
    assert [event.reason for event in connected] == ["periodic retry succeeded"]
    assert connected[0].from_state == ConnectionState.CONNECTING


def test_manager_endpoint_change_reconnects_to_the_new_port(
    make_instance, make_agent, start_worker
):
    instance = make_instance("life-move")
    old_agent = make_agent(instance, name="agent-old", serve=True)
    # The same machine's sshd on another port: same host key, so the pin still holds.
    new_agent = make_agent(instance, name="agent-new")
    new_agent.stop()
    for path in (new_agent.host_key_path, new_agent.host_key_path.with_suffix(".pub")):
        path.write_bytes(old_agent.dir.joinpath(path.name).read_bytes())
    new_agent.start()
    worker = start_worker()
    old_agent.wait_ready()
    new_agent.wait_ready()
    worker.wait_ready()
    wait_status(instance, timeout=15, state=ConnectionState.CONNECTED)

    type(instance).objects.filter(pk=instance.pk).update(ssh_port=new_agent.port)

    moved = f"SSH endpoint changed to root@127.0.0.1:{new_agent.port}"
    wait_until(
        lambda: ConnectionEvent.objects.filter(instance=instance, reason=moved).exists(),
        timeout=10,
        message="endpoint change noticed",
    )
    wait_status(instance, timeout=15, state=ConnectionState.CONNECTED, is_healthy=True)
    wait_until(lambda: new_agent.accepted_count() == 1, timeout=5, message="new port used")
    assert old_agent.accepted_count() == 1
