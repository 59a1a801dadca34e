"""A rollout wave's canary and baseline: the one definition the health gate judges and the rollout page
plots (the gate stores these figures on each evaluation; the chart draws them from there).

* canary: the wave's devices whose install job SUCCEEDED, their telemetry on the rollout's version;
* baseline: the rollout's devices (in any wave, not excluded) that have a baseline and have not
  installed the new version, their telemetry on any other version.

Per hardware profile (arch|cpu|accelerator) and over the whole cohort: requests, errors, error rate and
p95/p99. The p95/p99 is a real quantile of all the cohort's requests, from the devices' latency
histograms merged (`protocol.latency_histogram`, within `RELATIVE_ERROR`). Where some samples with
successful requests came without a histogram (older agents) it falls back to the request-weighted mean
of the devices' p95 (p99), and `p95_method` says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, F, Max, Q, QuerySet, Sum

from protocol import latency_histogram
from telemetry.models import TelemetrySample

from .models import HAS_BASELINE, JobStatus, Rollout, RolloutTarget, Wave

MERGED = f"merged histogram (within {100 * latency_histogram.RELATIVE_ERROR:.1f} %)"
WEIGHTED_MEAN = "request-weighted mean of device p95/p99 ({missing} of {rows} samples without a histogram)"


def canary_targets(wave: Wave) -> QuerySet[RolloutTarget]:
    return RolloutTarget.objects.filter(wave=wave, install_job__status=JobStatus.SUCCEEDED)


def baseline_targets(rollout: Rollout) -> QuerySet[RolloutTarget]:
    return RolloutTarget.objects.filter(HAS_BASELINE, rollout=rollout, excluded_reasons=[]).exclude(
        install_job__status=JobStatus.SUCCEEDED
    )


@dataclass
class _Acc:
    rows: int = 0
    devices: set[int] = field(default_factory=set)
    requests: int = 0
    errors: int = 0
    p95_wsum: float = 0.0
    p99_wsum: float = 0.0
    max_ms: float = 0.0
    missing: int = 0  # samples with successful requests and no histogram
    hist: list[int] = field(default_factory=lambda: [0] * latency_histogram.BUCKETS)

    def add(self, other: _Acc) -> None:
        self.rows += other.rows
        self.devices |= other.devices
        self.requests += other.requests
        self.errors += other.errors
        self.p95_wsum += other.p95_wsum
        self.p99_wsum += other.p99_wsum
        self.max_ms = max(self.max_ms, other.max_ms)
        self.missing += other.missing
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]

    def figures(self) -> dict[str, Any]:
        merged = self.missing == 0 and sum(self.hist) > 0
        if merged:
            p95 = latency_histogram.quantile(self.hist, 0.95) or 0.0
            p99 = latency_histogram.quantile(self.hist, 0.99) or 0.0
            method = MERGED
        else:
            p95 = self.p95_wsum / self.requests if self.requests else 0.0
            p99 = self.p99_wsum / self.requests if self.requests else 0.0
            method = WEIGHTED_MEAN.format(missing=self.missing, rows=self.rows)
        return {
            "rows": self.rows,
            "devices": len(self.devices),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.errors / self.requests, 5) if self.requests else 0.0,
            "p95_ms": round(p95, 4),
            "p99_ms": round(p99, 4),
            "max_ms": round(self.max_ms, 4),
            "p95_method": method,
        }


def _profiles(samples: QuerySet[TelemetrySample]) -> dict[str, _Acc]:
    """Counts and weighted sums in SQL per device; the histograms of the samples that have one, merged here."""
    samples = samples.filter(requests__gt=0)
    accs: dict[str, _Acc] = {}
    profile_of: dict[int, str] = {}
    for row in samples.values("device_id", "device__arch", "device__cpu", "device__accelerator").annotate(
        n_rows=Count("id"),
        n_requests=Sum("requests"),
        n_errors=Sum("errors"),
        p95_wsum=Sum(F("p95_ms") * F("requests")),
        p99_wsum=Sum(F("p99_ms") * F("requests")),
        worst_ms=Max("max_ms"),
        missing=Count("id", filter=Q(latency_hist__isnull=True, requests__gt=F("errors"))),
    ):
        profile = f"{row['device__arch']}|{row['device__cpu']}|{row['device__accelerator'] or 'none'}"
        profile_of[row["device_id"]] = profile
        acc = accs.setdefault(profile, _Acc())
        acc.add(
            _Acc(
                rows=row["n_rows"], devices={row["device_id"]}, requests=row["n_requests"] or 0,
                errors=row["n_errors"] or 0, p95_wsum=row["p95_wsum"] or 0.0, p99_wsum=row["p99_wsum"] or 0.0,
                max_ms=row["worst_ms"] or 0.0, missing=row["missing"],
            )
        )  # fmt: skip
    for device_id, counts in samples.filter(latency_hist__isnull=False).values_list("device_id", "latency_hist"):
        if counts is None:  # left out by the filter; the column's type is nullable
            continue
        hist = accs[profile_of[device_id]].hist
        for index, count in enumerate(counts[: latency_histogram.BUCKETS]):
            hist[index] += count
    return accs


@dataclass
class Cohorts:
    """Both cohorts' figures over one window, per profile and in total."""

    canary: dict[str, dict[str, Any]]
    baseline: dict[str, dict[str, Any]]
    canary_total: dict[str, Any] | None
    baseline_total: dict[str, Any] | None

    def summary(self) -> dict[str, Any]:
        """What a gate record keeps for the chart: the two cohorts' totals."""
        return {"canary": self.canary_total, "baseline": self.baseline_total}


def _total(accs: dict[str, _Acc]) -> dict[str, Any] | None:
    if not accs:
        return None
    total = _Acc()
    for acc in accs.values():
        total.add(acc)
    return total.figures()


def cohort_figures(rollout: Rollout, wave: Wave, *, since: dt.datetime, until: dt.datetime) -> Cohorts:
    """The wave's canary and the rollout's baseline over `(since, until]`, for the rollout's model (or
    pipeline: its samples are end to end, under its name)."""
    number = rollout.deployable.number
    window = TelemetrySample.objects.filter(model_name=rollout.deployable.family_name, ts__gt=since, ts__lte=until)
    # the cohorts' device ids as lists, not subqueries: a subquery over targets and jobs per sample row took
    # seconds for 20,000 samples on PostgreSQL (a plan re-running it), a list of ids takes milliseconds
    canary_ids = list(canary_targets(wave).values_list("device_id", flat=True))
    baseline_ids = list(baseline_targets(rollout).values_list("device_id", flat=True))
    canary = _profiles(window.filter(version_number=number, device_id__in=canary_ids))
    baseline = _profiles(window.exclude(version_number=number).filter(device_id__in=baseline_ids))
    return Cohorts(
        canary={k: v.figures() for k, v in canary.items()},
        baseline={k: v.figures() for k, v in baseline.items()},
        canary_total=_total(canary),
        baseline_total=_total(baseline),
    )


def gate_check_series(rollout: Rollout, *, limit: int = 500) -> dict[str, list[dict[str, Any]]]:
    """The rollout page's canary-vs-baseline points: each health check's cohort totals, as the gate judged
    them (stored on the evaluation), oldest first."""
    from .models import GateEvaluation, GateKind

    out: dict[str, list[dict[str, Any]]] = {"canary": [], "baseline": []}
    checks = GateEvaluation.objects.filter(rollout=rollout, gate=GateKind.HEALTH).select_related("wave")
    for check in reversed(list(checks.order_by("-at", "-id")[:limit])):
        for name, figures in (check.figures.get("cohorts") or {}).items():
            if figures and name in out:
                out[name].append(gate_point(check.at.isoformat(), check.wave.index, figures))
    return out


def gate_point(at: str, wave: int, figures: dict[str, Any]) -> dict[str, Any]:
    """One cohort of one health check as the chart draws it (the page's script builds the same from a live
    gate row: keep the two in step)."""
    return {
        "ts": at,
        "wave": wave,
        "requests": figures["requests"],
        "error_rate": figures["error_rate"],
        "p95_ms": figures["p95_ms"],
        "p95_method": figures["p95_method"],
    }
