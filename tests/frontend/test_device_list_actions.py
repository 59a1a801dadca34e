"""The device list: bulk actions on every matching device (not only the page), "save as dynamic group"
from the filters, and the navigation links to pipelines and webhooks."""

from __future__ import annotations

import pytest
from django.test import Client

from fleet.models import DeviceGroup, DeviceTag, GroupKind
from fleet.selectors import group_members
from tests.factories import DeviceFactory, make_user

pytestmark = pytest.mark.django_db


def login(role: str | None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(make_user(f"list-{role}", role))
    return client


@pytest.fixture
def fleet():
    """60 edge devices tagged pilot (more than a page of 50), 5 fog devices tagged pilot, 5 edge untagged."""
    pilots = [DeviceFactory(tier="edge", tags=["pilot"]) for _ in range(60)]
    fog = [DeviceFactory(tier="fog", tags=["pilot"]) for _ in range(5)]
    others = [DeviceFactory(tier="edge") for _ in range(5)]
    return pilots, fog, others


def test_bulk_tag_applies_to_every_matching_device_on_every_page(fleet, assert_audited):
    pilots, _, _ = fleet
    admin = login("admin")
    page = admin.get("/devices/?tier=edge&tag=pilot").content.decode()
    assert "all 60 matching (every page)" in page
    response = admin.post(
        "/devices/bulk/",
        {"action": "tag", "tag": "wave-1", "scope": "matching", "query": "tier=edge&tag=pilot",
         "next": "/devices/?tier=edge&tag=pilot"},
    )  # fmt: skip
    assert response.status_code == 302
    tagged = set(DeviceTag.objects.filter(tag="wave-1").values_list("device_id", flat=True))
    assert tagged == {d.pk for d in pilots}
    assert_audited("device", pilots[-1].pk, "device.update", actor="user:list-admin")


def test_ticked_scope_still_changes_only_the_ticked_devices(fleet):
    pilots, _, _ = fleet
    login("admin").post(
        "/devices/bulk/",
        {"action": "tag", "tag": "two", "scope": "ticked", "query": "tier=edge",
         "devices": [pilots[0].pk, pilots[1].pk]},
    )  # fmt: skip
    assert DeviceTag.objects.filter(tag="two").count() == 2


def test_matching_with_a_bad_filter_changes_nothing(fleet):
    response = login("admin").post(
        "/devices/bulk/", {"action": "tag", "tag": "x", "scope": "matching", "query": "tier=moon"}, follow=True
    )
    assert "not valid" in response.content.decode()
    assert not DeviceTag.objects.filter(tag="x").exists()


def test_save_filters_as_a_dynamic_group(fleet, assert_audited):
    pilots, _, _ = fleet
    admin = login("admin")
    assert 'data-testid="save-group"' in admin.get("/devices/?tier=edge&tag=pilot").content.decode()
    assert 'data-testid="save-group"' not in admin.get("/devices/").content.decode()  # nothing to save
    response = admin.post("/devices/save-group/", {"name": "edge pilots", "query": "tier=edge&tag=pilot&page=2"})
    group = DeviceGroup.objects.get(name="edge pilots")
    assert response.status_code == 302 and response["Location"] == f"/devices/?group={group.pk}"
    assert group.kind == GroupKind.DYNAMIC and group.filter == {"tier": "edge", "tag": "pilot"}
    assert set(group_members(group).values_list("pk", flat=True)) == {d.pk for d in pilots}
    assert_audited("group", group.pk, "group.create", actor="user:list-admin")
    # a new matching device joins by itself: the group is its filter
    newcomer = DeviceFactory(tier="edge", tags=["pilot"])
    assert group_members(group).filter(pk=newcomer.pk).exists()


def test_save_group_refuses_a_bad_name_and_says_why(fleet):
    response = login("admin").post("/devices/save-group/", {"name": "", "query": "tier=edge"}, follow=True)
    assert "Group not saved: name" in response.content.decode()
    assert not DeviceGroup.objects.exists()


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_only_admins_save_groups_and_act_on_every_match(fleet, role):
    client = login(role)
    assert 'data-testid="save-group"' not in client.get("/devices/?tier=edge").content.decode()
    assert client.post("/devices/save-group/", {"name": "g", "query": "tier=edge"}).status_code == 403
    response = client.post("/devices/bulk/", {"action": "tag", "tag": "x", "scope": "matching", "query": "tier=edge"})
    assert response.status_code == 403
    assert not DeviceGroup.objects.exists() and not DeviceTag.objects.filter(tag="x").exists()


def test_anonymous_is_sent_to_sign_in_and_posts_need_csrf(fleet):
    response = Client().post("/devices/save-group/", {"name": "g", "query": "tier=edge"})
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert (
        login("admin", csrf=True).post("/devices/save-group/", {"name": "g", "query": "tier=edge"}).status_code == 403
    )
    assert not DeviceGroup.objects.exists()


def test_navigation_links_pipelines_and_webhooks():
    html = login("viewer").get("/devices/").content.decode()
    assert 'href="/pipelines/"' in html and 'href="/webhooks/"' in html
