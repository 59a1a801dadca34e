from __future__ import annotations

import pytest

from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
GROUPS = "/api/v1/groups/"


def test_static_group_members_add_list_remove(admin_client, assert_audited):
    a, b, c = DeviceFactory(), DeviceFactory(), DeviceFactory()
    group = admin_client.post(GROUPS, {"name": "line-3", "kind": "static"}, format="json").json()
    url = f"{GROUPS}{group['id']}/members/"
    response = admin_client.post(url, {"devices": [a.pk, b.pk]}, format="json")
    assert response.status_code == 200
    assert sorted(d["uid"] for d in response.json()["results"]) == sorted([a.uid, b.uid])
    assert assert_audited("group", group["id"], "group.add_members").changes["added"] == sorted([a.uid, b.uid])
    response = admin_client.delete(url, {"devices": [a.pk, c.pk]}, format="json")
    assert [d["uid"] for d in response.json()["results"]] == [b.uid]
    assert admin_client.get(f"{GROUPS}{group['id']}/").json()["member_count"] == 1


def test_dynamic_group_is_evaluated_on_demand(admin_client, viewer_client):
    DeviceFactory(uid="jet-1", accelerator="gpu", runtimes=[{"name": "tensorrt", "version": "8.6"}])
    response = admin_client.post(
        GROUPS,
        {"name": "gpu-boxes", "kind": "dynamic", "filter": {"accelerator": "gpu", "runtime": "tensorrt"}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    url = f"{GROUPS}{response.json()['id']}/members/"
    assert [d["uid"] for d in viewer_client.get(url).json()["results"]] == ["jet-1"]
    DeviceFactory(uid="jet-2", accelerator="gpu", runtimes=[{"name": "tensorrt", "version": "8.6"}])
    pi = DeviceFactory(uid="pi-1")
    assert [d["uid"] for d in viewer_client.get(url).json()["results"]] == ["jet-1", "jet-2"]
    refused = admin_client.post(url, {"devices": [pi.pk]}, format="json")
    assert refused.status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "g", "kind": "dynamic", "filter": {}}, "filter"),
        ({"name": "g", "kind": "dynamic", "filter": {"colour": "red"}}, "filter"),
        ({"name": "g", "kind": "dynamic", "filter": {"tier": "orbit"}}, "filter"),
        ({"name": "g", "kind": "static", "filter": {"tier": "edge"}}, "filter"),
    ],
)
def test_bad_group_filters_are_400(admin_client, body, field):
    response = admin_client.post(GROUPS, body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field


def test_group_filter_by_membership_in_device_list(admin_client, viewer_client):
    a, _ = DeviceFactory(), DeviceFactory()
    group = admin_client.post(GROUPS, {"name": "solo"}, format="json").json()
    admin_client.post(f"{GROUPS}{group['id']}/members/", {"devices": [a.pk]}, format="json")
    listed = viewer_client.get(f"/api/v1/devices/?group={group['id']}").json()["results"]
    assert [d["uid"] for d in listed] == [a.uid]
