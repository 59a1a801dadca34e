"""devices_mark_seen_many and jobs_answer_pending_many: a bridge batch of status messages and jobs/get."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.actors import Actor
from audit.models import AuditEntry
from audit.services import audit_verify_chain
from deployments.services.jobs import deployment_create
from deployments.services.pending_jobs import jobs_answer_pending_many
from fleet.models import Device
from fleet.services import device_revoke, devices_mark_seen_many
from outbox.models import OutboxMessage
from protocol.messages import parse_jobs_get_accepted
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def test_a_batch_applies_in_order_audits_each_flip_and_refuses_revoked_and_unknown(
    django_capture_on_commit_callbacks,
):
    flapping, steady, revoked = DeviceFactory(status="offline"), DeviceFactory(status="online"), DeviceFactory()
    device_revoke(actor=Actor.system("tests"), device=revoked)
    reports = [(flapping.uid, True), (steady.uid, True), (flapping.uid, False), (revoked.uid, True), ("nobody", True)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        refused = devices_mark_seen_many(reports=reports)
    assert refused == {revoked.uid: "revoked_device", "nobody": "unknown_device"}
    assert Device.objects.get(pk=flapping.pk).status == "offline"  # the last report wins
    steady_after = Device.objects.get(pk=steady.pk)
    assert steady_after.status == "online" and steady_after.last_seen is not None
    flips = list(
        AuditEntry.objects.for_object("device", flapping.pk)
        .filter(action__in=["device.online", "device.offline"])
        .order_by("id")
        .values_list("action", "actor")
    )
    assert flips == [("device.online", f"device:{flapping.uid}"), ("device.offline", f"device:{flapping.uid}")]
    assert not AuditEntry.objects.for_object("device", steady.pk).filter(action="device.online").exists()  # no change
    assert callbacks, "the fleet page's broadcast waits for the commit"
    assert audit_verify_chain().ok


@pytest.mark.postgres_only(
    reason="statement counts: SQLite's 999-parameter cap makes Django split a 100-row bulk insert in two"
)
def test_status_batch_costs_the_same_for_ten_or_a_hundred_devices():
    def statements(count: int) -> int:
        devices = [DeviceFactory(status="offline") for _ in range(count)]
        with CaptureQueriesContext(connection) as queries:
            devices_mark_seen_many(reports=[(d.uid, True) for d in devices])
        return len(queries)

    assert statements(10) == statements(100)


def test_jobs_get_of_many_devices_answers_each_with_its_own_active_jobs(published_version):
    busy, idle = DeviceFactory(), DeviceFactory()
    job = deployment_create(actor=Actor.system("tests"), device=busy, version=published_version)
    OutboxMessage.objects.all().delete()
    sent = jobs_answer_pending_many(requests=[(busy.uid, "r-1"), (idle.uid, "r-2")])
    assert sent == {busy.uid: 1, idle.uid: 0}
    replies = {m.topic: parse_jobs_get_accepted(bytes(m.payload)) for m in OutboxMessage.objects.all()}
    busy_reply = replies[f"fogdeck/v1/devices/{busy.uid}/jobs/get/accepted"]
    idle_reply = replies[f"fogdeck/v1/devices/{idle.uid}/jobs/get/accepted"]
    assert busy_reply.request_id == "r-1" and [d.job_id for d in busy_reply.jobs] == [str(job.id)]
    assert busy_reply.jobs[0].artifact_url.startswith("http")
    assert idle_reply.request_id == "r-2" and idle_reply.jobs == []
    download = AuditEntry.objects.filter(action="model_version.download").order_by("-id").first()
    assert download is not None and download.changes["jobs"] == 1
