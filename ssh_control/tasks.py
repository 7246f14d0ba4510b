"""SSH worker tasks: thin shims that run on the instance's owner and answer in JSON.

A domain error comes back as `{"ok": false, "error", "code", "status", "retry_after"}`
and `ssh_control.dispatch` re-raises it in the web process. Each task runs with the audit
context its sender passed (`audit.context.bound_from_task`); beat's tasks have none.
"""

from celery import shared_task

from audit.context import bound_from_task
from ssh_control import dispatch
from ssh_control.exceptions import ClaworcError
from ssh_control.manager import operations
from ssh_control.manager.counters import attempt_counters


def error_payload(exc: ClaworcError) -> dict:
    return {
        "ok": False,
        "error": exc.message,
        "code": exc.code,
        "status": exc.status_code,
        "retry_after": getattr(exc, "retry_after", None),
    }


@shared_task(name="ssh_control.test_connection", time_limit=120, soft_time_limit=100)
@bound_from_task
def test_connection(instance_id: int) -> dict:
    try:
        return operations.connection_test(instance_id)
    except ClaworcError as exc:
        return error_payload(exc)


@shared_task(name="ssh_control.reconnect", time_limit=120, soft_time_limit=100)
@bound_from_task
def reconnect(instance_id: int, actor: str | None = None) -> dict:
    try:
        return operations.connection_reconnect(instance_id, actor=actor)
    except ClaworcError as exc:
        return error_payload(exc)


@shared_task(name=dispatch.UNBLOCK_ATTEMPTS, time_limit=30)
@bound_from_task
def unblock_attempts(instance_id: int) -> dict:
    """Forget the owner's failure count and block (counters kept in its own memory)."""
    attempt_counters().unblock(instance_id)
    return {"ok": True}


# Key rotation (#5): the rotation and its recovery run on the owner; the two beat tasks
# only decide which owners to ask.


@shared_task(
    name=dispatch.ROTATE_KEY,
    time_limit=dispatch.ROTATE_KEY_TIMEOUT_SECONDS,
    soft_time_limit=dispatch.ROTATE_KEY_TIMEOUT_SECONDS - 30,
)
@bound_from_task
def rotate_key(instance_id: int, actor: str | None = None, only_if_due: bool = False) -> dict:
    from ssh_control.rotation import engine

    try:
        return engine.key_rotate(instance_id, actor=actor, only_if_due=only_if_due)
    except ClaworcError as exc:
        return error_payload(exc)


@shared_task(name="ssh_control.recover_key_rotation", time_limit=300, soft_time_limit=270)
@bound_from_task
def recover_key_rotation(instance_id: int) -> dict:
    from ssh_control.rotation import engine

    try:
        return engine.key_rotation_recover(instance_id)
    except ClaworcError as exc:
        return error_payload(exc)


@shared_task(name="ssh_control.reconcile_key_rotations", time_limit=120, soft_time_limit=100)
def reconcile_key_rotations() -> list[int]:
    from ssh_control.rotation import services

    return services.rotation_reconcile()


@shared_task(name="ssh_control.rotate_due_keys", time_limit=600, soft_time_limit=540)
def rotate_due_keys() -> list[int]:
    from ssh_control.rotation import services

    return services.rotation_rotate_due()
