from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from models_registry.models import ModelVersion, Pipeline, PipelineStage, PipelineVersion
from protocol.pipelines import MAX_STAGES, condition_errors


class PipelineSerializer(serializers.ModelSerializer):
    version_count = serializers.IntegerField(read_only=True, required=False)
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Pipeline
        fields = ["id", "name", "description", "owner", "version_count", "created_at", "updated_at"]
        read_only_fields = ["id", "owner", "version_count", "created_at", "updated_at"]


class ConditionSerializer(serializers.Serializer):
    output = serializers.CharField(max_length=128, help_text="an output of the previous stage")
    op = serializers.ChoiceField(choices=[">=", ">", "<=", "<", "==", "!="])
    value = serializers.FloatField(help_text="compared with the largest element of that output")


class StageSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    model_id = serializers.IntegerField(source="version.model_id", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    version_id = serializers.IntegerField(source="version.pk", read_only=True)
    sha256 = serializers.CharField(source="version.sha256", read_only=True)
    format = serializers.CharField(source="version.format", read_only=True)
    condition = ConditionSerializer(read_only=True, allow_null=True)

    class Meta:
        model = PipelineStage
        fields = ["position", "name", "model", "model_id", "version", "version_id", "format", "sha256", "condition"]
        read_only_fields = fields


class PipelineVersionSerializer(serializers.ModelSerializer):
    pipeline_name = serializers.CharField(source="pipeline.name", read_only=True)
    stages = serializers.SerializerMethodField()
    is_deployable = serializers.BooleanField(read_only=True)

    class Meta:
        model = PipelineVersion
        fields = [
            "id",
            "pipeline",
            "pipeline_name",
            "number",
            "status",
            "is_deployable",
            "stages",
            "manifest",
            "signature",
            "key_id",
            "published_at",
            "deprecated_at",
            "revoked_at",
            "revoked_reason",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(StageSerializer(many=True))
    def get_stages(self, version: PipelineVersion) -> list[dict[str, Any]]:
        return StageSerializer(version.ordered_stages(), many=True).data  # type: ignore[return-value]


class StageInputSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[a-z0-9][a-z0-9_-]{0,63}$", help_text="the stage's name, e.g. detect")
    model = serializers.CharField(max_length=120, help_text="the model's name")
    version = serializers.IntegerField(min_value=1, help_text="a published version number of that model")
    condition = serializers.JSONField(
        required=False,
        allow_null=True,
        default=None,
        help_text='run only when the previous stage\'s output passes: {"output", "op", "value"}',
    )

    def validate_condition(self, value: Any) -> Any:
        problems = condition_errors(value)
        if problems:
            raise serializers.ValidationError(problems)
        return value

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        version = (
            ModelVersion.objects.select_related("model")
            .filter(model__name=data["model"], number=data["version"])
            .first()
        )
        if version is None:
            raise serializers.ValidationError(
                {"version": [f"model {data['model']!r} has no version {data['version']}"]}
            )
        return {"name": data["name"], "version": version, "condition": data.get("condition")}


class PipelineVersionInputSerializer(serializers.Serializer):
    stages = StageInputSerializer(many=True, help_text=f"1 to {MAX_STAGES} stages, in order")


class PipelineRevokeInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, help_text="why the pipeline version must never run again")


class PipelineDeprecateInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
