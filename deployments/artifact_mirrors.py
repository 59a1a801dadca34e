"""Gateway artifact cache, control-plane side: mirrors in job documents, and where devices got artifacts from.

A device whose `parent` is a gateway advertising a cache (`cache_url` in the gateway's reported
state) gets its job's artifact from the gateway first, with the cloud URL as the fallback. The
gateway mirror URL carries a short-lived token (protocol/gateway_tokens.py) signed with the active
signing key: it names the gateway, the device, the artifact and the cloud URL the gateway fills its
cache from. Mirrors go only to agents that list the `artifact_mirrors` capability in their state,
since an older agent refuses a job document with a field it does not know.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from django.db import transaction

from fleet.models import ArtifactTransfer, ConnectionStatus, Device
from models_registry.keys import active_key
from protocol import gateway_tokens
from protocol.messages import CAPABILITY_ARTIFACT_MIRRORS, ArtifactMirror, ArtifactSource, JobUpdate

from .models import Job, JobStatus

if TYPE_CHECKING:
    from models_registry.models import ModelVersion


def gateway_cache_url(gateway: Device | None) -> str | None:
    """The cache URL a gateway advertises, when it is usable now (not revoked, online)."""
    if gateway is None or gateway.is_revoked or gateway.status != ConnectionStatus.ONLINE:
        return None
    url = (gateway.reported_state or {}).get("cache_url")
    return url.rstrip("/") if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def understands_mirrors(device: Device) -> bool:
    capabilities = (device.reported_state or {}).get("capabilities")
    return isinstance(capabilities, list) and CAPABILITY_ARTIFACT_MIRRORS in capabilities


def job_artifact_mirrors(
    *, device: Device, version: ModelVersion, cloud_url: str, ttl: int
) -> list[ArtifactMirror] | None:
    """[gateway cache, cloud] for a capable device behind a usable gateway; None means "cloud URL only"."""
    gateway = device.parent
    cache_url = gateway_cache_url(gateway)
    if gateway is None or cache_url is None or not understands_mirrors(device):
        return None
    key = active_key()
    claims = gateway_tokens.GatewayTokenClaims(
        kid=key.key_id,
        gw=gateway.uid,
        dev=device.uid,
        sha256=version.sha256,
        size=version.size,
        src=cloud_url,
        exp=int(time.time()) + ttl,
    )
    token = gateway_tokens.mint(key.private_key, claims)
    return [
        ArtifactMirror(url=f"{cache_url}/v1/artifacts/{version.sha256}?token={token}", source="gateway"),
        ArtifactMirror(url=cloud_url, source="cloud"),
    ]


def artifact_transfer_record(*, uid: str, update: JobUpdate) -> ArtifactTransfer | None:
    """Store where a succeeded job's artifact came from (the device's SUCCEEDED update says).

    Only for a job of that device that is SUCCEEDED in the database; one row per job, so a redelivered
    update changes nothing. Reported facts like telemetry: not audited (the job's own transition is).
    """
    artifact_transfers_record_many(items=[(uid, update)])
    if _reported_source(update) is None:
        return None
    return ArtifactTransfer.objects.filter(job_id=update.job_id).first()


def _reported_source(update: JobUpdate) -> tuple[ArtifactSource, int] | None:
    """(source, bytes) when the update reports where the artifact came from: only a SUCCEEDED one does."""
    if update.status != JobStatus.SUCCEEDED or update.artifact_source is None or update.artifact_bytes is None:
        return None
    return update.artifact_source, update.artifact_bytes


def artifact_transfers_record_many(*, items: list[tuple[str, JobUpdate]]) -> int:
    """`artifact_transfer_record` for a batch of (uid, update): one query for their jobs, one insert
    (a row that exists already is left as it is). Returns the rows inserted or already there."""
    reports = {
        update.job_id: (uid, update, source)
        for uid, update in items
        if (source := _reported_source(update)) is not None
    }
    if not reports:
        return 0
    rows = []
    with transaction.atomic():
        jobs = Job.objects.select_related("device__parent", "version").filter(
            pk__in=list(reports), status=JobStatus.SUCCEEDED
        )
        for job in jobs:
            uid, update, (artifact_source, artifact_bytes) = reports[str(job.pk)]
            if job.device.uid != uid or job.version is None:
                continue
            rows.append(
                ArtifactTransfer(
                    job_id=job.pk,
                    rollout_id=job.rollout_id,
                    device=job.device,
                    gateway=job.device.parent if artifact_source == "gateway" else None,
                    sha256=job.version.sha256,
                    source=artifact_source,
                    size=artifact_bytes,
                    refused=[r.model_dump() for r in update.refused_sources or []],
                    gateway_refused=any(r.source == "gateway" for r in update.refused_sources or []),
                )
            )
        ArtifactTransfer.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
