"""Entries an SSH worker writes for a request name the requester, its IP and request id.

A real worker and agent: the request's audit context travels with the task, while the
worker's own background work stays `system` with no source IP.
"""

import uuid

import pytest
from django.test import Client

from audit import context
from audit.choices import AuditEventType
from audit.models import AuditEntry
from audit.services import audit_flush
from ssh_control.choices import ConnectionState
from tests.agents import wait_until
from tests.ssh_control.conftest import (  # noqa: F401  (fixtures)
    clean_attempt_counters,
    make_agent,
    start_worker,
    wait_status,
)

# Django's test client sends its requests from this address.
CLIENT_IP = "127.0.0.1"
ENTRY_TIMEOUT_SECONDS = 10


@pytest.fixture
def connected_instance(make_instance, make_agent, start_worker):  # noqa: F811
    """An instance connected through its agent by one SSH worker."""

    def build(name: str, **worker_env):
        instance = make_instance(name)
        agent = make_agent(instance, serve=True)
        worker = start_worker(**worker_env)
        agent.wait_ready()
        worker.wait_ready()
        wait_status(instance, timeout=15, state=ConnectionState.CONNECTED)
        return instance

    return build


@pytest.fixture
def admin_session(admin_user):
    """The admin on a session cookie, as the runbook's curl commands are."""
    client = Client()
    client.force_login(admin_user)
    return client


def restrict_source_ips(client: Client, instance) -> AuditEntry:
    """Allow only a network the worker is not in; returns the change's own entry."""
    response = client.put(
        f"/api/v1/instances/{instance.pk}/ssh-allowed-ips",
        {"allowed_ips": "10.9.9.0/24"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert audit_flush()
    return AuditEntry.objects.get(event_type=AuditEventType.ALLOWED_IPS_CHANGED)


def wait_entries(instance, event_type: str, count: int) -> list[AuditEntry]:
    def found():
        entries = list(AuditEntry.objects.filter(instance_id=instance.pk, event_type=event_type))
        return entries if len(entries) >= count else None

    return wait_until(found, timeout=ENTRY_TIMEOUT_SECONDS, message=f"{count} {event_type}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_ssh_test_refused_on_worker_audits_requesting_admin_ip_and_request_id(
    connected_instance, admin_session
):
    instance = connected_instance("ctx-test")
    changed = restrict_source_ips(admin_session, instance)

    response = admin_session.post(f"/api/v1/instances/{instance.pk}/ssh-test")

    assert response.status_code == 200, response.content
    assert response.json()["success"] is False
    [restricted] = wait_entries(instance, AuditEventType.IP_RESTRICTED, 1)
    assert (restricted.username, restricted.source_ip) == ("admin", CLIENT_IP)
    assert restricted.request_id is not None
    # The test is a request of its own, not the one that changed the allowed list.
    assert restricted.request_id != changed.request_id


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_ssh_reconnect_refused_on_worker_groups_entries_and_leaves_retries_to_system(
    connected_instance, admin_session
):
    instance = connected_instance("ctx-reconnect", CLAWORC_SSH_RECONNECT_MAX_RETRIES=3)
    restrict_source_ips(admin_session, instance)

    response = admin_session.post(f"/api/v1/instances/{instance.pk}/ssh-reconnect")

    assert response.status_code == 403, response.content
    wait_status(instance, timeout=10, state=ConnectionState.FAILED)
    [terminated] = wait_entries(instance, AuditEventType.CONNECTION_TERMINATED, 1)
    restricted = wait_entries(instance, AuditEventType.IP_RESTRICTED, 4)
    # The request's drop and refusal share its request id, user and address.
    assert (terminated.username, terminated.source_ip) == ("admin", CLIENT_IP)
    requested = [entry for entry in restricted if entry.request_id == terminated.request_id]
    assert [(entry.username, entry.source_ip) for entry in requested] == [("admin", CLIENT_IP)]
    # The three background retries that follow are the worker's own.
    background = [entry for entry in restricted if entry not in requested]
    assert [(e.username, e.source_ip, e.request_id) for e in background] == [
        ("system", None, None)
    ] * 3


@context.bound_from_task
def context_seen_by_task(instance_id: int) -> context.ActorContext:
    return context.current()


def test_task_context_round_trips_through_task_kwargs():
    bound = context.ActorContext(username="admin", source_ip="192.0.2.4", request_id=uuid.uuid4())
    token = context.activate(bound)
    try:
        kwargs = {"instance_id": 1, context.TASK_KWARG: context.task_context()}
    finally:
        context.deactivate(token)

    assert context_seen_by_task(**kwargs) == bound
    assert context.current() == context.ActorContext()


def test_task_sent_without_context_runs_as_background_work():
    assert context.task_context() is None
    outer = context.activate(context.ActorContext(username="admin", source_ip="192.0.2.4"))
    try:
        # Run in place (as an eager task would): the request's context does not leak in.
        assert context_seen_by_task(instance_id=1) == context.ActorContext()
        assert context.current().username == "admin"
    finally:
        context.deactivate(outer)
