"""Gate figures a person can check (issue 13, item 5): the health gate's p95 is a quantile of all the
cohort's requests, merged from the devices' latency histograms, within the histogram's stated error of the
p95 computed from the raw latencies; samples without a histogram fall back to a labelled weighted mean."""

from __future__ import annotations

import datetime as dt
import math
import random

import numpy as np
import pytest
from django.utils import timezone

from agent.telemetry import TelemetryRecorder
from audit.actors import Actor
from deployments import gates
from deployments.cohorts import MERGED
from deployments.models import GateEvaluation, GateKind, Job, JobKind, Rollout, WaveStatus
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_start
from deployments.services.tick import rollout_advance
from protocol import latency_histogram
from protocol.messages import TelemetryMessage, utc_now
from telemetry.models import TelemetrySample
from telemetry.services import TelemetryEnvelope, telemetry_ingest_batch
from tests.deployments.rollout_helpers import finish
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("tests")
PROFILE = "aarch64|Cortex-A72 x4|none"


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def baking_rollout(version, devices: int) -> Rollout:
    site = SiteFactory()
    for _ in range(devices):
        DeviceFactory(site=site, tags=["quantiles"])
    rollout = rollout_create(actor=OPERATOR, version=version, plan={
        "target": {"filter": {"tag": "quantiles"}}, "waves": [{"percent": 100}], "rate_per_minute": 100_000,
        "health_gate": {"max_p95_ms": 10_000, "min_samples": 10, "bake_seconds": 60},
    })  # fmt: skip
    rollout_start(actor=OPERATOR, rollout=rollout)
    rollout_advance(rollout_id=rollout.pk)
    for job in Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL).select_related("device"):
        finish(job)
    rollout_advance(rollout_id=rollout.pk)
    assert rollout.waves.get().status == WaveStatus.BAKING
    return rollout


def send(rollout: Rollout, latencies: dict[str, np.ndarray], *, with_histogram: bool = True) -> None:
    """Each device's agent records its latencies and sends one telemetry message, ingested as the bridge does."""
    version = rollout.deployable
    envelopes = []
    for uid, values in latencies.items():
        recorder = TelemetryRecorder(rng=random.Random(1))
        recorder.record_latencies(rollout.deployable.family_name, version.number, values)
        samples = recorder.drain()
        if not with_histogram:  # an older agent: p50/p95/p99 only
            samples = [s.model_copy(update={"latency_ms": s.latency_ms.model_copy(update={"hist": None})})
                       for s in samples]  # fmt: skip
        message = TelemetryMessage(schema_version=1, ts=utc_now(), interval_s=10.0, samples=samples)
        envelopes.append(TelemetryEnvelope(uid=uid, message=message))
    telemetry_ingest_batch(envelopes)


def judged(rollout: Rollout) -> gates.Verdict:
    wave = rollout.waves.get()
    return gates.health_gate(rollout, wave, since=wave.bake_started_at, until=timezone.now() + dt.timedelta(seconds=5))


def test_the_gates_p95_is_the_cohorts_p95_within_the_histograms_error(published_version):
    rollout = baking_rollout(published_version, devices=4)
    rng = np.random.default_rng(13)
    uids = list(Rollout.objects.get(pk=rollout.pk).targets.values_list("device__uid", flat=True))
    # three fast devices with many requests, one slow device with a heavy tail and few requests
    latencies = {uid: rng.lognormal(math.log(8.0), 0.2, size=2000) for uid in uids[:3]}
    latencies[uids[3]] = rng.lognormal(math.log(60.0), 0.5, size=300)
    send(rollout, latencies)
    assert TelemetrySample.objects.filter(latency_hist__isnull=False).count() == 4
    every = [float(v) for values in latencies.values() for v in values]
    exact_p95, exact_p99 = nearest_rank(every, 0.95), nearest_rank(every, 0.99)

    figures = judged(rollout).figures
    candidate = figures["profiles"][PROFILE]["candidate"]
    assert candidate["p95_method"] == MERGED and candidate["requests"] == 6300
    # the stated bound is one bucket's width; on spread latencies the interpolated quantile is far closer
    for figure, exact in ((candidate["p95_ms"], exact_p95), (candidate["p99_ms"], exact_p99)):
        assert abs(figure - exact) / exact <= min(0.05, latency_histogram.RELATIVE_ERROR)
    assert figures["cohorts"]["canary"]["p95_ms"] == candidate["p95_ms"]  # what the page's chart plots
    # the figure it replaced, the request-weighted mean of the devices' p95s, is far off on this cohort
    weighted = sum(float(np.percentile(v, 95)) * len(v) for v in latencies.values()) / len(every)
    assert abs(weighted - exact_p95) / exact_p95 > 0.15


def test_samples_without_a_histogram_fall_back_to_a_labelled_weighted_mean(published_version):
    rollout = baking_rollout(published_version, devices=2)
    uids = list(Rollout.objects.get(pk=rollout.pk).targets.values_list("device__uid", flat=True))
    rng = np.random.default_rng(5)
    send(rollout, {uids[0]: rng.lognormal(math.log(10.0), 0.2, size=500)})
    send(rollout, {uids[1]: rng.lognormal(math.log(20.0), 0.2, size=500)}, with_histogram=False)
    candidate = judged(rollout).figures["profiles"][PROFILE]["candidate"]
    assert candidate["p95_method"].startswith("request-weighted mean") and "1 of 2 samples" in candidate["p95_method"]
    p95s = TelemetrySample.objects.values_list("p95_ms", flat=True)
    assert candidate["p95_ms"] == pytest.approx(sum(p95s) / 2, rel=1e-3)


def test_each_health_check_records_the_cohort_figures_the_chart_draws(published_version, client):
    rollout = baking_rollout(published_version, devices=2)
    uids = list(Rollout.objects.get(pk=rollout.pk).targets.values_list("device__uid", flat=True))
    send(rollout, {uid: np.full(100, 12.0) for uid in uids})
    rollout_advance(rollout_id=rollout.pk, now=timezone.now() + dt.timedelta(seconds=61))
    record = GateEvaluation.objects.filter(rollout=rollout, gate=GateKind.HEALTH).latest("at")
    canary = record.figures["cohorts"]["canary"]
    # 12 ms falls in the bucket [11.31, 13.45): the 190th of 200 equal requests reads near its top
    assert canary["requests"] == 200 and abs(canary["p95_ms"] - 12.0) / 12.0 <= latency_histogram.RELATIVE_ERROR
    from deployments.cohorts import gate_check_series

    series = gate_check_series(rollout)
    assert series["canary"][-1]["p95_ms"] == canary["p95_ms"] and series["canary"][-1]["ts"] == record.at.isoformat()
