from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from audit.actors import Actor
from deployments.services.jobs import deployment_create
from endpoints.selectors import endpoints_resolve_cached
from fleet.models import Device
from fleet.services import device_mark_seen, device_report_state, device_update
from models_registry.models import ModelVersion
from models_registry.services import alias_set
from tests.deployments.rollout_helpers import finish, publish_next_version, telemetry
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")
URL = "/api/v1/endpoints/resolve/"


def install(device: Device, model: str, version: int) -> None:
    """Fogdeck installs `model` v`version` on the device: a job it reports SUCCEEDED (an Installation)."""
    target = ModelVersion.objects.get(model__name=model, number=version)
    finish(deployment_create(actor=ACTOR, device=device, version=target))


def serve(device: Device, model: str, version: int, *, online: bool = True) -> Device:
    """Fogdeck installs `model` v`version` on the device, which then reports it active, with its inference
    URL (a host ENDPOINTS_TRUSTED_INFERENCE_HOSTS trusts, see conftest.py), and its online state."""
    install(device, model, version)
    state = {
        "active": {model: {"version": version, "slot": "a"}},
        "slots": {"a": {"model": model, "version": version, "sha256": "0" * 64}, "b": None},
        "inference_url": f"http://{device.uid}.test:8600/infer",
    }
    device_report_state(actor=ACTOR, uid=device.uid, state=state, agent_version="test")
    return device_mark_seen(actor=ACTOR, uid=device.uid, online=online)


@pytest.fixture
def fleet(published_version: Any) -> dict[str, Any]:
    """A caller's site with two edge devices behind a fog gateway 30 km away, a cloud node far off, noise."""
    model = published_version.model.name
    alias_set(actor=ACTOR, model=published_version.model, name="production", version=published_version)
    home = SiteFactory(name="Lyon plant", latitude=45.75, longitude=4.85)
    nearby = SiteFactory(name="Lyon hub", latitude=45.9, longitude=5.2)  # ~31 km
    far = SiteFactory(name="Frankfurt DC", latitude=50.11, longitude=8.68)
    gateway = DeviceFactory(uid="fog-hub", site=nearby, tier="fog")
    devices = {
        "gateway": gateway,
        "edge": DeviceFactory(uid="edge-ok", site=home, tier="edge", parent=gateway),
        "offline": DeviceFactory(uid="edge-offline", site=home, tier="edge", parent=gateway),
        "stale": DeviceFactory(uid="edge-stale", site=home, tier="edge"),
        "other_site_edge": DeviceFactory(uid="edge-elsewhere", site=nearby, tier="edge"),
        "cloud": DeviceFactory(uid="cloud-fra", site=far, tier="cloud"),
    }
    for key, device in devices.items():
        serve(device, model, published_version.number, online=key != "offline")
    Device.objects.filter(uid="edge-stale").update(last_seen=timezone.now() - dt.timedelta(hours=1))
    return {"model": model, "version": published_version, "home": home, **devices}


def uids(answer: dict[str, Any]) -> list[str]:
    return [e["device"] for e in answer["endpoints"]]


def test_same_site_device_first_then_gateway_then_cloud_and_offline_skipped(viewer_client, fleet):
    response = viewer_client.get(URL, {"model": fleet["model"], "alias": "production", "site": "Lyon plant"})
    assert response.status_code == 200, response.json()
    body = response.json()
    # offline and stale devices are left out, and so is an edge device at another site
    assert uids(body) == ["edge-ok", "fog-hub", "cloud-fra"]
    assert [e["rank"] for e in body["endpoints"]] == ["same_site", "fog", "cloud"]
    first = body["endpoints"][0]
    assert first["inference_url"] == "http://edge-ok.test:8600/infer"
    assert first["distance_km"] == 0
    assert first["version"] == fleet["version"].number
    assert 25 < body["endpoints"][1]["distance_km"] < 40
    assert 400 < body["endpoints"][2]["distance_km"] < 600
    assert body["site"] == "Lyon plant" and body["version"] == fleet["version"].number


def test_lat_lon_near_the_site_counts_as_the_site_and_far_away_gets_cloud_only(viewer_client, fleet):
    near = viewer_client.get(URL, {"model": fleet["model"], "lat": 45.751, "lon": 4.851}).json()
    assert uids(near) == ["edge-ok", "fog-hub", "cloud-fra"]
    lisbon = viewer_client.get(URL, {"model": fleet["model"], "lat": 38.72, "lon": -9.14}).json()
    assert uids(lisbon) == ["cloud-fra"]
    assert lisbon["site"] is None


def test_unhealthy_device_is_left_out_and_p95_is_reported(viewer_client, fleet, settings):
    settings.ENDPOINTS_MAX_ERROR_RATE_PERMILLE = 50
    now = timezone.now()
    number = fleet["version"].number
    telemetry([fleet["edge"].pk], fleet["model"], number, now, p95=12.0, requests=100, errors=20)
    telemetry([fleet["gateway"].pk], fleet["model"], number, now, p95=30.0, requests=100, errors=1)
    body = viewer_client.get(URL, {"model": fleet["model"], "site": "Lyon plant"}).json()
    assert uids(body) == ["fog-hub", "cloud-fra"]
    assert body["endpoints"][0]["p95_ms"] == 30.0
    assert body["endpoints"][1]["p95_ms"] is None  # no telemetry yet


def test_same_site_devices_are_ordered_by_recent_p95(viewer_client, fleet):
    fast = DeviceFactory(uid="edge-fast", site=fleet["home"], tier="edge")
    serve(fast, fleet["model"], fleet["version"].number)
    number = fleet["version"].number
    telemetry([fleet["edge"].pk], fleet["model"], number, timezone.now(), p95=40.0)
    telemetry([fast.pk], fleet["model"], number, timezone.now(), p95=8.0)
    assert uids(viewer_client.get(URL, {"model": fleet["model"], "site": "Lyon plant"}).json())[:2] == [
        "edge-fast",
        "edge-ok",
    ]


def test_a_cached_answer_costs_no_query(fleet, django_assert_num_queries):
    first = endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")
    with django_assert_num_queries(0):
        again = endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")
    assert again == first


def test_cache_invalidates_on_alias_move(fleet, django_capture_on_commit_callbacks):
    before = endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")
    assert before["version"] == fleet["version"].number
    newer = publish_next_version(fleet["version"])
    serve(fleet["cloud"], fleet["model"], newer.number)
    with django_capture_on_commit_callbacks(execute=True):
        alias_set(actor=ACTOR, model=newer.model, name="production", version=newer)
    after = endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")
    assert after["version"] == newer.number
    assert uids(after) == ["cloud-fra"]


def test_cache_invalidates_when_a_device_goes_offline(fleet, django_capture_on_commit_callbacks):
    assert "edge-ok" in uids(endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant"))
    with django_capture_on_commit_callbacks(execute=True):
        device_mark_seen(actor=ACTOR, uid="edge-ok", online=False)
    after = endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")
    assert uids(after) == ["fog-hub", "cloud-fra"]


def test_without_invalidation_the_cached_answer_stays(fleet):
    """The counter is what invalidates: a change that skips it is only seen after the TTL."""
    endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")
    Device.objects.filter(uid="edge-ok").update(status="offline")
    cached = endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")
    assert "edge-ok" in uids(cached)


def test_moving_a_device_to_another_site_invalidates(fleet, django_capture_on_commit_callbacks):
    endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")
    with django_capture_on_commit_callbacks(execute=True):
        device_update(actor=ACTOR, device=fleet["cloud"], tier="edge")
    assert uids(endpoints_resolve_cached(model_name=fleet["model"], alias="production", site="Lyon plant")) == [
        "edge-ok",
        "fog-hub",
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"site": "Lyon plant"}, "model"),
        ({"model": "shape-classifier", "alias": "nightly", "site": "Lyon plant"}, "alias"),
        ({"model": "no-such-model", "site": "Lyon plant"}, "model"),
        ({"model": "shape-classifier", "site": "Atlantis"}, "site"),
        ({"model": "shape-classifier", "lat": 95, "lon": 4}, "lat"),
        ({"model": "shape-classifier", "lat": "north", "lon": 4}, "lat"),
        ({"model": "shape-classifier", "lat": 45}, "lon"),
        ({"model": "shape-classifier"}, "site"),
        ({"model": "shape-classifier", "site": "Lyon plant", "lat": 45, "lon": 4}, "site"),
    ],
)
def test_bad_requests_name_the_field(viewer_client, fleet, params, field):
    response = viewer_client.get(URL, params)
    assert response.status_code == 400
    body = response.json()
    assert [e["field"] for e in body["errors"]] == [field], body
    assert body["errors"][0]["reason"]


def test_anonymous_is_refused(anon_client, fleet):
    assert anon_client.get(URL, {"model": fleet["model"], "site": "Lyon plant"}).status_code == 401
