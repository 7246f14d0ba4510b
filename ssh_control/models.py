"""Instances, who may use them, and the state their SSH worker publishes about them."""

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from ssh_control.choices import (
    ConnectionEventType,
    ConnectionState,
    GrantLevel,
    HostKeyPinSource,
    TunnelService,
    TunnelStatus,
)
from ssh_control.rotation.choices import RotationStatus, RotationStep
from ssh_control.validators import validate_ssh_host

# Names become key file names (`<name>.key`), so only a safe subset is allowed.
INSTANCE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
PORT_VALIDATORS = [MinValueValidator(1), MaxValueValidator(65535)]


class Instance(models.Model):
    """One agent machine or container that the control plane reaches over SSH."""

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[
            RegexValidator(
                INSTANCE_NAME_PATTERN,
                "Use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit.",
            )
        ],
    )
    ssh_host = models.CharField(max_length=253, validators=[validate_ssh_host])
    ssh_port = models.PositiveIntegerField(default=22, validators=PORT_VALIDATORS)
    ssh_user = models.CharField(max_length=32, default="root")
    vnc_port = models.PositiveIntegerField(default=3000, validators=PORT_VALIDATORS)
    gateway_port = models.PositiveIntegerField(default=8080, validators=PORT_VALIDATORS)
    allowed_source_ips = models.TextField(
        blank=True,
        default="",
        help_text="Comma-separated IPs and CIDRs the control plane may connect from; "
        "empty allows any.",
    )
    key_rotation_policy_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Days between automatic key rotations; 0 turns rotation off; empty uses "
        "CLAWORC_KEY_ROTATION_POLICY_DAYS.",
    )
    ssh_public_key = models.TextField(blank=True, default="")
    ssh_key_fingerprint = models.CharField(max_length=100, blank=True, default="")
    ssh_key_created_at = models.DateTimeField(null=True, blank=True)
    authorized_keys_path = models.CharField(
        max_length=1024,
        default="~/.ssh/authorized_keys",
        help_text="The agent's file of authorized keys for the SSH user (its AuthorizedKeysFile); "
        "key installation and rotation edit it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self):
        return self.name

    @property
    def effective_rotation_policy_days(self) -> int:
        if self.key_rotation_policy_days is None:
            return settings.CLAWORC_KEY_ROTATION_POLICY_DAYS
        return self.key_rotation_policy_days


class InstanceGrant(models.Model):
    """A non-admin user's access to one instance, at the `view` or `operate` level."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="instance_grants"
    )
    level = models.CharField(max_length=16, choices=GrantLevel.choices, default=GrantLevel.VIEW)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("instance", "user"), name="unique_grant_per_user")
        ]

    def __str__(self):
        return f"{self.user} {self.level} {self.instance}"


class HostKeyPin(models.Model):
    """The agent's SSH host key the control plane trusts; a different key is refused."""

    instance = models.OneToOneField(Instance, on_delete=models.CASCADE, related_name="host_key_pin")
    key_type = models.CharField(max_length=64)
    public_key = models.TextField(help_text="Base64 of the host key blob, as in known_hosts.")
    fingerprint = models.CharField(max_length=100)
    source = models.CharField(max_length=16, choices=HostKeyPinSource.choices)
    pinned_by = models.CharField(max_length=150, blank=True, default="")
    pinned_at = models.DateTimeField(auto_now=True)
    # The last different key an agent presented, refused until an admin accepts it.
    offered_key_type = models.CharField(max_length=64, blank=True, default="")
    offered_public_key = models.TextField(blank=True, default="")
    offered_fingerprint = models.CharField(max_length=100, blank=True, default="")
    offered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.instance} {self.fingerprint}"


class ConnectionStatus(models.Model):
    """The connection state an instance's SSH worker last published."""

    instance = models.OneToOneField(Instance, on_delete=models.CASCADE, related_name="connection")
    state = models.CharField(
        max_length=16, choices=ConnectionState.choices, default=ConnectionState.DISCONNECTED
    )
    is_healthy = models.BooleanField(default=False)
    connected_at = models.DateTimeField(null=True, blank=True)
    last_health_check_at = models.DateTimeField(null=True, blank=True)
    successful_check_count = models.PositiveBigIntegerField(default=0)
    failed_check_count = models.PositiveBigIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    owner_node = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "connection statuses"

    def __str__(self):
        return f"{self.instance} {self.state}"


class ConnectionEvent(models.Model):
    """One transition or notable moment in an instance's connection life cycle."""

    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="connection_events"
    )
    event_type = models.CharField(max_length=32, choices=ConnectionEventType.choices)
    from_state = models.CharField(max_length=16, choices=ConnectionState.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=ConnectionState.choices, blank=True)
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("instance", "-created_at"), name="event_instance_time")]

    def __str__(self):
        return f"{self.instance} {self.event_type}"


class Tunnel(models.Model):
    """A forwarded agent service: a local listener carried over the instance's connection."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="tunnels")
    service = models.CharField(max_length=16, choices=TunnelService.choices)
    name = models.CharField(max_length=63, blank=True, default="")
    remote_port = models.PositiveIntegerField(validators=PORT_VALIDATORS)
    bind_host = models.CharField(max_length=64, blank=True, default="")
    local_port = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=TunnelStatus.choices, default=TunnelStatus.UNHEALTHY
    )
    started_at = models.DateTimeField(null=True, blank=True)
    last_check_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    bytes_transferred = models.PositiveBigIntegerField(default=0)
    # Connections refused over a connection cap, and why the latest one was refused.
    refused_count = models.PositiveBigIntegerField(default=0)
    last_refusal = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("instance", "service", "name")
        constraints = [
            models.UniqueConstraint(
                fields=("instance", "service", "name"), name="unique_tunnel_per_service"
            )
        ]

    def __str__(self):
        label = self.name or self.service
        return f"{self.instance} {label} -> {self.remote_port}"


class InstanceLease(models.Model):
    """Which SSH worker node owns an instance's connection, until `expires_at`."""

    instance = models.OneToOneField(Instance, on_delete=models.CASCADE, related_name="lease")
    node = models.CharField(max_length=200)
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return f"{self.instance} owned by {self.node}"


class KeyRotation(models.Model):
    """One rotation of an instance's key: the step about to be taken, written before it.

    Only public halves are stored; the private keys live in the key directory.
    """

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="key_rotations")
    status = models.CharField(
        max_length=16, choices=RotationStatus.choices, default=RotationStatus.IN_PROGRESS
    )
    step = models.CharField(
        max_length=32, choices=RotationStep.choices, default=RotationStep.GENERATE_KEY
    )
    actor = models.CharField(max_length=150, blank=True, default="")
    # The worker process running the steps; a new owner takes over by replacing it.
    runner = models.CharField(max_length=250, blank=True, default="")
    old_public_key = models.TextField(blank=True, default="")
    old_fingerprint = models.CharField(max_length=100, blank=True, default="")
    new_public_key = models.TextField(blank=True, default="")
    new_fingerprint = models.CharField(max_length=100, blank=True, default="")
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-started_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=("instance",),
                condition=models.Q(status="in_progress"),
                name="one_rotation_in_progress_per_instance",
            )
        ]

    def __str__(self):
        return f"{self.instance} {self.status} at {self.step}"
