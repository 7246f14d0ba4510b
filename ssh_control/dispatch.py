"""Hands SSH work to the worker node that owns the instance, and waits for its answer.

The owner is whoever holds a live lease (`InstanceLease`); its tasks run on the queue
`ssh.<node>`. With no live owner the caller gets `SSH manager not initialized`. The
caller's audit context (user, source IP, request id) travels with the task, so entries
the worker writes name the same actor as the request's own.
"""

import logging

from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings
from django.db.models.functions import Now

from audit import context
from claworc.celery import app
from ssh_control.exceptions import ClaworcError, SSHManagerUnavailable, WorkerTimeout
from ssh_control.models import Instance, InstanceLease

logger = logging.getLogger(__name__)

TEST_CONNECTION = "ssh_control.test_connection"
RECONNECT = "ssh_control.reconnect"
ROTATE_KEY = "ssh_control.rotate_key"
UNBLOCK_ATTEMPTS = "ssh_control.unblock_attempts"
# A rotation makes several round trips to the agent: the API waits as long as the task may
# run (its time limit) rather than CLAWORC_SSH_REQUEST_TIMEOUT_SECONDS.
ROTATE_KEY_TIMEOUT_SECONDS = 300


def node_queue(node: str) -> str:
    return f"ssh.{node}"


def owner_node(instance: Instance) -> str | None:
    """The node holding a live lease on the instance, if any."""
    lease = (
        InstanceLease.objects.filter(instance=instance, expires_at__gt=Now()).only("node").first()
    )
    return lease.node if lease else None


def run_on_owner(instance: Instance, task_name: str, *, timeout: float | None = None, **kwargs):
    """Run `task_name` on the instance's owner and return its result (a JSON value).

    Errors the worker raises come back as domain exceptions, re-raised here.
    """
    node = owner_node(instance)
    if node is None:
        raise SSHManagerUnavailable()

    timeout = timeout or settings.CLAWORC_SSH_REQUEST_TIMEOUT_SECONDS
    audit_context = context.task_context()
    if audit_context is not None:
        kwargs[context.TASK_KWARG] = audit_context
    result = app.send_task(
        task_name,
        kwargs={"instance_id": instance.pk, **kwargs},
        queue=node_queue(node),
        expires=timeout,
    )
    try:
        answer = result.get(timeout=timeout, propagate=True, disable_sync_subtasks=False)
    except CeleryTimeout:
        logger.warning("worker timeout node=%s task=%s instance=%s", node, task_name, instance.pk)
        raise WorkerTimeout(f"SSH worker {node} did not answer within {timeout:g}s") from None
    finally:
        result.forget()
    if isinstance(answer, dict) and answer.get("ok") is False:
        raise remote_error(answer)
    return answer


def remote_error(payload: dict) -> ClaworcError:
    """The domain exception a worker reported, rebuilt with its class, message and status."""
    cls = _error_classes().get(payload.get("code"), ClaworcError)
    error = cls.__new__(cls)
    Exception.__init__(error, payload.get("error") or "request failed")
    error.status_code = payload.get("status") or cls.status_code
    error.code = payload.get("code") or cls.code
    if payload.get("retry_after") is not None:
        error.retry_after = payload["retry_after"]
    return error


def _error_classes() -> dict:
    classes, pending = {}, [ClaworcError]
    while pending:
        cls = pending.pop()
        classes.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return classes
