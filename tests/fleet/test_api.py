from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.models import Device
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db

DEVICES = "/api/v1/devices/"


def device_payload(site_id: int, **overrides: object) -> dict[str, object]:
    return {
        "uid": "lyon-rpi4-0001",
        "name": "rpi 1",
        "site": site_id,
        "tier": "edge",
        "arch": "aarch64",
        "cpu": "Cortex-A72 x4",
        "memory_mb": 2048,
        "accelerator": "none",
        "runtimes": [{"name": "onnxruntime", "version": "1.18"}],
        "tags": ["camera"],
        **overrides,
    }


def test_unauthenticated_request_gets_401(anon_client):
    response = anon_client.get(DEVICES)
    assert response.status_code == 401
    assert response.json()["status"] == 401


def test_viewer_reads_but_cannot_write(viewer_client):
    site = SiteFactory()
    assert viewer_client.get(DEVICES).status_code == 200
    response = viewer_client.post(DEVICES, device_payload(site.pk), format="json")
    assert response.status_code == 403
    assert not Device.objects.exists()


def test_operator_cannot_manage_inventory(operator_client):
    site = SiteFactory()
    assert operator_client.post(DEVICES, device_payload(site.pk), format="json").status_code == 403


def test_user_without_role_is_refused(db):
    from rest_framework.test import APIClient

    from tests.factories import make_token, make_user

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(make_user('nobody', None))}")
    assert client.get(DEVICES).status_code == 403


def test_admin_creates_device_and_it_is_audited(admin_client, assert_audited):
    site = SiteFactory()
    response = admin_client.post(DEVICES, device_payload(site.pk), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "offline" and body["last_seen"] is None
    assert body["runtimes"] == [{"name": "onnxruntime", "version": "1.18"}]
    entry = assert_audited("device", body["id"], "device.create", actor="user:alice-admin")
    assert entry.changes["uid"] == {"before": None, "after": "lyon-rpi4-0001"}
    assert entry.request_id == response["X-Request-ID"]


def test_update_records_before_and_after(admin_client, assert_audited):
    device = DeviceFactory(memory_mb=1024, tags=["a"])
    response = admin_client.patch(f"{DEVICES}{device.pk}/", {"memory_mb": 4096, "tags": ["a", "b"]}, format="json")
    assert response.status_code == 200, response.json()
    entry = assert_audited("device", device.pk, "device.update")
    assert entry.changes["memory_mb"] == {"before": 1024, "after": 4096}
    assert entry.changes["tags"] == {"before": ["a"], "after": ["a", "b"]}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"tier": "satellite"}, "tier"),
        ({"memory_mb": -5}, "memory_mb"),
        ({"uid": "bad/uid#"}, "uid"),
        ({"uid": "fogdeck-bridge-1"}, "uid"),  # the control plane's MQTT client ids (issue 14, finding 3)
        ({"runtimes": [{"name": "onnxruntime"}]}, "runtimes.0.version"),
        (
            {"runtimes": [{"name": "onnxruntime", "version": "1"}, {"name": "onnxruntime", "version": "2"}]},
            "runtimes",
        ),
        ({"accelerator": "fpga"}, "accelerator"),
        ({"site": 99999}, "site"),
    ],
)
def test_bad_device_input_is_400_with_field_and_reason(admin_client, override, field):
    site = SiteFactory()
    response = admin_client.post(DEVICES, device_payload(site.pk, **override), format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_error"
    assert field in [e["field"] for e in body["errors"]], body
    assert all(e["reason"] for e in body["errors"])
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    ("runtimes", "field"),
    [
        ([{"version": "0"}], "runtimes.0.name"),
        ([{"name": "onnxruntime"}], "runtimes.0.version"),
        ([{}], "runtimes.0.name"),
    ],
)
def test_a_patch_with_an_incomplete_runtime_is_400_not_500(admin_client, runtimes, field):
    """Issue 14 #13: a PATCH let DRF skip the nested runtime's missing name, and the duplicate check hit a KeyError."""
    device = DeviceFactory()
    response = admin_client.patch(f"{DEVICES}{device.pk}/", {"runtimes": runtimes}, format="json")
    assert response.status_code == 400, response.content
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert Device.objects.get(pk=device.pk).runtime_list == device.runtime_list


def test_parent_must_be_gateway_and_not_a_cycle(admin_client):
    edge = DeviceFactory(tier="edge")
    response = admin_client.post(DEVICES, device_payload(edge.site_id, parent=edge.pk), format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "parent"
    gateway = DeviceFactory(tier="fog")
    child = DeviceFactory(tier="fog", parent=gateway)
    response = admin_client.patch(f"{DEVICES}{gateway.pk}/", {"parent": child.pk}, format="json")
    assert response.status_code == 400
    assert "cycle" in response.json()["errors"][0]["reason"]


def test_device_filters(viewer_client):
    site_a, site_b = SiteFactory(), SiteFactory()
    DeviceFactory(uid="edge-onnx", site=site_a, tier="edge", tags=["camera"])
    DeviceFactory(
        uid="edge-tfl",
        site=site_b,
        tier="edge",
        runtimes=[{"name": "tflite", "version": "2.14"}],
        accelerator="tpu",
    )
    fog = DeviceFactory(
        uid="fog-gw",
        site=site_a,
        tier="fog",
        accelerator="gpu",
        runtimes=[{"name": "tensorrt", "version": "8.6"}, {"name": "onnxruntime", "version": "1.18"}],
    )
    Device.objects.filter(pk=fog.pk).update(status="online")

    def uids(query: str) -> list[str]:
        response = viewer_client.get(f"{DEVICES}?{query}")
        assert response.status_code == 200, response.json()
        return sorted(d["uid"] for d in response.json()["results"])

    assert uids("tier=edge") == ["edge-onnx", "edge-tfl"]
    assert uids("runtime=onnxruntime") == ["edge-onnx", "fog-gw"]
    assert uids("tier=edge&runtime=onnxruntime") == ["edge-onnx"]
    assert uids(f"site={site_b.pk}") == ["edge-tfl"]
    assert uids("status=online") == ["fog-gw"]
    assert uids("tag=camera") == ["edge-onnx"]
    assert uids("accelerator=tpu") == ["edge-tfl"]
    assert uids("search=TFL") == ["edge-tfl"]
    bad = viewer_client.get(f"{DEVICES}?tier=orbit")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "tier"


def test_pagination(viewer_client):
    site = SiteFactory()
    for i in range(7):
        DeviceFactory(uid=f"p-{i}", site=site)
    first = viewer_client.get(f"{DEVICES}?page_size=3").json()
    assert first["count"] == 7 and len(first["results"]) == 3 and first["next"]
    last = viewer_client.get(f"{DEVICES}?page_size=3&page=3").json()
    assert [d["uid"] for d in last["results"]] == ["p-6"] and last["next"] is None
    assert viewer_client.get(f"{DEVICES}?page_size=3&page=9").status_code == 404


def test_device_list_has_bounded_queries(viewer_client):
    """Filtering by tier and runtime costs the same queries for 5 devices as for 40: no N+1."""
    site = SiteFactory()
    gateway = DeviceFactory(tier="fog", site=site)

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            response = viewer_client.get(f"{DEVICES}?tier=edge&runtime=onnxruntime&page_size=100")
            assert response.status_code == 200
        return len(ctx.captured_queries), len(response.json()["results"])

    for i in range(5):
        DeviceFactory(site=site, parent=gateway, tags=[f"t{i}", "x"])
    viewer_client.get(DEVICES)  # a token's first use in a minute also records last_used_at (one UPDATE)
    small, n_small = count_queries()
    for i in range(35):
        DeviceFactory(site=site, parent=gateway, tags=[f"u{i}"])
    large, n_large = count_queries()
    assert (n_small, n_large) == (5, 40)
    assert large == small
    assert large <= 8  # auth token + role + count + page + runtimes + tags


def test_sites_crud_and_delete_with_devices_is_409(admin_client, assert_audited):
    response = admin_client.post(
        "/api/v1/sites/", {"name": "Lyon", "region": "eu", "latitude": 45.7, "longitude": 4.8}, format="json"
    )
    assert response.status_code == 201
    site_id = response.json()["id"]
    assert_audited("site", site_id, "site.create")
    bad = admin_client.post("/api/v1/sites/", {"name": "X", "latitude": 95, "longitude": 0}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "latitude"
    from fleet.models import Site

    DeviceFactory(site=Site.objects.get(pk=site_id))
    response = admin_client.delete(f"/api/v1/sites/{site_id}/")
    assert response.status_code == 409
    assert "still has devices" in response.json()["detail"]
