"""Devices' job updates: applied monotonically, many devices' at once (the bridge's batches).

Each job is locked once, in id order, and its updates are folded in memory along TRANSITIONS (models.py)
before one guarded write: duplicates, stale `seq` and backward moves change nothing, and every transition
keeps its event row and audit entry (job_transitions.py), written in the same transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from django.db import connection, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import AuditSpec, audit_record_many
from protocol.messages import JobUpdate

from ..models import DEPLOYABLE_RELATED, TERMINAL, TRANSITIONS, Job, JobEvent, JobStatus
from .installations import _record_installations
from .job_transitions import _JOB_LOCK, _job_transition_audit, _stream_rollout_progress
from .rollout_counts import rollout_counts_jobs_moved


class ForeignJob(Exception):
    """A job update arrived on one device's topic for another device's job."""


@dataclass(frozen=True)
class UpdateOutcome:
    applied: bool
    why: str = ""
    detail: str = ""
    # the job as stored once the batch is written (what the device's `update/accepted` answer carries);
    # empty for an unknown or another device's job
    status: str = ""
    seq: int = 0


def job_apply_device_update(*, uid: str, update: JobUpdate) -> UpdateOutcome:
    """Apply a device's job update monotonically: duplicates, stale `seq` and backward moves change nothing.
    Raises ForeignJob for another device's job."""
    outcome = jobs_apply_device_updates(updates=[(uid, update)])[0]
    if outcome.why == "foreign_job":
        raise ForeignJob(outcome.detail)
    return outcome


class _FoldFields(TypedDict, total=False):
    """The Job columns a fold writes (`_FOLD_COLUMNS`); a column left out keeps its value."""

    status: str
    step: str
    progress: float | None
    last_seq: int
    updated_at: dt.datetime
    reason: str
    started_at: dt.datetime
    finished_at: dt.datetime


@dataclass
class _Fold:
    """A locked job and what its updates in one batch do to it, before anything is written."""

    job: Job
    fields: _FoldFields
    changes: list[tuple[str, str, str, str, int]]  # (from, to, step, reason, seq), in order
    applied: list[int] = field(default_factory=list)  # indexes of the updates that changed it

    @property
    def status(self) -> str:
        return str(self.fields.get("status", self.job.status))

    @property
    def last_seq(self) -> int:
        return self.fields.get("last_seq", self.job.last_seq)


def _fold(fold: _Fold, update: JobUpdate, uid: str, now: dt.datetime) -> UpdateOutcome:
    """One update on top of the job's state so far in this batch: the rules of `TRANSITIONS`, in memory
    (the same map `core.transitions.transition` follows; the write is guarded by the state read)."""
    job = fold.job
    if job.device.uid != uid:
        return UpdateOutcome(False, "foreign_job", f"job {job.id} belongs to {job.device.uid}, not {uid}")
    status = fold.status
    if status in TERMINAL:
        return UpdateOutcome(False, "job_already_terminal")
    if update.seq <= fold.last_seq:
        return UpdateOutcome(False, "stale_seq")
    fields = fold.fields
    if update.status != status:
        if update.status not in TRANSITIONS[status]:
            return UpdateOutcome(False, "backward_transition")
        fields["status"] = update.status
        if update.reason:
            fields["reason"] = update.reason
        if update.status == JobStatus.IN_PROGRESS and job.started_at is None:
            fields["started_at"] = now
        if update.status in TERMINAL:
            fields["finished_at"] = now
        # a terminal update has no step: the job (and its event) keep the last step it reached
        step = update.step or (str(fields.get("step", job.step)) if update.status in TERMINAL else "")
        fold.changes.append((status, update.status, step, update.reason or "", update.seq))
    else:
        step = update.step or ""
    # a progress update within the same state only moves step, progress and seq: no event, no audit
    fields.update({"step": step, "progress": update.progress, "last_seq": update.seq, "updated_at": now})
    return UpdateOutcome(True)


_FoldColumn = Literal["status", "step", "progress", "last_seq", "updated_at", "reason", "started_at", "finished_at"]
_FOLD_COLUMNS: tuple[_FoldColumn, ...] = (
    "status",
    "step",
    "progress",
    "last_seq",
    "updated_at",
    "reason",
    "started_at",
    "finished_at",
)
_FOLD_TYPES = ("text", "text", "double precision", "bigint", "timestamptz", "text", "timestamptz", "timestamptz")


def _write_folds(folds: Sequence[_Fold]) -> set[uuid.UUID]:
    """Write each fold's fields with a guarded update (status and last_seq as read), in one statement on
    PostgreSQL (`UPDATE … FROM (VALUES …)`), one per job elsewhere; the ids written."""
    if not folds:
        return set()
    if connection.vendor != "postgresql":
        return {
            fold.job.pk
            for fold in folds
            if Job.objects.filter(pk=fold.job.pk, status=fold.job.status, last_seq=fold.job.last_seq).update(
                **fold.fields
            )
        }
    table = connection.ops.quote_name(Job._meta.db_table)
    # reason, started_at and finished_at change only when a fold sets them; NULL in VALUES means "keep"
    keep = {"reason", "started_at", "finished_at"}
    assignments = ", ".join(f"{c} = COALESCE(v.{c}, j.{c})" if c in keep else f"{c} = v.{c}" for c in _FOLD_COLUMNS)
    row = "(%s::uuid, %s::text, %s::bigint, " + ", ".join(f"%s::{t}" for t in _FOLD_TYPES) + ")"
    params: list[str | int | float | dt.datetime | uuid.UUID | None] = []
    for fold in folds:
        fields = fold.fields
        params += [fold.job.pk, fold.job.status, fold.job.last_seq, fold.status]
        params += [fields.get(c) for c in _FOLD_COLUMNS[1:]]
    columns = ", ".join(("id", "old_status", "old_seq", *_FOLD_COLUMNS))
    sql = (
        f"UPDATE {table} AS j SET {assignments} FROM (VALUES {', '.join([row] * len(folds))}) AS v({columns}) "  # noqa: S608 - identifiers are ours
        "WHERE j.id = v.id AND j.status = v.old_status AND j.last_seq = v.old_seq RETURNING j.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row_id for (row_id,) in cursor.fetchall()}


def jobs_apply_device_updates(*, updates: Sequence[tuple[str, JobUpdate]]) -> list[UpdateOutcome]:
    """Apply many devices' job updates (uid, update) in one transaction, with the rules of
    `job_apply_device_update`; one outcome per update, in order (`foreign_job` and `unknown_job` among them).

    Each job is locked once, in id order (two bridges sharing the device topics never deadlock), and its
    updates are folded in `seq` order before anything is written: a job whose IN_PROGRESS … SUCCEEDED
    arrive together costs one guarded UPDATE, yet every transition keeps its event and audit entry
    (one bulk insert each for the batch). Installations, rollout streams and the resolve cache are
    updated once per batch.
    """
    if not updates:
        return []
    with transaction.atomic():
        jobs = _lock_jobs({update.job_id for _, update in updates})
        now = timezone.now()
        outcomes, folds = _fold_updates(updates, jobs, now)
        _write_and_record([fold for fold in folds.values() if fold.fields], outcomes, now)
    pairs = zip(outcomes, updates, strict=True)
    return [_as_stored(outcome, jobs.get(update.job_id)) for outcome, (_, update) in pairs]


def _lock_jobs(job_ids: set[str]) -> dict[str, Job]:
    """The jobs by id, each locked once, in id order."""
    return {
        str(job.pk): job
        for job in Job.objects.select_for_update(of=_JOB_LOCK)
        .select_related("device", *DEPLOYABLE_RELATED)
        .filter(pk__in=sorted(job_ids))
        .order_by("pk")
    }


def _fold_updates(
    updates: Sequence[tuple[str, JobUpdate]], jobs: dict[str, Job], now: dt.datetime
) -> tuple[list[UpdateOutcome | None], dict[str, _Fold]]:
    """Each update folded onto its job, in (job, seq) order: the outcomes by the updates' index, the folds by job."""
    outcomes: list[UpdateOutcome | None] = [None] * len(updates)
    folds: dict[str, _Fold] = {}
    for index in sorted(range(len(updates)), key=lambda i: (updates[i][1].job_id, updates[i][1].seq)):
        uid, update = updates[index]
        job = jobs.get(update.job_id)
        if job is None:
            outcomes[index] = UpdateOutcome(False, "unknown_job")
            continue
        fold = folds.setdefault(update.job_id, _Fold(job, {}, []))
        outcomes[index] = outcome = _fold(fold, update, uid, now)
        if outcome.applied:
            fold.applied.append(index)
    return outcomes, folds


def _write_and_record(changed: list[_Fold], outcomes: list[UpdateOutcome | None], now: dt.datetime) -> None:
    """Write the folds; for each job written, its events and audit entries (one bulk insert each for the
    batch), then the installations of the jobs that succeeded and the streams of their rollouts."""
    events: list[JobEvent] = []
    audits: list[AuditSpec] = []
    succeeded: list[Job] = []
    rollouts: set[int] = set()
    moves: list[tuple[Job, str, str]] = []  # (job, status before the batch, after it): the rollout counts
    written = _write_folds(changed)
    for fold in changed:
        job = fold.job
        if job.pk not in written:  # not while we hold the lock; kept as the invariant's guard
            for index in fold.applied:
                outcomes[index] = UpdateOutcome(False, "concurrent_update")
            continue
        actor = Actor.device(job.device.uid)
        if fold.changes:
            moves.append((job, fold.changes[0][0], fold.changes[-1][1]))
        for before, after, step, reason, seq in fold.changes:
            events.append(JobEvent(job=job, from_status=before, to_status=after, step=step, reason=reason,
                                   actor=actor.label, seq=seq))  # fmt: skip
            audits.append(_job_transition_audit(job, before, after, actor, reason))
        for key, value in fold.fields.items():
            setattr(job, key, value)
        if fold.changes and job.status == JobStatus.SUCCEEDED:
            succeeded.append(job)
        if fold.changes and job.rollout_id is not None:
            rollouts.add(job.rollout_id)
    JobEvent.objects.bulk_create(events)
    audit_record_many(audits)
    _record_installations(succeeded, now)
    rollout_counts_jobs_moved(moves)
    for rollout_id in sorted(rollouts):
        _stream_rollout_progress(rollout_id)


def _as_stored(outcome: UpdateOutcome | None, job: Job | None) -> UpdateOutcome:
    """The outcome with the job's stored status and seq (none for an unknown or another device's job)."""
    if outcome is None or job is None:
        return outcome or UpdateOutcome(False, "unknown_job")
    if outcome.why == "foreign_job":
        return outcome
    return dataclasses.replace(outcome, status=str(job.status), seq=int(job.last_seq))
