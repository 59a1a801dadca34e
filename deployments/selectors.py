"""Reads across models: a rollout's per-wave counts and exclusions, a device's version history and what
runs on it now (the device API's `installed`, through fleet/installed.py)."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Case, Count, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum, Value, When
from django.utils import timezone

from core.expressions import AmongIds
from fleet.models import ArtifactSource, ArtifactTransfer, Device
from models_registry.deployables import deployable_of, family_name_and_number
from telemetry.series import RolloutCohorts

from .models import (
    DEPLOYABLE_RELATED,
    ROLLOUT_ACTIVE,
    CountKind,
    GateEvaluation,
    Installation,
    Job,
    JobStatus,
    Rollout,
    RolloutCount,
    RolloutTarget,
    Wave,
)

WaveCounts = dict[int, dict[str, dict[str, int]]]  # {wave id: {"jobs": {state: n}, "rollbacks": {state: n}}}


@dataclass(frozen=True)
class RolloutCounts:
    """A rollout's counts as the API shows them: per wave (`NOT_SENT`: no job yet, `SKIPPED`: none could be
    created) and its excluded devices, with how many carry each reason."""

    waves: WaveCounts
    excluded: int
    excluded_reasons: dict[str, int]


def rollout_counts(rollout_id: int) -> RolloutCounts:
    """The rollout's counts from its RolloutCount rows (services/rollout_counts.py keeps them): one query
    of a few rows per wave, whatever the rollout's size."""
    rows = (
        RolloutCount.objects.filter(rollout_id=rollout_id)
        .values_list("wave_id", "kind", "state")
        .annotate(n=Sum("delta"))
        .order_by()
    )
    return as_rollout_counts(((None, wave_id, kind, state), n) for wave_id, kind, state, n in rows)


def as_rollout_counts(items: Iterable[tuple[tuple[Any, int | None, str, str], int]]) -> RolloutCounts:
    waves: defaultdict[int, dict[str, dict[str, int]]] = defaultdict(lambda: {"jobs": {}, "rollbacks": {}})
    excluded, reasons = 0, Counter[str]()
    for (_rollout, wave_id, kind, state), n in items:
        if not n:
            continue
        if kind == CountKind.EXCLUDED:
            excluded += n
        elif kind == CountKind.EXCLUDED_REASON:
            reasons[state] += n
        elif wave_id is not None:
            waves[wave_id][str(kind)][state] = n
    ordered = dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0])))
    return RolloutCounts(waves=dict(waves), excluded=excluded, excluded_reasons=ordered)


def rollout_wave_counts(rollout: Rollout) -> WaveCounts:
    """{wave id: {"jobs": {state: n}, "rollbacks": {state: n}}} in one query (rollout_counts)."""
    return rollout_counts(rollout.pk).waves


# the outcomes an operator has to look at after a wave: the device did not end up where it was sent
FAILED_OUTCOMES = (JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.REJECTED)
FAILED_DEVICE_COLUMNS = (
    "device_id", "device_uid", "site", "wave", "kind", "attempt", "status", "last_step", "reason",
    "finished_at", "job_id",
)  # fmt: skip


def rollout_failed_jobs(rollout: Rollout) -> QuerySet[Job]:
    """The devices of the rollout whose last job (per device and kind: install or rollback) ended failed,
    timed out or rejected, with the reason and the last step it reached; a device that failed once and
    succeeded on a retry is not listed. Ordered by wave, then device uid.

    Served by the (rollout, wave, device, kind, attempt) unique index: one probe per listed job."""
    latest = Job.objects.filter(rollout=rollout, device=OuterRef("device"), kind=OuterRef("kind")).order_by(
        "-attempt", "-created_at"
    )
    return (
        Job.objects.filter(rollout=rollout, status__in=FAILED_OUTCOMES)
        .filter(pk=Subquery(latest.values("pk")[:1]))
        .select_related("device", "device__site", "wave")
        .order_by("wave__index", "device__uid", "kind")
    )


def failed_device_row(job: Job) -> tuple[object, ...]:
    """One row of the failed-devices table and CSV, in FAILED_DEVICE_COLUMNS' order."""
    return (
        job.device_id,
        job.device.uid,
        job.device.site.name,
        job.wave.index if job.wave else "",
        job.kind,
        job.attempt,
        job.status,
        job.step,
        job.reason,
        job.finished_at.isoformat() if job.finished_at else "",
        str(job.pk),
    )


def rollout_excluded(rollout: Rollout, limit: int = 100, counts: RolloutCounts | None = None) -> dict[str, Any]:
    """The excluded devices: how many, by reason (from the rollout's counts; pass them when read already)
    and the first `limit` by uid (no query when there are none)."""
    counts = counts or rollout_counts(rollout.pk)
    devices = []
    if counts.excluded:
        excluded = RolloutTarget.objects.filter(rollout=rollout, wave__isnull=True)
        devices = [
            {"device": device_id, "uid": uid, "reasons": reasons}
            for device_id, uid, reasons in excluded.order_by("device__uid").values_list(
                "device_id", "device__uid", "excluded_reasons"
            )[:limit]
        ]
    return {"count": counts.excluded, "reasons": counts.excluded_reasons, "devices": devices}


def device_history(
    device: Device, *, model_id: int | None = None, version_id: int | None = None
) -> QuerySet[Installation]:
    """Which version ran on the device, from when to when, and the job (and rollout) that put it there."""
    # model versions only: pipeline installations are listed by device_installed
    rows = Installation.objects.filter(device=device, version__isnull=False).select_related(
        "model", "version", "job__rollout", "job__wave"
    )
    if model_id is not None:
        rows = rows.filter(model_id=model_id)
    if version_id is not None:
        rows = rows.filter(version_id=version_id)
    return rows.order_by("-since", "-id")


def device_installed(device: Device) -> list[dict[str, Any]]:
    """What runs on the device now, per model (current Installation rows)."""
    current = getattr(device, "current_installations", None)
    if current is None:
        current = Installation.objects.filter(device=device, until__isnull=True).select_related(*DEPLOYABLE_RELATED)
    return [_installed(i) for i in current]


def _installed(installation: Installation) -> dict[str, Any]:
    # a pipeline is listed under its name, as devices and telemetry know it
    deployable = deployable_of(installation)
    if deployable is None:
        # services/installations.py writes a model with its version or a pipeline with its pipeline version
        raise ValueError(f"installation {installation.pk} names neither a model version nor a pipeline version")
    return {"model": deployable.family_name, "version": deployable.number, "since": installation.since}


def devices_with_current_installations(devices: QuerySet[Device]) -> QuerySet[Device]:
    """`devices` with their current installations loaded (`current_installations`, which device_installed
    reads): one query for a page, not one per device."""
    current = Installation.objects.filter(until__isnull=True).select_related(*DEPLOYABLE_RELATED)
    return devices.prefetch_related(Prefetch("installations", queryset=current, to_attr="current_installations"))


def devices_installed(device_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """device_installed of many devices in one query (the device list's plain rows), by device id; a device
    with nothing installed is left out."""
    installed: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
    # as device_installed: a pipeline is listed under its name
    name, number = family_name_and_number()
    current = Installation.objects.filter(AmongIds("device_id", device_ids), until__isnull=True).values_list(
        "device_id", name, number, "since"
    )
    # Installation's default ordering (-since), as device_installed's rows have it
    for device_id, model, version, since in current:
        installed[device_id].append({"model": model, "version": version, "since": since})
    return dict(installed)


def rollout_series_cohorts(rollout_id: int) -> RolloutCohorts | None:
    """The rollout as the telemetry series API's `rollout=` filter reads it (telemetry/series.py): its model
    or pipeline name and the version whose samples are the canary cohort; None if there is no such rollout."""
    rollout = Rollout.objects.select_related(*DEPLOYABLE_RELATED).filter(pk=rollout_id).first()
    if rollout is None:
        return None
    deployable = rollout.deployable
    return RolloutCohorts(rollout_id=rollout.pk, model=deployable.family_name, canary_version=deployable.number)


def artifact_transfer_summary(rollout: Rollout) -> dict[str, Any]:
    """Bytes the rollout's devices fetched from the cloud vs got from gateway caches (as they reported).

    `gateway_fill_bytes_max` bounds what the gateways themselves fetched from the cloud for it: one
    artifact per gateway that served it (less when a gateway already had it cached).
    """
    rows = (
        ArtifactTransfer.objects.filter(rollout_id=rollout.pk)
        .values("source", "gateway__uid")
        .annotate(downloads=Count("id"), size=Sum("size"), refused=Count("id", filter=Q(gateway_refused=True)))
        .order_by("gateway__uid")
    )
    summary: dict[str, Any] = {
        "cloud_bytes": 0,
        "gateway_bytes": 0,
        "cloud_downloads": 0,
        "gateway_downloads": 0,
        "refused_gateway_copies": 0,
        "gateway_fill_bytes_max": 0,
        "gateways": [],
    }
    for row in rows:
        summary["refused_gateway_copies"] += row["refused"]
        source = "gateway" if row["source"] == ArtifactSource.GATEWAY else "cloud"
        summary[f"{source}_bytes"] += row["size"] or 0
        summary[f"{source}_downloads"] += row["downloads"]
        if source == "gateway":
            served = {"uid": row["gateway__uid"], "bytes": row["size"], "downloads": row["downloads"]}
            summary["gateways"].append(served)
    # a pipeline rollout has no single artifact (its stages are fetched from the cloud, see protocol.md)
    artifact = rollout.deployable.gateway_artifact
    artifact_size = artifact.size if artifact is not None else 0
    summary["gateway_fill_bytes_max"] = len(summary["gateways"]) * artifact_size
    return summary


# --- rollout pages and streams (frontend/, telemetry/streaming.py) ---------------------------------


def active_rollouts_of_devices(
    device_ids: Iterable[int], *, rollout_ids: Iterable[int] | None = None
) -> dict[int, list[tuple[int, str, int]]]:
    """{device id: [(rollout id, model name, version number)]} for the active rollouts (running, paused,
    rolling back; only `rollout_ids` when given) that include these devices in a wave. One query, served
    by `rollout_target_device_idx`."""
    out: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    targets = RolloutTarget.objects.filter(
        device_id__in=list(device_ids), wave__isnull=False, rollout__status__in=ROLLOUT_ACTIVE
    )
    if rollout_ids is not None:
        targets = targets.filter(rollout_id__in=list(rollout_ids))
    # a pipeline rollout is known to devices and telemetry by the pipeline's name
    name, number = family_name_and_number("rollout__")
    for device_id, rollout_id, model, version in targets.values_list("device_id", "rollout_id", name, number):
        out[device_id].append((rollout_id, model, version))
    return dict(out)


def rollout_progress(rollout_id: int) -> dict[str, Any] | None:
    """What a rollout page shows live: status, current wave, each wave's status and devices by job state
    (three queries whatever the size). None when the rollout is gone."""
    rollout = Rollout.objects.filter(pk=rollout_id).first()
    if rollout is None:
        return None
    counts = rollout_wave_counts(rollout)
    waves = [
        {
            "index": w.index,
            "status": w.status,
            "size": w.size,
            "online_at_dispatch": w.online_at_dispatch,
            "jobs": counts.get(w.pk, {}).get("jobs", {}),
            "rollbacks": counts.get(w.pk, {}).get("rollbacks", {}),
        }
        for w in Wave.objects.filter(rollout_id=rollout_id).order_by("index")
    ]
    return {
        "kind": "progress",
        "status": rollout.status,
        "status_reason": rollout.status_reason,
        "current_wave": rollout.current_wave,
        "skip_gates": rollout.skip_gates,
        "waves": waves,
        "gates": [gate_evaluation_row(g) for g in rollout_gate_timeline(rollout_id)],
    }


def rollout_gate_timeline(rollout_id: int, limit: int = 50) -> list[GateEvaluation]:
    """The newest gate evaluations of a rollout, oldest first (the page's timeline)."""
    rows = GateEvaluation.objects.filter(rollout_id=rollout_id).select_related("wave").order_by("-at", "-id")[:limit]
    return list(reversed(rows))


GATE_SUMMARY_FIGURES = ("succeeded", "failed", "total", "failure_pct", "samples", "error_rate", "max_p95_ratio",
                        "worst_profile", "failed_checks")  # fmt: skip


def gate_evaluation_row(g: GateEvaluation) -> dict[str, Any]:
    """A gate evaluation for the timeline: the figures that decide, then everything it looked at."""
    summary = ", ".join(f"{k} {g.figures[k]}" for k in GATE_SUMMARY_FIGURES if g.figures.get(k) is not None)
    return {
        "summary": summary,
        "id": g.pk,
        "at": g.at.isoformat(),
        "wave": g.wave.index,
        "gate": g.gate,
        "verdict": g.verdict,
        "final": g.final,
        "reason": g.reason,
        "actor": g.actor,
        "inputs": g.inputs,
        "figures": g.figures,
    }


def rollout_list_rows(statuses: Iterable[str] = ()) -> QuerySet[Rollout]:
    """Rollouts newest first with what the list shows: model, version, devices in waves and finished
    installs (aggregated in SQL: one query per page, whatever the rollouts' sizes)."""
    finished = Q(targets__install_job__status=JobStatus.SUCCEEDED)
    rows = Rollout.objects.select_related("model", "pipeline", *DEPLOYABLE_RELATED).annotate(
        device_count=Count("targets", filter=Q(targets__wave__isnull=False)),
        succeeded_count=Count("targets", filter=finished & Q(targets__wave__isnull=False)),
    )
    statuses = list(statuses)
    if statuses:
        rows = rows.filter(status__in=statuses)
    return rows.order_by("-created_at", "-id")


def rollout_cohort_series(rollout: Rollout, *, hours: int = 6) -> dict[str, list[dict[str, Any]]]:
    """Per minute since the rollout started (at most `hours`): the rollout's version (canary) against the
    model's other versions (baseline), from the minute rollups: request-weighted mean p95 and error rate.
    Fleet-wide per version, so the history is cheap at any size; live points narrow it to the rollout's
    own devices (`deployments.rollout_streams.rollout_cohort_items`)."""
    from telemetry.models import TelemetryRollup

    since = timezone.now() - dt.timedelta(hours=hours)
    if rollout.started_at and rollout.started_at - dt.timedelta(minutes=10) > since:
        since = rollout.started_at - dt.timedelta(minutes=10)
    deployable = rollout.deployable
    canary = Q(version_number=deployable.number)
    rows = (
        TelemetryRollup.objects.filter(model_name=deployable.family_name, minute__gte=since)
        .annotate(cohort=Case(When(canary, then=Value("canary")), default=Value("baseline")))
        .values("cohort", "minute")
        .annotate(requests=Sum("requests"), errors=Sum("errors"), p95_wsum=Sum("p95_wsum"))
        .order_by("minute")
    )
    out: dict[str, list[dict[str, Any]]] = {"canary": [], "baseline": []}
    for row in rows:
        requests = row["requests"] or 0
        out[row["cohort"]].append(
            {
                "ts": row["minute"].isoformat(),
                "requests": requests,
                "errors": row["errors"] or 0,
                "error_rate": round((row["errors"] or 0) / requests, 6) if requests else 0.0,
                "p95_ms": round(row["p95_wsum"] / requests, 3) if requests else None,
            }
        )
    return out
