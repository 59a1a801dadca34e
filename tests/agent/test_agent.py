"""The real `python -m agent` against the embedded broker and a stand-in control plane.

Each test drives the agent only through the protocol (MQTT) and its local HTTP API.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from protocol import device_topics as topics
from protocol.messages import JobsGetAccepted, encode, parse_jobs_get, parse_state, parse_status, parse_telemetry
from tests.agent.conftest import MODEL, Bridge, Signer, make_onnx, signed, wait_session_offline

X = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]]


def expected_probs(artifact: bytes) -> np.ndarray:
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    return session.run(["probs"], {"x": np.asarray(X, dtype=np.float32)})[0]


def wait_online(bridge: Bridge, uid: str, count: int = 1) -> None:
    """Until the device has said online `count` times and asked for its jobs after the last one."""
    status, get = topics.status_topic(uid), topics.jobs_get_topic(uid)

    def ready(messages):
        onlines = [i for i, m in enumerate(messages) if m.topic == status and parse_status(m.payload).state == "online"]
        return len(onlines) >= count and any(m.topic == get for m in messages[onlines[count - 1] :])

    bridge.wait_for(ready)


def install(bridge: Bridge, control_plane, agent, artifact: bytes, version: int, **kwargs):
    job = control_plane.job(artifact, version=version, **kwargs)
    bridge.notify(agent.uid, [job])
    return job, bridge.wait_terminal(job.job_id)


@pytest.fixture
def v1() -> bytes:
    return make_onnx(1)


@pytest.fixture
def v2() -> bytes:
    return make_onnx(2)


def test_agent_says_online_reports_state_and_asks_for_jobs_on_connect(bridge, start_agent):
    agent = start_agent()
    wait_online(bridge, agent.uid)

    state_messages = [m for m in bridge.messages if m.topic == topics.state_topic(agent.uid)]
    assert state_messages, "no reported state"
    state = parse_state(state_messages[-1].payload)
    assert state.hardware.cpu == "test cpu x2"
    assert state.active == {}
    assert [r.name for r in state.runtimes] == ["onnxruntime"]
    assert state.inference_url == f"http://127.0.0.1:{agent.http_port}/infer"  # where resolve sends callers
    status, code = agent.infer({"x": X})
    assert (status, code) == (503, {"error": "no model is active"})


def test_job_installs_activates_and_serves_the_real_model(bridge, control_plane, start_agent, v1):
    agent = start_agent()
    wait_online(bridge, agent.uid)

    job, final = install(bridge, control_plane, agent, v1, version=1)

    assert final.status == "SUCCEEDED", final.reason
    updates = bridge.updates(job.job_id)
    assert [u.seq for u in updates] == sorted({u.seq for u in updates})  # strictly increasing, no repeats
    steps = [u.step for u in updates if u.status == "IN_PROGRESS"]
    # the first update goes at once; the quick steps after it are held back and replaced by the next one
    # (agent/ledger.py, PROGRESS_INTERVAL_S), down to the final SUCCEEDED
    assert steps[0] == "downloading" and set(steps) <= {"downloading", "verifying", "activating"}
    assert updates[-1].status == "SUCCEEDED" and updates[-1].seq >= len(updates)
    status, body = agent.infer({"x": X})
    assert status == 200
    assert (body["model"], body["version"]) == (MODEL, 1)
    np.testing.assert_allclose(body["outputs"]["probs"], expected_probs(v1), rtol=1e-6)
    state = bridge.wait_for(
        lambda ms: [s for m in ms if m.topic == topics.state_topic(agent.uid) and (s := parse_state(m.payload)).active]
    )[-1]
    assert state.active[MODEL].version == 1
    assert getattr(state.slots, state.active[MODEL].slot).sha256 == job.sha256


def test_bad_inputs_are_400_with_a_reason(bridge, control_plane, start_agent, v1):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    assert install(bridge, control_plane, agent, v1, version=1)[1].status == "SUCCEEDED"

    assert agent.infer({"x": [[1.0, 2.0]]}) == (
        400,
        {"error": "input 'x' has shape [1, 2], the model expects ['?', 4]"},
    )
    assert agent.infer({"y": X})[0] == 400
    assert agent.infer({"x": [[1, 2, 3, 4], [1, 2]]})[0] == 400
    assert agent.infer({"x": "abc"})[0] == 400


def test_tampered_artifact_is_rejected_and_the_previous_model_keeps_serving(bridge, control_plane, start_agent, v1, v2):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    assert install(bridge, control_plane, agent, v1, version=1)[1].status == "SUCCEEDED"
    tampered = bytearray(v2)
    tampered[len(tampered) // 2] ^= 0x01

    job, final = install(bridge, control_plane, agent, v2, version=2, served=bytes(tampered))

    assert final.status == "REJECTED"
    assert final.reason.startswith(f"sha256 mismatch: expected {job.sha256}, got ")
    status, body = agent.infer({"x": X})
    assert (status, body["version"]) == (200, 1)
    np.testing.assert_allclose(body["outputs"]["probs"], expected_probs(v1), rtol=1e-6)


def test_manifest_signed_by_an_unknown_key_is_rejected(bridge, control_plane, start_agent, v1):
    agent = start_agent()
    wait_online(bridge, agent.uid)

    job, final = install(bridge, control_plane, agent, v1, version=1, signer=Signer())

    assert final.status == "REJECTED"
    assert final.reason == f"signature does not verify with key {job.key_id}"
    assert agent.infer({"x": X})[0] == 503


def test_manifest_that_does_not_describe_the_job_is_rejected(bridge, control_plane, start_agent, v1):
    agent = start_agent()
    wait_online(bridge, agent.uid)

    _, final = install(bridge, control_plane, agent, v1, version=1, manifest_changes={"version": 7})

    assert final.status == "REJECTED"
    assert final.reason == "manifest version 7 does not match the job's 1"


def test_older_version_is_rejected_unless_the_job_is_a_rollback(bridge, control_plane, start_agent, v1, v2):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    assert install(bridge, control_plane, agent, v1, version=1)[1].status == "SUCCEEDED"
    assert install(bridge, control_plane, agent, v2, version=2)[1].status == "SUCCEEDED"
    downloads_before = len([p for p in control_plane.http.requests if p.startswith("/artifacts/")])

    _, refused = install(bridge, control_plane, agent, v1, version=1)
    _, same = install(bridge, control_plane, agent, v2, version=2)
    assert (refused.status, refused.reason) == ("REJECTED", "version 1 is older than active version 2")
    assert (same.status, same.reason) == ("REJECTED", "version 2 is not newer than active version 2")
    # refused by policy before any byte was transferred
    assert len([p for p in control_plane.http.requests if p.startswith("/artifacts/")]) == downloads_before

    _, rolled_back = install(bridge, control_plane, agent, v1, version=1, kind="rollback")
    assert rolled_back.status == "SUCCEEDED", rolled_back.reason
    status, body = agent.infer({"x": X})
    assert (status, body["version"]) == (200, 1)
    np.testing.assert_allclose(body["outputs"]["probs"], expected_probs(v1), rtol=1e-6)


def test_finished_job_id_is_dropped_when_it_comes_again(bridge, control_plane, start_agent, v1, v2):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    job, final = install(bridge, control_plane, agent, v1, version=1)
    assert final.status == "SUCCEEDED"
    updates_before = len(bridge.updates(job.job_id))

    bridge.notify(agent.uid, [job])  # a QoS 1 redelivery
    _, barrier = install(bridge, control_plane, agent, v2, version=2)  # handled after the duplicate

    assert barrier.status == "SUCCEEDED"
    assert len(bridge.updates(job.job_id)) == updates_before


def test_model_that_fails_its_smoke_test_fails_the_job_and_keeps_the_previous_one(
    bridge, control_plane, start_agent, v1
):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    assert install(bridge, control_plane, agent, v1, version=1)[1].status == "SUCCEEDED"

    _, final = install(bridge, control_plane, agent, b"this is not an onnx model", version=2)

    assert final.status == "FAILED"
    assert final.reason.startswith("model does not load")
    assert agent.infer({"x": X})[1]["version"] == 1


def test_canceled_queued_job_is_reported_canceled(bridge, control_plane, start_agent, v1, v2):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    first = control_plane.job(v1, version=1)
    second = control_plane.job(v2, version=2)

    bridge.notify(agent.uid, [first, second], cancel=[second.job_id])

    assert bridge.wait_terminal(second.job_id).status == "CANCELED"
    assert bridge.wait_terminal(first.job_id).status == "SUCCEEDED"


def test_job_sent_while_the_agent_is_down_runs_after_restart_and_the_model_survives_restart(
    bridge, broker, control_plane, start_agent, v1, v2
):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    assert install(bridge, control_plane, agent, v1, version=1)[1].status == "SUCCEEDED"
    agent.stop()
    wait_session_offline(broker, agent.uid)
    offline = [parse_status(m.payload) for m in bridge.messages if m.topic == topics.status_topic(agent.uid)]
    assert offline[-1].state == "offline"

    job = control_plane.job(v2, version=2)
    bridge.notify(agent.uid, [job])  # queued by the broker in the device's persistent session
    agent.start()

    final = bridge.wait_terminal(job.job_id)
    assert final.status == "SUCCEEDED", final.reason
    status, body = agent.infer({"x": X})
    assert (status, body["version"]) == (200, 2)

    agent.stop()
    agent.start()
    wait_online(bridge, agent.uid, count=3)
    status, body = agent.infer({"x": X})
    assert (status, body["version"]) == (200, 2)
    np.testing.assert_allclose(body["outputs"]["probs"], expected_probs(v2), rtol=1e-6)


def test_telemetry_reports_latency_and_input_statistics(bridge, control_plane, start_agent, v1):
    agent = start_agent(telemetry_interval=0.5)
    wait_online(bridge, agent.uid)
    assert install(bridge, control_plane, agent, v1, version=1)[1].status == "SUCCEEDED"
    for _ in range(3):
        assert agent.infer({"x": X})[0] == 200
    assert agent.infer({"x": [[1.0]]})[0] == 400

    def sample(messages):
        for m in messages:
            if m.topic == topics.telemetry_topic(agent.uid):
                for s in parse_telemetry(m.payload).samples:
                    if s.requests:
                        return s
        return None

    got = bridge.wait_for(sample)
    assert (got.model, got.version, got.requests, got.errors) == (MODEL, 1, 4, 1)
    assert 0 < got.latency_ms.p50 <= got.latency_ms.p99 <= got.latency_ms.max
    column0 = np.asarray([row[0] for row in X] * 3)
    stats = got.inputs["x[0]"]
    assert stats.count == 6
    assert stats.mean == pytest.approx(column0.mean())
    assert stats.var == pytest.approx(column0.var())
    assert (stats.min, stats.max) == (0.5, 1.0)


def test_jobs_get_reply_delivers_a_missed_job_and_a_finished_one_is_only_reported_again(
    bridge, control_plane, start_agent, v1, signer
):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    [request] = [parse_jobs_get(m.payload) for m in bridge.messages if m.topic == topics.jobs_get_topic(agent.uid)]
    job = signed(signer, control_plane.job(v1, version=1), agent.uid)

    reply = JobsGetAccepted(schema_version=1, request_id=request.request_id, jobs=[job])
    bridge.publish(topics.jobs_get_accepted_topic(agent.uid), encode(reply))
    first = bridge.wait_terminal(job.job_id)
    assert first.status == "SUCCEEDED"
    sent = len(bridge.updates(job.job_id))

    # The control plane still lists it (it lost the outcome): the device re-reports, it does not re-run.
    bridge.publish(topics.jobs_get_accepted_topic(agent.uid), encode(reply))
    again = bridge.wait_for(lambda _ms: len(bridge.updates(job.job_id)) > sent and bridge.updates(job.job_id)[-1])
    assert (again.status, again.seq) == ("SUCCEEDED", first.seq + 1)
    assert len(bridge.updates(job.job_id)) == sent + 1
