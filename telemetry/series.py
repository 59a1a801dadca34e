"""The telemetry query API's read: requests, errors and latency per bucket of time, per version, site,
device or rollout cohort (`GET /api/v1/telemetry/series/`).

Fleet-wide questions read the minute rollups (kept `TELEMETRY_ROLLUP_RETENTION_DAYS`); a question about
particular devices reads the raw samples (kept `TELEMETRY_RAW_RETENTION_HOURS`), since rollups carry no
device. The database groups by the coarsest calendar unit that divides the bucket (day, hour or minute),
so a month at one-hour buckets is ~720 rows per group, not 43,200; Python folds those into the buckets.

Latency: `p*_ms` is the request-weighted mean of the devices' reported percentiles and `p*_max_ms` the
worst device's (see TelemetryRollup: neither is the exact percentile of all requests).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Case, CharField, Count, ExpressionWrapper, F, FloatField, Max, Q, Sum, Value, When
from django.db.models.functions import TruncDay, TruncHour, TruncMinute

from .models import TelemetryRollup, TelemetrySample

DIMENSIONS = ("version", "site", "device", "cohort")
MINUTE, HOUR, DAY = 60, 3600, 86400
ROLLUP_MAXIMA = ("p95_max", "p99_max", "max_ms")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class RolloutCohorts:
    """What the series needs of a rollout (`rollout=`, `group_by=cohort`): its model (or pipeline) name, and
    the version number whose samples are its canary cohort (the model's other versions are the baseline)."""

    rollout_id: int
    model: str
    canary_version: int


RolloutCohortsLookup = Callable[[int], RolloutCohorts | None]
_rollout_cohorts_lookup: RolloutCohortsLookup | None = None


def rollout_cohorts_lookup_set(lookup: RolloutCohortsLookup) -> None:
    """Rollouts are deployments' (a higher layer): DeploymentsConfig.ready() sets how a rollout id is read."""
    global _rollout_cohorts_lookup
    _rollout_cohorts_lookup = lookup


def rollout_cohorts(rollout_id: int) -> RolloutCohorts | None:
    """The rollout's cohorts, or None when there is no such rollout (or nothing set the lookup)."""
    return _rollout_cohorts_lookup(rollout_id) if _rollout_cohorts_lookup is not None else None


@dataclass(frozen=True)
class SeriesQuery:
    """What was asked, already validated (the API's TelemetrySeriesQuerySerializer)."""

    start: dt.datetime
    end: dt.datetime
    bucket_seconds: int
    group_by: tuple[str, ...] = ()
    model: str | None = None
    version: int | None = None
    sites: tuple[int, ...] = ()
    devices: tuple[int, ...] = ()
    rollout: RolloutCohorts | None = None

    @property
    def reads_samples(self) -> bool:
        return bool(self.devices) or "device" in self.group_by


@dataclass
class _Bucket:
    requests: int = 0
    errors: int = 0
    samples: int = 0
    wsum: dict[str, float] = field(default_factory=lambda: {"p50": 0.0, "p95": 0.0, "p99": 0.0})
    p95_max: float = 0.0
    p99_max: float = 0.0
    max_ms: float = 0.0


def _trunc(column: str, bucket_seconds: int) -> Any:
    if bucket_seconds % DAY == 0:
        return TruncDay(column, tzinfo=dt.UTC)
    if bucket_seconds % HOUR == 0:
        return TruncHour(column, tzinfo=dt.UTC)
    return TruncMinute(column, tzinfo=dt.UTC)


def _bucket_start(at: dt.datetime, bucket_seconds: int) -> dt.datetime:
    """Buckets are aligned to the Unix epoch (a 5-minute bucket starts at :00, :05, …; a day at 00:00 UTC)."""
    seconds = int((at - EPOCH).total_seconds())
    return EPOCH + dt.timedelta(seconds=seconds - seconds % bucket_seconds)


def _rows(query: SeriesQuery) -> Iterable[dict[str, Any]]:
    """Per (truncated time, group): sums and maxima, from the rollups or, for devices, the raw samples."""
    if query.reads_samples:
        # the weighted terms first: inside the aggregation below, "requests" names the sum
        qs: Any = TelemetrySample.objects.filter(ts__gte=query.start, ts__lt=query.end).annotate(
            **{f"{p}_w": ExpressionWrapper(F(f"{p}_ms") * F("requests"), FloatField()) for p in ("p50", "p95", "p99")}
        )
        time, site = "ts", "device__site_id"
        sums = {
            "requests": Sum("requests"),
            "errors": Sum("errors"),
            "samples": Count("pk"),
            "p50_wsum": Sum("p50_w"),
            "p95_wsum": Sum("p95_w"),
            "p99_wsum": Sum("p99_w"),
            "p95_max": Max("p95_ms"),
            "p99_max": Max("p99_ms"),
            "max_ms": Max("max_ms"),
        }
        if query.devices:
            qs = qs.filter(device_id__in=query.devices)
    else:
        qs = TelemetryRollup.objects.filter(minute__gte=query.start, minute__lt=query.end)
        time, site = "minute", "site_id"
        sums = {
            name: (Max(name) if name in ROLLUP_MAXIMA else Sum(name))
            for name in ("requests", "errors", "samples", "p50_wsum", "p95_wsum", "p99_wsum", *ROLLUP_MAXIMA)
        }
    if query.model:
        qs = qs.filter(model_name=query.model)
    if query.version is not None:
        qs = qs.filter(version_number=query.version)
    if query.sites:
        qs = qs.filter(**{f"{site}__in": query.sites})
    keys = ["model_name"]
    if "version" in query.group_by:
        keys.append("version_number")
    if "site" in query.group_by:
        qs = qs.annotate(site_key=F(site))
        keys.append("site_key")
    if "device" in query.group_by:
        keys.append("device_id")
    if "cohort" in query.group_by and query.rollout is not None:
        canary = Q(version_number=query.rollout.canary_version)
        qs = qs.annotate(
            cohort=Case(When(canary, then=Value("canary")), default=Value("baseline"), output_field=CharField())
        )
        keys.append("cohort")
    qs = qs.annotate(at=_trunc(time, query.bucket_seconds)).values("at", *keys).annotate(**sums).order_by()
    return qs


def telemetry_series(query: SeriesQuery) -> list[dict[str, Any]]:
    """One row per (group, bucket) that has data, ordered by group then time: counts, error rate and
    latency percentiles. Buckets with no telemetry are left out."""
    buckets: dict[tuple[Any, ...], _Bucket] = {}
    for row in _rows(query):
        group = (
            row["model_name"],
            row.get("version_number"),
            row.get("site_key"),
            row.get("device_id"),
            row.get("cohort"),
        )
        key = (*group, _bucket_start(row["at"], query.bucket_seconds))
        b = buckets.setdefault(key, _Bucket())
        b.requests += row["requests"] or 0
        b.errors += row["errors"] or 0
        b.samples += row["samples"] or 0
        for p in ("p50", "p95", "p99"):
            b.wsum[p] += row[f"{p}_wsum"] or 0.0
        b.p95_max = max(b.p95_max, row["p95_max"] or 0.0)
        b.p99_max = max(b.p99_max, row["p99_max"] or 0.0)
        b.max_ms = max(b.max_ms, row["max_ms"] or 0.0)
    width = dt.timedelta(seconds=query.bucket_seconds)
    out = []
    for key in sorted(buckets, key=lambda k: tuple((v is None, v) for v in k)):
        model, version, site, device, cohort, start = key
        b = buckets[key]

        def mean(p: str, b: _Bucket = b) -> float | None:
            return round(b.wsum[p] / b.requests, 3) if b.requests else None

        out.append(
            {
                "model": model,
                "version": version,
                "site": site,
                "device": device,
                "cohort": cohort,
                "start": start,
                "end": start + width,
                "samples": b.samples,
                "requests": b.requests,
                "errors": b.errors,
                "error_rate": round(b.errors / b.requests, 6) if b.requests else None,
                "p50_ms": mean("p50"),
                "p95_ms": mean("p95"),
                "p99_ms": mean("p99"),
                "p95_max_ms": round(b.p95_max, 3),
                "p99_max_ms": round(b.p99_max, 3),
                "max_ms": round(b.max_ms, 3),
            }
        )
    return out
