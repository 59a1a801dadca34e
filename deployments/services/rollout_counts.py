"""A rollout's device counts, kept as it changes: the one home of the rule that turns a target into counts.

A target counts once in its wave's `jobs` under its install job's status (NOT_SENT before it has one,
SKIPPED when none could be created), and once in its wave's `rollbacks` under its rollback job's status
when it has one; a target without a wave counts among the rollout's excluded devices, and under each of
its reasons. `rollout_counts_fresh` aggregates exactly this from the targets and jobs;
`RolloutCount` (models.py) holds it as deltas written in the same transaction as each change:

* a job's status change (`job_transitions._transition`, the device batch in `device_updates`): the
  targets whose install or rollback job it is move from the old status to the new (one query for a batch);
* a change of targets (their wave, their job, their skip reason: dispatch, rollbacks, offline devices
  moved): `rollout_counts_tracked(ids)` reads the targets' keys before and after and writes the difference.
  The jobs such a change replaces are finished or absent (a retry replaces a finished job, a rollback
  follows a succeeded install), so no concurrent status change falls between the two reads;
* a rollout's targets stored anew (`rollout_drafts`): `rollout_counts_reset`.

Rows are only inserted, never updated, so concurrent job updates share no row lock; the tick folds a
rollout's rows into one per key (`rollout_counts_compact`). A device deleted mid-rollout takes its target
with it but stays in the counts: what the wave sent, not what is left of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import transaction
from django.db.models import Count, Q

from ..models import CountKind, Job, Rollout, RolloutCount, RolloutTarget

CountKey = tuple[int, int | None, str, str]  # (rollout id, wave id or None, kind, state)

NOT_SENT = "NOT_SENT"
SKIPPED = "SKIPPED"

# what target_keys reads of a target (and of its jobs), as `values_list` names
TARGET_COLUMNS = ("rollout_id", "wave_id", "install_job__status", "skip_reason", "rollback_job__status",
                  "excluded_reasons")  # fmt: skip


def target_keys(
    rollout_id: int,
    wave_id: int | None,
    install_status: str | None,
    skip_reason: str,
    rollback_status: str | None,
    excluded_reasons: Sequence[str],
) -> list[CountKey]:
    """The keys one target counts under (the rule)."""
    if wave_id is None:
        return [
            (rollout_id, None, CountKind.EXCLUDED, ""),
            *((rollout_id, None, CountKind.EXCLUDED_REASON, reason) for reason in excluded_reasons),
        ]
    state = install_status or (SKIPPED if skip_reason else NOT_SENT)
    keys: list[CountKey] = [(rollout_id, wave_id, CountKind.JOBS, state)]
    if rollback_status:
        keys.append((rollout_id, wave_id, CountKind.ROLLBACKS, rollback_status))
    return keys


def rollout_counts_fresh(rollout_id: int) -> Counter[tuple[int, int | None, str, str]]:
    """The rollout's counts aggregated from its targets and their jobs by the rule (`target_keys`), by key:
    what its RolloutCount rows must sum to. Two queries, proportional to the rollout's size."""
    out: Counter[tuple[int, int | None, str, str]] = Counter()
    targets = RolloutTarget.objects.filter(rollout_id=rollout_id)
    grouped = (
        targets.filter(wave__isnull=False)
        .values_list("wave_id", "install_job__status", "skip_reason", "rollback_job__status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for wave_id, install_status, skip_reason, rollback_status, n in grouped:
        for key in target_keys(rollout_id, wave_id, install_status, skip_reason, rollback_status, ()):
            out[key] += n
    for reasons in targets.filter(wave__isnull=True).values_list("excluded_reasons", flat=True):
        out.update(target_keys(rollout_id, None, None, "", None, reasons))
    return out


def _insert(deltas: Counter[CountKey]) -> None:
    rows = [
        RolloutCount(rollout_id=rollout_id, wave_id=wave_id, kind=kind, state=state, delta=delta)
        for (rollout_id, wave_id, kind, state), delta in sorted(deltas.items(), key=str)
        if delta
    ]
    if rows:
        RolloutCount.objects.bulk_create(rows)


def rollout_counts_jobs_moved(moves: Iterable[tuple[Job, str, str]]) -> None:
    """Jobs moved from one status to another (job, before, after), in the caller's transaction: the
    targets whose install or rollback job they are move with them. One query, none without a rollout job."""
    moved = {job.pk: (before, after) for job, before, after in moves if job.rollout_id is not None and before != after}
    if not moved:
        return
    deltas: Counter[CountKey] = Counter()
    targets = RolloutTarget.objects.filter(Q(install_job_id__in=moved) | Q(rollback_job_id__in=moved)).values_list(
        "rollout_id", "wave_id", "install_job_id", "rollback_job_id"
    )
    for rollout_id, wave_id, install_job_id, rollback_job_id in targets:
        if wave_id is None:
            continue  # an excluded device has no jobs; kept as the rule's guard
        for job_id, kind in ((install_job_id, CountKind.JOBS), (rollback_job_id, CountKind.ROLLBACKS)):
            if job_id in moved:
                before, after = moved[job_id]
                deltas[(rollout_id, wave_id, kind, before)] -= 1
                deltas[(rollout_id, wave_id, kind, after)] += 1
    _insert(deltas)


def _keys_of(target_ids: Sequence[int]) -> Counter[CountKey]:
    keys: Counter[CountKey] = Counter()
    for row in RolloutTarget.objects.filter(pk__in=target_ids).values_list(*TARGET_COLUMNS):
        keys.update(target_keys(*row))
    return keys


@contextmanager
def rollout_counts_tracked(target_ids: Iterable[int]) -> Iterator[None]:
    """Around a change of these targets (inside the caller's transaction): their counts before and after,
    the difference written. For changes that replace no running job (see the module's docstring)."""
    ids = sorted(set(target_ids))
    before = _keys_of(ids) if ids else Counter()
    yield
    if ids:
        after = _keys_of(ids)
        after.subtract(before)
        _insert(after)


def rollout_counts_reset(rollout: Rollout) -> None:
    """The rollout's counts aggregated afresh from its targets (its targets were just stored, or written
    in bulk outside the services, as the benchmarks do)."""
    with transaction.atomic():
        RolloutCount.objects.filter(rollout=rollout).delete()
        _insert(rollout_counts_fresh(rollout.pk))


def rollout_counts_compact(rollout_id: int, *, above: int = 64) -> int:
    """Fold the rollout's rows into one per key once there are more than `above` of them; how many rows
    were folded. Only the rows read (and locked) are replaced: rows inserted meanwhile stay as they are."""
    with transaction.atomic():
        if RolloutCount.objects.filter(rollout_id=rollout_id).count() <= above:
            return 0
        rows: list[Any] = list(
            RolloutCount.objects.select_for_update()
            .filter(rollout_id=rollout_id)
            .values_list("pk", "wave_id", "kind", "state", "delta")
        )
        sums: Counter[CountKey] = Counter()
        for _pk, wave_id, kind, state, delta in rows:
            sums[(rollout_id, wave_id, kind, state)] += delta
        RolloutCount.objects.filter(pk__in=[row[0] for row in rows]).delete()
        _insert(sums)
        return len(rows)
