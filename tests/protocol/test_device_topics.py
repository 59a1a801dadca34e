"""Topic builders and the bridge's topic/payload parser."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import device_topics as t
from protocol.messages import JobsGet, JobUpdate, ProtocolError, encode, utc_now

UID = "rpi4-lyon-07"
JOB_ID = "0b0e9c1a-1111-4222-8333-444455556666"
P = f"fogdeck/v1/devices/{UID}"


def test_builders_put_every_topic_under_the_device_prefix():
    assert t.status_topic(UID) == f"{P}/status"
    assert t.state_topic(UID) == f"{P}/state"
    assert t.jobs_notify_topic(UID) == f"{P}/jobs/notify"
    assert t.jobs_get_topic(UID) == f"{P}/jobs/get"
    assert t.jobs_get_accepted_topic(UID) == f"{P}/jobs/get/accepted"
    assert t.job_update_topic(UID, JOB_ID) == f"{P}/jobs/{JOB_ID}/update"
    assert t.telemetry_topic(UID) == f"{P}/telemetry"


@pytest.mark.parametrize(("uid", "job_id"), [("bad/uid", JOB_ID), ("+", JOB_ID), (UID, "7"), (UID, "#")])
def test_builders_refuse_ids_that_would_change_the_topic(uid, job_id):
    with pytest.raises(ValueError, match="invalid"):
        t.job_update_topic(uid, job_id)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (t.status_topic(UID), (UID, "status", None)),
        (t.state_topic(UID), (UID, "state", None)),
        (t.jobs_get_topic(UID), (UID, "jobs_get", None)),
        (t.job_update_topic(UID, JOB_ID), (UID, "job_update", JOB_ID)),
        (t.telemetry_topic(UID), (UID, "telemetry", None)),
    ],
)
def test_parse_topic_inverts_the_builders(topic, expected):
    assert t.parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        f"{P}/jobs/notify",  # control plane → device: never received by the bridge
        f"{P}/jobs/get/accepted",
        f"{P}/jobs/not-a-uuid/update",
        f"{P}/jobs/{JOB_ID}/update/extra",
        f"{P}/status/",
        f"{P}",
        "fogdeck/v1/devices/bad uid/status",
        "fogdeck/v2/devices/x/status",
        "",
        "/",
    ],
)
def test_anything_else_is_an_unknown_topic(topic):
    with pytest.raises(ProtocolError) as caught:
        t.parse_topic(topic)
    assert caught.value.reason_code == "unknown_topic"


@given(st.text(max_size=120))
def test_parse_topic_raises_only_protocol_error(topic):
    try:
        uid, kind, job_id = t.parse_topic(topic)
    except ProtocolError as exc:
        assert exc.reason_code == "unknown_topic"
    else:
        assert (job_id is not None) == (kind == "job_update")
        assert topic.startswith(f"fogdeck/v1/devices/{uid}/")


def _update(job_id: str) -> bytes:
    return encode(JobUpdate(schema_version=1, job_id=job_id, seq=1, status="QUEUED", ts=utc_now()))


def test_parse_device_message_returns_the_typed_message():
    incoming = t.parse_device_message(t.job_update_topic(UID, JOB_ID), _update(JOB_ID))

    assert (incoming.uid, incoming.kind, incoming.job_id) == (UID, "job_update", JOB_ID)
    assert isinstance(incoming.message, JobUpdate)


def test_job_update_for_another_job_than_its_topic_is_a_mismatch():
    other = "ffffffff-1111-4222-8333-444455556666"
    with pytest.raises(ProtocolError) as caught:
        t.parse_device_message(t.job_update_topic(UID, JOB_ID), _update(other))
    assert caught.value.reason_code == "topic_mismatch"


def test_payload_of_another_kind_is_invalid_for_the_topic():
    payload = encode(JobsGet(schema_version=1, request_id="r1"))
    with pytest.raises(ProtocolError) as caught:
        t.parse_device_message(t.status_topic(UID), payload)
    assert caught.value.reason_code == "invalid_message"


def test_bridge_subscriptions_match_exactly_the_device_topics():
    # MQTT matching, spelled out: '+' is one level.
    def matches(flt: str, topic: str) -> bool:
        f, p = flt.split("/"), topic.split("/")
        return len(f) == len(p) and all(a in ("+", b) for a, b in zip(f, p, strict=True))

    inbound = [
        t.status_topic(UID),
        t.state_topic(UID),
        t.jobs_get_topic(UID),
        t.job_update_topic(UID, JOB_ID),
        t.telemetry_topic(UID),
    ]
    outbound = [t.jobs_notify_topic(UID), t.jobs_get_accepted_topic(UID)]
    assert all(any(matches(f, topic) for f in t.BRIDGE_SUBSCRIPTIONS) for topic in inbound)
    assert not any(matches(f, topic) for f in t.BRIDGE_SUBSCRIPTIONS for topic in outbound)
    assert json.dumps(t.BRIDGE_SUBSCRIPTIONS)  # plain strings, usable as paho subscribe arguments
