from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from django.utils import timezone

from audit.actors import Actor
from deployments.exceptions import DeploymentRefused, InvalidTransition
from deployments.models import Installation, Job, JobStatus
from deployments.services.device_updates import ForeignJob, job_apply_device_update
from deployments.services.job_endings import job_cancel, jobs_sweep_timeouts
from deployments.services.jobs import deployment_create
from deployments.services.pending_jobs import jobs_answer_pending
from models_registry.services import model_version_revoke
from outbox.models import OutboxMessage
from protocol.messages import JobUpdate, parse_jobs_get_accepted, parse_jobs_notify
from tests.factories import DeviceFactory, side_effects

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")


def update(job: Job, seq: int, status: str, **extra: object) -> JobUpdate:
    return JobUpdate(
        schema_version=1,
        job_id=str(job.id),
        seq=seq,
        status=status,
        ts=timezone.now(),
        **extra,  # type: ignore[arg-type]
    )


def test_deployment_creates_a_job_and_queues_its_notification_in_the_same_transaction(
    published_version, assert_audited
):
    device = DeviceFactory()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version, timeout_seconds=60)
    assert job.status == JobStatus.QUEUED
    message = OutboxMessage.objects.get()
    assert message.topic == f"fogdeck/v1/devices/{device.uid}/jobs/notify" and message.qos == 1
    notify = parse_jobs_notify(bytes(message.payload))
    document = notify.jobs[0]
    assert document.job_id == str(job.id) and document.sha256 == published_version.sha256
    assert document.manifest == published_version.manifest and document.signature == published_version.signature
    assert document.artifact_url.startswith("http://") and "/api/v1/artifacts/" in document.artifact_url
    assert json.loads(document.manifest)["version"] == published_version.number
    assert_audited("job", job.pk, "job.create", actor="system:tests")


def test_one_active_job_per_device_and_model(published_version):
    device = DeviceFactory()
    first = deployment_create(actor=OPERATOR, device=device, version=published_version)
    with pytest.raises(DeploymentRefused, match=f"already has an active job.*{first.id}"):
        deployment_create(actor=OPERATOR, device=device, version=published_version)
    job_cancel(actor=OPERATOR, job=first, reason="changed my mind")
    assert deployment_create(actor=OPERATOR, device=device, version=published_version).status == "QUEUED"


def test_incompatible_and_undeployable_targets_are_refused_with_reasons(published_version):
    tflite_only = DeviceFactory(runtimes=[{"name": "tflite", "version": "2.14"}], memory_mb=256)
    with pytest.raises(DeploymentRefused) as refused:
        deployment_create(actor=OPERATOR, device=tflite_only, version=published_version)
    assert "onnx" in refused.value.reason and "256" in refused.value.reason
    model_version_revoke(actor=OPERATOR, version=published_version, reason="bad data")
    published_version.refresh_from_db()
    with pytest.raises(DeploymentRefused, match="revoked"):
        deployment_create(actor=OPERATOR, device=DeviceFactory(), version=published_version)
    assert not Job.objects.exists()


def test_device_updates_move_forward_only(published_version, assert_audited):
    device = DeviceFactory()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    assert job_apply_device_update(uid=device.uid, update=update(job, 1, "IN_PROGRESS", step="downloading")).applied
    assert job_apply_device_update(
        uid=device.uid, update=update(job, 2, "IN_PROGRESS", step="verifying", progress=0.5)
    ).applied
    # a duplicate and a reordered older update change nothing
    assert job_apply_device_update(uid=device.uid, update=update(job, 2, "IN_PROGRESS")).why == "stale_seq"
    assert job_apply_device_update(uid=device.uid, update=update(job, 3, "QUEUED")).why == "backward_transition"
    job.refresh_from_db()
    assert (job.status, job.step, job.last_seq) == ("IN_PROGRESS", "verifying", 2)
    assert job_apply_device_update(uid=device.uid, update=update(job, 4, "SUCCEEDED")).applied
    # terminal is final
    assert job_apply_device_update(uid=device.uid, update=update(job, 5, "FAILED", reason="x")).why == (
        "job_already_terminal"
    )
    job.refresh_from_db()
    assert job.status == "SUCCEEDED" and job.finished_at is not None
    assert [e.to_status for e in job.events.all()] == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]
    assert_audited("job", job.pk, "job.succeeded", actor=f"device:{device.uid}")
    installed = Installation.objects.get(device=device, until__isnull=True)
    assert installed.version == published_version and installed.job == job


def test_a_device_cannot_update_another_devices_job(published_version):
    a, b = DeviceFactory(), DeviceFactory()
    job = deployment_create(actor=OPERATOR, device=a, version=published_version)
    with pytest.raises(ForeignJob):
        job_apply_device_update(uid=b.uid, update=update(job, 1, "SUCCEEDED"))
    job.refresh_from_db()
    assert job.status == "QUEUED"
    assert (
        job_apply_device_update(
            uid=a.uid,
            update=JobUpdate(schema_version=1, job_id=str(uuid.uuid4()), seq=1, status="SUCCEEDED", ts=timezone.now()),
        ).why
        == "unknown_job"
    )


def test_jobs_get_answers_with_every_active_job(published_version):
    device = DeviceFactory()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    assert jobs_answer_pending(uid=device.uid, request_id="r-1") == 1
    reply = OutboxMessage.objects.filter(topic__endswith="/jobs/get/accepted").get()
    accepted = parse_jobs_get_accepted(bytes(reply.payload))
    assert accepted.request_id == "r-1" and [j.job_id for j in accepted.jobs] == [str(job.id)]


def test_timeouts_are_swept_once_with_the_reason(published_version, assert_audited):
    device = DeviceFactory()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version, timeout_seconds=30)
    assert jobs_sweep_timeouts(actor=Actor.system("sweeper"), now=timezone.now()) == []
    later = timezone.now() + dt.timedelta(seconds=31)
    assert jobs_sweep_timeouts(actor=Actor.system("sweeper"), now=later) == [str(job.id)]
    assert jobs_sweep_timeouts(actor=Actor.system("sweeper"), now=later) == []
    job.refresh_from_db()
    assert job.status == "TIMED_OUT" and "no terminal update within 30s" in job.reason
    assert_audited("job", job.pk, "job.timed_out", actor="system:sweeper")
    cancel = parse_jobs_notify(bytes(OutboxMessage.objects.order_by("-id").first().payload))
    assert cancel.cancel == [str(job.id)]
    with pytest.raises(InvalidTransition):
        job_cancel(actor=OPERATOR, job=job, reason="too late")


def test_side_effects_wait_for_commit(published_version, django_capture_on_commit_callbacks):
    device = DeviceFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        deployment_create(actor=OPERATOR, device=device, version=published_version)
    # the notification is an outbox row in the same transaction, not an on-commit publish
    assert side_effects(callbacks) == [] and OutboxMessage.objects.count() == 1
