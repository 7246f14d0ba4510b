"""Audit event types: the runbook's ten, plus the control plane's own security changes."""

from django.db import models


class AuditEventType(models.TextChoices):
    CONNECTION_ESTABLISHED = "connection_established", "Connection established"
    CONNECTION_TERMINATED = "connection_terminated", "Connection terminated"
    CONNECTION_FAILED = "connection_failed", "Connection failed"
    COMMAND_EXECUTION = "command_execution", "Command execution"
    FILE_OPERATION = "file_operation", "File operation"
    TERMINAL_SESSION_START = "terminal_session_start", "Terminal session start"
    TERMINAL_SESSION_END = "terminal_session_end", "Terminal session end"
    KEY_ROTATION = "key_rotation", "Key rotation"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch", "Fingerprint mismatch"
    IP_RESTRICTED = "ip_restricted", "IP restricted"
    # Changes an admin makes to the control plane itself.
    LOGIN = "login", "Login"
    LOGIN_FAILED = "login_failed", "Login failed"
    INSTANCE_CREATED = "instance_created", "Instance created"
    INSTANCE_UPDATED = "instance_updated", "Instance updated"
    INSTANCE_DELETED = "instance_deleted", "Instance deleted"
    ALLOWED_IPS_CHANGED = "allowed_ips_changed", "Allowed IPs changed"
    HOST_KEY_ACCEPTED = "host_key_accepted", "Host key accepted"
    TUNNEL_CREATED = "tunnel_created", "Tunnel created"
    TUNNEL_DELETED = "tunnel_deleted", "Tunnel deleted"
    AUDIT_PURGED = "audit_purged", "Audit log purged"
