"""Single-device deployments: creating jobs, applying device updates, timeouts and cancellation.

Every status change goes through `_transition`, a guarded update that can only move a job forward
(TRANSITIONS in models.py); the job's event row and audit entry are written in the same transaction,
and MQTT messages to the device go through the outbox in that transaction too.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Prefetch
from django.utils import timezone

from audit.actors import Actor
from audit.services import AuditSpec, audit_record_many
from endpoints.invalidation import resolve_cache_invalidate
from fleet.models import Device
from models_registry.compatibility import (
    Requirements,
    pipeline_requirements_of,
    profile_of,
    reasons_for,
    requirements_of,
)
from models_registry.models import ModelVersion, PipelineStage, PipelineVersion
from models_registry.services import model_version_download_grant, model_version_download_url
from mqttbridge.outbox import outbox_enqueue, outbox_enqueue_many
from protocol.device_topics import jobs_get_accepted_topic, jobs_notify_topic
from protocol.messages import (
    JobDocument,
    JobsGetAccepted,
    JobsNotify,
    JobUpdate,
    PipelineStageDocument,
    StageCondition,
    encode,
)
from protocol.pipelines import PIPELINE_FORMAT
from telemetry.streaming import rollout_stream_touch

from .artifact_mirrors import job_artifact_mirrors
from .exceptions import DeploymentRefused, InvalidTransition
from .models import ACTIVE, TERMINAL, TRANSITIONS, Installation, Job, JobEvent, JobKind, JobStatus

_DOWNLOAD_ACTOR = Actor.system("deployments:job-document")

ArtifactUrl = Callable[[ModelVersion], str]
"""A version's absolute artifact URL for a job document: fresh per document, or issued once per batch."""


def _absolute(url: str) -> str:
    return url if url.startswith(("http://", "https://")) else settings.PUBLIC_BASE_URL.rstrip("/") + url


def _device_artifact_url(version: ModelVersion, ttl: int) -> str:
    """An absolute time-limited URL: S3 presigned, or our signed local URL under PUBLIC_BASE_URL."""
    return _absolute(model_version_download_url(actor=_DOWNLOAD_ACTOR, version=version, ttl=ttl))


def _url_ttl(timeout_seconds: int) -> int:
    """An artifact URL outlives the job it is sent with."""
    return max(settings.ARTIFACT_URL_TTL_SECONDS, timeout_seconds)


def _stage_documents(stages: Sequence[PipelineStage], url_of: ArtifactUrl) -> list[PipelineStageDocument]:
    """Per stage (in order), the stage version's own manifest and its artifact URL; the same for every device."""
    return [
        PipelineStageDocument(
            name=stage.name,
            model=stage.version.model.name,
            model_id=stage.version.model_id,
            version=stage.version.number,
            version_id=stage.version.pk,
            format=stage.version.format,
            artifact_url=url_of(stage.version),
            sha256=stage.version.sha256,
            size=stage.version.size,
            manifest=stage.version.manifest,
            signature=stage.version.signature,
            key_id=stage.version.key_id,
            condition=StageCondition(**stage.condition) if stage.condition else None,
        )
        for stage in stages
    ]


def _job_document(
    job: Job, *, ttl: int, url_of: ArtifactUrl, stages: list[PipelineStageDocument] | None = None
) -> JobDocument:
    """A job's document; a pipeline job's `stages` come built (`_stage_documents`), a version job's mirrors
    are worked out here from `job.device` and its parent (load both)."""
    if job.pipeline_version_id is not None:
        pipeline_version = job.pipeline_version
        assert pipeline_version is not None and stages is not None  # noqa: S101 - a pipeline job has both
        return JobDocument(
            job_id=str(job.id),
            kind=job.kind,
            model=pipeline_version.pipeline.name,
            model_id=pipeline_version.pipeline_id,
            version=pipeline_version.number,
            version_id=pipeline_version.pk,
            format=PIPELINE_FORMAT,
            manifest=pipeline_version.manifest,
            signature=pipeline_version.signature,
            key_id=pipeline_version.key_id,
            timeout_seconds=job.timeout_seconds,
            created_at=job.created_at,
            stages=stages,
        )
    version = job.version
    assert version is not None  # noqa: S101 - a job has a version or a pipeline version (a check constraint)
    artifact_url = url_of(version)
    return JobDocument(
        job_id=str(job.id),
        kind=job.kind,
        model=version.model.name,
        model_id=version.model_id,
        version=version.number,
        version_id=version.pk,
        format=version.format,
        artifact_url=artifact_url,
        sha256=version.sha256,
        size=version.size,
        manifest=version.manifest,
        signature=version.signature,
        key_id=version.key_id,
        timeout_seconds=job.timeout_seconds,
        created_at=job.created_at,
        # the gateway's cache first for a device behind one (deployments/artifact_mirrors.py)
        mirrors=job_artifact_mirrors(device=job.device, version=version, cloud_url=artifact_url, ttl=ttl),
    )


def job_document(job: Job) -> JobDocument:
    """What the device receives: the signed manifest and a fresh time-limited artifact URL (per stage
    for a pipeline job), each URL audited."""
    ttl = _url_ttl(job.timeout_seconds)

    def url_of(version: ModelVersion) -> str:
        return _device_artifact_url(version, ttl)

    stages = None
    if job.pipeline_version_id is not None:
        ordered = PipelineVersion.objects.with_stages().get(pk=job.pipeline_version_id).ordered_stages()
        stages = _stage_documents(ordered, url_of)
    return _job_document(job, ttl=ttl, url_of=url_of, stages=stages)


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
    kind: str = JobKind.INSTALL,
    timeout_seconds: int | None = None,
    rollout_id: int | None = None,
    wave_id: int | None = None,
    attempt: int = 1,
) -> Job:
    """Create a job installing `version` (or `pipeline_version`: every stage) on `device`; queue its notification.

    Refuses (DeploymentRefused) a version that is not deployable, a device that cannot run it (with
    every reason; for a pipeline, every stage's, named by stage), a revoked or unprovisioned device, and a
    second active job for the same model or pipeline.
    A rollout passes its ids: the job then counts in that wave, at most once per device and attempt.
    The one-device case of `deployments_create_many` (the same rules, the same rows).
    """
    batch = deployments_create_many(
        actor=actor, requests=[JobRequest(device, wave_id=wave_id, attempt=attempt)], version=version,
        pipeline_version=pipeline_version, kind=kind, timeout_seconds=timeout_seconds, rollout_id=rollout_id,
    )  # fmt: skip
    if device.pk in batch.refused:
        raise batch.refused[device.pk]
    return batch.jobs[device.pk]


@transaction.atomic
def deployments_create_many(
    *,
    actor: Actor,
    requests: Sequence[JobRequest],
    version: ModelVersion | None = None,
    pipeline_version: PipelineVersion | None = None,
    kind: str = JobKind.INSTALL,
    timeout_seconds: int | None = None,
    rollout_id: int | None = None,
) -> DeploymentBatch:
    """Create the jobs of many devices for one version (or pipeline version) and queue their notifications,
    in a number of queries that does not grow with the number of devices (rollout dispatch, a chunk a tick).

    Each device is refused or gets its job exactly as `deployment_create` would: a version that is not
    deployable refuses every device (field "version"/"pipeline_version"); a missing or revoked device, one
    that cannot run the version (every reason) or one that already has an active job for the model or
    pipeline is refused alone (field "device") and the others still get theirs. For each job: its QUEUED
    event, a `job.create` audit entry and its jobs/notify message in the outbox, all in this transaction.
    One artifact URL per version serves the whole batch (it names no device), audited once with the number
    of jobs it went to; gateway mirrors stay per device. ValueError for a device asked for twice.
    """
    if (version is None) == (pipeline_version is None):
        raise ValueError("give exactly one of version and pipeline_version")
    device_ids = [request.device.pk for request in requests]
    if len(set(device_ids)) != len(device_ids):
        raise ValueError("a device can get one job per call")
    batch = DeploymentBatch()
    target: ModelVersion | PipelineVersion
    requirements: Requirements
    stages: list[PipelineStage] = []
    if pipeline_version is not None:
        target = PipelineVersion.objects.with_stages().get(pk=pipeline_version.pk)
        stages = target.ordered_stages()
        requirements, artifacts = pipeline_requirements_of(stages), [stage.version for stage in stages]
        family, family_name = {"pipeline_id": target.pipeline_id}, f"pipeline {target.pipeline.name}"
        target_field = "pipeline_version"
    else:
        assert version is not None  # noqa: S101 - checked above
        target, requirements, artifacts = version, requirements_of(version), [version]
        family, family_name, target_field = {"model_id": version.model_id}, f"model {version.model.name}", "version"
    if not requests:
        return batch
    if not target.is_deployable:
        refusal = DeploymentRefused(
            f"version {target} is {target.status}: only published versions are deployed", field=target_field
        )
        batch.refused = dict.fromkeys(device_ids, refusal)
        return batch

    # runtimes as a plain list: Django builds a queryset per device to cache a prefetched relation
    devices = (
        Device.objects.select_related("site", "parent")
        .prefetch_related(Prefetch("runtimes", to_attr="runtime_rows"))
        .in_bulk(device_ids)
    )
    eligible: list[tuple[JobRequest, Device]] = []
    for request in requests:
        device = devices.get(request.device.pk)
        if device is None:
            batch.refused[request.device.pk] = DeploymentRefused(
                f"device {request.device.uid} no longer exists", field="device"
            )
        elif device.is_revoked:
            batch.refused[device.pk] = DeploymentRefused(f"device {device.uid} is revoked", field="device")
        elif reasons := reasons_for(requirements, profile_of(device, device.runtime_rows)):  # type: ignore[attr-defined]
            batch.refused[device.pk] = DeploymentRefused(
                f"device {device.uid} cannot run {target}: {'; '.join(reasons)}", field="device"
            )
        else:
            eligible.append((request, device))
    busy = {
        device_id: (job_id, status)
        for device_id, job_id, status in Job.objects.active()
        .filter(device_id__in=[device.pk for _, device in eligible], **family)
        .values_list("device_id", "id", "status")
    }
    timeout = timeout_seconds or settings.JOB_TIMEOUT_SECONDS
    now = timezone.now()
    jobs: list[Job] = []
    for request, device in eligible:
        if device.pk in busy:
            job_id, status = busy[device.pk]
            batch.refused[device.pk] = _busy(device, family_name, job_id, status)
            continue
        jobs.append(
            Job(
                id=uuid.uuid4(),
                device=device,
                model_id=version.model_id if version is not None else None,
                version=version,
                pipeline_id=target.pipeline_id if isinstance(target, PipelineVersion) else None,
                pipeline_version=target if isinstance(target, PipelineVersion) else None,
                kind=kind,
                timeout_seconds=timeout,
                deadline_at=now + dt.timedelta(seconds=timeout),
                created_by=actor.label,
                rollout_id=rollout_id,
                wave_id=request.wave_id,
                attempt=request.attempt,
            )
        )
    jobs = _insert_jobs(jobs, family, family_name, batch.refused)
    if not jobs:
        return batch
    JobEvent.objects.bulk_create(
        [JobEvent(job=job, to_status=JobStatus.QUEUED, actor=actor.label) for job in jobs], batch_size=1000
    )
    ttl = _url_ttl(timeout)
    grants = {
        artifact.pk: model_version_download_grant(actor=_DOWNLOAD_ACTOR, version=artifact, ttl=ttl, jobs=len(jobs))
        for artifact in artifacts
    }
    urls = {pk: _absolute(url) for pk, (url, _) in grants.items()}

    def url_of(v: ModelVersion) -> str:
        return urls[v.pk]

    stage_documents = _stage_documents(stages, url_of) if pipeline_version is not None else None
    outbox_enqueue_many(
        messages=[
            (
                jobs_notify_topic(job.device.uid),
                encode(
                    JobsNotify(
                        schema_version=1,
                        jobs=[_job_document(job, ttl=ttl, url_of=url_of, stages=stage_documents)],
                        cancel=[],
                    )
                ),
            )
            for job in jobs
        ]
    )
    described, changed = str(target), {target_field: str(target), "kind": kind, "timeout_seconds": timeout}
    # after the CPU work above: the chain head stays locked from here to the commit
    audit_record_many(
        [
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
        + [audit for _, audit in grants.values()]
    )
    _stream_rollout_progress(rollout_id)
    batch.jobs = {job.device_id: job for job in jobs}
    return batch


def _busy(device: Device, family_name: str, job_id: object | None, status: str = "") -> DeploymentRefused:
    return DeploymentRefused(
        f"device {device.uid} already has an active job for {family_name}"
        + (f": {job_id} ({status})" if job_id else ""),
        field="device",
    )


def _insert_jobs(
    jobs: list[Job], family: dict[str, int], family_name: str, refused: dict[int, DeploymentRefused]
) -> list[Job]:
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
            active = Job.objects.active().filter(device=job.device, **family).first()
            refused[job.device_id] = _busy(
                job.device, family_name, active.id if active else None, active.status if active else ""
            )
            continue
        created.append(job)
    return created


def _stream_rollout_progress(rollout_id: int | None) -> None:
    """A rollout's job changed: its page gets the new counts after commit (coalesced, see telemetry/streaming.py)."""
    if rollout_id is not None:
        transaction.on_commit(functools.partial(rollout_stream_touch, rollout_id))


def _transition(
    job: Job,
    *,
    to: str,
    actor: Actor,
    reason: str = "",
    step: str = "",
    progress: float | None = None,
    seq: int | None = None,
) -> bool:
    """Move a job forward with a guarded update. False when another writer got there first."""
    allowed = [status for status, targets in TRANSITIONS.items() if to in targets]
    if job.status not in allowed:
        raise InvalidTransition(f"job {job.id} is {job.status}; it cannot become {to}")
    now = timezone.now()
    fields: dict[str, object] = {"status": to, "step": step, "progress": progress, "updated_at": now}
    if reason:
        fields["reason"] = reason
    if seq is not None:
        fields["last_seq"] = seq
    if to == JobStatus.IN_PROGRESS and job.started_at is None:
        fields["started_at"] = now
    if to in TERMINAL:
        fields["finished_at"] = now
    query = Job.objects.filter(pk=job.pk, status=job.status)
    if seq is not None:
        query = query.filter(last_seq__lt=seq)
    if not query.update(**fields):
        return False
    JobEvent.objects.create(
        job=job, from_status=job.status, to_status=to, step=step, reason=reason, actor=actor.label, seq=seq
    )
    audit_record_many([_job_transition_audit(job, job.status, to, actor, reason)])
    if to == JobStatus.SUCCEEDED:
        _record_installations([job], now)
    _stream_rollout_progress(job.rollout_id)
    for key, value in fields.items():
        setattr(job, key, value)
    return True


def _job_transition_audit(job: Job, before: str, after: str, actor: Actor, reason: str) -> AuditSpec:
    return AuditSpec(
        actor=actor,
        action=f"job.{after.lower()}",
        object_type="job",
        object_id=job.pk,
        object_repr=f"{job.target} on {job.device.uid}",
        changes={"status": {"before": before, "after": after}, **({"reason": reason} if reason else {})},
    )


def _record_installations(jobs: Sequence[Job], at: dt.datetime) -> None:
    """The succeeded jobs' targets become their devices' current installations (the previous ones end)."""
    if not jobs:
        return
    by_family: dict[tuple[str, int], list[Job]] = {}
    for job in jobs:
        family = ("pipeline_id", job.pipeline_id) if job.pipeline_version_id is not None else ("model_id", job.model_id)
        by_family.setdefault(family, []).append(job)  # type: ignore[arg-type]
    for (column, family_id), members in by_family.items():
        Installation.objects.filter(
            device_id__in=[j.device_id for j in members], until__isnull=True, **{column: family_id}
        ).update(until=at)
    rows = []
    for j in jobs:
        if j.pipeline_version_id is not None:
            target = {"pipeline_id": j.pipeline_id, "pipeline_version_id": j.pipeline_version_id}
        else:
            target = {"model_id": j.model_id, "version_id": j.version_id}
        rows.append(Installation(device_id=j.device_id, job=j, since=at, **target))
    Installation.objects.bulk_create(rows)
    if any(j.pipeline_version_id is None for j in jobs):
        resolve_cache_invalidate()


# The job and its device rows; a job's version or pipeline version is an outer join now (either may be
# NULL), and PostgreSQL cannot lock the nullable side of one. Published versions are immutable anyway.
_JOB_LOCK = ("self", "device")


class ForeignJob(Exception):
    """A job update arrived on one device's topic for another device's job."""


@dataclass(frozen=True)
class UpdateOutcome:
    applied: bool
    why: str = ""
    detail: str = ""


def job_apply_device_update(*, uid: str, update: JobUpdate) -> UpdateOutcome:
    """Apply a device's job update monotonically: duplicates, stale `seq` and backward moves change nothing.
    Raises ForeignJob for another device's job."""
    outcome = jobs_apply_device_updates(updates=[(uid, update)])[0]
    if outcome.why == "foreign_job":
        raise ForeignJob(outcome.detail)
    return outcome


@dataclass
class _Fold:
    """A locked job and what its updates in one batch do to it, before anything is written."""

    job: Job
    fields: dict[str, object]
    changes: list[tuple[str, str, str, str, int]]  # (from, to, step, reason, seq), in order
    applied: list[int] = field(default_factory=list)  # indexes of the updates that changed it

    @property
    def status(self) -> str:
        return str(self.fields.get("status", self.job.status))

    @property
    def last_seq(self) -> int:
        return int(self.fields.get("last_seq", self.job.last_seq))  # type: ignore[call-overload]


def _fold(fold: _Fold, update: JobUpdate, uid: str, now: dt.datetime) -> UpdateOutcome:
    """One update on top of the job's state so far in this batch: the rules of `TRANSITIONS`, in memory."""
    job = fold.job
    if job.device.uid != uid:
        return UpdateOutcome(False, "foreign_job", f"job {job.id} belongs to {job.device.uid}, not {uid}")
    status = fold.status
    if status in TERMINAL:
        return UpdateOutcome(False, "job_already_terminal")
    if update.seq <= fold.last_seq:
        return UpdateOutcome(False, "stale_seq")
    fields = fold.fields
    if update.status != status:
        if update.status not in TRANSITIONS[status]:
            return UpdateOutcome(False, "backward_transition")
        fields["status"] = update.status
        if update.reason:
            fields["reason"] = update.reason
        if update.status == JobStatus.IN_PROGRESS and job.started_at is None:
            fields["started_at"] = now
        if update.status in TERMINAL:
            fields["finished_at"] = now
        fold.changes.append((status, update.status, update.step or "", update.reason or "", update.seq))
    # a progress update within the same state only moves step, progress and seq: no event, no audit
    fields.update(step=update.step or "", progress=update.progress, last_seq=update.seq, updated_at=now)
    return UpdateOutcome(True)


_FOLD_COLUMNS = ("status", "step", "progress", "last_seq", "updated_at", "reason", "started_at", "finished_at")
_FOLD_TYPES = ("text", "text", "double precision", "bigint", "timestamptz", "text", "timestamptz", "timestamptz")


def _write_folds(folds: Sequence[_Fold]) -> set[uuid.UUID]:
    """Write each fold's fields with a guarded update (status and last_seq as read), in one statement on
    PostgreSQL (`UPDATE … FROM (VALUES …)`), one per job elsewhere; the ids written."""
    if not folds:
        return set()
    if connection.vendor != "postgresql":
        return {
            fold.job.pk
            for fold in folds
            if Job.objects.filter(pk=fold.job.pk, status=fold.job.status, last_seq=fold.job.last_seq).update(
                **fold.fields
            )
        }
    table = connection.ops.quote_name(Job._meta.db_table)
    # reason, started_at and finished_at change only when a fold sets them; NULL in VALUES means "keep"
    keep = {"reason", "started_at", "finished_at"}
    assignments = ", ".join(f"{c} = COALESCE(v.{c}, j.{c})" if c in keep else f"{c} = v.{c}" for c in _FOLD_COLUMNS)
    row = "(%s::uuid, %s::text, %s::bigint, " + ", ".join(f"%s::{t}" for t in _FOLD_TYPES) + ")"
    params: list[object] = []
    for fold in folds:
        fields = fold.fields
        params += [fold.job.pk, fold.job.status, fold.job.last_seq, fold.status]
        params += [fields.get(c) for c in _FOLD_COLUMNS[1:]]
    columns = ", ".join(("id", "old_status", "old_seq", *_FOLD_COLUMNS))
    sql = (
        f"UPDATE {table} AS j SET {assignments} FROM (VALUES {', '.join([row] * len(folds))}) AS v({columns}) "  # noqa: S608 - identifiers are ours
        "WHERE j.id = v.id AND j.status = v.old_status AND j.last_seq = v.old_seq RETURNING j.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row_id for (row_id,) in cursor.fetchall()}


def jobs_apply_device_updates(*, updates: Sequence[tuple[str, JobUpdate]]) -> list[UpdateOutcome]:
    """Apply many devices' job updates (uid, update) in one transaction, with the rules of
    `job_apply_device_update`; one outcome per update, in order (`foreign_job` and `unknown_job` among them).

    Each job is locked once, in id order (two bridges sharing the device topics never deadlock), and its
    updates are folded in `seq` order before anything is written: a job whose IN_PROGRESS … SUCCEEDED
    arrive together costs one guarded UPDATE, yet every transition keeps its event and audit entry
    (one bulk insert each for the batch). Installations, rollout streams and the resolve cache are
    updated once per batch.
    """
    outcomes: list[UpdateOutcome | None] = [None] * len(updates)
    if not updates:
        return []
    with transaction.atomic():
        ids = sorted({update.job_id for _, update in updates})
        jobs = {
            str(job.pk): job
            for job in Job.objects.select_for_update(of=_JOB_LOCK)
            .select_related("device", "version__model", "pipeline_version__pipeline")
            .filter(pk__in=ids)
            .order_by("pk")
        }
        now = timezone.now()
        folds: dict[str, _Fold] = {}
        for index in sorted(range(len(updates)), key=lambda i: (updates[i][1].job_id, updates[i][1].seq)):
            uid, update = updates[index]
            job = jobs.get(update.job_id)
            if job is None:
                outcomes[index] = UpdateOutcome(False, "unknown_job")
                continue
            fold = folds.setdefault(update.job_id, _Fold(job, {}, []))
            outcomes[index] = _fold(fold, update, uid, now)
            if outcomes[index].applied:  # type: ignore[union-attr]
                fold.applied.append(index)
        events: list[JobEvent] = []
        audits: list[AuditSpec] = []
        succeeded: list[Job] = []
        rollouts: set[int] = set()
        changed = [fold for fold in folds.values() if fold.fields]
        written = _write_folds(changed)
        for fold in changed:
            job = fold.job
            if job.pk not in written:  # not while we hold the lock; kept as the invariant's guard
                for index in fold.applied:
                    outcomes[index] = UpdateOutcome(False, "concurrent_update")
                continue
            actor = Actor.device(job.device.uid)
            for before, after, step, reason, seq in fold.changes:
                events.append(JobEvent(job=job, from_status=before, to_status=after, step=step, reason=reason,
                                       actor=actor.label, seq=seq))  # fmt: skip
                audits.append(_job_transition_audit(job, before, after, actor, reason))
            for key, value in fold.fields.items():
                setattr(job, key, value)
            if fold.changes and job.status == JobStatus.SUCCEEDED:
                succeeded.append(job)
            if fold.changes and job.rollout_id is not None:
                rollouts.add(job.rollout_id)
        JobEvent.objects.bulk_create(events)
        audit_record_many(audits)
        _record_installations(succeeded, now)
        for rollout_id in sorted(rollouts):
            _stream_rollout_progress(rollout_id)
    return [outcome or UpdateOutcome(False, "unknown_job") for outcome in outcomes]


def jobs_answer_pending(*, uid: str, request_id: str) -> int:
    """Reply to a device's jobs/get with every job of it that is not terminal (fresh URLs)."""
    return jobs_answer_pending_many(requests=[(uid, request_id)])[uid]


def jobs_answer_pending_many(*, requests: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Reply to many devices' jobs/get (uid, request id), each with every job of it that is not terminal;
    {uid: jobs sent}. One query for all their jobs, one artifact URL (and its audit entry) per version,
    one outbox insert: a connect storm of 10,000 devices asks this 10,000 times in a few seconds."""
    if not requests:
        return {}
    with transaction.atomic():
        jobs_of: dict[str, list[Job]] = {uid: [] for uid, _ in requests}
        for job in (
            Job.objects.active()
            .filter(device__uid__in=list(jobs_of))
            .select_related("device__parent", "version__model", "pipeline_version__pipeline")
            .order_by("created_at")
        ):
            jobs_of[job.device.uid].append(job)
        pending = [job for jobs in jobs_of.values() for job in jobs]
        stages: dict[int, list[PipelineStage]] = {}
        wanted: dict[tuple[int, int], tuple[ModelVersion, int]] = {}  # (version, ttl) -> (version, documents)
        for job in pending:
            ttl = _url_ttl(job.timeout_seconds)
            if job.pipeline_version_id is not None:
                if job.pipeline_version_id not in stages:
                    stages[job.pipeline_version_id] = (
                        PipelineVersion.objects.with_stages().get(pk=job.pipeline_version_id).ordered_stages()
                    )
                versions = [stage.version for stage in stages[job.pipeline_version_id]]
            else:
                versions = [job.version]  # type: ignore[list-item]  # a job has one or the other
            for version in versions:
                _, count = wanted.get((version.pk, ttl), (version, 0))
                wanted[(version.pk, ttl)] = (version, count + 1)
        urls: dict[tuple[int, int], str] = {}
        audits: list[AuditSpec] = []
        for (pk, ttl), (version, count) in wanted.items():
            url, audit = model_version_download_grant(actor=_DOWNLOAD_ACTOR, version=version, ttl=ttl, jobs=count)
            urls[(pk, ttl)] = _absolute(url)
            audits.append(audit)

        def url_for(ttl: int) -> ArtifactUrl:
            return lambda version: urls[(version.pk, ttl)]

        messages: list[tuple[str, bytes]] = []
        for uid, request_id in requests:
            documents = []
            for job in jobs_of[uid]:
                ttl = _url_ttl(job.timeout_seconds)
                url_of = url_for(ttl)
                built = _stage_documents(stages[job.pipeline_version_id], url_of) if job.pipeline_version_id else None
                documents.append(_job_document(job, ttl=ttl, url_of=url_of, stages=built))
            reply = JobsGetAccepted(schema_version=1, request_id=request_id, jobs=documents)
            messages.append((jobs_get_accepted_topic(uid), encode(reply)))
        audit_record_many(audits)
        outbox_enqueue_many(messages=messages)
    return {uid: len(jobs) for uid, jobs in jobs_of.items()}


@transaction.atomic
def job_cancel(*, actor: Actor, job: Job, reason: str) -> Job:
    """Cancel an active job and tell the device; a terminal job cannot be canceled (InvalidTransition)."""
    job = (
        Job.objects.select_for_update(of=_JOB_LOCK)
        .select_related("device", "version__model", "pipeline_version__pipeline")
        .get(pk=job.pk)
    )
    if job.status == JobStatus.CANCELED:
        return job
    _transition(job, to=JobStatus.CANCELED, actor=actor, reason=reason or "canceled")
    outbox_enqueue(
        topic=jobs_notify_topic(job.device.uid),
        payload=encode(JobsNotify(schema_version=1, jobs=[], cancel=[str(job.id)])),
    )
    return job


def jobs_sweep_timeouts(*, actor: Actor, now: dt.datetime | None = None, limit: int = 1000) -> list[str]:
    """Active jobs past their deadline become TIMED_OUT with the reason; the device is told to drop them."""
    now = now or timezone.now()
    swept: list[str] = []
    due = list(Job.objects.filter(status__in=ACTIVE, deadline_at__lt=now).values_list("pk", flat=True)[:limit])
    for job_id in due:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(skip_locked=True, of=_JOB_LOCK)
                .select_related("device", "version__model", "pipeline_version__pipeline")
                .filter(pk=job_id, status__in=ACTIVE)
                .first()
            )
            if job is None:
                continue
            reason = f"no terminal update within {job.timeout_seconds}s (last state {job.status}" + (
                f", step {job.step})" if job.step else ")"
            )
            if _transition(job, to=JobStatus.TIMED_OUT, actor=actor, reason=reason):
                outbox_enqueue(
                    topic=jobs_notify_topic(job.device.uid),
                    payload=encode(JobsNotify(schema_version=1, jobs=[], cancel=[str(job.id)])),
                )
                swept.append(str(job.id))
    return swept
