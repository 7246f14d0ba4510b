from rest_framework import serializers

from audit.models import AuditEntry


class AuditEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEntry
        fields = (
            "id",
            "instance_id",
            "instance_name",
            "event_type",
            "username",
            "source_ip",
            "details",
            "duration_ms",
            "created_at",
            "request_id",
            "data",
        )
        read_only_fields = fields


class AuditPurgeSerializer(serializers.Serializer):
    deleted = serializers.IntegerField()
    retention_days = serializers.IntegerField()
