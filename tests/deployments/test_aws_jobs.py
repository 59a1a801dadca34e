"""Fogdeck jobs through the AWS IoT Jobs device API (deployments/aws_jobs.py), without a broker: requests
in, replies and notifications out through the outbox."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from django.utils import timezone

from audit.actors import Actor
from deployments.aws_jobs import aws_jobs_handle_requests
from deployments.models import Job, JobEvent, JobStatus
from deployments.services.job_endings import job_cancel, jobs_sweep_timeouts
from deployments.services.jobs import deployment_create
from outbox.models import OutboxMessage
from protocol import aws_jobs as aws
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")


def aws_device(**kwargs):
    return DeviceFactory(job_dialect="aws-iot-jobs", **kwargs)


def outbox(after: int = 0) -> list[tuple[str, dict]]:
    return [(m.topic, json.loads(bytes(m.payload))) for m in OutboxMessage.objects.filter(pk__gt=after).order_by("pk")]


def last_id() -> int:
    return OutboxMessage.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def ask(uid: str, suffix: str, body: dict | bytes) -> tuple[str, dict, tuple[str, str] | None]:
    """Send one request as the bridge would; (reply topic, reply, verdict)."""
    before = last_id()
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    verdict = aws_jobs_handle_requests(requests=[aws.parse_request(f"$aws/things/{uid}/jobs/{suffix}", payload)])[0]
    topic, reply = outbox(before)[0]
    return topic, reply, verdict


def test_a_deployment_to_an_aws_device_is_announced_on_notify_and_notify_next(published_version):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version, timeout_seconds=60)
    (notify_topic, notify), (next_topic, upcoming) = outbox()
    assert notify_topic == f"$aws/things/{device.uid}/jobs/notify"
    assert [s["jobId"] for s in notify["jobs"]["QUEUED"]] == [str(job.pk)]
    assert next_topic == f"$aws/things/{device.uid}/jobs/notify-next"
    execution = upcoming["execution"]
    assert execution["jobId"] == str(job.pk) and execution["thingName"] == device.uid
    assert execution["status"] == "QUEUED" and execution["versionNumber"] == 1 and execution["executionNumber"] == 1
    document = execution["jobDocument"]
    assert document["sha256"] == published_version.sha256 and document["signature"] == published_version.signature
    assert document["manifest"] == published_version.manifest and document["key_id"] == published_version.key_id
    assert "/api/v1/artifacts/" in document["artifact_url"]


def test_a_fogdeck_device_still_gets_its_own_notify(published_version):
    device = DeviceFactory()
    deployment_create(actor=OPERATOR, device=device, version=published_version)
    assert [topic for topic, _ in outbox()] == [f"fogdeck/v1/devices/{device.uid}/jobs/notify"]


def test_start_next_then_succeeded_records_the_status_details(published_version, assert_audited):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    topic, reply, verdict = ask(device.uid, "start-next", {"clientToken": "t-1", "statusDetails": {"step": "download"}})
    assert verdict is None and topic == f"$aws/things/{device.uid}/jobs/start-next/accepted"
    assert reply["clientToken"] == "t-1" and reply["execution"]["status"] == "IN_PROGRESS"
    assert reply["execution"]["versionNumber"] == 2 and reply["execution"]["jobDocument"]["job_id"] == str(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.IN_PROGRESS and job.status_details == {"step": "download"}

    details = {"installed": "v1", "latencyMs": "4"}
    body = {"status": "SUCCEEDED", "statusDetails": details, "expectedVersion": 2, "clientToken": "t-2",
            "includeJobExecutionState": True}  # fmt: skip
    before = last_id()
    topic, reply, verdict = ask(device.uid, f"{job.pk}/update", body)
    assert verdict is None and topic == f"$aws/things/{device.uid}/jobs/{job.pk}/update/accepted"
    assert reply["clientToken"] == "t-2" and reply["executionState"] == {
        "status": "SUCCEEDED", "statusDetails": details, "versionNumber": 3}  # fmt: skip
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.status_details == details
    assert_audited("job", job.pk, "job.succeeded", actor=f"device:{device.uid}")
    assert JobEvent.objects.filter(job=job, to_status="SUCCEEDED").exists()
    # the next job changed (there is none): notify and notify-next follow the reply
    after = outbox(before)
    assert [t for t, _ in after][1:] == [
        f"$aws/things/{device.uid}/jobs/notify",
        f"$aws/things/{device.uid}/jobs/notify-next",
    ]
    assert after[1][1]["jobs"] == {} and "execution" not in after[2][1]


def test_failed_keeps_the_details_as_the_reason(published_version):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    ask(device.uid, "start-next", {})
    ask(device.uid, f"{job.pk}/update", {"status": "FAILED", "statusDetails": {"reason": "smoke test failed"}})
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.reason == "smoke test failed"
    assert job.status_details == {"reason": "smoke test failed"}


def test_a_stale_expected_version_is_a_version_mismatch_and_changes_nothing(published_version):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    ask(device.uid, "start-next", {})
    topic, reply, verdict = ask(device.uid, f"{job.pk}/update", {"status": "SUCCEEDED", "expectedVersion": 1,
                                                                 "clientToken": "stale"})  # fmt: skip
    assert topic.endswith("/update/rejected") and reply["code"] == "VersionMismatch" and reply["clientToken"] == "stale"
    assert reply["executionState"]["versionNumber"] == 2 and reply["executionState"]["status"] == "IN_PROGRESS"
    assert verdict and verdict[0] == "aws_VersionMismatch"
    assert Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS


def test_one_thing_cannot_read_or_update_another_things_job(published_version):
    owner, other = aws_device(), aws_device()
    job = deployment_create(actor=OPERATOR, device=owner, version=published_version)
    for suffix, body in ((f"{job.pk}/get", {}), (f"{job.pk}/update", {"status": "SUCCEEDED"})):
        topic, reply, _ = ask(other.uid, suffix, body)
        assert topic.startswith(f"$aws/things/{other.uid}/") and reply["code"] == "ResourceNotFound"
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


def test_a_finished_execution_cannot_move_and_cannot_be_described(published_version):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    ask(device.uid, f"{job.pk}/update", {"status": "REJECTED"})
    _, reply, _ = ask(device.uid, f"{job.pk}/update", {"status": "IN_PROGRESS"})
    assert reply["code"] == "InvalidStateTransition" and reply["executionState"]["status"] == "REJECTED"
    _, reply, _ = ask(device.uid, f"{job.pk}/get", {})
    assert reply["code"] == "TerminalStateReached"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", "InvalidJson"),
        (b"[1]", "InvalidJson"),
        (b'{"status": "SUCCEEDED", "expectedVersion": "2", "clientToken": "x"}', "InvalidRequest"),
        (b'{"status": "CANCELED", "clientToken": "x"}', "InvalidRequest"),
        (b'{"status": "DONE", "clientToken": "x"}', "InvalidRequest"),
    ],
)
def test_bad_requests_are_answered_with_the_documented_codes(published_version, payload, code):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    topic, reply, verdict = ask(device.uid, f"{job.pk}/update", payload)
    assert topic.endswith("/update/rejected") and reply["code"] == code and verdict[0] == f"aws_{code}"
    if code == "InvalidRequest":
        assert reply["clientToken"] == "x"
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


def test_unknown_job_and_describe_next(published_version):
    device = aws_device()
    _, reply, _ = ask(device.uid, f"{uuid.uuid4()}/update", {"status": "SUCCEEDED"})
    assert reply["code"] == "ResourceNotFound"
    _, reply, _ = ask(device.uid, "$next/get", {"clientToken": "n"})
    assert reply == {"clientToken": "n", "timestamp": reply["timestamp"]}  # nothing pending: no execution
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    _, reply, _ = ask(device.uid, "$next/get", {"includeJobDocument": False})
    assert reply["execution"]["jobId"] == str(job.pk) and "jobDocument" not in reply["execution"]
    _, reply, _ = ask(device.uid, "get", {"clientToken": "g"})
    assert reply["clientToken"] == "g" and [s["jobId"] for s in reply["queuedJobs"]] == [str(job.pk)]
    assert reply["inProgressJobs"] == []


def test_step_timeout_moves_the_deadline_but_never_past_the_jobs_own(published_version):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version, timeout_seconds=3600)
    own = job.deadline_at
    ask(device.uid, "start-next", {"stepTimeoutInMinutes": 2})
    job.refresh_from_db()
    assert job.deadline_at < own - dt.timedelta(minutes=50)
    ask(device.uid, f"{job.pk}/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 10080})
    job.refresh_from_db()
    assert abs((job.deadline_at - own).total_seconds()) < 1


def test_cancel_and_timeout_tell_an_aws_device_through_notify_next(published_version):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version, timeout_seconds=30)
    before = last_id()
    job_cancel(actor=OPERATOR, job=job, reason="operator")
    assert [t for t, _ in outbox(before)] == [
        f"$aws/things/{device.uid}/jobs/notify",
        f"$aws/things/{device.uid}/jobs/notify-next",
    ]
    assert "execution" not in outbox(before)[1][1]

    second = aws_device()
    job = deployment_create(actor=OPERATOR, device=second, version=published_version, timeout_seconds=30)
    before = last_id()
    assert jobs_sweep_timeouts(actor=OPERATOR, now=timezone.now() + dt.timedelta(seconds=60)) == [str(job.pk)]
    assert [t for t, _ in outbox(before)][-1] == f"$aws/things/{second.uid}/jobs/notify-next"
    assert not any(t.startswith("fogdeck/") for t, _ in outbox(before))


DEVICES = "/api/v1/devices/"


def test_the_dialect_is_set_through_the_api_audited_and_checked(admin_client, assert_audited):
    device = DeviceFactory()
    assert admin_client.get(f"{DEVICES}{device.pk}/").json()["job_dialect"] == "fogdeck"
    response = admin_client.patch(f"{DEVICES}{device.pk}/", {"job_dialect": "aws-iot-jobs"}, format="json")
    assert response.status_code == 200, response.json()
    entry = assert_audited("device", device.pk, "device.update")
    assert entry.changes["job_dialect"] == {"before": "fogdeck", "after": "aws-iot-jobs"}
    refused = admin_client.patch(f"{DEVICES}{device.pk}/", {"job_dialect": "mqtt-v5"}, format="json")
    assert refused.status_code == 400 and "job_dialect" in json.dumps(refused.json())


def test_the_dialect_comes_with_the_csv_import(admin_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from fleet.models import Device
    from tests.factories import SiteFactory

    SiteFactory(name="Lyon")
    csv = (
        "uid,site,tier,arch,memory_mb,job_dialect\n"
        "lyon-aws-1,Lyon,edge,aarch64,2048,aws-iot-jobs\n"
        "lyon-fd-1,Lyon,edge,aarch64,2048,\n"
        "lyon-bad-1,Lyon,edge,aarch64,2048,greengrass\n"
    )
    upload = SimpleUploadedFile("fleet.csv", csv.encode())
    report = admin_client.post("/api/v1/devices/import/", {"file": upload}, format="multipart").json()
    assert (report["created"], report["failed"]) == (2, 1)
    assert report["rows"][2]["errors"][0]["field"] == "job_dialect"
    assert dict(Device.objects.values_list("uid", "job_dialect")) == {
        "lyon-aws-1": "aws-iot-jobs", "lyon-fd-1": "fogdeck"}  # fmt: skip


def test_the_job_detail_shows_the_status_details(published_version, operator_client):
    device = aws_device()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version)
    ask(device.uid, f"{job.pk}/update", {"status": "FAILED", "statusDetails": {"reason": "no space left"}})
    body = operator_client.get(f"/api/v1/deployments/{job.pk}/").json()
    assert body["status"] == "FAILED" and body["status_details"] == {"reason": "no space left"}
