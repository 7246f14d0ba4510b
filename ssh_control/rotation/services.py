"""What the web process and beat ask of key rotation: hand it to the owners, and install
an instance's key on its agent with a one-time password login."""

import logging

from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.choices import AuditEventType
from audit.services import audit_record
from claworc.celery import app
from ssh_control import dispatch
from ssh_control.exceptions import ClaworcError, NoSSHKey
from ssh_control.manager.gate import SlotPool, gate_open
from ssh_control.models import Instance, KeyRotation
from ssh_control.rotation.authorized_keys import authorized_keys_add
from ssh_control.rotation.choices import RotationStatus
from ssh_control.rotation.engine import rotation_is_due

logger = logging.getLogger(__name__)

RECOVER_KEY_ROTATION = "ssh_control.recover_key_rotation"
# A queued rotation or recovery that waited longer than this is dropped; the next beat
# run sends it again.
SEND_EXPIRES_SECONDS = 3600


def rotation_reconcile() -> list[int]:
    """Send every instance with an unfinished rotation to its owner to finish or roll back.

    The owner skips a rotation it is running itself; any other is interrupted.
    """
    sent = []
    unfinished = KeyRotation.objects.filter(status=RotationStatus.IN_PROGRESS).select_related(
        "instance"
    )
    for record in unfinished:
        if _send_to_owner(record.instance, RECOVER_KEY_ROTATION):
            sent.append(record.instance_id)
    logger.info("key rotation reconcile unfinished=%s sent=%s", len(unfinished), len(sent))
    return sent


def instances_due_for_rotation(now=None) -> list[Instance]:
    now = now or timezone.now()
    candidates = Instance.objects.exclude(ssh_public_key="").exclude(
        key_rotations__status=RotationStatus.IN_PROGRESS
    )
    return [instance for instance in candidates if rotation_is_due(instance, now)]


def rotation_rotate_due() -> list[int]:
    """The daily policy run: one rotation task per due instance, run by the owners in
    parallel; each owner checks again that the key is due, so each rotates once."""
    sent = [
        instance.pk
        for instance in instances_due_for_rotation()
        if _send_to_owner(instance, dispatch.ROTATE_KEY, only_if_due=True)
    ]
    logger.info("key rotation policy run due_sent=%s", len(sent))
    return sent


def _send_to_owner(instance: Instance, task_name: str, **kwargs) -> bool:
    node = dispatch.owner_node(instance)
    if node is None:
        logger.warning("no owner for key rotation instance=%s task=%s", instance.name, task_name)
        return False
    app.send_task(
        task_name,
        kwargs={"instance_id": instance.pk, **kwargs},
        queue=dispatch.node_queue(node),
        expires=SEND_EXPIRES_SECONDS,
    )
    return True


def key_install(instance: Instance, *, password: str, actor) -> dict:
    """Append the instance's public key to its agent's authorized_keys over one password
    login through the gate; the password is neither stored, logged nor audited."""
    if not instance.ssh_public_key:
        raise NoSSHKey()
    slots = SlotPool()
    connection = gate_open(instance, slots=slots, password=password)
    try:
        appended = authorized_keys_add(
            connection, instance.authorized_keys_path, instance.ssh_public_key
        )
    finally:
        connection.close()
        slots.release()

    message = "SSH key installed" if appended else "SSH key was already installed"
    audit_record(
        AuditEventType.FILE_OPERATION,
        instance=instance,
        actor=actor,
        details=f"{message} in {instance.authorized_keys_path}: {instance.ssh_key_fingerprint}",
        data={"fingerprint": instance.ssh_key_fingerprint, "appended": appended},
    )
    logger.info("key installed instance=%s appended=%s", instance.name, appended)
    return {
        "success": True,
        "fingerprint": instance.ssh_key_fingerprint,
        "appended": appended,
        "message": message,
        "reconnect": _reconnect_after_install(instance, actor),
    }


def _reconnect_after_install(instance: Instance, actor) -> dict:
    """Let the owner log in with the key at once instead of at its next retry."""
    username = getattr(actor, "get_username", lambda: actor)()
    try:
        return dispatch.run_on_owner(instance, dispatch.RECONNECT, actor=username)
    except ClaworcError as exc:
        return {"success": False, "error": exc.message, "code": exc.code}


def authorized_keys_path_clean(path: str) -> str:
    path = path.strip()
    if not path or any(char in path for char in "\0\n\r") or not path.startswith(("/", "~/")):
        raise ValidationError(
            {"authorized_keys_path": "use an absolute path or one starting with ~/"}
        )
    return path


def instance_set_authorized_keys_path(instance: Instance, *, path: str, actor) -> Instance:
    """Change which agent file key installation and rotation edit."""
    path = authorized_keys_path_clean(path)
    previous = instance.authorized_keys_path
    if path == previous:
        return instance
    instance.authorized_keys_path = path
    Instance.objects.filter(pk=instance.pk).update(authorized_keys_path=path)
    audit_record(
        AuditEventType.INSTANCE_UPDATED,
        instance=instance,
        actor=actor,
        details=f"authorized_keys_path changed from {previous} to {path}",
        data={"authorized_keys_path": {"from": previous, "to": path}},
    )
    return instance
