"""MQTT abuse on both brokers Fogdeck runs on — our own Mosquitto (generated password/ACL files) and the
embedded broker (credentials read from the database) — with the credentials the control plane issues:
wrong or missing credentials and revoked devices are refused at CONNECT; device A can neither publish
nor subscribe under device B; a device revoked while connected is ignored by the bridge.

"Not delivered" is proven with a barrier: after the message that must not arrive, one that must
arrive is sent along the same path; once it is in, the forbidden one would have been in too.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from django.test import override_settings
from django.utils import timezone

from audit.actors import Actor
from deployments import bridge_handlers
from fleet.models import Device
from fleet.services import device_issue_credentials, device_revoke
from mqttbridge.runtime import Bridge
from outbox.models import RejectedMessageCount
from tests.factories import DeviceFactory
from tests.processes import CONTROL_PASSWORD, CONTROL_USER, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ACTOR = Actor.system("tests")
WAIT = 5.0


@dataclass
class BrokerUnderTest:
    kind: str
    port: int  # where devices connect
    control_port: int  # where the control plane connects (Mosquitto: its own listener)
    mosquitto: object | None = None

    def sync(self) -> None:
        """Make the broker see the database's credentials (Mosquitto re-reads its files; embedded asks live)."""
        if self.mosquitto is not None:
            self.mosquitto.sync_auth()


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request, tmp_path) -> Iterator[BrokerUnderTest]:
    with override_settings(MQTT_USERNAME=CONTROL_USER, MQTT_PASSWORD=CONTROL_PASSWORD):
        if request.param == "mosquitto":
            mosquitto = request.getfixturevalue("mosquitto")
            yield BrokerUnderTest("mosquitto", mosquitto.port, mosquitto.control_port, mosquitto)
        else:
            from stack.mqtt import embedded_broker

            embedded = embedded_broker(port=0)
            embedded.start_in_thread()
            try:
                yield BrokerUnderTest("embedded", embedded.port, embedded.port)
            finally:
                embedded.stop_thread()


class Conn:
    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.refused: bool | None = None
        self._connack = threading.Event()
        self._suback: dict[int, list] = {}
        self._sub_event = threading.Condition()
        self.paho = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"{username}-{uuid.uuid4().hex[:6]}"
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.paho.on_connect = self._on_connect
        self.paho.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.paho.on_subscribe = self._on_subscribe
        self.paho.connect("127.0.0.1", port)
        self.paho.loop_start()
        assert self._connack.wait(WAIT), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        self.refused = reason.is_failure
        if reason.is_failure:
            client.disconnect()  # no automatic retry
        self._connack.set()

    def _on_subscribe(self, client, userdata, mid, reasons, props) -> None:
        with self._sub_event:
            self._suback[mid] = list(reasons)
            self._sub_event.notify_all()

    def subscribe(self, topic_filter: str) -> bool:
        """True when the broker granted it (Mosquitto may grant and then deliver nothing: see the barrier)."""
        _, mid = self.paho.subscribe(topic_filter, 1)
        with self._sub_event:
            assert self._sub_event.wait_for(lambda: mid in self._suback, WAIT), "no SUBACK"
        return not self._suback[mid][0].is_failure

    def publish(self, topic: str, payload: bytes) -> None:
        self.paho.publish(topic, payload, qos=1).wait_for_publish(WAIT)

    def received_until(self, topic: str) -> list[tuple[str, bytes]]:
        got: list[tuple[str, bytes]] = []
        while not got or got[-1][0] != topic:
            got.append(self.messages.get(timeout=WAIT))
        return got

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def provision(broker: BrokerUnderTest, uid: str) -> tuple[Device, str]:
    device = DeviceFactory(uid=uid)
    secret = device_issue_credentials(actor=ACTOR, device=device).secret
    broker.sync()
    return device, secret


def prefix(uid: str) -> str:
    return f"fogdeck/v1/devices/{uid}"


def test_wrong_missing_and_revoked_credentials_are_refused(broker):
    device, secret = provision(broker, "abuse-a")
    revoked, revoked_secret = provision(broker, "abuse-r")
    device_revoke(actor=ACTOR, device=revoked, reason="stolen")
    broker.sync()
    attempts = {
        "wrong password": ("abuse-a", "not-the-secret"),
        "another device's secret": ("abuse-r", secret),
        "unknown user": ("nobody", secret),
        "no credentials": (None, None),
        "control user, wrong password": (CONTROL_USER, "guess"),
        "revoked device": ("abuse-r", revoked_secret),
    }
    outcomes = {what: Conn(broker.port, *creds) for what, creds in attempts.items()}
    try:
        assert {what: conn.refused for what, conn in outcomes.items()} == dict.fromkeys(attempts, True)
        good = Conn(broker.port, device.uid, secret)
        assert good.refused is False
        good.close()
    finally:
        for conn in outcomes.values():
            conn.close()


def test_device_a_can_neither_publish_nor_subscribe_under_device_b(broker):
    a, secret_a = provision(broker, "abuse-a")
    b, secret_b = provision(broker, "abuse-b")
    control = Conn(broker.control_port, CONTROL_USER, CONTROL_PASSWORD)
    dev_a, dev_b = Conn(broker.port, a.uid, secret_a), Conn(broker.port, b.uid, secret_b)
    try:
        assert control.subscribe("fogdeck/v1/devices/#")
        # publish: A's message under B's prefix never reaches the control plane
        dev_a.publish(f"{prefix(b.uid)}/status", b"spoofed")
        dev_a.publish(f"{prefix(a.uid)}/status", b"barrier")
        assert control.received_until(f"{prefix(a.uid)}/status") == [(f"{prefix(a.uid)}/status", b"barrier")]
        # subscribe: whatever the broker answers, A never receives what is meant for B
        for topic_filter in (f"{prefix(b.uid)}/#", "fogdeck/v1/devices/+/jobs/notify", "#"):
            dev_a.subscribe(topic_filter)
        assert dev_a.subscribe(f"{prefix(a.uid)}/jobs/notify")
        assert dev_b.subscribe(f"{prefix(b.uid)}/jobs/notify")
        control.publish(f"{prefix(b.uid)}/jobs/notify", b"for b only")
        assert dev_b.received_until(f"{prefix(b.uid)}/jobs/notify")[-1][1] == b"for b only"
        control.publish(f"{prefix(a.uid)}/jobs/notify", b"barrier")
        assert dev_a.received_until(f"{prefix(a.uid)}/jobs/notify") == [(f"{prefix(a.uid)}/jobs/notify", b"barrier")]
    finally:
        for conn in (control, dev_a, dev_b):
            conn.close()


def test_a_device_revoked_while_connected_is_ignored_by_the_bridge(broker):
    device, secret = provision(broker, "abuse-live")
    with override_settings(MQTT_HOST="127.0.0.1", MQTT_PORT=broker.control_port, MQTT_TLS=False):
        bridge = Bridge(
            client_id=f"fogdeck-abuse-bridge-{uuid.uuid4().hex[:6]}",
            counters_flush_seconds=0.2,
            **bridge_handlers.HANDLERS,
        )
        thread = threading.Thread(target=bridge.run, daemon=True)
        thread.start()
        conn = Conn(broker.port, device.uid, secret)
        try:
            assert bridge.connected.wait(10)
            status = {"schema_version": 1, "state": "online", "agent_version": "1", "ts": timezone.now().isoformat()}

            def online() -> bool:
                # re-sent until applied: a brand-new bridge session gets nothing before its SUBACK
                conn.publish(f"{prefix(device.uid)}/status", json.dumps(status).encode())
                return Device.objects.get(pk=device.pk).status == "online"

            wait_until(online, 20, "device online", interval=1)
            # revoked in the database; the device is still connected (Mosquitto has not re-read its files yet)
            device_revoke(actor=ACTOR, device=device, reason="stolen")
            conn.publish(f"{prefix(device.uid)}/status", json.dumps(status).encode())
            wait_until(
                lambda: RejectedMessageCount.objects.filter(reason="revoked_device", count__gte=1).exists(),
                10,
                "the revoked device's message counted",
            )
            assert Device.objects.get(pk=device.pk).status == "offline"  # revocation took it offline; nothing undid it
            broker.sync()
            if broker.kind == "mosquitto":  # Mosquitto re-checks connected clients when it reloads: cut off
                wait_until(lambda: not conn.paho.is_connected(), 10, "mosquitto to drop the revoked device")
            again = Conn(broker.port, device.uid, secret)
            again.close()
            assert again.refused is True  # and it cannot come back
        finally:
            conn.close()
            bridge.stop()
            thread.join(10)
