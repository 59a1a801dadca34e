"""Wave gates: the figures each gate looks at and its verdict. Reads only; `wave_evaluate` stores them.

Install gate (AWS IoT Jobs' abortConfig): the share of a wave's devices whose job SUCCEEDED, and an early
abort once at least `min_finished` finished and more than `max_failure_pct` of those failed for good
(FAILED, REJECTED, TIMED_OUT or CANCELED with no retry left, or no job could be created).

Health gate (Flagger's analysis): from raw telemetry since the bake started, the wave's devices on the
new version against the rollout's devices still on their baseline, per hardware profile. Each profile's
p95 is the mean of the per-interval p95s of its devices; the gate takes the worst profile's ratio, so a
version that is slow on one kind of hardware fails even if the fleet-wide mean looks fine. A profile
with no baseline (first install) is held to `max_p95_ms` when given. Below `min_samples` requests on the
new version a check is inconclusive: a gate never passes on no data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Avg, Count, Max, Sum

from telemetry.models import TelemetrySample

from .models import HAS_BASELINE, JobStatus, Rollout, RolloutTarget, Wave

FAILED_FOR_GOOD = (JobStatus.FAILED, JobStatus.REJECTED, JobStatus.TIMED_OUT, JobStatus.CANCELED)


@dataclass
class Verdict:
    verdict: str  # "pass" | "fail" | "inconclusive" | "pending"
    figures: dict[str, Any]
    reason: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)


def retries_left(target: RolloutTarget, status: str, retry: dict[str, int]) -> bool:
    """The plan's retry policy per failure type: `{"FAILED": 2, "TIMED_OUT": 1}` extra attempts."""
    return target.attempts <= int(retry.get(status, 0))


def install_counts(rollout: Rollout, wave: Wave) -> dict[str, int]:
    """A wave's devices by the state of their latest job; `undispatched` have none yet."""
    retry = rollout.plan.get("retry", {})
    counts = {"total": 0, "undispatched": 0, "active": 0, "succeeded": 0, "failed": 0, "retrying": 0}
    for target in (
        RolloutTarget.objects.filter(wave=wave)
        .select_related("install_job")
        .only("attempts", "skip_reason", "install_job__status")
    ):
        counts["total"] += 1
        job = target.install_job
        if job is None:
            counts["failed" if target.skip_reason else "undispatched"] += 1
        elif job.status == JobStatus.SUCCEEDED:
            counts["succeeded"] += 1
        elif job.status in FAILED_FOR_GOOD:
            counts["retrying" if retries_left(target, job.status, retry) else "failed"] += 1
        else:
            counts["active"] += 1
    return counts


def install_gate(rollout: Rollout, wave: Wave) -> Verdict:
    gate = rollout.plan.get("install_gate", {})
    min_success = float(gate.get("min_success_pct", 100))
    max_failure = float(gate.get("max_failure_pct", 100))
    min_finished = int(gate.get("min_finished", 1))
    counts = install_counts(rollout, wave)
    finished = counts["succeeded"] + counts["failed"]
    failure_pct = 100.0 * counts["failed"] / finished if finished else 0.0
    success_pct = 100.0 * counts["succeeded"] / counts["total"] if counts["total"] else 100.0
    figures = {
        **counts,
        "finished": finished,
        "failure_pct": round(failure_pct, 2),
        "success_pct": round(success_pct, 2),
    }
    inputs = {"min_success_pct": min_success, "max_failure_pct": max_failure, "min_finished": min_finished}
    if finished >= min_finished and failure_pct > max_failure:
        reason = f"{failure_pct:.1f}% of {finished} finished jobs failed (limit {max_failure:g}%)"
        return Verdict("fail", figures, reason, inputs)
    if counts["undispatched"] or counts["active"] or counts["retrying"]:
        return Verdict("pending", figures, "", inputs)
    if success_pct + 1e-9 < min_success:
        return Verdict("fail", figures, f"{success_pct:.1f}% succeeded (needs {min_success:g}%)", inputs)
    return Verdict("pass", figures, f"{success_pct:.1f}% of {counts['total']} succeeded", inputs)


def _by_profile(rows: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        key = f"{row['device__arch']}|{row['device__cpu']}|{row['device__accelerator'] or 'none'}"
        out[key] = {
            "rows": row["rows"],
            "devices": row["devices"],
            "requests": row["requests"] or 0,
            "errors": row["errors"] or 0,
            "p95_ms": round(row["p95"] or 0.0, 4),
            "p99_ms": round(row["p99"] or 0.0, 4),
            "max_ms": round(row["max_ms"] or 0.0, 4),
        }
    return out


def _aggregate(queryset: Any) -> dict[str, dict[str, float]]:
    return _by_profile(
        queryset.filter(requests__gt=0)
        .values("device__arch", "device__cpu", "device__accelerator")
        .annotate(
            rows=Count("id"),
            devices=Count("device_id", distinct=True),
            requests=Sum("requests"),
            errors=Sum("errors"),
            p95=Avg("p95_ms"),
            p99=Avg("p99_ms"),
            max_ms=Max("max_ms"),
        )
    )


def health_gate(rollout: Rollout, wave: Wave, *, since: dt.datetime, until: dt.datetime) -> Verdict:
    gate = rollout.plan.get("health_gate") or {}
    max_ratio = gate.get("max_p95_latency_ratio")
    max_error_rate = gate.get("max_error_rate")
    max_p95_ms = gate.get("max_p95_ms")
    max_p99_ms = gate.get("max_p99_ms")
    min_samples = int(gate.get("min_samples", 100))
    min_baseline = int(gate.get("min_baseline_samples", max(1, min_samples // 4)))
    # a pipeline's samples are end to end, under its name: the gate compares the pipeline's latency
    model_name, number = rollout.subject_name, rollout.subject.number
    inputs = {
        **gate,
        "window": [since.isoformat(), until.isoformat()],
        "model": model_name,
        "version": number,
    }
    wave_devices = RolloutTarget.objects.filter(wave=wave, install_job__status=JobStatus.SUCCEEDED).values("device_id")
    baseline_devices = (
        RolloutTarget.objects.filter(HAS_BASELINE, rollout=rollout, excluded_reasons=[])
        .exclude(install_job__status=JobStatus.SUCCEEDED)
        .values("device_id")
    )
    window = TelemetrySample.objects.filter(model_name=model_name, ts__gt=since, ts__lte=until)
    candidate = _aggregate(window.filter(version_number=number, device_id__in=wave_devices))
    baseline = _aggregate(window.exclude(version_number=number).filter(device_id__in=baseline_devices))
    requests = sum(c["requests"] for c in candidate.values())
    errors = sum(c["errors"] for c in candidate.values())
    error_rate = errors / requests if requests else 0.0
    profiles: dict[str, Any] = {}
    failures: list[str] = []
    worst: tuple[float, str] | None = None
    for profile, cand in sorted(candidate.items()):
        base = baseline.get(profile)
        entry: dict[str, Any] = {"candidate": cand, "baseline": base}
        if base and base["requests"] >= min_baseline and base["p95_ms"] > 0:
            ratio = cand["p95_ms"] / base["p95_ms"]
            entry["p95_ratio"] = round(ratio, 3)
            if worst is None or ratio > worst[0]:
                worst = (ratio, profile)
            if max_ratio is not None and ratio > float(max_ratio):
                failures.append(f"p95 on {profile} is {ratio:.2f}x the baseline (limit {float(max_ratio):g}x)")
        elif max_p95_ms is not None:
            entry["judged_by"] = "max_p95_ms"
            if cand["p95_ms"] > float(max_p95_ms):
                failures.append(f"p95 on {profile} is {cand['p95_ms']:.2f} ms (limit {float(max_p95_ms):g} ms)")
        else:
            entry["judged_by"] = "none: no baseline and no max_p95_ms"
        if max_p99_ms is not None and cand["p99_ms"] > float(max_p99_ms):
            failures.append(f"p99 on {profile} is {cand['p99_ms']:.2f} ms (limit {float(max_p99_ms):g} ms)")
        profiles[profile] = entry
    if max_error_rate is not None and requests and error_rate > float(max_error_rate):
        failures.append(f"error rate {error_rate:.4f} (limit {float(max_error_rate):g})")
    figures = {
        "samples": requests,
        "errors": errors,
        "error_rate": round(error_rate, 5),
        "max_p95_ratio": round(worst[0], 3) if worst else None,
        "worst_profile": worst[1] if worst else None,
        "profiles": profiles,
    }
    if requests < min_samples:
        return Verdict("inconclusive", figures, f"{requests} samples on the new version (needs {min_samples})", inputs)
    if failures:
        return Verdict("fail", figures, "; ".join(failures), inputs)
    return Verdict("pass", figures, f"{requests} samples within limits", inputs)
