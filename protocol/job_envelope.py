"""Signed job envelopes: what the control plane vouches for in a job, beyond the signed manifest.

A manifest signature proves that a version was published; it says nothing about *this* job: which
device it is for, whether it is an install or a rollback, or whether it is still meant to run. Those
fields travel unsigned in the job document, so without an envelope anyone who can publish on a
device's `jobs/notify` could turn an install into a "rollback" and downgrade the device to any older
signed version, revoked ones included.

The envelope is `base64url(claims JSON) "." base64url(signature)`, signed with the control plane's
active Ed25519 signing key (the one that signs manifests) over `DOMAIN + claims JSON`. DOMAIN is not
JSON, so an envelope signature never passes as a manifest signature, and it differs from the gateway
token's, so neither passes as the other.

Claims: `kid` signing key id, `job` job id, `dev` device uid, `kind` install | rollback, `model` the
model (or pipeline) name, `version` its version number, `sha256` the artifact's sha256 (for a pipeline
job the sha256 of its signed manifest text), `exp` Unix seconds, `revoked` the version numbers of
that model (or pipeline) the control plane has revoked (≤ 1024), which the device must never install.

No Django import: the control plane mints envelopes, the agent and the simulator verify them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

if TYPE_CHECKING:
    from protocol.messages import JobDocument

DOMAIN = b"fogdeck-job-envelope/v1\n"
MAX_ENVELOPE_CHARS = 12 * 1024
MAX_REVOKED = 1024
KINDS = ("install", "rollback")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class EnvelopeRefused(ValueError):
    """The envelope is malformed, badly signed, expired, or does not describe this job for this device."""


@dataclass(frozen=True)
class JobEnvelopeClaims:
    kid: str
    job: str
    dev: str
    kind: str
    model: str
    version: int
    sha256: str
    exp: int
    revoked: list[int] = field(default_factory=list)


def subject_sha256(job: JobDocument) -> str:
    """What the envelope's `sha256` names: the artifact, or a pipeline's signed manifest text."""
    if job.sha256 is not None:
        return job.sha256
    return hashlib.sha256(job.manifest.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(private_key: Ed25519PrivateKey, claims: JobEnvelopeClaims) -> str:
    body = json.dumps(asdict(claims), sort_keys=True, separators=(",", ":")).encode()
    return f"{_b64(body)}.{_b64(private_key.sign(DOMAIN + body))}"


def decode(envelope: str) -> tuple[JobEnvelopeClaims, bytes, bytes]:
    """The claims (not yet verified), the signed body and the signature; EnvelopeRefused if malformed."""
    if not envelope or len(envelope) > MAX_ENVELOPE_CHARS or envelope.count(".") != 1:
        raise EnvelopeRefused("malformed job envelope")
    body_b64, signature_b64 = envelope.split(".")
    try:
        body, signature = _unb64(body_b64), _unb64(signature_b64)
        raw = json.loads(body)
        claims = JobEnvelopeClaims(**raw) if isinstance(raw, dict) else None
    except (binascii.Error, ValueError, TypeError):
        raise EnvelopeRefused("malformed job envelope") from None
    if (
        claims is None
        or not _KEY_ID.match(str(claims.kid))
        or not _SHA256.match(str(claims.sha256))
        or claims.kind not in KINDS
        or not all(isinstance(v, str) for v in (claims.job, claims.dev, claims.model))
        or not all(type(v) is int for v in (claims.version, claims.exp))
        or not isinstance(claims.revoked, list)
        or len(claims.revoked) > MAX_REVOKED
        or not all(type(v) is int for v in claims.revoked)
    ):
        raise EnvelopeRefused("malformed job envelope")
    return claims, body, signature


def check_fresh(claims: JobEnvelopeClaims, *, now: float | None = None) -> None:
    if claims.exp < (time.time() if now is None else now):
        raise EnvelopeRefused("job envelope expired")


def check_describes(claims: JobEnvelopeClaims, job: JobDocument, *, device_uid: str) -> None:
    """The signed claims must name exactly this job, this device and what the job asks for."""
    if claims.dev != device_uid:
        raise EnvelopeRefused(f"job envelope is for device {claims.dev[:64]!r}, not this one")
    expected = {
        "job": job.job_id,
        "kind": job.kind,
        "model": job.model,
        "version": job.version,
        "sha256": subject_sha256(job),
    }
    for name, value in expected.items():
        signed = getattr(claims, name)
        if signed != value:
            raise EnvelopeRefused(f"job envelope {name} {str(signed)[:80]!r} does not match the job's {value!r}")


def verify(
    envelope: str,
    job: JobDocument,
    *,
    device_uid: str,
    public_key_b64: Callable[[str], str | None],
    now: float | None = None,
) -> JobEnvelopeClaims:
    """The claims of a valid, unexpired envelope for this job and device; raises EnvelopeRefused otherwise."""
    claims, body, signature = decode(envelope)
    public = public_key_b64(claims.kid)
    if public is None:
        raise EnvelopeRefused(f"job envelope: unknown signing key {claims.kid}")
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public, validate=True)).verify(signature, DOMAIN + body)
    except (InvalidSignature, binascii.Error, ValueError):
        raise EnvelopeRefused(f"job envelope signature does not verify with key {claims.kid}") from None
    check_fresh(claims, now=now)
    check_describes(claims, job, device_uid=device_uid)
    return claims
