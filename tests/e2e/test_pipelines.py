"""Issue 8 (pipelines) end to end: a two-stage pipeline deployed to real agents (processes, own Mosquitto)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from django.core.files.storage import default_storage

from deployments.models import Installation, Job
from deployments.services.jobs import deployment_create
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_start
from deployments.services.tick import rollout_advance
from fleet.models import Device
from models_registry.pipeline_services import pipeline_version_create, pipeline_version_publish
from models_registry.samples import PIPELINE_CONDITION, build_classifier, build_motion_detector
from telemetry.models import TelemetrySample
from tests.e2e.test_device_roundtrip import ACTOR, control_plane, infer, job_status, provision, start_agent  # noqa: F401
from tests.pipeline_helpers import publish_model_version, publish_sample_pipeline
from tests.processes import free_port, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MOTION = [[1.0, 0.0, 0.0, 0.5]]  # scores 0.82: the classifier runs
STILL = [[0.0, 0.0, 0.0, 0.0]]  # scores 0.27: the classifier is skipped


def _reference(onnx_bytes: bytes, points: list[list[float]]) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": np.array(points, dtype=np.float32)})[0]


def test_pipeline_installs_on_real_agents_runs_both_stages_skips_on_a_false_condition_and_reports_stage_latency(
    control_plane,  # noqa: F811 - the fixture imported from test_device_roundtrip
    settings,
    tmp_path,
):
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    pipeline_version = publish_sample_pipeline()
    agents = []
    for index in range(2):
        device, secret = provision(control_plane)
        port = free_port()
        agent = start_agent(control_plane, device, secret, tmp_path / f"agent-{index}", port)
        agents.append((device, port, agent))
    for device, _port, agent in agents:
        wait_until(lambda d=device: Device.objects.get(pk=d.pk).status == "online", 30, lambda a=agent: a.output())
    # one rollout, two waves (a canary of one device, then both), the gates as for any version
    plan = {
        "target": {"devices": [device.pk for device, _port, _agent in agents]},
        "waves": [{"count": 1}, {"count": 2}],
        "install_gate": {"min_success_pct": 100, "max_failure_pct": 0, "min_finished": 1},
        "rate_per_minute": 600, "job_timeout_seconds": 120, "seed": 1,
    }  # fmt: skip
    rollout = rollout_start(actor=ACTOR, rollout=rollout_create(actor=ACTOR, version=pipeline_version, plan=plan))
    assert rollout.pipeline_version_id == pipeline_version.pk and rollout.version_id is None

    def completed() -> bool:
        return rollout_advance(rollout_id=rollout.pk) == "completed"

    wait_until(completed, 90, lambda: "\n".join(a.output()[-1500:] for _d, _p, a in agents))
    jobs = Job.objects.filter(rollout=rollout)
    assert sorted(job.status for job in jobs) == ["SUCCEEDED", "SUCCEEDED"]
    assert {job.pipeline_version_id for job in jobs} == {pipeline_version.pk}
    device, port, _agent = agents[0]

    both = infer(port, MOTION)
    assert both["model"] == "motion-then-classify" and both["version"] == pipeline_version.number
    assert [(s["name"], s["status"]) for s in both["stages"]] == [("detect", "ran"), ("classify", "ran")]
    assert both["stages"][1]["condition_value"] == pytest.approx(0.8176, abs=1e-3)
    assert np.allclose(both["outputs"]["probabilities"], _reference(build_classifier(), MOTION), atol=1e-5)

    skipped = infer(port, STILL)
    assert [(s["name"], s["status"]) for s in skipped["stages"]] == [("detect", "ran"), ("classify", "skipped")]
    assert skipped["stages"][1]["condition_value"] == pytest.approx(0.2689, abs=1e-3)
    assert skipped["stages"][1]["latency_ms"] is None
    assert np.allclose(skipped["outputs"]["score"], _reference(build_motion_detector(), STILL), atol=1e-5)

    current = Installation.objects.get(device=device, until__isnull=True)
    assert current.pipeline_version_id == pipeline_version.pk
    state = Device.objects.get(pk=device.pk).reported_state
    assert state["active"]["motion-then-classify"]["version"] == pipeline_version.number

    def stage_sample() -> TelemetrySample | None:
        return TelemetrySample.objects.filter(device=device, model_name="motion-then-classify", requests__gt=0).first()

    wait_until(lambda: stage_sample() is not None, 30, "pipeline telemetry")
    sample = stage_sample()
    assert sample.version_number == pipeline_version.number and sample.requests == 2
    stages = {stage["name"]: stage for stage in sample.stages}
    assert stages["detect"]["requests"] == 2 and stages["detect"]["skipped"] == 0
    assert stages["classify"]["requests"] == 1 and stages["classify"]["skipped"] == 1
    assert stages["classify"]["model"] == "frame-classifier" and stages["classify"]["latency_ms"]["p95"] > 0


def test_a_tampered_stage_rejects_the_whole_pipeline_and_the_previous_one_keeps_serving(
    control_plane,  # noqa: F811 - the fixture imported from test_device_roundtrip
    settings,
    tmp_path,
):
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    first = publish_sample_pipeline()
    device, secret = provision(control_plane)
    port = free_port()
    agent = start_agent(control_plane, device, secret, tmp_path / "agent", port)
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 30, agent.output)
    job = deployment_create(actor=ACTOR, device=device, pipeline_version=first, timeout_seconds=120)
    wait_until(lambda: job_status(job) == "SUCCEEDED", 60, lambda: agent.output()[-2000:])

    # v2 swaps the classifier for a new version whose stored bytes are then tampered with
    stages = first.ordered_stages()
    newer = publish_model_version(stages[1].version.model, build_classifier(slow_layers=2, hidden=16))
    second = pipeline_version_publish(
        actor=ACTOR,
        version=pipeline_version_create(
            actor=ACTOR, pipeline=first.pipeline,
            stages=[{"name": "detect", "version": stages[0].version, "condition": None},
                    {"name": "classify", "version": newer, "condition": dict(PIPELINE_CONDITION)}],
        ),
    )  # fmt: skip
    with default_storage.open(newer.artifact_key, "wb") as handle:
        handle.write(b"x" * newer.size)
    rejected = deployment_create(actor=ACTOR, device=device, pipeline_version=second, timeout_seconds=120)
    wait_until(lambda: job_status(rejected) in {"REJECTED", "FAILED"}, 60, lambda: agent.output()[-2000:])
    assert rejected.status == "REJECTED"
    assert rejected.reason.startswith("stage 2 (classify): sha256 mismatch")

    answer = infer(port, MOTION)
    assert answer["version"] == first.number
    assert [s["status"] for s in answer["stages"]] == ["ran", "ran"]
    assert Installation.objects.get(device=device, until__isnull=True).pipeline_version_id == first.pk


def test_the_fleet_simulator_installs_a_pipeline_and_reports_per_stage_latency(
    control_plane,  # noqa: F811 - the fixture imported from test_device_roundtrip
    settings,
    tmp_path,
):
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    pipeline_version = publish_sample_pipeline()
    specs = []
    for _ in range(2):
        device, secret = provision(control_plane)
        specs.append({"uid": device.uid, "secret": secret, "profile": "rpi4"})
    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps(specs))
    sim = control_plane["start"](
        "sim", "-m", "agent.simulator", "--api", control_plane["api"],
        "--mqtt", f"mqtt://127.0.0.1:{control_plane['mosquitto'].port}",
        "--devices", "2", "--devices-file", str(devices_file), "--duration", "120",
        "--telemetry-interval", "1", "--seed", "5",
    )  # fmt: skip
    wait_until(lambda: Device.objects.online().count() == 2, 60, sim.output)
    jobs = [
        deployment_create(actor=ACTOR, device=Device.objects.get(uid=spec["uid"]), pipeline_version=pipeline_version)
        for spec in specs
    ]
    for job in jobs:
        wait_until(lambda j=job: job_status(j) in {"SUCCEEDED", "FAILED", "REJECTED"}, 60, sim.output)
        assert job.status == "SUCCEEDED", job.reason

    def staged() -> TelemetrySample | None:
        return (
            TelemetrySample.objects.filter(model_name="motion-then-classify", requests__gt=5).exclude(stages=[]).first()
        )

    wait_until(lambda: staged() is not None, 60, sim.output)
    stages = {stage["name"]: stage for stage in staged().stages}
    assert set(stages) == {"detect", "classify"}
    # every request runs the detector; the classifier only when its condition held (half the time, simulated)
    assert stages["detect"]["skipped"] == 0 and stages["classify"]["skipped"] > 0
    assert stages["detect"]["requests"] == stages["classify"]["requests"] + stages["classify"]["skipped"]
    assert stages["classify"]["latency_ms"]["p95"] > 0
