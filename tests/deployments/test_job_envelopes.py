"""Signed job envelopes in the documents the control plane sends (issue 14, finding 5; protocol/job_envelope.py)."""

from __future__ import annotations

import json
import time

import pytest

from audit.actors import Actor
from deployments.job_documents import job_document
from deployments.models import JobKind
from deployments.services.jobs import deployment_create
from models_registry.keys import active_key
from models_registry.services import model_version_revoke
from protocol import job_envelope
from protocol.messages import JobsNotify, encode, parse_jobs_notify
from tests.deployments.rollout_helpers import publish_next_version
from tests.deployments.test_artifact_mirrors import report
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def verify(document, uid: str) -> job_envelope.JobEnvelopeClaims:
    key = active_key()
    return job_envelope.verify(
        document.envelope,
        document,
        device_uid=uid,
        public_key_b64=lambda kid: key.public_key_b64 if kid == key.key_id else None,
    )


def test_a_device_that_verifies_envelopes_gets_its_job_signed_for_it(published_version):
    device = report(DeviceFactory(), capabilities=["signed_jobs"])
    job = deployment_create(actor=ACTOR, device=device, version=published_version)
    # what the outbox carries and what a jobs/get reply rebuilds both parse with the strict parser
    document = parse_jobs_notify(encode(JobsNotify(schema_version=1, jobs=[job_document(job)]))).jobs[0]

    claims = verify(document, device.uid)

    assert (claims.job, claims.dev, claims.kind) == (str(job.pk), device.uid, "install")
    assert (claims.model, claims.version, claims.sha256) == (
        published_version.model.name,
        published_version.number,
        published_version.sha256,
    )
    assert time.time() < claims.exp <= time.time() + 3600
    assert claims.revoked == []
    with pytest.raises(job_envelope.EnvelopeRefused, match="for device"):
        verify(document, "another-device")


def test_a_rollback_is_signed_as_one_and_lists_the_revoked_versions(published_version):
    newer = publish_next_version(published_version)
    older_still = publish_next_version(published_version, name="fogdeck-sample-classifier-third")
    model_version_revoke(actor=ACTOR, version=older_still, reason="leaks inputs")
    device = report(DeviceFactory(), capabilities=["signed_jobs"])
    job = deployment_create(actor=ACTOR, device=device, version=published_version, kind=JobKind.ROLLBACK)

    claims = verify(job_document(job), device.uid)

    assert (claims.kind, claims.version) == ("rollback", published_version.number)
    assert claims.revoked == [older_still.number]
    assert newer.number not in claims.revoked


def test_an_old_agent_gets_no_envelope_field(published_version):
    device = report(DeviceFactory(), capabilities=["artifact_mirrors"])
    document = job_document(deployment_create(actor=ACTOR, device=device, version=published_version))
    assert document.envelope is None
    assert "envelope" not in json.loads(encode(JobsNotify(schema_version=1, jobs=[document])))["jobs"][0]
