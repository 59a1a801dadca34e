"""Fuzzed and oversized MQTT payloads from an authenticated device, through our Mosquitto to the bridge:
no crash, every message counted under a reason, nothing stored."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from audit.models import AuditEntry
from deployments.models import JobEvent
from fleet.models import Device
from outbox.models import OutboxMessage, RejectedMessageCount
from telemetry.models import TelemetryRollup, TelemetrySample
from tests.mqttbridge.test_runtime import NOW, DeviceClient, bridge, provision  # noqa: F401 - `bridge` is a fixture
from tests.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SUFFIXES = ["status", "state", "telemetry", "jobs/get", f"jobs/{uuid.uuid4()}/update"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# near-misses: the right envelope with a required field missing for every kind (status and state lack
# `agent_version`, telemetry `interval_s`, jobs/get `request_id`; an update would need its topic's job id)
# gets past the JSON parser to the schema checks, and can never be valid
near_misses = st.fixed_dictionaries(
    {"schema_version": st.sampled_from([1, 2, "1", None])},
    optional={"state": json_values, "ts": st.text(max_size=30), "samples": json_values, "job_id": json_values,
              "seq": json_values, "status": json_values},
)  # fmt: skip
payloads = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda value: json.dumps(value).encode()),
    near_misses.map(lambda value: json.dumps(value).encode()),
)


def stored_state(device: Device) -> dict[str, object]:
    device.refresh_from_db()
    return {
        "telemetry": TelemetrySample.objects.count(),
        "rollups": TelemetryRollup.objects.count(),
        "job_events": JobEvent.objects.count(),
        "outbox": OutboxMessage.objects.count(),
        "audit": AuditEntry.objects.count(),
        "reported_state": device.reported_state,
        "agent_version": device.agent_version,
        "status": device.status,
    }


def test_fuzzed_and_oversized_payloads_are_counted_and_store_nothing(mosquitto, bridge):  # noqa: F811
    device, secret = provision(mosquitto)
    client = DeviceClient(mosquitto.port, device.uid, secret)

    def online() -> bool:  # re-sent until applied: a brand-new bridge session gets nothing before its SUBACK
        client.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()})
        return Device.objects.get(pk=device.pk).status == "online"

    wait_until(online, 20, "the bridge subscribed", interval=1)
    before = stored_state(device)
    sent: Counter[str] = Counter()

    @hyp_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(payload=payloads, suffix=st.sampled_from(SUFFIXES))
    def fuzz(payload: bytes, suffix: str) -> None:
        client.publish(suffix, payload)
        sent["fuzz"] += 1

    fuzz()
    for suffix in SUFFIXES:  # just over the protocol's 256 KiB limit, valid JSON inside
        client.publish(suffix, json.dumps({"schema_version": 1, "pad": "x" * (256 * 1024)}).encode())
        sent["oversize"] += 1
    # a valid message after them all: once it is applied, every fuzzed one has been handled
    client.publish("status", {"schema_version": 1, "state": "offline", "agent_version": "1", "ts": NOW()})
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "offline", 30, "the bridge alive after fuzzing")

    rejected = dict(bridge.stats.rejected)
    assert rejected.get("handler_error", 0) == 0, bridge.stats.last_detail.get("handler_error")
    assert rejected.get("oversize") == sent["oversize"]
    assert sum(rejected.values()) == sent["fuzz"] + sent["oversize"], rejected  # every one counted, once
    wait_until(
        lambda: dict(RejectedMessageCount.objects.values_list("reason", "count")) == rejected,
        10,
        "the counters flushed to the database",
    )
    after = stored_state(device)
    assert after.pop("status") == "offline"
    before.pop("status")
    assert after["audit"] == before["audit"] + 1  # the barrier's offline transition, nothing else
    after["audit"] = before["audit"]
    assert after == before  # nothing stored
    client.close()
