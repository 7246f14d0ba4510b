"""Query filters of `GET /api/v1/ssh-audit-logs`."""

import re

import django_filters
from django import forms
from django.http import QueryDict

from audit.choices import AuditEventType
from audit.models import AuditEntry

_SPACE_OFFSET = re.compile(r"(\d) (\d{2}(?::?\d{2})?)$")


class IntegerFilter(django_filters.NumberFilter):
    """Whole numbers only: `1.5` is a 400, not a silent match on 1."""

    field_class = forms.IntegerField


class AuditEntryFilterForm(forms.Form):
    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("since", "must not be after until")
        return cleaned


class AuditEntryFilterSet(django_filters.FilterSet):
    instance_id = IntegerFilter(field_name="instance_id", min_value=1)
    instance_name = django_filters.CharFilter()
    event_type = django_filters.MultipleChoiceFilter(choices=AuditEventType.choices)
    username = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = AuditEntry
        fields = ("instance_id", "instance_name", "event_type", "username", "since", "until")
        form = AuditEntryFilterForm

    def __init__(self, data=None, *args, **kwargs):
        super().__init__(_normalised(data), *args, **kwargs)


def _normalised(data):
    """`event_type` repeated or comma-separated; `+` of a UTC offset that arrived as a space.

    An unencoded `+00:00` in a query string decodes to ` 00:00`; it is read back as `+`.
    """
    if data is None:
        return None
    if isinstance(data, QueryDict):
        data = data.copy()
    else:
        plain, data = data, QueryDict(mutable=True)
        for key, value in plain.items():
            data.setlist(key, value if isinstance(value, list) else [value])
    if "event_type" in data:
        values = [part.strip() for raw in data.getlist("event_type") for part in raw.split(",")]
        data.setlist("event_type", [value for value in values if value])
    for name in ("since", "until"):
        value = data.get(name)
        if value:
            data[name] = _SPACE_OFFSET.sub(r"\1+\2", value.strip())
    return data
