"""A person's (or the API's) rollout commands: start, pause, resume, approve, abort, roll back, and the
admin's emergency actions (skip the remaining gates, force a rollback).

Each command locks the rollout row, moves it and its waves through rollout_state.py (event, audit entry,
domain event in the same transaction) and queues the work that follows after commit (rollout_queue.py):
advancing the rollout now, and canceling the jobs it must not run any more (`rollout_cancel_jobs`, one
job per transaction, in the order the bridge locks: job row, then audit chain).
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record
from models_registry.deployables import Deployable, family_filter, family_lock, family_of

from ..exceptions import DeploymentRefused, InvalidTransition, PlanInvalid
from ..models import (
    ACTIVE,
    ROLLOUT_ACTIVE,
    GateKind,
    GateVerdict,
    Job,
    JobKind,
    JobStatus,
    Rollout,
    RolloutEvent,
    RolloutStatus,
    RolloutTarget,
    Wave,
    WaveStatus,
)
from ..plan import RolloutPlan
from .job_endings import job_cancel
from .rollout_drafts import _store_targets, rollout_create
from .rollout_queue import queue_advance, queue_cancel_jobs
from .rollout_state import _cancel_open_waves, _current_wave, _lock, _record_gate, _rollout_transition, _wave_transition


@transaction.atomic
def rollout_start(*, actor: Actor, rollout: Rollout) -> Rollout:
    """Start a draft: re-resolve targets and baselines now, refuse conflicts (DeploymentRefused, 409).

    A device can be in one active rollout per model (or pipeline); starts of the same model (or pipeline)
    are serialized by locking its row.
    """
    family = family_of(rollout)
    family_lock(family)
    rollout = _lock(rollout)
    if rollout.status != RolloutStatus.DRAFT:
        if rollout.status == RolloutStatus.RUNNING:
            return rollout
        raise InvalidTransition(f"rollout {rollout.pk} is {rollout.status}; only a draft can be started")
    deployable = rollout.deployable
    if not deployable.is_deployable:
        raise DeploymentRefused(f"version {deployable} is {deployable.status}: it cannot be rolled out")
    try:
        _store_targets(rollout)
    except PlanInvalid as exc:
        raise DeploymentRefused(exc.reason, field=exc.field) from None
    included = RolloutTarget.objects.filter(rollout=rollout, wave__isnull=False)
    busy = (
        RolloutTarget.objects.filter(
            family_filter(family, prefix="rollout__"),
            rollout__status__in=ROLLOUT_ACTIVE,
            wave__isnull=False,
            device_id__in=included.values("device_id"),
        )
        .exclude(rollout=rollout)
        .values_list("rollout_id", flat=True)
        .distinct()
    )
    if busy:
        count = (
            RolloutTarget.objects.filter(rollout_id__in=list(busy), wave__isnull=False)
            .filter(device_id__in=included.values("device_id"))
            .count()
        )
        raise DeploymentRefused(
            f"{count} devices are already in active rollouts of {deployable.family_name}: {sorted(busy)}",
            field="target",
        )
    if not included.exists():
        raise DeploymentRefused("no device of the target can get this version any more", field="target")
    _rollout_transition(rollout, to=RolloutStatus.RUNNING, actor=actor, started_at=timezone.now(), current_wave=0)
    queue_advance(rollout.pk)
    return rollout


@transaction.atomic
def rollout_create_and_start(*, actor: Actor, version: Deployable, plan: RolloutPlan, name: str = "") -> Rollout:
    """Create the rollout and start it, all or nothing (a refused start leaves no draft behind; the UI
    wizard's last step). Both steps are audited by `rollout_create` and `rollout_start`."""
    rollout = rollout_create(actor=actor, version=version, plan=plan, name=name)
    return rollout_start(actor=actor, rollout=rollout)


@transaction.atomic
def rollout_pause(*, actor: Actor, rollout: Rollout, reason: str = "") -> Rollout:
    """Stop dispatching and promoting; jobs already sent run to their end. Pausing a paused rollout is a no-op."""
    rollout = _lock(rollout)
    if rollout.status == RolloutStatus.PAUSED:
        return rollout
    _rollout_transition(rollout, to=RolloutStatus.PAUSED, actor=actor, reason=reason or "paused")
    return rollout


@transaction.atomic
def rollout_resume(*, actor: Actor, rollout: Rollout, reason: str = "") -> Rollout:
    """Continue a paused rollout; a wave held on an inconclusive gate bakes again from now."""
    rollout = _lock(rollout)
    if rollout.status == RolloutStatus.RUNNING:
        return rollout
    _rollout_transition(rollout, to=RolloutStatus.RUNNING, actor=actor, reason=reason or "resumed")
    wave = _current_wave(rollout)
    if wave is not None and wave.status == WaveStatus.HELD:
        _wave_transition(
            wave, to=WaveStatus.BAKING, actor=actor, reason="bakes again after resume",
            bake_started_at=timezone.now(), last_check_at=None, failed_checks=0,
        )  # fmt: skip
    queue_advance(rollout.pk)
    return rollout


APPROVABLE_ROLLOUT = frozenset({RolloutStatus.RUNNING, RolloutStatus.PAUSED})
APPROVABLE_WAVE = frozenset({WaveStatus.AWAITING_APPROVAL, WaveStatus.HELD})


def rollout_can_approve(rollout_status: str, wave_status: str | None) -> bool:
    """Whether `rollout_approve` acts on a rollout in `rollout_status` whose current wave is in
    `wave_status` (None: no current wave); the UI offers the action only then."""
    return rollout_status in APPROVABLE_ROLLOUT and wave_status in APPROVABLE_WAVE


@transaction.atomic
def rollout_approve(*, actor: Actor, rollout: Rollout, reason: str = "") -> Rollout:
    """The manual gate: let a wave awaiting approval dispatch, or promote a wave held as inconclusive."""
    rollout = _lock(rollout)
    wave = _current_wave(rollout)
    if rollout.status not in APPROVABLE_ROLLOUT or wave is None:
        raise InvalidTransition(f"rollout {rollout.pk} is {rollout.status}: nothing to approve")
    if wave.status == WaveStatus.AWAITING_APPROVAL:
        Wave.objects.filter(pk=wave.pk).update(approved_by=actor.label)
        _record_gate(wave, gate=GateKind.APPROVAL, verdict=GateVerdict.PASS, actor=actor, final=True,
                     reason=reason or "approved")  # fmt: skip
        _wave_transition(wave, to=WaveStatus.INSTALLING, actor=actor, reason=reason or "approved",
                         install_started_at=timezone.now())  # fmt: skip
    elif wave.status == WaveStatus.HELD:
        _record_gate(wave, gate=GateKind.APPROVAL, verdict=GateVerdict.PASS, actor=actor, final=True,
                     reason=reason or "promoted by a person after an inconclusive gate")  # fmt: skip
        _wave_transition(wave, to=WaveStatus.PASSED, actor=actor, reason=reason or "approved after inconclusive gate")
    else:
        raise InvalidTransition(f"wave {wave.index} is {wave.status}: it is not waiting for approval")
    audit_record(actor=actor, action="rollout.approve", object_type="rollout", object_id=rollout.pk,
                 object_repr=str(rollout.deployable), changes={"wave": wave.index, "reason": reason})  # fmt: skip
    if rollout.status == RolloutStatus.PAUSED:
        _rollout_transition(rollout, to=RolloutStatus.RUNNING, actor=actor, reason=f"wave {wave.index} approved")
    queue_advance(rollout.pk)
    return rollout


@transaction.atomic
def rollout_abort(*, actor: Actor, rollout: Rollout, reason: str = "") -> Rollout:
    """Stop dispatching for good; queued jobs are canceled (after commit), devices keep what they have."""
    rollout = _lock(rollout)
    if rollout.status == RolloutStatus.ABORTED:
        return rollout
    _rollout_transition(rollout, to=RolloutStatus.ABORTED, actor=actor, reason=reason or "aborted")
    _cancel_open_waves(rollout, actor, "rollout aborted")
    queue_cancel_jobs(rollout.pk)
    return rollout


@transaction.atomic
def rollout_rollback(*, actor: Actor, rollout: Rollout, reason: str = "", force: bool = False) -> Rollout:
    """Send every device that got the new version its own baseline back, as rollback jobs.

    Queued install jobs are canceled; with `force` (the admin emergency path) jobs in progress too.
    Devices without a baseline (first install) keep the version: there is nothing to go back to.
    """
    rollout = _lock(rollout)
    if rollout.status in (RolloutStatus.ROLLING_BACK, RolloutStatus.ROLLED_BACK) and not force:
        return rollout
    _rollout_transition(rollout, to=RolloutStatus.ROLLING_BACK, actor=actor, reason=reason or "rollback requested")
    if force:
        _force_rollback(rollout, actor=actor, reason=reason)
    _cancel_open_waves(rollout, actor, "rollout rolling back")
    queue_cancel_jobs(rollout.pk)
    queue_advance(rollout.pk)
    return rollout


@transaction.atomic
def rollout_skip_gates(*, actor: Actor, rollout: Rollout, reason: str) -> Rollout:
    """Emergency (admin): the current and remaining waves promote as soon as their jobs finish."""
    if not reason.strip():
        raise PlanInvalid("a reason is required for an emergency action", field="reason")
    rollout = _lock(rollout)
    if rollout.status not in (RolloutStatus.RUNNING, RolloutStatus.PAUSED):
        raise InvalidTransition(f"rollout {rollout.pk} is {rollout.status}: no gates left to skip")
    if rollout.skip_gates:
        return rollout
    Rollout.objects.filter(pk=rollout.pk).update(skip_gates=True)
    rollout.skip_gates = True
    RolloutEvent.objects.create(rollout=rollout, from_status=rollout.status, to_status=rollout.status,
                                reason=f"emergency: remaining gates skipped: {reason}", actor=actor.label)  # fmt: skip
    audit_record(actor=actor, action="rollout.skip_gates", object_type="rollout", object_id=rollout.pk,
                 object_repr=str(rollout.deployable), changes={"reason": reason})  # fmt: skip
    wave = _current_wave(rollout)
    if wave is not None and wave.status == WaveStatus.HELD:
        _wave_transition(wave, to=WaveStatus.PASSED, actor=actor, reason=f"emergency: {reason}")
    if rollout.status == RolloutStatus.PAUSED:
        _rollout_transition(rollout, to=RolloutStatus.RUNNING, actor=actor, reason=f"emergency: {reason}")
    queue_advance(rollout.pk)
    return rollout


def _force_rollback(rollout: Rollout, *, actor: Actor, reason: str) -> None:
    """Set the emergency flag of a rolling-back rollout (a guarded update: once, and only while rolling
    back) with its event and audit entry; install jobs in progress are then canceled too."""
    if not Rollout.objects.filter(pk=rollout.pk, status=RolloutStatus.ROLLING_BACK, force_rollback=False).update(
        force_rollback=True, updated_at=timezone.now()
    ):
        return  # already forced: nothing to record
    rollout.force_rollback = True
    RolloutEvent.objects.create(
        rollout=rollout, from_status=rollout.status, to_status=rollout.status, actor=actor.label,
        reason=f"forced: install jobs in progress are canceled too: {reason}",
    )  # fmt: skip
    audit_record(actor=actor, action="rollout.force_rollback", object_type="rollout", object_id=rollout.pk,
                 object_repr=str(rollout.deployable),
                 changes={"force_rollback": {"before": False, "after": True}, "reason": reason})  # fmt: skip


def rollout_force_rollback(*, actor: Actor, rollout: Rollout, reason: str) -> Rollout:
    """Emergency (admin): roll back now, canceling jobs in progress too. The reason is mandatory."""
    if not reason.strip():
        raise PlanInvalid("a reason is required for an emergency action", field="reason")
    return rollout_rollback(actor=actor, rollout=rollout, reason=f"emergency: {reason}", force=True)


def rollout_cancel_jobs(*, actor: Actor, rollout_id: int) -> int:
    """Cancel the rollout's install jobs that must not run any more (queued; in progress on a forced rollback).

    One job per transaction (job row, then audit chain, as the bridge does); re-running changes nothing.
    """
    rollout = Rollout.objects.get(pk=rollout_id)
    if rollout.status not in (RolloutStatus.ABORTED, RolloutStatus.ROLLING_BACK, RolloutStatus.ROLLED_BACK):
        return 0
    statuses = ACTIVE if rollout.force_rollback else {JobStatus.QUEUED}
    canceled = 0
    for job in Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL, status__in=statuses):
        try:
            job_cancel(actor=actor, job=job, reason=f"rollout {rollout.pk} {rollout.status}")
            canceled += 1
        except InvalidTransition:
            continue  # it finished meanwhile
    return canceled
