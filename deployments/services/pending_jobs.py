"""Answering devices' jobs/get: every job of theirs that is not terminal, with fresh artifact URLs."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from audit.services import AuditSpec, audit_record_many
from models_registry.deployables import Deployable, DeployableDocument
from models_registry.models import ModelVersion
from models_registry.services import model_version_download_grant
from outbox.services import outbox_enqueue_many
from protocol.device_topics import jobs_get_accepted_topic
from protocol.messages import JobsGetAccepted, encode

from ..job_documents import _DOWNLOAD_ACTOR, _absolute, _job_document, _url_ttl
from ..job_envelopes import JobEnvelopes
from ..models import DEPLOYABLE_RELATED, Job

# a deployable by kind and id: model versions and pipeline versions number their rows apart
_Key = tuple[str, int]


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
            .select_related("device__parent", *DEPLOYABLE_RELATED)
            .order_by("created_at")
        ):
            jobs_of[job.device.uid].append(job)
        pending = [job for jobs in jobs_of.values() for job in jobs]
        deployables = _deployables_of(pending)
        urls, audits = _grant_urls(pending, deployables)
        # a deployable's part of the document, once per deployable and URL lifetime
        fields: dict[tuple[_Key, int], DeployableDocument] = {}

        def fields_of(key: _Key, ttl: int) -> DeployableDocument:
            if (key, ttl) not in fields:
                fields[(key, ttl)] = deployables[key].document_fields(lambda version: urls[(version.pk, ttl)])
            return fields[(key, ttl)]

        messages: list[tuple[str, bytes]] = []
        envelopes = JobEnvelopes()
        for uid, request_id in requests:
            documents = []
            for job in jobs_of[uid]:
                ttl = _url_ttl(job.timeout_seconds)
                key = _key(job.deployable)
                documents.append(
                    _job_document(job, deployables[key], fields_of(key, ttl), ttl=ttl, envelopes=envelopes)
                )
            reply = JobsGetAccepted(schema_version=1, request_id=request_id, jobs=documents)
            messages.append((jobs_get_accepted_topic(uid), encode(reply)))
        audit_record_many(audits)
        outbox_enqueue_many(messages=messages)
    return {uid: len(jobs) for uid, jobs in jobs_of.items()}


def _key(deployable: Deployable) -> _Key:
    return deployable.deployable_kind, deployable.pk


def _deployables_of(jobs: Sequence[Job]) -> dict[_Key, Deployable]:
    """What the jobs install, each loaded once for its documents (a pipeline version with its stages)."""
    deployables: dict[_Key, Deployable] = {}
    for job in jobs:
        key = _key(job.deployable)
        if key not in deployables:
            deployables[key] = job.deployable.for_deployment()
    return deployables


def _grant_urls(
    jobs: Sequence[Job], deployables: dict[_Key, Deployable]
) -> tuple[dict[tuple[int, int], str], list[AuditSpec]]:
    """One artifact URL per (version, lifetime) the jobs need, by (version id, ttl), and the grants' audit
    entries (each with the number of documents it goes into)."""
    wanted: dict[tuple[int, int], tuple[ModelVersion, int]] = {}  # (version, ttl) -> (version, documents)
    for job in jobs:
        ttl = _url_ttl(job.timeout_seconds)
        for version in deployables[_key(job.deployable)].artifacts():
            _, count = wanted.get((version.pk, ttl), (version, 0))
            wanted[(version.pk, ttl)] = (version, count + 1)
    urls: dict[tuple[int, int], str] = {}
    audits: list[AuditSpec] = []
    for (pk, ttl), (version, count) in wanted.items():
        url, audit = model_version_download_grant(actor=_DOWNLOAD_ACTOR, version=version, ttl=ttl, jobs=count)
        urls[(pk, ttl)] = _absolute(url)
        audits.append(audit)
    return urls, audits
