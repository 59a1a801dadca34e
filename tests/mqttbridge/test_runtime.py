"""The bridge in-process against a real Mosquitto that enforces per-device credentials."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from audit.actors import Actor
from deployments import bridge_handlers
from fleet.models import Device
from fleet.services import device_issue_credentials, device_revoke
from mqttbridge.runtime import Bridge
from outbox.models import RejectedMessageCount
from telemetry.models import TelemetrySample
from tests.factories import DeviceFactory
from tests.processes import CONTROL_PASSWORD, CONTROL_USER, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
NOW = lambda: timezone.now().isoformat()  # noqa: E731


class DeviceClient:
    def __init__(self, port: int, uid: str, secret: str) -> None:
        self.uid = uid
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"{uid}-{uuid.uuid4().hex[:6]}"
        )
        self.client.username_pw_set(uid, secret)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(5)

    def publish(self, suffix: str, payload: bytes | dict) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(f"fogdeck/v1/devices/{self.uid}/{suffix}", body, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def running_bridge(mosquitto, **options: object) -> Iterator[Bridge]:
    """A bridge on its own thread against our Mosquitto; stopped and joined however the block ends."""
    options = {"client_id": f"fogdeck-bridge-{uuid.uuid4().hex[:6]}", "telemetry_flush_seconds": 0.2,
               "counters_flush_seconds": 0.2, **bridge_handlers.HANDLERS, **options}  # fmt: skip
    with override_settings(
        MQTT_HOST="127.0.0.1",
        MQTT_PORT=mosquitto.control_port,
        MQTT_USERNAME=CONTROL_USER,
        MQTT_PASSWORD=CONTROL_PASSWORD,
        MQTT_TLS=False,
    ):
        instance = Bridge(**options)  # type: ignore[arg-type]
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        try:
            assert instance.connected.wait(10), "bridge did not connect"
            yield instance
        finally:
            instance.stop()
            thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def bridge(mosquitto) -> Iterator[Bridge]:
    with running_bridge(mosquitto, outbox_poll_seconds=0.1) as instance:
        yield instance


def provision(mosquitto, **kwargs) -> tuple[Device, str]:
    device = DeviceFactory(**kwargs)
    secret = device_issue_credentials(actor=Actor.system("tests"), device=device).secret
    mosquitto.sync_auth()
    return device, secret


def rejected() -> dict[str, int]:
    return dict(RejectedMessageCount.objects.values_list("reason", "count"))


def test_status_state_and_telemetry_are_applied(mosquitto, bridge):
    device, secret = provision(mosquitto)
    client = DeviceClient(mosquitto.port, device.uid, secret)
    client.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1.0", "ts": NOW()})
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 10, "device online")
    client.publish(
        "state",
        {
            "schema_version": 1,
            "ts": NOW(),
            "agent_version": "1.2.3",
            "hardware": {"arch": "aarch64", "cpu": "A72", "memory_mb": 2048, "accelerator": "none"},
            "runtimes": [{"name": "onnxruntime", "version": "1.18"}],
            "slots": {"a": None, "b": None},
            "active": {},
        },
    )
    wait_until(lambda: Device.objects.get(pk=device.pk).agent_version == "1.2.3", 10, "reported state")
    sample = {
        "model": "m",
        "version": 1,
        "requests": 10,
        "errors": 1,
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
        "inputs": {},
    }
    for _ in range(3):
        client.publish("telemetry", {"schema_version": 1, "ts": NOW(), "interval_s": 5.0, "samples": [sample]})
    wait_until(lambda: TelemetrySample.objects.filter(device=device).count() == 3, 10, "telemetry stored")
    client.close()


def metric(name: str, **labels: str) -> float:
    """A sample of this process's metrics (the fixture's bridge runs in a thread of the test's process)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_bad_messages_are_dropped_counted_and_the_bridge_keeps_going(mosquitto, bridge):
    reasons = ("bad_json", "unsupported_version", "invalid_message", "oversize", "unknown_job", "revoked_device")
    before = {r: metric("fogdeck_bridge_messages_rejected_total", reason=r) for r in reasons}
    applied_before = metric("fogdeck_bridge_messages_applied_total", kind="status")
    device, secret = provision(mosquitto)
    revoked, revoked_secret = provision(mosquitto)
    client = DeviceClient(mosquitto.port, device.uid, secret)
    client.publish("status", b"{not json")
    client.publish("status", {"schema_version": 2, "state": "online"})
    client.publish("status", {"schema_version": 1, "state": "dancing", "agent_version": "1", "ts": NOW()})
    client.publish("telemetry", b"x" * (300 * 1024))
    job_id = str(uuid.uuid4())
    client.publish(
        f"jobs/{job_id}/update", {"schema_version": 1, "job_id": job_id, "seq": 1, "status": "SUCCEEDED", "ts": NOW()}
    )
    revoked_client = DeviceClient(mosquitto.port, revoked.uid, revoked_secret)
    device_revoke(actor=Actor.system("tests"), device=revoked)  # still connected: the bridge must ignore it
    revoked_client.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()})
    expected = {
        "bad_json": 1,
        "unsupported_version": 1,
        "invalid_message": 1,
        "oversize": 1,
        "unknown_job": 1,
        "revoked_device": 1,
    }
    wait_until(lambda: all(rejected().get(k, 0) >= v for k, v in expected.items()), 15, f"counters {expected}")
    assert Device.objects.get(pk=revoked.pk).status == "offline"
    # still alive and applying good messages
    client.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()})
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 10, "device online after garbage")
    for c in (client, revoked_client):
        c.close()
    # the same counts on the bridge's metrics (its --metrics-port), by reason
    moved = {r: metric("fogdeck_bridge_messages_rejected_total", reason=r) - before[r] for r in reasons}
    assert all(moved[r] >= expected[r] for r in reasons), moved
    assert metric("fogdeck_bridge_messages_applied_total", kind="status") > applied_before
    assert metric("fogdeck_bridge_batch_seconds_count", kind="device_messages") > 0


def test_a_device_cannot_publish_as_another_device(mosquitto, bridge):
    a, secret_a = provision(mosquitto)
    b, _ = provision(mosquitto)
    client = DeviceClient(mosquitto.port, a.uid, secret_a)
    # the broker refuses A's publish under B's prefix (ACL): B never comes online
    client.client.publish(
        f"fogdeck/v1/devices/{b.uid}/status",
        json.dumps({"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()}),
        qos=1,
    ).wait_for_publish(5)
    client.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()})
    wait_until(lambda: Device.objects.get(pk=a.pk).status == "online", 10, "A online")
    assert Device.objects.get(pk=b.pk).status == "offline"
    client.close()


def test_the_bridge_resubscribes_after_a_broker_restart(mosquitto, bridge):
    device, secret = provision(mosquitto)
    mosquitto.restart()
    wait_until(lambda: bridge.connected.is_set(), 20, "bridge reconnected")
    client = DeviceClient(mosquitto.port, device.uid, secret)
    client.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()})
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 15, "status applied after restart")
    client.close()


@hyp_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    payload=st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    suffix=st.sampled_from(["status", "state", "telemetry", "jobs/get", f"jobs/{uuid.uuid4()}/update"]),
)
def fuzz_case(client: DeviceClient, payload: bytes, suffix: str) -> None:
    client.publish(suffix, payload)


def test_fuzzed_payloads_never_crash_the_bridge(mosquitto, bridge):
    device, secret = provision(mosquitto)
    client = DeviceClient(mosquitto.port, device.uid, secret)
    fuzz_case(client)
    client.publish("status", {"schema_version": 1, "state": "online", "agent_version": "fuzz-done", "ts": NOW()})
    wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 20, "bridge alive after fuzzing")
    assert sum(bridge.stats.rejected.values()) > 0
    assert bridge.stats.rejected.get("handler_error", 0) == 0
    client.close()


def test_outbox_survives_a_broker_outage(mosquitto, bridge, published_version):
    from deployments.services.jobs import deployment_create
    from outbox.models import OutboxMessage

    device, secret = provision(mosquitto)
    received = threading.Event()
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=device.uid, clean_session=False
    )
    client.username_pw_set(device.uid, secret)
    client.on_connect = lambda c, *a: c.subscribe(f"fogdeck/v1/devices/{device.uid}/jobs/notify", qos=1)
    payloads: list[bytes] = []
    client.on_message = lambda c, u, m: (payloads.append(bytes(m.payload)), received.set())
    client.reconnect_delay_set(1, 2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    wait_until(lambda: client.is_connected(), 5, "device connected")
    mosquitto.stop()
    job = deployment_create(actor=Actor.system("tests"), device=device, version=published_version)
    wait_until(
        lambda: OutboxMessage.objects.filter(attempts__gt=0).exists() or not bridge.connected.is_set(),
        5,
        "bridge noticed the outage",
    )
    assert OutboxMessage.objects.get().published_at is None
    mosquitto.start()
    assert received.wait(30), "the job never reached the device after the broker came back"
    assert str(job.id) in payloads[0].decode()
    wait_until(lambda: OutboxMessage.objects.get().published_at is not None, 10, "outbox row marked published")
    client.disconnect()
    client.loop_stop()


def test_a_batch_is_acknowledged_once_stored_so_the_next_session_gets_nothing_again(mosquitto):
    """Acks go out per committed batch (`AckingClient.ack_many`): a bridge that stops after storing a burst
    and a new bridge on the same persistent session must not receive (and store) any of it again."""
    device, secret = provision(mosquitto)
    client_id = f"fogdeck-bridge-{uuid.uuid4().hex[:6]}"
    sample = {"model": "m", "version": 1, "requests": 1, "errors": 0,
              "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0}, "inputs": {}}  # fmt: skip

    stored = lambda: TelemetrySample.objects.filter(device=device).count()  # noqa: E731
    sender = DeviceClient(mosquitto.port, device.uid, secret)
    try:
        with running_bridge(mosquitto, client_id=client_id):
            for _ in range(120):
                sender.publish("telemetry", {"schema_version": 1, "ts": NOW(), "interval_s": 5.0, "samples": [sample]})
            wait_until(lambda: stored() == 120, 15, lambda: f"burst stored (have {stored()} of 120)")
        with running_bridge(mosquitto, client_id=client_id) as second:
            sender.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()})
            wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 10, "second bridge applying")
    finally:
        sender.close()
    assert TelemetrySample.objects.filter(device=device).count() == 120  # nothing redelivered
    assert second.stats.applied.get("telemetry", 0) == 0


def test_the_bridge_counts_as_connected_only_once_its_subscription_is_granted(mosquitto, monkeypatch):
    """A fresh session has no subscription for the broker to queue messages for: what devices publish
    before the SUBACK is routed to nobody. Here paho's network thread stalls after the CONNACK (a busy
    machine), so the SUBSCRIBE leaves late; a message sent as soon as `connected` is set must still arrive."""
    on_connect = Bridge._on_connect

    def stalled(self, *args):  # type: ignore[no-untyped-def]
        on_connect(self, *args)
        time.sleep(1.0)  # the queued SUBSCRIBE is written only after the callback returns

    monkeypatch.setattr(Bridge, "_on_connect", stalled)
    device, secret = provision(mosquitto)
    sender = DeviceClient(mosquitto.port, device.uid, secret)
    try:
        with running_bridge(mosquitto):
            sender.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()})
            wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 10, "status applied")
    finally:
        sender.close()


def test_the_bridge_marks_itself_ready_while_connected_and_not_after_it_stops(mosquitto, tmp_path, monkeypatch):
    """Its heartbeat file is what docker-compose's healthcheck reads (`python -m core.heartbeat check bridge`)."""
    from core import heartbeat

    monkeypatch.setenv("HEARTBEAT_DIR", str(tmp_path))
    heartbeat.beat("bridge")  # left by an earlier run: must not count once this one starts
    with running_bridge(mosquitto, outbox_poll_seconds=0.1):
        wait_until(lambda: heartbeat.problem("bridge") is None, 15, "bridge heartbeat")
    assert heartbeat.problem("bridge") is not None and "no heartbeat" in heartbeat.problem("bridge")


def test_a_message_that_breaks_its_handler_is_rejected_alone_and_the_rest_of_its_batch_applied(mosquitto):
    """Not a database error: the batch is not re-applied (and failing) forever; its other messages are
    applied one by one and only the breaking one is rejected, once."""
    device, secret = provision(mosquitto)
    poison = str(uuid.uuid4())

    def job_updates(items, bridge):
        if any(update.job_id == poison for _, update in items):
            raise ValueError("a rule nobody expected")
        return bridge_handlers.job_updates(items, bridge)

    # a long batch window: the update and the status below land in one batch
    with running_bridge(mosquitto, job_updates=job_updates, device_batch_seconds=1.0) as instance:
        client = DeviceClient(mosquitto.port, device.uid, secret)
        update = {"schema_version": 1, "job_id": poison, "seq": 1, "status": "IN_PROGRESS", "ts": NOW()}
        client.publish(f"jobs/{poison}/update", update)
        client.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1.0", "ts": NOW()})
        wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 20, "the status applied")
        wait_until(lambda: instance.stats.rejected.get("handler_error") == 1, 20, lambda: str(instance.stats.rejected))
        time.sleep(1.5)  # more batch windows: the broken message is not tried again
        assert instance.stats.rejected.get("handler_error") == 1
        client.close()
