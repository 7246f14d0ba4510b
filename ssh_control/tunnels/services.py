"""Which tunnels an instance should have: the standard `vnc` and `gateway` services at the
instance's ports, plus the `custom` ones an admin added."""

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from audit.choices import AuditEventType
from audit.services import audit_record
from ssh_control.choices import TunnelService, TunnelStatus
from ssh_control.exceptions import TunnelNotFound
from ssh_control.models import Instance, Tunnel

logger = logging.getLogger(__name__)

WAITING_FOR_CONNECTION = "waiting for the SSH connection"
CUSTOM_TUNNEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def standard_ports(instance: Instance) -> dict[str, int]:
    return {TunnelService.VNC: instance.vnc_port, TunnelService.GATEWAY: instance.gateway_port}


def tunnels_ensure_standard(instance: Instance) -> None:
    """Create the standard tunnels' rows, or move them to the instance's current ports."""
    for service, port in standard_ports(instance).items():
        tunnel, created = Tunnel.objects.get_or_create(
            instance=instance,
            service=service,
            name="",
            defaults={
                "remote_port": port,
                "status": TunnelStatus.UNHEALTHY,
                "last_error": WAITING_FOR_CONNECTION,
            },
        )
        if not created and tunnel.remote_port != port:
            Tunnel.objects.filter(pk=tunnel.pk).update(remote_port=port)


def tunnel_rows_for_worker(instance_id: int) -> list[Tunnel]:
    """Every tunnel the instance should have, standard rows created on the way."""
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None:
        return []
    tunnels_ensure_standard(instance)
    return list(instance.tunnels.all())


def tunnel_create_custom(instance: Instance, *, name: str, remote_port: int, actor) -> Tunnel:
    """Add a `custom` tunnel; the owner's monitor starts it within one monitor interval."""
    try:
        with transaction.atomic():
            tunnel = Tunnel.objects.create(
                instance=instance,
                service=TunnelService.CUSTOM,
                name=name,
                remote_port=remote_port,
                status=TunnelStatus.UNHEALTHY,
                last_error=WAITING_FOR_CONNECTION,
            )
    except IntegrityError:
        raise ValidationError({"name": f"a custom tunnel named {name!r} already exists"}) from None
    audit_record(
        AuditEventType.TUNNEL_CREATED,
        instance=instance,
        actor=actor,
        details=f"custom tunnel {name} to remote port {remote_port} created",
        data={"tunnel_id": tunnel.pk, "name": name, "remote_port": remote_port},
    )
    logger.info("tunnel added instance=%s name=%s remote_port=%s actor=%s",
                instance.name, name, remote_port, actor)  # fmt: skip
    return tunnel


def tunnel_delete(instance: Instance, tunnel_id: int, *, actor) -> None:
    """Remove a `custom` tunnel; standard tunnels follow the instance's ports instead."""
    tunnel = instance.tunnels.filter(pk=tunnel_id).first()
    if tunnel is None:
        raise TunnelNotFound(None, instance.name, tunnel_id=tunnel_id)
    if tunnel.service != TunnelService.CUSTOM:
        raise ValidationError(
            {"service": f"the {tunnel.service} tunnel is standard; change the instance's port"}
        )
    tunnel.delete()
    audit_record(
        AuditEventType.TUNNEL_DELETED,
        instance=instance,
        actor=actor,
        details=f"custom tunnel {tunnel.name} to remote port {tunnel.remote_port} deleted",
        data={"tunnel_id": tunnel_id, "name": tunnel.name, "remote_port": tunnel.remote_port},
    )
    logger.info("tunnel removed instance=%s name=%s actor=%s", instance.name, tunnel.name, actor)


def tunnel_for_proxy(instance: Instance, service: str) -> Tunnel:
    """The active tunnel the browser proxy should use, or the runbook's error."""
    tunnel = (
        instance.tunnels.filter(service=service, name="", status=TunnelStatus.ACTIVE)
        .exclude(local_port=None)
        .first()
    )
    if tunnel is None:
        raise TunnelNotFound(service, instance.name)
    return tunnel


def tunnel_refusal_since(tunnel_id: int, refused_count: int) -> str | None:
    """Why the tunnel last refused a connection, if it refused more than `refused_count`.

    The worker counts a refusal on the row before it closes the refused connection, so a
    client that saw the close and compares with the count it read before connecting learns
    whether a connection cap closed it.
    """
    return (
        Tunnel.objects.filter(pk=tunnel_id, refused_count__gt=refused_count)
        .values_list("last_refusal", flat=True)
        .first()
    )
