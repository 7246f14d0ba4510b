"""Query filters of `GET /api/v1/ssh-audit-logs`."""

import django_filters
from rest_framework.exceptions import ValidationError

from audit.choices import AuditEventType
from audit.models import AuditEntry


class AuditEntryFilterSet(django_filters.FilterSet):
    instance_id = django_filters.NumberFilter(field_name="instance_id", min_value=1)
    instance_name = django_filters.CharFilter()
    event_type = django_filters.MultipleChoiceFilter(choices=AuditEventType.choices)
    username = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = AuditEntry
        fields = ("instance_id", "instance_name", "event_type", "username", "since", "until")

    def filter_queryset(self, queryset):
        since = self.form.cleaned_data.get("since")
        until = self.form.cleaned_data.get("until")
        if since and until and since > until:
            raise ValidationError({"since": "must not be after until"})
        return super().filter_queryset(queryset)
