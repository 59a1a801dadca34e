"""Chart reads. Fleet-wide series come from the minute rollups; only a single device's own chart
(bounded by the (device, ts) index and a short window) and a pipeline's per-stage latency (stages are kept
on raw samples only, read over the last hour) read raw samples."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Count, Max, Sum
from django.utils import timezone

from fleet.models import Device
from models_registry.models import PipelineVersion

from .models import TelemetryRollup, TelemetrySample

DEVICE_CHART_MINUTES = 30
DEVICE_CHART_POINTS = 720


def version_latency_series(model_name: str, version_number: int, *, hours: int = 6) -> list[dict[str, Any]]:
    """Per minute across all sites and hardware: requests, errors, request-weighted mean p95, worst p95."""
    since = timezone.now() - dt.timedelta(hours=hours)
    rows = (
        TelemetryRollup.objects.for_version(model_name, version_number)
        .filter(minute__gte=since)
        .values("minute")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            p95_wsum=Sum("p95_wsum"),
            p95_max=Max("p95_max"),
        )
        .order_by("minute")
    )
    return [
        {
            "minute": row["minute"].isoformat(),
            "requests": row["requests"],
            "errors": row["errors"],
            "p95_mean": round(row["p95_wsum"] / row["requests"], 2) if row["requests"] else None,
            "p95_max": row["p95_max"],
        }
        for row in rows
    ]


def version_profile_summary(model_name: str, version_number: int, *, hours: int = 1) -> list[dict[str, Any]]:
    """The last `hours` per hardware profile (arch, cpu, accelerator): volume, error rate, p95."""
    since = timezone.now() - dt.timedelta(hours=hours)
    rows = (
        TelemetryRollup.objects.for_version(model_name, version_number)
        .filter(minute__gte=since)
        .values("arch", "cpu", "accelerator")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            p95_wsum=Sum("p95_wsum"),
            p95_max=Max("p95_max"),
            p99_max=Max("p99_max"),
        )
        .order_by("-requests")
    )
    return [
        {
            **row,
            "error_rate": row["errors"] / row["requests"] if row["requests"] else 0.0,
            "p95_mean": row["p95_wsum"] / row["requests"] if row["requests"] else None,
        }
        for row in rows
    ]


def device_recent_points(device: Device, *, minutes: int = DEVICE_CHART_MINUTES) -> list[dict[str, Any]]:
    """The device's own recent samples, oldest first, in the shape the websocket sends."""
    since = timezone.now() - dt.timedelta(minutes=minutes)
    rows = (
        TelemetrySample.objects.filter(device=device, ts__gte=since)
        .order_by("-ts")
        .values("model_name", "version_number", "ts", "requests", "errors", "p50_ms", "p95_ms", "p99_ms")[
            :DEVICE_CHART_POINTS
        ]
    )
    return [
        {
            "model": r["model_name"],
            "version": r["version_number"],
            "ts": r["ts"].isoformat(),
            "requests": r["requests"],
            "errors": r["errors"],
            "p50_ms": r["p50_ms"],
            "p95_ms": r["p95_ms"],
            "p99_ms": r["p99_ms"],
        }
        for r in reversed(rows)
    ]


FLEET_LATENCY_MINUTES = 5
FLEET_CHART_MINUTES = 30


def fleet_latency(*, now: dt.datetime | None = None) -> dict[str, Any]:
    """The overview's latency card: each model version that reported in the last `FLEET_LATENCY_MINUTES`
    (devices reporting, requests per minute, error rate, request-weighted mean p50/p95 and the worst
    device's p95, from the minute rollups; the device count from raw samples), and each one's mean p95
    per minute over the last `FLEET_CHART_MINUTES`.

    Served by telemetry_rollup_minute_idx and telemetry_received_idx: both ranges are a few minutes.
    """
    now = now or timezone.now()
    since = now - dt.timedelta(minutes=FLEET_LATENCY_MINUTES)
    devices = {
        (r["model_name"], r["version_number"]): r["n"]
        for r in TelemetrySample.objects.filter(received_at__gte=since)
        .values("model_name", "version_number")
        .annotate(n=Count("device", distinct=True))
    }
    totals = (
        TelemetryRollup.objects.filter(minute__gte=since)
        .values("model_name", "version_number")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            p50_wsum=Sum("p50_wsum"),
            p95_wsum=Sum("p95_wsum"),
            p95_max=Max("p95_max"),
            minutes=Count("minute", distinct=True),
        )
        .order_by("model_name", "version_number")
    )
    versions = [
        {
            "model": r["model_name"],
            "version": r["version_number"],
            "devices": devices.get((r["model_name"], r["version_number"]), 0),
            # per minute that had any: a version that started reporting 2 minutes ago is not divided by 5
            "requests_per_min": round(r["requests"] / max(r["minutes"], 1)),
            "error_rate": round(r["errors"] / r["requests"], 4) if r["requests"] else 0.0,
            "p50_ms": round(r["p50_wsum"] / r["requests"], 3) if r["requests"] else None,
            "p95_ms": round(r["p95_wsum"] / r["requests"], 3) if r["requests"] else None,
            "p95_max_ms": round(r["p95_max"], 3),
        }
        for r in totals
    ]
    chart_since = now - dt.timedelta(minutes=FLEET_CHART_MINUTES)
    series: dict[str, dict[str, list[Any]]] = {}
    for r in (
        TelemetryRollup.objects.filter(minute__gte=chart_since)
        .values("model_name", "version_number", "minute")
        .annotate(requests=Sum("requests"), p95_wsum=Sum("p95_wsum"))
        .order_by("model_name", "version_number", "minute")
    ):
        if r["requests"]:
            line = series.setdefault(f"{r['model_name']} v{r['version_number']}", {"x": [], "p95_ms": []})
            line["x"].append(r["minute"].isoformat())
            line["p95_ms"].append(round(r["p95_wsum"] / r["requests"], 3))
    return {"at": now.isoformat(), "versions": versions, "series": series}


def pipeline_stage_latency(version: PipelineVersion, *, since: Any) -> dict[str, dict[str, float | int]]:
    """Per stage of `version`, from raw telemetry since `since`: runs, skips, and p95 latency in ms.

    `p95_mean` is the run-weighted mean of the devices' p95s, `p95_max` the worst device's (as the
    rollups do: percentiles of different devices cannot be merged exactly). Also "end_to_end".
    """
    totals: dict[str, dict[str, float | int]] = {}
    rows = TelemetrySample.objects.filter(
        model_name=version.pipeline.name, version_number=version.number, ts__gte=since, requests__gt=0
    ).values_list("requests", "p95_ms", "stages")
    for requests, p95, stages in rows.iterator(chunk_size=2000):
        items = [{"name": "end_to_end", "requests": requests, "skipped": 0, "latency_ms": {"p95": p95}}, *stages]
        for item in items:
            acc = totals.setdefault(item["name"], {"runs": 0, "skipped": 0, "p95_wsum": 0.0, "p95_max": 0.0})
            acc["runs"] += item.get("requests", 0)
            acc["skipped"] += item.get("skipped", 0)
            latency = item.get("latency_ms")
            if latency:
                acc["p95_wsum"] += latency["p95"] * item.get("requests", 0)
                acc["p95_max"] = max(acc["p95_max"], latency["p95"])
    for acc in totals.values():
        acc["p95_mean"] = acc.pop("p95_wsum") / acc["runs"] if acc["runs"] else 0.0
    return totals
