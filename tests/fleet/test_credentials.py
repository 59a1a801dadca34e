from __future__ import annotations

import pytest

from broker.passwords import verify_secret
from fleet.models import Device
from fleet.services import device_credential_hash
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def test_credentials_are_shown_once_and_stored_hashed(admin_client, assert_audited):
    device = DeviceFactory()
    response = admin_client.post(f"/api/v1/devices/{device.pk}/credentials/")
    assert response.status_code == 201
    body = response.json()
    assert body["username"] == device.uid and body["rotated"] is False
    assert response["Cache-Control"] == "no-store"
    stored = Device.objects.get(pk=device.pk).credential_hash
    assert body["secret"] not in stored and stored.startswith("$7$")
    assert verify_secret(body["secret"], stored)
    detail = admin_client.get(f"/api/v1/devices/{device.pk}/").json()
    assert detail["has_credentials"] is True and "secret" not in detail and "credential_hash" not in detail
    entry = assert_audited("device", device.pk, "device.credentials_issue")
    assert body["secret"] not in str(entry.changes)


def test_rotation_invalidates_the_old_secret(admin_client, assert_audited):
    device = DeviceFactory()
    old = admin_client.post(f"/api/v1/devices/{device.pk}/credentials/").json()["secret"]
    response = admin_client.post(f"/api/v1/devices/{device.pk}/credentials/")
    new = response.json()["secret"]
    assert response.json()["rotated"] is True and new != old
    stored = device_credential_hash(device.uid)
    assert verify_secret(new, stored) and not verify_secret(old, stored)
    assert_audited("device", device.pk, "device.credentials_rotate")


def test_revocation_removes_access_and_is_idempotent(admin_client, assert_audited):
    device = DeviceFactory()
    admin_client.post(f"/api/v1/devices/{device.pk}/credentials/")
    response = admin_client.post(f"/api/v1/devices/{device.pk}/revoke/", {"reason": "stolen"}, format="json")
    assert response.status_code == 200
    assert response.json()["revoked"] is True and response.json()["has_credentials"] is False
    assert device_credential_hash(device.uid) is None
    entry = assert_audited("device", device.pk, "device.revoke")
    assert entry.changes["reason"] == "stolen"
    again = admin_client.post(f"/api/v1/devices/{device.pk}/revoke/", {}, format="json")
    assert again.status_code == 200
    from audit.models import AuditEntry

    assert AuditEntry.objects.for_object("device", device.pk).filter(action="device.revoke").count() == 1


def test_viewer_and_operator_cannot_issue_credentials(viewer_client, operator_client):
    device = DeviceFactory()
    assert viewer_client.post(f"/api/v1/devices/{device.pk}/credentials/").status_code == 403
    assert operator_client.post(f"/api/v1/devices/{device.pk}/revoke/").status_code == 403
    assert Device.objects.get(pk=device.pk).credential_hash == ""
