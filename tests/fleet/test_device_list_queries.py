"""The device list's filters stay plain WHERE clauses: no SELECT DISTINCT over every column at fleet scale."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.models import Device
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


@pytest.mark.django_db(transaction=True)  # VACUUM cannot run inside the test's transaction
@pytest.mark.postgres_only(reason="a PostgreSQL plan: index-only scan of device_tier_status_count_idx")
def test_the_lists_count_is_an_index_only_scan_of_the_tier_status_index(viewer_client):
    """The pagination COUNT for ?tier=&status= reads device_tier_status_count_idx alone, not the table
    (the visibility map, which VACUUM sets and autovacuum keeps, makes it index-only)."""
    site = SiteFactory.create()
    Device.objects.bulk_create(
        Device(uid=f"cnt-{i:05d}", name=f"c {i}", site=site, tier=("edge", "fog", "cloud")[i % 3], arch="aarch64",
               cpu="A72", memory_mb=1024, status="online" if i % 2 else "offline")
        for i in range(6000)
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE fleet_device")
    with CaptureQueriesContext(connection) as captured:
        response = viewer_client.get("/api/v1/devices/?tier=edge&status=online&page_size=100")
    assert response.status_code == 200 and response.json()["count"] == 1000
    (count_sql,) = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT COUNT(*)")]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {count_sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Only Scan using device_tier_status_count_idx" in plan, plan
