"""List filters answer a 400 for values the database cannot take, never a 500 (found by the fuzz test as
admin and operator, issue 14 #13): offsets PostgreSQL refuses, integers past 64 bits SQLite refuses."""

from __future__ import annotations

import pytest

from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/audit/?since=0041-08-03T16:24:19%2B18:06", None),  # PostgreSQL: offsets up to ±15:59
        ("/api/v1/audit/?format=csv&since=0041-08-03T16:24:19%2B18:06", None),
        ("/api/v1/audit/?until=0001-01-01T00:00:00%2B05:00", "until"),  # before year 1 in UTC
        ("/api/v1/devices/?site=-19221917887525958084550721536", "site"),
        ("/api/v1/devices/?parent=-3.828431499940637e%2B26", "parent"),
        ("/api/v1/drift/alerts/?site=-6.349293101540097e%2B53", "site"),
        ("/api/v1/deployments/?device=99999999999999999999999", "device"),
    ],
)
def test_out_of_range_filter_values_are_answered_not_crashed(viewer_client, path, field):
    DeviceFactory()
    response = viewer_client.get(path)
    if field is None:  # representable once converted to UTC: a normal answer
        assert response.status_code == 200
        if "csv" in path:
            b"".join(response.streaming_content)
        return
    assert response.status_code == 400, response.content
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
