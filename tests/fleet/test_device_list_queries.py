"""The device list's filters stay plain WHERE clauses: no SELECT DISTINCT over every column at fleet scale."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import DeviceFactory, SiteFactory

pytestmark = pytest.mark.django_db


def test_filtering_by_tier_site_arch_and_accelerator_needs_no_distinct(viewer_client):
    site, other = SiteFactory.create(), SiteFactory.create()
    wanted = [DeviceFactory.create(site=site, tier="edge") for _ in range(3)]
    DeviceFactory.create(site=other, tier="edge")
    DeviceFactory.create(site=site, tier="cloud", arch="x86_64")
    with CaptureQueriesContext(connection) as captured:
        response = viewer_client.get(
            f"/api/v1/devices/?tier=edge&site={site.pk}&arch=aarch64&accelerator=none&page_size=100"
        )
    assert response.status_code == 200
    assert sorted(d["uid"] for d in response.json()["results"]) == sorted(d.uid for d in wanted)
    assert response.json()["count"] == 3
    assert not [q["sql"] for q in captured.captured_queries if "DISTINCT" in q["sql"].upper()]
