from django.contrib import admin

from audit.models import AuditEntry
from claworc.admin_mixins import ReadOnlyAdminMixin


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "created_at",
        "event_type",
        "instance_name",
        "username",
        "source_ip",
        "details",
        "duration_ms",
    )
    list_filter = ("event_type", "created_at")
    search_fields = ("instance_name", "username", "source_ip", "details")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
