"""A rollout's kept counts (RolloutCount rows, services/rollout_counts.py) equal a fresh aggregation of its
targets and jobs after every kind of change: dispatch, device updates one by one and in batches, retries,
cancels, timeouts, offline devices deferred, rollbacks; and compaction changes no sum."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.actors import Actor
from deployments.models import Job, JobKind, JobStatus, RolloutCount
from deployments.selectors import as_rollout_counts, rollout_counts
from deployments.services.device_updates import jobs_apply_device_updates
from deployments.services.job_endings import job_cancel, jobs_sweep_timeouts
from deployments.services.rollout_counts import rollout_counts_compact, rollout_counts_fresh
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_start
from deployments.services.tick import rollout_advance
from protocol.messages import JobUpdate
from tests.deployments.rollout_helpers import end_job, finish, publish_next_version, rolled_back_rollout
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def assert_kept_counts_are_fresh(rollout_id: int) -> None:
    kept = rollout_counts(rollout_id)
    assert kept == as_rollout_counts(rollout_counts_fresh(rollout_id).items())


def test_counts_follow_dispatch_batches_retries_cancels_timeouts_and_deferred_devices(published_version):
    site = SiteFactory()
    for _ in range(12):
        DeviceFactory(site=site, tags=["counted"])
    offline = DeviceFactory(site=site, tags=["counted"], connected=False)
    # excluded: a runtime the version cannot use
    DeviceFactory(site=site, tags=["counted"], runtimes=[{"name": "tflite", "version": "2.14"}])
    plan = {
        "target": {"filter": {"tag": "counted"}},
        "waves": [{"percent": 50}, {"percent": 100}],
        "install_gate": {"min_success_pct": 10, "max_failure_pct": 90, "min_finished": 1},
        "retry": {"FAILED": 1, "TIMED_OUT": 0},
        "offline_devices": "defer",
        "rate_per_minute": 1_000_000,
        "job_timeout_seconds": 60,
        "seed": 5,
    }
    rollout = rollout_create(actor=ACTOR, version=published_version, plan=plan)
    kept = rollout_counts(rollout.pk)
    assert kept.excluded == 1 and sum(kept.excluded_reasons.values()) >= 1
    assert sum(sum(w["jobs"].values()) for w in kept.waves.values()) == 13  # every included device NOT_SENT
    assert_kept_counts_are_fresh(rollout.pk)

    rollout_start(actor=ACTOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)  # wave 0 dispatched, the offline device (if there) deferred
    assert_kept_counts_are_fresh(rollout.pk)
    jobs = list(Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL).select_related("device").order_by("pk"))
    assert len(jobs) >= 4 and offline.pk not in {j.device_id for j in jobs}
    # a batch: several devices' updates together, one job in progress only
    now = timezone.now()
    batch = [
        (job.device.uid, JobUpdate(schema_version=1, job_id=str(job.id), seq=seq, status=status, ts=now))
        for job in jobs[:3]
        for seq, status in ((1, JobStatus.IN_PROGRESS), (2, JobStatus.SUCCEEDED))
    ]
    batch.append((jobs[3].device.uid, JobUpdate(schema_version=1, job_id=str(jobs[3].id), seq=1,
                                                status=JobStatus.IN_PROGRESS, ts=now)))  # fmt: skip
    assert all(outcome.applied for outcome in jobs_apply_device_updates(updates=batch))
    assert_kept_counts_are_fresh(rollout.pk)
    end_job(jobs[4], JobStatus.FAILED, step="verifying", reason="checksum mismatch")  # retried next tick
    job_cancel(actor=ACTOR, job=jobs[5], reason="operator")
    assert_kept_counts_are_fresh(rollout.pk)
    rollout_advance(rollout_id=rollout.pk)  # the retry replaces the failed job as the target's install job
    assert Job.objects.filter(rollout=rollout, device=jobs[4].device).count() == 2
    assert_kept_counts_are_fresh(rollout.pk)
    # the rest time out (queued or in progress past their deadline)
    jobs_sweep_timeouts(actor=ACTOR, now=timezone.now() + dt.timedelta(minutes=10))
    assert_kept_counts_are_fresh(rollout.pk)
    for _ in range(4):
        rollout_advance(rollout_id=rollout.pk)
        for job in Job.objects.filter(rollout=rollout, status=JobStatus.QUEUED).select_related("device"):
            finish(job)
        assert_kept_counts_are_fresh(rollout.pk)
    states = rollout_counts(rollout.pk).waves
    assert sum(w["jobs"].get(JobStatus.SUCCEEDED, 0) for w in states.values()) >= 3
    assert sum(w["jobs"].get(JobStatus.CANCELED, 0) for w in states.values()) == 1


def test_counts_follow_a_rollback_and_compaction_keeps_every_sum(published_version):
    site = SiteFactory()
    rollout, _failed = rolled_back_rollout(published_version, [DeviceFactory(site=site) for _ in range(8)])
    assert_kept_counts_are_fresh(rollout.pk)
    waves = rollout_counts(rollout.pk).waves
    (wave,) = waves.values()
    assert wave["rollbacks"] == {JobStatus.SUCCEEDED: 4}  # the four devices whose install succeeded
    before = rollout_counts(rollout.pk)
    rows = RolloutCount.objects.filter(rollout=rollout).count()
    assert rollout_counts_compact(rollout.pk, above=rows + 1) == 0  # under the threshold: left alone
    assert rollout_counts_compact(rollout.pk, above=0) == rows
    assert RolloutCount.objects.filter(rollout=rollout).count() < rows
    assert rollout_counts(rollout.pk) == before
    assert_kept_counts_are_fresh(rollout.pk)


def test_a_plain_deployment_writes_no_counts(published_version):
    version = publish_next_version(published_version)
    from deployments.services.jobs import deployment_create

    job = deployment_create(actor=ACTOR, device=DeviceFactory(), version=version, timeout_seconds=60)
    finish(job)
    assert not RolloutCount.objects.exists()
