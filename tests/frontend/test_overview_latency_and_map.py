"""The overview's latency card (live from the minute rollups) and its offline world map."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client
from django.utils import timezone

from telemetry.selectors import fleet_latency
from telemetry.services import telemetry_ingest_batch
from tests.factories import DeviceFactory, make_user
from tests.telemetry.helpers import envelope

pytestmark = pytest.mark.django_db


def login(role: str | None) -> Client:
    client = Client()
    client.force_login(make_user(f"user-{role}", role))
    return client


def _report(now: dt.datetime) -> None:
    a, b, c = DeviceFactory(uid="lat-a"), DeviceFactory(uid="lat-b"), DeviceFactory(uid="lat-c")
    telemetry_ingest_batch(
        [
            envelope(a.uid, ts=now, version=1, requests=100, p50=2.0, p95=4.0),
            envelope(b.uid, ts=now, version=1, requests=300, p50=4.0, p95=8.0, errors=3),
            envelope(c.uid, ts=now, version=2, requests=50, p50=20.0, p95=40.0),
            # older than the card's 5 minutes: in the chart, not in the table
            envelope(a.uid, ts=now - dt.timedelta(minutes=20), version=1, requests=100, p95=100.0),
        ]
    )


def test_the_latency_card_sums_each_version_over_the_last_minutes():
    now = timezone.now()
    _report(now)

    card = fleet_latency()

    by_version = {(v["model"], v["version"]): v for v in card["versions"]}
    v1 = by_version[("demo-classifier", 1)]
    # request-weighted means: p95 (100·4 + 300·8) / 400 = 7, p50 (100·2 + 300·4) / 400 = 3.5
    assert (v1["devices"], v1["p95_ms"], v1["p50_ms"], v1["p95_max_ms"]) == (2, 7.0, 3.5, 8.0)
    assert v1["error_rate"] == pytest.approx(3 / 400)
    assert v1["requests_per_min"] == 400  # all in one minute
    assert by_version[("demo-classifier", 2)]["devices"] == 1
    assert card["series"]["demo-classifier v1"]["p95_ms"][0] == 100.0  # 20 minutes ago, oldest first
    assert len(card["series"]["demo-classifier v1"]["x"]) == 2


def test_the_overview_renders_the_card_and_its_json_is_refreshable_by_viewers_only():
    _report(timezone.now())

    viewer = login("viewer")
    page = viewer.get("/")
    data = viewer.get("/overview/latency/")

    assert page.status_code == 200
    assert b'data-testid="fleet-latency"' in page.content
    assert b"demo-classifier v1" in page.content
    assert json.loads(data.content)["versions"] == page.context["latency"]["versions"]
    assert data["Cache-Control"] == "no-store"
    assert login(None).get("/overview/latency/").status_code == 403
    assert Client().get("/overview/latency/").status_code == 302


def test_the_latency_card_says_so_when_nothing_reported():
    page = login("viewer").get("/")

    assert b"No device has reported inference telemetry in the last 5 minutes." in page.content


def test_the_site_map_reads_its_world_topojson_from_our_static_files():
    DeviceFactory()  # a device at a site: the overview draws the map
    page = login("viewer").get("/")
    found = finders.find("frontend/topojson/world_110m.json")

    # plotly's geo fetches <topojsonURL>world_110m.json for scope "world" at resolution 110
    assert f'data-topojson-url="{settings.STATIC_URL}frontend/topojson/"'.encode() in page.content
    assert found is not None
    with open(found, encoding="utf-8") as handle:
        topology = json.load(handle)
    assert topology["type"] == "Topology"
    assert {"land", "coastlines", "countries", "ocean"} <= set(topology["objects"])
    script = finders.find("frontend/fogdeck.js")
    with open(script, encoding="utf-8") as handle:
        source = handle.read()
    assert "topojsonURL: mapDiv.dataset.topojsonUrl" in source and "showland: true" in source
