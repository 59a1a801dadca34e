"""Fogdeck jobs over the AWS IoT Jobs device MQTT API (protocol/aws_jobs.py, docs/protocol.md).

A Fogdeck job is one AWS job execution (`executionNumber` 1, `jobId` the job's UUID, `thingName` the
device uid). Its `versionNumber` is `last_seq + 2`: 1 while untouched, one more with every update the
device makes (the control plane assigns the `seq` of an AWS update itself). Status changes go through
`services.device_updates.jobs_apply_device_updates`, exactly as a Fogdeck-dialect update does: the same
transitions, events, audit entries, installations and rollout progress. Replies and notifications go
through the outbox in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet.models import Device
from outbox.services import outbox_enqueue_many
from protocol import aws_jobs as aws
from protocol import messages
from protocol.messages import JobUpdate

from .aws_notify import _pending, aws_jobs_notify, execution_of
from .models import DEPLOYABLE_RELATED, TERMINAL, Job, JobStatus
from .services.device_updates import jobs_apply_device_updates

Verdict = tuple[str, str] | None
"""None when the request was answered on `/accepted`; (counter, detail) when on `/rejected`."""

_REASON_MAX = 1024


def aws_jobs_handle_requests(*, requests: Sequence[aws.AwsRequest]) -> list[Verdict]:
    """Answer many things' requests in order, in one transaction; each is answered on its `/accepted` or
    `/rejected` topic with its clientToken echoed. A rejected request changes nothing."""
    verdicts: list[Verdict] = []
    with transaction.atomic():
        replies: list[tuple[str, bytes]] = []
        for request in requests:
            now = timezone.now()
            accepted, message = _answer(request, now)
            uid, operation, job_id = request.uid, request.operation, request.job_id
            replies.append((aws.response_topic(uid, operation, job_id, accepted=accepted), aws.encode(message)))
            verdicts.append(None if accepted else (f"aws_{message['code']}", str(message["message"])))
            body = request.body
            if accepted and isinstance(body, aws.UpdateRequest) and body.status in aws.TERMINAL_STATUSES:
                outbox_enqueue_many(messages=replies)  # the reply goes out before the notifications
                replies = []
                aws_jobs_notify(devices=[Device.objects.get(uid=uid)])
        outbox_enqueue_many(messages=replies)
    return verdicts


def _answer(request: aws.AwsRequest, now: dt.datetime) -> tuple[bool, dict[str, Any]]:
    token = request.client_token
    if request.error is not None:
        return False, aws.rejected(*request.error, client_token=token, now=now)
    body = request.body
    if isinstance(body, aws.GetPendingRequest):
        views = [execution_of(job, with_document=False) for job in _pending([request.uid])[request.uid]]
        in_progress = [v for v in views if v.status == JobStatus.IN_PROGRESS]
        queued = [v for v in views if v.status == JobStatus.QUEUED]
        return True, aws.pending_reply(in_progress, queued, client_token=token, now=now)
    if isinstance(body, aws.StartNextRequest):
        return _start_next(request.uid, body, token, now)
    if isinstance(body, aws.DescribeRequest):
        return _describe(request.uid, request.job_id or "", body, token, now)
    assert isinstance(body, aws.UpdateRequest)  # noqa: S101 - the four bodies are the four operations
    return _update(request.uid, request.job_id or "", body, token, now)


def _locked_job(uid: str, job_id: str) -> Job | None:
    """The device's job by id, locked; None for another device's job too (no hint that it exists)."""
    try:
        pk = uuid.UUID(job_id)
    except ValueError:
        return None
    return (
        Job.objects.select_for_update(of=("self",))
        .select_related("device__parent", *DEPLOYABLE_RELATED)
        .filter(pk=pk, device__uid=uid)
        .first()
    )


def _start_next(
    uid: str, body: aws.StartNextRequest, token: str | None, now: dt.datetime
) -> tuple[bool, dict[str, Any]]:
    pending = _pending([uid])[uid]
    if not pending:
        return True, aws.execution_reply(None, client_token=token, now=now)
    job = _locked_job(uid, str(pending[0].pk))
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS):
        return True, aws.execution_reply(None, client_token=token, now=now)
    if job.status == JobStatus.QUEUED:  # an execution already IN_PROGRESS keeps its statusDetails
        job = _apply(job, aws.IN_PROGRESS, body.statusDetails, body.stepTimeoutInMinutes, now)
    return True, aws.execution_reply(execution_of(job), client_token=token, now=now)


def _describe(
    uid: str, job_id: str, body: aws.DescribeRequest, token: str | None, now: dt.datetime
) -> tuple[bool, dict[str, Any]]:
    if job_id == aws.NEXT_JOB_ID:
        pending = _pending([uid])[uid]
        upcoming = execution_of(pending[0], with_document=body.includeJobDocument) if pending else None
        return True, aws.execution_reply(upcoming, client_token=token, now=now)
    job = _locked_job(uid, job_id)
    if job is None or (body.executionNumber not in (None, 1)):
        return False, aws.rejected(
            "ResourceNotFound", f"no job execution {job_id} for {uid}", client_token=token, now=now
        )
    if job.status in TERMINAL:
        text = f"job execution {job_id} is {job.status}"
        return False, aws.rejected("TerminalStateReached", text, client_token=token, now=now)
    execution = execution_of(job, with_document=body.includeJobDocument)
    return True, aws.execution_reply(execution, client_token=token, now=now)


def _update(
    uid: str, job_id: str, body: aws.UpdateRequest, token: str | None, now: dt.datetime
) -> tuple[bool, dict[str, Any]]:
    job = _locked_job(uid, job_id)
    if job is None or (body.executionNumber not in (None, 1)):
        return False, aws.rejected(
            "ResourceNotFound", f"no job execution {job_id} for {uid}", client_token=token, now=now
        )
    if body.status not in aws.DEVICE_SETTABLE:
        text = f"status {body.status} cannot be set by a device (IN_PROGRESS, SUCCEEDED, FAILED or REJECTED)"
        return False, aws.rejected("InvalidRequest", text, client_token=token, now=now)
    current = execution_of(job, with_document=False)
    if body.expectedVersion is not None and body.expectedVersion != current.version_number:
        text = f"expected version {body.expectedVersion}, the execution is at version {current.version_number}"
        return False, aws.rejected("VersionMismatch", text, client_token=token, now=now, execution=current)
    if job.status in TERMINAL:
        text = f"job execution {job_id} is {job.status}: it cannot become {body.status}"
        return False, aws.rejected("InvalidStateTransition", text, client_token=token, now=now, execution=current)
    job = _apply(job, body.status, body.statusDetails, body.stepTimeoutInMinutes, now)
    if job.status != body.status:  # not reachable while we hold the lock; kept as the invariant's guard
        text = f"job execution {job_id} is {job.status}: it cannot become {body.status}"
        return False, aws.rejected("InvalidStateTransition", text, client_token=token, now=now, execution=current)
    execution = execution_of(job, with_document=body.includeJobDocument)
    return True, aws.update_reply(execution, body, client_token=token, now=now)


def _reason(status: str, details: Mapping[str, str] | None) -> str | None:
    """The job's reason from statusDetails: its `reason` entry, else all of them (`k=v; …`)."""
    if not details or (status in (aws.IN_PROGRESS, aws.SUCCEEDED) and "reason" not in details):
        return None
    text = details.get("reason") or "; ".join(f"{key}={value}" for key, value in sorted(details.items()))
    return text[:_REASON_MAX]


def _apply(
    job: Job, status: messages.JobStatus, details: Mapping[str, str] | None, step_minutes: int | None, now: dt.datetime
) -> Job:
    """One device update of a locked job, through the same service as a Fogdeck update, then the AWS-only
    fields: statusDetails (replaced when given) and the step timer (the job's deadline, never past its own
    timeout)."""
    update = JobUpdate(
        schema_version=1, job_id=str(job.pk), seq=job.last_seq + 1 if job.last_seq >= 0 else 0,
        status=status, reason=_reason(status, details), ts=now,
    )  # fmt: skip
    jobs_apply_device_updates(updates=[(job.device.uid, update)])
    fields: dict[str, object] = {}
    if details is not None:
        fields["status_details"] = dict(details)
    if step_minutes is not None:
        latest = job.created_at + dt.timedelta(seconds=job.timeout_seconds)
        fields["deadline_at"] = latest if step_minutes == -1 else min(latest, now + dt.timedelta(minutes=step_minutes))
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields)
    return Job.objects.select_related("device__parent", *DEPLOYABLE_RELATED).get(pk=job.pk)
