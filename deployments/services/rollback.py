"""Rollback progress, each tick of a rolling-back rollout: every device that got the new version is sent its
own baseline back as a rollback job (a chunk a tick); once no job is active the rollout is ROLLED_BACK, with
how many devices went back, how many rollbacks failed and how many first installs were kept.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db.models import OuterRef, Subquery

from audit.actors import Actor
from models_registry.deployables import Deployable

from ..models import (
    ACTIVE,
    DEPLOYABLE_RELATED,
    HAS_BASELINE,
    Job,
    JobKind,
    JobStatus,
    Rollout,
    RolloutStatus,
    RolloutTarget,
)
from .jobs import JobRequest, deployments_create_many
from .rollout_counts import rollout_counts_tracked
from .rollout_state import _rollout_transition


def _advance_rollback(rollout: Rollout, now: dt.datetime) -> None:
    actor = Actor.system("rollouts:rollback")
    if _dispatch_rollbacks(rollout, actor):
        return
    if Job.objects.filter(rollout=rollout, status__in=ACTIVE).exists():
        return  # installs still running may yet succeed (and then need a rollback), rollbacks still running
    _finish_rollback(rollout, actor)


def _dispatch_rollbacks(rollout: Rollout, actor: Actor) -> bool:
    """The next chunk of rollback jobs, in dispatch order; False when none was due."""
    due = list(
        RolloutTarget.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("device", *(f"baseline_{related}" for related in DEPLOYABLE_RELATED))
        .filter(HAS_BASELINE)
        .filter(
            rollout=rollout,
            install_job__status=JobStatus.SUCCEEDED,
            rollback_job__isnull=True,
            skip_reason="",
        )
        .order_by("order")[: settings.ROLLOUT_DISPATCH_CHUNK]
    )
    timeout = rollout.plan.job_timeout_seconds
    # devices go back to different baselines: one batch per baseline (a handful), in dispatch order
    by_baseline: dict[Deployable, list[RolloutTarget]] = {}
    for target in due:
        if target.baseline is not None:  # excluded by the query; narrows the type
            by_baseline.setdefault(target.baseline, []).append(target)
    with rollout_counts_tracked(t.pk for t in due):
        _send_rollbacks(rollout, by_baseline, actor, timeout)
    return bool(due)


def _send_rollbacks(
    rollout: Rollout, by_baseline: dict[Deployable, list[RolloutTarget]], actor: Actor, timeout: int
) -> None:
    for baseline, targets in by_baseline.items():
        batch = deployments_create_many(
            actor=actor, requests=[JobRequest(t.device, wave_id=t.wave_id, attempt=1) for t in targets],
            deployable=baseline, kind=JobKind.ROLLBACK, timeout_seconds=timeout, rollout_id=rollout.pk,
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


def _finish_rollback(rollout: Rollout, actor: Actor) -> None:
    """Every rollback sent and ended: the rollout is ROLLED_BACK, with the counts in its reason."""
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
