"""`python -m agent.simulator` as a real process against the embedded broker and the stand-in control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.simulator import PROFILES, fleet_plan, load_profile_overrides
from broker.passwords import hash_secret
from fleet.demo_fleet import PROFILES as DEMO_PROFILES
from protocol import device_topics as topics
from protocol.messages import parse_state, parse_status, parse_telemetry
from tests.agent.conftest import MODEL, ROOT, WAIT, Bridge, make_onnx


class SimProcess:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent.simulator", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env=os.environ | {"PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        output = self.log.read_text(errors="replace")
        assert code == 0, output[-3000:]
        return output


@pytest.fixture
def run_sim(broker, cp_http, device_hashes, tmp_path) -> Iterator[Callable[..., tuple[SimProcess, list[str]]]]:
    started: list[SimProcess] = []

    def run(count: int, *extra: str) -> tuple[SimProcess, list[str]]:
        rows = [{"uid": uid, "secret": f"s-{uid}", "profile": profile.name} for uid, profile in fleet_plan(count, 1)]
        for row in rows:
            device_hashes[row["uid"]] = hash_secret(row["secret"], iterations=1)  # fast logins for 200 devices
        devices_file = tmp_path / "devices.json"
        devices_file.write_text(json.dumps(rows))
        sim = SimProcess(
            ["--api", cp_http.url, "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--devices", str(count),
             "--devices-file", str(devices_file), "--telemetry-interval", "2", "--seed", "7", *extra],
            tmp_path / "sim.log",
        )  # fmt: skip
        started.append(sim)
        return sim, [r["uid"] for r in rows]

    yield run
    for sim in started:
        if sim.process.poll() is None:
            sim.process.kill()
            sim.process.wait()


def online_uids(messages: list[Any]) -> set[str]:
    """Devices whose latest status is online."""
    latest: dict[str, str] = {}
    for m in messages:
        uid, kind, _ = topics.parse_topic(m.topic)
        if kind == "status":
            latest[uid] = parse_status(m.payload).state
    return {uid for uid, state in latest.items() if state == "online"}


def test_200_devices_connect_and_leave_retained_online_status_then_go_offline_cleanly(bridge, broker, run_sim):
    sim, _ = run_sim(200)

    bridge.wait_for(lambda ms: len(online_uids(ms)) == 200 or None, timeout=WAIT)

    late = Bridge(broker.port)  # a new subscriber gets what is retained
    try:
        late.wait_for(
            lambda ms: (
                (len(online_uids(ms)) == 200 and len({m.topic for m in ms if m.topic.endswith("/state")}) == 200)
                or None
            )
        )
        assert all(m.retain for m in late.messages if m.topic.endswith("/status"))
        states = [parse_state(m.payload) for m in late.messages if m.topic.endswith("/state")]
        assert len({s.hardware.cpu for s in states}) > 1  # a mix of hardware profiles
    finally:
        late.close()
    output = sim.stop()
    assert "done after" in output
    bridge.wait_for(lambda ms: not online_uids(ms) or None)  # every device said offline on the way out


def test_job_to_simulated_devices_succeeds_and_they_report_telemetry_for_the_new_version(
    bridge, control_plane, run_sim
):
    artifact = make_onnx(5)
    sim, uids = run_sim(10)
    bridge.wait_for(lambda ms: len(online_uids(ms)) == 10 or None)
    jobs = {uid: control_plane.job(artifact, version=1) for uid in uids[:3]}

    for uid, job in jobs.items():
        bridge.notify(uid, [job])

    finals = [bridge.wait_terminal(job.job_id) for job in jobs.values()]
    assert [f.status for f in finals] == ["SUCCEEDED"] * 3, [f.reason for f in finals]
    steps = [u.step for u in bridge.updates(jobs[uids[0]].job_id) if u.step]
    # as the agent: the first update at once, quick steps after it held back (agent/ledger.py)
    assert steps[0] == "downloading" and set(steps) <= {"downloading", "verifying", "activating"}

    def telemetry_for_v1(messages):
        for m in messages:
            if m.topic == topics.telemetry_topic(uids[0]):
                for sample in parse_telemetry(m.payload).samples:
                    if (sample.model, sample.version) == (MODEL, 1) and sample.requests:
                        return sample
        return None

    sample = bridge.wait_for(telemetry_for_v1)
    assert sample.latency_ms.p50 > 0
    assert set(sample.inputs) == {"x[0]", "x[1]", "x[2]", "x[3]"}
    sim.stop()


def test_install_failure_rate_one_fails_every_install(bridge, control_plane, run_sim):
    sim, uids = run_sim(5, "--install-failure-rate", "1")
    bridge.wait_for(lambda ms: len(online_uids(ms)) == 5 or None)
    jobs = [control_plane.job(make_onnx(6), version=1) for _ in uids[:2]]

    for uid, job in zip(uids, jobs, strict=False):
        bridge.notify(uid, [job])

    finals = [bridge.wait_terminal(job.job_id) for job in jobs]
    assert [(f.status, f.reason) for f in finals] == [("FAILED", "simulated install failure")] * 2
    sim.stop()


def test_simulated_device_refuses_a_tampered_artifact_like_the_agent(bridge, control_plane, run_sim):
    sim, uids = run_sim(3)
    bridge.wait_for(lambda ms: len(online_uids(ms)) == 3 or None)
    artifact = make_onnx(8)
    tampered = bytearray(artifact)
    tampered[-5] ^= 0x10
    job = control_plane.job(artifact, version=1, served=bytes(tampered))

    bridge.notify(uids[0], [job])

    final = bridge.wait_terminal(job.job_id)
    assert final.status == "REJECTED"
    assert final.reason.startswith(f"sha256 mismatch: expected {job.sha256}, got ")
    sim.stop()


def test_profiles_mirror_the_demo_fleet():
    assert set(PROFILES) == set(DEMO_PROFILES)
    for name, sim in PROFILES.items():
        demo = DEMO_PROFILES[name]
        assert (sim.tier, sim.arch, sim.cpu, sim.accelerator, sim.runtimes) == (
            demo.tier, demo.arch, demo.cpu, demo.accelerator, demo.runtimes,
        )  # fmt: skip
        assert sim.memory_mb in demo.memory_choices


def test_profile_file_overrides_factors_per_profile_and_version(tmp_path):
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"rpi4": {"speed_factor": 5, "versions": {f"{MODEL}@3": 9.5}}}))

    profiles = load_profile_overrides(path)

    assert profiles["rpi4"].factor_for(MODEL, 2) == 5.0
    assert profiles["rpi4"].factor_for(MODEL, 3) == 9.5
    assert profiles["rpi3"] == PROFILES["rpi3"]
