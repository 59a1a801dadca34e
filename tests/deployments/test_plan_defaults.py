"""One RolloutPlan, one set of defaults: a rollout whose request leaves a field out runs with the number the
plan type gives it, the API stores that number and the engine (dispatch, gates) acts on it.

The rollouts are built the way the API's create does it (`RolloutPlanSerializer(...).to_plan()` then
`rollout_create`); the response rendering is left to test_rollout_api.py.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from audit.actors import Actor
from deployments.api.serializers import RolloutPlanSerializer
from deployments.models import GateEvaluation, GateKind, Job, JobKind, JobStatus, Rollout, RolloutStatus, WaveStatus
from deployments.plan import (
    DEFAULT_BAKE_SECONDS,
    DEFAULT_MAX_FAILURE_PCT,
    DEFAULT_MIN_FINISHED,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_MIN_SUCCESS_PCT,
    DEFAULT_OFFLINE_DEVICES,
    DEFAULT_QUEUED_TIMEOUT_SECONDS,
    InstallGate,
    RetryPolicy,
    RolloutPlan,
)
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_start
from deployments.services.tick import rollout_advance
from tests.deployments.rollout_helpers import finish, telemetry
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")


def devices(count: int) -> list:
    site = SiteFactory()
    return [DeviceFactory(site=site, tags=["defaults"]) for _ in range(count)]


def api_rollout(version, **fields: object) -> Rollout:
    """Created as POST /api/v1/rollouts/ does, from a body with only what is given (no plan fields by default)."""
    body = {"version": version.pk, "target": {"filter": {"tag": "defaults"}}, "waves": [{"percent": 100}], **fields}
    serializer = RolloutPlanSerializer(data=body)
    assert serializer.is_valid(), serializer.errors
    version, name, plan = serializer.to_plan()
    rollout = rollout_create(actor=OPERATOR, version=version, plan=plan, name=name)
    return Rollout.objects.get(pk=rollout.pk)  # the plan as stored and read back


def jobs(rollout) -> list[Job]:
    return list(Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL).select_related("device").order_by("pk"))


def test_a_plan_with_no_fields_stores_every_default_of_the_plan_type(published_version, settings):
    devices(2)
    rollout = api_rollout(published_version)
    plan = rollout.plan
    assert isinstance(plan, RolloutPlan)
    assert plan.install_gate == InstallGate() and (
        plan.install_gate.min_success_pct,
        plan.install_gate.max_failure_pct,
        plan.install_gate.min_finished,
    ) == (DEFAULT_MIN_SUCCESS_PCT, DEFAULT_MAX_FAILURE_PCT, DEFAULT_MIN_FINISHED) == (95, 10, 5)
    assert plan.rate_per_minute == settings.ROLLOUT_DEFAULT_RATE_PER_MINUTE
    assert plan.job_timeout_seconds == settings.JOB_TIMEOUT_SECONDS
    assert plan.retry == RetryPolicy() and plan.on_install_failure == "abort" and plan.health_gate is None
    assert plan.seed == rollout.seed and not plan.tier_aware and plan.maintenance_windows == ()
    # stored with every number filled in, so a later change of settings does not change a started rollout
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT plan FROM {Rollout._meta.db_table} WHERE id = %s", [rollout.pk])  # noqa: S608
        raw = cursor.fetchone()[0]
    assert '"rate_per_minute"' in str(raw) and '"min_finished"' in str(raw)


def test_default_rate_is_the_setting_and_the_dispatch_uses_it(published_version, settings):
    """ROLLOUT_DEFAULT_RATE_PER_MINUTE applies to rollouts created by the API (it used to be 600 regardless)."""
    settings.ROLLOUT_DEFAULT_RATE_PER_MINUTE = 60
    devices(30)
    rollout = api_rollout(published_version)
    assert rollout.plan.rate_per_minute == 60
    rollout_start(actor=OPERATOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    elapsed = min(settings.ROLLOUT_TICK_SECONDS, settings.ROLLOUT_DISPATCH_BURST_SECONDS)
    assert len(jobs(rollout)) == int(60 * elapsed / 60) < 30


def test_default_job_timeout_is_the_setting_and_the_jobs_get_it(published_version, settings):
    settings.JOB_TIMEOUT_SECONDS = 1234
    devices(2)
    rollout = api_rollout(published_version)
    rollout_start(actor=OPERATOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    assert rollout.plan.job_timeout_seconds == 1234
    assert [job.timeout_seconds for job in jobs(rollout)] == [1234, 1234]


def test_default_install_gate_aborts_at_min_finished_over_max_failure(published_version):
    devices(20)
    rollout = api_rollout(published_version)
    rollout_start(actor=OPERATOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    sent = jobs(rollout)
    assert len(sent) == 20
    finish(sent[0], JobStatus.FAILED)
    for job in sent[1:4]:
        finish(job)
    # 1 of 4 finished failed (25 % > 10 %), but fewer than min_finished (5) have finished: keep going
    assert rollout_advance(rollout_id=rollout.pk) == RolloutStatus.RUNNING
    finish(sent[4])
    assert rollout_advance(rollout_id=rollout.pk) == RolloutStatus.ABORTED  # on_install_failure: abort
    gate = GateEvaluation.objects.get(rollout=rollout, gate=GateKind.INSTALL, final=True)
    assert gate.verdict == "fail" and gate.figures["finished"] == DEFAULT_MIN_FINISHED
    assert gate.inputs == {"min_success_pct": 95.0, "max_failure_pct": 10.0, "min_finished": 5}


def test_default_install_gate_passes_a_wave_at_min_success(published_version):
    devices(20)
    rollout = api_rollout(published_version)
    rollout_start(actor=OPERATOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    sent = jobs(rollout)
    for job in sent[:19]:  # the failure comes last: 1 of 20 finished failed (5 %), never over max_failure_pct
        finish(job)
    finish(sent[19], JobStatus.FAILED)
    # 19 of 20 succeeded = 95 %: enough under the default, not under the engine's old fallback of 100 %
    assert rollout_advance(rollout_id=rollout.pk) == RolloutStatus.COMPLETED
    gate = GateEvaluation.objects.get(rollout=rollout, gate=GateKind.INSTALL, final=True)
    assert gate.verdict == "pass" and gate.figures["success_pct"] == DEFAULT_MIN_SUCCESS_PCT


def _bake(published_version, requests_per_device: int) -> tuple[Rollout, dt.datetime]:
    fleet = devices(2)
    rollout = api_rollout(published_version, health_gate={"max_error_rate": 0.5})
    assert rollout.plan.health_gate is not None
    assert rollout.plan.health_gate.bake_seconds == DEFAULT_BAKE_SECONDS == 300
    assert rollout.plan.health_gate.min_samples == DEFAULT_MIN_SAMPLES == 100
    rollout_start(actor=OPERATOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    for job in jobs(rollout):
        finish(job)
    rollout_advance(rollout_id=rollout.pk)
    wave = rollout.waves.get()
    assert wave.status == WaveStatus.BAKING
    started = wave.bake_started_at
    telemetry([d.pk for d in fleet], "shape-classifier", published_version.number, started + dt.timedelta(seconds=1),
              5.0, requests=requests_per_device)  # fmt: skip
    return rollout, started


def test_default_bake_lasts_300_seconds(published_version):
    rollout, started = _bake(published_version, requests_per_device=50)  # 100 samples: exactly min_samples
    rollout_advance(rollout_id=rollout.pk, now=started + dt.timedelta(seconds=DEFAULT_BAKE_SECONDS - 1))
    assert rollout.waves.get().status == WaveStatus.BAKING
    assert rollout_advance(rollout_id=rollout.pk, now=started + dt.timedelta(seconds=DEFAULT_BAKE_SECONDS)) == (
        RolloutStatus.COMPLETED
    )
    assert rollout.waves.get().status == WaveStatus.PASSED


def test_default_min_samples_holds_a_wave_with_fewer(published_version):
    rollout, started = _bake(published_version, requests_per_device=49)  # 98 samples < 100
    rollout_advance(rollout_id=rollout.pk, now=started + dt.timedelta(seconds=DEFAULT_BAKE_SECONDS))
    assert rollout.waves.get().status == WaveStatus.HELD
    gate = GateEvaluation.objects.get(rollout=rollout, gate=GateKind.HEALTH, final=True)
    assert gate.verdict == "inconclusive" and "needs 100" in gate.reason


def test_a_plan_stored_before_the_type_reads_with_the_same_defaults(published_version, settings):
    """Rollouts created before RolloutPlan: a partial dict (and the old emergency key) still read and run."""
    devices(3)
    rollout = api_rollout(published_version)
    old = {"target": {"filter": {"tag": "defaults"}}, "waves": [{"percent": 100}], "seed": 5, "force_rollback": True}
    Rollout.objects.filter(pk=rollout.pk).update(plan=old)
    stored = Rollout.objects.get(pk=rollout.pk)
    assert stored.plan.install_gate == InstallGate()
    assert stored.plan.rate_per_minute == settings.ROLLOUT_DEFAULT_RATE_PER_MINUTE and stored.plan.seed == 5
    assert stored.plan.job_timeout_seconds == settings.JOB_TIMEOUT_SECONDS
    rollout_start(actor=OPERATOR, rollout=stored)
    rollout_advance(rollout_id=rollout.pk)
    assert len(jobs(rollout)) == 3


def test_the_plan_is_frozen(published_version):
    devices(1)
    plan = api_rollout(published_version).plan
    with pytest.raises(ValueError, match="frozen"):
        plan.rate_per_minute = 1  # type: ignore[misc]


def test_an_unknown_plan_field_is_refused_with_its_name(published_version):
    from deployments.exceptions import PlanInvalid

    devices(1)
    with pytest.raises(PlanInvalid) as refused:
        rollout_create(actor=OPERATOR, version=published_version, plan={
            "target": {"filter": {"tag": "defaults"}}, "waves": [{"percent": 100}], "rate_per_minut": 5,
        })  # fmt: skip
    assert refused.value.field == "rate_per_minut"


def test_queued_timeout_and_offline_devices_defaults_are_the_plan_types(published_version):
    devices(2)
    rollout = api_rollout(published_version)
    assert rollout.plan.queued_timeout_seconds == DEFAULT_QUEUED_TIMEOUT_SECONDS == 600
    assert rollout.plan.offline_devices == DEFAULT_OFFLINE_DEVICES == "replace"
    fields = RolloutPlanSerializer().fields
    assert fields["queued_timeout_seconds"].default == DEFAULT_QUEUED_TIMEOUT_SECONDS
    assert fields["offline_devices"].default == DEFAULT_OFFLINE_DEVICES
    stored = Rollout.objects.filter(pk=rollout.pk).values_list("plan", flat=True).get()
    assert stored.queued_timeout_seconds == 600 and stored.offline_devices == "replace"


def test_default_queued_timeout_bounds_a_job_its_device_never_started(published_version):
    from django.utils import timezone

    from fleet.models import ConnectionStatus, Device

    fleet = devices(2)
    rollout = api_rollout(published_version)
    rollout_start(actor=OPERATOR, rollout=rollout)
    Device.objects.filter(pk=fleet[0].pk).update(status=ConnectionStatus.OFFLINE)
    rollout_advance(rollout_id=rollout.pk)  # the only wave: the offline device gets its job anyway
    sent = {job.device_id: job for job in jobs(rollout)}
    finish(sent[fleet[1].pk])
    now = timezone.now()
    rollout_advance(rollout_id=rollout.pk, now=now + dt.timedelta(seconds=DEFAULT_QUEUED_TIMEOUT_SECONDS - 30))
    assert Job.objects.get(pk=sent[fleet[0].pk].pk).status == JobStatus.QUEUED
    status = rollout_advance(rollout_id=rollout.pk, now=now + dt.timedelta(seconds=DEFAULT_QUEUED_TIMEOUT_SECONDS + 1))
    assert Job.objects.get(pk=sent[fleet[0].pk].pk).status == JobStatus.TIMED_OUT
    assert status == RolloutStatus.COMPLETED  # long before the job timeout (JOB_TIMEOUT_SECONDS)
    gate = GateEvaluation.objects.get(rollout=rollout, gate=GateKind.INSTALL, final=True)
    assert gate.figures["not_started"] == 1 and gate.figures["not_started_devices"][0]["device"] == fleet[0].uid


def test_default_offline_devices_replaces_an_offline_canary_device(published_version):
    from fleet.models import ConnectionStatus, Device

    devices(20)
    rollout = api_rollout(published_version, waves=[{"count": 4}, {"percent": 100}])
    rollout_start(actor=OPERATOR, rollout=rollout)
    canary = list(rollout.targets.filter(wave__index=0).values_list("device_id", flat=True))
    Device.objects.filter(pk=canary[0]).update(status=ConnectionStatus.OFFLINE)
    rollout_advance(rollout_id=rollout.pk)
    assert len(jobs(rollout)) == 4 and canary[0] not in {job.device_id for job in jobs(rollout)}
    assert len(rollout.waves.get(index=0).offline_at_dispatch["replaced"]) == 1
