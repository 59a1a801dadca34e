"""The drift API: reference profiles (operators set them, 400 naming the field) and alerts (viewers read)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from telemetry.models import DriftAlert, ReferenceProfile
from tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

GOOD = {"input[0]": {"mean": 0.0, "var": 1.0, "edges": [-1.0, 0.0, 1.0], "proportions": [0.16, 0.34, 0.34, 0.16]}}


def url(version) -> str:
    return f"/api/v1/models/{version.model_id}/versions/{version.number}/reference-profile/"


def test_operator_sets_a_profile_and_viewers_read_it(operator_client, viewer_client, published_version, assert_audited):
    response = operator_client.put(
        url(published_version), {"features": GOOD, "source": "s3://training/2025-03"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["features"] == GOOD
    assert_audited(
        "model_version", published_version.pk, "telemetry.reference_profile_set", actor="user:oscar-operator"
    )
    read = viewer_client.get(url(published_version))
    assert read.status_code == 200 and read.json()["source"] == "s3://training/2025-03"
    assert viewer_client.put(url(published_version), {"features": GOOD}, format="json").status_code == 403


def test_a_profile_can_be_computed_from_training_rows(operator_client, published_version):
    rows = [[-2.0, 0.5], [-0.5, 0.5], [0.5, 0.5], [2.0, 0.5]]
    response = operator_client.put(
        url(published_version), {"samples": {"input": rows}, "edges": [-1.0, 0.0, 1.0]}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["sample_count"] == 4
    assert body["features"]["input[0]"]["proportions"] == [0.25, 0.25, 0.25, 0.25]
    assert body["features"]["input[1]"]["proportions"] == [0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("features", "field"),
    [
        ({"x": {"mean": 0.0, "var": 1.0, "edges": [0.0, 1.0], "proportions": [0.5, 0.5]}}, "features.x.proportions"),
        ({"x": {"mean": 0.0, "var": 1.0, "edges": [1.0, 0.0], "proportions": [0.3, 0.3, 0.4]}}, "features.x.edges"),
        ({"x": {"mean": 0.0, "var": -1.0, "edges": [0.0], "proportions": [0.5, 0.5]}}, "features.x.var"),
        ({"x": {"mean": "a", "var": 1.0, "edges": [0.0], "proportions": [0.5, 0.5]}}, "features.x.mean"),
        ({"x": {"mean": 0.0, "var": 1.0, "edges": [0.0], "proportions": [0.5, 0.6]}}, "features.x.proportions"),
        ({"x": {"var": 1.0, "edges": [0.0], "proportions": [0.5, 0.5]}}, "features.x.mean"),
        ({"x": {"mean": 0.0, "var": 1.0, "edges": [0.0, "b"], "proportions": [0.3, 0.3, 0.4]}}, "features.x.edges.1"),
        ([1, 2], "features"),
        ({}, "features"),
    ],
)
def test_a_malformed_profile_is_a_400_naming_the_field(operator_client, published_version, features, field):
    response = operator_client.put(url(published_version), {"features": features}, format="json")
    assert response.status_code == 400
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert not ReferenceProfile.objects.exists()


def test_unknown_version_is_404(operator_client, published_version):
    response = operator_client.put(
        f"/api/v1/models/{published_version.model_id}/versions/99/reference-profile/", {"features": GOOD}, format="json"
    )
    assert response.status_code == 404


def test_alerts_list_filters_by_site_and_status(viewer_client, published_version):
    now = timezone.now()
    a, b = SiteFactory(name="A"), SiteFactory(name="B")
    features = [{"feature": "input[0]", "psi": 0.9, "ks": 0.4, "count": 900, "mean": 1.4, "reference_mean": 0.0}]
    common = {"version": published_version, "ks": 0.4, "features": features, "opened_at": now, "last_evaluated_at": now}
    DriftAlert.objects.create(site=a, psi=0.9, peak_psi=0.9, **common)
    DriftAlert.objects.create(site=b, psi=0.1, peak_psi=0.5, status="resolved", resolved_at=now, **common)
    everything = viewer_client.get("/api/v1/drift/alerts/").json()
    assert everything["count"] == 2
    only_a = viewer_client.get(f"/api/v1/drift/alerts/?site={a.pk}&status=open").json()["results"]
    assert [(r["site_name"], r["model"], r["version"], r["features"][0]["feature"]) for r in only_a] == [
        ("A", published_version.model.name, published_version.number, "input[0]")
    ]
    assert viewer_client.get("/api/v1/drift/alerts/?status=resolved").json()["results"][0]["site_name"] == "B"
    assert viewer_client.get("/api/v1/drift/alerts/?status=bogus").status_code == 400
