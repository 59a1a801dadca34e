from __future__ import annotations

import uuid
from typing import Any

from django.db import models

from models_registry.deployables import Deployable, Family, deployable_of, family_of

from .plan import RolloutPlan

# select_related() of a row's paired version columns with what its Deployable reads (the family's name)
DEPLOYABLE_RELATED = ("version__model", "pipeline_version__pipeline")

# Each state machine below: a Status, its TRANSITIONS (from-state -> the states it may move to) and its
# TERMINAL set (finished: `finished_at` is stamped on entering it, no worker moves it on by itself), also
# on the model's class, where core.transitions.transition() reads them. Only services change a status.


class JobStatus(models.TextChoices):
    """A job execution on one device (docs/protocol.md)."""

    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    CANCELED = "CANCELED"


TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.TIMED_OUT, JobStatus.CANCELED}
)
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.IN_PROGRESS})
TRANSITIONS: dict[str, frozenset[str]] = {
    JobStatus.QUEUED: frozenset({JobStatus.IN_PROGRESS, *TERMINAL}),
    JobStatus.IN_PROGRESS: TERMINAL,
    **{status: frozenset() for status in TERMINAL},
}


class JobKind(models.TextChoices):
    INSTALL = "install"
    ROLLBACK = "rollback"


class JobStep(models.TextChoices):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    ACTIVATING = "activating"


class JobQuerySet(models.QuerySet["Job"]):
    def active(self) -> JobQuerySet:
        return self.filter(status__in=ACTIVE)

    def for_device_uid(self, uid: str) -> JobQuerySet:
        return self.filter(device__uid=uid)


class Job(models.Model):
    """One model version (or one pipeline version) to install on one device: what rollouts are built from.

    Exactly one of `version` and `pipeline_version` is set (a check constraint); `model`/`pipeline` follow it.
    `deployable` is whichever it is (models_registry/deployables.py writes and reads the pairs).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="jobs")
    model = models.ForeignKey(
        "models_registry.RegisteredModel", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    version = models.ForeignKey(
        "models_registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    pipeline = models.ForeignKey(
        "models_registry.Pipeline", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    pipeline_version = models.ForeignKey(
        "models_registry.PipelineVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    kind = models.CharField(max_length=10, choices=JobKind.choices, default=JobKind.INSTALL)
    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED)
    step = models.CharField(max_length=12, choices=JobStep.choices, blank=True)
    progress = models.FloatField(null=True, blank=True)
    reason = models.TextField(blank=True)
    status_details = models.JSONField(
        default=dict, blank=True, help_text="the device's statusDetails (AWS IoT Jobs dialect, protocol/aws_jobs.py)"
    )
    last_seq = models.BigIntegerField(default=-1, help_text="highest device update sequence applied")
    timeout_seconds = models.PositiveIntegerField()
    rollout = models.ForeignKey("Rollout", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    wave = models.ForeignKey("Wave", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    attempt = models.PositiveSmallIntegerField(default=1, help_text="retry number within a rollout wave")
    deadline_at = models.DateTimeField(help_text="not terminal by then: swept to TIMED_OUT")
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = JobQuerySet.as_manager()

    Status = JobStatus
    TRANSITIONS = TRANSITIONS
    TERMINAL = TERMINAL

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # a device has at most one active job per model
            models.UniqueConstraint(
                fields=["device", "model"],
                condition=models.Q(status__in=[JobStatus.QUEUED, JobStatus.IN_PROGRESS]),
                name="one_active_job_per_device_and_model",
            ),
            models.UniqueConstraint(
                fields=["device", "pipeline"],
                condition=models.Q(status__in=[JobStatus.QUEUED, JobStatus.IN_PROGRESS]),
                name="one_active_job_per_device_and_pipeline",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(version__isnull=False, model__isnull=False, pipeline_version__isnull=True)
                    | models.Q(version__isnull=True, pipeline_version__isnull=False, pipeline__isnull=False)
                ),
                name="job_targets_a_version_or_a_pipeline_version",
            ),
            # a rollout sends a device one execution per wave, kind and attempt, even if a worker dies mid-wave
            models.UniqueConstraint(
                fields=["rollout", "wave", "device", "kind", "attempt"],
                condition=models.Q(rollout__isnull=False),
                name="one_job_per_rollout_wave_device_attempt",
            ),
        ]
        indexes = [
            # the timeout sweep: active jobs past their deadline
            models.Index(fields=["status", "deadline_at"], name="job_status_deadline_idx"),
            # a device's jobs (history, jobs/get)
            models.Index(fields=["device", "created_at"], name="job_device_created_idx"),
        ]

    def __str__(self) -> str:
        return f"job {self.id} {self.kind} {self.deployable} on {self.device_id}: {self.status}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def deployable(self) -> Deployable:
        """What the job installs: the model version or the pipeline version."""
        return _required(self, deployable_of(self))

    @property
    def family(self) -> Family:
        """What the job installs a version of, from its columns: ("pipeline", pipeline_id) or ("model", model_id)."""
        return family_of(self)


def _required(row: models.Model, deployable: Deployable | None) -> Deployable:
    if deployable is None:
        raise ValueError(f"{type(row).__name__} {row.pk} names neither a version nor a pipeline version")
    return deployable


class JobEvent(models.Model):
    """One transition of a job (the job's timeline)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=12, blank=True)
    to_status = models.CharField(max_length=12)
    step = models.CharField(max_length=12, blank=True)
    reason = models.TextField(blank=True)
    actor = models.CharField(max_length=200)
    seq = models.BigIntegerField(null=True, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.job_id}: {self.from_status or '-'} -> {self.to_status}"


class Installation(models.Model):
    """Which version (or pipeline version) ran on which device, from when to when, and the job that put it there."""

    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="installations")
    model = models.ForeignKey(
        "models_registry.RegisteredModel",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="installations",
    )
    version = models.ForeignKey(
        "models_registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="installations"
    )
    pipeline = models.ForeignKey(
        "models_registry.Pipeline", null=True, blank=True, on_delete=models.PROTECT, related_name="installations"
    )
    pipeline_version = models.ForeignKey(
        "models_registry.PipelineVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="installations",
    )
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="installations")
    since = models.DateTimeField()
    until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-since"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "model"], condition=models.Q(until__isnull=True), name="one_current_installation"
            ),
            models.UniqueConstraint(
                fields=["device", "pipeline"],
                condition=models.Q(until__isnull=True),
                name="one_current_pipeline_installation",
            ),
        ]
        # a device's history and what is installed now
        indexes = [models.Index(fields=["device", "model", "since"], name="installation_device_idx")]

    def __str__(self) -> str:
        what = f"pipeline {self.pipeline_version_id}" if self.pipeline_version_id else f"v{self.version_id}"
        return f"{self.device_id} {what} since {self.since:%Y-%m-%d %H:%M}"


# --- staged rollouts ------------------------------------------------------------------------------


class RolloutStatus(models.TextChoices):
    """A staged rollout of one model version over a set of devices (docs/architecture.md, "Rollouts")."""

    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


ROLLOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    RolloutStatus.DRAFT: frozenset({RolloutStatus.RUNNING, RolloutStatus.ABORTED}),
    RolloutStatus.RUNNING: frozenset(
        {RolloutStatus.PAUSED, RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.ROLLING_BACK}
    ),
    RolloutStatus.PAUSED: frozenset({RolloutStatus.RUNNING, RolloutStatus.ABORTED, RolloutStatus.ROLLING_BACK}),
    # a finished or stopped rollout can still be undone on demand
    RolloutStatus.COMPLETED: frozenset({RolloutStatus.ROLLING_BACK}),
    RolloutStatus.ABORTED: frozenset({RolloutStatus.ROLLING_BACK}),
    RolloutStatus.ROLLING_BACK: frozenset({RolloutStatus.ROLLED_BACK}),
    RolloutStatus.ROLLED_BACK: frozenset(),
}
# finished: the engine is done with it (a person may still roll a completed or aborted rollout back)
ROLLOUT_TERMINAL = frozenset({RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK})
# states in which a rollout holds its devices (one such rollout per device and model)
ROLLOUT_ACTIVE = frozenset({RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.ROLLING_BACK})
# states the beat tick works on
ROLLOUT_TICKED = frozenset({RolloutStatus.RUNNING, RolloutStatus.ROLLING_BACK})


class WaveStatus(models.TextChoices):
    PENDING = "pending"
    AWAITING_APPROVAL = "awaiting_approval"
    INSTALLING = "installing"  # jobs dispatched at the rate limit; the install gate watches them
    BAKING = "baking"  # the health gate compares the wave with the baseline over the bake time
    HELD = "held"  # inconclusive: a person decides (approve, resume to bake again, rollback, abort)
    PASSED = "passed"
    FAILED = "failed"
    CANCELED = "canceled"


WAVE_TERMINAL = frozenset({WaveStatus.PASSED, WaveStatus.FAILED, WaveStatus.CANCELED})
WAVE_TRANSITIONS: dict[str, frozenset[str]] = {
    WaveStatus.PENDING: frozenset({WaveStatus.AWAITING_APPROVAL, WaveStatus.INSTALLING, WaveStatus.CANCELED}),
    WaveStatus.AWAITING_APPROVAL: frozenset({WaveStatus.INSTALLING, WaveStatus.CANCELED}),
    WaveStatus.INSTALLING: frozenset({WaveStatus.BAKING, WaveStatus.PASSED, WaveStatus.FAILED, WaveStatus.CANCELED}),
    WaveStatus.BAKING: frozenset({WaveStatus.PASSED, WaveStatus.FAILED, WaveStatus.HELD, WaveStatus.CANCELED}),
    WaveStatus.HELD: frozenset({WaveStatus.BAKING, WaveStatus.PASSED, WaveStatus.FAILED, WaveStatus.CANCELED}),
    **{status: frozenset() for status in WAVE_TERMINAL},
}


class GateKind(models.TextChoices):
    INSTALL = "install"
    HEALTH = "health"
    APPROVAL = "approval"


class GateVerdict(models.TextChoices):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


class RolloutPlanField(models.JSONField):
    """`Rollout.plan`: a RolloutPlan in Python, its JSON in the database (plans stored before the type
    existed are read with today's defaults)."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        value = super().from_db_value(value, expression, connection)
        return RolloutPlan.from_stored(value) if isinstance(value, dict) else value

    def to_python(self, value: Any) -> Any:
        if isinstance(value, dict):
            return RolloutPlan.from_stored(value)
        return value

    def get_prep_value(self, value: Any) -> Any:
        if isinstance(value, RolloutPlan):
            value = value.stored()
        return super().get_prep_value(value)

    def value_to_string(self, obj: models.Model) -> Any:
        value = self.value_from_object(obj)
        return value.stored() if isinstance(value, RolloutPlan) else value


class RolloutQuerySet(models.QuerySet["Rollout"]):
    def active(self) -> RolloutQuerySet:
        return self.filter(status__in=ROLLOUT_ACTIVE)


class Rollout(models.Model):
    """One version (or one pipeline version) over a target in waves; `plan` is frozen when it starts.

    Exactly one of `version` and `pipeline_version` is set; `deployable` is whichever it is.
    """

    name = models.CharField(max_length=200, blank=True)
    model = models.ForeignKey(
        "models_registry.RegisteredModel", null=True, blank=True, on_delete=models.PROTECT, related_name="rollouts"
    )
    version = models.ForeignKey(
        "models_registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="rollouts"
    )
    pipeline = models.ForeignKey(
        "models_registry.Pipeline", null=True, blank=True, on_delete=models.PROTECT, related_name="rollouts"
    )
    pipeline_version = models.ForeignKey(
        "models_registry.PipelineVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="rollouts"
    )
    status = models.CharField(max_length=12, choices=RolloutStatus.choices, default=RolloutStatus.DRAFT)
    status_reason = models.TextField(blank=True)
    plan = RolloutPlanField(help_text="the RolloutPlan (deployments/plan.py), frozen once created")
    seed = models.BigIntegerField()
    current_wave = models.PositiveSmallIntegerField(null=True, blank=True, help_text="index of the wave in progress")
    skip_gates = models.BooleanField(default=False, help_text="emergency: remaining waves promote without gates")
    force_rollback = models.BooleanField(
        default=False, help_text="emergency rollback: install jobs in progress are canceled too, not only queued ones"
    )
    last_dispatch_at = models.DateTimeField(null=True, blank=True, help_text="for the dispatch rate limit")
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RolloutQuerySet.as_manager()

    Status = RolloutStatus
    TRANSITIONS = ROLLOUT_TRANSITIONS
    TERMINAL = ROLLOUT_TERMINAL

    class Meta:
        ordering = ["-created_at"]
        # the beat tick: rollouts by status
        indexes = [models.Index(fields=["status"], name="rollout_status_idx")]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(version__isnull=False, model__isnull=False, pipeline_version__isnull=True)
                    | models.Q(version__isnull=True, pipeline_version__isnull=False, pipeline__isnull=False)
                ),
                name="rollout_targets_a_version_or_a_pipeline_version",
            )
        ]

    def __str__(self) -> str:
        return f"rollout {self.pk} of {self.deployable}: {self.status}"

    @property
    def deployable(self) -> Deployable:
        """What is rolled out: the model version or the pipeline version (load DEPLOYABLE_RELATED)."""
        return _required(self, deployable_of(self))


class Wave(models.Model):
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="waves")
    index = models.PositiveSmallIntegerField()
    spec = models.JSONField(default=dict, help_text="the plan's wave: percent or count, pins, approval")
    size = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=20, choices=WaveStatus.choices, default=WaveStatus.PENDING)
    requires_approval = models.BooleanField(default=False)
    approved_by = models.CharField(max_length=200, blank=True)
    install_started_at = models.DateTimeField(null=True, blank=True)
    bake_started_at = models.DateTimeField(null=True, blank=True)
    last_check_at = models.DateTimeField(null=True, blank=True)
    failed_checks = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)
    online_at_dispatch = models.PositiveIntegerField(
        null=True, blank=True, help_text="the wave's devices reachable when its dispatch started (after moves)"
    )
    offline_at_dispatch = models.JSONField(
        default=dict, blank=True,
        help_text="devices unreachable when dispatch started, by what became of them: "
        '{"replaced": [{"device": uid, "by": uid}], "deferred": [uid], "dispatched": [uid]}',
    )  # fmt: skip

    Status = WaveStatus
    TRANSITIONS = WAVE_TRANSITIONS
    TERMINAL = WAVE_TERMINAL

    class Meta:
        ordering = ["rollout", "index"]
        constraints = [models.UniqueConstraint(fields=["rollout", "index"], name="wave_index_unique_per_rollout")]

    def __str__(self) -> str:
        return f"wave {self.index} of rollout {self.rollout_id}: {self.status}"


class RolloutTarget(models.Model):
    """One device of a rollout: its wave (none when excluded, with the reasons), baseline and jobs."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="targets")
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="rollout_targets")
    wave = models.ForeignKey(Wave, null=True, blank=True, on_delete=models.CASCADE, related_name="targets")
    excluded_reasons = models.JSONField(default=list, blank=True)
    baseline_version = models.ForeignKey(
        "models_registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    baseline_pipeline_version = models.ForeignKey(
        "models_registry.PipelineVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="in a pipeline rollout: the pipeline version the device ran before",
    )
    profile = models.CharField(max_length=200, help_text="hardware profile: arch|cpu|accelerator")
    site_id = models.BigIntegerField(null=True)
    tier = models.CharField(max_length=8)
    order = models.PositiveIntegerField(default=0, help_text="dispatch order within the wave")
    attempts = models.PositiveSmallIntegerField(default=0)
    install_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    rollback_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    skip_reason = models.TextField(blank=True, help_text="why no job could be created for it")

    class Meta:
        ordering = ["rollout", "order"]
        constraints = [models.UniqueConstraint(fields=["rollout", "device"], name="rollout_target_unique_device")]
        indexes = [
            # dispatch: a wave's targets without a job, in order; counts per wave
            models.Index(fields=["wave", "order"], name="rollout_target_wave_idx"),
            # conflicts: a device's targets in active rollouts
            models.Index(fields=["device", "rollout"], name="rollout_target_device_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} in rollout {self.rollout_id} wave {self.wave_id}"

    @property
    def is_excluded(self) -> bool:
        return bool(self.excluded_reasons)

    @property
    def baseline(self) -> Deployable | None:
        """What the device ran before the rollout, to compare with and go back to (None: a first install)."""
        return deployable_of(self, prefix="baseline_")


# a target with a baseline to compare with and go back to (either kind of rollout)
HAS_BASELINE = models.Q(baseline_version__isnull=False) | models.Q(baseline_pipeline_version__isnull=False)


class RolloutEvent(models.Model):
    """The rollout's timeline: transitions of the rollout and its waves, and notes."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="events")
    wave = models.ForeignKey(Wave, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20)
    reason = models.TextField(blank=True)
    actor = models.CharField(max_length=200)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"rollout {self.rollout_id}: {self.from_status or '-'} -> {self.to_status}"


class GateEvaluation(models.Model):
    """One evaluation of a gate: what it looked at, the figures and the verdict."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="gate_results")
    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="gate_results")
    gate = models.CharField(max_length=10, choices=GateKind.choices)
    verdict = models.CharField(max_length=12, choices=GateVerdict.choices)
    final = models.BooleanField(default=False, help_text="decided the wave (an intermediate check is not)")
    inputs = models.JSONField(default=dict)
    figures = models.JSONField(default=dict)
    reason = models.TextField(blank=True)
    actor = models.CharField(max_length=200)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.gate} gate of wave {self.wave_id}: {self.verdict}"


class CountKind(models.TextChoices):
    """What a RolloutCount row counts (deployments/services/rollout_counts.py keeps them)."""

    JOBS = "jobs"  # a wave's devices by the state of their install job (NOT_SENT, SKIPPED without one)
    ROLLBACKS = "rollbacks"  # a wave's rollback jobs by state
    EXCLUDED = "excluded"  # the rollout's excluded devices (no wave), state ""
    EXCLUDED_REASON = "excluded_reason"  # the same by reason (a device may have several), state the reason


class RolloutCount(models.Model):
    """A rollout's device counts (per wave by job state, excluded devices by reason) as deltas: the sum of
    `delta` per (wave, kind, state) is what aggregating the rollout's targets and jobs would give, kept in
    the same transaction as each change (rollout_counts.py, the one home of the rule), so the rollout's
    page and detail read a few rows rather than joining every target to its jobs. Rows are only ever
    inserted (no row lock is shared by concurrent job updates), and the rollout tick folds them into one
    row per key (`rollout_counts_compact`)."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="counts")
    wave = models.ForeignKey(Wave, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=CountKind.choices)
    state = models.CharField(max_length=1000, blank=True)
    delta = models.IntegerField()

    class Meta:
        # the rollout detail, page and stream: a rollout's rows summed per (wave, kind, state); compaction
        indexes = [models.Index(fields=["rollout", "wave"], name="rollout_count_rollout_idx")]

    def __str__(self) -> str:
        return f"rollout {self.rollout_id} wave {self.wave_id} {self.kind} {self.state}: {self.delta:+d}"
