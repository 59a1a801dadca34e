"""Creating jobs: one device (`deployment_create`) or a rollout's chunk (`deployments_create_many`).

Each job is created QUEUED with its event row and `job.create` audit entry, and its document goes to the
device (jobs/notify through the outbox, or the AWS IoT Jobs notification), all in one transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Prefetch
from django.utils import timezone

from audit.actors import Actor
from audit.services import AuditSpec, audit_record_many
from fleet.models import Device
from models_registry.compatibility import Requirements, profile_of, reasons_for
from models_registry.deployables import Deployable, Family, deployable_columns, deployable_field, family_filter
from models_registry.models import ModelVersion, PipelineVersion
from models_registry.services import model_version_download_grant
from outbox.services import outbox_enqueue_many
from protocol.device_topics import jobs_notify_topic
from protocol.messages import JobsNotify, encode

from .. import aws_notify
from ..exceptions import DeploymentRefused
from ..job_documents import _DOWNLOAD_ACTOR, _absolute, _job_document, _url_ttl
from ..job_envelopes import JobEnvelopes
from ..models import Job, JobEvent, JobKind, JobStatus
from .job_transitions import _stream_rollout_progress


@dataclass(frozen=True)
class JobRequest:
    """One device of a `deployments_create_many` call, with the wave and attempt its job counts under."""

    device: Device
    wave_id: int | None = None
    attempt: int = 1


@dataclass
class DeploymentBatch:
    """What `deployments_create_many` did, by device id: the job created, or why none was."""

    jobs: dict[int, Job] = field(default_factory=dict)
    refused: dict[int, DeploymentRefused] = field(default_factory=dict)


def deployment_create(
    *,
    actor: Actor,
    device: Device,
    version: ModelVersion | None = None,
    pipeline_version: PipelineVersion | None = None,
    deployable: Deployable | None = None,
    kind: str = JobKind.INSTALL,
    timeout_seconds: int | None = None,
    rollout_id: int | None = None,
    wave_id: int | None = None,
    attempt: int = 1,
) -> Job:
    """Create a job installing `version` (or `pipeline_version`: every stage; or either as `deployable`) on
    `device`; queue its notification.

    Refuses (DeploymentRefused) a version that is not deployable, a device that cannot run it (with
    every reason; for a pipeline, every stage's, named by stage), a revoked or unprovisioned device, and a
    second active job for the same model or pipeline.
    A rollout passes its ids: the job then counts in that wave, at most once per device and attempt.
    The one-device case of `deployments_create_many` (the same rules, the same rows).
    """
    batch = deployments_create_many(
        actor=actor, requests=[JobRequest(device, wave_id=wave_id, attempt=attempt)], version=version,
        pipeline_version=pipeline_version, deployable=deployable, kind=kind, timeout_seconds=timeout_seconds,
        rollout_id=rollout_id,
    )  # fmt: skip
    if device.pk in batch.refused:
        raise batch.refused[device.pk]
    return batch.jobs[device.pk]


@dataclass(frozen=True)
class _Target:
    """What a batch deploys (loaded for it: a pipeline version with its stages) and what each device is
    checked against."""

    deployable: Deployable
    requirements: Requirements

    @property
    def family(self) -> Family:
        """The model or pipeline a device may have one active job for."""
        return self.deployable.family

    @property
    def family_name(self) -> str:
        return f"{self.deployable.deployable_kind} {self.deployable.family_name}"


def _target_of(deployable: Deployable) -> _Target:
    loaded = deployable.for_deployment()
    return _Target(deployable=loaded, requirements=loaded.compatibility_requirements())


@transaction.atomic
def deployments_create_many(
    *,
    actor: Actor,
    requests: Sequence[JobRequest],
    version: ModelVersion | None = None,
    pipeline_version: PipelineVersion | None = None,
    deployable: Deployable | None = None,
    kind: str = JobKind.INSTALL,
    timeout_seconds: int | None = None,
    rollout_id: int | None = None,
) -> DeploymentBatch:
    """Create the jobs of many devices for one version (or pipeline version, or either as `deployable`) and
    queue their notifications, in a number of queries that does not grow with the number of devices
    (rollout dispatch, a chunk a tick).

    Each device is refused or gets its job exactly as `deployment_create` would: a version that is not
    deployable refuses every device (field "version"/"pipeline_version"); a missing or revoked device, one
    that cannot run the version (every reason) or one that already has an active job for the model or
    pipeline is refused alone (field "device") and the others still get theirs. For each job: its QUEUED
    event, a `job.create` audit entry and its jobs/notify message in the outbox, all in this transaction.
    One artifact URL per version serves the whole batch (it names no device), audited once with the number
    of jobs it went to; gateway mirrors stay per device. ValueError for a device asked for twice.
    """
    given: list[Deployable] = [d for d in (version, pipeline_version, deployable) if d is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of version and pipeline_version")
    device_ids = [request.device.pk for request in requests]
    if len(set(device_ids)) != len(device_ids):
        raise ValueError("a device can get one job per call")
    batch = DeploymentBatch()
    target = _target_of(given[0])
    if not requests:
        return batch
    subject = target.deployable
    if not subject.is_deployable:
        refusal = DeploymentRefused(
            f"version {subject} is {subject.status}: only published versions are deployed",
            field=deployable_field(subject),
        )
        batch.refused = dict.fromkeys(device_ids, refusal)
        return batch
    eligible = _eligible(requests, target, batch.refused)
    timeout = timeout_seconds or settings.JOB_TIMEOUT_SECONDS
    jobs = _new_jobs(eligible, target, actor=actor, kind=kind, timeout=timeout, rollout_id=rollout_id,
                     refused=batch.refused)  # fmt: skip
    jobs = _insert_jobs(jobs, target.family, target.family_name, batch.refused)
    if not jobs:
        return batch
    JobEvent.objects.bulk_create(
        [JobEvent(job=job, to_status=JobStatus.QUEUED, actor=actor.label) for job in jobs], batch_size=1000
    )
    grant_audits = _notify(jobs, target, timeout)
    # after the CPU work above: the chain head stays locked from here to the commit
    audit_record_many(
        _create_audits(jobs, target, actor=actor, kind=kind, timeout=timeout, rollout_id=rollout_id) + grant_audits
    )
    _stream_rollout_progress(rollout_id)
    batch.jobs = {job.device_id: job for job in jobs}
    return batch


def _create_audits(
    jobs: list[Job], target: _Target, *, actor: Actor, kind: str, timeout: int, rollout_id: int | None
) -> list[AuditSpec]:
    """A `job.create` audit entry per job (with its rollout, wave and attempt when a rollout sent it)."""
    described, changed = (
        str(target.deployable),
        {deployable_field(target.deployable): str(target.deployable), "kind": kind, "timeout_seconds": timeout},
    )
    return [
        AuditSpec(
            actor=actor,
            action="job.create",
            object_type="job",
            object_id=job.pk,
            object_repr=f"{described} on {job.device.uid}",
            changes={
                "device": job.device.uid,
                **changed,
                **({"rollout": rollout_id, "wave": job.wave_id, "attempt": job.attempt} if rollout_id else {}),
            },
        )
        for job in jobs
    ]


def _eligible(
    requests: Sequence[JobRequest], target: _Target, refused: dict[int, DeploymentRefused]
) -> list[tuple[JobRequest, Device]]:
    """The requests whose device exists, is not revoked and can run the target; the others go to `refused`."""
    # runtimes as a plain list: Django builds a queryset per device to cache a prefetched relation
    devices = (
        Device.objects.select_related("site", "parent")
        .prefetch_related(Prefetch("runtimes", to_attr="runtime_rows"))
        .in_bulk([request.device.pk for request in requests])
    )
    eligible: list[tuple[JobRequest, Device]] = []
    for request in requests:
        device = devices.get(request.device.pk)
        if device is None:
            refused[request.device.pk] = DeploymentRefused(
                f"device {request.device.uid} no longer exists", field="device"
            )
        elif device.is_revoked:
            refused[device.pk] = DeploymentRefused(f"device {device.uid} is revoked", field="device")
        elif reasons := reasons_for(target.requirements, profile_of(device, device.runtime_rows)):  # type: ignore[attr-defined]
            refused[device.pk] = DeploymentRefused(
                f"device {device.uid} cannot run {target.deployable}: {'; '.join(reasons)}", field="device"
            )
        else:
            eligible.append((request, device))
    return eligible


def _new_jobs(
    eligible: list[tuple[JobRequest, Device]],
    target: _Target,
    *,
    actor: Actor,
    kind: str,
    timeout: int,
    rollout_id: int | None,
    refused: dict[int, DeploymentRefused],
) -> list[Job]:
    """The (unsaved) jobs of the eligible devices; a device with an active job of the family goes to `refused`."""
    busy = {
        device_id: (job_id, status)
        for device_id, job_id, status in Job.objects.active()
        .filter(family_filter(target.family), device_id__in=[device.pk for _, device in eligible])
        .values_list("device_id", "id", "status")
    }
    now = timezone.now()
    jobs: list[Job] = []
    for request, device in eligible:
        if device.pk in busy:
            job_id, status = busy[device.pk]
            refused[device.pk] = _busy(device, target.family_name, job_id, status)
            continue
        jobs.append(
            Job(
                id=uuid.uuid4(),
                device=device,
                **deployable_columns(target.deployable),
                kind=kind,
                timeout_seconds=timeout,
                deadline_at=now + dt.timedelta(seconds=timeout),
                created_by=actor.label,
                rollout_id=rollout_id,
                wave_id=request.wave_id,
                attempt=request.attempt,
            )
        )
    return jobs


def _busy(device: Device, family_name: str, job_id: object | None, status: str = "") -> DeploymentRefused:
    return DeploymentRefused(
        f"device {device.uid} already has an active job for {family_name}"
        + (f": {job_id} ({status})" if job_id else ""),
        field="device",
    )


def _insert_jobs(jobs: list[Job], family: Family, family_name: str, refused: dict[int, DeploymentRefused]) -> list[Job]:
    """Insert the jobs in one statement; if a concurrent writer got a device first (a unique constraint),
    one by one instead, so every other device still gets its job and that one its exact reason."""
    if len(jobs) > 1:
        try:
            with transaction.atomic():
                Job.objects.bulk_create(jobs, batch_size=1000)
            return jobs
        except IntegrityError:
            pass
    created: list[Job] = []
    for job in jobs:
        try:
            with transaction.atomic():
                job.save(force_insert=True)
        except IntegrityError:
            active = Job.objects.active().filter(family_filter(family), device=job.device).first()
            refused[job.device_id] = _busy(
                job.device, family_name, active.id if active else None, active.status if active else ""
            )
            continue
        created.append(job)
    return created


def _notify(jobs: list[Job], target: _Target, timeout: int) -> list[AuditSpec]:
    """Send each job's document to its device in its dialect (jobs/notify through the outbox, or the AWS IoT
    Jobs notification), with one artifact URL per version for the whole batch; the URLs' audit entries."""
    ttl = _url_ttl(timeout)
    grants = {
        artifact.pk: model_version_download_grant(actor=_DOWNLOAD_ACTOR, version=artifact, ttl=ttl, jobs=len(jobs))
        for artifact in target.deployable.artifacts()
    }
    urls = {pk: _absolute(url) for pk, (url, _) in grants.items()}
    fields = target.deployable.document_fields(lambda version: urls[version.pk])
    envelopes = JobEnvelopes()
    documents = {job.pk: _job_document(job, target.deployable, fields, ttl=ttl, envelopes=envelopes) for job in jobs}
    outbox_enqueue_many(
        messages=[
            (
                jobs_notify_topic(job.device.uid),
                encode(JobsNotify(schema_version=1, jobs=[documents[job.pk]], cancel=[])),
            )
            for job in jobs
            if not aws_notify.speaks_aws(job.device)
        ]
    )
    aws_notify.aws_jobs_notify(devices=[j.device for j in jobs if aws_notify.speaks_aws(j.device)], documents=documents)
    return [audit for _, audit in grants.values()]
