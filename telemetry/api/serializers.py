from __future__ import annotations

from rest_framework import serializers

from telemetry.models import DriftAlert, ReferenceProfile


class FeatureDriftSerializer(serializers.Serializer):
    feature = serializers.CharField()
    psi = serializers.FloatField()
    ks = serializers.FloatField()
    count = serializers.IntegerField()
    mean = serializers.FloatField()
    reference_mean = serializers.FloatField()


class DriftAlertSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    model_id = serializers.IntegerField(source="version.model_id", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    version_id = serializers.IntegerField(read_only=True)
    site = serializers.IntegerField(source="site_id", read_only=True)
    site_name = serializers.CharField(source="site.name", read_only=True)
    features = FeatureDriftSerializer(many=True, read_only=True)

    class Meta:
        model = DriftAlert
        fields = [
            "id", "status", "model", "model_id", "version", "version_id", "site", "site_name", "psi", "ks",
            "peak_psi", "features", "sample_count", "opened_at", "last_evaluated_at", "resolved_at",
        ]  # fmt: skip
        read_only_fields = fields


class FeatureProfileSerializer(serializers.Serializer):
    mean = serializers.FloatField()
    var = serializers.FloatField(min_value=0)
    edges = serializers.ListField(child=serializers.FloatField())
    proportions = serializers.ListField(child=serializers.FloatField(min_value=0))


class ReferenceProfileSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    features = serializers.DictField(child=FeatureProfileSerializer())

    class Meta:
        model = ReferenceProfile
        fields = ["model", "version", "features", "sample_count", "source", "updated_at"]
        read_only_fields = fields


class ReferenceProfileInputSerializer(serializers.Serializer):
    """Either the profile itself (`features`) or training rows to compute it from (`samples`)."""

    features = serializers.JSONField(
        required=False, help_text="{feature: {mean, var, edges, proportions}}; len(proportions) = len(edges) + 1"
    )
    samples = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        help_text="{input name: rows of numbers}, profiled per column over `edges` (the protocol's default edges)",
    )
    edges = serializers.ListField(child=serializers.FloatField(), required=False, min_length=1, max_length=64)
    sample_count = serializers.IntegerField(required=False, min_value=0, default=0)
    source = serializers.CharField(required=False, allow_blank=True, max_length=256, default="")

    def validate(self, attrs: dict[str, object]) -> dict[str, object]:
        if ("features" in attrs) == ("samples" in attrs):
            raise serializers.ValidationError({"features": "give either features or samples (not both)"})
        return attrs
