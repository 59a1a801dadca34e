"""The fixed latency buckets a device counts its requests in (docs/protocol.md, "Latency histogram").

Edge k is `0.1 ms * 2^(k/4)` for k = 0 … 79 (0.1 ms to about 88 s, four buckets per doubling). Bucket 0
holds latencies under the first edge, bucket i (1 … 79) those in `[edge[i-1], edge[i])`, bucket 80 those
at or above the last edge. Every device uses the same edges, so histograms merge by adding counts: a
cohort's p95 is a quantile of all its requests, not an average of per-device p95s.

`quantile` finds the bucket holding the nearest-rank quantile and interpolates inside it on the log scale
by the rank's place among the bucket's counts (as Prometheus' `histogram_quantile` does, linearly there):
a lone request in its bucket reads as the bucket's geometric middle, the 95th of 100 requests in one
bucket near its top. The answer stays in the bucket that holds the exact quantile, so for latencies
between the first and the last edge its relative error is below `RELATIVE_ERROR`, one bucket's width
(2^(1/4) - 1, about 18.9 %), reached only when a bucket's requests all sit at one end of it; with
requests spread over the buckets, as real latencies are, it is a few percent. What interpolation buys is
continuity: without it every quantile was a bucket's middle, so the ratio of two cohorts' p95s moved in
steps of 2^(1/4) (1.0, 1.19, 1.41) and a canary 15 % slower than its baseline could read as 41 % slower,
past a gate's 30 % limit (docs/protocol.md, "Latency histogram").
Below 0.1 ms it answers 0.1 ms; at or above the last edge, the last edge.
No Django here: the agent, the simulator and the control plane share it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

BUCKETS_PER_DOUBLING = 4
FIRST_EDGE_MS = 0.1
EDGE_COUNT = 80
EDGES_MS: tuple[float, ...] = tuple(FIRST_EDGE_MS * 2 ** (k / BUCKETS_PER_DOUBLING) for k in range(EDGE_COUNT))
BUCKETS = EDGE_COUNT + 1
RELATIVE_ERROR = 2 ** (1 / BUCKETS_PER_DOUBLING) - 1


def bucket_of(latency_ms: float) -> int:
    """The bucket a latency is counted in."""
    return bisect.bisect_right(EDGES_MS, latency_ms)


def counts_of(latencies_ms: Iterable[float]) -> list[int]:
    """A histogram of these latencies, trailing empty buckets left out (the wire form)."""
    counts = [0] * BUCKETS
    for value in latencies_ms:
        counts[bucket_of(value)] += 1
    return trimmed(counts)


def trimmed(counts: Sequence[int]) -> list[int]:
    """Without trailing zeros (a histogram may be shorter than BUCKETS: the missing buckets are empty)."""
    end = len(counts)
    while end > 1 and counts[end - 1] == 0:
        end -= 1
    return list(counts[:end])


def merge(histograms: Iterable[Sequence[int]]) -> list[int]:
    """The sum of histograms (each possibly trimmed), as a full BUCKETS-long list."""
    total = [0] * BUCKETS
    for counts in histograms:
        for index, count in enumerate(counts[:BUCKETS]):
            total[index] += count
    return total


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The nearest-rank q-quantile (0 < q ≤ 1) of the counted latencies, None when nothing was counted."""
    n = sum(counts)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for index, count in enumerate(counts):
        if seen + count >= rank:
            if index == 0:
                return EDGES_MS[0]
            if index >= EDGE_COUNT:
                return EDGES_MS[-1]
            # the rank's middle among the bucket's requests, spread evenly on the log scale
            place = (rank - seen - 0.5) / count
            return float(EDGES_MS[index - 1] * (EDGES_MS[index] / EDGES_MS[index - 1]) ** place)
        seen += count
    return EDGES_MS[-1]  # unreachable: seen reaches n
