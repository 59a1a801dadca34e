"""Reconciliation: a device's reported `recent_jobs` repair lost updates, and the sweep reads them first."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.actors import Actor
from deployments.models import Job, JobEvent
from deployments.reconciliation import jobs_reconcile_reported
from deployments.services.device_updates import job_apply_device_update
from deployments.services.job_endings import jobs_expire_queued, jobs_sweep_timeouts
from deployments.services.jobs import deployment_create
from protocol.messages import JobUpdate, RecentJob
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")
SWEEPER = Actor.system("sweeper")


def recent(job: Job, status: str, seq: int, reason: str | None = None) -> RecentJob:
    return RecentJob(job_id=str(job.id), status=status, seq=seq, reason=reason)  # type: ignore[arg-type]


def report_state(device, *entries: RecentJob) -> None:
    device.reported_state = {"recent_jobs": [e.model_dump(mode="json") for e in entries]}
    device.save(update_fields=["reported_state"])


def started(job: Job, seq: int = 1) -> None:
    update = JobUpdate(schema_version=1, job_id=str(job.id), seq=seq, status="IN_PROGRESS", step="downloading",
                       ts=timezone.now())  # fmt: skip
    assert job_apply_device_update(uid=job.device.uid, update=update).applied


def test_the_sweep_records_what_the_device_reported_instead_of_timing_the_job_out(published_version, assert_audited):
    finished_device, silent_device = DeviceFactory(), DeviceFactory()
    finished = deployment_create(actor=OPERATOR, device=finished_device, version=published_version, timeout_seconds=30)
    silent = deployment_create(actor=OPERATOR, device=silent_device, version=published_version, timeout_seconds=30)
    started(finished)
    # its SUCCEEDED (seq 5) was lost on the way, but its retained state says so
    report_state(finished_device, recent(finished, "SUCCEEDED", 5))

    later = timezone.now() + dt.timedelta(seconds=31)
    assert jobs_sweep_timeouts(actor=SWEEPER, now=later) == [str(silent.id)]

    finished.refresh_from_db()
    silent.refresh_from_db()
    assert (finished.status, finished.last_seq) == ("SUCCEEDED", 5)
    assert silent.status == "TIMED_OUT"
    assert_audited("job", finished.pk, "job.succeeded", actor=f"device:{finished_device.uid}")
    assert not JobEvent.objects.filter(job=finished, to_status="TIMED_OUT").exists()


def test_a_stale_report_does_not_save_a_job_from_its_timeout(published_version):
    device = DeviceFactory()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version, timeout_seconds=30)
    started(job, seq=3)
    report_state(device, recent(job, "SUCCEEDED", 3))  # not newer than what we stored: an older life of it?
    later = timezone.now() + dt.timedelta(seconds=31)
    assert jobs_sweep_timeouts(actor=SWEEPER, now=later) == [str(job.id)]


def test_results_in_a_state_are_applied_once_and_only_to_the_devices_own_active_jobs(published_version):
    device, other = DeviceFactory(), DeviceFactory()
    mine = deployment_create(actor=OPERATOR, device=device, version=published_version)
    theirs = deployment_create(actor=OPERATOR, device=other, version=published_version)

    applied = jobs_reconcile_reported(
        reports=[(device.uid, [recent(mine, "FAILED", 4, "disk full"), recent(theirs, "SUCCEEDED", 9)])]
    )

    assert [(uid, job_id, o.status, o.seq) for uid, job_id, o in applied] == [(device.uid, str(mine.id), "FAILED", 4)]
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert (mine.status, mine.reason) == ("FAILED", "disk full")
    assert theirs.status == "QUEUED"
    # the same state again (a retained copy on the bridge's next subscribe): nothing more
    assert jobs_reconcile_reported(reports=[(device.uid, [recent(mine, "FAILED", 4, "disk full")])]) == []
    assert JobEvent.objects.filter(job=mine).count() == 2  # created, failed


def test_the_queued_timeout_records_a_result_the_device_reported_instead_of_never_started(published_version):
    """Every update of the job was lost (it still looks QUEUED here), but the device's state says it
    finished: the queued timeout of a rollout must not record it as never started."""
    finished_device, silent_device = DeviceFactory(), DeviceFactory()
    finished = deployment_create(actor=OPERATOR, device=finished_device, version=published_version)
    silent = deployment_create(actor=OPERATOR, device=silent_device, version=published_version)
    report_state(finished_device, recent(finished, "SUCCEEDED", 4))
    expired = jobs_expire_queued(actor=SWEEPER, job_ids=[finished.id, silent.id], queued_timeout=60)
    assert [job.id for job in expired] == [silent.id]
    finished.refresh_from_db()
    silent.refresh_from_db()
    assert (finished.status, finished.last_seq) == ("SUCCEEDED", 4)
    assert silent.status == "TIMED_OUT" and "never started" in silent.reason
