from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from audit.export import audit_csv_lines
from audit.models import AuditEntry
from claworc.admin_mixins import ReadOnlyAdminMixin

EXPORT_CHUNK_ROWS = 2000


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
    actions = ("export_selected_csv",)

    def get_urls(self):
        export = path(
            "export-csv/",
            self.admin_site.admin_view(self.export_csv_view),
            name="audit_auditentry_export_csv",
        )
        return [export, *super().get_urls()]

    def export_csv_view(self, request):
        """The changelist as filtered and searched on screen, every page, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        return _csv_response(changelist.get_queryset(request))

    @admin.action(description="Export selected audit entries as CSV", permissions=["view"])
    def export_selected_csv(self, request, queryset):
        return _csv_response(queryset.order_by("-created_at", "-id"))


def _csv_response(queryset) -> StreamingHttpResponse:
    lines = audit_csv_lines(queryset.iterator(chunk_size=EXPORT_CHUNK_ROWS))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="ssh-audit-{stamp}.csv"'
    return response
