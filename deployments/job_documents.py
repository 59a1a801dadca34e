"""Job documents: what a device receives for a job (the signed manifest, a fresh time-limited artifact
URL per stage or version, the gateway mirrors, and the job envelope when the device verifies one)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.conf import settings

from audit.actors import Actor
from models_registry.models import ModelVersion, PipelineStage, PipelineVersion
from models_registry.services import model_version_download_url
from protocol import messages
from protocol.messages import JobDocument, PipelineStageDocument, StageCondition
from protocol.pipelines import PIPELINE_FORMAT

from .artifact_mirrors import job_artifact_mirrors
from .job_envelopes import JobEnvelopes
from .models import Job, JobKind

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
    job: Job,
    *,
    ttl: int,
    url_of: ArtifactUrl,
    stages: list[PipelineStageDocument] | None = None,
    envelopes: JobEnvelopes | None = None,
) -> JobDocument:
    """A job's document; a pipeline job's `stages` come built (`_stage_documents`), a version job's mirrors
    are worked out here from `job.device` and its parent (load both). Signed for this device
    (deployments/job_envelopes.py) when its agent verifies envelopes; pass one `envelopes` per batch."""
    document = _unsigned_job_document(job, ttl=ttl, url_of=url_of, stages=stages)
    return (envelopes or JobEnvelopes()).sign(job, document, ttl=ttl)


def _protocol_kind(job: Job) -> messages.JobKind:
    """The job's kind as the protocol's Literal (the model's JobKind values are the protocol's)."""
    if job.kind == JobKind.INSTALL:
        return "install"
    if job.kind == JobKind.ROLLBACK:
        return "rollback"
    raise ValueError(f"job {job.pk} has an unknown kind {job.kind!r}")


def _unsigned_job_document(
    job: Job, *, ttl: int, url_of: ArtifactUrl, stages: list[PipelineStageDocument] | None
) -> JobDocument:
    if job.pipeline_version_id is not None:
        pipeline_version = job.pipeline_version
        assert pipeline_version is not None and stages is not None  # noqa: S101 - a pipeline job has both
        return JobDocument(
            job_id=str(job.id),
            kind=_protocol_kind(job),
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
        kind=_protocol_kind(job),
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
