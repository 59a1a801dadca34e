"""Wave gates: the figures each gate looks at and its verdict. Reads only; `wave_evaluate` stores them.

Install gate (AWS IoT Jobs' abortConfig): the share of a wave's devices whose job SUCCEEDED, and an early
abort once at least `min_finished` finished and more than `max_failure_pct` of those failed for good
(FAILED, REJECTED, TIMED_OUT or CANCELED with no retry left, or no job could be created).

Health gate (Flagger's analysis): from raw telemetry since the bake started, the wave's devices on the
new version against the rollout's devices still on their baseline (deployments/cohorts.py, the one
definition of the two cohorts), per hardware profile. Each profile's p95 is a quantile of all its
requests from the devices' merged latency histograms (a request-weighted mean of device p95s, labelled as
such in `p95_method`, where samples came without one); the gate takes the worst profile's ratio, so a
version that is slow on one kind of hardware fails even if the fleet-wide mean looks fine. A profile
with no baseline (first install) is held to `max_p95_ms` when given. Below `min_samples` requests on the
new version a check is inconclusive: a gate never passes on no data. Nor on part of it: while a hardware
profile among the wave's installed devices has sent no telemetry on the new version, or a profile whose
baseline devices are in the rollout has fewer than `baseline_samples` baseline requests, the check is
inconclusive too, so a version slow on one kind of board can't pass because that board reported late.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from django.db.models import BooleanField, Count, ExpressionWrapper, Q

from .cohorts import baseline_targets, canary_targets, cohort_figures
from .models import JobStatus, Rollout, RolloutTarget, Wave
from .plan import RetryPolicy

EXACT_BOUND_MAX_ERRORS = 1000  # beyond, the exact bound's sum costs more than its precision is worth
ERROR_RATE_ALPHA = 0.05  # the error rate's one-sided confidence: 95 %
NAMED_DEVICES = 50  # devices a gate record names at most (the API's job list has the rest)
FAILED_FOR_GOOD = (JobStatus.FAILED, JobStatus.REJECTED, JobStatus.TIMED_OUT, JobStatus.CANCELED)


@dataclass
class Verdict:
    verdict: str  # "pass" | "fail" | "inconclusive" | "pending"
    figures: dict[str, Any]
    reason: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)


def error_rate_lower_bound(errors: int, requests: int, alpha: float = ERROR_RATE_ALPHA) -> float:
    """The exact (Clopper-Pearson) one-sided lower bound of a binomial rate: the rate `p` at which seeing
    `errors` or more in `requests` has probability `alpha`. The true rate is below it in at most `alpha` of
    cohorts, however few the errors (Wilson's bound, tried first, failed a version exactly at a 2 % limit in
    12 % of 30-request checks). Bisection on the lower tail, which has `errors` terms."""
    if errors <= 0 or requests <= 0:
        return 0.0
    if errors >= requests:
        return math.pow(alpha, 1 / requests)
    if errors > EXACT_BOUND_MAX_ERRORS:
        return _wilson_lower_bound(errors, requests)
    low, high = 0.0, errors / requests
    for _ in range(60):
        mid = (low + high) / 2
        if 1.0 - _binomial_cdf(errors - 1, requests, mid) < alpha:
            low = mid
        else:
            high = mid
    return low


def _wilson_lower_bound(errors: int, requests: int, z: float = 1.645) -> float:
    """Wilson's score bound (one-sided 95 %): within 0.1 % of the exact one once errors are many."""
    rate, z2 = errors / requests, z * z
    centre = rate + z2 / (2 * requests)
    spread = z * math.sqrt(rate * (1 - rate) / requests + z2 / (4 * requests * requests))
    return max(0.0, (centre - spread) / (1 + z2 / requests))


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n may be millions)."""
    if p <= 0.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    head = math.lgamma(n + 1)
    return min(1.0, sum(
        math.exp(head - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(k + 1)
    ))  # fmt: skip


def retries_left(attempts: int, status: str, retry: RetryPolicy) -> bool:
    """The plan's retry policy per failure type: `FAILED=2, TIMED_OUT=1` extra attempts. A target that
    made `attempts` and whose last job ended `status` gets another while this holds."""
    return attempts <= retry.extra_attempts(status)


def install_counts(rollout: Rollout, wave: Wave) -> dict[str, Any]:
    """A wave's devices by the state of their latest job; `undispatched` have none yet. A job that timed
    out still QUEUED with no retry left is `not_started` (its device never answered), apart from `failed`:
    it says nothing about the version. `not_started_devices` names them, with the job's reason.

    Counted in SQL, grouped by what decides a target's state (a few groups whatever the wave's size): the
    install gate runs on every tick, and reading a 10,000-device wave's targets row by row took a quarter
    of the worker's time in the fan-out benchmark."""
    retry = rollout.plan.retry
    counts: dict[str, Any] = {
        "total": 0, "undispatched": 0, "active": 0, "succeeded": 0, "failed": 0, "retrying": 0, "not_started": 0,
    }  # fmt: skip
    never_started: list[tuple[str, int]] = []  # (status, attempts) groups that count as not_started
    groups = (
        RolloutTarget.objects.filter(wave=wave)
        .annotate(skipped=ExpressionWrapper(~Q(skip_reason=""), output_field=BooleanField()),
                  unstarted=ExpressionWrapper(Q(install_job__started_at__isnull=True), output_field=BooleanField()))
        .values("install_job__status", "attempts", "skipped", "unstarted")
        .annotate(n=Count("id"))
        .order_by()
    )  # fmt: skip
    for group in groups:
        status, attempts, n = group["install_job__status"], group["attempts"], group["n"]
        counts["total"] += n
        if status is None:  # no job (a LEFT JOIN's NULL: install_job is nullable)
            counts["failed" if group["skipped"] else "undispatched"] += n
        elif status == JobStatus.SUCCEEDED:
            counts["succeeded"] += n
        elif status in FAILED_FOR_GOOD:
            if retries_left(attempts, status, retry):
                counts["retrying"] += n
            elif status == JobStatus.TIMED_OUT and group["unstarted"]:
                counts["not_started"] += n
                never_started.append((status, attempts))
            else:
                counts["failed"] += n
        else:
            counts["active"] += n
    counts["not_started_devices"] = _not_started_devices(wave, never_started)
    return counts


def _not_started_devices(wave: Wave, groups: list[tuple[str, int]]) -> list[dict[str, str]]:
    """The first `NAMED_DEVICES` devices (in dispatch order) whose job timed out never started."""
    if not groups:
        return []
    attempts = [a for _, a in groups]
    rows = (
        RolloutTarget.objects.filter(
            wave=wave, install_job__status=JobStatus.TIMED_OUT, install_job__started_at__isnull=True,
            attempts__in=attempts,
        )
        .order_by("order")
        .values_list("device__uid", "install_job__reason")[:NAMED_DEVICES]
    )  # fmt: skip
    return [{"device": uid, "reason": reason} for uid, reason in rows]


def install_gate(rollout: Rollout, wave: Wave) -> Verdict:
    gate = rollout.plan.install_gate
    min_success, max_failure, min_finished = gate.min_success_pct, gate.max_failure_pct, gate.min_finished
    counts = install_counts(rollout, wave)
    finished = counts["succeeded"] + counts["failed"]
    # devices that never started their job are out of both shares: the wave is judged on those that answered
    answered = counts["total"] - counts["not_started"]
    failure_pct = 100.0 * counts["failed"] / finished if finished else 0.0
    success_pct = 100.0 * counts["succeeded"] / answered if answered else 100.0
    figures = {
        **counts,
        "finished": finished,
        "failure_pct": round(failure_pct, 2),
        "success_pct": round(success_pct, 2),
        "online_at_dispatch": wave.online_at_dispatch,
        "offline_at_dispatch": wave.offline_at_dispatch,
    }
    inputs = {"min_success_pct": min_success, "max_failure_pct": max_failure, "min_finished": min_finished}
    if finished >= min_finished and failure_pct > max_failure:
        reason = f"{failure_pct:.1f}% of {finished} finished jobs failed (limit {max_failure:g}%)"
        return Verdict("fail", figures, reason, inputs)
    if counts["undispatched"] or counts["active"] or counts["retrying"]:
        return Verdict("pending", figures, "", inputs)
    not_started = f"; {counts['not_started']} never started (queued timeout)" if counts["not_started"] else ""
    if counts["total"] and not answered:
        return Verdict("fail", figures, f"no device of the wave started its job{not_started}", inputs)
    if success_pct + 1e-9 < min_success:
        reason = f"{success_pct:.1f}% succeeded (needs {min_success:g}%){not_started}"
        return Verdict("fail", figures, reason, inputs)
    return Verdict("pass", figures, f"{success_pct:.1f}% of {answered} succeeded{not_started}", inputs)


def health_gate(rollout: Rollout, wave: Wave, *, since: dt.datetime, until: dt.datetime) -> Verdict:
    gate = rollout.plan.health_gate
    if gate is None:
        raise ValueError(f"rollout {rollout.pk} has no health gate")
    max_ratio, max_error_rate = gate.max_p95_latency_ratio, gate.max_error_rate
    max_p95_ms, max_p99_ms = gate.max_p95_ms, gate.max_p99_ms
    min_samples, min_baseline = gate.min_samples, gate.baseline_samples
    # a pipeline's samples are end to end, under its name: the gate compares the pipeline's latency
    model_name, number = rollout.deployable.family_name, rollout.deployable.number
    inputs = {
        **gate.model_dump(exclude_none=True),
        "window": [since.isoformat(), until.isoformat()],
        "model": model_name,
        "version": number,
    }
    cohorts = cohort_figures(rollout, wave, since=since, until=until)
    candidate, baseline = cohorts.canary, cohorts.baseline
    requests = sum(c["requests"] for c in candidate.values())
    errors = sum(c["errors"] for c in candidate.values())
    error_rate = errors / requests if requests else 0.0
    profiles: dict[str, Any] = {}
    failures: list[str] = []
    worst: tuple[float, str] | None = None
    missing: list[str] = []
    wave_profiles = set(canary_targets(wave).values_list("profile", flat=True).distinct())
    missing += [f"no telemetry yet on {profile}" for profile in sorted(wave_profiles - set(candidate))]
    expected_baseline = set(baseline_targets(rollout).values_list("profile", flat=True).distinct())
    for profile, cand in sorted(candidate.items()):
        base = baseline.get(profile)
        entry: dict[str, Any] = {"candidate": cand, "baseline": base}
        if profile in expected_baseline and (base is None or base["requests"] < min_baseline):
            entry["judged_by"] = "waiting for the baseline"
            got = base["requests"] if base else 0
            missing.append(f"baseline on {profile} has {got} requests (needs {min_baseline})")
        elif base and base["requests"] >= min_baseline and base["p95_ms"] > 0:
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
    error_rate_low = error_rate_lower_bound(errors, requests)
    if max_error_rate is not None and requests and error_rate > float(max_error_rate):
        limit = float(max_error_rate)
        if error_rate_low > limit:
            failures.append(f"error rate {error_rate:.4f} (limit {limit:g}; at least {error_rate_low:.4f} at 95 %)")
        else:
            missing.append(
                f"error rate {error_rate:.4f} ({errors} of {requests} requests) is above the limit {limit:g} "
                f"but not significantly (at least {error_rate_low:.4f} at 95 %)"
            )
    figures = {
        "samples": requests,
        "errors": errors,
        "error_rate": round(error_rate, 5),
        "error_rate_lower_bound": round(error_rate_low, 5),
        "max_p95_ratio": round(worst[0], 3) if worst else None,
        "worst_profile": worst[1] if worst else None,
        "profiles": profiles,
        "cohorts": cohorts.summary(),  # what the rollout page's chart plots for this check
    }
    if missing:
        figures["waiting_for"] = missing
    if requests < min_samples:
        return Verdict("inconclusive", figures, f"{requests} samples on the new version (needs {min_samples})", inputs)
    if failures:  # what was judged fails already: no need to wait for the profiles still missing
        return Verdict("fail", figures, "; ".join(failures), inputs)
    if missing:
        return Verdict("inconclusive", figures, "; ".join(missing), inputs)
    return Verdict("pass", figures, f"{requests} samples within limits", inputs)
