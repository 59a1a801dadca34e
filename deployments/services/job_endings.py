"""Jobs the control plane ends: canceled by a person or a rollout, timed out by the sweep or a rollout's
`queued_timeout_seconds`. Each end is a guarded transition (job_transitions.py) with its event and audit
entry, and the device is told to drop the job through the outbox, in the same transaction. A job the
device reports finished in its retained state gets that result instead of TIMED_OUT.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from outbox.services import outbox_enqueue
from protocol.device_topics import jobs_notify_topic
from protocol.messages import JobsNotify, encode

from .. import aws_notify
from ..models import ACTIVE, DEPLOYABLE_RELATED, Job, JobStatus
from ..reported_results import reported_result
from .device_updates import jobs_apply_device_updates
from .job_transitions import _JOB_LOCK, _transition


@transaction.atomic
def job_cancel(*, actor: Actor, job: Job, reason: str) -> Job:
    """Cancel an active job and tell the device; a terminal job cannot be canceled (InvalidTransition)."""
    job = Job.objects.select_for_update(of=_JOB_LOCK).select_related("device", *DEPLOYABLE_RELATED).get(pk=job.pk)
    if not _transition(job, to=JobStatus.CANCELED, actor=actor, reason=reason or "canceled").changed:
        return job
    _tell_device_job_ended(job)
    return job


def _tell_device_job_ended(job: Job) -> None:
    """A job ended on the control plane's side (canceled, timed out): a `cancel` in Fogdeck's dialect; in the
    AWS dialect, `notify` and `notify-next` without it."""
    if aws_notify.speaks_aws(job.device):
        aws_notify.aws_jobs_notify(devices=[job.device])
        return
    outbox_enqueue(
        topic=jobs_notify_topic(job.device.uid),
        payload=encode(JobsNotify(schema_version=1, jobs=[], cancel=[str(job.id)])),
    )


def jobs_expire_queued(*, actor: Actor, job_ids: Sequence[uuid.UUID], queued_timeout: int) -> list[Job]:
    """Jobs still QUEUED (never started by their device) become TIMED_OUT with a reason that says so, and
    the device is told to drop them: a rollout's `queued_timeout_seconds`, separate from the in-progress
    timeout. A job locked elsewhere (the bridge applying an update) is skipped and looked at next tick;
    a job that moved on meanwhile is left alone, and one the device reports finished in its retained
    state gets that result instead (as in `jobs_sweep_timeouts`). Returns the jobs timed out."""
    expired: list[Job] = []
    reason = f"never started: still QUEUED after {queued_timeout}s (queued_timeout_seconds)"
    for job_id in job_ids:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(skip_locked=True, of=_JOB_LOCK)
                .select_related("device", *DEPLOYABLE_RELATED)
                .filter(pk=job_id, status=JobStatus.QUEUED)
                .first()
            )
            if job is None:
                continue
            finished = reported_result(job, job.device.reported_state)
            if finished is not None:  # it did start, and finish: its updates were lost (reconciliation)
                jobs_apply_device_updates(updates=[(job.device.uid, finished)])
                continue
            if not _transition(job, to=JobStatus.TIMED_OUT, actor=actor, reason=reason).changed:
                continue
            outbox_enqueue(
                topic=jobs_notify_topic(job.device.uid),
                payload=encode(JobsNotify(schema_version=1, jobs=[], cancel=[str(job.id)])),
            )
            expired.append(job)
    return expired


def jobs_sweep_timeouts(*, actor: Actor, now: dt.datetime | None = None, limit: int = 1000) -> list[str]:
    """Active jobs past their deadline become TIMED_OUT with the reason; the device is told to drop them.

    Except a job the device reports it finished (its retained state's `recent_jobs`, newer than what we
    stored): that result is applied as the device's update instead, so a job a device finished is never
    recorded as TIMED_OUT because its update was lost. Returns the ids timed out."""
    now = now or timezone.now()
    swept: list[str] = []
    due = list(Job.objects.filter(status__in=ACTIVE, deadline_at__lt=now).values_list("pk", flat=True)[:limit])
    for job_id in due:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(skip_locked=True, of=_JOB_LOCK)
                .select_related("device", *DEPLOYABLE_RELATED)
                .filter(pk=job_id, status__in=ACTIVE)
                .first()
            )
            if job is None:
                continue
            finished = reported_result(job, job.device.reported_state)
            if finished is not None:
                jobs_apply_device_updates(updates=[(job.device.uid, finished)])
                continue
            reason = f"no terminal update within {job.timeout_seconds}s (last state {job.status}" + (
                f", step {job.step})" if job.step else ")"
            )
            if _transition(job, to=JobStatus.TIMED_OUT, actor=actor, reason=reason).changed:
                _tell_device_job_ended(job)
                swept.append(str(job.id))
    return swept
