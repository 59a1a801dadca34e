"""`/ws/rollouts/{id}/` through the real ASGI application and channel layer: session auth, telemetry of the
rollout's devices folded into canary and baseline figures, job-state changes as fresh per-wave counts."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from asgiref.sync import sync_to_async

from audit.actors import Actor
from deployments.models import Job
from deployments.rollout_streams import rollout_cohort_items
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_start
from deployments.services.tick import rollout_advance
from protocol import latency_histogram
from telemetry.streaming import Coalescer, Deferred
from tests.deployments.rollout_helpers import finish
from tests.factories import DeviceFactory, SiteFactory, make_user
from tests.telemetry.helpers import envelope
from tests.telemetry.test_consumers import _close_db, _session_cookie, _socket, private_channel_layer  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("tests")


def _running_rollout(version, count: int = 4):
    site = SiteFactory()
    # connected: a wave defers (or replaces) devices that are offline when it starts
    devices = [DeviceFactory(site=site, tags=["live"], connected=True) for _ in range(count)]
    plan = {
        "target": {"filter": {"tag": "live"}},
        "waves": [{"count": 2}, {"percent": 100}],
        "install_gate": {"min_success_pct": 95, "max_failure_pct": 10, "min_finished": 1},
        "rate_per_minute": 6000,
        "seed": 3,
    }
    rollout = rollout_create(actor=ACTOR, version=version, plan=plan)
    rollout_start(actor=ACTOR, rollout=rollout)
    return rollout, devices


async def _receive_until(socket, predicate, timeout: float = 5.0) -> dict:
    """Coalesced messages until one carries an item matching `predicate` (earlier flushes may precede it);
    returns that item, with the message's other items under "_siblings"."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no matching stream item arrived"
        message = await socket.receive_json_from(timeout=remaining)
        assert message["type"] == "telemetry"
        for item in message["items"]:
            if predicate(item):
                return {**item, "_siblings": message["items"]}


@pytest.mark.asyncio
async def test_anonymous_and_unknown_rollout_sockets_are_closed(published_version):
    rollout, _ = await sync_to_async(_running_rollout)(published_version)
    anonymous = _socket(f"/ws/rollouts/{rollout.pk}/")
    connected, code = await anonymous.connect()
    assert not connected and code == 4401
    await anonymous.disconnect()
    cookie = await sync_to_async(lambda: _session_cookie(make_user("vic", "viewer")))()
    unknown = _socket("/ws/rollouts/999999/", cookie)
    connected, code = await unknown.connect()
    assert not connected and code == 4404
    await unknown.disconnect()
    await _close_db()


@pytest.mark.asyncio
async def test_rollout_devices_telemetry_reaches_the_group_as_canary_and_baseline(published_version, web_server_layer):
    from telemetry.services import telemetry_ingest_batch

    rollout, devices = await sync_to_async(_running_rollout)(published_version)
    outsider = await sync_to_async(DeviceFactory)()
    cookie = await sync_to_async(lambda: _session_cookie(make_user("vic", "viewer")))()
    socket = _socket(f"/ws/rollouts/{rollout.pk}/", cookie)
    connected, _ = await socket.connect()
    assert connected
    now = dt.datetime.now(dt.UTC)
    model = published_version.model.name
    batch = [
        envelope(devices[0].uid, ts=now, model=model, version=1, p95=30.0, requests=100, errors=2),
        envelope(devices[1].uid, ts=now, model=model, version=1, p95=60.0, requests=300, errors=0),
        envelope(devices[2].uid, ts=now, model=model, version=7, p95=20.0, requests=100),
        envelope(devices[3].uid, ts=now, model="other-model", version=1, p95=999.0),
        envelope(outsider.uid, ts=now, model=model, version=1, p95=500.0),
    ]
    await sync_to_async(telemetry_ingest_batch)(batch)

    canary = await _receive_until(socket, lambda i: i.get("cohort") == "canary")
    assert canary["devices"] == 2 and canary["requests"] == 400 and canary["errors"] == 2
    assert canary["p95_ms"] == pytest.approx((30 * 100 + 60 * 300) / 400)  # request-weighted; outsider left out
    assert canary["error_rate"] == pytest.approx(2 / 400)
    # offered together, so flushed together
    [baseline] = [i for i in canary["_siblings"] if i.get("cohort") == "baseline"]
    assert baseline["devices"] == 1 and baseline["p95_ms"] == 20.0
    await socket.disconnect()
    await _close_db()


@pytest.mark.asyncio
async def test_job_state_changes_reach_the_group_as_per_wave_counts(published_version, web_server_layer):
    rollout, _ = await sync_to_async(_running_rollout)(published_version)
    cookie = await sync_to_async(lambda: _session_cookie(make_user("vic", "viewer")))()
    socket = _socket(f"/ws/rollouts/{rollout.pk}/", cookie)
    connected, _ = await socket.connect()
    assert connected

    await sync_to_async(rollout_advance)(rollout_id=rollout.pk)  # the first wave's two jobs are created
    queued = await _receive_until(socket, lambda i: i.get("kind") == "progress" and i["waves"][0]["jobs"].get("QUEUED"))
    assert queued["status"] == "running" and queued["waves"][0]["jobs"] == {"QUEUED": 2}, queued
    assert queued["waves"][1]["jobs"] == {"NOT_SENT": 2}

    job = await sync_to_async(lambda: Job.objects.select_related("device").filter(rollout=rollout).first())()
    await sync_to_async(finish)(job)  # the device reports it: IN_PROGRESS, then SUCCEEDED
    done = await _receive_until(socket, lambda i: i.get("kind") == "progress" and "SUCCEEDED" in i["waves"][0]["jobs"])
    assert done["waves"][0]["jobs"] == {"SUCCEEDED": 1, "QUEUED": 1}
    await socket.disconnect()
    await _close_db()


def test_many_touches_in_one_flush_read_the_progress_once():
    reads = []
    coalescer = Coalescer(interval_s=0.2, send=None)
    for n in range(50):
        coalescer._pending.setdefault("rollout.1", {})["progress"] = Deferred(lambda n=n: reads.append(n) or {"n": n})
    [(group, message)] = coalescer.take()
    assert group == "rollout.1" and message["items"] == [{"n": 49}] and reads == [49]
    assert coalescer.take() == []


def test_cohort_items_fold_only_the_rollouts_model_and_members():
    ts = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    samples = [
        (1, "m", 2, ts, 10, 1, 50.0, None),
        (1, "other", 2, ts, 10, 0, 500.0, None),
        (2, "m", 1, ts + dt.timedelta(seconds=1), 30, 0, 10.0, None),
        (3, "m", 2, ts, 10, 0, 70.0, None),  # not a member
    ]
    items = rollout_cohort_items(samples, {1: [(9, "m", 2)], 2: [(9, "m", 2)]})
    assert set(items) == {"rollout.9"}
    canary, baseline = items["rollout.9"]["cohort:canary"], items["rollout.9"]["cohort:baseline"]
    assert (canary["requests"], canary["errors"], canary["p95_ms"], canary["devices"]) == (10, 1, 50.0, 1)
    assert canary["p95_method"] == "request-weighted mean of device p95s"
    assert (baseline["requests"], baseline["p95_ms"], baseline["ts"]) == (
        30,
        10.0,
        (ts + dt.timedelta(seconds=1)).isoformat(),
    )


def test_cohort_p95_is_the_quantile_of_the_merged_histograms_as_the_gate_computes_it():
    """Two devices: 95 fast requests on one, 5 slow on the other. A mean of their p95s (weighted by
    requests) says 14.5 ms; the cohort's real p95 is a fast request."""
    ts = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    fast, slow = [2.0] * 95, [250.0] * 5
    samples = [
        (1, "m", 2, ts, 95, 0, 2.0, latency_histogram.counts_of(fast)),
        (2, "m", 2, ts, 5, 0, 250.0, latency_histogram.counts_of(slow)),
    ]
    canary = rollout_cohort_items(samples, {1: [(9, "m", 2)], 2: [(9, "m", 2)]})["rollout.9"]["cohort:canary"]
    assert canary["p95_method"] == "merged histogram"
    exact = sorted(fast + slow)[94]  # nearest rank
    assert canary["p95_ms"] == pytest.approx(exact, rel=latency_histogram.RELATIVE_ERROR)
    weighted_mean = (95 * 2.0 + 5 * 250.0) / 100
    assert abs(canary["p95_ms"] - weighted_mean) > 10
