"""What the control plane tells an AWS IoT Jobs device on its own (`notify`, `notify-next`), and a job's AWS
view (an execution). Requests from devices are answered in `aws_jobs.py`; this half is what job services
call when they create, cancel or time out a job, so it builds on no service."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db.models import Case, IntegerField, Value, When
from django.utils import timezone

from fleet.models import Device, JobDialect
from outbox.services import outbox_enqueue_many
from protocol import aws_jobs as aws
from protocol.messages import JobDocument

from .job_documents import job_document
from .models import DEPLOYABLE_RELATED, TERMINAL, Job, JobStatus

_PENDING_ORDER = Case(When(status=JobStatus.IN_PROGRESS, then=Value(0)), default=Value(1), output_field=IntegerField())


def speaks_aws(device: Device) -> bool:
    return device.job_dialect == JobDialect.AWS_IOT_JOBS


def version_number(job: Job) -> int:
    return max(job.last_seq, -1) + 2


def _document_json(document: JobDocument) -> dict[str, Any]:
    # the Fogdeck wire form (absent additions left out), so a client that verifies sees what the agent sees
    data: dict[str, Any] = json.loads(document.model_dump_json())
    return data


def execution_of(job: Job, document: JobDocument | None = None, *, with_document: bool = True) -> aws.Execution:
    """The AWS view of a job; its jobDocument is Fogdeck's install document with a fresh artifact URL."""
    if with_document and document is None and job.status not in TERMINAL:
        document = job_document(job)
    return aws.Execution(
        job_id=str(job.pk),
        thing_name=job.device.uid,
        status=job.status,
        status_details=dict(job.status_details or {}),
        queued_at=job.created_at,
        started_at=job.started_at,
        last_updated_at=job.updated_at,
        version_number=version_number(job),
        job_document=_document_json(document) if document is not None else None,
    )


def _pending(uids: Iterable[str]) -> dict[str, list[Job]]:
    """Each device's active jobs in AWS order: IN_PROGRESS first, then queued, oldest first."""
    pending: dict[str, list[Job]] = {uid: [] for uid in uids}
    for job in (
        Job.objects.active()
        .filter(device__uid__in=list(pending))
        .select_related("device__parent", *DEPLOYABLE_RELATED)
        .order_by(_PENDING_ORDER, "created_at", "pk")
    ):
        pending[job.device.uid].append(job)
    return pending


def aws_jobs_notify(*, devices: Sequence[Device], documents: Mapping[uuid.UUID, JobDocument] | None = None) -> None:
    """Queue `notify` and `notify-next` for these AWS-dialect devices, from their jobs as they are now in this
    transaction: call it after creating, canceling or timing out their jobs. `documents` are job documents
    already built (a wave's), reused when the next job is one of them instead of signing a new URL."""
    if not devices:
        return
    now, documents = timezone.now(), documents or {}
    messages: list[tuple[str, bytes]] = []
    for uid, jobs in _pending(device.uid for device in devices).items():
        views = [execution_of(job, with_document=False) for job in jobs]
        in_progress = [v for v in views if v.status == JobStatus.IN_PROGRESS]
        queued = [v for v in views if v.status == JobStatus.QUEUED]
        messages.append((aws.notify_topic(uid), aws.encode(aws.notify_message(in_progress, queued, now=now))))
        upcoming = execution_of(jobs[0], documents.get(jobs[0].pk)) if jobs else None
        messages.append((aws.notify_next_topic(uid), aws.encode(aws.notify_next_message(upcoming, now=now))))
    outbox_enqueue_many(messages=messages)
