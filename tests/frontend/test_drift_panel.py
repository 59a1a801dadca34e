"""The drift panel partial and its context helper (the overview page includes them)."""

from __future__ import annotations

import pytest
from django.template import Context, Template
from django.template.loader import render_to_string
from django.utils import timezone

from frontend.drift_panel import drift_alerts_context
from telemetry.models import DriftAlert
from tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def _alert(version, site, status="open"):
    now = timezone.now()
    features = [
        {"feature": "input[2]", "psi": 1.31, "ks": 0.52, "count": 900, "mean": 1.5, "reference_mean": 0.0},
        {"feature": "input[0]", "psi": 0.42, "ks": 0.21, "count": 900, "mean": 0.6, "reference_mean": 0.0},
    ]
    return DriftAlert.objects.create(
        version=version, site=site, status=status, psi=1.31, ks=0.52, peak_psi=1.31, features=features,
        opened_at=now, last_evaluated_at=now, resolved_at=now if status == "resolved" else None,
    )  # fmt: skip


def test_the_panel_lists_open_alerts_with_retraining_needed_and_their_features(published_version):
    _alert(published_version, SiteFactory(name="Harbour"))
    _alert(published_version, SiteFactory(name="Quiet"), status="resolved")
    context = drift_alerts_context()
    assert context["drift_open_count"] == 1
    html = render_to_string("frontend/_drift_alerts.html", context)
    assert "retraining needed" in html and "Harbour" in html and "Quiet" not in html
    assert html.index("input[2] 1.31") < html.index("input[0] 0.42")
    assert published_version.model.name in html


def test_the_panel_says_so_when_nothing_drifts_and_the_tag_renders_it_in_one_line():
    html = Template("{% load drift_tags %}{% drift_alerts %}").render(Context())
    assert "No input drift" in html
