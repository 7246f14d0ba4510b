"""Stable choice values of the SSH layer; the API and the database store these strings."""

from django.db import models


class GrantLevel(models.TextChoices):
    VIEW = "view", "View"
    OPERATE = "operate", "Operate"


class ConnectionState(models.TextChoices):
    DISCONNECTED = "disconnected", "Disconnected"
    CONNECTING = "connecting", "Connecting"
    CONNECTED = "connected", "Connected"
    RECONNECTING = "reconnecting", "Reconnecting"
    FAILED = "failed", "Failed"


class ConnectionEventType(models.TextChoices):
    CONNECTING = "connecting", "Connecting"
    CONNECTED = "connected", "Connected"
    DISCONNECTED = "disconnected", "Disconnected"
    HEALTH_CHECK_FAILED = "health_check_failed", "Health check failed"
    KEEPALIVE_FAILED = "keepalive_failed", "Keepalive failed"
    RECONNECTING = "reconnecting", "Reconnecting"
    RECONNECT_FAILED = "reconnect_failed", "Reconnect attempt failed"
    FAILED = "failed", "Failed"
    RATE_LIMITED = "rate_limited", "Rate limited"
    IP_RESTRICTED = "ip_restricted", "IP restricted"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch", "Fingerprint mismatch"
    OWNER_CHANGED = "owner_changed", "Owner changed"


class TunnelService(models.TextChoices):
    VNC = "vnc", "VNC"
    GATEWAY = "gateway", "Gateway"
    CUSTOM = "custom", "Custom"


class TunnelStatus(models.TextChoices):
    """The runbook's two values; a tunnel not (yet) serving is `unhealthy`."""

    ACTIVE = "active", "Active"
    UNHEALTHY = "unhealthy", "Unhealthy"


class HostKeyPinSource(models.TextChoices):
    FIRST_CONTACT = "first_contact", "First contact"
    ADMIN = "admin", "Set by an admin"
