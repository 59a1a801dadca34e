from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from fleet.models import Device
from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db
IMPORT = "/api/v1/devices/import/"

CSV = """uid,name,site,tier,parent,arch,cpu,memory_mb,accelerator,runtimes,tags
lyon-gw-01,Gateway 1,Lyon,fog,,x86_64,Atom x4,8192,none,onnxruntime 1.17;openvino 2024.1,gateway
lyon-pi-01,Pi 1,Lyon,edge,lyon-gw-01,aarch64,A72,2048,none,onnxruntime 1.18;tflite 2.14,camera;line-1
lyon-pi-02,Pi 2,Lyon,edge,lyon-gw-01,aarch64,A72,lots,none,onnxruntime 1.18,camera
lyon-pi-03,Pi 3,Nowhere,edge,,aarch64,A72,2048,none,onnxruntime 1.18,
lyon-pi-04,Pi 4,Lyon,edge,lyon-gw-09,aarch64,A72,2048,none,onnxruntime 1.18,
lyon-pi-05,Pi 5,Lyon,edge,lyon-gw-01,aarch64,A72,1024,quantum,,
"""


def upload(client, name: str, content: str):
    return client.post(IMPORT, {"file": SimpleUploadedFile(name, content.encode())}, format="multipart")


def test_csv_import_keeps_good_rows_and_reports_bad_ones_by_line(admin_client, assert_audited):
    SiteFactory(name="Lyon")
    response = upload(admin_client, "fleet.csv", CSV)
    assert response.status_code == 200, response.json()
    report = response.json()
    assert (report["total"], report["created"], report["failed"]) == (6, 2, 4)
    by_line = {row["line"]: row for row in report["rows"]}
    assert by_line[2]["outcome"] == "created" and by_line[3]["outcome"] == "created"
    assert by_line[4]["errors"][0]["field"] == "memory_mb"
    assert by_line[5]["errors"][0] == {"field": "site", "reason": "no site named 'Nowhere'"}
    assert by_line[6]["errors"][0]["field"] == "parent"
    assert by_line[7]["errors"][0]["field"] == "accelerator"
    assert sorted(Device.objects.values_list("uid", flat=True)) == ["lyon-gw-01", "lyon-pi-01"]
    pi = Device.objects.get(uid="lyon-pi-01")
    assert pi.parent.uid == "lyon-gw-01" and pi.tag_list == ["camera", "line-1"]
    assert assert_audited("device", "", "device.import").changes["failed"] == 4
    assert_audited("device", pi.pk, "device.create")


def test_json_import_upserts_and_resolves_parents_defined_later(admin_client):
    site = SiteFactory(name="Osaka")
    DeviceFactory(uid="osa-pi-1", site=site, memory_mb=1024)
    rows = [
        {
            "uid": "osa-pi-2",
            "site": "Osaka",
            "tier": "edge",
            "parent": "osa-gw-1",
            "arch": "aarch64",
            "memory_mb": 4096,
            "runtimes": [{"name": "tflite", "version": "2.14"}],
        },
        {"uid": "osa-gw-1", "site": site.pk, "tier": "fog", "arch": "x86_64", "memory_mb": 8192},
        {"uid": "osa-pi-1", "memory_mb": 8192},
        "not an object",
    ]
    report = upload(admin_client, "fleet.json", json.dumps(rows)).json()
    assert (report["created"], report["updated"], report["failed"]) == (2, 1, 1)
    assert report["rows"][3]["line"] == 4 and report["rows"][3]["outcome"] == "error"
    assert Device.objects.get(uid="osa-pi-2").parent.uid == "osa-gw-1"
    assert Device.objects.get(uid="osa-pi-1").memory_mb == 8192


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("x.csv", "", "empty"),
        ("x.csv", "uid,colour\nA,red\n", "lacks required columns"),
        ("x.json", "{not json", "not valid JSON"),
        ("x.json", '{"a": 1}', "must be a list"),
    ],
)
def test_unreadable_files_are_400(admin_client, name, content, reason):
    response = upload(admin_client, name, content)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "file"
    assert reason in response.json()["errors"][0]["reason"]


def test_viewer_cannot_import(viewer_client):
    SiteFactory(name="Lyon")
    assert upload(viewer_client, "fleet.csv", CSV).status_code == 403
    assert not Device.objects.exists()
