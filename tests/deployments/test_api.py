from __future__ import annotations

import pytest

from deployments.models import Job
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/deployments/"


def test_operator_deploys_a_version_to_a_device(operator_client, published_version, assert_audited):
    device = DeviceFactory()
    response = operator_client.post(URL, {"device": device.pk, "version": published_version.pk}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "QUEUED" and body["device_uid"] == device.uid
    assert body["version_number"] == published_version.number
    detail = operator_client.get(f"{URL}{body['id']}/").json()
    assert detail["events"][0]["to_status"] == "QUEUED"
    assert_audited("job", body["id"], "job.create", actor="user:oscar-operator")


def test_viewer_cannot_deploy(viewer_client, published_version):
    device = DeviceFactory()
    response = viewer_client.post(URL, {"device": device.pk, "version": published_version.pk}, format="json")
    assert response.status_code == 403 and not Job.objects.exists()


def test_conflicts_and_bad_input(operator_client, published_version):
    device = DeviceFactory()
    assert (
        operator_client.post(URL, {"device": device.pk, "version": published_version.pk}, format="json").status_code
        == 201
    )
    again = operator_client.post(URL, {"device": device.pk, "version": published_version.pk}, format="json")
    assert again.status_code == 409 and "already has an active job" in again.json()["detail"]
    bad = operator_client.post(URL, {"device": 999999, "version": published_version.pk}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "device"
    short = operator_client.post(
        URL, {"device": device.pk, "version": published_version.pk, "timeout_seconds": 1}, format="json"
    )
    assert short.status_code == 400 and short.json()["errors"][0]["field"] == "timeout_seconds"


def test_cancel(operator_client, published_version):
    device = DeviceFactory()
    job_id = operator_client.post(URL, {"device": device.pk, "version": published_version.pk}, format="json").json()[
        "id"
    ]
    response = operator_client.post(f"{URL}{job_id}/cancel/", {"reason": "wrong device"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "CANCELED"
    again = operator_client.post(f"{URL}{job_id}/cancel/", {}, format="json")
    assert again.status_code == 200  # already canceled: idempotent
    filtered = operator_client.get(f"{URL}?status=CANCELED&device={device.pk}").json()
    assert [j["id"] for j in filtered["results"]] == [job_id]
