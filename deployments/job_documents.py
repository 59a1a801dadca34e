"""Job documents: what a device receives for a job (the signed manifest, a fresh time-limited artifact
URL per stage or version, the gateway mirrors, and the job envelope when the device verifies one)."""

from __future__ import annotations

from django.conf import settings

from audit.actors import Actor
from models_registry.deployables import Deployable, DeployableDocument
from models_registry.models import ModelVersion
from models_registry.services import model_version_download_url
from protocol import messages
from protocol.messages import JobDocument

from .artifact_mirrors import job_artifact_mirrors
from .job_envelopes import JobEnvelopes
from .models import Job, JobKind

_DOWNLOAD_ACTOR = Actor.system("deployments:job-document")


def _absolute(url: str) -> str:
    return url if url.startswith(("http://", "https://")) else settings.PUBLIC_BASE_URL.rstrip("/") + url


def _device_artifact_url(version: ModelVersion, ttl: int) -> str:
    """An absolute time-limited URL: S3 presigned, or our signed local URL under PUBLIC_BASE_URL."""
    return _absolute(model_version_download_url(actor=_DOWNLOAD_ACTOR, version=version, ttl=ttl))


def _url_ttl(timeout_seconds: int) -> int:
    """An artifact URL outlives the job it is sent with."""
    return max(settings.ARTIFACT_URL_TTL_SECONDS, timeout_seconds)


def _job_document(
    job: Job,
    deployable: Deployable,
    fields: DeployableDocument,
    *,
    ttl: int,
    envelopes: JobEnvelopes | None = None,
) -> JobDocument:
    """A job's document from its deployable's `fields` (`document_fields`, built once for every job of the
    same deployable and URLs); the gateway mirrors are worked out here from `job.device` and its parent
    (load both). Signed for this device (deployments/job_envelopes.py) when its agent verifies envelopes;
    pass one `envelopes` per batch."""
    mirrors = None
    artifact, cloud_url = deployable.gateway_artifact, fields["artifact_url"]
    if artifact is not None and cloud_url is not None:
        # the gateway's cache first for a device behind one (deployments/artifact_mirrors.py)
        mirrors = job_artifact_mirrors(device=job.device, version=artifact, cloud_url=cloud_url, ttl=ttl)
    document = JobDocument(
        job_id=str(job.id),
        kind=_protocol_kind(job),
        **fields,
        timeout_seconds=job.timeout_seconds,
        created_at=job.created_at,
        mirrors=mirrors,
    )
    return (envelopes or JobEnvelopes()).sign(job, document, ttl=ttl)


def _protocol_kind(job: Job) -> messages.JobKind:
    """The job's kind as the protocol's Literal (the model's JobKind values are the protocol's)."""
    if job.kind == JobKind.INSTALL:
        return "install"
    if job.kind == JobKind.ROLLBACK:
        return "rollback"
    raise ValueError(f"job {job.pk} has an unknown kind {job.kind!r}")


def job_document(job: Job) -> JobDocument:
    """What the device receives: the signed manifest and a fresh time-limited artifact URL (per stage
    for a pipeline job), each URL audited."""
    ttl = _url_ttl(job.timeout_seconds)

    def url_of(version: ModelVersion) -> str:
        return _device_artifact_url(version, ttl)

    deployable = job.deployable.for_deployment()
    return _job_document(job, deployable, deployable.document_fields(url_of), ttl=ttl)
