"""The device list's rows are built without DeviceSerializer's fields (device_list_rows): they must be what
the serializer would give, byte for byte, for devices with runtimes, tags, installations, a parent, nulls."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.db.models import Prefetch
from django.test.utils import CaptureQueriesContext
from rest_framework.renderers import JSONRenderer

from deployments.models import Installation
from deployments.services.jobs import deployment_create
from fleet.api.serializers import DeviceSerializer, device_list_rows
from fleet.models import Device
from fleet.services import device_issue_credentials, device_revoke
from tests.deployments.rollout_helpers import finish
from tests.factories import TEST_ACTOR, DeviceFactory, SiteFactory
from tests.pipeline_helpers import publish_sample_pipeline

pytestmark = pytest.mark.django_db


def serializer_output() -> list[dict[str, object]]:
    """What DeviceSerializer gives for every device, in uid order, loaded as the detail view loads one."""
    current = Installation.objects.filter(until__isnull=True).select_related(
        "model", "version", "pipeline", "pipeline_version"
    )
    rows = Device.objects.with_inventory().prefetch_related(
        Prefetch("installations", queryset=current, to_attr="current_installations")
    )
    return DeviceSerializer(rows.order_by("uid"), many=True).data  # type: ignore[return-value]


@pytest.fixture
def fleet(published_version):
    site = SiteFactory.create()
    gateway = DeviceFactory.create(
        uid="a-gateway", site=site, tier="fog", tags=["gw"],
        runtimes=[{"name": "tflite", "version": "2.14"}, {"name": "onnxruntime", "version": "1.18"}],
    )  # fmt: skip
    edge = DeviceFactory.create(uid="b-edge", site=site, parent=gateway, tags=["zeta", "alpha", "cam:1"])
    DeviceFactory.create(uid="c-bare", site=site, tier="cloud", runtimes=[], tags=[])  # nulls and empties
    revoked = DeviceFactory.create(uid="d-revoked", site=site)
    device_issue_credentials(actor=TEST_ACTOR, device=edge)
    device_issue_credentials(actor=TEST_ACTOR, device=revoked)
    device_revoke(actor=TEST_ACTOR, device=revoked, reason="lost")
    Device.objects.filter(pk=edge.pk).update(
        status="online", agent_version="0.9.1", last_seen=dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    )
    finish(deployment_create(actor=TEST_ACTOR, device=edge, version=published_version, timeout_seconds=60))
    # A running pipeline, listed under its name. Its installation row is written as the job-update
    # service writes one (deploying a pipeline through an agent is tests/deployments' business).
    pipeline_version = publish_sample_pipeline()
    Installation.objects.create(
        device=edge, pipeline=pipeline_version.pipeline, pipeline_version=pipeline_version,
        since=dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
    )  # fmt: skip
    # a past installation (`until` set) is not listed
    Installation.objects.create(
        device=gateway, model=published_version.model, version=published_version,
        since=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), until=dt.datetime(2026, 2, 1, tzinfo=dt.UTC),
    )  # fmt: skip
    return {"gateway": gateway, "edge": edge, "revoked": revoked}


def test_rows_are_what_the_serializer_gives(fleet):
    expected = serializer_output()
    rows = device_list_rows(Device.objects.listing().order_by("uid"))
    assert rows == expected
    assert JSONRenderer().render(rows) == JSONRenderer().render(expected)
    # the fixture made the cases it means to compare
    by_uid = {row["uid"]: row for row in rows}
    assert by_uid["b-edge"]["parent"] == fleet["gateway"].pk and by_uid["a-gateway"]["parent"] is None
    assert [r["name"] for r in by_uid["a-gateway"]["runtimes"]] == ["onnxruntime", "tflite"]
    assert by_uid["b-edge"]["tags"] == ["alpha", "cam:1", "zeta"]
    assert {i["model"] for i in by_uid["b-edge"]["installed"]} == {"shape-classifier", "motion-then-classify"}
    assert by_uid["a-gateway"]["installed"] == [] and by_uid["c-bare"]["runtimes"] == []
    assert by_uid["b-edge"]["last_seen"] == "2026-03-01T12:00:00.123456Z" and by_uid["c-bare"]["last_seen"] is None
    assert (by_uid["b-edge"]["has_credentials"], by_uid["b-edge"]["revoked"]) == (True, False)
    assert (by_uid["d-revoked"]["has_credentials"], by_uid["d-revoked"]["revoked"]) == (False, True)


def test_the_list_endpoint_answers_the_serializers_page(fleet, viewer_client):
    response = viewer_client.get("/api/v1/devices/?page_size=2&page=1")
    assert response.status_code == 200
    body = {"count": 4, "next": "http://testserver/api/v1/devices/?page=2&page_size=2", "previous": None,
            "results": serializer_output()[:2]}  # fmt: skip
    assert response.content == JSONRenderer().render(body)
    assert viewer_client.get("/api/v1/devices/?page_size=2&page=2&tag=zeta").status_code == 404
    only = viewer_client.get("/api/v1/devices/?tag=zeta")
    edge = [row for row in serializer_output() if row["uid"] == "b-edge"]
    assert only.content == JSONRenderer().render({"count": 1, "next": None, "previous": None, "results": edge})


def test_an_empty_page_costs_no_related_queries(db):
    with CaptureQueriesContext(connection) as captured:
        assert device_list_rows(Device.objects.listing()) == []
    assert len(captured) == 1  # the rows themselves; no runtimes, tags or installations query
