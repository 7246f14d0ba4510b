"""The admin-only audit log API: query with filters, and the manual retention purge."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.api.pagination import SNAPSHOT_PARAM, AuditEntryPagination
from audit.api.serializers import AuditEntrySerializer, AuditPurgeSerializer
from audit.filtersets import AuditEntryFilterSet
from audit.models import AuditEntry
from audit.services import audit_purge
from claworc.pagination import parse_bounded_int


@extend_schema_view(
    get=extend_schema(
        parameters=[
            OpenApiParameter(
                SNAPSHOT_PARAM,
                OpenApiTypes.INT,
                description="Newest entry id to include; the `next` link carries it.",
            )
        ]
    )
)
class AuditEntryListView(generics.ListAPIView):
    """Audit entries, newest first, filtered and paginated (`limit`, `offset`)."""

    permission_classes = (IsAdminUser,)
    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilterSet
    pagination_class = AuditEntryPagination
    # The id breaks ties between entries of the same microsecond, so pages are stable.
    queryset = AuditEntry.objects.order_by("-created_at", "-id")


class AuditPurgeView(APIView):
    """Delete entries older than `days` (default: the retention setting)."""

    permission_classes = (IsAdminUser,)

    @extend_schema(
        request=None,
        responses=AuditPurgeSerializer,
        parameters=[OpenApiParameter("days", OpenApiTypes.INT, required=False)],
    )
    def post(self, request):
        days = parse_bounded_int(
            request.query_params,
            "days",
            default=settings.CLAWORC_AUDIT_RETENTION_DAYS,
            minimum=1,
            maximum=100_000,
        )
        deleted = audit_purge(days=days, actor=request.user)
        return Response({"deleted": deleted, "retention_days": days})
