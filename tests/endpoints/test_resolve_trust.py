"""Issue 14, finding 4: resolution trusts what Fogdeck installed, not what a device says it runs or where.

Before, `fleet/services.py` stored the reported `active` map and `inference_url` and the resolver
ranked on them: one compromised device could claim any model@alias with any URL and receive
applications' inference inputs.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from audit.actors import Actor
from endpoints.selectors import endpoints_resolve_cached
from fleet.models import Device
from fleet.services import UNTRUSTED_INFERENCE_URL, device_mark_seen, device_report_state
from models_registry.services import alias_set
from outbox.models import RejectedMessageCount
from tests.deployments.rollout_helpers import publish_next_version
from tests.endpoints.test_resolve import install
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")
URL = "/api/v1/endpoints/resolve/"


def report(device: Device, model: str, version: int, url: str) -> Device:
    """What the device says: `model` v`version` active, callers to `url` (nothing checks it is true)."""
    state = {
        "active": {model: {"version": version, "slot": "a"}},
        "slots": {"a": {"model": model, "version": version, "sha256": "0" * 64}, "b": None},
        "inference_url": url,
    }
    device_report_state(actor=Actor.device(device.uid), uid=device.uid, state=state, agent_version="test")
    return device_mark_seen(actor=Actor.device(device.uid), uid=device.uid, online=True)


def resolved(model: str) -> list[tuple[str, str]]:
    answer = endpoints_resolve_cached(model_name=model, alias="production", site="Lyon plant")
    return [(e["device"], e["inference_url"]) for e in answer["endpoints"]]


@pytest.fixture
def site_and_model(published_version: Any) -> dict[str, Any]:
    alias_set(actor=ACTOR, model=published_version.model, name="production", version=published_version)
    site = SiteFactory(name="Lyon plant", latitude=45.75, longitude=4.85)
    honest = DeviceFactory(uid="edge-honest", site=site, tier="edge")
    install(honest, published_version.model.name, published_version.number)
    report(honest, published_version.model.name, published_version.number, "http://edge-honest.test:8600/infer")
    return {"site": site, "model": published_version.model.name, "version": published_version, "honest": honest}


def test_a_device_claiming_a_model_fogdeck_never_installed_on_it_is_not_resolved(site_and_model):
    model, number = site_and_model["model"], site_and_model["version"].number
    liar = DeviceFactory(uid="edge-liar", site=site_and_model["site"], tier="edge")
    # its URL is even of a trusted form: what is missing is an installation
    report(liar, model, number, "http://edge-liar.test:8600/infer")

    assert resolved(model) == [("edge-honest", "http://edge-honest.test:8600/infer")]


def test_a_report_can_narrow_but_not_widen_what_a_device_is_resolved_for(site_and_model):
    model, first = site_and_model["model"], site_and_model["version"]
    newer = publish_next_version(first)
    device = site_and_model["honest"]
    # installed v1, but the device says it runs v2 (never installed there): not resolved for either
    report(device, model, newer.number, "http://edge-honest.test:8600/infer")
    assert resolved(model) == []
    alias_set(actor=ACTOR, model=newer.model, name="production", version=newer)
    assert resolved(model) == []


def test_a_url_naming_another_host_is_stored_not_served_and_counted(site_and_model, caplog):
    model, number = site_and_model["model"], site_and_model["version"].number
    attacker = DeviceFactory(uid="edge-attacker", site=site_and_model["site"], tier="edge")
    install(attacker, model, number)

    with caplog.at_level(logging.WARNING, logger="fleet.services"):
        report(attacker, model, number, "http://edge-honest.test:8600/infer")  # the honest device's host
        report(attacker, model, number, "http://collector.evil.example/infer")

    attacker.refresh_from_db()
    assert attacker.inference_url == "http://collector.evil.example/infer"  # stored as reported
    assert resolved(model) == [("edge-honest", "http://edge-honest.test:8600/infer")]  # never served
    counted = RejectedMessageCount.objects.get(reason=UNTRUSTED_INFERENCE_URL)
    assert counted.count == 2 and "collector.evil.example" in counted.last_detail
    assert "edge-attacker advertises an inference URL resolve will not serve" in caplog.text


def test_an_admin_set_inference_host_makes_the_url_served_and_invalidates_the_cache(
    site_and_model, admin_client, operator_client, assert_audited, django_capture_on_commit_callbacks, settings
):
    settings.ENDPOINTS_TRUSTED_INFERENCE_HOSTS = []  # only the device's own inference_host counts
    model, number = site_and_model["model"], site_and_model["version"].number
    device = DeviceFactory(uid="edge-lan", site=site_and_model["site"], tier="edge")
    install(device, model, number)
    report(device, model, number, "http://10.1.4.7:8600/infer")
    assert resolved(model) == []  # cached: the honest device's URL is untrusted now too, and this one

    path = f"/api/v1/devices/{device.pk}/"
    assert operator_client.patch(path, {"inference_host": "10.1.4.7"}, format="json").status_code == 403
    bad = admin_client.patch(path, {"inference_host": "http://10.1.4.7/"}, format="json")
    assert bad.status_code == 400 and "inference_host" in str(bad.json())
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.patch(path, {"inference_host": "10.1.4.7"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["inference_host"] == "10.1.4.7"
    assert response.json()["inference_url"] == "http://10.1.4.7:8600/infer"

    assert resolved(model) == [("edge-lan", "http://10.1.4.7:8600/infer")]
    entry = assert_audited("device", device.pk, "device.update")
    assert entry.changes["inference_host"] == {"before": "", "after": "10.1.4.7"}


def test_an_ended_installation_stops_resolution(site_and_model, django_capture_on_commit_callbacks):
    model, first = site_and_model["model"], site_and_model["version"]
    newer = publish_next_version(first)
    device = site_and_model["honest"]
    with django_capture_on_commit_callbacks(execute=True):
        install(device, model, newer.number)  # v1's installation ends; the device keeps claiming v1
    assert resolved(model) == []
