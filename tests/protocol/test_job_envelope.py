"""protocol/job_envelope.py: what an envelope binds, and that nothing else passes for one."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import gateway_tokens, job_envelope, signing
from protocol.messages import JobDocument, JobsNotify, ProtocolError, encode, parse_jobs_notify

KEY = Ed25519PrivateKey.generate()
PUBLIC = signing.public_key_b64(KEY)
KID = signing.key_id(base64.b64decode(PUBLIC))
UID = "lyon-gw-01"


def lookup(kid: str) -> str | None:
    return PUBLIC if kid == KID else None


def job(**changes: object) -> JobDocument:
    manifest = signing.canonical_text({"model": "m", "version": 2, "format": "onnx", "sha256": "a" * 64, "size": 9})
    fields = {
        "job_id": str(uuid.uuid4()), "kind": "rollback", "model": "m", "model_id": 1, "version": 2, "version_id": 5,
        "format": "onnx", "artifact_url": "https://cp.example/a", "sha256": "a" * 64, "size": 9,
        "manifest": manifest, "signature": signing.sign(KEY, manifest), "key_id": KID, "timeout_seconds": 60,
        "created_at": dt.datetime.now(dt.UTC),
    } | changes  # fmt: skip
    return JobDocument(**fields)


def claims_for(document: JobDocument, **changes: object) -> job_envelope.JobEnvelopeClaims:
    base = job_envelope.JobEnvelopeClaims(
        kid=KID, job=document.job_id, dev=UID, kind=document.kind, model=document.model, version=document.version,
        sha256=job_envelope.subject_sha256(document), exp=int(time.time()) + 600, revoked=[1],
    )  # fmt: skip
    return job_envelope.JobEnvelopeClaims(**(base.__dict__ | changes))


def test_a_valid_envelope_verifies_and_travels_in_the_job_document():
    document = job()
    envelope = job_envelope.mint(KEY, claims_for(document))
    sent = parse_jobs_notify(
        encode(JobsNotify(schema_version=1, jobs=[document.model_copy(update={"envelope": envelope})]))
    )
    claims = job_envelope.verify(sent.jobs[0].envelope, sent.jobs[0], device_uid=UID, public_key_b64=lookup)
    assert (claims.kind, claims.revoked) == ("rollback", [1])


def test_editing_the_claims_breaks_the_signature():
    document = job()
    body, signature = job_envelope.mint(KEY, claims_for(document, kind="install")).split(".")
    raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw["kind"] = "rollback"
    forged = base64.urlsafe_b64encode(json.dumps(raw).encode()).rstrip(b"=").decode() + "." + signature
    with pytest.raises(job_envelope.EnvelopeRefused, match="signature does not verify"):
        job_envelope.verify(forged, document, device_uid=UID, public_key_b64=lookup)


def test_a_gateway_token_signed_by_the_same_key_is_no_envelope():
    document = job()
    token = gateway_tokens.mint(
        KEY,
        gateway_tokens.GatewayTokenClaims(
            kid=KID, gw="gw", dev=UID, sha256="a" * 64, size=9, src="https://x/", exp=int(time.time()) + 60
        ),
    )
    with pytest.raises(job_envelope.EnvelopeRefused, match="malformed"):
        job_envelope.verify(token, document, device_uid=UID, public_key_b64=lookup)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"dev": "other"}, "for device 'other'"),
        ({"job": str(uuid.uuid4())}, "job envelope job"),
        ({"version": 3}, "job envelope version '3'"),
        ({"sha256": "b" * 64}, "job envelope sha256"),
        ({"model": "n"}, "job envelope model"),
        ({"exp": int(time.time()) - 1}, "expired"),
    ],
)
def test_an_envelope_for_something_else_is_refused(changes, reason):
    document = job()
    envelope = job_envelope.mint(KEY, claims_for(document, **changes))
    with pytest.raises(job_envelope.EnvelopeRefused, match=reason):
        job_envelope.verify(envelope, document, device_uid=UID, public_key_b64=lookup)


def test_a_pipeline_envelope_names_its_manifest_digest():
    document = job(kind="install")
    assert job_envelope.subject_sha256(document) == "a" * 64
    no_artifact = document.model_copy(update={"sha256": None})
    assert len(job_envelope.subject_sha256(no_artifact)) == 64 != job_envelope.subject_sha256(document)


def test_the_parser_refuses_an_envelope_that_is_not_two_base64url_parts():
    payload = json.loads(encode(JobsNotify(schema_version=1, jobs=[job()])))
    payload["jobs"][0]["envelope"] = "not an envelope"
    with pytest.raises(ProtocolError) as refused:
        parse_jobs_notify(json.dumps(payload).encode())
    assert refused.value.reason_code == "invalid_message"
