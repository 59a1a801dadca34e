from __future__ import annotations

from rest_framework import serializers

from deployments.models import Job, JobEvent, JobKind
from fleet.models import Device
from models_registry.models import ModelVersion


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["from_status", "to_status", "step", "reason", "actor", "seq", "at"]


class DeploymentSerializer(serializers.ModelSerializer):
    device_uid = serializers.CharField(source="device.uid", read_only=True)
    model_name = serializers.CharField(source="model.name", read_only=True)
    version_number = serializers.IntegerField(source="version.number", read_only=True)
    events = JobEventSerializer(many=True, read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "device",
            "device_uid",
            "model",
            "model_name",
            "version",
            "version_number",
            "kind",
            "status",
            "step",
            "progress",
            "reason",
            "timeout_seconds",
            "deadline_at",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "events",
        ]
        read_only_fields = fields


class DeploymentCreateSerializer(serializers.Serializer):
    device = serializers.PrimaryKeyRelatedField(queryset=Device.objects.all())
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.select_related("model"))
    kind = serializers.ChoiceField(choices=JobKind.choices, default=JobKind.INSTALL)
    timeout_seconds = serializers.IntegerField(min_value=5, max_value=7 * 24 * 3600, required=False)


class CancelInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="canceled by operator")
