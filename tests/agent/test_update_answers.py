"""The real agent keeps each job update until the control plane answers it (docs/protocol.md, "Answers").

The stand-in bridge (tests/agent/conftest.py) records updates and answers only when a test says so, so
an answer that never comes is the default here: the agent must send its update again, with backoff,
across a SIGKILL, and stop once `update/accepted` or `update/rejected` arrives.
"""

from __future__ import annotations

import json

from protocol import device_topics as topics
from protocol.messages import JobUpdateAccepted, JobUpdateRejected, encode, parse_state
from tests.agent.conftest import WAIT, make_onnx
from tests.agent.test_agent import wait_online
from tests.processes import wait_until

V1 = make_onnx(1)


def sends_of(bridge, job_id: str, seq: int) -> int:
    return sum(1 for u in bridge.updates(job_id) if u.seq == seq)


def unanswered_on_disk(agent) -> dict:
    path = agent.log.parent / agent.uid / "state.json"
    return json.loads(path.read_text()).get("unacked", {})


def answer(bridge, uid: str, job_id: str, status: str, seq: int) -> None:
    message = JobUpdateAccepted(schema_version=1, job_id=job_id, status=status, seq=seq)  # type: ignore[arg-type]
    bridge.publish(topics.job_update_accepted_topic(uid, job_id), encode(message))


def test_an_unanswered_final_update_is_sent_again_until_it_is_accepted(bridge, control_plane, start_agent):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    job = control_plane.job(V1, version=1)
    bridge.notify(agent.uid, [job])
    final = bridge.wait_terminal(job.job_id)
    assert final.status == "SUCCEEDED"

    # no answer: the same update (same seq, so a duplicate is harmless) comes again after the backoff
    bridge.wait_for(lambda _: sends_of(bridge, job.job_id, final.seq) >= 2, timeout=WAIT + 10)
    assert job.job_id in unanswered_on_disk(agent)
    # the retained state lists the outcome too (reconciliation), with its seq
    states = [parse_state(m.payload) for m in bridge.messages if m.topic == topics.state_topic(agent.uid)]
    assert [(r.job_id, r.status, r.seq) for r in states[-1].recent_jobs or []] == [(job.job_id, "SUCCEEDED", final.seq)]
    assert "acked_updates" in (states[-1].capabilities or [])

    answer(bridge, agent.uid, job.job_id, "SUCCEEDED", final.seq)
    wait_until(lambda: unanswered_on_disk(agent) == {}, WAIT, "the answer to be taken")
    sent = sends_of(bridge, job.job_id, final.seq)
    # a barrier: another job's whole life after the answer, and still no further copy of the answered update
    later = control_plane.job(make_onnx(2), version=2)
    bridge.notify(agent.uid, [later])
    assert bridge.wait_terminal(later.job_id).status == "SUCCEEDED"
    assert sends_of(bridge, job.job_id, final.seq) == sent


def test_an_agent_killed_before_the_answer_sends_its_result_again_after_restart(bridge, control_plane, start_agent):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    job = control_plane.job(V1, version=1)
    bridge.notify(agent.uid, [job])
    final = bridge.wait_terminal(job.job_id)
    assert final.status == "SUCCEEDED"
    wait_until(lambda: job.job_id in unanswered_on_disk(agent), WAIT, "the unanswered update on disk")

    agent.process.kill()  # SIGKILL: no clean shutdown, no answer ever arrived
    agent.process.wait(WAIT)
    before = sends_of(bridge, job.job_id, final.seq)
    agent.start()

    wait_online(bridge, agent.uid, count=2)
    bridge.wait_for(lambda _: sends_of(bridge, job.job_id, final.seq) > before)  # the same update, on connect
    assert all(u.seq <= final.seq for u in bridge.updates(job.job_id))  # not a new outcome: the stored one
    answer(bridge, agent.uid, job.job_id, "SUCCEEDED", final.seq)
    wait_until(lambda: unanswered_on_disk(agent) == {}, WAIT, "the answer to be taken")


def test_a_rejected_update_is_not_sent_again(bridge, control_plane, start_agent):
    agent = start_agent()
    wait_online(bridge, agent.uid)
    job = control_plane.job(V1, version=1)
    bridge.notify(agent.uid, [job])
    final = bridge.wait_terminal(job.job_id)

    rejected = JobUpdateRejected(schema_version=1, job_id=job.job_id, seq=final.seq, reason_code="unknown_job")
    bridge.publish(topics.job_update_rejected_topic(agent.uid, job.job_id), encode(rejected))
    wait_until(lambda: unanswered_on_disk(agent) == {}, WAIT, "the rejection to be taken")
