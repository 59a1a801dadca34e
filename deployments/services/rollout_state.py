"""The rollout's and its waves' state, as every rollout service of the package writes it.

Status changes are guarded updates along ROLLOUT_TRANSITIONS / WAVE_TRANSITIONS (core.transitions: already
there is a no-op, anything else InvalidTransition); each move writes a RolloutEvent (the timeline) and an
audit entry in the same transaction, and a rollout's move its domain event. Every gate check is a
GateEvaluation row (`_record_gate`). The rollout page's stream is touched after commit.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from audit.actors import Actor
from audit.services import audit_record
from core import metrics
from core.events import publish
from core.transitions import Moved, transition

from .. import gates
from ..models import (
    DEPLOYABLE_RELATED,
    WAVE_TERMINAL,
    GateEvaluation,
    Rollout,
    RolloutEvent,
    RolloutStatus,
    Wave,
    WaveStatus,
)
from ..rollout_streams import rollout_stream_touch


def _rollout_transition(rollout: Rollout, *, to: str, actor: Actor, reason: str = "", **fields: Any) -> Moved:
    """Move the rollout along ROLLOUT_TRANSITIONS (core.transitions) with its event, audit entry and domain
    event; already there is a no-op that writes none of them, a forbidden or lost move InvalidTransition."""
    moved = transition(
        Rollout, pk=rollout.pk, current=rollout.status, to=to, label=f"rollout {rollout.pk}",
        status_reason=reason, **fields,
    )  # fmt: skip
    if not moved.changed:
        return moved
    before = moved.before
    RolloutEvent.objects.create(rollout=rollout, from_status=before, to_status=to, reason=reason, actor=actor.label)
    audit_record(
        actor=actor,
        action=f"rollout.{to}",
        object_type="rollout",
        object_id=rollout.pk,
        object_repr=str(rollout.deployable),
        changes={"status": {"before": before, "after": to}, **({"reason": reason} if reason else {})},
    )
    _publish_rollout_event("rollout.state_changed", rollout, from_status=before, to_status=to,
                           reason=reason, actor=actor, at=moved.at)  # fmt: skip
    if to == RolloutStatus.ROLLED_BACK:
        _publish_rollout_event("rollout.rolled_back", rollout, from_status=before, to_status=to,
                               reason=reason, actor=actor, at=moved.at)  # fmt: skip
    for key, value in moved.fields.items():
        setattr(rollout, key, value)
    transaction.on_commit(functools.partial(rollout_stream_touch, rollout.pk))
    return moved


def _publish_rollout_event(kind: str, rollout: Rollout, *, actor: Actor, at: dt.datetime, **fields: object) -> None:
    """Domain event (webhooks) for a rollout; sent after commit, so only what really happened goes out."""
    deployable = rollout.deployable
    publish(
        kind, rollout=rollout.pk, name=rollout.name, model=deployable.family_name, version=deployable.number,
        pipeline=deployable.deployable_kind == "pipeline", actor=actor.label, at=at.isoformat(), **fields,
    )  # fmt: skip


def _wave_transition(wave: Wave, *, to: str, actor: Actor, reason: str = "", **fields: Any) -> Moved:
    """Move a wave along WAVE_TRANSITIONS (core.transitions) with its event and audit entry."""
    moved = transition(Wave, pk=wave.pk, current=wave.status, to=to, label=f"wave {wave.index}", **fields)
    if not moved.changed:
        return moved
    RolloutEvent.objects.create(
        rollout_id=wave.rollout_id, wave=wave, from_status=moved.before, to_status=to, reason=reason,
        actor=actor.label,
    )  # fmt: skip
    audit_record(
        actor=actor,
        action=f"wave.{to}",
        object_type="rollout",
        object_id=wave.rollout_id,
        object_repr=f"wave {wave.index}",
        changes={
            "wave": wave.index,
            "status": {"before": moved.before, "after": to},
            **({"reason": reason} if reason else {}),
        },
    )
    for key, value in moved.fields.items():
        setattr(wave, key, value)
    transaction.on_commit(functools.partial(rollout_stream_touch, wave.rollout_id))
    return moved


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
    """One check of a gate as its GateEvaluation row, with the verdict metric and the rollout page's stream."""
    transaction.on_commit(functools.partial(rollout_stream_touch, wave.rollout_id))
    # counted now, not on commit: a rolled-back evaluation over-counts by one, which is cheaper than a
    # callback per evaluation (the fleet-wide truth is fogdeck_gate_evaluations_total, read from the rows)
    metrics.GATE_VERDICTS.labels(gate, verdict, str(final).lower()).inc()
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


# the rollout row only: its version columns are outer joins (either may be NULL), which PostgreSQL cannot lock
_ROLLOUT_LOCK = ("self",)
_ROLLOUT_RELATED = ("model", "pipeline", *DEPLOYABLE_RELATED)


def rollouts_locked(*, skip_locked: bool = False) -> QuerySet[Rollout]:
    """Rollouts to change, their rows locked FOR NO KEY UPDATE (the one way a rollout is locked): the key
    never changes, and a plain FOR UPDATE also blocks every insert of a row referencing the rollout (its
    foreign key takes FOR KEY SHARE). A bridge recording a rollout's counts waited for the tick while
    holding what the tick needed next, and PostgreSQL broke the cycle by failing one of them: 60 failed
    ticks in a 10,000-device fan-out."""
    return Rollout.objects.select_for_update(of=_ROLLOUT_LOCK, no_key=True, skip_locked=skip_locked).select_related(
        *_ROLLOUT_RELATED
    )


def _lock(rollout: Rollout) -> Rollout:
    return rollouts_locked().get(pk=rollout.pk)


def _current_wave(rollout: Rollout) -> Wave | None:
    if rollout.current_wave is None:
        return None
    return Wave.objects.filter(rollout=rollout, index=rollout.current_wave).first()


def _cancel_open_waves(rollout: Rollout, actor: Actor, reason: str) -> None:
    for wave in rollout.waves.exclude(status__in=WAVE_TERMINAL):
        _wave_transition(wave, to=WaveStatus.CANCELED, actor=actor, reason=reason)
