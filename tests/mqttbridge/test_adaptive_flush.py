"""The adaptive telemetry flush: a batch goes to a writer as soon as one is idle and nothing more waits
(`telemetry_flush_due`), so a lone message is stored at once and batches grow only under load."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from mqttbridge.runtime import telemetry_flush_due
from telemetry.models import TelemetrySample
from tests.mqttbridge.test_runtime import provision, running_bridge
from tests.processes import wait_until

SAMPLE = {"model": "m", "version": 1, "requests": 1, "errors": 0,
          "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0}, "inputs": {}}  # fmt: skip


def due(waiting: int, *, age: float = 0.0, more: bool = False, idle: bool = True) -> bool:
    return telemetry_flush_due(waiting, batch_size=500, age=age, max_age=0.2, more_waiting=more, writer_idle=idle)


def test_a_lone_message_goes_at_once_when_a_writer_is_idle():
    assert due(1)


def test_nothing_to_send_is_never_due():
    assert not due(0, age=10.0)


def test_while_more_waits_in_the_inbox_the_batch_keeps_growing():
    assert not due(1, more=True)
    assert not due(499, more=True)
    assert due(500, more=True)


def test_while_every_writer_is_busy_messages_gather_until_full_or_old():
    assert not due(1, idle=False)
    assert not due(300, age=0.19, idle=False)
    assert due(300, age=0.2, idle=False)
    assert due(500, idle=False)


@given(
    waiting=st.integers(0, 2000),
    age=st.floats(0, 10),
    more=st.booleans(),
    idle=st.booleans(),
)
def test_a_full_or_old_batch_always_goes_and_an_empty_one_never(waiting: int, age: float, more: bool, idle: bool):
    decision = due(waiting, age=age, more=more, idle=idle)
    if waiting == 0:
        assert not decision
    elif waiting >= 500 or age >= 0.2:
        assert decision
    else:
        assert decision == (idle and not more)


# --- through the real bridge -------------------------------------------------------------------------


def _batches() -> float:
    return REGISTRY.get_sample_value("fogdeck_bridge_batch_seconds_count", {"kind": "telemetry"}) or 0.0


def _publisher(port: int, uid: str, secret: str) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"{uid}-burst")
    client.username_pw_set(uid, secret)
    client.max_inflight_messages_set(200)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(5)
    return client


def _telemetry(p95: float = 2.0) -> bytes:
    sample = {**SAMPLE, "latency_ms": {**SAMPLE["latency_ms"], "p95": p95}}
    message = {"schema_version": 1, "ts": timezone.now().isoformat(), "interval_s": 5.0, "samples": [sample]}
    return json.dumps(message).encode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_steady_trickle_is_stored_message_by_message_long_before_the_flush_interval(mosquitto):
    """Messages 20 ms apart never leave the inbox quiet for 50 ms (the old idle flush), and the flush interval
    is 5 s: the first ones are still stored while the trickle goes on, because an idle writer takes them."""
    device, secret = provision(mosquitto)
    client = _publisher(mosquitto.port, device.uid, secret)
    topic = f"fogdeck/v1/devices/{device.uid}/telemetry"
    stored = lambda: TelemetrySample.objects.filter(device=device).count()  # noqa: E731

    def trickle() -> None:
        for _ in range(100):
            client.publish(topic, _telemetry(), qos=1)
            time.sleep(0.02)

    try:
        # no outbox pass either (its timed wait would let a batch go when the inbox is empty at that moment)
        with running_bridge(mosquitto, telemetry_flush_seconds=5.0, outbox_poll_seconds=30.0):
            sender = threading.Thread(target=trickle)
            sender.start()
            wait_until(lambda: stored() >= 10, 1.2, lambda: f"first messages stored (have {stored()})")
            assert sender.is_alive()  # stored during the trickle, not after it
            sender.join()
            wait_until(lambda: stored() == 100, 2.0, lambda: f"trickle stored (have {stored()} of 100)")
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_burst_is_stored_whole_in_far_fewer_batches_than_messages(mosquitto):
    device, secret = provision(mosquitto)
    client = _publisher(mosquitto.port, device.uid, secret)
    topic = f"fogdeck/v1/devices/{device.uid}/telemetry"
    stored = lambda: TelemetrySample.objects.filter(device=device).count()  # noqa: E731
    messages = 600
    try:
        with running_bridge(mosquitto, telemetry_flush_seconds=5.0) as bridge:
            before = _batches()
            infos = [client.publish(topic, _telemetry(p95=float(n)), qos=1) for n in range(messages)]
            for info in infos:
                info.wait_for_publish(10)
            wait_until(lambda: stored() == messages, 15, lambda: f"burst stored (have {stored()} of {messages})")
            batches = _batches() - before
            assert bridge.stats.applied["telemetry"] == messages
    finally:
        client.disconnect()
        client.loop_stop()
    assert 1 <= batches <= messages / 4, batches  # gathered while the writers were busy
    # every message stored exactly once, none corrupted
    assert sorted(TelemetrySample.objects.filter(device=device).values_list("p95_ms", flat=True)) == [
        float(n) for n in range(messages)
    ]
