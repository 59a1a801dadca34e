"""The answers to job updates and the recent results in a state (docs/protocol.md, issue 13)."""

from __future__ import annotations

import json

import pytest

from broker.acl import Principal, may_publish, may_receive, may_subscribe
from protocol import device_topics as t
from protocol.messages import (
    MAX_RECENT_JOBS,
    JobUpdateAccepted,
    JobUpdateRejected,
    ProtocolError,
    encode,
    parse_job_update_accepted,
    parse_job_update_rejected,
    parse_state,
)

UID = "rpi4-lyon-07"
JOB_ID = "0b0e9c1a-1111-4222-8333-444455556666"
P = f"fogdeck/v1/devices/{UID}"
STATE = {
    "schema_version": 1, "ts": "2025-03-01T12:00:00Z", "agent_version": "0.1.0",
    "hardware": {"arch": "aarch64", "cpu": "A72", "memory_mb": 4096, "accelerator": "none"},
    "runtimes": [], "slots": {"a": None, "b": None}, "active": {},
}  # fmt: skip


def test_answer_topics_sit_below_the_update_and_are_not_the_bridges_own_subscriptions():
    assert t.job_update_accepted_topic(UID, JOB_ID) == f"{P}/jobs/{JOB_ID}/update/accepted"
    assert t.job_update_rejected_topic(UID, JOB_ID) == f"{P}/jobs/{JOB_ID}/update/rejected"
    assert t.job_answer_of(UID, t.job_update_accepted_topic(UID, JOB_ID)) == (JOB_ID, "accepted")
    assert t.job_answer_of(UID, t.job_update_rejected_topic(UID, JOB_ID)) == (JOB_ID, "rejected")
    assert t.job_answer_of(UID, t.job_update_topic(UID, JOB_ID)) is None
    assert t.job_answer_of("other", t.job_update_accepted_topic(UID, JOB_ID)) is None
    with pytest.raises(ProtocolError):  # the bridge never takes an answer for a device message
        t.parse_topic(t.job_update_accepted_topic(UID, JOB_ID))


def test_a_device_may_read_its_own_answers_only():
    device, other = Principal(UID, "device"), Principal("other-device", "device")
    assert may_subscribe(device, t.job_update_answers_filter(UID))
    assert may_receive(device, t.job_update_accepted_topic(UID, JOB_ID))
    assert not may_subscribe(other, t.job_update_answers_filter(UID))
    assert not may_receive(other, t.job_update_rejected_topic(UID, JOB_ID))
    assert may_publish(Principal("fogdeck-control", "service"), t.job_update_accepted_topic(UID, JOB_ID))


def test_answers_round_trip_and_are_strict():
    accepted = JobUpdateAccepted(schema_version=1, job_id=JOB_ID, status="SUCCEEDED", seq=7)
    assert parse_job_update_accepted(encode(accepted)) == accepted
    rejected = JobUpdateRejected(schema_version=1, job_id=JOB_ID, seq=None, reason_code="invalid_message")
    assert json.loads(encode(rejected))["seq"] is None
    assert parse_job_update_rejected(encode(rejected)) == rejected
    with pytest.raises(ProtocolError) as refused:
        parse_job_update_rejected(encode(rejected).replace(b"invalid_message", b"because"))
    assert refused.value.reason_code == "invalid_message"


def test_a_state_may_list_recent_results_and_an_older_state_still_parses():
    assert parse_state(json.dumps(STATE).encode()).recent_jobs is None
    listed = {**STATE, "recent_jobs": [{"job_id": JOB_ID, "status": "SUCCEEDED", "seq": 7}]}
    assert parse_state(json.dumps(listed).encode()).recent_jobs[0].seq == 7
    # only final outcomes, and a bounded list
    for bad in ([{"job_id": JOB_ID, "status": "IN_PROGRESS", "seq": 1}],
                [{"job_id": JOB_ID, "status": "FAILED", "seq": 1}] * (MAX_RECENT_JOBS + 1)):  # fmt: skip
        with pytest.raises(ProtocolError):
            parse_state(json.dumps({**STATE, "recent_jobs": bad}).encode())
    # left out of the wire form when absent, so a control plane that predates it parses the state
    assert "recent_jobs" not in json.loads(encode(parse_state(json.dumps(STATE).encode())))
