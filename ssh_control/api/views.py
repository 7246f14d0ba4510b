"""The instance API: CRUD plus the runbook's per-instance SSH routes, and the fleet views.

Views only validate input and call one service, selector or dispatch; access is decided
by `ssh_control.access`.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from claworc.pagination import parse_bounded_int
from ssh_control import dispatch, selectors, services
from ssh_control.access import ADMIN, HasInstanceLevel, visible_instances
from ssh_control.api import serializers
from ssh_control.choices import GrantLevel
from ssh_control.exceptions import ClaworcError
from ssh_control.rotation import services as rotation_services
from ssh_control.tunnels import services as tunnel_services

EVENT_LIMIT_DEFAULT = 50
EVENT_LIMIT_MAX = 1000


class InstanceViewSet(viewsets.ModelViewSet):
    """Instances the caller may see; creating, changing and deleting them is for admins."""

    serializer_class = serializers.InstanceSerializer
    permission_classes = (HasInstanceLevel,)
    filterset_fields = ("name", "ssh_host")
    lookup_value_regex = r"[0-9]+"
    http_method_names = ("get", "post", "put", "patch", "delete", "head", "options")
    required_levels = {
        "list": GrantLevel.VIEW,
        "retrieve": GrantLevel.VIEW,
        "create": ADMIN,
        "update": ADMIN,
        "partial_update": ADMIN,
        "destroy": ADMIN,
        "ssh_status": GrantLevel.VIEW,
        "ssh_events": GrantLevel.VIEW,
        "ssh_fingerprint": GrantLevel.VIEW,
        "tunnels": GrantLevel.VIEW,
        "ssh_test": GrantLevel.OPERATE,
        "ssh_reconnect": GrantLevel.OPERATE,
        "rotate_ssh_key": ADMIN,
        "install_ssh_key": ADMIN,
        "ssh_allowed_ips": ADMIN,
        "create_tunnel": ADMIN,
        "delete_tunnel": ADMIN,
        "ssh_host_key_accept": ADMIN,
        "metadata": GrantLevel.VIEW,
    }

    def get_queryset(self):
        queryset = visible_instances(self.request.user).select_related("connection")
        return queryset.prefetch_related("grants").order_by("name")

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = services.instance_create(
            data.pop("name"), actor=self.request.user, **data
        )

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        data.pop("name", None)
        serializer.instance = services.instance_update(
            serializer.instance, actor=self.request.user, **data
        )

    def perform_destroy(self, instance):
        services.instance_delete(instance, actor=self.request.user)

    @extend_schema(responses=serializers.InstanceStatusSerializer)
    @action(detail=True, methods=["get"], url_path="ssh-status")
    def ssh_status(self, request, pk=None):
        return Response(selectors.instance_status(self.get_object()))

    @extend_schema(
        responses=serializers.ConnectionEventSerializer(many=True),
        parameters=[OpenApiParameter("limit", OpenApiTypes.INT, required=False)],
    )
    @action(detail=True, methods=["get"], url_path="ssh-events")
    def ssh_events(self, request, pk=None):
        limit = parse_bounded_int(
            request.query_params,
            "limit",
            default=EVENT_LIMIT_DEFAULT,
            minimum=1,
            maximum=EVENT_LIMIT_MAX,
        )
        events = selectors.instance_events(self.get_object(), limit=limit)
        return Response([selectors.event_view(event) for event in events])

    @extend_schema(responses=serializers.FingerprintSerializer)
    @action(detail=True, methods=["get"], url_path="ssh-fingerprint")
    def ssh_fingerprint(self, request, pk=None):
        return Response(selectors.instance_fingerprint(self.get_object()))

    @extend_schema(responses=serializers.TunnelSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="tunnels")
    def tunnels(self, request, pk=None):
        tunnels = self.get_object().tunnels.all()
        return Response([selectors.tunnel_view(tunnel) for tunnel in tunnels])

    @extend_schema(
        request=serializers.CustomTunnelSerializer, responses={201: serializers.TunnelSerializer}
    )
    @tunnels.mapping.post
    def create_tunnel(self, request, pk=None):
        body = serializers.CustomTunnelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tunnel = tunnel_services.tunnel_create_custom(
            self.get_object(),
            name=body.validated_data["name"],
            remote_port=body.validated_data["remote_port"],
            actor=request.user,
        )
        return Response(selectors.tunnel_view(tunnel), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"tunnels/(?P<tunnel_id>[0-9]{1,18})")
    def delete_tunnel(self, request, pk=None, tunnel_id=None):
        tunnel_services.tunnel_delete(self.get_object(), int(tunnel_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"], url_path="ssh-test")
    def ssh_test(self, request, pk=None):
        return Response(dispatch.run_on_owner(self.get_object(), dispatch.TEST_CONNECTION))

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"], url_path="ssh-reconnect")
    def ssh_reconnect(self, request, pk=None):
        return Response(
            dispatch.run_on_owner(
                self.get_object(), dispatch.RECONNECT, actor=request.user.get_username()
            )
        )

    @extend_schema(request=serializers.HostKeyAcceptSerializer, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"], url_path="ssh-host-key/accept")
    def ssh_host_key_accept(self, request, pk=None):
        """Trust the key the agent presented; then ask the owner to reconnect with it."""
        instance = self.get_object()
        body = serializers.HostKeyAcceptSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fingerprint = body.validated_data["fingerprint"]
        pin = services.host_key_accept(instance, fingerprint=fingerprint, actor=request.user)
        try:
            reconnect = dispatch.run_on_owner(
                instance, dispatch.RECONNECT, actor=request.user.get_username()
            )
        except ClaworcError as exc:
            reconnect = {"success": False, "error": exc.message, "code": exc.code}
        return Response({"accepted": True, "fingerprint": pin.fingerprint, "reconnect": reconnect})

    @extend_schema(request=None, responses=serializers.RotationResultSerializer)
    @action(detail=True, methods=["post"], url_path="rotate-ssh-key")
    def rotate_ssh_key(self, request, pk=None):
        instance = self.get_object()
        result = dispatch.run_on_owner(
            instance,
            dispatch.ROTATE_KEY,
            timeout=dispatch.ROTATE_KEY_TIMEOUT_SECONDS,
            actor=request.user.get_username(),
        )
        return Response(result)

    @extend_schema(
        request=serializers.KeyInstallSerializer, responses=serializers.KeyInstallResultSerializer
    )
    @action(detail=True, methods=["post"], url_path="install-ssh-key")
    def install_ssh_key(self, request, pk=None):
        instance = self.get_object()
        body = serializers.KeyInstallSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = rotation_services.key_install(
            instance, password=body.validated_data["password"], actor=request.user
        )
        return Response(result)

    @extend_schema(methods=["get"], request=None, responses=serializers.AllowedIPsSerializer)
    @extend_schema(
        methods=["put"],
        request=serializers.AllowedIPsSerializer,
        responses=serializers.AllowedIPsSerializer,
    )
    @action(detail=True, methods=["get", "put"], url_path="ssh-allowed-ips")
    def ssh_allowed_ips(self, request, pk=None):
        instance = self.get_object()
        if request.method == "PUT":
            body = serializers.AllowedIPsSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            services.instance_set_allowed_ips(
                instance, allowed_ips=body.validated_data["allowed_ips"], actor=request.user
            )
        return Response({"allowed_ips": instance.allowed_source_ips}, status=status.HTTP_200_OK)


class FleetStatusView(APIView):
    """Every visible instance's connection status, with counts by state."""

    @extend_schema(responses=serializers.FleetStatusSerializer)
    def get(self, request):
        instances = visible_instances(request.user).order_by("name")
        return Response(selectors.fleet_status(instances))


class FleetMetricsView(APIView):
    """Counters aggregated over the instances the caller may see."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        return Response(selectors.fleet_metrics(visible_instances(request.user)))
