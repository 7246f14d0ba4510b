"""Zero-downtime, crash-safe rotation of an instance's key, run on the instance's owner.

The runbook's eight steps run in the order of DESIGN.md: generate, append, test, switch
the database, remove the old line, delete the old file, move the connection, restart the
tunnels. A `KeyRotation` row records each step before it is taken, and the database
switch is one transaction that changes the instance's key and the record together, so
it is the single commit point: a run that stops before it is rolled back (the new line
and the pending key file removed), a run that stops after it is finished. The next run or
the reconciler does either, whichever worker owns the instance by then.

The runbook's critical case, `Key rotation succeeded but failed to update database`,
cannot arise: the old key leaves the agent only after the database already names the new
key (step 5 follows step 4), and only over a fresh login with the new key; the new key's
file is on disk, fsynced, before its line reaches the agent; and the connection code
loads whichever key file (`<name>.key` or `<name>.key.next`) matches the database, so a
crash between the switch and the file rename still connects. A failed switch leaves
both lines on the agent and the database naming the old key, which still logs in; the
new line is removed only once the database has been read again and confirmed to name the
old key. At every moment the agent accepts a key the database knows and whose file exists.
"""

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.choices import AuditEventType
from audit.services import audit_record
from ssh_control import keys
from ssh_control.exceptions import (
    ClaworcError,
    KeyRotationFailed,
    NoSSHKey,
    RotationInProgress,
)
from ssh_control.manager.core import current_manager
from ssh_control.manager.gate import gate_open
from ssh_control.models import Instance, KeyRotation
from ssh_control.rotation.authorized_keys import authorized_keys_add, authorized_keys_remove
from ssh_control.rotation.choices import (
    PRE_SWITCH_STEPS,
    STEP_ORDER,
    RotationStatus,
    RotationStep,
)
from ssh_control.tunnels.supervisor import get_supervisor

logger = logging.getLogger(__name__)

SUCCESS_MESSAGE = "SSH key rotated successfully"
PROCESS_TOKEN = uuid.uuid4().hex[:12]

_running: set[int] = set()
_running_lock = threading.Lock()


class RotationSuperseded(Exception):
    """Another worker took the record over; this run stops without touching anything."""


@dataclass
class _Run:
    record: KeyRotation
    managed: object
    instance: Instance
    started: float = field(default_factory=time.monotonic)
    new_key: object = None
    new_connection: object = None
    # False while this run knows it sent nothing to the agent; a recovery cannot know.
    agent_touched: bool = True

    @property
    def actor(self) -> str:
        return self.record.actor or "system"


# Entry points (the owner's tasks).


def key_rotate(instance_id: int, *, actor: str | None = None, only_if_due: bool = False) -> dict:
    """Rotate the instance's key; an interrupted earlier rotation is finished first."""
    managed = current_manager().managed(instance_id)
    with _exclusive(instance_id):
        stale = KeyRotation.objects.filter(
            instance_id=instance_id, status=RotationStatus.IN_PROGRESS
        ).first()
        if stale is not None:
            record = _recover(stale, managed)
            if record.status == RotationStatus.COMPLETED:
                return _result(
                    record, "SSH key rotated successfully (interrupted rotation finished)"
                )

        instance = Instance.objects.get(pk=instance_id)
        if only_if_due and not rotation_is_due(instance):
            return {"success": True, "skipped": True, "message": "key not due for rotation"}
        if not instance.ssh_public_key:
            raise NoSSHKey()
        return _rotate(_Run(_record_start(instance, actor), managed, instance))


def key_rotation_recover(instance_id: int) -> dict:
    """Finish or roll back the instance's interrupted rotation, if there is one."""
    managed = current_manager().managed(instance_id)
    try:
        with _exclusive(instance_id):
            stale = KeyRotation.objects.filter(
                instance_id=instance_id, status=RotationStatus.IN_PROGRESS
            ).first()
            if stale is None:
                return {"recovered": False, "status": None}
            record = _recover(stale, managed)
    except RotationInProgress:
        return {"recovered": False, "status": RotationStatus.IN_PROGRESS}
    return {"recovered": True, "status": record.status}


def rotation_is_due(instance: Instance, now=None) -> bool:
    days = instance.effective_rotation_policy_days
    if days <= 0 or not instance.ssh_public_key or instance.ssh_key_created_at is None:
        return False
    age = (now or timezone.now()) - instance.ssh_key_created_at
    return age.total_seconds() >= days * 86400


@contextmanager
def _exclusive(instance_id: int):
    with _running_lock:
        if instance_id in _running:
            raise RotationInProgress(f"a key rotation of instance {instance_id} is in progress")
        _running.add(instance_id)
    try:
        yield
    finally:
        with _running_lock:
            _running.discard(instance_id)


# The forward run.


def _record_start(instance: Instance, actor: str | None) -> KeyRotation:
    try:
        with transaction.atomic():
            record = KeyRotation.objects.create(
                instance=instance,
                actor=actor or "system",
                runner=_runner(),
                step=RotationStep.GENERATE_KEY,
                old_public_key=instance.ssh_public_key,
                old_fingerprint=instance.ssh_key_fingerprint,
            )
    except IntegrityError:
        raise RotationInProgress(
            f"a key rotation of instance {instance.name} is in progress"
        ) from None
    logger.info("key rotation started instance=%s actor=%s", instance.name, record.actor)
    _pause_point(RotationStep.GENERATE_KEY)
    return record


def _rotate(run: _Run) -> dict:
    instance = run.instance
    run.agent_touched = False
    try:
        # 1. The new key's file is on disk before its public half goes anywhere.
        generated = keys.generate_key_pair(instance.name)
        keys.write_private_key(instance.name, generated, pending=True)
        run.new_key = keys.load_pending_private_key(instance.name)

        _advance(
            run,
            RotationStep.APPEND_KEY,
            new_public_key=generated.public_key,
            new_fingerprint=generated.fingerprint,
        )
        connection = run.managed.live_connection()
        run.agent_touched = True
        authorized_keys_add(connection, instance.authorized_keys_path, generated.public_key)

        _advance(run, RotationStep.TEST_KEY)
        run.new_connection = _open_with_new_key(run)

        _advance(run, RotationStep.SWITCH_DATABASE)
        _switch_database(run)
        _finish(run)
    except RotationSuperseded:
        _close_new_connection(run)
        raise KeyRotationFailed("the rotation was taken over by another worker") from None
    except Exception as exc:
        _fail(run, exc)
    return _complete(run)


def _advance(run: _Run, step: str, **fields) -> None:
    """Record the step about to be taken; fails if another worker took the record over."""
    updated = KeyRotation.objects.filter(
        pk=run.record.pk, status=RotationStatus.IN_PROGRESS, runner=run.record.runner
    ).update(step=step, updated_at=timezone.now(), **fields)
    if updated != 1:
        raise RotationSuperseded()
    run.record.step = step
    for name, value in fields.items():
        setattr(run.record, name, value)
    _pause_point(step)


def _open_with_new_key(run: _Run):
    """A connection through the gate that proves the new key logs in."""
    if run.new_key is None:
        run.new_key = keys.load_private_key(
            run.instance.name, fingerprint=run.record.new_fingerprint
        )
        if keys.private_key_fingerprint(run.new_key) != run.record.new_fingerprint:
            raise KeyRotationFailed("the new key's file is missing")
    manager = current_manager()
    return gate_open(
        run.instance, slots=manager.slots, holds_lease=manager.holds_lease, private_key=run.new_key
    )


def _switch_database(run: _Run) -> None:
    """Step 4, the commit point: the instance's key and the record change together."""
    record, now = run.record, timezone.now()
    with transaction.atomic():
        Instance.objects.filter(pk=record.instance_id).update(
            ssh_public_key=record.new_public_key,
            ssh_key_fingerprint=record.new_fingerprint,
            ssh_key_created_at=now,
            updated_at=now,
        )
        updated = KeyRotation.objects.filter(
            pk=record.pk, status=RotationStatus.IN_PROGRESS, runner=record.runner
        ).update(step=RotationStep.REMOVE_OLD_KEY, updated_at=now)
        if updated != 1:
            raise RotationSuperseded()
    record.step = RotationStep.REMOVE_OLD_KEY
    run.instance.refresh_from_db()
    logger.info(
        "key rotation switched instance=%s fingerprint=%s",
        run.instance.name,
        record.new_fingerprint,
    )
    _pause_point(RotationStep.REMOVE_OLD_KEY)


def _finish(run: _Run) -> None:
    """Steps 5-8, each safe to repeat: the forward run and the recovery share them."""
    instance, record = run.instance, run.record
    if run.new_connection is None:
        run.new_connection = _open_with_new_key(run)
    if record.step != RotationStep.REMOVE_OLD_KEY:
        _advance(run, RotationStep.REMOVE_OLD_KEY)
    if record.old_public_key and record.old_fingerprint != record.new_fingerprint:
        authorized_keys_remove(
            run.new_connection, instance.authorized_keys_path, record.old_public_key
        )

    _advance(run, RotationStep.DELETE_OLD_FILE)
    keys.promote_pending_key(instance.name)

    _advance(run, RotationStep.RECONNECT)
    connection, run.new_connection = run.new_connection, None
    run.managed.switch_connection(
        connection, f"key rotated to {record.new_fingerprint}", actor=run.actor
    )

    _advance(run, RotationStep.RESTART_TUNNELS)
    _restart_tunnels(instance)


def _restart_tunnels(instance: Instance) -> None:
    """Probe every tunnel over the new connection; a failed one is recreated by the
    supervisor with its usual backoff."""
    tunnels = get_supervisor().tunnels_of(instance.pk)
    if tunnels is None:
        return
    for tunnel_id, listener in list(tunnels.listeners.items()):
        error = tunnels.probe(listener)
        if error:
            logger.warning(
                "tunnel probe failed after rotation instance=%s tunnel=%s error=%s",
                instance.name,
                tunnel_id,
                error,
            )
    tunnels.next_monitor = 0.0


def _complete(run: _Run) -> dict:
    record = run.record
    KeyRotation.objects.filter(pk=record.pk).update(
        status=RotationStatus.COMPLETED, error="", finished_at=timezone.now()
    )
    record.status = RotationStatus.COMPLETED
    duration = _elapsed_ms(run)
    logger.info(
        "key rotation completed instance=%s old=%s new=%s duration_ms=%s",
        run.instance.name,
        record.old_fingerprint,
        record.new_fingerprint,
        duration,
    )
    _audit(run, "completed", duration_ms=duration)
    return _result(record, SUCCESS_MESSAGE)


def _result(record: KeyRotation, message: str) -> dict:
    rotated_at = Instance.objects.values_list("ssh_key_created_at", flat=True).get(
        pk=record.instance_id
    )
    return {
        "success": True,
        "fingerprint": record.new_fingerprint,
        "rotated_at": rotated_at.isoformat() if rotated_at else None,
        "message": message,
    }


# Failure, rollback and recovery.


def _fail(run: _Run, exc: Exception) -> None:
    """Roll back what came before the switch, or leave the rest to the reconciler; raise."""
    record = run.record
    reason = f"step {_step_number(record.step)} ({_step_label(record.step)}): {_describe(exc)}"
    logger.error("key rotation failed instance=%s %s", run.instance.name, reason)
    _close_new_connection(run)
    try:
        outcome = _settle_failure(run)
    except Exception as settle_exc:
        outcome = f"left for the reconciler ({_describe(settle_exc)})"
        logger.exception("key rotation rollback failed instance=%s", run.instance.name)
    _note_error(record, f"{reason}; {outcome}")
    _audit(run, "failed", duration_ms=_elapsed_ms(run), error=f"{reason}; {outcome}")
    raise KeyRotationFailed(reason) from None


def _settle_failure(run: _Run) -> str:
    record = run.record
    if record.step in PRE_SWITCH_STEPS:
        _roll_back(run)
        return "rolled back"
    if record.step == RotationStep.SWITCH_DATABASE:
        # Whether the switch committed is read back before any key line is touched.
        current = Instance.objects.values_list("ssh_key_fingerprint", flat=True).get(
            pk=record.instance_id
        )
        if current != record.new_fingerprint:
            _roll_back(run)
            return "rolled back"
    return "the new key is active; the reconciler finishes the cleanup"


def _roll_back(run: _Run) -> None:
    """Remove the new key's line and pending file; the database still names the old key."""
    record = run.record
    if record.new_public_key and run.agent_touched:
        connection = run.managed.live_connection()
        authorized_keys_remove(connection, run.instance.authorized_keys_path, record.new_public_key)
    keys.delete_pending_key(run.instance.name)
    KeyRotation.objects.filter(pk=record.pk, runner=record.runner).update(
        status=RotationStatus.ROLLED_BACK, finished_at=timezone.now()
    )
    record.status = RotationStatus.ROLLED_BACK
    logger.info("key rotation rolled back instance=%s", run.instance.name)


def _recover(record: KeyRotation, managed) -> KeyRotation:
    """Take over an interrupted rotation and finish it (switched) or roll it back."""
    taken = KeyRotation.objects.filter(
        pk=record.pk, status=RotationStatus.IN_PROGRESS, runner=record.runner
    ).update(runner=_runner(), updated_at=timezone.now())
    if taken != 1:
        raise RotationInProgress(f"a key rotation of instance {record.instance_id} is in progress")
    record.refresh_from_db()
    instance = Instance.objects.get(pk=record.instance_id)
    run = _Run(record, managed, instance)
    switched = bool(record.new_fingerprint) and instance.ssh_key_fingerprint == (
        record.new_fingerprint
    )
    logger.info(
        "key rotation recovery instance=%s step=%s switched=%s",
        instance.name,
        record.step,
        switched,
    )
    try:
        if switched:
            _finish(run)
            _complete(run)
        else:
            _roll_back(run)
            _audit(run, "rolled back", duration_ms=_elapsed_ms(run), error=record.error)
    except RotationSuperseded:
        _close_new_connection(run)
        raise RotationInProgress("the rotation was taken over by another worker") from None
    except Exception as exc:
        _close_new_connection(run)
        reason = (
            f"recovering the interrupted rotation at step {_step_number(record.step)} "
            f"({_step_label(record.step)}): {_describe(exc)}"
        )
        _note_error(record, reason)
        _audit(run, "recovery failed", duration_ms=_elapsed_ms(run), error=reason)
        raise KeyRotationFailed(reason) from None
    return record


# Helpers.


def _close_new_connection(run: _Run) -> None:
    if run.new_connection is not None:
        run.new_connection.close()
        current_manager().slots.release()
        run.new_connection = None


def _note_error(record: KeyRotation, error: str) -> None:
    try:
        KeyRotation.objects.filter(pk=record.pk).update(error=error[:2000])
        record.error = error
    except Exception:
        logger.exception("cannot record the rotation error record=%s", record.pk)


def _audit(run: _Run, outcome: str, *, duration_ms: int, error: str = "") -> None:
    record = run.record
    details = f"key rotation {outcome}: {record.old_fingerprint} -> {record.new_fingerprint or '-'}"
    if error:
        details += f"; {error}"
    audit_record(
        AuditEventType.KEY_ROTATION,
        instance=run.instance,
        actor=run.actor,
        details=details,
        duration_ms=duration_ms,
        data={
            "outcome": outcome,
            "old_fingerprint": record.old_fingerprint,
            "new_fingerprint": record.new_fingerprint,
            "step": record.step,
            "rotation_id": record.pk,
        },
    )


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClaworcError):
        return exc.message
    # Database and OS errors: their class and first line, never a traceback.
    first_line = str(exc).strip().split("\n")[0][:200]
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def _step_number(step: str) -> int:
    return STEP_ORDER.index(step) + 1


def _step_label(step: str) -> str:
    return RotationStep(step).label.split(" ", 1)[1]


def _runner() -> str:
    return f"{current_manager().node}:{PROCESS_TOKEN}"


def _elapsed_ms(run: _Run) -> int:
    return int((time.monotonic() - run.started) * 1000)


def _pause_point(step: str) -> None:
    """Test-only: with CLAWORC_KEY_ROTATION_TEST_PAUSE_STEP set to `step`, announce the
    pause with a file in the data dir and wait for the test to allow the step to run."""
    if settings.CLAWORC_KEY_ROTATION_TEST_PAUSE_STEP != step:
        return
    paused = Path(settings.DATA_DIR) / f"rotation-paused-{step}"
    resume = paused.with_name(f"rotation-resume-{step}")
    paused.touch()
    deadline = time.monotonic() + 120
    while not resume.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
