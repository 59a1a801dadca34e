"""Inference metrics per (model, version) between two telemetry publishes.

Latency percentiles (from a reservoir of latencies), every successful request counted in the protocol's
fixed latency buckets (a mergeable histogram: the control plane's gates read quantiles over a cohort
from it), and per-feature summary statistics (count, mean, variance, min, max) merged
batch by batch with Chan's parallel algorithm, plus a fixed-edge histogram per feature (for drift
detection), so memory does not grow with traffic.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from protocol import latency_histogram
from protocol.messages import (
    DEFAULT_HIST_EDGES,
    MAX_HIST_EDGES,
    FeatureHistogram,
    FeatureStats,
    LatencyHistogram,
    LatencySummary,
    StageLatency,
    TelemetrySample,
    feature_key,
)

if TYPE_CHECKING:
    from agent.pipeline import StageRun

MAX_FEATURES = 256  # the protocol's bound per sample
# Histograms for the first 64 features only: 256 of them (~450 bytes each) could push a message with
# several models past the protocol's 256 KiB limit, and an oversize message loses the whole interval.
MAX_HIST_FEATURES = 64
_LATENCY_RESERVOIR = 20_000


@dataclass
class _Moments:
    """Column-wise running statistics of one input tensor (its last axis are the columns)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray
    hist: np.ndarray  # (bins, columns) counts over the recorder's fixed edges

    @classmethod
    def of(cls, rows: np.ndarray, edges: np.ndarray) -> _Moments:
        return cls(
            len(rows),
            rows.mean(axis=0),
            rows.var(axis=0) * len(rows),
            rows.min(axis=0),
            rows.max(axis=0),
            _histogram(rows, edges),
        )

    def merge(self, other: _Moments) -> None:
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.low = np.minimum(self.low, other.low)
        self.high = np.maximum(self.high, other.high)
        self.hist = self.hist + other.hist
        self.count = total


def _histogram(rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per column, counts in len(edges) + 1 bins: below edges[0], [edges[i-1], edges[i]), at/above edges[-1]."""
    bins = len(edges) + 1
    index = np.searchsorted(edges, rows, side="right")  # the bin of every value, same shape as rows
    offsets = index + np.arange(rows.shape[1]) * bins  # one block of bins per column
    return np.bincount(offsets.ravel(), minlength=bins * rows.shape[1]).reshape(rows.shape[1], bins).T


def parse_hist_edges(text: str) -> tuple[float, ...]:
    """`--hist-edges "-1,0,1"`: 1 to 64 finite, strictly increasing numbers (ValueError otherwise)."""
    try:
        edges = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"histogram edges must be comma-separated numbers, got {text[:100]!r}") from None
    if not 1 <= len(edges) <= MAX_HIST_EDGES or not np.isfinite(edges).all():
        raise ValueError(f"give 1 to {MAX_HIST_EDGES} finite histogram edges")
    if any(b <= a for a, b in pairwise(edges)):
        raise ValueError("histogram edges must be strictly increasing")
    return edges


def _rows(array: np.ndarray) -> np.ndarray | None:
    """The tensor as (rows, columns) of finite float64; None when nothing finite is left."""
    values = np.asarray(array, dtype=np.float64)
    values = values.reshape(1, 1) if values.ndim == 0 else values.reshape(-1, values.shape[-1])
    if values.size == 0:
        return None
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        values = values[finite]
    return values if len(values) else None


@dataclass
class _StageSeries:
    model: str
    version: int
    requests: int = 0
    skipped: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class _Series:
    requests: int = 0
    errors: int = 0
    seen: int = 0  # successful requests, for reservoir sampling of latencies
    latencies: list[float] = field(default_factory=list)
    latency_counts: np.ndarray = field(default_factory=lambda: np.zeros(latency_histogram.BUCKETS, dtype=np.int64))
    inputs: dict[str, _Moments] = field(default_factory=dict)
    stages: dict[str, _StageSeries] | None = None  # a pipeline's, in stage order


class TelemetryRecorder:
    """Thread-safe: the HTTP handlers record, the telemetry loop drains."""

    def __init__(self, *, rng: random.Random | None = None, hist_edges: tuple[float, ...] = DEFAULT_HIST_EDGES) -> None:
        self._lock = threading.Lock()
        self._edges = np.asarray(hist_edges, dtype=np.float64)
        self._series: dict[tuple[str, int], _Series] = {}
        self._rng = rng or random.Random()  # noqa: S311 (sampling, not security)

    def _get(self, model: str, version: int) -> _Series:
        return self._series.setdefault((model, version), _Series())

    def record_success(
        self, model: str, version: int, latency_ms: float, inputs: dict[str, np.ndarray] | None = None
    ) -> None:
        with self._lock:
            series = self._get(model, version)
            series.requests += 1
            self._add_latency(series, latency_ms)
        if inputs:
            self.record_inputs(model, version, inputs)

    def record_inputs(self, model: str, version: int, inputs: dict[str, np.ndarray]) -> None:
        """Merge input tensors into the feature statistics (counted as rows, not as requests)."""
        batches = {name: rows for name, array in inputs.items() if (rows := _rows(array)) is not None}
        with self._lock:
            series = self._get(model, version)
            for name, rows in batches.items():
                moments = _Moments.of(rows, self._edges)
                known = series.inputs.get(name)
                if known is None:
                    series.inputs[name] = moments
                elif known.mean.shape == moments.mean.shape:  # a dynamic last axis that changed is skipped
                    known.merge(moments)

    def record_latencies(self, model: str, version: int, latencies_ms: np.ndarray, errors: int = 0) -> None:
        """A batch of requests at once (the simulator)."""
        with self._lock:
            series = self._get(model, version)
            series.requests += len(latencies_ms) + errors
            series.errors += errors
            for value in latencies_ms:
                self._add_latency(series, float(value), counted=True)
            series.latency_counts += _bucket_counts(np.asarray(latencies_ms, dtype=np.float64))

    def record_stages(self, model: str, version: int, runs: list[StageRun]) -> None:
        """What each stage of a pipeline did for one request (ran with its latency, or skipped)."""
        with self._lock:
            series = self._get(model, version)
            if series.stages is None:
                series.stages = {}
            for run in runs:
                stage = series.stages.setdefault(run.name, _StageSeries(run.model, run.version))
                if not run.ran or run.latency_ms is None:
                    stage.skipped += 1
                    continue
                stage.requests += 1
                if len(stage.latencies) < _LATENCY_RESERVOIR:
                    stage.latencies.append(run.latency_ms)

    def record_stage_latencies(
        self,
        model: str,
        version: int,
        name: str,
        stage_model: str,
        stage_version: int,
        latencies_ms: np.ndarray,
        *,
        skipped: int = 0,
    ) -> None:
        """A batch of one pipeline stage's runs and skips at once (the simulator)."""
        with self._lock:
            series = self._get(model, version)
            if series.stages is None:
                series.stages = {}
            stage = series.stages.setdefault(name, _StageSeries(stage_model, stage_version))
            stage.requests += len(latencies_ms)
            stage.skipped += skipped
            room = _LATENCY_RESERVOIR - len(stage.latencies)
            stage.latencies.extend(float(v) for v in latencies_ms[: max(0, room)])

    def record_error(self, model: str, version: int) -> None:
        with self._lock:
            series = self._get(model, version)
            series.requests += 1
            series.errors += 1

    def _add_latency(self, series: _Series, latency_ms: float, *, counted: bool = False) -> None:
        if not counted:
            series.latency_counts[latency_histogram.bucket_of(latency_ms)] += 1
        series.seen += 1
        if len(series.latencies) < _LATENCY_RESERVOIR:
            series.latencies.append(latency_ms)
        else:
            slot = self._rng.randrange(series.seen)
            if slot < _LATENCY_RESERVOIR:
                series.latencies[slot] = latency_ms

    def drain(self) -> list[TelemetrySample]:
        """The samples since the last drain; the recorder starts empty again."""
        with self._lock:
            series, self._series = self._series, {}
        edges = [float(e) for e in self._edges]
        return [_sample(model, version, s, edges) for (model, version), s in series.items()]


def _bucket_counts(latencies_ms: np.ndarray) -> np.ndarray:
    """A batch of latencies counted in the protocol's latency buckets (`bucket_of` for each, vectorized)."""
    edges = np.asarray(latency_histogram.EDGES_MS, dtype=np.float64)
    indexes = np.searchsorted(edges, latencies_ms, side="right")
    return np.bincount(indexes, minlength=latency_histogram.BUCKETS).astype(np.int64)


def _summary(latencies: list[float], counts: np.ndarray | None = None) -> LatencySummary:
    hist = None
    if counts is not None and counts.any():
        hist = LatencyHistogram(counts=latency_histogram.trimmed([int(c) for c in counts]))
    if not latencies:
        return LatencySummary(p50=0.0, p95=0.0, p99=0.0, max=0.0, hist=hist)
    p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
    return LatencySummary(p50=p50, p95=p95, p99=p99, max=float(max(latencies)), hist=hist)


def _sample(model: str, version: int, series: _Series, edges: list[float]) -> TelemetrySample:
    latency = _summary(series.latencies, series.latency_counts)
    features: dict[str, FeatureStats] = {}
    for name, moments in series.inputs.items():
        columns = len(moments.mean)
        for column in range(columns):
            if len(features) >= MAX_FEATURES:
                break
            key = feature_key(name, column, columns)
            mean, low, high = float(moments.mean[column]), float(moments.low[column]), float(moments.high[column])
            var = max(0.0, float(moments.m2[column] / moments.count))
            if not np.isfinite([mean, var, low, high]).all():  # overflowed: better absent than rejected
                continue
            hist = (
                FeatureHistogram(edges=edges, counts=[int(c) for c in moments.hist[:, column]])
                if len(features) < MAX_HIST_FEATURES
                else None
            )
            features[key] = FeatureStats(count=moments.count, mean=mean, var=var, min=low, max=high, hist=hist)
    return TelemetrySample(
        model=model,
        version=version,
        requests=series.requests,
        errors=series.errors,
        latency_ms=latency,
        inputs=features,
        stages=None
        if series.stages is None
        else [
            StageLatency(
                name=name[:64],
                model=stage.model,
                version=stage.version,
                requests=stage.requests,
                skipped=stage.skipped,
                latency_ms=_summary(stage.latencies) if stage.latencies else None,
            )
            for name, stage in list(series.stages.items())[:8]
        ],
    )
