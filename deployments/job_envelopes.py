"""Signed job envelopes, control-plane side (protocol/job_envelope.py says what they vouch for and why).

Every job document for an agent that lists the `signed_jobs` capability carries an envelope signed
with the active signing key: it binds the job id, the device uid, the kind (install or rollback), the
model and version, the artifact's sha256, an expiry (the artifact URL's lifetime), and the version
numbers of that model the registry has revoked. Older agents (no capability) get no envelope, since a
strict receiver refuses a field it does not know; they keep their old, weaker checks until upgraded.
"""

from __future__ import annotations

import time

from fleet.models import Device
from models_registry.deployables import family_versions
from models_registry.keys import SigningKey, active_key
from models_registry.models import Status
from protocol import job_envelope
from protocol.messages import CAPABILITY_SIGNED_JOBS, JobDocument

from .models import Job


def understands_signed_jobs(device: Device) -> bool:
    capabilities = (device.reported_state or {}).get("capabilities")
    return isinstance(capabilities, list) and CAPABILITY_SIGNED_JOBS in capabilities


class JobEnvelopes:
    """Signs the envelopes of one batch of documents: the key and each model's revoked versions are read once."""

    def __init__(self) -> None:
        self._key: SigningKey | None = None
        self._revoked: dict[tuple[str, int], list[int]] = {}

    def _revoked_numbers(self, job: Job) -> list[int]:
        family = job.family
        if family not in self._revoked:
            rows = family_versions(family).filter(status=Status.REVOKED)
            # the newest first: past the protocol's limit, the oldest revocations matter least
            numbers = list(rows.order_by("-number").values_list("number", flat=True)[: job_envelope.MAX_REVOKED])
            self._revoked[family] = sorted(numbers)
        return self._revoked[family]

    def sign(self, job: Job, document: JobDocument, *, ttl: int) -> JobDocument:
        """`document` with its envelope, for a device that verifies them; unchanged for an older agent."""
        if not understands_signed_jobs(job.device):
            return document
        if self._key is None:
            self._key = active_key()
        claims = job_envelope.JobEnvelopeClaims(
            kid=self._key.key_id,
            job=document.job_id,
            dev=job.device.uid,
            kind=document.kind,
            model=document.model,
            version=document.version,
            sha256=job_envelope.subject_sha256(document),
            exp=int(time.time()) + ttl,
            revoked=self._revoked_numbers(job),
        )
        return document.model_copy(update={"envelope": job_envelope.mint(self._key.private_key, claims)})
