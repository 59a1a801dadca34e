"""`deployments_create_many`: many devices' jobs in a fixed number of queries, the same rows as one at a time."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.actors import Actor
from audit.models import AuditEntry
from audit.services import audit_verify_chain
from deployments.models import Job, JobEvent, JobKind, JobStatus, RolloutTarget
from deployments.rollout_streams import rollout_stream_touch
from deployments.services.jobs import DeploymentBatch, JobRequest, deployment_create, deployments_create_many
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_rollback, rollout_start
from deployments.services.tick import rollout_advance
from fleet.models import Device
from fleet.services import device_mark_seen, device_report_state, device_revoke
from models_registry.services import model_version_revoke
from outbox.models import OutboxMessage
from protocol.messages import parse_jobs_notify, utc_now
from tests.deployments.rollout_helpers import finish, publish_next_version
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")
CACHE_URL = "http://gw.plant-1.example:8700"


def report(device: Device, *, capabilities: list[str] | None = None, cache_url: str | None = None) -> Device:
    """The device comes online and reports its state (a gateway with its cache URL, an edge its capabilities)."""
    state: dict[str, object] = {
        "schema_version": 1,
        "ts": utc_now().isoformat(),
        "agent_version": "0.1.0",
        "hardware": {"arch": "aarch64", "cpu": "Cortex-A72 x4", "memory_mb": 2048, "accelerator": "none"},
        "runtimes": [{"name": "onnxruntime", "version": "1.18"}],
        "slots": {"a": None, "b": None},
        "active": {},
        **({"capabilities": capabilities} if capabilities is not None else {}),
        **({"cache_url": cache_url} if cache_url is not None else {}),
    }
    device_mark_seen(actor=Actor.device(device.uid), uid=device.uid, online=True)
    return device_report_state(actor=Actor.device(device.uid), uid=device.uid, state=state, agent_version="0.1.0")


def mixed_fleet(count: int) -> list[Device]:
    """Half the devices behind a caching gateway (their documents get mirrors), half on their own."""
    gateway = report(DeviceFactory(tier="fog", memory_mb=8192), capabilities=["artifact_mirrors"], cache_url=CACHE_URL)
    return [
        report(DeviceFactory(parent=gateway), capabilities=["artifact_mirrors"]) if i % 2 else DeviceFactory()
        for i in range(count)
    ]


def create_many(devices: list[Device], version, **kwargs) -> DeploymentBatch:  # type: ignore[no-untyped-def]
    return deployments_create_many(
        actor=OPERATOR, requests=[JobRequest(d) for d in devices], version=version, timeout_seconds=60, **kwargs
    )


def job_row(job: Job) -> dict:
    return {
        k: v
        for k, v in Job.objects.filter(pk=job.pk).values().get().items()
        if k not in ("id", "device_id", "created_at", "updated_at", "deadline_at")
    }


def event_rows(job: Job) -> list[tuple]:
    return list(JobEvent.objects.filter(job=job).values_list("from_status", "to_status", "step", "reason", "actor"))


def create_entry(job: Job) -> tuple:
    entry = AuditEntry.objects.get(object_type="job", object_id=str(job.pk), action="job.create")
    changes = {**entry.changes, "device": entry.changes["device"] == job.device.uid}
    return entry.actor, entry.object_repr.replace(job.device.uid, "<uid>"), changes


def sent_document(device: Device) -> dict:
    (message,) = OutboxMessage.objects.filter(topic=f"fogdeck/v1/devices/{device.uid}/jobs/notify")
    assert message.qos == 1 and not message.retain
    (document,) = parse_jobs_notify(bytes(message.payload)).jobs
    # what differs from job to job: the id, the time, and the expiry inside the URL's and mirror's tokens
    return document.model_dump(exclude={"job_id", "created_at", "artifact_url", "mirrors"}) | {
        "url_path": str(document.artifact_url).split("/api/v1/artifacts/")[0],
        "mirror_sources": [m.source for m in document.mirrors or []],
    }


def test_the_bulk_path_writes_the_same_job_event_audit_and_outbox_rows_as_one_at_a_time(published_version):
    fleet = mixed_fleet(6)  # even: on its own, odd: behind the gateway
    alone, together = fleet[:2], fleet[2:]
    singles = [
        deployment_create(actor=OPERATOR, device=d, version=published_version, timeout_seconds=60) for d in alone
    ]
    batch = create_many(together, published_version)
    assert not batch.refused and set(batch.jobs) == {d.pk for d in together}
    for device in together:
        job = batch.jobs[device.pk]
        assert job.device_id == device.pk and job.status == JobStatus.QUEUED
        for single in singles:
            assert job_row(job) == job_row(single)
            assert event_rows(job) == event_rows(single) == [("", "QUEUED", "", "", "system:tests")]
            assert create_entry(job) == create_entry(single)
    for index, device in enumerate(together):
        assert sent_document(device) == sent_document(alone[index % 2])
    # behind the gateway: [gateway, cloud] mirrors either way; on its own: the cloud URL only
    assert [sent_document(d)["mirror_sources"] for d in alone] == [[], ["gateway", "cloud"]]
    # one URL for the batch: one download entry saying how many jobs it went to, not one per job
    downloads = AuditEntry.objects.filter(action="model_version.download", object_id=str(published_version.pk))
    assert sorted(e.changes["jobs"] for e in downloads) == [1, 1, 4]
    assert {e.actor for e in downloads} == {"system:deployments:job-document"}
    assert audit_verify_chain().ok


def queries_for(devices: list[Device], version, **kwargs) -> int:  # type: ignore[no-untyped-def]
    with CaptureQueriesContext(connection) as queries:
        batch = create_many(devices, version, **kwargs)
    assert len(batch.jobs) == len(devices)
    return len(queries.captured_queries)


@pytest.mark.postgres_only(
    reason="statement counts: SQLite's 999-parameter cap makes Django split the 50-job bulk insert in two"
)
def test_the_number_of_queries_does_not_grow_with_the_number_of_devices(
    published_version, django_capture_on_commit_callbacks
):
    fleet = mixed_fleet(1 + 5 + 50)
    rollout = rollout_create(actor=OPERATOR, version=published_version, plan={
        "target": {"devices": [d.pk for d in fleet]}, "waves": [{"percent": 100}], "seed": 1,
    })  # fmt: skip
    create_many(fleet[:1], published_version)  # the first call may set up the audit chain head and a key
    with django_capture_on_commit_callbacks() as callbacks:
        few = queries_for(fleet[1:6], published_version, rollout_id=rollout.pk)
        many = queries_for(fleet[6:], published_version, rollout_id=rollout.pk)
    assert few == many, f"{few} queries for 5 devices, {many} for 50"
    # and the rollout page is told once per batch, not once per job
    assert [c.args for c in callbacks if getattr(c, "func", None) is rollout_stream_touch] == [(rollout.pk,)] * 2


def test_refused_devices_get_their_reasons_and_the_others_their_jobs(published_version):
    fine = [DeviceFactory(), DeviceFactory()]
    tflite_only = DeviceFactory(runtimes=[{"name": "tflite", "version": "2.14"}], memory_mb=256)
    revoked = DeviceFactory()
    device_revoke(actor=OPERATOR, device=revoked, reason="stolen")
    busy = DeviceFactory()
    earlier = deployment_create(actor=OPERATOR, device=busy, version=published_version)
    before = OutboxMessage.objects.count()

    batch = create_many([fine[0], tflite_only, revoked, busy, fine[1]], published_version)

    assert set(batch.jobs) == {d.pk for d in fine}
    assert set(batch.refused) == {tflite_only.pk, revoked.pk, busy.pk}
    assert all(r.field == "device" for r in batch.refused.values())
    assert "onnx" in batch.refused[tflite_only.pk].reason and "256 MB" in batch.refused[tflite_only.pk].reason
    assert batch.refused[revoked.pk].reason == f"device {revoked.uid} is revoked"
    assert batch.refused[busy.pk].reason == (
        f"device {busy.uid} already has an active job for model {published_version.model.name}: {earlier.id} (QUEUED)"
    )
    assert Job.objects.count() == 3 and OutboxMessage.objects.count() == before + 2
    assert AuditEntry.objects.filter(action="job.create").count() == 3


def test_a_version_that_is_not_deployable_refuses_every_device_and_writes_nothing(published_version):
    devices = [DeviceFactory(), DeviceFactory()]
    model_version_revoke(actor=OPERATOR, version=published_version, reason="bad data")
    published_version.refresh_from_db()
    entries = AuditEntry.objects.count()
    batch = create_many(devices, published_version)
    assert not batch.jobs and set(batch.refused) == {d.pk for d in devices}
    assert {(r.field, "revoked" in r.reason) for r in batch.refused.values()} == {("version", True)}
    assert not Job.objects.exists() and not OutboxMessage.objects.exists()
    assert AuditEntry.objects.count() == entries


def test_a_unique_violation_the_first_check_cannot_see_falls_back_to_one_by_one(published_version):
    """A terminal job of the same rollout, wave, device, kind and attempt is not an active job, so only the
    insert finds it: that device is refused, the rest of the batch still gets jobs."""
    devices = [DeviceFactory() for _ in range(4)]
    rollout = rollout_create(actor=OPERATOR, version=published_version, plan={
        "target": {"devices": [d.pk for d in devices]}, "waves": [{"percent": 100}], "seed": 1,
    })  # fmt: skip
    wave = rollout.waves.get()
    requests = [JobRequest(d, wave_id=wave.pk, attempt=1) for d in devices]
    first = deployments_create_many(actor=OPERATOR, requests=requests[:1], version=published_version,
                                    rollout_id=rollout.pk)  # fmt: skip
    finish(first.jobs[devices[0].pk], JobStatus.FAILED)

    batch = deployments_create_many(actor=OPERATOR, requests=requests, version=published_version, rollout_id=rollout.pk)

    assert set(batch.jobs) == {d.pk for d in devices[1:]}
    assert batch.refused[devices[0].pk].reason.startswith(f"device {devices[0].uid} already has an active job")
    assert Job.objects.filter(rollout=rollout).count() == 4
    assert OutboxMessage.objects.filter(topic__contains=devices[0].uid).count() == 1  # the first job's only
    assert audit_verify_chain().ok


def test_a_device_asked_for_twice_in_one_call_is_an_error(published_version):
    device = DeviceFactory()
    with pytest.raises(ValueError, match="one job per call"):
        create_many([device, device], published_version)
    assert not Job.objects.exists()


def test_a_wave_is_dispatched_in_chunks_with_one_job_and_one_notification_per_device(published_version, settings):
    settings.ROLLOUT_DISPATCH_CHUNK = 7
    devices = mixed_fleet(20)
    rollout = rollout_create(actor=OPERATOR, version=published_version, plan={
        "target": {"devices": [d.pk for d in devices]}, "waves": [{"percent": 100}],
        "rate_per_minute": 60000, "job_timeout_seconds": 60, "seed": 3,
    })  # fmt: skip
    rollout_start(actor=OPERATOR, rollout=rollout)
    dispatched = []
    for _ in range(10):
        rollout_advance(rollout_id=rollout.pk)
        dispatched.append(Job.objects.filter(rollout=rollout).count())
        if dispatched[-1] == len(devices):
            break
    assert dispatched[:3] == [7, 14, 20]  # a chunk per tick
    targets = list(RolloutTarget.objects.filter(rollout=rollout).select_related("install_job"))
    assert len(targets) == 20 and all(t.install_job and t.attempts == 1 and not t.skip_reason for t in targets)
    assert Counter(Job.objects.filter(rollout=rollout).values_list("device_id", flat=True)) == Counter(
        {d.pk: 1 for d in devices}
    )
    assert {t.install_job.device_id for t in targets} == {t.device_id for t in targets}
    topics = Counter(OutboxMessage.objects.values_list("topic", flat=True))
    assert topics == Counter({f"fogdeck/v1/devices/{d.uid}/jobs/notify": 1 for d in devices})
    for target in targets:
        (document,) = parse_jobs_notify(
            bytes(OutboxMessage.objects.get(topic__contains=f"/{target.device.uid}/").payload)
        ).jobs
        assert document.job_id == str(target.install_job_id)
    assert audit_verify_chain().ok


def test_a_refused_target_gets_its_skip_reason_and_the_wave_goes_on(published_version, settings):
    devices = [DeviceFactory() for _ in range(5)]
    rollout = rollout_create(actor=OPERATOR, version=published_version, plan={
        "target": {"devices": [d.pk for d in devices]}, "waves": [{"percent": 100}],
        "rate_per_minute": 60000, "seed": 3,
    })  # fmt: skip
    rollout_start(actor=OPERATOR, rollout=rollout)
    device_revoke(actor=OPERATOR, device=devices[2], reason="stolen")
    rollout_advance(rollout_id=rollout.pk)
    targets = {t.device_id: t for t in RolloutTarget.objects.filter(rollout=rollout)}
    assert targets[devices[2].pk].skip_reason == f"device {devices[2].uid} is revoked"
    assert targets[devices[2].pk].install_job_id is None and targets[devices[2].pk].attempts == 0
    assert all(targets[d.pk].install_job_id and targets[d.pk].attempts == 1 for d in devices if d != devices[2])


def test_a_rollback_sends_each_device_its_own_baseline_in_one_tick(published_version):
    second = publish_next_version(published_version)
    devices = [DeviceFactory() for _ in range(6)]
    for index, device in enumerate(devices):  # half run v1, half v2: two baselines in one rollback chunk
        finish(deployment_create(actor=OPERATOR, device=device, version=second if index % 2 else published_version))
    third = publish_next_version(second, name="fogdeck-sample-classifier-third")
    rollout = rollout_create(actor=OPERATOR, version=third, plan={
        "target": {"devices": [d.pk for d in devices]}, "waves": [{"percent": 100}],
        "rate_per_minute": 60000, "seed": 3,
    })  # fmt: skip
    rollout_start(actor=OPERATOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    for job in Job.objects.filter(rollout=rollout).select_related("device"):
        finish(job)
    rollout_rollback(actor=OPERATOR, rollout=rollout, reason="tests")
    outbox_before = OutboxMessage.objects.count()
    rollout_advance(rollout_id=rollout.pk)
    targets = list(RolloutTarget.objects.filter(rollout=rollout).select_related("rollback_job"))
    assert all(t.rollback_job and t.rollback_job.kind == JobKind.ROLLBACK for t in targets)
    assert all(t.rollback_job.version_id == t.baseline_version_id for t in targets)
    assert {t.baseline_version_id for t in targets} == {published_version.pk, second.pk}
    assert OutboxMessage.objects.count() == outbox_before + len(devices)
    assert audit_verify_chain().ok
