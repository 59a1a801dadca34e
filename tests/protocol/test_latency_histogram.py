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


def bucket_middle(counts: list[int], q: float) -> float:
    """The estimate before interpolation: the geometric middle of the bucket holding the quantile."""
    rank, seen = max(1, math.ceil(q * sum(counts))), 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return math.sqrt(latency_histogram.EDGES_MS[index - 1] * latency_histogram.EDGES_MS[index])
    raise AssertionError("rank beyond the counts")


def test_the_ratio_of_two_cohorts_p95s_follows_the_exact_ratio_not_the_bucket_steps():
    """The health gate judges canary p95 / baseline p95 against a limit such as 1.3: read from bucket
    middles that ratio moved in steps of 2^(1/4), so a canary 15 % slower could read as 41 % slower."""
    worst_quantile = worst_ratio = worst_ratio_from_middles = 0.0
    for seed in range(60):
        rng = random.Random(seed)
        median, slower, spread = rng.uniform(2, 100), rng.uniform(1.0, 1.5), rng.uniform(0.2, 0.8)
        size = rng.randint(1000, 4000)
        baseline = [rng.lognormvariate(math.log(median), spread) for _ in range(size)]
        canary = [rng.lognormvariate(math.log(median * slower), spread) for _ in range(size)]
        exact = nearest_rank(canary, 0.95) / nearest_rank(baseline, 0.95)
        counts = latency_histogram.counts_of(baseline), latency_histogram.counts_of(canary)
        read = [latency_histogram.quantile(c, 0.95) for c in counts]
        assert read[0] is not None and read[1] is not None
        for estimate, values in zip(read, (baseline, canary), strict=True):
            worst_quantile = max(worst_quantile, abs(estimate / nearest_rank(values, 0.95) - 1))
        worst_ratio = max(worst_ratio, abs(read[1] / read[0] / exact - 1))
        middles = [bucket_middle(c, 0.95) for c in counts]
        worst_ratio_from_middles = max(worst_ratio_from_middles, abs(middles[1] / middles[0] / exact - 1))
    assert worst_quantile <= 0.05 and worst_ratio <= 0.05
    assert worst_ratio_from_middles > 0.10  # what the gate saw before


def test_a_lone_request_reads_as_its_buckets_middle_and_a_full_bucket_is_read_by_rank():
    edges = latency_histogram.EDGES_MS
    index = latency_histogram.bucket_of(12.0)
    middle = math.sqrt(edges[index - 1] * edges[index])
    assert latency_histogram.quantile(latency_histogram.counts_of([12.0]), 0.95) == pytest.approx(middle)
    hundred = latency_histogram.counts_of([12.0] * 100)
    low, high = latency_histogram.quantile(hundred, 0.05), latency_histogram.quantile(hundred, 0.95)
    assert low is not None and high is not None
    assert edges[index - 1] < low < middle < high < edges[index]
    assert abs(high - 12.0) / 12.0 <= latency_histogram.RELATIVE_ERROR


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
