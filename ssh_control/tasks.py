"""SSH worker tasks: thin shims that run on the instance's owner and answer in JSON.

A domain error comes back as `{"ok": false, "error", "code", "status", "retry_after"}`
and `ssh_control.dispatch` re-raises it in the web process.
"""

from celery import shared_task

from ssh_control.exceptions import ClaworcError
from ssh_control.manager import operations


def error_payload(exc: ClaworcError) -> dict:
    return {
        "ok": False,
        "error": exc.message,
        "code": exc.code,
        "status": exc.status_code,
        "retry_after": getattr(exc, "retry_after", None),
    }


@shared_task(name="ssh_control.test_connection", time_limit=120, soft_time_limit=100)
def test_connection(instance_id: int) -> dict:
    try:
        return operations.connection_test(instance_id)
    except ClaworcError as exc:
        return error_payload(exc)


@shared_task(name="ssh_control.reconnect", time_limit=120, soft_time_limit=100)
def reconnect(instance_id: int, actor: str | None = None) -> dict:
    try:
        return operations.connection_reconnect(instance_id, actor=actor)
    except ClaworcError as exc:
        return error_payload(exc)
