"""Accepting a host key lifts the failure block wherever the counters live."""

import pytest
from django.conf import settings

from ssh_control import dispatch, services, tasks
from ssh_control.exceptions import SSHManagerUnavailable
from ssh_control.manager import counters
from ssh_control.models import HostKeyPin

OFFERED = "SHA256:offeredoffered"


@pytest.fixture
def local_counters(monkeypatch):
    """The embedded default: counters in this process's memory, not Redis."""
    local = counters.LocalCounters()
    monkeypatch.setattr(counters, "_counters", local)
    return local


@pytest.fixture
def refused_instance(make_instance):
    instance = make_instance("unblock-1")
    HostKeyPin.objects.create(
        instance=instance, key_type="ssh-ed25519", public_key="AAAA", fingerprint="SHA256:old",
        source="first_contact", offered_key_type="ssh-ed25519", offered_public_key="BBBB",
        offered_fingerprint=OFFERED,
    )  # fmt: skip
    return instance


def block(local, instance_id):
    for _ in range(settings.CLAWORC_SSH_FAILURE_THRESHOLD):
        local.failure(instance_id)
    assert local.attempt(instance_id).verdict == "blocked"


def test_accept_with_local_counters_asks_the_owner_to_unblock(
    local_counters, refused_instance, monkeypatch
):
    asked = []
    monkeypatch.setattr(
        dispatch, "run_on_owner", lambda instance, task, **kw: asked.append((instance.pk, task))
    )
    block(local_counters, refused_instance.pk)

    services.host_key_accept(refused_instance, fingerprint=OFFERED, actor="admin")

    assert asked == [(refused_instance.pk, dispatch.UNBLOCK_ATTEMPTS)]
    assert local_counters.attempt(refused_instance.pk).verdict == "ok"


def test_accept_with_local_counters_and_no_owner_still_pins(
    local_counters, refused_instance, monkeypatch
):
    def no_owner(instance, task, **kw):
        raise SSHManagerUnavailable()

    monkeypatch.setattr(dispatch, "run_on_owner", no_owner)

    pin = services.host_key_accept(refused_instance, fingerprint=OFFERED, actor="admin")

    assert pin.fingerprint == OFFERED


def test_accept_with_shared_counters_asks_no_worker(refused_instance, monkeypatch):
    assert counters.attempt_counters().shared  # Redis, as in the test settings
    monkeypatch.setattr(
        dispatch, "run_on_owner", lambda *a, **kw: pytest.fail("no worker needs asking")
    )

    services.host_key_accept(refused_instance, fingerprint=OFFERED, actor="admin")


def test_unblock_task_clears_the_workers_own_counters(local_counters, refused_instance):
    block(local_counters, refused_instance.pk)

    assert tasks.unblock_attempts(instance_id=refused_instance.pk) == {"ok": True}

    assert local_counters.attempt(refused_instance.pk).verdict == "ok"
