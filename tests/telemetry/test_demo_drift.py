"""The demo's data agree with their reference: simulated devices running demo-classifier v1, whose reference
profile `sample_models --register` set from its training inputs, raise no drift alert while calm, and the
site given to the simulator's `--drift-site` raises one.

The telemetry is what the simulator itself publishes (`SimDevice.publish_telemetry`, its input
distribution and histograms), taken at the broker's side of the client and stored by the bridge's ingest;
only the MQTT connection is left out.
"""

from __future__ import annotations

import random

import pytest

from agent.simulator import PROFILES, DeviceSpec, Preinstalled, SimConfig, SimDevice, Simulator, Timings
from audit.actors import Actor
from fleet.services import device_create, site_create
from models_registry import samples
from models_registry.models import ModelVersion
from protocol.messages import parse_telemetry
from stack.demo_devices import _local_artifact
from stack.management.commands.sample_models import MODEL_NAME, register_samples
from telemetry.drift import drift_evaluate
from telemetry.models import DriftAlert, ReferenceProfile
from telemetry.services import TelemetryEnvelope, telemetry_ingest_batch

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")
PER_SITE = 3


@pytest.fixture
def baseline(settings, tmp_path):
    """demo-classifier v1 registered as the demo does it, with the reference profile of its training inputs."""
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    register_samples(samples.sample_versions()[:1], log=lambda _: None)
    version = ModelVersion.objects.select_related("model").get(model__name=MODEL_NAME, number=1)
    assert ReferenceProfile.objects.filter(version=version).exists()
    return version


def _publish(version, tmp_path, *, drift_site: str | None) -> list[TelemetryEnvelope]:
    """One telemetry interval from each simulated rpi4 at the sites Calm and Drifting, all running `version`."""
    profile = PROFILES["rpi4"]
    specs = []
    for site_name in ("Calm", "Drifting"):
        site = site_create(actor=ACTOR, name=site_name, latitude=50.0, longitude=8.0)
        for index in range(PER_SITE):
            uid = f"{site_name.lower()}-{index}"
            device_create(
                actor=ACTOR, uid=uid, name=uid, site=site, tier="edge", arch=profile.arch, cpu=profile.cpu,
                memory_mb=profile.memory_mb, accelerator=profile.accelerator,
                runtimes=[{"name": n, "version": v} for n, v in profile.runtimes],
            )  # fmt: skip
            specs.append(DeviceSpec(uid=uid, secret="unused", profile="rpi4", site=site_name))
    # the demo's preinstalled artifact: a local copy of the stored v1, loaded and timed by the simulator
    installed = Preinstalled(MODEL_NAME, 1, version.sha256, _local_artifact(version, tmp_path / "artifacts"))
    bench = Timings().time(installed.path, model=MODEL_NAME, version=1, sha256=version.sha256)
    config = SimConfig(
        api_url="http://127.0.0.1:1", mqtt_url="mqtt://127.0.0.1:1", requests_per_s=100.0, error_rate=0.0,
        seed=3, drift_site=drift_site, drift_shift=1.5 if drift_site else 0.0,
    )  # fmt: skip
    simulator = Simulator(config, specs)
    published: list[TelemetryEnvelope] = []
    for index, spec in enumerate(specs):
        device = SimDevice(simulator, spec.uid, spec.secret, profile, random.Random(index), spec.site)
        device.preinstall(installed, bench)
        # the broker's side of the client: what the device publishes on its telemetry topic
        device.client.publish = lambda topic, payload, qos, uid=spec.uid: published.append(  # type: ignore[method-assign]
            TelemetryEnvelope(uid, parse_telemetry(payload))
        )
        device.publish_telemetry(10.0)
    return published


def test_a_calm_simulated_fleet_raises_no_drift_alert(baseline, tmp_path, settings):
    settings.DRIFT_MIN_COUNT = 500
    telemetry_ingest_batch(_publish(baseline, tmp_path, drift_site=None))

    results = {r.site: r for r in drift_evaluate(actor=ACTOR)}

    assert {site: r.outcome for site, r in results.items()} == {"Calm": "ok", "Drifting": "ok"}
    assert all(r.psi < settings.DRIFT_PSI_THRESHOLD / 2 for r in results.values()), results
    assert not DriftAlert.objects.exists()


def test_the_drift_site_raises_an_alert_and_only_that_site(baseline, tmp_path, settings):
    settings.DRIFT_MIN_COUNT = 500
    telemetry_ingest_batch(_publish(baseline, tmp_path, drift_site="Drifting"))

    results = {r.site: r for r in drift_evaluate(actor=ACTOR)}

    assert results["Calm"].outcome == "ok"
    assert results["Drifting"].outcome == "opened"
    alert = DriftAlert.objects.select_related("site").get()
    assert (alert.site.name, alert.version_id, alert.status) == ("Drifting", baseline.pk, "open")
    assert alert.psi > settings.DRIFT_PSI_THRESHOLD
    assert all(f["mean"] == pytest.approx(f["reference_mean"] + 1.5, abs=0.15) for f in alert.features)
