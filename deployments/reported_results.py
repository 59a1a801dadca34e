"""A device's own results for its jobs, read from its retained state's `recent_jobs` (pure reads: the
reconciliation in `reconciliation.py` and the timeout sweeps in `services/job_endings.py` apply them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.utils import timezone

from protocol.messages import TERMINAL_JOB_STATUSES, JobUpdate, RecentJob

from .models import Job


def as_update(recent: RecentJob) -> JobUpdate:
    return JobUpdate(
        schema_version=1,
        job_id=recent.job_id,
        seq=recent.seq,
        status=recent.status,
        reason=recent.reason,
        ts=timezone.now(),
    )


def reported_result(job: Job, reported_state: Mapping[str, Any] | None) -> JobUpdate | None:
    """The device's own final result for `job` from its last reported state, when it is newer than what we
    stored (the device finished it; its update never arrived)."""
    for entry in (reported_state or {}).get("recent_jobs") or []:
        if not isinstance(entry, dict) or entry.get("job_id") != str(job.pk):
            continue
        try:
            recent = RecentJob.model_validate(entry)
        except ValueError:
            return None
        if recent.status in TERMINAL_JOB_STATUSES and recent.seq > job.last_seq:
            return as_update(recent)
    return None
