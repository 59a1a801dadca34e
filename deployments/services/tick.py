"""The rollout tick: promote each running rollout wave by wave through its gates, or move a rolling-back
one on (rollback.py).

Guarantees:
* `rollout_advance` (the beat tick, or queued after an action) locks its rollout row with SELECT … FOR
  UPDATE SKIP LOCKED: a second worker skips a rollout being advanced, and a worker killed mid-tick rolls
  back everything it did. A job belongs to (rollout, wave, device, kind, attempt), unique in the database,
  so no device gets a second execution for a wave even if two ticks raced.
* A wave installs (dispatch.py, at the plan's rate limit), passes its install gate, bakes under its health
  gate when the plan has one, and passes; every check is recorded (`_record_gate`), and a failed gate
  fails the rollout (`_fail_rollout`): abort or roll back, its jobs canceled after commit.
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_deferred

from .. import gates
from ..models import ROLLOUT_TICKED, GateKind, GateVerdict, Rollout, RolloutStatus, Wave, WaveStatus
from ..offline_devices import wave_expire_queued, wave_place_unreachable
from ..plan import HealthGate
from .dispatch import _dispatch
from .rollback import _advance_rollback
from .rollout_counts import rollout_counts_compact
from .rollout_queue import queue_cancel_jobs
from .rollout_state import (
    _cancel_open_waves,
    _current_wave,
    _publish_rollout_event,
    _record_gate,
    _rollout_transition,
    _wave_transition,
    rollouts_locked,
)

GATE_INSTALL = Actor.system("gate:install")
GATE_HEALTH = Actor.system("gate:health")
GATE_APPROVAL = Actor.system("gate:approval")
_SYSTEM = Actor.system("rollouts")


def rollout_advance(*, rollout_id: int, now: dt.datetime | None = None) -> str | None:
    """One tick of one rollout (beat, or queued after an action). Safe to run twice or concurrently:
    the rollout row is claimed with SKIP LOCKED and everything it does commits or rolls back together.
    Returns the rollout's status afterwards, None when another worker holds it or it is not ticked.
    """
    with transaction.atomic(), audit_deferred():  # the audit chain head is locked only at the end of the tick
        rollout = rollouts_locked(skip_locked=True).filter(pk=rollout_id, status__in=ROLLOUT_TICKED).first()
        if rollout is None:
            return None
        now = now or timezone.now()
        if rollout.status == RolloutStatus.ROLLING_BACK:
            _advance_rollback(rollout, now)
            return rollout.status
        start_at = rollout.plan.start_at
        if start_at is not None and now < start_at:
            return rollout.status
        for _ in range(2 * Wave.objects.filter(rollout=rollout).count() + 2):
            wave = _current_wave(rollout)
            if wave is None or rollout.status != RolloutStatus.RUNNING or not _advance_wave(rollout, wave, now):
                break
        return rollout.status


def rollouts_tick(*, now: dt.datetime | None = None) -> dict[int, str | None]:
    """Advance every running or rolling-back rollout (each in its own transaction)."""
    ids = list(Rollout.objects.filter(status__in=ROLLOUT_TICKED).order_by("pk").values_list("pk", flat=True))
    statuses = {pk: rollout_advance(rollout_id=pk, now=now) for pk in ids}
    for pk in ids:
        rollout_counts_compact(pk)  # after the tick's own transaction: its locks are not held longer
    return statuses


def _advance_wave(rollout: Rollout, wave: Wave, now: dt.datetime) -> bool:
    """One step of the current wave; True when it moved on and the tick should look again."""
    if wave.status == WaveStatus.PENDING:
        return _start_wave(rollout, wave, now)
    if wave.status == WaveStatus.INSTALLING:
        return _install(rollout, wave, now)
    if wave.status == WaveStatus.BAKING:
        return _bake(rollout, wave, now)
    if wave.status == WaveStatus.PASSED:
        return _next_wave(rollout, wave)
    return False


def _start_wave(rollout: Rollout, wave: Wave, now: dt.datetime) -> bool:
    """A pending wave installs, or waits for a person's approval when its spec asks for one."""
    if wave.requires_approval and not wave.approved_by and not rollout.skip_gates:
        _wave_transition(wave, to=WaveStatus.AWAITING_APPROVAL, actor=GATE_APPROVAL, reason="needs a person's approval")
        return False
    _wave_transition(wave, to=WaveStatus.INSTALLING, actor=_SYSTEM, install_started_at=now)
    return True


def _install(rollout: Rollout, wave: Wave, now: dt.datetime) -> bool:
    """Dispatch the wave's next chunk, then its install gate: fail the rollout, wait for the jobs, or pass
    (to bake first when the plan has a health gate)."""
    wave_place_unreachable(actor=_SYSTEM, rollout=rollout, wave=wave, now=now)
    wave_expire_queued(actor=_SYSTEM, rollout=rollout, wave=wave, now=now)
    _dispatch(rollout, wave, _SYSTEM, now)
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
    _record_gate(wave, gate=GateKind.INSTALL, verdict=GateVerdict.PASS, actor=GATE_INSTALL, final=True, result=result)
    if rollout.plan.health_gate is not None:
        _wave_transition(wave, to=WaveStatus.BAKING, actor=GATE_INSTALL, reason=result.reason, bake_started_at=now)
        return False
    _wave_transition(wave, to=WaveStatus.PASSED, actor=GATE_INSTALL, reason=result.reason)
    return True


def _next_wave(rollout: Rollout, wave: Wave) -> bool:
    """A passed wave hands over to the next one; the last one completes the rollout."""
    nxt = Wave.objects.filter(rollout=rollout, index=wave.index + 1).first()
    if nxt is None:
        _rollout_transition(
            rollout, to=RolloutStatus.COMPLETED, actor=_SYSTEM, reason=f"all {wave.index + 1} waves passed"
        )
        return False
    Rollout.objects.filter(pk=rollout.pk).update(current_wave=nxt.index)
    rollout.current_wave = nxt.index
    return True


def _bake(rollout: Rollout, wave: Wave, now: dt.datetime) -> bool:
    """A baking wave: a health check every `interval_seconds`, the verdict once the bake time is over."""
    gate = rollout.plan.health_gate
    assert gate is not None  # noqa: S101 - a wave bakes only when the plan has a health gate
    if rollout.skip_gates:
        _record_gate(wave, gate=GateKind.HEALTH, verdict=GateVerdict.SKIPPED, actor=GATE_HEALTH, final=True,
                     reason="skipped (emergency)")  # fmt: skip
        _wave_transition(wave, to=WaveStatus.PASSED, actor=GATE_HEALTH, reason="gates skipped (emergency)")
        return True
    started = wave.bake_started_at or now  # set when the wave entered BAKING
    bake_over = now >= started + dt.timedelta(seconds=float(gate.bake_seconds))
    if not bake_over and wave.last_check_at and (now - wave.last_check_at).total_seconds() < gate.interval_seconds:
        return False
    result = gates.health_gate(rollout, wave, since=started, until=now)
    Wave.objects.filter(pk=wave.pk).update(last_check_at=now)
    wave.last_check_at = now
    if result.verdict == "fail" and _failed_check(rollout, wave, result, gate=gate, bake_over=bake_over):
        return False
    return _bake_verdict(rollout, wave, result, gate=gate, started=started, bake_over=bake_over, now=now)


def _failed_check(rollout: Rollout, wave: Wave, result: gates.Verdict, *, gate: HealthGate, bake_over: bool) -> bool:
    """Count a failed health check; True when that settles this step: more failed checks than tolerated
    fail the rollout, fewer keep the wave baking. At the end of the bake a tolerated one is not final."""
    failed = wave.failed_checks + 1
    Wave.objects.filter(pk=wave.pk).update(failed_checks=failed)
    wave.failed_checks = failed
    result.figures["failed_checks"] = failed
    if failed > gate.tolerated_failures:
        _record_gate(wave, gate=GateKind.HEALTH, verdict=GateVerdict.FAIL, actor=GATE_HEALTH, final=True, result=result)
        _fail_rollout(rollout, wave, gate=GateKind.HEALTH, actor=GATE_HEALTH, reason=result.reason)
        return True
    if not bake_over:
        _record_gate(
            wave, gate=GateKind.HEALTH, verdict=GateVerdict.FAIL, actor=GATE_HEALTH, final=False, result=result
        )
        return True
    return False


def _bake_verdict(
    rollout: Rollout,
    wave: Wave,
    result: gates.Verdict,
    *,
    gate: HealthGate,
    started: dt.datetime,
    bake_over: bool,
    now: dt.datetime,
) -> bool:
    """Record the check; once the bake is over the wave passes, or is held (the rollout paused) when the
    gate is still inconclusive."""
    # late telemetry from a profile, or an error rate not yet significant: bake one more bake time before
    # a person is asked
    late = (
        result.verdict == "inconclusive"
        and "waiting_for" in result.figures
        and result.figures["samples"] >= gate.min_samples
    )
    if not bake_over or (late and now < started + dt.timedelta(seconds=2 * float(gate.bake_seconds))):
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


def _fail_rollout(rollout: Rollout, wave: Wave, *, gate: str, actor: Actor, reason: str) -> None:
    """A failed gate: the wave FAILED, the rollout aborted or rolling back (the plan's `on_install_failure`;
    a health failure always rolls back), its open waves canceled and its jobs canceled after commit."""
    _wave_transition(wave, to=WaveStatus.FAILED, actor=actor, reason=reason)
    on_failure = rollout.plan.on_install_failure if gate == GateKind.INSTALL else "rollback"
    text = f"{gate} gate failed at wave {wave.index}: {reason}"
    _publish_rollout_event("rollout.gate_failed", rollout, gate=gate, wave=wave.index, reason=reason,
                           action=on_failure, actor=actor, at=timezone.now())  # fmt: skip
    if on_failure == "rollback":
        _rollout_transition(rollout, to=RolloutStatus.ROLLING_BACK, actor=actor, reason=text)
    else:
        _rollout_transition(rollout, to=RolloutStatus.ABORTED, actor=actor, reason=text)
    _cancel_open_waves(rollout, actor, text)
    queue_cancel_jobs(rollout.pk)
