"""The audit log in the admin, read-only with CSV export, and the audited admin login."""

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from audit.choices import AuditEventType
from audit.export import audit_csv_lines
from audit.models import AuditEntry
from audit.services import audit_record
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


class AuditedAdminAuthenticationForm(AdminAuthenticationForm):
    """The admin's login form; each attempt is audited as the API's login is.

    Installed as the admin site's `login_form` in `claworc.urls`. The form is checked
    only when both fields are filled in, so an empty submission is not an attempt.
    """

    def clean(self):
        try:
            cleaned_data = super().clean()
        except ValidationError:
            audit_record(
                AuditEventType.LOGIN_FAILED,
                actor=self.cleaned_data.get("username", ""),
                details="admin login refused",
            )
            raise
        if self.user_cache is not None:
            audit_record(
                AuditEventType.LOGIN, actor=self.user_cache, details="logged in through the admin"
            )
        return cleaned_data
