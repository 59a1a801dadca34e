"""Reads across models: a rollout's per-wave counts and exclusions, a device's version history."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from django.db.models import Count, QuerySet, Sum

from fleet.models import ArtifactSource, ArtifactTransfer, Device

from .models import Installation, Rollout, RolloutTarget


def rollout_wave_counts(rollout: Rollout) -> dict[int, dict[str, dict[str, int]]]:
    """{wave id: {"jobs": {state: n}, "rollbacks": {state: n}}} in one query; `NOT_SENT` has no job yet."""
    out: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: {"jobs": {}, "rollbacks": {}})
    rows = (
        RolloutTarget.objects.filter(rollout=rollout, wave__isnull=False)
        .values("wave_id", "install_job__status", "rollback_job__status", "skip_reason")
        .annotate(n=Count("id"))
    )
    for row in rows:
        entry = out[row["wave_id"]]
        state = row["install_job__status"] or ("NOT_SENT" if not row["skip_reason"] else "SKIPPED")
        entry["jobs"][state] = entry["jobs"].get(state, 0) + row["n"]
        if row["rollback_job__status"]:
            state = row["rollback_job__status"]
            entry["rollbacks"][state] = entry["rollbacks"].get(state, 0) + row["n"]
    return dict(out)


def rollout_excluded(rollout: Rollout, limit: int = 100) -> dict[str, Any]:
    excluded = RolloutTarget.objects.filter(rollout=rollout, wave__isnull=True).select_related("device")
    reasons: Counter[str] = Counter()
    for row in excluded.values_list("excluded_reasons", flat=True):
        reasons.update(row)
    return {
        "count": excluded.count(),
        "reasons": dict(reasons.most_common()),
        "devices": [
            {"device": t.device_id, "uid": t.device.uid, "reasons": t.excluded_reasons}
            for t in excluded.order_by("device__uid")[:limit]
        ],
    }


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
        current = Installation.objects.filter(device=device, until__isnull=True).select_related(
            "model", "version", "pipeline", "pipeline_version"
        )
    # a pipeline is listed under its name, as devices and telemetry know it
    return [
        {"model": i.pipeline.name, "version": i.pipeline_version.number, "since": i.since}
        if i.pipeline_version_id
        else {"model": i.model.name, "version": i.version.number, "since": i.since}
        for i in current
    ]


def artifact_transfer_summary(rollout: Rollout) -> dict[str, Any]:
    """Bytes the rollout's devices fetched from the cloud vs got from gateway caches (as they reported).

    `gateway_fill_bytes_max` bounds what the gateways themselves fetched from the cloud for it: one
    artifact per gateway that served it (less when a gateway already had it cached).
    """
    rows = (
        ArtifactTransfer.objects.filter(rollout_id=rollout.pk)
        .values("source", "gateway__uid")
        .annotate(downloads=Count("id"), size=Sum("size"))
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
        source = "gateway" if row["source"] == ArtifactSource.GATEWAY else "cloud"
        summary[f"{source}_bytes"] += row["size"] or 0
        summary[f"{source}_downloads"] += row["downloads"]
        if source == "gateway":
            served = {"uid": row["gateway__uid"], "bytes": row["size"], "downloads": row["downloads"]}
            summary["gateways"].append(served)
    summary["refused_gateway_copies"] = ArtifactTransfer.objects.filter(
        rollout_id=rollout.pk, refused__contains=[{"source": "gateway"}]
    ).count()
    # a pipeline rollout has no single artifact (its stages are fetched from the cloud, see protocol.md)
    artifact_size = rollout.version.size if rollout.version_id else 0
    summary["gateway_fill_bytes_max"] = len(summary["gateways"]) * artifact_size
    return summary
