from __future__ import annotations

import uuid

from django.db import models


class JobStatus(models.TextChoices):
    """A job execution on one device (docs/protocol.md). Only services change it, with a guarded update."""

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
    """One model version to install on one device: the primitive that rollouts are built from."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="jobs")
    model = models.ForeignKey("models_registry.RegisteredModel", on_delete=models.PROTECT, related_name="jobs")
    version = models.ForeignKey("models_registry.ModelVersion", on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=10, choices=JobKind.choices, default=JobKind.INSTALL)
    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED)
    step = models.CharField(max_length=12, choices=JobStep.choices, blank=True)
    progress = models.FloatField(null=True, blank=True)
    reason = models.TextField(blank=True)
    last_seq = models.BigIntegerField(default=-1, help_text="highest device update sequence applied")
    timeout_seconds = models.PositiveIntegerField()
    deadline_at = models.DateTimeField(help_text="not terminal by then: swept to TIMED_OUT")
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # a device has at most one active job per model
            models.UniqueConstraint(
                fields=["device", "model"],
                condition=models.Q(status__in=[JobStatus.QUEUED, JobStatus.IN_PROGRESS]),
                name="one_active_job_per_device_and_model",
            ),
        ]
        indexes = [
            # the timeout sweep: active jobs past their deadline
            models.Index(fields=["status", "deadline_at"], name="job_status_deadline_idx"),
            # a device's jobs (history, jobs/get)
            models.Index(fields=["device", "created_at"], name="job_device_created_idx"),
        ]

    def __str__(self) -> str:
        return f"job {self.id} {self.kind} v{self.version_id} on {self.device_id}: {self.status}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


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
    """Which version ran on which device, from when to when, and the job that put it there."""

    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="installations")
    model = models.ForeignKey("models_registry.RegisteredModel", on_delete=models.PROTECT, related_name="installations")
    version = models.ForeignKey("models_registry.ModelVersion", on_delete=models.PROTECT, related_name="installations")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="installations")
    since = models.DateTimeField()
    until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-since"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "model"], condition=models.Q(until__isnull=True), name="one_current_installation"
            )
        ]
        # a device's history and what is installed now
        indexes = [models.Index(fields=["device", "model", "since"], name="installation_device_idx")]

    def __str__(self) -> str:
        return f"{self.device_id} {self.model_id} v{self.version_id} since {self.since:%Y-%m-%d %H:%M}"
