"""Remote operations on one instance: commands and files, for `operate` users and admins.

Views validate input and call one service in `ssh_control.remote.services`; the access
rules are `HasInstanceLevel`'s (404 for no grant, 403 below `operate`).
"""

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from ssh_control.access import HasInstanceLevel, visible_instances
from ssh_control.choices import GrantLevel
from ssh_control.remote import services

PATH_PARAMETER = OpenApiParameter("path", OpenApiTypes.STR, required=True)


class ExecSerializer(serializers.Serializer):
    command = serializers.CharField(max_length=65536, trim_whitespace=False)
    timeout = serializers.FloatField(required=False, min_value=0.1)

    def validate_timeout(self, value):
        limit = settings.CLAWORC_EXEC_MAX_TIMEOUT_SECONDS
        if value > limit:
            raise ValidationError(f"must be at most {limit:g} seconds")
        return value


class ExecResultSerializer(serializers.Serializer):
    exit_code = serializers.IntegerField(allow_null=True)
    stdout = serializers.CharField()
    stderr = serializers.CharField()
    duration_ms = serializers.FloatField()
    truncated = serializers.BooleanField()
    timed_out = serializers.BooleanField()


class PathSerializer(serializers.Serializer):
    path = serializers.CharField(max_length=4096, trim_whitespace=False)


class RenameSerializer(serializers.Serializer):
    """`{"from", "to"}`: declared in `get_fields` because both are Python keywords."""

    def get_fields(self):
        return {
            "from": serializers.CharField(max_length=4096, trim_whitespace=False),
            "to": serializers.CharField(max_length=4096, trim_whitespace=False),
        }


class InstanceRemoteViewSet(viewsets.GenericViewSet):
    """Commands and files on an instance, over its held SSH connection."""

    permission_classes = (HasInstanceLevel,)
    lookup_value_regex = r"[0-9]+"
    required_levels = {
        "exec": GrantLevel.OPERATE,
        "files": GrantLevel.OPERATE,
        "content": GrantLevel.OPERATE,
        "mkdir": GrantLevel.OPERATE,
        "rename": GrantLevel.OPERATE,
    }

    def get_queryset(self):
        return visible_instances(self.request.user)

    def _path(self, request) -> str:
        body = PathSerializer(data=request.query_params)
        body.is_valid(raise_exception=True)
        return body.validated_data["path"]

    @extend_schema(request=ExecSerializer, responses=ExecResultSerializer)
    def exec(self, request, pk=None):
        instance = self.get_object()
        body = ExecSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = services.command_run(
            instance,
            command=body.validated_data["command"],
            timeout=body.validated_data.get(
                "timeout", settings.CLAWORC_EXEC_DEFAULT_TIMEOUT_SECONDS
            ),
            actor=request.user,
        )
        return Response(result)

    @extend_schema(
        methods=["get", "delete"], parameters=[PATH_PARAMETER], responses=OpenApiTypes.OBJECT
    )
    def files(self, request, pk=None):
        instance = self.get_object()
        path = self._path(request)
        if request.method == "DELETE":
            return Response(services.path_delete(instance, path=path, actor=request.user))
        return Response(services.directory_list(instance, path=path, actor=request.user))

    @extend_schema(
        methods=["get", "put"],
        parameters=[PATH_PARAMETER],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def content(self, request, pk=None):
        instance = self.get_object()
        path = self._path(request)
        if request.method == "PUT":
            return self._upload(request, instance, path)
        size, chunks = services.file_download(instance, path=path, actor=request.user)
        response = StreamingHttpResponse(chunks, content_type="application/octet-stream")
        response["Content-Length"] = str(size)
        response["Content-Disposition"] = "attachment"
        return response

    def _upload(self, request, instance, path: str):
        try:
            size = int(request.META.get("CONTENT_LENGTH") or "")
        except ValueError:
            raise ValidationError({"Content-Length": "an upload needs a Content-Length"}) from None
        stream = request.stream if size else _EmptyStream()
        result = services.file_upload(
            instance, path=path, stream=stream, size=size, actor=request.user
        )
        return Response(result, status=status.HTTP_200_OK)

    @extend_schema(request=PathSerializer, responses=OpenApiTypes.OBJECT)
    def mkdir(self, request, pk=None):
        instance = self.get_object()
        body = PathSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = services.directory_make(
            instance, path=body.validated_data["path"], actor=request.user
        )
        return Response(result, status=status.HTTP_201_CREATED)

    @extend_schema(request=RenameSerializer, responses=OpenApiTypes.OBJECT)
    def rename(self, request, pk=None):
        instance = self.get_object()
        body = RenameSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = services.path_rename(
            instance,
            source=body.validated_data["from"],
            target=body.validated_data["to"],
            actor=request.user,
        )
        return Response(result)


class _EmptyStream:
    def read(self, size: int = -1) -> bytes:
        return b""


def remote_urls(prefix: str = "instances/<int:pk>/") -> list:
    """The URL patterns of the remote operations, for `ssh_control.api.urls`."""
    from django.urls import path

    view = InstanceRemoteViewSet.as_view
    return [
        path(f"{prefix}exec", view({"post": "exec"}), name="instance-exec"),
        path(f"{prefix}files", view({"get": "files", "delete": "files"}), name="instance-files"),
        path(
            f"{prefix}files/content",
            view({"get": "content", "put": "content"}),
            name="instance-files-content",
        ),
        path(f"{prefix}files/mkdir", view({"post": "mkdir"}), name="instance-files-mkdir"),
        path(f"{prefix}files/rename", view({"post": "rename"}), name="instance-files-rename"),
    ]
