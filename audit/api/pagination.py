"""Limit/offset pages of the audit log that stay put while new entries arrive."""

from django.db.models import Max
from rest_framework.utils.urls import replace_query_param

from audit.models import AuditEntry
from claworc.pagination import LimitOffsetPagination, parse_bounded_int

SNAPSHOT_PARAM = "max_id"


class AuditEntryPagination(LimitOffsetPagination):
    """Newest-first pages over a snapshot: entries with an id up to `max_id`.

    New entries land at the head of a newest-first list, so plain offsets would show an
    entry twice across pages. The first page pins the newest id and its `next` and
    `previous` links carry it (`max_id`), so walking the links gives every entry that
    existed at the first page exactly once. Ids become visible in order (see
    `audit.writer.INSERT_LOCK_KEY`), so a snapshot never gains an entry later.
    """

    def paginate_queryset(self, queryset, request, view=None):
        self.max_id = parse_bounded_int(
            request.query_params, SNAPSHOT_PARAM, default=0, minimum=1, maximum=2**63 - 1
        ) or (AuditEntry.objects.aggregate(newest=Max("id"))["newest"] or 0)
        return super().paginate_queryset(queryset.filter(id__lte=self.max_id), request, view)

    def get_paginated_response(self, data):
        response = super().get_paginated_response(data)
        response.data[SNAPSHOT_PARAM] = self.max_id
        return response

    def get_paginated_response_schema(self, schema):
        response_schema = super().get_paginated_response_schema(schema)
        response_schema["properties"][SNAPSHOT_PARAM] = {"type": "integer", "example": 1523}
        return response_schema

    def get_next_link(self):
        return _pinned(super().get_next_link(), self.max_id)

    def get_previous_link(self):
        return _pinned(super().get_previous_link(), self.max_id)


def _pinned(url: str | None, max_id: int) -> str | None:
    return replace_query_param(url, SNAPSHOT_PARAM, max_id) if url else None
