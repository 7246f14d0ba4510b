from collections.abc import Mapping

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers
from rest_framework.fields import empty

from ssh_control.choices import GrantLevel
from ssh_control.models import INSTANCE_NAME_PATTERN, Instance
from ssh_control.tunnels.services import CUSTOM_TUNNEL_NAME_PATTERN
from ssh_control.validators import parse_allowed_ips


class InstanceGrantSerializer(serializers.Serializer):
    user = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.all())
    level = serializers.ChoiceField(choices=GrantLevel.choices, default=GrantLevel.VIEW)


class InstanceSerializer(serializers.ModelSerializer):
    name = serializers.RegexField(INSTANCE_NAME_PATTERN, max_length=63)
    grants = InstanceGrantSerializer(many=True, required=False)
    state = serializers.SerializerMethodField()

    class Meta:
        model = Instance
        fields = (
            "id",
            "name",
            "ssh_host",
            "ssh_port",
            "ssh_user",
            "vnc_port",
            "gateway_port",
            "allowed_source_ips",
            "key_rotation_policy_days",
            "grants",
            "ssh_public_key",
            "ssh_key_fingerprint",
            "ssh_key_created_at",
            "state",
            "created_at",
            "updated_at",
        )
        read_only_fields = (
            "allowed_source_ips",
            "ssh_public_key",
            "ssh_key_fingerprint",
            "ssh_key_created_at",
            "created_at",
            "updated_at",
        )

    def get_state(self, instance) -> str:
        connection = getattr(instance, "connection", None)
        return connection.state if connection else "disconnected"

    def validate_name(self, value):
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("cannot be changed after creation")
        if self.instance is None and Instance.objects.filter(name=value).exists():
            raise serializers.ValidationError(f"an instance named {value!r} already exists")
        return value

    def validate_grants(self, grants):
        users = [grant["user"].pk for grant in grants]
        if len(users) != len(set(users)):
            raise serializers.ValidationError("a user may appear only once")
        return grants

    def to_representation(self, instance):
        data = super().to_representation(instance)
        request = self.context.get("request")
        if request is None or not request.user.is_staff:
            # Users do not learn who else may reach an instance.
            data.pop("grants", None)
        return data


class AllowedIPsSerializer(serializers.Serializer):
    allowed_ips = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=10000)

    def validate_allowed_ips(self, value):
        try:
            return parse_allowed_ips(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages[0]) from None


class ConnectionEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    event_type = serializers.CharField()
    from_state = serializers.CharField()
    to_state = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()


class TunnelSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    service = serializers.CharField()
    name = serializers.CharField()
    type = serializers.CharField()
    local_port = serializers.IntegerField(allow_null=True)
    remote_port = serializers.IntegerField()
    status = serializers.CharField()
    healthy = serializers.BooleanField()
    started_at = serializers.DateTimeField(allow_null=True)
    last_check = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    bytes_transferred = serializers.IntegerField()
    refused_count = serializers.IntegerField(
        help_text="Connections refused over the per-instance or per-worker cap."
    )
    last_refusal = serializers.CharField(help_text="Why the last one was refused.")


class CustomTunnelSerializer(serializers.Serializer):
    """Body of `POST .../tunnels`: only `custom` tunnels are added by hand."""

    service = serializers.ChoiceField(choices=[("custom", "Custom")], default="custom")
    name = serializers.RegexField(CUSTOM_TUNNEL_NAME_PATTERN, max_length=63)
    remote_port = serializers.IntegerField(min_value=1, max_value=65535)


class InstanceStatusSerializer(serializers.Serializer):
    """Schema of the runbook's `ssh-status` document (built by `selectors.instance_status`)."""

    instance_id = serializers.IntegerField()
    instance_name = serializers.CharField()
    state = serializers.CharField()
    healthy = serializers.BooleanField()
    connected_at = serializers.DateTimeField(allow_null=True)
    last_health_check = serializers.DateTimeField(allow_null=True)
    successful_checks = serializers.IntegerField()
    failed_checks = serializers.IntegerField()
    uptime = serializers.CharField()
    uptime_seconds = serializers.IntegerField()
    last_error = serializers.CharField()
    tunnels = TunnelSerializer(many=True)
    recent_events = ConnectionEventSerializer(many=True)


class FleetStatusSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    healthy = serializers.IntegerField()
    by_state = serializers.DictField(child=serializers.IntegerField())
    instances = InstanceStatusSerializer(many=True)


class FingerprintSerializer(serializers.Serializer):
    instance_id = serializers.IntegerField()
    instance_name = serializers.CharField()
    fingerprint = serializers.CharField()
    public_key = serializers.CharField()
    key_type = serializers.CharField()
    created_at = serializers.DateTimeField(allow_null=True)
    age_days = serializers.IntegerField()
    rotation_policy_days = serializers.IntegerField()
    host_key_fingerprint = serializers.CharField(allow_null=True)
    host_key_pinned_at = serializers.DateTimeField(allow_null=True)
    authorized_keys_path = serializers.CharField()
    last_rotation = serializers.DictField(allow_null=True)


HOST_KEY_FINGERPRINT_HELP = "expected a key fingerprint: SHA256: and 43 base64 characters"


class HostKeyAcceptSerializer(serializers.Serializer):
    """Body of `POST .../ssh-host-key/accept`: the fingerprint of the host key to trust."""

    fingerprint = serializers.RegexField(
        r"^SHA256:[A-Za-z0-9+/]{43}$", error_messages={"invalid": HOST_KEY_FINGERPRINT_HELP}
    )

    def run_validation(self, data=empty):
        # A JSON array, string or null body would otherwise be reported without the field.
        if data is not empty and not isinstance(data, Mapping):
            raise serializers.ValidationError({"fingerprint": [HOST_KEY_FINGERPRINT_HELP]})
        return super().run_validation(data)


class KeyInstallSerializer(serializers.Serializer):
    password = serializers.CharField(
        write_only=True, trim_whitespace=False, max_length=1024, style={"input_type": "password"}
    )


class KeyInstallResultSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    fingerprint = serializers.CharField()
    appended = serializers.BooleanField()
    message = serializers.CharField()
    reconnect = serializers.DictField()


class RotationResultSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    fingerprint = serializers.CharField()
    rotated_at = serializers.DateTimeField()
    message = serializers.CharField()
