"""The bridge in-process against a real Mosquitto that enforces per-device credentials."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from audit.actors import Actor
from fleet.models import Device
from fleet.services import device_issue_credentials, device_revoke
from mqttbridge.models import RejectedMessageCount
from mqttbridge.runtime import Bridge
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


@pytest.fixture
def bridge(mosquitto) -> Iterator[Bridge]:
    with override_settings(
        MQTT_HOST="127.0.0.1",
        MQTT_PORT=mosquitto.port,
        MQTT_USERNAME=CONTROL_USER,
        MQTT_PASSWORD=CONTROL_PASSWORD,
        MQTT_TLS=False,
    ):
        instance = Bridge(
            client_id=f"bridge-{uuid.uuid4().hex[:6]}",
            telemetry_flush_seconds=0.2,
            counters_flush_seconds=0.2,
            outbox_poll_seconds=0.1,
        )
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        assert instance.connected.wait(10), "bridge did not connect"
        yield instance
        instance.stop()
        thread.join(10)
        assert not thread.is_alive()


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


def test_bad_messages_are_dropped_counted_and_the_bridge_keeps_going(mosquitto, bridge):
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
    from deployments.services import deployment_create
    from mqttbridge.models import OutboxMessage

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
    client_id = f"bridge-{uuid.uuid4().hex[:6]}"
    sample = {"model": "m", "version": 1, "requests": 1, "errors": 0,
              "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0}, "inputs": {}}  # fmt: skip

    def run_bridge():  # type: ignore[no-untyped-def]
        instance = Bridge(client_id=client_id, telemetry_flush_seconds=0.2, counters_flush_seconds=0.2)
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        assert instance.connected.wait(10), "bridge did not connect"
        return instance, thread

    with override_settings(MQTT_HOST="127.0.0.1", MQTT_PORT=mosquitto.port, MQTT_USERNAME=CONTROL_USER,
                           MQTT_PASSWORD=CONTROL_PASSWORD, MQTT_TLS=False):  # fmt: skip
        first, thread = run_bridge()
        sender = DeviceClient(mosquitto.port, device.uid, secret)
        for _ in range(120):
            sender.publish("telemetry", {"schema_version": 1, "ts": NOW(), "interval_s": 5.0, "samples": [sample]})
        wait_until(lambda: TelemetrySample.objects.filter(device=device).count() == 120, 15, "burst stored")
        first.stop()
        thread.join(10)
        second, thread = run_bridge()
        sender.publish("status", {"schema_version": 1, "state": "online", "agent_version": "1", "ts": NOW()})
        wait_until(lambda: Device.objects.get(pk=device.pk).status == "online", 10, "second bridge applying")
        second.stop()
        thread.join(10)
        sender.close()
    assert TelemetrySample.objects.filter(device=device).count() == 120  # nothing redelivered
    assert second.stats.applied.get("telemetry", 0) == 0
