"""The append-only SSH audit log."""

import uuid

from django.db import models

from audit.choices import AuditEventType


class AuditEntry(models.Model):
    """One audited action. Names are copied in so the row outlives its instance and user."""

    entry_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # DO_NOTHING: deleting an instance must not rewrite its entries; the id stays behind.
    instance = models.ForeignKey(
        "ssh_control.Instance",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="audit_entries",
        db_constraint=False,
    )
    instance_name = models.CharField(max_length=63, blank=True, default="", db_index=True)
    event_type = models.CharField(max_length=32, choices=AuditEventType.choices, db_index=True)
    username = models.CharField(max_length=150, blank=True, default="", db_index=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    details = models.TextField(blank=True, default="")
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    request_id = models.UUIDField(null=True, blank=True, db_index=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=("-created_at", "-id"), name="audit_newest_first")]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.event_type} {self.instance_name}"
