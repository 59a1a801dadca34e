"""One job's status change, the way every service of the package writes it.

A guarded update along the job's TRANSITIONS (models.py) through `core.transitions.transition`, with its
event row and audit entry in the same transaction; a success records the installation. The device batch
path (device_updates.py) folds many updates in memory by the same map and writes them in one statement,
but its events and audit entries are the same (`_job_transition_audit`).
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import AuditSpec, audit_record_many
from core.transitions import Moved, transition

from ..models import TERMINAL, Job, JobEvent, JobStatus
from ..rollout_streams import rollout_stream_touch
from .installations import _record_installations
from .rollout_counts import rollout_counts_jobs_moved

# The job and its device rows; a job's version or pipeline version is an outer join now (either may be
# NULL), and PostgreSQL cannot lock the nullable side of one. Published versions are immutable anyway.
_JOB_LOCK = ("self", "device")


def _stream_rollout_progress(rollout_id: int | None) -> None:
    """A rollout's job changed: its page gets the new counts after commit (coalesced, see telemetry/streaming.py)."""
    if rollout_id is not None:
        transaction.on_commit(functools.partial(rollout_stream_touch, rollout_id))


def _transition(job: Job, *, to: str, actor: Actor, reason: str = "") -> Moved:
    """Move a job along TRANSITIONS (core.transitions: already there is a no-op that writes nothing, a
    forbidden or lost move InvalidTransition), with its event row and audit entry."""
    # a finished job keeps the step it last reached: "failed while verifying" is the operator's first clue
    fields: dict[str, Any] = {"progress": None} if to in TERMINAL else {"step": "", "progress": None}
    if reason:
        fields["reason"] = reason
    if to == JobStatus.IN_PROGRESS and job.started_at is None:
        fields["started_at"] = timezone.now()
    moved = transition(Job, pk=job.pk, current=job.status, to=to, label=f"job {job.id}", **fields)
    if not moved.changed:
        return moved
    step = job.step if to in TERMINAL else ""
    JobEvent.objects.create(
        job=job, from_status=moved.before, to_status=to, step=step, reason=reason, actor=actor.label
    )
    audit_record_many([_job_transition_audit(job, moved.before, to, actor, reason)])
    if to == JobStatus.SUCCEEDED:
        _record_installations([job], moved.at)
    rollout_counts_jobs_moved([(job, moved.before, to)])
    _stream_rollout_progress(job.rollout_id)
    for key, value in moved.fields.items():
        setattr(job, key, value)
    return moved


def _job_transition_audit(job: Job, before: str, after: str, actor: Actor, reason: str) -> AuditSpec:
    return AuditSpec(
        actor=actor,
        action=f"job.{after.lower()}",
        object_type="job",
        object_id=job.pk,
        object_repr=f"{job.deployable} on {job.device.uid}",
        changes={"status": {"before": before, "after": after}, **({"reason": reason} if reason else {})},
    )
