"""Staged canary rollouts: plan, start, promote wave by wave through gates, pause, abort, roll back.

Guarantees:
* Status changes of rollouts and waves are guarded updates along ROLLOUT_TRANSITIONS / WAVE_TRANSITIONS;
  each writes a RolloutEvent (the timeline) and an audit entry in the same transaction.
* `rollout_advance` (the beat tick) locks its rollout row with SELECT … FOR UPDATE SKIP LOCKED: a second
  worker skips a rollout being advanced, and a worker killed mid-tick rolls back everything it did.
  A job belongs to (rollout, wave, device, kind, attempt), unique in the database, so no device gets a
  second execution for a wave even if two ticks raced.
* Jobs go out through `deployments_create_many`, one call per chunk (the same rules as `deployment_create`:
  compatibility re-checked per device, outbox in the same transaction), in chunks at the plan's rate limit.
* Job cancellations (abort, rollback) run after commit, one job per transaction, in the order the
  bridge locks (job row, then audit chain): never a long transaction holding many job rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import random
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_deferred, audit_record
from core.events import publish
from models_registry.models import ModelVersion, Pipeline, PipelineVersion, RegisteredModel
from telemetry.streaming import rollout_stream_touch

from . import gates
from .exceptions import DeploymentRefused, InvalidTransition, PlanInvalid
from .models import (
    ACTIVE,
    HAS_BASELINE,
    ROLLOUT_ACTIVE,
    ROLLOUT_TICKED,
    ROLLOUT_TRANSITIONS,
    WAVE_TERMINAL,
    WAVE_TRANSITIONS,
    GateEvaluation,
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
from .rollout_plan import Plan, Subject, plan_rollout, resolve_target
from .services import JobRequest, deployments_create_many, job_cancel

logger = logging.getLogger(__name__)

GATE_INSTALL = Actor.system("gate:install")
GATE_HEALTH = Actor.system("gate:health")
GATE_APPROVAL = Actor.system("gate:approval")


# --- transitions ---------------------------------------------------------------------------------


def _rollout_transition(rollout: Rollout, *, to: str, actor: Actor, reason: str = "", **fields: Any) -> None:
    """Guarded update along ROLLOUT_TRANSITIONS; InvalidTransition (with why) when the state forbids it."""
    if to not in ROLLOUT_TRANSITIONS[rollout.status]:
        raise InvalidTransition(f"rollout {rollout.pk} is {rollout.status}; it cannot become {to}")
    now = timezone.now()
    values = {"status": to, "status_reason": reason, "updated_at": now, **fields}
    if to in (RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK):
        values["finished_at"] = now
    if not Rollout.objects.filter(pk=rollout.pk, status=rollout.status).update(**values):
        raise InvalidTransition(f"rollout {rollout.pk} changed meanwhile; try again")
    RolloutEvent.objects.create(
        rollout=rollout, from_status=rollout.status, to_status=to, reason=reason, actor=actor.label
    )
    audit_record(
        actor=actor,
        action=f"rollout.{to}",
        object_type="rollout",
        object_id=rollout.pk,
        object_repr=str(rollout.subject),
        changes={"status": {"before": rollout.status, "after": to}, **({"reason": reason} if reason else {})},
    )
    _publish_rollout_event("rollout.state_changed", rollout, from_status=rollout.status, to_status=to,
                           reason=reason, actor=actor, at=now)  # fmt: skip
    if to == RolloutStatus.ROLLED_BACK:
        _publish_rollout_event("rollout.rolled_back", rollout, from_status=rollout.status, to_status=to,
                               reason=reason, actor=actor, at=now)  # fmt: skip
    for key, value in values.items():
        setattr(rollout, key, value)
    transaction.on_commit(functools.partial(rollout_stream_touch, rollout.pk))


def _publish_rollout_event(kind: str, rollout: Rollout, *, actor: Actor, at: dt.datetime, **fields: object) -> None:
    """Domain event (webhooks) for a rollout; sent after commit, so only what really happened goes out."""
    publish(
        kind, rollout=rollout.pk, name=rollout.name, model=rollout.subject_name, version=rollout.subject.number,
        pipeline=bool(rollout.pipeline_version_id), actor=actor.label, at=at.isoformat(), **fields,
    )  # fmt: skip


def _wave_transition(wave: Wave, *, to: str, actor: Actor, reason: str = "", **fields: Any) -> None:
    if to not in WAVE_TRANSITIONS[wave.status]:
        raise InvalidTransition(f"wave {wave.index} is {wave.status}; it cannot become {to}")
    values: dict[str, Any] = {"status": to, **fields}
    if to in WAVE_TERMINAL:
        values["finished_at"] = timezone.now()
    if not Wave.objects.filter(pk=wave.pk, status=wave.status).update(**values):
        raise InvalidTransition(f"wave {wave.index} changed meanwhile; try again")
    RolloutEvent.objects.create(
        rollout_id=wave.rollout_id, wave=wave, from_status=wave.status, to_status=to, reason=reason, actor=actor.label
    )
    audit_record(
        actor=actor,
        action=f"wave.{to}",
        object_type="rollout",
        object_id=wave.rollout_id,
        object_repr=f"wave {wave.index}",
        changes={
            "wave": wave.index,
            "status": {"before": wave.status, "after": to},
            **({"reason": reason} if reason else {}),
        },
    )
    for key, value in values.items():
        setattr(wave, key, value)
    transaction.on_commit(functools.partial(rollout_stream_touch, wave.rollout_id))


def _record_gate(
    wave: Wave,
    *,
    gate: str,
    verdict: str,
    actor: Actor,
    final: bool,
    result: gates.Verdict | None = None,
    reason: str = "",
) -> GateEvaluation:
    transaction.on_commit(functools.partial(rollout_stream_touch, wave.rollout_id))
    return GateEvaluation.objects.create(
        rollout_id=wave.rollout_id,
        wave=wave,
        gate=gate,
        verdict=verdict,
        final=final,
        inputs=result.inputs if result else {},
        figures=result.figures if result else {},
        reason=reason or (result.reason if result else ""),
        actor=actor.label,
    )


def _after_commit(task_name: str, rollout_id: int) -> None:
    """Queue a rollout task once the transaction commits (the beat tick would get there anyway)."""

    def send() -> None:
        from . import tasks

        task: Callable[..., Any] = getattr(tasks, task_name)
        try:
            task.delay(rollout_id)
        except Exception:  # the broker being down must not fail a committed request; beat retries
            logger.warning("could not queue %s for rollout %s", task_name, rollout_id, exc_info=True)

    transaction.on_commit(send)


# --- planning ------------------------------------------------------------------------------------


def _check_version(version: Subject) -> None:
    if not version.is_deployable:
        field = "pipeline_version" if isinstance(version, PipelineVersion) else "version"
        raise PlanInvalid(f"version {version} is {version.status}: only published versions are rolled out", field=field)


def _deploy_kwargs(subject: Subject) -> dict[str, Any]:
    """`deployment_create`'s argument for either kind of subject."""
    return {"pipeline_version": subject} if isinstance(subject, PipelineVersion) else {"version": subject}


def rollout_preview(*, version: Subject, plan: dict[str, Any]) -> Plan:
    """What a rollout with this plan would do now: waves' sizes and excluded devices. Writes nothing."""
    _check_version(version)
    devices = resolve_target(plan["target"]).with_inventory().select_related("site")
    planned = plan_rollout(
        version=version,
        devices=devices,
        waves=plan["waves"],
        seed=int(plan.get("seed", 0)),
        tier_aware=bool(plan.get("tier_aware", False)),
    )
    if not planned.included and not planned.excluded:
        raise PlanInvalid("the target matches no device", field="target")
    return planned


def _store_targets(rollout: Rollout) -> Plan:
    planned = rollout_preview(version=rollout.subject, plan={**rollout.plan, "seed": rollout.seed})
    RolloutTarget.objects.filter(rollout=rollout).delete()
    waves = {w.index: w for w in rollout.waves.all()}
    for index, size in enumerate(planned.wave_sizes):
        Wave.objects.filter(pk=waves[index].pk).update(size=size)
    rows = [
        RolloutTarget(
            rollout=rollout,
            device=p.device,
            wave=waves[p.wave] if p.wave is not None else None,
            excluded_reasons=p.excluded,
            baseline_version=p.baseline if isinstance(p.baseline, ModelVersion) else None,
            baseline_pipeline_version=p.baseline if isinstance(p.baseline, PipelineVersion) else None,
            profile=p.profile,
            site_id=p.device.site_id,
            tier=p.device.tier,
            order=p.order,
        )
        for p in [*planned.included, *planned.excluded]
    ]
    RolloutTarget.objects.bulk_create(rows, batch_size=1000)
    return planned


@transaction.atomic
def rollout_create(*, actor: Actor, version: Subject, plan: dict[str, Any], name: str = "") -> Rollout:
    """A draft rollout of a model version or a pipeline version: plan stored, targets resolved, incompatible
    devices excluded with their reasons (for a pipeline, every stage's).

    Nothing is sent until `rollout_start`. PlanInvalid (400) names the wrong field.
    """
    _check_version(version)
    seed = int(plan["seed"]) if plan.get("seed") is not None else random.SystemRandom().randrange(2**31)
    is_pipeline = isinstance(version, PipelineVersion)
    rollout = Rollout.objects.create(
        name=name or f"{version.pipeline.name if is_pipeline else version.model.name} v{version.number}",  # type: ignore[union-attr]
        model_id=None if is_pipeline else version.model_id,  # type: ignore[union-attr]
        version=None if is_pipeline else version,
        pipeline_id=version.pipeline_id if is_pipeline else None,  # type: ignore[union-attr]
        pipeline_version=version if is_pipeline else None,
        plan={**plan, "seed": seed},
        seed=seed,
        created_by=actor.label,
    )
    for index, spec in enumerate(plan["waves"]):
        Wave.objects.create(rollout=rollout, index=index, spec=spec, requires_approval=bool(spec.get("approval")))
    planned = _store_targets(rollout)
    if not planned.included:
        raise PlanInvalid(
            f"no device of the target can get {version}: {planned.summary()['excluded_reasons']}", field="target"
        )
    RolloutEvent.objects.create(rollout=rollout, to_status=RolloutStatus.DRAFT, actor=actor.label)
    audit_record(
        actor=actor,
        action="rollout.create",
        object_type="rollout",
        object_id=rollout.pk,
        object_repr=str(version),
        changes={("pipeline_version" if is_pipeline else "version"): str(version), "plan": rollout.plan,
                 "wave_sizes": planned.wave_sizes, "excluded": len(planned.excluded)},
    )  # fmt: skip
    return rollout


# the rollout row only: its version columns are outer joins (either may be NULL), which PostgreSQL cannot lock
_ROLLOUT_LOCK = ("self",)
_ROLLOUT_RELATED = ("version__model", "model", "pipeline_version__pipeline", "pipeline")


def _lock(rollout: Rollout) -> Rollout:
    return Rollout.objects.select_for_update(of=_ROLLOUT_LOCK).select_related(*_ROLLOUT_RELATED).get(pk=rollout.pk)


# --- operator actions ----------------------------------------------------------------------------


@transaction.atomic
def rollout_start(*, actor: Actor, rollout: Rollout) -> Rollout:
    """Start a draft: re-resolve targets and baselines now, refuse conflicts (DeploymentRefused, 409).

    A device can be in one active rollout per model (or pipeline); starts of the same model (or pipeline)
    are serialized by locking its row.
    """
    if rollout.pipeline_id is not None:
        Pipeline.objects.select_for_update().filter(pk=rollout.pipeline_id).first()
    else:
        RegisteredModel.objects.select_for_update().filter(pk=rollout.model_id).first()
    rollout = _lock(rollout)
    if rollout.status != RolloutStatus.DRAFT:
        if rollout.status == RolloutStatus.RUNNING:
            return rollout
        raise InvalidTransition(f"rollout {rollout.pk} is {rollout.status}; only a draft can be started")
    if not rollout.subject.is_deployable:
        raise DeploymentRefused(f"version {rollout.subject} is {rollout.subject.status}: it cannot be rolled out")
    try:
        _store_targets(rollout)
    except PlanInvalid as exc:
        raise DeploymentRefused(exc.reason, field=exc.field) from None
    included = RolloutTarget.objects.filter(rollout=rollout, wave__isnull=False)
    busy = (
        RolloutTarget.objects.filter(
            **(
                {"rollout__pipeline_id": rollout.pipeline_id}
                if rollout.pipeline_id is not None
                else {"rollout__model_id": rollout.model_id}
            ),
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
            f"{count} devices are already in active rollouts of {rollout.subject_name}: {sorted(busy)}", field="target"
        )
    if not included.exists():
        raise DeploymentRefused("no device of the target can get this version any more", field="target")
    _rollout_transition(rollout, to=RolloutStatus.RUNNING, actor=actor, started_at=timezone.now(), current_wave=0)
    _after_commit("rollout_advance_task", rollout.pk)
    return rollout


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
    _after_commit("rollout_advance_task", rollout.pk)
    return rollout


@transaction.atomic
def rollout_approve(*, actor: Actor, rollout: Rollout, reason: str = "") -> Rollout:
    """The manual gate: let a wave awaiting approval dispatch, or promote a wave held as inconclusive."""
    rollout = _lock(rollout)
    wave = _current_wave(rollout)
    if rollout.status not in (RolloutStatus.RUNNING, RolloutStatus.PAUSED) or wave is None:
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
                 object_repr=str(rollout.subject), changes={"wave": wave.index, "reason": reason})  # fmt: skip
    if rollout.status == RolloutStatus.PAUSED:
        _rollout_transition(rollout, to=RolloutStatus.RUNNING, actor=actor, reason=f"wave {wave.index} approved")
    _after_commit("rollout_advance_task", rollout.pk)
    return rollout


def _cancel_open_waves(rollout: Rollout, actor: Actor, reason: str) -> None:
    for wave in rollout.waves.exclude(status__in=WAVE_TERMINAL):
        _wave_transition(wave, to=WaveStatus.CANCELED, actor=actor, reason=reason)


@transaction.atomic
def rollout_abort(*, actor: Actor, rollout: Rollout, reason: str = "") -> Rollout:
    """Stop dispatching for good; queued jobs are canceled (after commit), devices keep what they have."""
    rollout = _lock(rollout)
    if rollout.status == RolloutStatus.ABORTED:
        return rollout
    _rollout_transition(rollout, to=RolloutStatus.ABORTED, actor=actor, reason=reason or "aborted")
    _cancel_open_waves(rollout, actor, "rollout aborted")
    _after_commit("rollout_cancel_jobs_task", rollout.pk)
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
    if force and rollout.status == RolloutStatus.ROLLING_BACK:
        Rollout.objects.filter(pk=rollout.pk).update(plan={**rollout.plan, "force_rollback": True})
    else:
        _rollout_transition(rollout, to=RolloutStatus.ROLLING_BACK, actor=actor, reason=reason or "rollback requested")
        if force:
            Rollout.objects.filter(pk=rollout.pk).update(plan={**rollout.plan, "force_rollback": True})
    _cancel_open_waves(rollout, actor, "rollout rolling back")
    _after_commit("rollout_cancel_jobs_task", rollout.pk)
    _after_commit("rollout_advance_task", rollout.pk)
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
                 object_repr=str(rollout.subject), changes={"reason": reason})  # fmt: skip
    wave = _current_wave(rollout)
    if wave is not None and wave.status == WaveStatus.HELD:
        _wave_transition(wave, to=WaveStatus.PASSED, actor=actor, reason=f"emergency: {reason}")
    if rollout.status == RolloutStatus.PAUSED:
        _rollout_transition(rollout, to=RolloutStatus.RUNNING, actor=actor, reason=f"emergency: {reason}")
    _after_commit("rollout_advance_task", rollout.pk)
    return rollout


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
    statuses = ACTIVE if rollout.plan.get("force_rollback") else {JobStatus.QUEUED}
    canceled = 0
    for job in Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL, status__in=statuses):
        try:
            job_cancel(actor=actor, job=job, reason=f"rollout {rollout.pk} {rollout.status}")
            canceled += 1
        except InvalidTransition:
            continue  # it finished meanwhile
    return canceled


# --- the tick ------------------------------------------------------------------------------------


def _current_wave(rollout: Rollout) -> Wave | None:
    if rollout.current_wave is None:
        return None
    return Wave.objects.filter(rollout=rollout, index=rollout.current_wave).first()


def _closed_sites(rollout: Rollout, now: dt.datetime) -> set[int]:
    """Sites with maintenance windows (UTC "HH:MM" to "HH:MM", may wrap midnight), none open now."""
    windows: dict[int, bool] = {}
    current = now.astimezone(dt.UTC).strftime("%H:%M")
    for window in rollout.plan.get("maintenance_windows", []):
        start, end = window["start"], window["end"]
        inside = start <= current < end if start <= end else (current >= start or current < end)
        windows[window["site"]] = windows.get(window["site"], False) or inside
    return {site for site, open_now in windows.items() if not open_now}


def _rate_per_minute(rollout: Rollout) -> float:
    rate = float(rollout.plan.get("rate_per_minute") or settings.ROLLOUT_DEFAULT_RATE_PER_MINUTE)
    ramp = rollout.plan.get("exponential_rate")
    if ramp:
        # AWS IoT Jobs' exponentialRate: start at base, multiply each time `every_succeeded` more succeed
        succeeded = Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL, status=JobStatus.SUCCEEDED).count()
        steps = succeeded // max(1, int(ramp.get("every_succeeded", 1)))
        rate = min(rate, float(ramp["base_per_minute"]) * float(ramp.get("factor", 2)) ** min(steps, 30))
    return rate


def _dispatch(rollout: Rollout, wave: Wave, actor: Actor, now: dt.datetime) -> int:
    """Create the next chunk of the wave's jobs (retries first), as many as the rate limit allows now."""
    last = rollout.last_dispatch_at or (now - dt.timedelta(seconds=settings.ROLLOUT_TICK_SECONDS))
    elapsed = min((now - last).total_seconds(), settings.ROLLOUT_DISPATCH_BURST_SECONDS)
    budget = min(int(_rate_per_minute(rollout) * elapsed / 60), settings.ROLLOUT_DISPATCH_CHUNK)
    if budget < 1:
        return 0
    retry = rollout.plan.get("retry", {})
    closed = _closed_sites(rollout, now)
    base = RolloutTarget.objects.select_for_update(skip_locked=True, of=("self",)).select_related(
        "device", "install_job"
    )
    base = base.filter(wave=wave, skip_reason="").exclude(site_id__in=closed)
    if rollout.plan.get("tier_aware"):
        # an edge device waits until the gateway it sits behind (when in this wave) has finished
        waiting = RolloutTarget.objects.filter(wave=wave).filter(
            Q(install_job__isnull=True, skip_reason="") | Q(install_job__status__in=ACTIVE)
        )
        base = base.exclude(device__parent_id__in=waiting.values("device_id"))
    retryable = [s for s, n in retry.items() if int(n) > 0]
    due = list(base.filter(install_job__status__in=retryable).order_by("order")[:budget]) if retryable else []
    due = [t for t in due if t.install_job and gates.retries_left(t, t.install_job.status, retry)]
    due += list(base.filter(install_job__isnull=True).order_by("order")[: budget - len(due)])
    timeout = int(rollout.plan.get("job_timeout_seconds") or settings.JOB_TIMEOUT_SECONDS)
    if due:
        batch = deployments_create_many(
            actor=actor, requests=[JobRequest(t.device, wave_id=wave.pk, attempt=t.attempts + 1) for t in due],
            **_deploy_kwargs(rollout.subject), timeout_seconds=timeout, rollout_id=rollout.pk,
        )  # fmt: skip
        refused = [t for t in due if t.device_id in batch.refused]
        for target in refused:
            target.skip_reason = batch.refused[target.device_id].reason[:1000]
        RolloutTarget.objects.bulk_update(refused, ["skip_reason"], batch_size=1000)
        # each target's new job is the one of its wave, device and next attempt (unique): one UPDATE for the
        # chunk, where bulk_update's CASE per row took 40 % of a 1000-job tick in Python
        RolloutTarget.objects.filter(pk__in=[t.pk for t in due if t.device_id in batch.jobs]).update(
            install_job=Subquery(
                Job.objects.filter(
                    rollout=rollout, wave_id=wave.pk, device_id=OuterRef("device_id"), kind=JobKind.INSTALL,
                    attempt=OuterRef("attempts") + 1,
                ).values("pk")
            ),
            attempts=F("attempts") + 1,
        )  # fmt: skip
        Rollout.objects.filter(pk=rollout.pk).update(last_dispatch_at=now)
        rollout.last_dispatch_at = now
    return len(due)


def _fail_rollout(rollout: Rollout, wave: Wave, *, gate: str, actor: Actor, reason: str) -> None:
    _wave_transition(wave, to=WaveStatus.FAILED, actor=actor, reason=reason)
    on_failure = rollout.plan.get("on_install_failure", "abort") if gate == GateKind.INSTALL else "rollback"
    text = f"{gate} gate failed at wave {wave.index}: {reason}"
    _publish_rollout_event("rollout.gate_failed", rollout, gate=gate, wave=wave.index, reason=reason,
                           action=on_failure, actor=actor, at=timezone.now())  # fmt: skip
    if on_failure == "rollback":
        _rollout_transition(rollout, to=RolloutStatus.ROLLING_BACK, actor=actor, reason=text)
    else:
        _rollout_transition(rollout, to=RolloutStatus.ABORTED, actor=actor, reason=text)
    _cancel_open_waves(rollout, actor, text)
    _after_commit("rollout_cancel_jobs_task", rollout.pk)


def _advance_wave(rollout: Rollout, wave: Wave, now: dt.datetime) -> bool:
    """One step of the current wave; True when it moved on and the tick should look again."""
    system = Actor.system("rollouts")
    if wave.status == WaveStatus.PENDING:
        if wave.requires_approval and not wave.approved_by and not rollout.skip_gates:
            _wave_transition(
                wave, to=WaveStatus.AWAITING_APPROVAL, actor=GATE_APPROVAL, reason="needs a person's approval"
            )
            return False
        _wave_transition(wave, to=WaveStatus.INSTALLING, actor=system, install_started_at=now)
        return True
    if wave.status == WaveStatus.INSTALLING:
        _dispatch(rollout, wave, system, now)
        result = gates.install_gate(rollout, wave)
        if result.verdict == "fail" and not rollout.skip_gates:
            _record_gate(
                wave, gate=GateKind.INSTALL, verdict=GateVerdict.FAIL, actor=GATE_INSTALL, final=True, result=result
            )
            _fail_rollout(rollout, wave, gate=GateKind.INSTALL, actor=GATE_INSTALL, reason=result.reason)
            return False
        if result.verdict in ("pending", "fail"):
            return False  # `fail` here only when gates are skipped: wait for the jobs to finish
        if rollout.skip_gates:
            _record_gate(wave, gate=GateKind.INSTALL, verdict=GateVerdict.SKIPPED, actor=GATE_INSTALL, final=True,
                         result=result, reason="skipped (emergency)")  # fmt: skip
            _wave_transition(wave, to=WaveStatus.PASSED, actor=GATE_INSTALL, reason="gates skipped (emergency)")
            return True
        _record_gate(
            wave, gate=GateKind.INSTALL, verdict=GateVerdict.PASS, actor=GATE_INSTALL, final=True, result=result
        )
        if rollout.plan.get("health_gate"):
            _wave_transition(wave, to=WaveStatus.BAKING, actor=GATE_INSTALL, reason=result.reason, bake_started_at=now)
            return False
        _wave_transition(wave, to=WaveStatus.PASSED, actor=GATE_INSTALL, reason=result.reason)
        return True
    if wave.status == WaveStatus.BAKING:
        return _bake(rollout, wave, now)
    if wave.status == WaveStatus.PASSED:
        nxt = Wave.objects.filter(rollout=rollout, index=wave.index + 1).first()
        if nxt is None:
            _rollout_transition(
                rollout, to=RolloutStatus.COMPLETED, actor=system, reason=f"all {wave.index + 1} waves passed"
            )
            return False
        Rollout.objects.filter(pk=rollout.pk).update(current_wave=nxt.index)
        rollout.current_wave = nxt.index
        return True
    return False


def _bake(rollout: Rollout, wave: Wave, now: dt.datetime) -> bool:
    gate = rollout.plan["health_gate"]
    if rollout.skip_gates:
        _record_gate(wave, gate=GateKind.HEALTH, verdict=GateVerdict.SKIPPED, actor=GATE_HEALTH, final=True,
                     reason="skipped (emergency)")  # fmt: skip
        _wave_transition(wave, to=WaveStatus.PASSED, actor=GATE_HEALTH, reason="gates skipped (emergency)")
        return True
    bake = float(gate.get("bake_seconds", 60))
    interval = float(gate.get("check_interval_seconds") or max(1.0, bake / 5))
    started = wave.bake_started_at or now  # set when the wave entered BAKING
    bake_over = now >= started + dt.timedelta(seconds=bake)
    if not bake_over and wave.last_check_at and (now - wave.last_check_at).total_seconds() < interval:
        return False
    result = gates.health_gate(rollout, wave, since=started, until=now)
    Wave.objects.filter(pk=wave.pk).update(last_check_at=now)
    wave.last_check_at = now
    tolerated = int(gate.get("tolerated_failures", 0))
    if result.verdict == "fail":
        failed = wave.failed_checks + 1
        Wave.objects.filter(pk=wave.pk).update(failed_checks=failed)
        wave.failed_checks = failed
        result.figures["failed_checks"] = failed
        if failed > tolerated:
            _record_gate(
                wave, gate=GateKind.HEALTH, verdict=GateVerdict.FAIL, actor=GATE_HEALTH, final=True, result=result
            )
            _fail_rollout(rollout, wave, gate=GateKind.HEALTH, actor=GATE_HEALTH, reason=result.reason)
            return False
        if not bake_over:
            _record_gate(
                wave, gate=GateKind.HEALTH, verdict=GateVerdict.FAIL, actor=GATE_HEALTH, final=False, result=result
            )
            return False
    if not bake_over:
        _record_gate(wave, gate=GateKind.HEALTH, verdict=result.verdict, actor=GATE_HEALTH, final=False, result=result)
        return False
    if result.verdict in ("pass", "fail"):  # `fail` within the tolerated count at the end: the last word is a pass
        _record_gate(wave, gate=GateKind.HEALTH, verdict=GateVerdict.PASS, actor=GATE_HEALTH, final=True, result=result)
        _wave_transition(wave, to=WaveStatus.PASSED, actor=GATE_HEALTH, reason=result.reason)
        return True
    _record_gate(
        wave, gate=GateKind.HEALTH, verdict=GateVerdict.INCONCLUSIVE, actor=GATE_HEALTH, final=True, result=result
    )
    _wave_transition(wave, to=WaveStatus.HELD, actor=GATE_HEALTH, reason=result.reason)
    reason = f"health gate inconclusive at wave {wave.index}: {result.reason}; a person decides"
    _rollout_transition(rollout, to=RolloutStatus.PAUSED, actor=GATE_HEALTH, reason=reason)
    return False


def _advance_rollback(rollout: Rollout, now: dt.datetime) -> None:
    actor = Actor.system("rollouts:rollback")
    due = list(
        RolloutTarget.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("device", "baseline_version__model", "baseline_pipeline_version__pipeline")
        .filter(HAS_BASELINE)
        .filter(
            rollout=rollout,
            install_job__status=JobStatus.SUCCEEDED,
            rollback_job__isnull=True,
            skip_reason="",
        )
        .order_by("order")[: settings.ROLLOUT_DISPATCH_CHUNK]
    )
    timeout = int(rollout.plan.get("job_timeout_seconds") or settings.JOB_TIMEOUT_SECONDS)
    # devices go back to different baselines: one batch per baseline (a handful), in dispatch order
    by_baseline: dict[Subject, list[RolloutTarget]] = {}
    for target in due:
        if target.baseline is not None:  # excluded by the query; narrows the type
            by_baseline.setdefault(target.baseline, []).append(target)
    for baseline, targets in by_baseline.items():
        batch = deployments_create_many(
            actor=actor, requests=[JobRequest(t.device, wave_id=t.wave_id, attempt=1) for t in targets],
            **_deploy_kwargs(baseline), kind=JobKind.ROLLBACK, timeout_seconds=timeout, rollout_id=rollout.pk,
        )  # fmt: skip
        refused = [t for t in targets if t.device_id in batch.refused]
        for target in refused:
            target.skip_reason = f"rollback: {batch.refused[target.device_id].reason}"[:1000]
        RolloutTarget.objects.bulk_update(refused, ["skip_reason"], batch_size=1000)
        # as in `_dispatch`: a target's rollback job is the one of its wave and device (unique), one UPDATE
        RolloutTarget.objects.filter(pk__in=[t.pk for t in targets if t.device_id in batch.jobs]).update(
            rollback_job=Subquery(
                Job.objects.filter(
                    rollout=rollout, wave_id=OuterRef("wave_id"), device_id=OuterRef("device_id"),
                    kind=JobKind.ROLLBACK, attempt=1,
                ).values("pk")
            )
        )  # fmt: skip
    if due:
        return
    if Job.objects.filter(rollout=rollout, status__in=ACTIVE).exists():
        return  # installs still running may yet succeed (and then need a rollback), rollbacks still running
    rolled = RolloutTarget.objects.filter(rollout=rollout, rollback_job__status=JobStatus.SUCCEEDED).count()
    failed = (
        RolloutTarget.objects.filter(rollout=rollout, rollback_job__isnull=False)
        .exclude(rollback_job__status=JobStatus.SUCCEEDED)
        .count()
        + RolloutTarget.objects.filter(rollout=rollout)
        .exclude(skip_reason="")
        .filter(skip_reason__startswith="rollback:")
        .count()
    )
    kept = (
        RolloutTarget.objects.filter(rollout=rollout, install_job__status=JobStatus.SUCCEEDED)
        .exclude(HAS_BASELINE)
        .count()
    )
    _rollout_transition(
        rollout, to=RolloutStatus.ROLLED_BACK, actor=actor,
        reason=f"{rolled} devices back on their baseline; {failed} rollbacks failed; "
        f"{kept} first installs kept (no baseline). {rollout.status_reason}".strip(),
    )  # fmt: skip


def rollout_advance(*, rollout_id: int, now: dt.datetime | None = None) -> str | None:
    """One tick of one rollout (beat, or queued after an action). Safe to run twice or concurrently:
    the rollout row is claimed with SKIP LOCKED and everything it does commits or rolls back together.
    Returns the rollout's status afterwards, None when another worker holds it or it is not ticked.
    """
    with transaction.atomic(), audit_deferred():  # the audit chain head is locked only at the end of the tick
        rollout = (
            Rollout.objects.select_for_update(skip_locked=True, of=_ROLLOUT_LOCK)
            .select_related(*_ROLLOUT_RELATED)
            .filter(pk=rollout_id, status__in=ROLLOUT_TICKED)
            .first()
        )
        if rollout is None:
            return None
        now = now or timezone.now()
        if rollout.status == RolloutStatus.ROLLING_BACK:
            _advance_rollback(rollout, now)
            return rollout.status
        start_at = rollout.plan.get("start_at")
        if start_at and now < dt.datetime.fromisoformat(start_at):
            return rollout.status
        for _ in range(2 * Wave.objects.filter(rollout=rollout).count() + 2):
            wave = _current_wave(rollout)
            if wave is None or rollout.status != RolloutStatus.RUNNING or not _advance_wave(rollout, wave, now):
                break
        return rollout.status


def rollouts_tick(*, now: dt.datetime | None = None) -> dict[int, str | None]:
    """Advance every running or rolling-back rollout (each in its own transaction)."""
    ids = list(Rollout.objects.filter(status__in=ROLLOUT_TICKED).order_by("pk").values_list("pk", flat=True))
    return {pk: rollout_advance(rollout_id=pk, now=now) for pk in ids}
