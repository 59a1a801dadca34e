from __future__ import annotations

from itertools import pairwise
from typing import Any

import pydantic
from django.db.models import F, JSONField, Value
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from deployments import plan as defaults
from deployments.models import GateEvaluation, Installation, Job, JobEvent, JobKind, Rollout, RolloutEvent, Wave
from deployments.plan import RolloutPlan
from deployments.selectors import RolloutCounts
from fleet.models import Device, Site, Tier
from models_registry.models import ModelVersion, PipelineVersion


class JobEventSerializer(serializers.ModelSerializer[JobEvent]):
    class Meta:
        model = JobEvent
        fields = ["from_status", "to_status", "step", "reason", "actor", "seq", "at"]


class DeploymentSerializer(serializers.ModelSerializer[Job]):
    device_uid = serializers.CharField(source="device.uid", read_only=True)
    model_name = serializers.CharField(source="model.name", read_only=True, allow_null=True, default=None)
    version_number = serializers.IntegerField(source="version.number", read_only=True, allow_null=True, default=None)
    pipeline_name = serializers.CharField(source="pipeline.name", read_only=True, allow_null=True, default=None)
    pipeline_version_number = serializers.IntegerField(
        source="pipeline_version.number", read_only=True, allow_null=True, default=None
    )
    events = JobEventSerializer(many=True, read_only=True)
    rollout_name = serializers.CharField(source="rollout.name", read_only=True, allow_null=True, default=None)
    wave = serializers.IntegerField(
        source="wave.index", read_only=True, allow_null=True, default=None, help_text="index in its rollout (0 = first)"
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "rollout",
            "rollout_name",
            "wave",
            "attempt",
            "device",
            "device_uid",
            "model",
            "model_name",
            "version",
            "version_number",
            "pipeline",
            "pipeline_name",
            "pipeline_version",
            "pipeline_version_number",
            "kind",
            "status",
            "step",
            "progress",
            "reason",
            "status_details",
            "timeout_seconds",
            "deadline_at",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "events",
        ]
        read_only_fields = fields


class DeploymentCreateSerializer(serializers.Serializer[dict[str, Any]]):
    device = serializers.PrimaryKeyRelatedField(queryset=Device.objects.all())
    version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.select_related("model"), required=False, help_text="a model version's id"
    )
    pipeline_version = serializers.PrimaryKeyRelatedField(
        queryset=PipelineVersion.objects.select_related("pipeline"),
        required=False,
        help_text="a pipeline version's id (instead of version): every stage is installed as one unit",
    )
    kind = serializers.ChoiceField(choices=JobKind.choices, default=JobKind.INSTALL)
    timeout_seconds = serializers.IntegerField(min_value=5, max_value=7 * 24 * 3600, required=False)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if ("version" in data) == ("pipeline_version" in data):
            raise serializers.ValidationError({"version": ["give exactly one of version and pipeline_version"]})
        return data


class CancelInputSerializer(serializers.Serializer[dict[str, Any]]):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="canceled by operator")


# --- rollouts ------------------------------------------------------------------------------------

HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


class RolloutTargetInputSerializer(serializers.Serializer[dict[str, Any]]):
    filter = serializers.DictField(required=False, help_text='device-list filters, e.g. {"tier": "edge"}')
    group = serializers.IntegerField(required=False, min_value=1)
    devices = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, max_length=100000)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        given = [key for key in ("filter", "group", "devices") if key in data]
        if len(given) != 1:
            raise serializers.ValidationError("give exactly one of filter, group or devices")
        if "devices" in data and not data["devices"]:
            raise serializers.ValidationError({"devices": ["the device list is empty"]})
        return data


class WaveInputSerializer(serializers.Serializer[dict[str, Any]]):
    percent = serializers.FloatField(required=False, min_value=0.001, max_value=100, help_text="cumulative")
    count = serializers.IntegerField(required=False, min_value=1, help_text="cumulative")
    site = serializers.IntegerField(required=False, min_value=1, help_text="pin the wave to a site")
    tier = serializers.ChoiceField(required=False, choices=Tier.choices, help_text="pin the wave to a tier")
    group = serializers.IntegerField(required=False, min_value=1, help_text="pin the wave to a group")
    approval = serializers.BooleanField(required=False, default=False, help_text="a person approves it first")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if ("percent" in data) == ("count" in data):
            raise serializers.ValidationError("give either percent or count")
        return data


# Defaults shown here are RolloutPlan's (deployments/plan.py), the one place they are defined.


class InstallGateSerializer(serializers.Serializer[dict[str, Any]]):
    min_success_pct = serializers.FloatField(min_value=0, max_value=100, default=defaults.DEFAULT_MIN_SUCCESS_PCT)
    max_failure_pct = serializers.FloatField(min_value=0, max_value=100, default=defaults.DEFAULT_MAX_FAILURE_PCT)
    min_finished = serializers.IntegerField(min_value=1, default=defaults.DEFAULT_MIN_FINISHED)


class HealthGateSerializer(serializers.Serializer[dict[str, Any]]):
    max_p95_latency_ratio = serializers.FloatField(required=False, min_value=0.01)
    max_error_rate = serializers.FloatField(required=False, min_value=0, max_value=1)
    max_p95_ms = serializers.FloatField(required=False, min_value=0.0001, help_text="where there is no baseline")
    max_p99_ms = serializers.FloatField(required=False, min_value=0.0001)
    bake_seconds = serializers.IntegerField(min_value=1, max_value=7 * 24 * 3600, default=defaults.DEFAULT_BAKE_SECONDS)
    min_samples = serializers.IntegerField(min_value=1, default=defaults.DEFAULT_MIN_SAMPLES)
    min_baseline_samples = serializers.IntegerField(required=False, min_value=1)
    tolerated_failures = serializers.IntegerField(min_value=0, default=defaults.DEFAULT_TOLERATED_FAILURES)
    check_interval_seconds = serializers.IntegerField(required=False, min_value=1)


class RetryPolicySerializer(serializers.Serializer[dict[str, Any]]):
    FAILED = serializers.IntegerField(min_value=0, max_value=10, default=0)
    TIMED_OUT = serializers.IntegerField(min_value=0, max_value=10, default=0)


class ExponentialRateSerializer(serializers.Serializer[dict[str, Any]]):
    base_per_minute = serializers.IntegerField(min_value=1)
    factor = serializers.FloatField(min_value=1, max_value=5, default=2)
    every_succeeded = serializers.IntegerField(min_value=1, default=10)


class MaintenanceWindowSerializer(serializers.Serializer[dict[str, Any]]):
    site = serializers.IntegerField(min_value=1)

    def validate_site(self, site: int) -> int:
        if not Site.objects.filter(pk=site).exists():
            raise serializers.ValidationError(f"no site with id {site}")
        return site

    start = serializers.RegexField(HHMM, help_text="UTC HH:MM")
    end = serializers.RegexField(HHMM, help_text="UTC HH:MM; before start means it wraps midnight")


class RolloutPlanSerializer(serializers.Serializer[dict[str, Any]]):
    version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.select_related("model"), required=False, help_text="a model version's id"
    )
    pipeline_version = serializers.PrimaryKeyRelatedField(
        queryset=PipelineVersion.objects.select_related("pipeline"),
        required=False,
        help_text="a pipeline version's id (instead of version): rolled out as one unit",
    )
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    target = RolloutTargetInputSerializer()
    waves: serializers.ListSerializer[list[dict[str, Any]]] = serializers.ListSerializer(
        child=WaveInputSerializer(), min_length=1, max_length=20
    )  # WaveInputSerializer(many=True, …) spelled out: the stubs don't take min_length/max_length there
    install_gate = InstallGateSerializer(required=False)
    health_gate = HealthGateSerializer(required=False, allow_null=True)
    rate_per_minute = serializers.IntegerField(
        min_value=1, max_value=1_000_000, required=False,
        help_text="jobs sent per minute at most; default ROLLOUT_DEFAULT_RATE_PER_MINUTE (600)",
    )  # fmt: skip
    exponential_rate = ExponentialRateSerializer(required=False)
    job_timeout_seconds = serializers.IntegerField(
        min_value=5, max_value=defaults.MAX_JOB_TIMEOUT_SECONDS, required=False,
        help_text="per-device job timeout; default JOB_TIMEOUT_SECONDS (3600)",
    )  # fmt: skip
    queued_timeout_seconds = serializers.IntegerField(
        min_value=5, max_value=defaults.MAX_JOB_TIMEOUT_SECONDS, default=defaults.DEFAULT_QUEUED_TIMEOUT_SECONDS,
        help_text="a job the device never started (still QUEUED) times out after this long (never past "
        "job_timeout_seconds)",
    )  # fmt: skip
    offline_devices = serializers.ChoiceField(
        choices=["replace", "defer", "dispatch"], default=defaults.DEFAULT_OFFLINE_DEVICES,
        help_text="a device unreachable when its wave starts: replace it with a reachable one of the same "
        "hardware from a later wave, defer it to the next wave, or dispatch anyway",
    )  # fmt: skip
    retry = RetryPolicySerializer(required=False)
    start_at = serializers.DateTimeField(required=False)
    maintenance_windows = MaintenanceWindowSerializer(many=True, required=False)
    tier_aware = serializers.BooleanField(default=False)
    seed = serializers.IntegerField(required=False, min_value=0, max_value=2**62)
    on_install_failure = serializers.ChoiceField(
        choices=["abort", "rollback"], default=defaults.DEFAULT_ON_INSTALL_FAILURE
    )

    def validate_version(self, version: ModelVersion) -> ModelVersion:
        if not version.is_deployable:
            raise serializers.ValidationError(f"version {version} is {version.status}: it cannot be rolled out")
        return version

    def validate_pipeline_version(self, version: PipelineVersion) -> PipelineVersion:
        if not version.is_deployable:
            raise serializers.ValidationError(f"version {version} is {version.status}: it cannot be rolled out")
        return version

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if ("version" in data) == ("pipeline_version" in data):
            raise serializers.ValidationError({"version": ["give exactly one of version and pipeline_version"]})
        return data

    def validate_waves(self, waves: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for key in ("percent", "count"):
            values = [w[key] for w in waves if key in w]
            if any(b <= a for a, b in pairwise(values)):
                raise serializers.ValidationError(f"wave {key}s are cumulative: each must be larger than the last")
        return waves

    def validate_health_gate(self, gate: dict[str, Any] | None) -> dict[str, Any] | None:
        keys = ("max_p95_latency_ratio", "max_error_rate", "max_p95_ms", "max_p99_ms")
        if gate is not None and not any(k in gate for k in keys):
            raise serializers.ValidationError(f"give at least one threshold: {', '.join(keys)}")
        return gate

    def to_plan(self) -> tuple[ModelVersion | PipelineVersion, str, RolloutPlan]:
        """The validated request as (version, name, RolloutPlan); what it leaves out gets RolloutPlan's
        defaults. The plan's own checks repeat the serializer's, so a 400 here is a bug kept readable."""
        data = dict(self.validated_data)
        version = data.pop("version", None) or data.pop("pipeline_version")
        name = data.pop("name")
        try:
            return version, name, RolloutPlan.model_validate(data)
        except pydantic.ValidationError as exc:
            raise serializers.ValidationError(
                {".".join(str(p) for p in e["loc"]) or "non_field_errors": [e["msg"]] for e in exc.errors()}
            ) from None


class RolloutPreviewSerializer(serializers.Serializer[dict[str, Any]]):
    eligible = serializers.IntegerField()
    excluded_count = serializers.IntegerField()
    wave_sizes = serializers.ListField(child=serializers.IntegerField())
    wave_online = serializers.ListField(
        child=serializers.IntegerField(), help_text="per wave, how many of its devices are reachable now"
    )
    excluded_reasons = serializers.DictField(child=serializers.IntegerField())
    excluded = serializers.ListField(child=serializers.DictField())


class WaveStateSerializer(serializers.ModelSerializer[Wave]):
    jobs = serializers.SerializerMethodField(help_text="devices of the wave by the state of their install job")
    rollbacks = serializers.SerializerMethodField(help_text="rollback jobs of the wave by state")

    class Meta:
        model = Wave
        fields = ["index", "spec", "size", "status", "requires_approval", "approved_by", "install_started_at",
                  "bake_started_at", "failed_checks", "finished_at", "online_at_dispatch", "offline_at_dispatch",
                  "jobs", "rollbacks"]  # fmt: skip

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_jobs(self, wave: Wave) -> dict[str, int]:
        return self._counts(wave, "jobs")

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_rollbacks(self, wave: Wave) -> dict[str, int]:
        return self._counts(wave, "rollbacks")

    def _counts(self, wave: Wave, kind: str) -> dict[str, int]:
        counts: dict[int, dict[str, dict[str, int]]] = self.context.get("counts", {})  # selectors.rollout_wave_counts
        return counts.get(wave.pk, {}).get(kind, {})


class GateEvaluationSerializer(serializers.ModelSerializer[GateEvaluation]):
    wave = serializers.IntegerField(source="wave.index")

    class Meta:
        model = GateEvaluation
        fields = ["wave", "gate", "verdict", "final", "inputs", "figures", "reason", "actor", "at"]


class RolloutEventSerializer(serializers.ModelSerializer[RolloutEvent]):
    wave = serializers.IntegerField(source="wave.index", allow_null=True, default=None)

    class Meta:
        model = RolloutEvent
        fields = ["wave", "from_status", "to_status", "reason", "actor", "at"]


class RolloutSerializer(serializers.ModelSerializer[Rollout]):
    model_name = serializers.CharField(source="model.name", read_only=True, allow_null=True, default=None)
    version_number = serializers.IntegerField(source="version.number", read_only=True, allow_null=True, default=None)
    pipeline_name = serializers.CharField(source="pipeline.name", read_only=True, allow_null=True, default=None)
    pipeline_version_number = serializers.IntegerField(
        source="pipeline_version.number", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = Rollout
        fields = ["id", "name", "model", "model_name", "version", "version_number", "pipeline", "pipeline_name",
                  "pipeline_version", "pipeline_version_number", "status", "status_reason",
                  "current_wave", "skip_gates", "force_rollback", "created_by", "created_at", "started_at",
                  "finished_at"]  # fmt: skip
        read_only_fields = fields


class RolloutDetailSerializer(RolloutSerializer):
    plan = serializers.SerializerMethodField(help_text="the RolloutPlan, every default filled in")
    waves = serializers.SerializerMethodField()
    gate_results = GateEvaluationSerializer(many=True, read_only=True)
    timeline = RolloutEventSerializer(many=True, read_only=True, source="events")
    excluded = serializers.SerializerMethodField()
    artifact_transfer = serializers.SerializerMethodField()

    class Meta(RolloutSerializer.Meta):
        fields = [*RolloutSerializer.Meta.fields, "plan", "waves", "gate_results", "timeline", "excluded",
                  "artifact_transfer"]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_plan(self, rollout: Rollout) -> dict[str, Any]:
        plan: RolloutPlan = rollout.plan  # RolloutPlanField
        return plan.stored()

    @extend_schema_field(WaveStateSerializer(many=True))
    def get_waves(self, rollout: Rollout) -> list[dict[str, Any]]:
        # what WaveStateSerializer(..., many=True) builds, spelled out: the stubs type that as one serializer
        waves = serializers.ListSerializer(rollout.waves.all(), child=WaveStateSerializer(), context=self.context)
        return waves.data

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_excluded(self, rollout: Rollout) -> dict[str, Any]:
        excluded: dict[str, Any] = self.context.get("excluded", {})  # selectors.rollout_excluded
        return excluded

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_artifact_transfer(self, rollout: Rollout) -> dict[str, Any]:
        summary: dict[str, Any] = self.context.get("artifact_transfer", {})  # selectors.artifact_transfer_summary
        return summary


class RolloutReasonSerializer(serializers.Serializer[dict[str, Any]]):
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class RolloutEmergencySerializer(serializers.Serializer[dict[str, Any]]):
    action = serializers.ChoiceField(choices=["skip_gates", "rollback"])
    reason = serializers.CharField(max_length=1000, help_text="mandatory: why the gates are bypassed")


class DeviceHistorySerializer(serializers.ModelSerializer[Installation]):
    model_name = serializers.CharField(source="model.name")
    version_number = serializers.IntegerField(source="version.number")
    job = serializers.UUIDField(source="job_id", allow_null=True)
    job_kind = serializers.CharField(source="job.kind", allow_null=True, default=None)
    rollout = serializers.IntegerField(source="job.rollout_id", allow_null=True, default=None)
    rollout_name = serializers.CharField(source="job.rollout.name", allow_null=True, default=None)
    wave = serializers.IntegerField(source="job.wave.index", allow_null=True, default=None)
    reason = serializers.SerializerMethodField()

    class Meta:
        model = Installation
        fields = ["model", "model_name", "version", "version_number", "since", "until", "job", "job_kind",
                  "rollout", "rollout_name", "wave", "reason"]  # fmt: skip

    def get_reason(self, row: Installation) -> str:
        job = row.job
        if job is None:
            return "recorded without a job"
        if job.rollout_id is None:
            return f"deployment {job.id} by {job.created_by}"
        rollout = job.rollout
        if job.kind == JobKind.ROLLBACK:
            return f"rolled back by rollout {job.rollout_id}: {rollout.status_reason if rollout else ''}".strip()
        wave = job.wave.index if job.wave else "?"
        return f"rollout {job.rollout_id} wave {wave} (by {rollout.created_by if rollout else job.created_by})"


class DeviceHistoryQuerySerializer(serializers.Serializer[dict[str, Any]]):
    model = serializers.IntegerField(required=False, min_value=1)
    version = serializers.IntegerField(required=False, min_value=1)


# --- the rollout detail as plain rows -------------------------------------------------------------

# DRF's own representation of a datetime (the ModelSerializers' DateTimeField: ISO 8601, "Z" for UTC), built once
_DATETIME = serializers.DateTimeField()
WAVE_COLUMNS = ("index", "spec", "size", "status", "requires_approval", "approved_by", "install_started_at",
                "bake_started_at", "failed_checks", "finished_at", "online_at_dispatch",
                "offline_at_dispatch")  # fmt: skip
WAVE_DATETIMES = ("install_started_at", "bake_started_at", "finished_at")
GATE_COLUMNS = ("gate", "verdict", "final", "inputs", "figures", "reason", "actor")


def _datetime(value: Any) -> Any:
    return None if value is None else _DATETIME.to_representation(value)


def _rollout_fields(rollout: Rollout) -> dict[str, Any]:
    """RolloutSerializer's fields, in its order, without building a serializer per request."""
    return {
        "id": rollout.pk,
        "name": rollout.name,
        "model": rollout.model_id,
        "model_name": rollout.model.name if rollout.model else None,
        "version": rollout.version_id,
        "version_number": rollout.version.number if rollout.version else None,
        "pipeline": rollout.pipeline_id,
        "pipeline_name": rollout.pipeline.name if rollout.pipeline else None,
        "pipeline_version": rollout.pipeline_version_id,
        "pipeline_version_number": rollout.pipeline_version.number if rollout.pipeline_version else None,
        "status": rollout.status,
        "status_reason": rollout.status_reason,
        "current_wave": rollout.current_wave,
        "skip_gates": rollout.skip_gates,
        "force_rollback": rollout.force_rollback,
        "created_by": rollout.created_by,
        "created_at": _datetime(rollout.created_at),
        "started_at": _datetime(rollout.started_at),
        "finished_at": _datetime(rollout.finished_at),
    }


def rollout_detail(
    rollout: Rollout, *, counts: RolloutCounts, excluded: dict[str, Any], artifact_transfer: dict[str, Any]
) -> dict[str, Any]:
    """What RolloutDetailSerializer gives (its schema stays the contract), built from `.values()` rows: the
    waves in one query, the gate results and events in another (a UNION ALL), their wave's index taken from
    the waves. Model instances and nested serializers over a large rollout's ~130 rows cost about twice the
    request's CPU (docs/benchmarks.md); tests/deployments/test_rollout_detail.py holds both to the same bytes."""
    data = _rollout_fields(rollout)
    plan: RolloutPlan = rollout.plan  # RolloutPlanField
    data["plan"] = plan.stored()
    waves, index = [], {}
    for row in Wave.objects.filter(rollout_id=rollout.pk).order_by("index").values("id", *WAVE_COLUMNS):
        wave_id = row.pop("id")
        index[wave_id] = row["index"]
        for column in WAVE_DATETIMES:
            row[column] = _datetime(row[column])
        wave_counts = counts.waves.get(wave_id, {})
        row["jobs"] = wave_counts.get("jobs", {})
        row["rollbacks"] = wave_counts.get("rollbacks", {})
        waves.append(row)
    data["waves"] = waves
    # gate results and events in one query: the events' columns under the gate results' names
    gates = GateEvaluation.objects.filter(rollout_id=rollout.pk).annotate(event=Value(False))
    events = RolloutEvent.objects.filter(rollout_id=rollout.pk).annotate(
        event=Value(True), gate=F("from_status"), verdict=F("to_status"), final=Value(False),
        inputs=Value(None, output_field=JSONField()), figures=Value(None, output_field=JSONField()),
    )  # fmt: skip
    columns = ("event", "id", "at", "wave_id", *GATE_COLUMNS)
    rows = gates.order_by().values(*columns).union(events.order_by().values(*columns), all=True)
    data["gate_results"], data["timeline"] = [], []
    for row in rows.order_by("event", "at", "id"):
        if row["event"]:
            data["timeline"].append({"wave": index.get(row["wave_id"]), "from_status": row["gate"],
                                     "to_status": row["verdict"], "reason": row["reason"], "actor": row["actor"],
                                     "at": _datetime(row["at"])})  # fmt: skip
        else:
            gate = {"wave": index[row["wave_id"]], **{c: row[c] for c in GATE_COLUMNS}, "at": _datetime(row["at"])}
            data["gate_results"].append(gate)
    data["excluded"] = excluded
    data["artifact_transfer"] = artifact_transfer
    return data
