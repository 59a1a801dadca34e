"""Reconciliation: the results a device reports in its retained `P/state` (`recent_jobs`) repair lost updates.

A job update can be lost on its way (a broker that drops messages for a slow subscriber, a bridge that
was away); the device re-sends it until answered, and its retained state lists its recent finished jobs
besides. The bridge applies any of those the control plane is missing, and the timeout sweep reads them
before it times a job out: a job the device finished is recorded as the device finished it, never as
TIMED_OUT. Both go through `jobs_apply_device_updates` (the seq rule), so a result already applied
changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.messages import RecentJob

from .models import ACTIVE, Job
from .reported_results import as_update
from .services.device_updates import UpdateOutcome, jobs_apply_device_updates


def jobs_reconcile_reported(
    *, reports: Sequence[tuple[str, Sequence[RecentJob]]]
) -> list[tuple[str, str, UpdateOutcome]]:
    """Apply the finished jobs devices list in their state that the control plane still has active.

    `reports` is (uid, recent jobs) per state message. Only jobs still QUEUED or IN_PROGRESS here are
    looked at (one query without locks for the whole batch), so a state listing 32 long-finished jobs
    costs nothing more. Returns (uid, job id, outcome) for each result applied; another device's job is refused
    by the seq rule's service as `foreign_job` and not applied.
    """
    wanted = {recent.job_id for _, recents in reports for recent in recents}
    if not wanted:
        return []
    active = {str(pk) for pk in Job.objects.filter(pk__in=wanted, status__in=ACTIVE).values_list("pk", flat=True)}
    items = [(uid, as_update(recent)) for uid, recents in reports for recent in recents if recent.job_id in active]
    if not items:
        return []
    outcomes = jobs_apply_device_updates(updates=items)
    pairs = zip(items, outcomes, strict=True)
    return [(uid, update.job_id, outcome) for (uid, update), outcome in pairs if outcome.applied]
