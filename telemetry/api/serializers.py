from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from telemetry.models import DriftAlert, ReferenceProfile
from telemetry.series import DIMENSIONS, RolloutCohorts, SeriesQuery, rollout_cohorts


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


# --- the telemetry query API ------------------------------------------------------------------------
BUCKET_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_BUCKETS = 10_000
MAX_RANGE = dt.timedelta(days=92)
DEFAULT_RANGE = dt.timedelta(hours=1)


class TelemetrySeriesQuerySerializer(serializers.Serializer):
    """The query string of `GET /api/v1/telemetry/series/` (each bad value is a 400 naming its field)."""

    start = serializers.DateTimeField(required=False, help_text="inclusive; default: an hour before `end`")
    end = serializers.DateTimeField(required=False, help_text="exclusive; default: now")
    bucket = serializers.RegexField(
        r"^[1-9][0-9]{0,6}[smhd]?$",
        required=False,
        default="5m",
        help_text="bucket size: seconds, or a number with s, m, h or d (a whole number of minutes; default 5m)",
    )
    group_by = serializers.MultipleChoiceField(
        choices=DIMENSIONS, required=False, help_text="repeat to combine; `cohort` needs `rollout`"
    )
    model = serializers.CharField(required=False, max_length=128, help_text="model (or pipeline) name")
    version = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    site = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), required=False)
    device = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        required=False,
        max_length=100,
        help_text="device ids: read from the raw samples (kept TELEMETRY_RAW_RETENTION_HOURS)",
    )
    rollout = serializers.IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, help_text="the rollout's model, and its cohorts"
    )

    def validate_bucket(self, value: str) -> int:
        unit = value[-1] if value[-1] in BUCKET_UNITS else "s"
        seconds = int(value.rstrip("smhd")) * BUCKET_UNITS[unit]
        if seconds % 60:
            raise serializers.ValidationError("must be a whole number of minutes (the rollups are per minute)")
        if seconds > 31 * 86400:
            raise serializers.ValidationError("must be at most 31 days")
        return seconds

    def validate_rollout(self, value: int) -> RolloutCohorts:
        found = rollout_cohorts(value)
        if found is None:
            raise serializers.ValidationError(f"no rollout {value}")
        return found

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("end") or timezone.now()
        start = attrs.get("start") or end - DEFAULT_RANGE
        if start >= end:
            raise serializers.ValidationError({"start": "must be before end"})
        if end - start > MAX_RANGE:
            raise serializers.ValidationError({"start": f"the range is at most {MAX_RANGE.days} days"})
        if (end - start).total_seconds() / attrs["bucket"] > MAX_BUCKETS:
            raise serializers.ValidationError({"bucket": f"more than {MAX_BUCKETS} buckets: choose a larger one"})
        group_by = attrs.get("group_by") or set()
        rollout = attrs.get("rollout")
        if "cohort" in group_by and rollout is None:
            raise serializers.ValidationError({"group_by": "`cohort` needs a rollout"})
        model = attrs.get("model")
        if rollout is not None:
            if model and model != rollout.model:
                raise serializers.ValidationError({"model": f"rollout {rollout.rollout_id} is of {rollout.model}"})
            model = rollout.model
        return {
            "query": SeriesQuery(
                start=start.astimezone(dt.UTC),
                end=end.astimezone(dt.UTC),
                bucket_seconds=attrs["bucket"],
                group_by=tuple(d for d in DIMENSIONS if d in group_by),
                model=model,
                version=attrs.get("version"),
                sites=tuple(attrs.get("site", ())),
                devices=tuple(attrs.get("device", ())),
                rollout=rollout,
            )
        }


class TelemetryBucketSerializer(serializers.Serializer):
    """One bucket of one group. The group's fields are null unless grouped by them."""

    model = serializers.CharField()
    version = serializers.IntegerField(allow_null=True)
    site = serializers.IntegerField(allow_null=True)
    device = serializers.IntegerField(allow_null=True)
    cohort = serializers.ChoiceField(choices=["canary", "baseline"], allow_null=True)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    samples = serializers.IntegerField(help_text="device reports folded into this bucket")
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True)
    p50_ms = serializers.FloatField(allow_null=True, help_text="request-weighted mean of the devices' p50")
    p95_ms = serializers.FloatField(allow_null=True, help_text="request-weighted mean of the devices' p95")
    p99_ms = serializers.FloatField(allow_null=True, help_text="request-weighted mean of the devices' p99")
    p95_max_ms = serializers.FloatField(help_text="the worst device's p95")
    p99_max_ms = serializers.FloatField(help_text="the worst device's p99")
    max_ms = serializers.FloatField()
