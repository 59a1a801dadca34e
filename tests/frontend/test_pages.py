"""The operator UI through Django's test client: roles, filters in the URL, audited bulk actions, CSRF."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from django.test import Client

from audit.actors import Actor
from audit.models import AuditEntry
from fleet.models import Device, DeviceTag
from fleet.services import device_report_state, group_create
from models_registry.models import ModelVersion
from telemetry.services import telemetry_ingest_batch
from tests.factories import DeviceFactory, SiteFactory, make_user
from tests.telemetry.helpers import envelope

pytestmark = pytest.mark.django_db

PAGES = ["/", "/devices/", "/models/", "/audit/"]


def login(role: str | None, name: str | None = None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(make_user(name or f"user-{role}", role))
    return client


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_users_are_sent_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_a_user_without_a_role_is_refused():
    assert login(None).get("/devices/").status_code == 403


@pytest.mark.parametrize("path", PAGES)
def test_pages_render_empty_states_for_an_empty_install(path):
    response = login("viewer").get(path)
    assert response.status_code == 200
    if path.startswith("/audit/"):
        # signing in is audited: the only entry of an empty install is the viewer's own sign-in
        assert b"auth.login" in response.content and b"1 in all" in response.content
        return
    assert b'class="empty"' in response.content


def test_overview_counts_devices_and_maps_sites():
    site = SiteFactory(name="Lisbon", latitude=38.7, longitude=-9.1)
    DeviceFactory(site=site)
    online = DeviceFactory(site=site)
    Device.objects.filter(pk=online.pk).update(status="online", last_seen=dt.datetime.now(dt.UTC))
    response = login("viewer").get("/")
    assert response.context["total"] == 2 and response.context["online"] == 1
    assert response.context["site_map"] == [
        {"id": site.pk, "name": "Lisbon", "lat": 38.7, "lon": -9.1, "total": 2, "online": 1}
    ]
    assert b'id="site-map-data"' in response.content
    assert b"/vendor/plotly-" in response.content and b"cdn" not in response.content.lower()


def test_plotly_is_served_by_the_app():
    import plotly

    response = login("viewer").get(f"/vendor/plotly-{plotly.__version__}.min.js")
    assert response.status_code == 200
    assert b"plotly.js" in b"".join(response.streaming_content)[:200]


def test_device_list_applies_the_api_filters_from_the_url_and_keeps_them_when_paging():
    for i in range(55):
        DeviceFactory(uid=f"edge-{i:03d}", tier="edge")
    DeviceFactory(uid="fog-001", tier="fog")
    client = login("viewer")
    page1 = client.get("/devices/?tier=edge")
    assert page1.context["page"].paginator.count == 55
    assert "fog-001" not in page1.content.decode()
    assert 'href="?tier=edge&amp;page=2"' in page1.content.decode()
    page2 = client.get("/devices/?tier=edge&page=2")
    assert [d.uid for d in page2.context["page"].object_list] == [f"edge-{i:03d}" for i in range(50, 55)]
    blank_fields = client.get("/devices/?search=&status=&tier=fog&site=&arch=&accelerator=")  # a form with blanks
    assert blank_fields.context["page"].paginator.count == 1
    nothing = client.get("/devices/?search=no-such-device")
    assert b"No device matches these filters" in nothing.content


def test_csv_export_follows_the_filters():
    DeviceFactory(uid="a-1", tags=["pilot"])
    DeviceFactory(uid="b-2")
    response = login("viewer").get("/devices/export.csv?tag=pilot")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert response["Content-Type"].startswith("text/csv")
    assert lines[0].startswith("uid,name,site") and len(lines) == 2 and lines[1].startswith("a-1,")


def test_viewer_sees_no_action_controls_and_the_server_refuses_them_anyway():
    device = DeviceFactory()
    viewer = login("viewer")
    page = viewer.get("/devices/").content.decode()
    assert 'data-testid="bulk-actions"' not in page and 'name="devices"' not in page
    response = viewer.post("/devices/bulk/", {"action": "tag", "tag": "x", "devices": [device.pk]})
    assert response.status_code == 403
    assert not DeviceTag.objects.filter(tag="x").exists()


def test_admin_tags_devices_in_bulk_and_each_change_is_audited(assert_audited):
    a, b, untouched = DeviceFactory(tags=["pilot"]), DeviceFactory(), DeviceFactory()
    admin = login("admin")
    assert 'data-testid="bulk-actions"' in admin.get("/devices/").content.decode()
    response = admin.post(
        "/devices/bulk/", {"action": "tag", "tag": "pilot", "devices": [a.pk, b.pk], "next": "/devices/?tier=edge"}
    )
    assert response.status_code == 302 and response["Location"] == "/devices/?tier=edge"
    assert set(DeviceTag.objects.filter(tag="pilot").values_list("device__uid", flat=True)) == {a.uid, b.uid}
    entry = assert_audited("device", b.pk, "device.update", actor="user:user-admin")
    assert entry.changes["tags"] == {"before": [], "after": ["pilot"]}
    assert not AuditEntry.objects.for_object("device", a.pk).filter(action="device.update").exists()  # had it
    assert not DeviceTag.objects.filter(device=untouched).exists()


def test_admin_adds_devices_to_a_static_group(assert_audited):
    group = group_create(actor=Actor.system("tests"), name="pilots")
    devices = [DeviceFactory(), DeviceFactory()]
    login("admin").post("/devices/bulk/", {"action": "group", "group": group.pk, "devices": [d.pk for d in devices]})
    assert set(group.devices.values_list("pk", flat=True)) == {d.pk for d in devices}
    entry = assert_audited("group", group.pk, "group.add_members", actor="user:user-admin")
    assert entry.changes["added"] == sorted(d.uid for d in devices)


def test_bulk_action_without_a_tag_changes_nothing_and_says_why():
    device = DeviceFactory()
    response = login("admin").post("/devices/bulk/", {"action": "tag", "devices": [device.pk]}, follow=True)
    assert "Enter a tag" in response.content.decode()
    assert not AuditEntry.objects.filter(action="device.update").exists()


def test_posts_without_a_csrf_token_are_refused():
    device = DeviceFactory()
    response = login("admin", csrf=True).post("/devices/bulk/", {"action": "tag", "tag": "x", "devices": [device.pk]})
    assert response.status_code == 403
    assert not DeviceTag.objects.filter(tag="x").exists()


def test_device_page_shows_installed_versions_and_recent_telemetry_for_the_chart():
    device = DeviceFactory()
    state = {
        "hardware": {"arch": "aarch64", "cpu": "A72", "memory_mb": 2048, "accelerator": "none"},
        "runtimes": [{"name": "onnxruntime", "version": "1.18"}],
        "slots": {"a": {"model": "demo-classifier", "version": 3}, "b": None},
        "active": {"demo-classifier": {"version": 3, "slot": "a"}},
    }
    device_report_state(actor=Actor.device(device.uid), uid=device.uid, state=state, agent_version="1.0.0")
    telemetry_ingest_batch([envelope(device.uid, ts=dt.datetime.now(dt.UTC), version=3, p95=33.0)])
    response = login("viewer").get(f"/devices/{device.pk}/")
    assert response.context["installed"] == [{"model": "demo-classifier", "version": 3, "slot": "a"}]
    points = json.loads(
        response.content.decode().split('id="latency-points" type="application/json">')[1].split("<")[0]
    )
    assert [(p["version"], p["p95_ms"]) for p in points] == [(3, 33.0)]
    assert login("viewer", "v2").get("/devices/999999/").status_code == 404


def test_model_page_shows_versions_compatibility_history_and_rollup_chart(published_version):
    DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}])
    DeviceFactory(runtimes=[{"name": "tflite", "version": "2.14"}])
    device = DeviceFactory()
    telemetry_ingest_batch(
        [envelope(device.uid, ts=dt.datetime.now(dt.UTC), model="shape-classifier", version=1, p95=12.5)]
    )
    model = published_version.model
    response = login("viewer").get(f"/models/{model.pk}/")
    html = response.content.decode()
    assert response.context["selected"] == published_version
    assert response.context["compatibility"].compatible == 2 and response.context["compatibility"].total == 3
    assert [s["p95_mean"] for s in response.context["series"]] == [12.5]
    assert "model_version.publish" in html or "status.published" in html
    assert 'data-testid="upload-form"' not in html  # viewers cannot upload
    listing = login("viewer", "v2").get("/models/").content.decode()
    assert f'href="/models/{model.pk}/"' in listing


def test_admin_uploads_a_new_draft_version_and_it_is_audited(published_version, assert_audited):
    from models_registry.samples import sample_versions

    model = published_version.model
    admin = login("admin")
    assert 'data-testid="upload-form"' in admin.get(f"/models/{model.pk}/").content.decode()
    artifact = io.BytesIO(sample_versions()[1].onnx_bytes)
    artifact.name = "v2.onnx"
    response = admin.post(
        f"/models/{model.pk}/versions/",
        {
            "artifact": artifact,
            "format": "onnx",
            "framework": "other",
            "label": "2.0",
            "runtime": "onnxruntime",
            "min_runtime_version": "1.16",
            "min_memory_mb": "",
        },
    )
    version = ModelVersion.objects.get(model=model, number=2)
    assert response.status_code == 302 and response["Location"] == f"/models/{model.pk}/?version=2"
    assert version.status == "draft" and version.label == "2.0"
    assert_audited("model_version", version.pk, "model_version.create", actor="user:user-admin")
    assert login("viewer").post(f"/models/{model.pk}/versions/", {}).status_code == 403


def test_audit_page_filters_and_links_the_same_filters_as_csv():
    DeviceFactory(uid="audited-1")
    client = login("viewer")
    response = client.get("/audit/?action=device.&object_type=device")
    entries = list(response.context["page"].object_list)
    assert entries and all(e.action.startswith("device.") for e in entries)
    assert response.context["csv_url"] == "/api/v1/audit/?format=csv&action=device.&object_type=device"
    assert client.get("/audit/?action=nothing.like.this").context["page"].paginator.count == 0
