"""The live rollout page's stream (`/ws/rollouts/{id}/`, deployments/consumers.py): what its group is sent.

Rollout groups get two kinds of items, both through telemetry's coalescer (telemetry/streaming.py): the
rollout's progress (status and per-wave job-state counts), re-read in one query at flush time however
many job updates marked it stale (`rollout_stream_touch`), and per-cohort (canary vs baseline) latency and
error figures folded from each committed telemetry batch of the rollout's devices (`rollout_cohort_offer`,
which telemetry calls as a batch listener: DeploymentsConfig.ready() registers it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from protocol import latency_histogram
from protocol.streams import rollout_group
from telemetry.streaming import CommittedSample, Deferred, Item, stream_offer

from .selectors import active_rollouts_of_devices, rollout_progress

ROLLOUT_GROUP_PREFIX = rollout_group(0).removesuffix("0")
ROLLOUT_PROGRESS_KEY = "progress"


def rollout_stream_touch(rollout_id: int) -> None:
    """The rollout's status, a wave's status or one of its jobs changed (call it on commit): its group
    gets the fresh progress (`deployments.selectors.rollout_progress`) at the next flush, read once
    however many changes arrived meanwhile."""

    def compute() -> dict[str, object] | None:
        return rollout_progress(rollout_id)

    stream_offer({rollout_group(rollout_id): {ROLLOUT_PROGRESS_KEY: Deferred(compute)}})


# (device id, model name, version number, ts, requests, errors, p95 ms, latency histogram or None)
CohortSample = CommittedSample
COHORT_MERGED = "merged histogram"
COHORT_WEIGHTED_MEAN = "request-weighted mean of device p95s"


@dataclass
class _CohortAcc:
    requests: int = 0
    errors: int = 0
    p95_wsum: float = 0.0
    ts: dt.datetime | None = None
    devices: set[int] = field(default_factory=set)
    missing: int = 0  # samples with successful requests and no histogram
    hist: list[int] = field(default_factory=lambda: [0] * latency_histogram.BUCKETS)

    def add(self, device_id: int, ts: dt.datetime, requests: int, errors: int, p95: float,
            hist: list[int] | None) -> None:  # fmt: skip
        self.requests += requests
        self.errors += errors
        self.p95_wsum += p95 * requests
        self.ts = ts if self.ts is None or ts > self.ts else self.ts
        self.devices.add(device_id)
        if hist is None:
            self.missing += requests > errors
        else:
            for index, count in enumerate(hist[: latency_histogram.BUCKETS]):
                self.hist[index] += count

    def p95(self) -> tuple[float | None, str]:
        if self.missing == 0 and sum(self.hist) > 0:
            return latency_histogram.quantile(self.hist, 0.95), COHORT_MERGED
        return (self.p95_wsum / self.requests if self.requests else None), COHORT_WEIGHTED_MEAN


def rollout_cohort_items(
    samples: Iterable[CohortSample], memberships: Mapping[int, list[tuple[int, str, int]]]
) -> dict[str, dict[str, Item]]:
    """Fold one telemetry batch into per-rollout cohort figures: `canary` is the rollout's devices on its
    version, `baseline` its devices on any other version of the model. The p95 is computed as the health
    gate computes it (deployments/cohorts.py): a quantile of the devices' merged latency histograms, or,
    when a sample came without one, the request-weighted mean of device p95s; `p95_method` says which."""
    acc: dict[tuple[int, str], _CohortAcc] = {}
    for device_id, model, version, ts, requests, errors, p95, hist in samples:
        for rollout_id, rollout_model, rollout_version in memberships.get(device_id, ()):
            if model != rollout_model:
                continue
            cohort = "canary" if version == rollout_version else "baseline"
            acc.setdefault((rollout_id, cohort), _CohortAcc()).add(device_id, ts, requests, errors, p95, hist)
    out: dict[str, dict[str, Item]] = {}
    for (rollout_id, cohort), figures in acc.items():
        p95_ms, method = figures.p95()
        out.setdefault(rollout_group(rollout_id), {})[f"cohort:{cohort}"] = {
            "kind": "cohort",
            "cohort": cohort,
            "ts": figures.ts.isoformat() if figures.ts else None,
            "requests": figures.requests,
            "errors": figures.errors,
            "error_rate": round(figures.errors / figures.requests, 6) if figures.requests else 0.0,
            "p95_ms": round(p95_ms, 3) if p95_ms is not None else None,
            "p95_method": method,
            "devices": len(figures.devices),
        }
    return out


def rollout_cohort_offer(samples: list[CohortSample]) -> None:
    """Offer a committed telemetry batch to the groups of the active rollouts its devices are in, whose
    pages are open (one indexed query per batch; none when no rollout page is open)."""
    if not samples:
        return
    from core.stream_watchers import EVERYTHING, stream_watched_groups

    watched = stream_watched_groups()
    if watched is EVERYTHING:
        rollouts = None
    else:
        rollouts = {int(g.removeprefix(ROLLOUT_GROUP_PREFIX)) for g in watched if g.startswith(ROLLOUT_GROUP_PREFIX)}
        if not rollouts:
            return  # no rollout page is open: nothing to look up
    memberships = active_rollouts_of_devices({s[0] for s in samples}, rollout_ids=rollouts)
    if memberships:
        stream_offer(rollout_cohort_items(samples, memberships))
