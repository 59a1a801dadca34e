"""jobs_apply_device_updates: a bridge batch of job updates, folded per job, with the single-update rules."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.actors import Actor
from audit.models import AuditEntry
from audit.services import audit_verify_chain
from deployments.models import Installation, Job, JobEvent, JobStatus
from deployments.services.device_updates import jobs_apply_device_updates
from deployments.services.jobs import deployment_create
from tests.deployments.test_services import update
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")


def _jobs(version, count: int) -> list[Job]:
    return [deployment_create(actor=OPERATOR, device=DeviceFactory(), version=version) for _ in range(count)]


def _whole_install(job: Job) -> list:
    """What a simulated device sends for one job, in order."""
    return [
        update(job, 1, "IN_PROGRESS", step="downloading", progress=0.0),
        update(job, 2, "IN_PROGRESS", step="downloading", progress=1.0),
        update(job, 3, "IN_PROGRESS", step="verifying"),
        update(job, 4, "IN_PROGRESS", step="activating"),
        update(job, 5, "SUCCEEDED"),
    ]


def test_a_whole_install_in_one_batch_keeps_every_transition_event_and_audit_entry(published_version):
    job = _jobs(published_version, 1)[0]
    uid = job.device.uid
    outcomes = jobs_apply_device_updates(updates=[(uid, u) for u in _whole_install(job)])
    assert all(o.applied for o in outcomes)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.last_seq == 5 and job.started_at and job.finished_at
    transitions = list(JobEvent.objects.filter(job=job).order_by("id").values_list("from_status", "to_status", "seq"))
    assert transitions == [("", "QUEUED", None), ("QUEUED", "IN_PROGRESS", 1), ("IN_PROGRESS", "SUCCEEDED", 5)]
    actions = list(AuditEntry.objects.for_object("job", job.pk).order_by("id").values_list("action", "actor"))
    assert actions == [
        ("job.create", "system:tests"),
        ("job.in_progress", f"device:{uid}"),
        ("job.succeeded", f"device:{uid}"),
    ]
    assert Installation.objects.get(device=job.device, until__isnull=True).version == published_version
    assert audit_verify_chain().ok


def test_order_of_arrival_does_not_matter_and_nothing_moves_backwards(published_version):
    job = _jobs(published_version, 1)[0]
    uid = job.device.uid
    sent = _whole_install(job)
    reordered = [sent[4], sent[0], sent[2], sent[0], sent[1], sent[3]]  # SUCCEEDED first, a duplicate
    outcomes = jobs_apply_device_updates(updates=[(uid, u) for u in reordered])
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.last_seq == 5
    # folded in seq order: 1..5 apply once each, the duplicate of seq 1 is stale
    assert sorted(o.why for o in outcomes) == ["", "", "", "", "", "stale_seq"]
    late = jobs_apply_device_updates(updates=[(uid, update(job, 6, "IN_PROGRESS", step="verifying"))])
    assert late[0].why == "job_already_terminal"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert JobEvent.objects.filter(job=job, to_status="SUCCEEDED").count() == 1


def test_a_bad_update_is_refused_alone_and_the_rest_of_the_batch_applies(published_version):
    mine, theirs = _jobs(published_version, 2)
    unknown = update(mine, 1, "IN_PROGRESS")
    unknown = unknown.model_copy(update={"job_id": str(uuid.uuid4())})
    outcomes = jobs_apply_device_updates(
        updates=[
            (mine.device.uid, update(theirs, 1, "IN_PROGRESS")),  # another device's job
            (mine.device.uid, unknown),
            (mine.device.uid, update(mine, 1, "IN_PROGRESS", step="downloading")),
        ]
    )
    assert [o.why for o in outcomes] == ["foreign_job", "unknown_job", ""]
    assert theirs.device.uid in outcomes[0].detail
    theirs.refresh_from_db()
    mine.refresh_from_db()
    assert theirs.status == JobStatus.QUEUED and mine.status == JobStatus.IN_PROGRESS


@pytest.mark.postgres_only(
    reason="statement counts: PostgreSQL folds a batch in one UPDATE … FROM (VALUES …); SQLite, one per job"
)
def test_the_cost_of_a_batch_does_not_grow_with_its_jobs(published_version):
    def statements(jobs: list[Job]) -> int:
        batch = [(j.device.uid, u) for j in jobs for u in _whole_install(j)]
        with CaptureQueriesContext(connection) as queries:
            outcomes = jobs_apply_device_updates(updates=batch)
        assert all(o.applied for o in outcomes)
        return len([q for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))])

    few, many = statements(_jobs(published_version, 2)), statements(_jobs(published_version, 20))
    # the lock, the guarded UPDATE (one statement for all jobs), events, audit, installations: once per batch
    assert many == few
    assert Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 22
