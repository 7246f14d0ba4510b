"""Instance life cycle and security settings: the writes behind the API and the admin.

Each service validates, writes in one transaction, audits, and runs file side effects
only once the outcome is known, so the API and the admin behave the same.
"""

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.choices import AuditEventType
from audit.services import audit_record
from ssh_control import keys
from ssh_control.choices import GrantLevel, HostKeyPinSource
from ssh_control.exceptions import ClaworcError, KeyFileExists, KeyStorageError
from ssh_control.manager.counters import attempt_counters
from ssh_control.models import ConnectionStatus, HostKeyPin, Instance, InstanceGrant
from ssh_control.tunnels.services import tunnels_ensure_standard
from ssh_control.validators import parse_allowed_ips

logger = logging.getLogger(__name__)
UNBLOCK_TIMEOUT_SECONDS = 5

INSTANCE_FIELDS = (
    "ssh_host",
    "ssh_port",
    "ssh_user",
    "vnc_port",
    "gateway_port",
    "key_rotation_policy_days",
)


def instance_create(name: str, *, actor, grants: list | None = None, **fields) -> Instance:
    """Register an instance with a fresh key pair; the key file exists iff the row does."""
    instance = Instance(
        name=name, **{field: value for field, value in fields.items() if field in INSTANCE_FIELDS}
    )
    instance.full_clean(exclude=("ssh_public_key", "ssh_key_fingerprint"))
    _refuse_leftover_key_files(name)

    key = keys.generate_key_pair(name)
    _write_new_key(name, key)
    try:
        with transaction.atomic():
            instance.ssh_public_key = key.public_key
            instance.ssh_key_fingerprint = key.fingerprint
            instance.ssh_key_created_at = timezone.now()
            instance.save()
            ConnectionStatus.objects.create(instance=instance)
            tunnels_ensure_standard(instance)
            _replace_grants(instance, grants or [])
    except IntegrityError:
        # A concurrent request saved the same name between validation and this insert.
        keys.delete_private_key(name)
        if Instance.objects.filter(name=name).exists():
            raise _name_taken(name) from None
        raise
    except BaseException:
        keys.delete_private_key(name)
        raise

    audit_record(
        AuditEventType.INSTANCE_CREATED,
        instance=instance,
        actor=actor,
        details=f"instance {name} created for {instance.ssh_user}@{instance.ssh_host}:"
        f"{instance.ssh_port}, key {key.fingerprint}",
        data={"fingerprint": key.fingerprint},
    )
    logger.info("instance created name=%s fingerprint=%s", name, key.fingerprint)
    return instance


def instance_update(instance: Instance, *, actor, grants: list | None = None, **fields) -> Instance:
    """Change connection settings and, when given, replace the grants."""
    changes = {}
    for field, value in fields.items():
        if field in INSTANCE_FIELDS and getattr(instance, field) != value:
            changes[field] = {"from": getattr(instance, field), "to": value}
            setattr(instance, field, value)

    with transaction.atomic():
        instance.full_clean()
        instance.save()
        tunnels_ensure_standard(instance)
        if grants is not None:
            before = _grant_summary(instance)
            _replace_grants(instance, grants)
            after = _grant_summary(instance)
            if after != before:
                changes["grants"] = {"from": before, "to": after}

    if changes or grants is not None:
        summary = ", ".join(f"{name}: {c['from']} -> {c['to']}" for name, c in changes.items())
        audit_record(
            AuditEventType.INSTANCE_UPDATED,
            instance=instance,
            actor=actor,
            details=f"instance {instance.name} updated" + (f" ({summary})" if summary else ""),
            data={"changes": changes, "grants_replaced": grants is not None},
        )
    return instance


def instance_delete(instance: Instance, *, actor) -> None:
    """Delete the instance and, after commit, its private key file."""
    name, pk = instance.name, instance.pk
    with transaction.atomic():
        instance.delete()
        transaction.on_commit(lambda: keys.delete_private_key(name))
    audit_record(
        AuditEventType.INSTANCE_DELETED,
        instance_name=name,
        actor=actor,
        details=f"instance {name} (id {pk}) deleted with its key",
        data={"instance_id": pk},
    )


def instance_set_allowed_ips(instance: Instance, *, allowed_ips: str, actor) -> str:
    """Validate and store the source-IP restriction; returns the normalised list."""
    normalised = parse_allowed_ips(allowed_ips)
    previous = instance.allowed_source_ips
    if normalised == previous:
        return normalised

    instance.allowed_source_ips = normalised
    instance.save(update_fields=["allowed_source_ips", "updated_at"])
    audit_record(
        AuditEventType.ALLOWED_IPS_CHANGED,
        instance=instance,
        actor=actor,
        details=f"allowed source IPs changed from '{previous or 'any'}' to '{normalised or 'any'}'",
        data={"from": previous, "to": normalised},
    )
    return normalised


def host_key_accept(instance: Instance, *, fingerprint: str, actor) -> HostKeyPin:
    """Pin the host key the agent last presented and was refused for, named by fingerprint."""
    with transaction.atomic():
        pin = HostKeyPin.objects.select_for_update().filter(instance=instance).first()
        if pin is not None and pin.fingerprint == fingerprint:
            return pin
        if pin is None or not pin.offered_fingerprint:
            raise ValidationError(
                {"fingerprint": f"instance {instance.name} has no refused host key to accept"}
            )
        if pin.offered_fingerprint != fingerprint:
            raise ValidationError(
                {
                    "fingerprint": f"{fingerprint[:80]} is not the key the agent presented "
                    f"({pin.offered_fingerprint})"
                }
            )
        previous = pin.fingerprint
        pin.key_type, pin.public_key = pin.offered_key_type, pin.offered_public_key
        pin.fingerprint, pin.source = pin.offered_fingerprint, HostKeyPinSource.ADMIN
        pin.pinned_by = actor if isinstance(actor, str) else actor.get_username()
        pin.offered_key_type = pin.offered_public_key = pin.offered_fingerprint = ""
        pin.offered_at = None
        pin.save()
    # The refusals of the key now accepted no longer count toward a block.
    _unblock_attempts(instance)

    audit_record(
        AuditEventType.HOST_KEY_ACCEPTED,
        instance=instance,
        actor=actor,
        details=f"host key {fingerprint} accepted, replacing {previous}",
        data={"from": previous, "to": fingerprint},
    )
    logger.info("host key accepted instance=%s fingerprint=%s", instance.name, fingerprint)
    return pin


def _unblock_attempts(instance: Instance) -> None:
    counters = attempt_counters()
    counters.unblock(instance.pk)
    if counters.shared:
        return
    # Counters in process memory (the embedded default, no Redis): the owner's are its
    # own, so it is asked too, before the operator's next step (a reconnect) reaches it.
    from ssh_control import dispatch

    try:
        dispatch.run_on_owner(instance, dispatch.UNBLOCK_ATTEMPTS, timeout=UNBLOCK_TIMEOUT_SECONDS)
    except ClaworcError as exc:
        # No owner holds the instance (then none has counters for it) or it did not answer.
        logger.warning("failure counters not cleared on the owner instance=%s error=%s",
                       instance.name, exc.message)  # fmt: skip


def _refuse_leftover_key_files(name: str) -> None:
    """A new name must start without key files: an existing one is reported, never reused."""
    leftovers = [
        path.name for path in (keys.key_path(name), keys.pending_key_path(name)) if path.exists()
    ]
    if leftovers:
        logger.warning("instance create refused name=%s leftover_key_files=%s", name, leftovers)
        raise KeyFileExists(name, leftovers)


def _write_new_key(name: str, key: keys.GeneratedKey) -> None:
    try:
        keys.write_private_key(name, key)
    except KeyStorageError as exc:
        try:
            on_disk = keys.key_path(name).read_bytes()
        except OSError:
            on_disk = None
        if on_disk == key.encrypted_private_key:
            # This key reached its name before a later step failed: remove it again.
            keys.delete_private_key(name)
        elif on_disk is not None:
            # Written since the check above: another request is creating the same name.
            raise _name_taken(name) from None
        logger.error("instance create failed name=%s key_storage_error=%s", name, exc)
        raise


def _name_taken(name: str) -> ValidationError:
    return ValidationError({"name": f"an instance named {name!r} already exists"})


def _grant_summary(instance: Instance) -> list[str]:
    """The grants as `username:level`, sorted: what an audit entry keeps of them."""
    rows = instance.grants.values_list("user__username", "level")
    return sorted(f"{username}:{level}" for username, level in rows)


def _replace_grants(instance: Instance, grants: list) -> None:
    """Grants are `{"user": <user>, "level": "view" | "operate"}`; the list replaces all."""
    instance.grants.all().delete()
    InstanceGrant.objects.bulk_create(
        InstanceGrant(
            instance=instance, user=grant["user"], level=grant.get("level", GrantLevel.VIEW)
        )
        for grant in grants
    )
