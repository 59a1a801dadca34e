"""Canary waves pick devices that can answer (issue 13, item 4): the planner prefers reachable devices, a
device unreachable when its wave starts is replaced, deferred or dispatched as the plan says, and a job its
device never started is bounded by `queued_timeout_seconds`, not by the in-progress timeout."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditEntry
from deployments.models import (
    GateEvaluation,
    GateKind,
    Job,
    JobKind,
    JobStatus,
    Rollout,
    RolloutStatus,
    RolloutTarget,
    WaveStatus,
)
from deployments.services.rollout_drafts import rollout_create, rollout_preview
from deployments.services.rollouts import rollout_start
from deployments.services.tick import rollout_advance
from fleet.models import ConnectionStatus, Device
from tests.deployments.rollout_helpers import finish
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")
CANARY = 10


def fleet(count: int, *, offline: int = 0) -> list[Device]:
    site = SiteFactory()
    online = [DeviceFactory(site=site, tags=["offline-test"]) for _ in range(count - offline)]
    return online + [DeviceFactory(site=site, tags=["offline-test"], connected=False) for _ in range(offline)]


def started(version, **plan: object) -> Rollout:
    body = {
        "target": {"filter": {"tag": "offline-test"}},
        "waves": [{"count": CANARY}, {"percent": 100}],
        "rate_per_minute": 100_000,
        "seed": 7,
        **plan,
    }
    rollout = rollout_create(actor=OPERATOR, version=version, plan=body)
    rollout_start(actor=OPERATOR, rollout=rollout)
    return Rollout.objects.get(pk=rollout.pk)


def take_offline(rollout: Rollout, wave: int, count: int) -> list[str]:
    """`count` devices of a wave go offline after the rollout started (before its dispatch)."""
    targets = RolloutTarget.objects.filter(rollout=rollout, wave__index=wave).order_by("order")[:count]
    ids = [t.device_id for t in targets]
    Device.objects.filter(pk__in=ids).update(status=ConnectionStatus.OFFLINE)
    return sorted(Device.objects.filter(pk__in=ids).values_list("uid", flat=True))


def wave_jobs(rollout: Rollout, index: int) -> list[Job]:
    return list(Job.objects.filter(rollout=rollout, wave__index=index, kind=JobKind.INSTALL).select_related("device"))


def install_record(rollout: Rollout, wave: int) -> GateEvaluation:
    return GateEvaluation.objects.get(rollout=rollout, wave__index=wave, gate=GateKind.INSTALL, final=True)


def test_the_planner_puts_reachable_devices_in_the_canary_and_the_preview_counts_them(published_version):
    fleet(40, offline=8)  # 20 % of the fleet offline
    plan = {"target": {"filter": {"tag": "offline-test"}}, "waves": [{"count": CANARY}, {"percent": 100}], "seed": 3}
    preview = rollout_preview(version=published_version, plan=plan).summary()
    assert preview["wave_sizes"] == [CANARY, 30]
    assert preview["wave_online"] == [CANARY, 22]  # every offline device went to the later wave


def test_offline_canary_devices_are_replaced_and_the_canary_proceeds_on_online_ones(published_version):
    fleet(50)
    rollout = started(published_version)
    gone = take_offline(rollout, wave=0, count=2)  # 20 % of the canary
    rollout_advance(rollout_id=rollout.pk)
    canary = wave_jobs(rollout, 0)
    assert len(canary) == CANARY and not {j.device.uid for j in canary} & set(gone)
    wave = rollout.waves.get(index=0)
    assert wave.online_at_dispatch == CANARY and wave.size == CANARY
    assert sorted(r["device"] for r in wave.offline_at_dispatch["replaced"]) == gone
    assert RolloutTarget.objects.filter(rollout=rollout, device__uid__in=gone, wave__index=1).count() == 2
    assert AuditEntry.objects.filter(action="wave.offline_devices", object_id=str(rollout.pk)).exists()
    for job in canary:
        finish(job)
    rollout_advance(rollout_id=rollout.pk)
    record = install_record(rollout, 0)
    assert record.verdict == "pass" and record.figures["online_at_dispatch"] == CANARY
    assert sorted(r["device"] for r in record.figures["offline_at_dispatch"]["replaced"]) == gone
    assert rollout.waves.get(index=0).status == WaveStatus.PASSED


def test_offline_canary_devices_are_deferred_to_the_next_wave(published_version):
    fleet(50)
    rollout = started(published_version, offline_devices="defer")
    gone = take_offline(rollout, wave=0, count=2)
    rollout_advance(rollout_id=rollout.pk)
    waves = {w.index: w for w in rollout.waves.all()}
    assert (waves[0].size, waves[1].size) == (CANARY - 2, 40 + 2)
    assert sorted(waves[0].offline_at_dispatch["deferred"]) == gone and waves[0].online_at_dispatch == CANARY - 2
    assert len(wave_jobs(rollout, 0)) == CANARY - 2
    for job in wave_jobs(rollout, 0):
        finish(job)
    rollout_advance(rollout_id=rollout.pk)
    assert sorted(install_record(rollout, 0).figures["offline_at_dispatch"]["deferred"]) == gone
    # in the last wave there is nowhere to defer to: they are sent their jobs (dispatched after the wave's own)
    last = wave_jobs(rollout, 1)
    assert {j.device.uid for j in last} >= set(gone)
    assert sorted(rollout.waves.get(index=1).offline_at_dispatch["dispatched"]) == gone


def test_a_canary_job_never_started_times_out_by_queued_timeout_not_the_job_timeout(published_version):
    """20 % of the canary offline, jobs sent anyway: they time out after queued_timeout_seconds, the install
    gate counts them as not started (naming them), judges the wave on the devices that answered, and the
    rollout moves on long before job_timeout_seconds."""
    fleet(50)
    rollout = started(published_version, offline_devices="dispatch", queued_timeout_seconds=300,
                      job_timeout_seconds=3600)  # fmt: skip
    gone = take_offline(rollout, wave=0, count=2)
    rollout_advance(rollout_id=rollout.pk)
    canary = wave_jobs(rollout, 0)
    assert len(canary) == CANARY and rollout.waves.get(index=0).offline_at_dispatch["dispatched"] == gone
    for job in canary:
        if job.device.uid not in gone:
            finish(job)
    now = timezone.now()
    rollout_advance(rollout_id=rollout.pk, now=now + dt.timedelta(seconds=120))
    assert rollout.waves.get(index=0).status == WaveStatus.INSTALLING  # the queued jobs may still start
    rollout_advance(rollout_id=rollout.pk, now=now + dt.timedelta(seconds=301))
    timed_out = Job.objects.filter(rollout=rollout, wave__index=0, status=JobStatus.TIMED_OUT)
    assert sorted(timed_out.values_list("device__uid", flat=True)) == gone
    assert all("never started" in reason for reason in timed_out.values_list("reason", flat=True))
    record = install_record(rollout, 0)
    assert record.verdict == "pass" and record.figures["not_started"] == 2 and record.figures["failed"] == 0
    assert sorted(d["device"] for d in record.figures["not_started_devices"]) == gone
    assert record.figures["success_pct"] == 100.0 and "2 never started" in record.reason
    assert rollout.waves.get(index=0).status == WaveStatus.PASSED
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_a_job_that_started_is_not_bounded_by_the_queued_timeout(published_version):
    fleet(12)
    rollout = started(published_version, offline_devices="dispatch", queued_timeout_seconds=60)
    rollout_advance(rollout_id=rollout.pk)
    job = wave_jobs(rollout, 0)[0]
    from deployments.services.device_updates import job_apply_device_update
    from protocol.messages import JobUpdate

    update = JobUpdate(schema_version=1, job_id=str(job.id), seq=1, status=JobStatus.IN_PROGRESS, ts=timezone.now())
    job_apply_device_update(uid=job.device.uid, update=update)
    rollout_advance(rollout_id=rollout.pk, now=timezone.now() + dt.timedelta(seconds=61))
    job.refresh_from_db()
    assert job.status == JobStatus.IN_PROGRESS  # the in-progress timeout (job_timeout_seconds) applies to it


def test_a_wave_whose_devices_never_started_fails_its_install_gate(published_version):
    fleet(3)
    rollout = started(published_version, waves=[{"percent": 100}], queued_timeout_seconds=30)
    Device.objects.update(status=ConnectionStatus.OFFLINE)
    rollout_advance(rollout_id=rollout.pk)
    assert len(wave_jobs(rollout, 0)) == 3  # the last wave: dispatched anyway
    assert rollout_advance(rollout_id=rollout.pk, now=timezone.now() + dt.timedelta(seconds=31)) == (
        RolloutStatus.ABORTED
    )
    record = install_record(rollout, 0)
    assert record.verdict == "fail" and "no device of the wave started its job" in record.reason
