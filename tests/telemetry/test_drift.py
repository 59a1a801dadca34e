"""Drift detection: the maths against hand-computed values, reference profiles, alerts and their API."""

from __future__ import annotations

import datetime as dt
import io
import math

import numpy as np
import pytest
from django.utils import timezone

from agent.telemetry import TelemetryRecorder
from audit.actors import Actor
from audit.models import AuditEntry
from core.events import domain_event
from protocol.messages import TelemetryMessage, utc_now
from telemetry.drift import (
    ProfileInvalid,
    drift_evaluate,
    ks_distance,
    profile_from_samples,
    psi,
    rebin,
    reference_profile_set,
)
from telemetry.models import DriftAlert, ReferenceProfile, TelemetrySample
from telemetry.services import TelemetryEnvelope, telemetry_ingest_batch
from tests.factories import DeviceFactory, SiteFactory

ACTOR = Actor.system("tests")
FEATURES = 4

# --- maths (no database) ---------------------------------------------------------------------------


def test_psi_matches_a_hand_computed_value():
    # Σ (a-e)·ln(a/e) = -0.15·ln 0.4 - 0.05·ln 0.8 + 0.05·ln 1.2 + 0.15·ln 1.6
    expected = 0.15 * 0.916291 + 0.05 * 0.223144 + 0.05 * 0.182322 + 0.15 * 0.470004
    assert psi([0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(expected, abs=1e-6)
    assert psi([0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.228218, abs=1e-6)


def test_psi_of_identical_distributions_is_zero_and_empty_bins_stay_finite():
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # an empty actual bin counts as 1e-4: (1e-4 - 0.5)·ln(1e-4/0.5) + (1 - 0.5)·ln(1/0.5)
    value = psi([0.5, 0.5], [0.0, 1.0])
    assert value == pytest.approx((1e-4 - 0.5) * math.log(1e-4 / 0.5) + 0.5 * math.log(2), abs=1e-9)


def test_ks_is_the_largest_cdf_difference_over_the_bins():
    # CDFs 0.25, 0.5, 0.75, 1 and 0.1, 0.3, 0.6, 1: differences 0.15, 0.2, 0.15, 0
    assert ks_distance([0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.2)
    assert ks_distance([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert ks_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)


def test_rebin_is_exact_on_equal_edges_and_interpolates_otherwise():
    assert list(rebin([0.0, 1.0], [1, 2, 3], [0.0, 1.0])) == [1, 2, 3]
    # 4 values spread evenly over [0, 2): half of them fall below 1
    assert list(rebin([0.0, 2.0], [0, 4, 0], [0.0, 1.0, 2.0])) == pytest.approx([0, 2, 2, 0])
    # coarser target: the middle bins merge
    assert list(rebin([0.0, 1.0, 2.0], [1, 2, 3, 4], [0.0, 2.0])) == pytest.approx([1, 5, 4])


def test_profile_from_samples_names_columns_as_the_agent_does():
    rows = np.array([[-1.0, 5.0], [0.5, 5.0], [0.5, 5.0], [2.0, 5.0]])
    profile = profile_from_samples({"input": rows}, edges=[0.0, 1.0])
    assert set(profile) == {"input[0]", "input[1]"}
    assert profile["input[0]"]["proportions"] == [0.25, 0.5, 0.25]
    assert profile["input[0]"]["mean"] == pytest.approx(0.5)
    assert profile["input[0]"]["var"] == pytest.approx(np.var([-1.0, 0.5, 0.5, 2.0]))
    assert profile["input[1]"]["proportions"] == [0.0, 0.0, 1.0]


# --- the evaluation on the real database ------------------------------------------------------------


def _telemetry(uid: str, version, shift: float, rows: int, seed: int) -> TelemetryEnvelope:
    """What a device running `version` reports after serving `rows` inputs drawn from N(shift, 1)."""
    recorder = TelemetryRecorder()
    recorder.record_latencies(version.model.name, version.number, np.full(rows, 5.0))
    data = np.random.default_rng(seed).normal(shift, 1.0, size=(rows, FEATURES))
    recorder.record_inputs(version.model.name, version.number, {"input": data})
    message = TelemetryMessage(schema_version=1, ts=utc_now(), interval_s=10.0, samples=recorder.drain())
    return TelemetryEnvelope(uid, message)


@pytest.fixture
def profiled(published_version):
    data = np.random.default_rng(0).normal(0.0, 1.0, size=(5000, FEATURES))
    reference_profile_set(
        actor=ACTOR, version=published_version, features=profile_from_samples({"input": data}), sample_count=5000
    )
    return published_version


@pytest.fixture
def events():
    received: list[dict[str, object]] = []

    def receiver(sender: str, payload: dict[str, object], **kwargs: object) -> None:
        if sender == "drift.alert":
            received.append(payload)

    domain_event.connect(receiver)
    yield received
    domain_event.disconnect(receiver)


def _report(devices, version, *, shift_for, rows=400, seed=0):
    telemetry_ingest_batch([_telemetry(d.uid, version, shift_for(d), rows, seed + i) for i, d in enumerate(devices)])


@pytest.mark.django_db
def test_shifted_inputs_at_one_site_open_an_alert_for_that_site_only(
    profiled, events, assert_audited, django_capture_on_commit_callbacks
):
    calm, drifting = SiteFactory(name="Calm"), SiteFactory(name="Drifting")
    devices = [DeviceFactory(site=calm) for _ in range(3)] + [DeviceFactory(site=drifting) for _ in range(3)]
    _report(devices, profiled, shift_for=lambda d: 1.5 if d.site_id == drifting.pk else 0.0)

    with django_capture_on_commit_callbacks(execute=True):
        results = {r.site: r for r in drift_evaluate(actor=ACTOR)}

    assert results["Calm"].outcome == "ok"
    assert results["Calm"].psi < 0.05
    assert results["Drifting"].outcome == "opened"
    alert = DriftAlert.objects.get()
    assert (alert.site, alert.version, alert.status) == (drifting, profiled, "open")
    assert alert.psi > 1.0 and 0.4 < alert.ks < 0.7  # Φ(1.5) - Φ(0) ≈ 0.43 at the bin edges, and more
    assert {f["feature"] for f in alert.features} == {f"input[{i}]" for i in range(FEATURES)}
    assert [f["psi"] for f in alert.features] == sorted((f["psi"] for f in alert.features), reverse=True)
    assert all(f["mean"] == pytest.approx(1.5, abs=0.1) for f in alert.features)
    assert all(f["reference_mean"] == pytest.approx(0.0, abs=0.05) for f in alert.features)
    assert_audited("drift_alert", alert.pk, "drift.alert_opened", actor="system:tests")
    assert [(e["status"], e["site"], e["version"]) for e in events] == [("open", "Drifting", profiled.number)]


@pytest.mark.django_db
def test_re_evaluating_keeps_one_open_alert_and_resolves_it_when_the_drift_stops(profiled, events):
    site = SiteFactory(name="Drifting")
    devices = [DeviceFactory(site=site) for _ in range(2)]
    _report(devices, profiled, shift_for=lambda d: 2.0)
    drift_evaluate(actor=ACTOR)
    assert drift_evaluate(actor=ACTOR)[0].outcome == "still_open"
    assert DriftAlert.objects.count() == 1
    assert AuditEntry.objects.filter(action="drift.alert_opened").count() == 1

    # the drifted data leaves the window; the devices now see the training distribution again
    TelemetrySample.objects.update(received_at=timezone.now() - dt.timedelta(hours=3))
    _report(devices, profiled, shift_for=lambda d: 0.0, seed=100)
    (result,) = drift_evaluate(actor=ACTOR)

    assert result.outcome == "resolved"
    alert = DriftAlert.objects.get()
    assert alert.status == "resolved" and alert.resolved_at is not None and alert.peak_psi > 1.0
    assert AuditEntry.objects.filter(action="drift.alert_resolved", object_id=str(alert.pk)).count() == 1
    # a resolved alert is history: new drift opens a new one
    TelemetrySample.objects.update(received_at=timezone.now() - dt.timedelta(hours=3))
    _report(devices, profiled, shift_for=lambda d: -2.0, seed=200)
    assert drift_evaluate(actor=ACTOR)[0].outcome == "opened"
    assert DriftAlert.objects.count() == 2


@pytest.mark.django_db
def test_too_few_values_is_inconclusive_and_changes_nothing(profiled, settings):
    settings.DRIFT_MIN_COUNT = 1000
    device = DeviceFactory()
    _report([device], profiled, shift_for=lambda d: 3.0, rows=200)
    (result,) = drift_evaluate(actor=ACTOR)
    assert result.outcome == "inconclusive" and result.psi is None
    assert not DriftAlert.objects.exists()


@pytest.mark.django_db
def test_versions_without_a_reference_profile_are_not_scored(published_version):
    _report([DeviceFactory()], published_version, shift_for=lambda d: 3.0)
    assert drift_evaluate(actor=ACTOR) == []


@pytest.mark.django_db
def test_setting_a_profile_is_audited_once_and_a_malformed_one_names_the_field(published_version, assert_audited):
    features = {"x": {"mean": 0.0, "var": 1.0, "edges": [0.0], "proportions": [0.5, 0.5]}}
    reference_profile_set(actor=ACTOR, version=published_version, features=features)
    reference_profile_set(actor=ACTOR, version=published_version, features=features)  # no change
    assert AuditEntry.objects.filter(action="telemetry.reference_profile_set").count() == 1
    assert_audited("model_version", published_version.pk, "telemetry.reference_profile_set")
    bad = {"x": {"mean": 0.0, "var": 1.0, "edges": [0.0, 1.0], "proportions": [0.5, 0.5]}}
    with pytest.raises(ProfileInvalid) as caught:
        reference_profile_set(actor=ACTOR, version=published_version, features=bad)
    assert caught.value.field == "features.x.proportions"
    assert ReferenceProfile.objects.get().features == features


@pytest.mark.django_db
def test_the_sample_models_get_a_reference_profile_once(tmp_path, settings):
    from django.core.management import call_command

    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    call_command("sample_models", register=True, stdout=io.StringIO())
    call_command("sample_models", register=True, stdout=io.StringIO())
    profiles = list(ReferenceProfile.objects.select_related("version").order_by("version__number"))
    assert [p.version.number for p in profiles] == [1, 2, 3]
    features = profiles[0].features
    assert set(features) == {f"input[{i}]" for i in range(FEATURES)}
    # the training points sit around the centroids: feature 3's mean is (0.5 + 0.5 - 0.5) / 3
    assert features["input[3]"]["mean"] == pytest.approx(1 / 6, abs=0.05)
    assert AuditEntry.objects.filter(action="telemetry.reference_profile_set").count() == 3


@pytest.mark.django_db
def test_the_command_scores_once_with_progress(profiled):
    from django.core.management import call_command

    site = SiteFactory(name="Depot")
    _report([DeviceFactory(site=site), DeviceFactory(site=site)], profiled, shift_for=lambda d: 1.5)
    out = io.StringIO()
    call_command("evaluate_drift", "--window-minutes", "5", stdout=out)
    text = out.getvalue()
    assert f"{profiled.model.name} v{profiled.number} @ Depot: opened (psi " in text
    assert "1 (version, site) pairs scored, 1 alerts opened" in text
    assert DriftAlert.objects.open().count() == 1


@pytest.mark.django_db
@pytest.mark.postgres_only(reason="compares the PostgreSQL aggregation (_window_sql) with the portable one")
def test_the_python_aggregation_matches_the_postgresql_one(profiled):
    from telemetry.drift import _window_python, _window_sql

    sites = [SiteFactory(), SiteFactory()]
    devices = [DeviceFactory(site=sites[i % 2]) for i in range(4)]
    _report(devices, profiled, shift_for=lambda d: 0.7 if d.site_id == sites[0].pk else 0.0, rows=150)
    versions = [(profiled.model.name, profiled.number)]
    since, until = timezone.now() - dt.timedelta(minutes=5), timezone.now() + dt.timedelta(seconds=1)
    in_sql, in_python = _window_sql(versions, since, until), _window_python(versions, since, until)
    assert set(in_sql) == set(in_python) == {(*versions[0], s.pk) for s in sites}
    for key, features in in_sql.items():
        assert set(features) == set(in_python[key]) == {f"input[{i}]" for i in range(FEATURES)}
        for name, window in features.items():
            other = in_python[key][name]
            assert window.count == other.count == 300
            assert window.mean_sum == pytest.approx(other.mean_sum)
            assert {e: list(c) for e, c in window.by_edges.items()} == {e: list(c) for e, c in other.by_edges.items()}
