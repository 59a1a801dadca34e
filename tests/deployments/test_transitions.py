"""The one transition rule (core/transitions.py) on rollouts, waves and jobs, and the audited emergency
rollback of a rollout that is already rolling back."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditEntry
from core.transitions import InvalidTransition, transition
from deployments import exceptions
from deployments.api.serializers import RolloutDetailSerializer
from deployments.models import (
    ROLLOUT_ACTIVE,
    ROLLOUT_TERMINAL,
    ROLLOUT_TICKED,
    GateKind,
    Job,
    JobEvent,
    JobKind,
    JobStatus,
    Rollout,
    RolloutEvent,
    RolloutStatus,
    Wave,
    WaveStatus,
)
from deployments.services.device_updates import job_apply_device_update
from deployments.services.job_endings import job_cancel
from deployments.services.jobs import deployment_create
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollout_state import _rollout_transition, _wave_transition
from deployments.services.rollouts import (
    rollout_cancel_jobs,
    rollout_force_rollback,
    rollout_pause,
    rollout_rollback,
    rollout_start,
)
from deployments.services.tick import rollout_advance
from models_registry.models import ModelVersion, PipelineVersion
from protocol.messages import JobUpdate
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")


def running_rollout(version, devices: int = 4) -> Rollout:
    site = SiteFactory()
    for _ in range(devices):
        DeviceFactory(site=site, tags=["moves"])
    plan = {"target": {"filter": {"tag": "moves"}}, "waves": [{"percent": 50}, {"percent": 100}], "seed": 1}
    rollout = rollout_create(actor=OPERATOR, version=version, plan=plan)
    return rollout_start(actor=OPERATOR, rollout=rollout)


def trail(rollout: Rollout) -> tuple[int, int]:
    """(timeline rows, audit entries) of a rollout."""
    return RolloutEvent.objects.filter(rollout=rollout).count(), AuditEntry.objects.for_object(
        "rollout", rollout.pk
    ).count()


# --- the maps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [Job, Rollout, Wave, ModelVersion, PipelineVersion])
def test_each_stateful_model_declares_its_machine(model):
    states = set(model.Status.values)
    assert set(model.TRANSITIONS) == states, "every state has a row in TRANSITIONS"
    assert all(targets <= states for targets in model.TRANSITIONS.values())
    assert model.TERMINAL <= states
    # what no state can leave is terminal; a terminal state may only be left by a person's undo (rollouts)
    assert {s for s, targets in model.TRANSITIONS.items() if not targets} <= model.TERMINAL


def test_one_meaning_of_terminal_for_rollouts():
    assert ROLLOUT_TERMINAL == {RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK}
    assert not ROLLOUT_TERMINAL & ROLLOUT_TICKED and not ROLLOUT_TERMINAL & ROLLOUT_ACTIVE
    # the only way out of a finished rollout is to undo it
    assert all(Rollout.TRANSITIONS[s] <= {RolloutStatus.ROLLING_BACK} for s in ROLLOUT_TERMINAL)


def test_dead_gate_kind_is_gone():
    assert "emergency" not in GateKind.values


def test_one_invalid_transition_class():
    from models_registry import exceptions as registry

    assert exceptions.InvalidTransition is InvalidTransition is registry.InvalidTransition


# --- the helper ---------------------------------------------------------------------------------


def test_a_move_writes_the_status_and_stamps_finished_on_terminal(published_version):
    rollout = running_rollout(published_version)
    moved = transition(Rollout, pk=rollout.pk, current=RolloutStatus.RUNNING, to=RolloutStatus.ABORTED)
    assert moved.changed and moved.before == RolloutStatus.RUNNING and moved.after == RolloutStatus.ABORTED
    stored = Rollout.objects.get(pk=rollout.pk)
    assert stored.status == RolloutStatus.ABORTED and stored.finished_at == moved.fields["finished_at"]


def test_a_move_the_map_forbids_raises_and_writes_nothing(published_version):
    rollout = running_rollout(published_version)
    with pytest.raises(InvalidTransition, match="is running; it cannot become draft"):
        transition(Rollout, pk=rollout.pk, current=RolloutStatus.RUNNING, to=RolloutStatus.DRAFT)
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_already_there_is_a_no_op_without_event_or_audit(published_version):
    rollout = running_rollout(published_version)
    rollout_pause(actor=OPERATOR, rollout=rollout, reason="look")
    before = trail(rollout)
    again = rollout_pause(actor=OPERATOR, rollout=rollout, reason="look again")
    assert again.status == RolloutStatus.PAUSED and trail(rollout) == before
    moved = _rollout_transition(Rollout.objects.get(pk=rollout.pk), to=RolloutStatus.PAUSED, actor=OPERATOR)
    assert not moved.changed and trail(rollout) == before


def test_of_two_concurrent_movers_only_one_wins(published_version):
    """Both read the rollout running; the guarded update lets the first through. The second, going to the
    same state, finds it there (a no-op); going elsewhere, it conflicts. One event, one audit entry."""
    rollout = running_rollout(published_version)
    first, second, third = (Rollout.objects.get(pk=rollout.pk) for _ in range(3))
    before_events, before_audit = trail(rollout)
    assert _rollout_transition(first, to=RolloutStatus.PAUSED, actor=OPERATOR, reason="one").changed
    assert not _rollout_transition(second, to=RolloutStatus.PAUSED, actor=OPERATOR, reason="two").changed
    with pytest.raises(InvalidTransition, match="changed meanwhile: it is paused"):
        _rollout_transition(third, to=RolloutStatus.COMPLETED, actor=OPERATOR)
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.PAUSED
    assert trail(rollout) == (before_events + 1, before_audit + 1)
    assert RolloutEvent.objects.filter(rollout=rollout, to_status=RolloutStatus.PAUSED).get().reason == "one"


def test_waves_follow_the_same_rule(published_version):
    rollout = running_rollout(published_version)
    rollout_advance(rollout_id=rollout.pk)
    wave, stale = Wave.objects.get(rollout=rollout, index=0), Wave.objects.get(rollout=rollout, index=0)
    assert wave.status == WaveStatus.INSTALLING
    assert _wave_transition(wave, to=WaveStatus.CANCELED, actor=OPERATOR).changed
    assert wave.finished_at is not None  # terminal: stamped by the helper
    events = RolloutEvent.objects.filter(wave=wave).count()
    assert not _wave_transition(stale, to=WaveStatus.CANCELED, actor=OPERATOR).changed
    with pytest.raises(InvalidTransition):
        _wave_transition(stale, to=WaveStatus.BAKING, actor=OPERATOR)
    assert RolloutEvent.objects.filter(wave=wave).count() == events


def test_jobs_follow_the_same_rule(published_version):
    device = DeviceFactory()
    job = deployment_create(actor=OPERATOR, device=device, version=published_version, timeout_seconds=60)
    stale = Job.objects.select_related("device").get(pk=job.pk)
    update = JobUpdate(schema_version=1, job_id=str(job.id), seq=1, status=JobStatus.SUCCEEDED, ts=timezone.now())
    assert job_apply_device_update(uid=device.uid, update=update).applied
    # a canceller that read the job queued loses to the device: conflict, no event
    with pytest.raises(InvalidTransition, match="changed meanwhile: it is SUCCEEDED"):
        transition(Job, pk=stale.pk, current=stale.status, to=JobStatus.CANCELED)
    with pytest.raises(InvalidTransition, match="SUCCEEDED; it cannot become CANCELED"):
        job_cancel(actor=OPERATOR, job=stale, reason="too late")
    events = JobEvent.objects.filter(job=job).count()
    canceled = deployment_create(actor=OPERATOR, device=DeviceFactory(), version=published_version, timeout_seconds=60)
    job_cancel(actor=OPERATOR, job=canceled, reason="stop")
    audits = AuditEntry.objects.for_object("job", canceled.pk).count()
    job_cancel(actor=OPERATOR, job=canceled, reason="stop again")  # already there: nothing written
    assert AuditEntry.objects.for_object("job", canceled.pk).count() == audits
    assert JobEvent.objects.filter(job=canceled, to_status=JobStatus.CANCELED).count() == 1
    assert JobEvent.objects.filter(job=job).count() == events


# --- the emergency rollback ---------------------------------------------------------------------


def test_emergency_rollback_while_rolling_back_is_audited_and_evented(published_version, assert_audited):
    rollout = running_rollout(published_version)
    rollout_advance(rollout_id=rollout.pk)
    sent = list(Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL).select_related("device"))
    assert sent
    in_progress = sent[0]
    job_apply_device_update(uid=in_progress.device.uid, update=JobUpdate(
        schema_version=1, job_id=str(in_progress.id), seq=1, status=JobStatus.IN_PROGRESS, ts=timezone.now(),
    ))  # fmt: skip
    rollout = rollout_rollback(actor=OPERATOR, rollout=rollout, reason="slow")
    assert rollout.status == RolloutStatus.ROLLING_BACK and not rollout.force_rollback
    plan_before = Rollout.objects.get(pk=rollout.pk).plan.stored()
    events, audits = trail(rollout)
    admin = Actor.system("admin-console")
    rollout = rollout_force_rollback(actor=admin, rollout=rollout, reason="devices bricking")
    stored = Rollout.objects.get(pk=rollout.pk)
    assert stored.force_rollback and stored.status == RolloutStatus.ROLLING_BACK
    assert stored.plan.stored() == plan_before  # the plan stays frozen
    entry = assert_audited("rollout", rollout.pk, "rollout.force_rollback", actor=admin.label)
    assert entry.changes["force_rollback"] == {"before": False, "after": True}
    assert "devices bricking" in entry.changes["reason"]
    event = RolloutEvent.objects.filter(rollout=rollout).order_by("-id").first()
    assert event.actor == admin.label and "forced" in event.reason and "devices bricking" in event.reason
    assert trail(rollout) == (events + 1, audits + 1)
    # forcing again changes nothing
    rollout_force_rollback(actor=admin, rollout=rollout, reason="again")
    assert trail(rollout) == (events + 1, audits + 1)
    # and the flag does what it is for: jobs in progress are canceled too
    rollout_cancel_jobs(actor=admin, rollout_id=rollout.pk)
    assert Job.objects.get(pk=in_progress.pk).status == JobStatus.CANCELED


def test_emergency_rollback_of_a_running_rollout_moves_and_forces_both_audited(published_version, assert_audited):
    rollout = running_rollout(published_version)
    rollout = rollout_force_rollback(actor=OPERATOR, rollout=rollout, reason="now")
    stored = Rollout.objects.get(pk=rollout.pk)
    assert stored.status == RolloutStatus.ROLLING_BACK and stored.force_rollback
    assert RolloutDetailSerializer(stored).data["force_rollback"] is True
    assert_audited("rollout", rollout.pk, "rollout.rolling_back")
    assert_audited("rollout", rollout.pk, "rollout.force_rollback")


def test_emergency_needs_a_reason(published_version):
    rollout = running_rollout(published_version)
    with pytest.raises(exceptions.PlanInvalid):
        rollout_force_rollback(actor=OPERATOR, rollout=rollout, reason=" ")
    assert not Rollout.objects.get(pk=rollout.pk).force_rollback
