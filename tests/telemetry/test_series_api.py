"""`GET /api/v1/telemetry/series/`: buckets per version, site, device and rollout cohort, from real ingest."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from telemetry.services import telemetry_ingest_batch
from tests.factories import DeviceFactory, SiteFactory
from tests.telemetry.helpers import envelope

pytestmark = pytest.mark.django_db
URL = "/api/v1/telemetry/series/"
# a fixed hour in the past, aligned to an hour (buckets are aligned to the epoch)
T0 = (timezone.now() - dt.timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def window(**params: object) -> dict[str, object]:
    return {"start": T0.isoformat(), "end": at(60).isoformat(), **params}


@pytest.fixture
def fleet():
    """Two sites; v1 on a and b (every minute, 10 ms p95 and no errors), v2 on c (minutes 0-29, 30 ms p95,
    5 errors in 100 requests)."""
    north, south = SiteFactory(name="north"), SiteFactory(name="south")
    a, b, c = DeviceFactory(site=north), DeviceFactory(site=south), DeviceFactory(site=north)
    batch = []
    for minute in range(60):
        batch += [
            envelope(a.uid, ts=at(minute + 0.5), version=1, requests=100, p50=5, p95=10, p99=12, max_ms=15),
            envelope(b.uid, ts=at(minute + 0.5), version=1, requests=300, p50=5, p95=20, p99=22, max_ms=25),
        ]
        if minute < 30:
            batch.append(envelope(c.uid, ts=at(minute + 0.5), version=2, requests=100, errors=5, p95=30, p99=40))
    assert telemetry_ingest_batch(batch) == 150
    return {"north": north, "south": south, "a": a, "b": b, "c": c}


def rows(client, **params):
    response = client.get(URL, {"page_size": 1000, **params})
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def test_per_version_in_quarter_hour_buckets(viewer_client, fleet):
    got = rows(viewer_client, **window(model="demo-classifier", group_by="version", bucket="15m"))
    assert [(r["version"], r["start"][11:16]) for r in got] == [
        (1, at(0).strftime("%H:%M")), (1, at(15).strftime("%H:%M")), (1, at(30).strftime("%H:%M")),
        (1, at(45).strftime("%H:%M")), (2, at(0).strftime("%H:%M")), (2, at(15).strftime("%H:%M")),
    ]  # fmt: skip
    v1, v2 = got[0], got[4]
    assert v1["requests"] == 15 * 400 and v1["errors"] == 0 and v1["error_rate"] == 0.0 and v1["samples"] == 30
    assert v1["p95_ms"] == pytest.approx((100 * 10 + 300 * 20) / 400)  # request-weighted mean of device p95s
    assert v1["p95_max_ms"] == 20 and v1["p99_max_ms"] == 22 and v1["max_ms"] == 25
    assert v2["requests"] == 1500 and v2["errors"] == 75 and v2["error_rate"] == pytest.approx(0.05)
    assert v2["p95_ms"] == 30 and v2["site"] is None and v2["device"] is None
    assert dt.datetime.fromisoformat(v1["end"]) - dt.datetime.fromisoformat(v1["start"]) == dt.timedelta(minutes=15)


def test_per_site_and_version_filters(viewer_client, fleet):
    north, south = fleet["north"].pk, fleet["south"].pk
    got = rows(viewer_client, **window(group_by=["site", "version"], bucket="1h"))
    assert {(r["version"], r["site"]): r["requests"] for r in got} == {
        (1, north): 6000, (1, south): 18000, (2, north): 3000,
    }  # fmt: skip
    only = rows(viewer_client, **window(group_by="site", bucket="1h", version=1, site=[south]))
    assert [(r["site"], r["requests"], r["p95_ms"]) for r in only] == [(south, 18000, 20.0)]
    totals = rows(viewer_client, **window(bucket="1h"))
    assert [(r["model"], r["version"], r["requests"]) for r in totals] == [("demo-classifier", None, 27000)]


def test_per_device_reads_raw_samples(viewer_client, fleet):
    a, c = fleet["a"], fleet["c"]
    got = rows(viewer_client, **window(group_by="device", bucket="30m", device=[a.pk, c.pk]))
    assert [(r["device"], r["requests"], r["errors"]) for r in got] == [
        (a.pk, 3000, 0), (a.pk, 3000, 0), (c.pk, 3000, 150),
    ]  # fmt: skip
    assert got[2]["p99_ms"] == 40 and got[2]["error_rate"] == pytest.approx(0.05)


def test_rollout_cohorts(viewer_client, fleet, published_version):
    """The rollout's version is the canary; the model's other versions are the baseline."""
    from audit.actors import Actor
    from deployments.services.rollout_drafts import rollout_create

    plan = {"target": {"devices": [fleet["a"].pk]}, "waves": [{"percent": 100}], "seed": 1}
    rollout = rollout_create(actor=Actor.system("tests"), version=published_version, plan=plan)
    name, number = published_version.model.name, published_version.number
    devices = [fleet["a"], fleet["c"]]
    telemetry_ingest_batch(
        [
            envelope(devices[0].uid, ts=at(10.5), model=name, version=number, requests=50, errors=1, p95=40),
            envelope(devices[1].uid, ts=at(10.5), model=name, version=number + 7, requests=150, p95=20),
        ]
    )
    got = rows(viewer_client, **window(rollout=rollout.pk, group_by="cohort", bucket="1h"))
    assert {r["cohort"]: (r["model"], r["requests"], r["errors"], r["p95_ms"]) for r in got} == {
        "canary": (name, 50, 1, 40.0), "baseline": (name, 150, 0, 20.0),
    }  # fmt: skip


def test_pages(viewer_client, fleet):
    first = viewer_client.get(URL, {**window(group_by="version", bucket="1m"), "page_size": 50}).json()
    assert first["count"] == 90 and len(first["results"]) == 50 and first["next"]
    second = viewer_client.get(first["next"]).json()
    assert len(second["results"]) == 40 and second["results"][-1]["version"] == 2


def test_defaults_to_the_last_hour_in_five_minute_buckets(viewer_client):
    device = DeviceFactory()
    now = timezone.now()
    telemetry_ingest_batch([envelope(device.uid, ts=now - dt.timedelta(minutes=2))])
    telemetry_ingest_batch([envelope(device.uid, ts=now - dt.timedelta(hours=2))])
    got = rows(viewer_client)
    assert len(got) == 1 and got[0]["requests"] == 100
    assert dt.datetime.fromisoformat(got[0]["end"]) - dt.datetime.fromisoformat(got[0]["start"]) == dt.timedelta(
        minutes=5
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bucket": "90s"}, "bucket"), ({"bucket": "5x"}, "bucket"), ({"bucket": "0"}, "bucket"),
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
        ({"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z", "bucket": "1m"}, "bucket"),
        ({"group_by": "cohort"}, "group_by"), ({"group_by": "model"}, "group_by"),
        ({"rollout": 999999}, "rollout"), ({"site": "north"}, "site"), ({"version": 0}, "version"),
        ({"start": "yesterday"}, "start"), ({"device": list(range(1, 102))}, "device"),
    ],
)  # fmt: skip
def test_bad_queries_are_a_400_naming_the_field(viewer_client, params, field):
    response = viewer_client.get(URL, params)
    assert response.status_code == 400, response.json()
    assert field in {e["field"].split(".")[0] for e in response.json()["errors"]}, response.json()


@pytest.mark.parametrize(("role", "status"), [("viewer", 200), ("operator", 200), ("admin", 200), ("anon", 401)])
def test_every_role_reads_anonymous_is_refused(request, role, status):
    client = request.getfixturevalue(f"{role}_client")
    assert client.get(URL).status_code == status
    assert client.post(URL, {}).status_code == (401 if role == "anon" else 405 if role == "admin" else 403)
