"""Dispatch: the next chunk of a wave's install jobs, each tick, at the plan's rate limit.

Jobs go out through `deployments_create_many`, one call per chunk (the same rules as `deployment_create`:
compatibility re-checked per device, outbox in the same transaction). Retries of failed jobs go first,
sites outside their maintenance windows wait, and with `tier_aware` an edge device waits for its gateway.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db.models import F, OuterRef, Q, Subquery

from audit.actors import Actor

from .. import gates
from ..models import ACTIVE, Job, JobKind, JobStatus, Rollout, RolloutTarget, Wave
from .jobs import JobRequest, deployments_create_many
from .rollout_counts import rollout_counts_tracked


def _closed_sites(rollout: Rollout, now: dt.datetime) -> set[int]:
    """Sites with maintenance windows (UTC "HH:MM" to "HH:MM", may wrap midnight), none open now."""
    windows: dict[int, bool] = {}
    current = now.astimezone(dt.UTC).strftime("%H:%M")
    for window in rollout.plan.maintenance_windows:
        start, end = window.start, window.end
        inside = start <= current < end if start <= end else (current >= start or current < end)
        windows[window.site] = windows.get(window.site, False) or inside
    return {site for site, open_now in windows.items() if not open_now}


def _rate_per_minute(rollout: Rollout) -> float:
    rate = float(rollout.plan.rate_per_minute)
    ramp = rollout.plan.exponential_rate
    if ramp is not None:
        # AWS IoT Jobs' exponentialRate: start at base, multiply each time `every_succeeded` more succeed
        succeeded = Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL, status=JobStatus.SUCCEEDED).count()
        steps = succeeded // ramp.every_succeeded
        rate = min(rate, float(ramp.base_per_minute) * ramp.factor ** min(steps, 30))
    return rate


def _dispatch(rollout: Rollout, wave: Wave, actor: Actor, now: dt.datetime) -> int:
    """Create the next chunk of the wave's jobs (retries first), as many as the rate limit allows now."""
    last = rollout.last_dispatch_at or (now - dt.timedelta(seconds=settings.ROLLOUT_TICK_SECONDS))
    elapsed = min((now - last).total_seconds(), settings.ROLLOUT_DISPATCH_BURST_SECONDS)
    budget = min(int(_rate_per_minute(rollout) * elapsed / 60), settings.ROLLOUT_DISPATCH_CHUNK)
    if budget < 1:
        return 0
    due = _due_targets(rollout, wave, budget, now)
    timeout = rollout.plan.job_timeout_seconds
    if due:
        with rollout_counts_tracked(t.pk for t in due):
            _send(rollout, wave, due, actor, timeout)
        Rollout.objects.filter(pk=rollout.pk).update(last_dispatch_at=now)
        rollout.last_dispatch_at = now
    return len(due)


def _send(rollout: Rollout, wave: Wave, due: list[RolloutTarget], actor: Actor, timeout: int) -> None:
    """The due targets' jobs created and recorded on them (their skip reason when refused)."""
    batch = deployments_create_many(
        actor=actor, requests=[JobRequest(t.device, wave_id=wave.pk, attempt=t.attempts + 1) for t in due],
        deployable=rollout.deployable, timeout_seconds=timeout, rollout_id=rollout.pk,
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


def _due_targets(rollout: Rollout, wave: Wave, budget: int, now: dt.datetime) -> list[RolloutTarget]:
    """Up to `budget` of the wave's targets to send a job now, locked (SKIP LOCKED): retries with attempts
    left first, then those never sent, in dispatch order."""
    retry = rollout.plan.retry
    closed = _closed_sites(rollout, now)
    base = RolloutTarget.objects.select_for_update(skip_locked=True, of=("self",)).select_related(
        "device", "install_job"
    )
    base = base.filter(wave=wave, skip_reason="").exclude(site_id__in=closed)
    if rollout.plan.tier_aware:
        # an edge device waits until the gateway it sits behind (when in this wave) has finished
        waiting = RolloutTarget.objects.filter(wave=wave).filter(
            Q(install_job__isnull=True, skip_reason="") | Q(install_job__status__in=ACTIVE)
        )
        base = base.exclude(device__parent_id__in=waiting.values("device_id"))
    retryable = retry.retryable
    due = list(base.filter(install_job__status__in=retryable).order_by("order")[:budget]) if retryable else []
    due = [t for t in due if t.install_job and gates.retries_left(t.attempts, t.install_job.status, retry)]
    due += list(base.filter(install_job__isnull=True).order_by("order")[: budget - len(due)])
    return due
