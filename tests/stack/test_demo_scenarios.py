"""What `manage.py demo` sets up through the services: the baseline every capable device runs from the start,
the devices file that tells the simulator so, and the bad-canary rollout."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.management import call_command

from agent.simulator import read_devices_file
from audit.actors import Actor
from audit.models import AuditEntry
from deployments.models import Installation, RolloutStatus, RolloutTarget
from fleet.models import ConnectionStatus, Device
from models_registry import samples
from stack.demo_devices import demo_device_specs
from stack.demo_scenarios import BAD_CANARY_PLAN, demo_bad_canary_start, demo_baseline_seed
from stack.management.commands.sample_models import register_samples

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("demo")
CANNOT_RUN_V1 = ("profile:rpi3", "profile:coral-dev", "profile:lte-gateway")  # onnxruntime < 1.16 or none


@pytest.fixture
def demo_fleet(settings, tmp_path):
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    call_command("seed_demo", devices=40, stdout=io.StringIO())
    register_samples(samples.sample_versions(), log=lambda _: None)
    return list(Device.objects.all())


def _profile(device: Device) -> str:
    return next(t for t in device.tag_list if t.startswith("profile:"))


def test_the_baseline_runs_on_every_seeded_device_that_can_run_it(demo_fleet):
    version, result = demo_baseline_seed(actor=ACTOR)

    assert (version.model.name, version.number) == ("demo-classifier", 1)
    running = set(Installation.objects.filter(until__isnull=True, version=version).values_list("device_id", flat=True))
    capable = {d.pk for d in demo_fleet if _profile(d) not in CANNOT_RUN_V1}
    assert running == capable and len(capable) >= 0.6 * len(demo_fleet)
    assert set(result.skipped) == {d.uid for d in demo_fleet if d.pk not in capable}
    assert AuditEntry.objects.filter(action="installation.preinstalled", actor="system:demo").count() == len(capable)
    # a second start of the demo changes nothing
    _, again = demo_baseline_seed(actor=ACTOR)
    assert again.installed == []


def test_the_devices_file_tells_the_simulator_what_each_device_runs(demo_fleet, tmp_path):
    version, _ = demo_baseline_seed(actor=ACTOR)
    path = tmp_path / "demo-devices.json"

    rows = demo_device_specs(path, actor=ACTOR)
    specs = {s.uid: s for s in read_devices_file(path)}

    assert len(rows) == len(demo_fleet) == len(specs)
    for device in demo_fleet:
        spec = specs[device.uid]
        assert spec.site == device.site.name
        if _profile(device) in CANNOT_RUN_V1:
            assert spec.preinstalled is None
        else:
            assert spec.preinstalled is not None
            assert (spec.preinstalled.model, spec.preinstalled.version) == ("demo-classifier", 1)
            assert hashlib.sha256(spec.preinstalled.path.read_bytes()).hexdigest() == version.sha256


def test_the_bad_canary_rolls_the_slow_version_out_over_online_baseline_devices(demo_fleet, assert_audited):
    version, _ = demo_baseline_seed(actor=ACTOR)
    online = [d for d in demo_fleet if _profile(d) not in CANNOT_RUN_V1][:-2]  # two capable ones stay offline
    Device.objects.filter(pk__in=[d.pk for d in online]).update(status=ConnectionStatus.ONLINE)

    rollout = demo_bad_canary_start(actor=ACTOR)

    assert rollout.status == RolloutStatus.RUNNING
    assert (rollout.version.model.name, rollout.version.number) == ("demo-classifier", 2)
    gate = BAD_CANARY_PLAN["health_gate"]
    assert rollout.plan.health_gate is not None
    assert rollout.plan.health_gate.max_p95_latency_ratio == gate["max_p95_latency_ratio"]
    targets = RolloutTarget.objects.filter(rollout=rollout)
    assert {t.device_id for t in targets} == {d.pk for d in online}
    assert {t.baseline_version_id for t in targets} == {version.pk}  # what the canary is compared with
    assert_audited("rollout", rollout.pk, "rollout.create", actor="system:demo")
    assert_audited("rollout", rollout.pk, "rollout.running", actor="system:demo")
