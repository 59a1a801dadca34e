"""Issue 14, finding 5: a job's kind, device and version are believed only when the control plane signed them.

Before, `kind` was not signed and the agent skipped its version check for `"rollback"`: anyone able to
publish on a device's `jobs/notify` could downgrade it to any older signed version, revoked ones
included. Each test drives the real agent process over MQTT (tests/agent/conftest.py).
"""

from __future__ import annotations

from protocol import device_topics as topics
from protocol.messages import parse_state
from tests.agent.conftest import Signer, make_onnx, signed
from tests.agent.test_agent import X, install, wait_online


def serving_version(agent) -> int:
    status, body = agent.infer({"x": X})
    assert status == 200, body
    return body["version"]


def at_v2(bridge, control_plane, start_agent):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    v1, v2 = make_onnx(1), make_onnx(2)
    assert install(bridge, control_plane, agent, v1, version=1)[1].status == "SUCCEEDED"
    assert install(bridge, control_plane, agent, v2, version=2)[1].status == "SUCCEEDED"
    return agent, v1


def test_agent_declares_that_it_verifies_job_envelopes(bridge, start_agent):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    state = parse_state([m for m in bridge.messages if m.topic == topics.state_topic(agent.uid)][-1].payload)
    assert "signed_jobs" in (state.capabilities or [])


def test_unsigned_rollback_is_dropped_and_cannot_downgrade(bridge, control_plane, start_agent):
    agent, v1 = at_v2(bridge, control_plane, start_agent)
    forged = control_plane.job(v1, version=1, kind="rollback")  # the manifest is genuinely signed

    bridge.notify(agent.uid, [forged], sign=False)
    # jobs run in arrival order: once this one is done, the forged one was handled (or dropped)
    _, barrier = install(bridge, control_plane, agent, make_onnx(3), version=3)

    assert barrier.status == "SUCCEEDED", barrier.reason
    assert bridge.updates(forged.job_id) == []  # never queued, never run
    assert serving_version(agent) == 3


def test_rollback_whose_envelope_was_signed_as_an_install_is_rejected(bridge, control_plane, start_agent, signer):
    agent, v1 = at_v2(bridge, control_plane, start_agent)
    job = control_plane.job(v1, version=1, kind="rollback")
    forged = job.model_copy(update={"envelope": signed(signer, job, agent.uid, kind="install").envelope})

    bridge.notify(agent.uid, [forged])
    final = bridge.wait_terminal(forged.job_id)

    assert final.status == "REJECTED"
    assert final.reason == "job envelope kind 'install' does not match the job's 'rollback'"
    assert serving_version(agent) == 2


def test_rollback_signed_for_another_device_or_by_another_key_is_rejected(bridge, control_plane, start_agent):
    agent, v1 = at_v2(bridge, control_plane, start_agent)
    other_device = signed(control_plane.signer, control_plane.job(v1, version=1, kind="rollback"), "another-device")
    stranger = Signer()
    other_key = signed(stranger, control_plane.job(v1, version=1, kind="rollback"), agent.uid)

    bridge.notify(agent.uid, [other_device, other_key])

    first, second = bridge.wait_terminal(other_device.job_id), bridge.wait_terminal(other_key.job_id)
    assert (first.status, first.reason) == ("REJECTED", "job envelope is for device 'another-device', not this one")
    assert (second.status, second.reason) == ("REJECTED", f"job envelope: unknown signing key {stranger.key_id}")
    assert serving_version(agent) == 2


def test_a_revoked_version_is_refused_even_as_a_signed_rollback_and_the_agent_remembers(
    bridge, control_plane, start_agent, signer
):
    agent, v1 = at_v2(bridge, control_plane, start_agent)
    revoked = signed(signer, control_plane.job(v1, version=1, kind="rollback"), agent.uid, revoked=[1])
    bridge.notify(agent.uid, [revoked])
    final = bridge.wait_terminal(revoked.job_id)
    assert (final.status, final.reason) == ("REJECTED", "version 1 of tiny-classifier is revoked")

    # an older envelope that does not list the revocation (replayed, or signed before it) cannot undo it
    stale = signed(signer, control_plane.job(v1, version=1, kind="rollback"), agent.uid, revoked=[])
    bridge.notify(agent.uid, [stale])
    again = bridge.wait_terminal(stale.job_id)
    assert (again.status, again.reason) == ("REJECTED", "version 1 of tiny-classifier is revoked")
    assert serving_version(agent) == 2


def test_expired_envelope_is_dropped_and_a_properly_signed_rollback_runs(bridge, control_plane, start_agent, signer):
    agent, v1 = at_v2(bridge, control_plane, start_agent)
    expired = signed(signer, control_plane.job(v1, version=1, kind="rollback"), agent.uid, ttl=-60)
    bridge.notify(agent.uid, [expired])

    _, rolled_back = install(bridge, control_plane, agent, v1, version=1, kind="rollback")

    assert rolled_back.status == "SUCCEEDED", rolled_back.reason
    assert bridge.updates(expired.job_id) == []
    assert serving_version(agent) == 1
