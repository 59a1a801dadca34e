"""Building rollout state the way the code does: versions through the registry, jobs through the services."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

from django.utils import timezone

from audit.actors import Actor
from deployments.models import Job, JobStatus
from deployments.services.device_updates import job_apply_device_update
from models_registry.models import ModelVersion
from models_registry.samples import build_classifier
from models_registry.services import model_version_create, model_version_publish
from protocol.messages import JobUpdate
from telemetry.models import TelemetrySample

ACTOR = Actor.system("tests")


def publish_next_version(previous: ModelVersion, name: str = "fogdeck-sample-classifier-next") -> ModelVersion:
    """Another published version of the same model, computing exactly what the previous one does."""
    version = model_version_create(
        actor=ACTOR,
        model=previous.model,
        artifact=io.BytesIO(build_classifier(name=name)),
        format="onnx",
        framework="other",
        requirements={"runtime": "onnxruntime", "min_runtime_version": "1.16", "min_memory_mb": 512},
    )
    return model_version_publish(actor=ACTOR, version=version)


def finish(job: Job, status: str = JobStatus.SUCCEEDED) -> None:
    """The device reports the job in progress, then finished."""
    uid = job.device.uid
    for seq, state in ((1, JobStatus.IN_PROGRESS), (2, status)):
        update = JobUpdate(schema_version=1, job_id=str(job.id), seq=seq, status=state, ts=timezone.now())
        job_apply_device_update(uid=uid, update=update)


def telemetry(device_ids: list[int], model: str, number: int, at: dt.datetime, p95: float, **extra: Any) -> None:
    TelemetrySample.objects.bulk_create(
        TelemetrySample(
            device_id=pk, model_name=model, version_number=number, ts=at, interval_s=1.0,
            requests=extra.get("requests", 50), errors=extra.get("errors", 0),
            p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 1.2, max_ms=p95 * 1.5,
        )
        for pk in device_ids
    )  # fmt: skip


def end_job(job: Job, status: str, *, step: str | None = None, reason: str = "") -> None:
    """The device reports the job in progress (at `step`), then `status` with `reason`."""
    uid = job.device.uid
    now = timezone.now()
    job_apply_device_update(
        uid=uid, update=JobUpdate(schema_version=1, job_id=str(job.id), seq=1, status="IN_PROGRESS", step=step, ts=now)
    )
    job_apply_device_update(
        uid=uid,
        update=JobUpdate(schema_version=1, job_id=str(job.id), seq=2, status=status, reason=reason or None, ts=now),
    )


FAILURES = {  # device index in the fleet -> how its install ends
    0: (JobStatus.FAILED, "verifying", "checksum mismatch"),
    1: (JobStatus.REJECTED, None, "runtime onnxruntime 1.18 required"),
    2: (JobStatus.FAILED, "activating", "model failed to load: out of memory"),
}


def rolled_back_rollout(previous: ModelVersion, devices: list[Any]) -> tuple[Any, dict[str, tuple[str, str, str]]]:
    """A rollout of the next version to `devices` (every one with `previous` installed) in one wave, where
    three devices fail or reject and one times out, then rolled back by an operator until ROLLED_BACK.

    Returns the rollout and {device uid: (status, last step, reason)} of the failed ones."""
    from deployments.models import JobKind, RolloutStatus
    from deployments.services.job_endings import jobs_sweep_timeouts
    from deployments.services.jobs import deployment_create
    from deployments.services.rollout_drafts import rollout_create
    from deployments.services.rollouts import rollout_rollback, rollout_start
    from deployments.services.tick import rollout_advance

    for device in devices:
        finish(deployment_create(actor=ACTOR, device=device, version=previous, timeout_seconds=60))
    version = publish_next_version(previous)
    plan = {
        "target": {"devices": [d.pk for d in devices]},
        "waves": [{"percent": 100}],
        "install_gate": {"min_success_pct": 10, "max_failure_pct": 90, "min_finished": 1},
        "rate_per_minute": 1_000_000,
        "job_timeout_seconds": 60,
        "seed": 3,
    }
    rollout = rollout_create(actor=ACTOR, version=version, plan=plan, name="outcomes")
    rollout_start(actor=ACTOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    jobs = {j.device_id: j for j in Job.objects.filter(rollout=rollout).select_related("device")}
    expected: dict[str, tuple[str, str, str]] = {}
    for index, device in enumerate(devices):
        job = jobs[device.pk]
        if index in FAILURES:
            status, step, reason = FAILURES[index]
            end_job(job, status, step=step, reason=reason)
            expected[device.uid] = (status, step or "", reason)
        elif index == 3:
            expected[device.uid] = (JobStatus.TIMED_OUT, "", "")  # never answers
        else:
            finish(job)
    swept = jobs_sweep_timeouts(actor=ACTOR, now=timezone.now() + dt.timedelta(minutes=10))
    assert swept == [str(jobs[devices[3].pk].pk)], swept
    timed_out = Job.objects.get(pk=jobs[devices[3].pk].pk)
    expected[devices[3].uid] = (JobStatus.TIMED_OUT, timed_out.step, timed_out.reason)
    rollout_rollback(actor=Actor.system("tests-operator"), rollout=rollout, reason="too many failures")
    rollout_advance(rollout_id=rollout.pk)
    for job in Job.objects.filter(rollout=rollout, kind=JobKind.ROLLBACK, status=JobStatus.QUEUED).select_related(
        "device"
    ):
        finish(job)
    rollout_advance(rollout_id=rollout.pk)
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.ROLLED_BACK, (rollout.status, rollout.status_reason)
    return rollout, expected


class RecordingBridge:
    """What `deployments.bridge_handlers` needs of the bridge (tallies, answers after commit), kept for a
    test to read."""

    def __init__(self) -> None:
        self.counted: list[str] = []
        self.answers: list[tuple[str, bytes]] = []

    def count_applied(self, kind: str, count: int = 1) -> None:
        self.counted.append(kind)

    def answer_after_commit(self, topic: str, payload: bytes) -> None:
        self.answers.append((topic, payload))
