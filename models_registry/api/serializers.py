from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from fleet.models import RUNTIME_NAMES, Accelerator, Arch
from models_registry.models import ArtifactFormat, Framework, ModelVersion, RegisteredModel, Status
from models_registry.validators import validate_io_signature, validate_metrics


class RegisteredModelSerializer(serializers.ModelSerializer):
    version_count = serializers.IntegerField(read_only=True, required=False)

    class Meta:
        model = RegisteredModel
        fields = ["id", "name", "task", "description", "owner", "version_count", "created_at", "updated_at"]
        read_only_fields = ["id", "owner", "version_count", "created_at", "updated_at"]


class RequirementsSerializer(serializers.Serializer):
    runtime = serializers.ChoiceField(
        choices=RUNTIME_NAMES,
        required=False,
        allow_blank=True,
        default="",
        help_text="narrows the runtimes the format allows (see compatibility.py)",
    )
    min_runtime_version = serializers.RegexField(
        r"^\d+(\.\d+){0,3}$",
        max_length=40,
        required=False,
        allow_blank=True,
        default="",
        help_text="compared numerically: 1.18 > 1.9",
    )
    archs = serializers.ListField(
        child=serializers.ChoiceField(choices=Arch.choices),
        required=False,
        default=list,
        max_length=10,
        help_text="allowed CPU architectures; empty means any",
    )
    min_memory_mb = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    accelerator = serializers.ChoiceField(
        choices=Accelerator.choices,
        required=False,
        allow_blank=True,
        default="",
        help_text="required accelerator; blank or none means not needed",
    )


class LineageSerializer(serializers.Serializer):
    parent = serializers.IntegerField(
        min_value=1, required=False, allow_null=True, default=None, help_text="version number of the same model"
    )
    training_data = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    code_commit = serializers.RegexField(r"^[0-9a-f]{7,64}$", required=False, allow_blank=True, default="")


@extend_schema_field(OpenApiTypes.STR)
class JSONFormField(serializers.JSONField):
    """A JSON value sent as JSON text in a multipart form (or as a value in a JSON body)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bytes | str):
            try:
                data = json.loads(data)
            except ValueError:
                self.fail("invalid")
        return super().to_internal_value(data)


def _django_errors(validator: Any, value: Any) -> None:
    try:
        validator(value)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from None


def _nested(serializer_class: type[serializers.Serializer], value: Any, *, partial: bool) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise serializers.ValidationError("must be a JSON object")
    nested = serializer_class(data=value, partial=partial)
    nested.is_valid(raise_exception=True)
    return dict(nested.validated_data)


class VersionWriteSerializer(serializers.Serializer):
    """Upload (POST, multipart) or draft edit (PATCH/PUT). JSON-valued fields are JSON text in a form."""

    artifact = serializers.FileField(help_text=".onnx, .tflite … file; size and sha256 are computed by the server")
    format = serializers.ChoiceField(choices=ArtifactFormat.choices)
    framework = serializers.ChoiceField(choices=Framework.choices)
    label = serializers.CharField(max_length=64, required=False, allow_blank=True)
    metrics = JSONFormField(required=False, help_text='JSON object name -> finite number, e.g. {"accuracy": 0.93}')
    requirements = JSONFormField(
        required=False,
        help_text='JSON object {"runtime", "min_runtime_version", "archs", "min_memory_mb", "accelerator"}',
    )
    signature = JSONFormField(required=False, help_text="input/output signature (JSON object)")
    lineage = JSONFormField(required=False, help_text='JSON object {"parent": number, "training_data", "code_commit"}')

    def __init__(self, *args: Any, model: RegisteredModel | None = None, updating: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = model
        if updating:
            self.fields["artifact"].required = False

    def validate_metrics(self, value: Any) -> Any:
        _django_errors(validate_metrics, value)
        return value

    def validate_signature(self, value: Any) -> Any:
        _django_errors(validate_io_signature, value)
        return value

    def validate_requirements(self, value: Any) -> dict[str, Any]:
        return _nested(RequirementsSerializer, value, partial=self.partial)

    def validate_lineage(self, value: Any) -> dict[str, Any]:
        lineage = _nested(LineageSerializer, value, partial=self.partial)
        if "parent" in lineage and lineage["parent"] is not None:
            parent = ModelVersion.objects.filter(model=self.model, number=lineage["parent"]).first()
            if parent is None:
                raise serializers.ValidationError({"parent": [f"{self.model.name} has no version {lineage['parent']}"]})
            lineage["parent"] = parent
        return lineage

    def validate_label(self, value: str) -> str:
        clash = ModelVersion.objects.filter(model=self.model, label=value).exclude(label="")
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if value and clash.exists():
            raise serializers.ValidationError(f"{self.model.name} already has a version labelled {value!r}")
        return value

    def to_service_kwargs(self) -> dict[str, Any]:
        data = dict(self.validated_data)
        if "signature" in data:
            data["io_signature"] = data.pop("signature")
        return data


class VersionSerializer(serializers.ModelSerializer):
    model = serializers.PrimaryKeyRelatedField(read_only=True)
    model_name = serializers.CharField(source="model.name", read_only=True)
    requirements = RequirementsSerializer(read_only=True)
    lineage = LineageSerializer(read_only=True)
    io_signature = serializers.JSONField(read_only=True, help_text="input/output signature (`signature` on upload)")
    metrics = serializers.DictField(child=serializers.FloatField(), read_only=True)
    manifest = serializers.CharField(
        read_only=True, help_text="exact canonical JSON text that was signed ('' for drafts)"
    )
    signature = serializers.CharField(
        read_only=True, help_text="base64 Ed25519 signature of `manifest` ('' for drafts)"
    )
    is_deployable = serializers.BooleanField(read_only=True)
    aliases = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "model_name",
            "number",
            "label",
            "status",
            "is_deployable",
            "framework",
            "format",
            "size",
            "sha256",
            "io_signature",
            "metrics",
            "requirements",
            "lineage",
            "aliases",
            "manifest",
            "signature",
            "key_id",
            "published_at",
            "deprecated_at",
            "revoked_at",
            "revoked_reason",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_aliases(self, version: ModelVersion) -> list[str]:
        return sorted(alias.name for alias in version.aliases.all())


class HistoryItemSerializer(serializers.Serializer):
    source = serializers.ChoiceField(choices=["event", "audit"], help_text="a status event or an audit entry")
    at = serializers.DateTimeField()
    action = serializers.CharField()
    actor = serializers.CharField()
    from_status = serializers.CharField(allow_blank=True)
    to_status = serializers.CharField(allow_blank=True)
    reason = serializers.CharField(allow_blank=True)
    changes = serializers.JSONField()
    request_id = serializers.CharField(allow_blank=True)


class VersionDetailSerializer(VersionSerializer):
    history = HistoryItemSerializer(
        many=True, read_only=True, help_text="status events and audit entries, oldest first"
    )
    deployments = serializers.ListField(
        child=serializers.DictField(),
        read_only=True,
        help_text="where this version was deployed: always empty until rollouts exist (filled by the rollouts issue)",
    )

    class Meta(VersionSerializer.Meta):
        fields = [*VersionSerializer.Meta.fields, "history", "deployments"]
        read_only_fields = fields


class VersionRevokeInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, help_text="why the version must never run again")


class VersionDeprecateInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class AliasSerializer(serializers.Serializer):
    name = serializers.CharField(read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    status = serializers.ChoiceField(choices=Status.choices, source="version.status", read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)


class AliasInputSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, help_text="the version number to point at (must be published)")


class CompatibilitySerializer(serializers.Serializer):
    compatible = serializers.IntegerField()
    incompatible = serializers.IntegerField()
    total = serializers.IntegerField()
    reasons = serializers.DictField(child=serializers.IntegerField(), help_text="reason -> number of devices")


class SigningKeySerializer(serializers.Serializer):
    key_id = serializers.CharField()
    public_key = serializers.CharField(help_text="base64 of the raw 32-byte Ed25519 public key")
    algorithm = serializers.CharField()
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField(allow_null=True)
