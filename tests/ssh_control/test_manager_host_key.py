"""Host key pinning on a real SSH worker: a swapped key is refused until an admin accepts it."""

import pytest

from audit.models import AuditEntry
from ssh_control.choices import ConnectionState, HostKeyPinSource
from ssh_control.models import HostKeyPin
from tests.agents import wait_until
from tests.conftest import client_for
from tests.ssh_control.conftest import lease_node, status_of, wait_status


def _accept_url(instance) -> str:
    return f"/api/v1/instances/{instance.pk}/ssh-host-key/accept"


def _audited(instance, event_type: str):
    return AuditEntry.objects.filter(instance_id=instance.pk, event_type=event_type)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_manager_host_key_swap_refused_until_admin_accepts(
    make_instance, make_agent, start_worker, admin_user, operator
):
    instance = make_instance("hostkey-1")
    agent = make_agent(instance, serve=True)
    worker = start_worker()
    agent.wait_ready()
    worker.wait_ready()
    wait_status(instance, timeout=15, state=ConnectionState.CONNECTED)
    original = agent.host_fingerprint
    assert HostKeyPin.objects.get(instance=instance).source == HostKeyPinSource.FIRST_CONTACT

    # The agent comes back with another host key: refused before authentication.
    agent.stop()
    swapped = agent.new_host_key()
    agent.start().wait_ready()
    status = wait_status(instance, timeout=15, state=ConnectionState.FAILED)
    assert status.last_error == f"SSH key fingerprint mismatch: expected {original}, got {swapped}"
    assert agent.accepted_count() == 1
    wait_until(_audited(instance, "fingerprint_mismatch").exists, timeout=5)

    # Still refused by a restarted worker, since the pin lives in the database. A clean
    # stop publishes `disconnected` and releases the lease at once.
    worker.stop()
    assert status_of(instance).state == ConnectionState.DISCONNECTED
    assert lease_node(instance) is None
    mismatches = _audited(instance, "fingerprint_mismatch").count()
    start_worker().wait_ready()
    wait_until(lambda: _audited(instance, "fingerprint_mismatch").count() > mismatches, timeout=15)
    wait_status(instance, timeout=5, state=ConnectionState.FAILED)
    assert agent.accepted_count() == 1

    # Every manual reconnect is refused with 409 until the refusals block the instance.
    mismatch = f"SSH key fingerprint mismatch: expected {original}, got {swapped}"
    statuses = []
    for _ in range(6):
        response = client_for(admin_user).post(f"/api/v1/instances/{instance.pk}/ssh-reconnect")
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"].startswith(f"connection blocked for {instance.name}")
            break
        assert response.status_code == 409 and response.json()["error"] == mismatch
    assert statuses[-1] == 429 and 409 in statuses, statuses

    # Only an admin may accept, and only the key the agent presented; accepting lifts the
    # block those refusals set, so the reconnect that follows goes through.
    response = client_for(operator).post(
        _accept_url(instance), {"fingerprint": swapped}, format="json"
    )
    assert response.status_code == 403
    response = client_for(admin_user).post(
        _accept_url(instance), {"fingerprint": "SHA256:" + "A" * 43}, format="json"
    )
    assert response.status_code == 400
    response = client_for(admin_user).post(
        _accept_url(instance), {"fingerprint": swapped}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["reconnect"]["success"] is True
    wait_status(instance, timeout=5, state=ConnectionState.CONNECTED, is_healthy=True)
    pin = HostKeyPin.objects.get(instance=instance)
    assert (pin.fingerprint, pin.source, pin.pinned_by) == (swapped, "admin", "admin")
    assert agent.accepted_count() == 2
    wait_until(_audited(instance, "host_key_accepted").exists, timeout=5)
