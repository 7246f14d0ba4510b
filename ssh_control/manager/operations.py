"""What the API asks of an instance's owner: the runbook's connection test and reconnect.

Both run inside the owning SSH worker (through `ssh_control.tasks`) and return JSON.
"""

import logging
import time

from django.conf import settings

from ssh_control import keys
from ssh_control.choices import ConnectionState
from ssh_control.exceptions import (
    ClaworcError,
    ConnectionBlocked,
    ConnectionLimitReached,
    RateLimited,
    SSHConnectionError,
)
from ssh_control.manager.core import current_manager
from ssh_control.manager.gate import PING_COMMAND, endpoints_resolve, gate_open, source_ip_filter
from ssh_control.models import Instance

logger = logging.getLogger(__name__)

# Refusals that answer the whole request with their own status instead of a failed step.
REQUEST_ERRORS = (RateLimited, ConnectionBlocked, ConnectionLimitReached)


def connection_test(instance_id: int) -> dict:
    """Endpoint resolution, key fingerprint, IP restriction, then a real connection."""
    manager = current_manager()
    manager.managed(instance_id)
    instance = Instance.objects.get(pk=instance_id)
    started = time.monotonic()
    steps, context = [], {}

    for name, check in (
        ("endpoint_resolution", _check_endpoint),
        ("key_fingerprint", _check_key),
        ("ip_restriction", _check_source_ip),
        ("ssh_connection", lambda inst, ctx: _check_connection(inst, ctx, manager)),
    ):
        if steps and not steps[-1]["success"]:
            steps.append({"name": name, "success": False, "skipped": True, "duration_ms": 0})
            continue
        steps.append(_run_step(name, check, instance, context))

    success = all(step["success"] for step in steps)
    failed = next((step for step in steps if not step["success"]), None)
    return {
        "success": success,
        "instance_id": instance.pk,
        "instance_name": instance.name,
        "message": "SSH connection test passed" if success else failed["error"],
        "latency_ms": round((time.monotonic() - started) * 1000, 2),
        "steps": steps,
    }


def _run_step(name: str, check, instance: Instance, context: dict) -> dict:
    started = time.monotonic()
    try:
        detail = check(instance, context)
        outcome = {"success": True, "detail": detail}
    except REQUEST_ERRORS:
        raise
    except ClaworcError as exc:
        outcome = {"success": False, "error": exc.message}
    duration = round((time.monotonic() - started) * 1000, 2)
    return {"name": name, **outcome, "duration_ms": duration}


def _check_endpoint(instance: Instance, context: dict) -> str:
    endpoints = context["endpoints"] = endpoints_resolve(instance)
    addresses = ", ".join(endpoint.sockaddr[0] for endpoint in endpoints)
    return f"{instance.ssh_host}:{instance.ssh_port} resolves to {addresses}"


def _check_key(instance: Instance, context: dict) -> str:
    # The file the database names, which mid-rotation may still be the pending one.
    private_key = keys.load_private_key(instance.name, fingerprint=instance.ssh_key_fingerprint)
    fingerprint = keys.private_key_fingerprint(private_key)
    if fingerprint != instance.ssh_key_fingerprint:
        raise SSHConnectionError(
            f"instance key file does not match the database: expected "
            f"{instance.ssh_key_fingerprint}, got {fingerprint}"
        )
    return f"key file matches {fingerprint}"


def _check_source_ip(instance: Instance, context: dict) -> str:
    allowed = source_ip_filter(instance, context["endpoints"])
    return f"source IP {', '.join(dict.fromkeys(e.source_ip for e in allowed))} allowed"


def _check_connection(instance: Instance, context: dict, manager) -> str:
    connection = gate_open(instance, slots=manager.slots, holds_lease=manager.holds_lease)
    try:
        result = connection.run(
            PING_COMMAND, timeout=settings.CLAWORC_SSH_HEALTH_CHECK_TIMEOUT_SECONDS
        )
        return (
            f"authenticated as {instance.ssh_user}, host key {connection.host_key.fingerprint}, "
            f"'{PING_COMMAND}' answered in {result.duration_ms:.1f} ms"
        )
    finally:
        connection.close()
        manager.slots.release()


def connection_reconnect(instance_id: int, *, actor: str | None = None) -> dict:
    managed = current_manager().managed(instance_id)
    started = time.monotonic()
    managed.reconnect_now(actor=actor)
    return {
        "success": True,
        "instance_id": instance_id,
        "state": ConnectionState.CONNECTED,
        "message": "SSH connection re-established",
        "latency_ms": round((time.monotonic() - started) * 1000, 2),
    }
