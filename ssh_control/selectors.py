"""Read models of the SSH layer, built from what the SSH workers published."""

from django.db.models import Count, Q, Sum
from django.utils import timezone

from ssh_control.choices import ConnectionEventType, ConnectionState, TunnelStatus
from ssh_control.exceptions import NoSSHKey
from ssh_control.models import ConnectionEvent, ConnectionStatus, Instance, Tunnel

RECENT_EVENT_COUNT = 10


def format_duration(seconds: float) -> str:
    """`3h2m5s`-style durations, as the runbook's uptime shows them."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def tunnel_view(tunnel: Tunnel) -> dict:
    return {
        "id": tunnel.pk,
        "service": tunnel.service,
        "name": tunnel.name or tunnel.service,
        "type": "reverse",
        "local_port": tunnel.local_port,
        "remote_port": tunnel.remote_port,
        "status": tunnel.status,
        "healthy": tunnel.status == TunnelStatus.ACTIVE,
        "started_at": tunnel.started_at,
        "last_check": tunnel.last_check_at,
        "last_error": tunnel.last_error,
        "bytes_transferred": tunnel.bytes_transferred,
        "refused_count": tunnel.refused_count,
        "last_refusal": tunnel.last_refusal,
    }


def event_view(event: ConnectionEvent) -> dict:
    return {
        "id": event.pk,
        "event_type": event.event_type,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "reason": event.reason,
        "created_at": event.created_at,
    }


def instance_events(instance: Instance, *, limit: int) -> list[ConnectionEvent]:
    return list(instance.connection_events.order_by("-created_at", "-id")[:limit])


def instance_status(instance: Instance, *, now=None) -> dict:
    """The runbook's per-instance `ssh-status` document."""
    now = now or timezone.now()
    status = ConnectionStatus.objects.filter(instance=instance).first() or ConnectionStatus(
        instance=instance
    )
    uptime = 0.0
    if status.state == ConnectionState.CONNECTED and status.connected_at:
        uptime = max(0.0, (now - status.connected_at).total_seconds())
    return {
        "instance_id": instance.pk,
        "instance_name": instance.name,
        "state": status.state,
        "healthy": status.is_healthy,
        "connected_at": status.connected_at,
        "last_health_check": status.last_health_check_at,
        "successful_checks": status.successful_check_count,
        "failed_checks": status.failed_check_count,
        "uptime": format_duration(uptime),
        "uptime_seconds": int(uptime),
        "last_error": status.last_error,
        "tunnels": [tunnel_view(tunnel) for tunnel in instance.tunnels.all()],
        "recent_events": [
            event_view(event) for event in instance_events(instance, limit=RECENT_EVENT_COUNT)
        ],
    }


def fleet_status(instances) -> dict:
    """The global dashboard: every visible instance's status plus counts by state."""
    now = timezone.now()
    entries = [instance_status(instance, now=now) for instance in instances]
    by_state = {state: 0 for state in ConnectionState.values}
    for entry in entries:
        by_state[entry["state"]] += 1
    return {
        "total": len(entries),
        "healthy": sum(1 for entry in entries if entry["healthy"]),
        "by_state": by_state,
        "instances": entries,
    }


def fleet_metrics(instances) -> dict:
    """Aggregated counters over the given instances, computed in the database."""
    statuses = ConnectionStatus.objects.filter(instance__in=instances).aggregate(
        healthy=Count("pk", filter=Q(is_healthy=True)),
        successful_checks=Sum("successful_check_count"),
        failed_checks=Sum("failed_check_count"),
        **{state: Count("pk", filter=Q(state=state)) for state in ConnectionState.values},
    )
    tunnels = Tunnel.objects.filter(instance__in=instances).aggregate(
        total=Count("pk"),
        active=Count("pk", filter=Q(status=TunnelStatus.ACTIVE)),
        unhealthy=Count("pk", filter=Q(status=TunnelStatus.UNHEALTHY)),
        bytes_transferred=Sum("bytes_transferred"),
    )
    events = ConnectionEvent.objects.filter(instance__in=instances).aggregate(
        reconnects=Count("pk", filter=Q(event_type=ConnectionEventType.RECONNECTING)),
        rate_limit_blocks=Count("pk", filter=Q(event_type=ConnectionEventType.RATE_LIMITED)),
        ip_restrictions=Count("pk", filter=Q(event_type=ConnectionEventType.IP_RESTRICTED)),
        fingerprint_mismatches=Count(
            "pk", filter=Q(event_type=ConnectionEventType.FINGERPRINT_MISMATCH)
        ),
    )
    total = instances.count()
    by_state = {state: statuses[state] for state in ConnectionState.values}
    # Instances without a published status count as disconnected.
    by_state[ConnectionState.DISCONNECTED] += total - sum(by_state.values())
    return {
        "total_instances": total,
        "connections_by_state": by_state,
        "healthy_connections": statuses["healthy"],
        "unhealthy_connections": total - statuses["healthy"],
        "successful_checks": statuses["successful_checks"] or 0,
        "failed_checks": statuses["failed_checks"] or 0,
        **events,
        "tunnels": {
            "total": tunnels["total"],
            "active": tunnels["active"],
            "unhealthy": tunnels["unhealthy"],
            "bytes_transferred": tunnels["bytes_transferred"] or 0,
        },
        "generated_at": timezone.now(),
    }


def instance_fingerprint(instance: Instance) -> dict:
    """The instance key's public half and age, and the pinned host key."""
    if not instance.ssh_public_key:
        raise NoSSHKey()
    pin = getattr(instance, "host_key_pin", None)
    created_at = instance.ssh_key_created_at
    age_days = (timezone.now() - created_at).days if created_at else 0
    return {
        "instance_id": instance.pk,
        "instance_name": instance.name,
        "fingerprint": instance.ssh_key_fingerprint,
        "public_key": instance.ssh_public_key,
        "key_type": instance.ssh_public_key.split()[0],
        "created_at": created_at,
        "age_days": age_days,
        "rotation_policy_days": instance.effective_rotation_policy_days,
        "host_key_fingerprint": pin.fingerprint if pin else None,
        "host_key_pinned_at": pin.pinned_at if pin else None,
        "authorized_keys_path": instance.authorized_keys_path,
        "last_rotation": _last_rotation(instance),
    }


def _last_rotation(instance: Instance) -> dict | None:
    """The latest rotation's outcome; an unfinished one means both keys may be on the agent."""
    record = instance.key_rotations.order_by("-started_at", "-id").first()
    if record is None:
        return None
    return {
        "status": record.status,
        "step": record.step,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "error": record.error,
    }
