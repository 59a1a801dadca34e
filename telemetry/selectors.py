"""Chart reads. Fleet-wide series come from the minute rollups; only a single device's own chart reads
raw samples (bounded by the (device, ts) index and a short window)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Max, Sum
from django.utils import timezone

from fleet.models import Device

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
