"""The latency histogram of protocol v1 telemetry (additive): its quantiles stay within the stated error of
the exact ones, and messages without it parse as before."""

from __future__ import annotations

import json
import math
import random

import pytest

from protocol import latency_histogram
from protocol.messages import ProtocolError, TelemetryMessage, parse_message


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("seed", range(20))
def test_merged_quantiles_are_within_the_stated_error_of_the_exact_ones(seed):
    rng = random.Random(seed)
    devices = [[rng.lognormvariate(math.log(rng.uniform(1, 200)), rng.uniform(0.1, 1.0))
                for _ in range(rng.randint(1, 500))] for _ in range(rng.randint(1, 12))]  # fmt: skip
    merged = latency_histogram.merge(latency_histogram.counts_of(values) for values in devices)
    every = [v for values in devices for v in values]
    for q in (0.5, 0.95, 0.99):
        exact = nearest_rank(every, q)
        estimate = latency_histogram.quantile(merged, q)
        assert estimate is not None and abs(estimate - exact) / exact <= latency_histogram.RELATIVE_ERROR + 1e-12


def test_an_empty_histogram_has_no_quantile_and_the_ends_clamp():
    assert latency_histogram.quantile([0], 0.95) is None
    assert latency_histogram.quantile(latency_histogram.counts_of([0.01]), 0.5) == latency_histogram.EDGES_MS[0]
    assert latency_histogram.quantile(latency_histogram.counts_of([1e9]), 0.5) == latency_histogram.EDGES_MS[-1]


def message(**latency: object) -> bytes:
    sample = {"model": "m", "version": 1, "requests": 10, "errors": 1,
              "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0, **latency}}  # fmt: skip
    return json.dumps({"schema_version": 1, "ts": "2026-12-02T09:00:00Z", "interval_s": 10.0,
                       "samples": [sample]}).encode()  # fmt: skip


def test_a_message_without_a_histogram_parses_and_encodes_without_one():
    parsed = parse_message(TelemetryMessage, message())
    assert parsed.samples[0].latency_ms.hist is None
    assert "hist" not in parsed.model_dump_json()


def test_a_histogram_counts_at_most_the_successful_requests():
    assert parse_message(TelemetryMessage, message(hist={"counts": [0, 9]})).samples[0].latency_ms.hist is not None
    with pytest.raises(ProtocolError):
        parse_message(TelemetryMessage, message(hist={"counts": [0, 10]}))
    with pytest.raises(ProtocolError):
        parse_message(TelemetryMessage, message(hist={"counts": [0] * (latency_histogram.BUCKETS + 1)}))
