"""The admin-only audit log API: query with filters, and the manual retention purge."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.api.serializers import AuditEntrySerializer, AuditPurgeSerializer
from audit.filtersets import AuditEntryFilterSet
from audit.models import AuditEntry
from audit.services import audit_purge
from claworc.pagination import parse_bounded_int


class AuditEntryListView(generics.ListAPIView):
    """Audit entries, newest first, filtered and paginated (`limit`, `offset`)."""

    permission_classes = (IsAdminUser,)
    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilterSet
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
        deleted = audit_purge(days=days)
        return Response({"deleted": deleted, "retention_days": days})
