"""Who a client is on the broker, on both brokers (our own Mosquitto from deploy/mosquitto/mosquitto.conf and
the embedded amqtt broker): a CONNECT is authenticated before any session is touched, a device's client id
is its uid, the control plane's client ids are out of a device's reach, and a Last Will can only land where
its sender may publish (issue 14, findings 1-3).

"Not delivered" is proven with a barrier, as in test_mqtt_abuse.py: the control plane subscribes to every
device topic; after what must not arrive, something that must arrive travels the same path (here mostly a
device's own Last Will); once it is in, the forbidden message would have been in before it.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest

from tests.factories import DeviceFactory
from tests.processes import CONTROL_PASSWORD, CONTROL_USER
from tests.security.test_mqtt_abuse import BrokerUnderTest, broker, prefix, provision  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
WAIT = 5.0


class Client:
    """A paho client that records its CONNACK, its disconnections and what it receives; never reconnects."""

    def __init__(
        self,
        port: int,
        client_id: str,
        username: str | None,
        password: str | None,
        *,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.refused: bool | None = None
        self.disconnects = 0
        self._connack = threading.Event()
        self._subscribed = threading.Event()
        self.paho = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            self.paho.will_set(will[0], will[1], qos=1)
        if ca_file is not None:
            self.paho.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_subscribe = lambda *_: self._subscribed.set()
        self.paho.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.paho.connect("localhost" if ca_file else "127.0.0.1", port)
        self.paho.loop_start()
        assert self._connack.wait(WAIT), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        self.refused = reason.is_failure
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        self.disconnects += 1
        client.loop_stop()  # no automatic reconnection: a kicked client stays kicked, for the test to see

    def subscribe(self, topic_filter: str) -> None:
        self._subscribed.clear()
        self.paho.subscribe(topic_filter, 1)
        assert self._subscribed.wait(WAIT), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        self.paho.publish(topic, payload, qos=1).wait_for_publish(WAIT)

    def received_until(self, topic: str) -> list[tuple[str, bytes]]:
        got: list[tuple[str, bytes]] = []
        while not got or got[-1][0] != topic:
            try:
                got.append(self.messages.get(timeout=WAIT))
            except queue.Empty:
                raise AssertionError(f"nothing on {topic} after {WAIT}s; got {got}") from None
        return got

    def drop(self) -> None:
        """Lose the connection without a DISCONNECT, so the broker publishes the Last Will."""
        sock = self.paho.socket()
        self.paho.loop_stop()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients():
    made: list[Client] = []

    def make(*args, **kwargs) -> Client:  # type: ignore[no-untyped-def]
        made.append(Client(*args, **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.close()


def control_plane(under_test: BrokerUnderTest, make, client_id: str | None = None) -> Client:  # type: ignore[no-untyped-def]
    """The control plane as the bridge runs it: a persistent session subscribed to every device topic."""
    control = make(
        under_test.control_port,
        client_id or f"fogdeck-bridge-{uuid.uuid4().hex[:6]}",
        CONTROL_USER,
        CONTROL_PASSWORD,
        clean_session=False,
    )
    assert control.refused is False
    control.subscribe("fogdeck/v1/devices/#")
    return control


def test_a_connect_with_a_wrong_password_neither_kicks_the_device_nor_plants_its_will(broker, clients):  # noqa: F811 - `broker` is a fixture
    """Finding 1: amqtt copied the CONNECT's will onto the device's session and took it over before refusing."""
    a, secret_a = provision(broker, "id-a")
    b, _ = provision(broker, "id-b")
    control = control_plane(broker, clients)
    own_will = (f"{prefix(a.uid)}/status", b"a's own will")
    dev_a = clients(broker.port, a.uid, a.uid, secret_a, clean_session=False, will=own_will)
    assert dev_a.refused is False
    dev_a.subscribe(f"{prefix(a.uid)}/jobs/notify")

    forged = (f"{prefix(b.uid)}/state", b'{"forged": true}')
    attacker = clients(broker.port, a.uid, a.uid, "not-the-secret", clean_session=False, will=forged)
    assert attacker.refused is True

    control.publish(f"{prefix(a.uid)}/jobs/notify", b"still there?")
    assert dev_a.received_until(f"{prefix(a.uid)}/jobs/notify") == [(f"{prefix(a.uid)}/jobs/notify", b"still there?")]
    assert dev_a.disconnects == 0, "the refused CONNECT kicked the device off"
    dev_a.drop()
    received = [m for m in control.received_until(own_will[0]) if m[0] != f"{prefix(a.uid)}/jobs/notify"]
    assert received == [own_will], "the will published for the device is not the one it registered"


@pytest.mark.parametrize("credentials", [(None, None), (CONTROL_USER, "guess")], ids=["anonymous", "wrong-password"])
def test_a_refused_clean_session_connect_with_the_bridges_client_id_leaves_the_bridge_subscribed(
    broker,  # noqa: F811 - a fixture
    clients,
    credentials,
):
    """Finding 1: a clean-session CONNECT deleted the bridge's session (its subscriptions) before it was refused."""
    a, secret_a = provision(broker, "id-a")
    control = control_plane(broker, clients, "fogdeck-bridge-1")
    ports = {broker.port, broker.control_port}  # an attacker on the control network too
    for port in ports:
        assert clients(port, "fogdeck-bridge-1", *credentials, clean_session=True).refused is True

    dev_a = clients(broker.port, a.uid, a.uid, secret_a)
    dev_a.publish(f"{prefix(a.uid)}/status", b"after the attempt")
    assert control.received_until(f"{prefix(a.uid)}/status") == [(f"{prefix(a.uid)}/status", b"after the attempt")]
    assert control.disconnects == 0


@pytest.mark.parametrize("clean_session", [True, False], ids=["clean", "persistent"])
def test_a_device_cannot_connect_under_another_clients_id(broker, clients, clean_session):  # noqa: F811 - `broker` is a fixture
    """Finding 3: with its own valid secret, a device took the bridge's or another device's client id."""
    a, secret_a = provision(broker, "id-a")
    b, secret_b = provision(broker, "id-b")
    control = control_plane(broker, clients, "fogdeck-bridge-1")
    dev_b = clients(broker.port, b.uid, b.uid, secret_b, clean_session=False)
    dev_b.subscribe(f"{prefix(b.uid)}/jobs/notify")

    for stolen in ("fogdeck-bridge-1", b.uid):
        impostor = clients(broker.port, stolen, a.uid, secret_a, clean_session=clean_session)
        # Mosquitto and the embedded broker both connect it as its own uid (use_username_as_clientid)
        assert impostor.refused is False
        impostor.publish(f"{prefix(a.uid)}/status", stolen.encode())
        assert control.received_until(f"{prefix(a.uid)}/status")[-1] == (f"{prefix(a.uid)}/status", stolen.encode())
        impostor.close()

    control.publish(f"{prefix(b.uid)}/jobs/notify", b"for b")
    assert dev_b.received_until(f"{prefix(b.uid)}/jobs/notify") == [(f"{prefix(b.uid)}/jobs/notify", b"for b")]
    assert control.disconnects == 0 and dev_b.disconnects == 0


def test_a_device_uid_in_the_control_planes_namespace_cannot_connect(broker, clients):  # noqa: F811 - `broker` is a fixture
    """Finding 3: `fogdeck-…` client ids are the control plane's, and a device's client id is its uid."""
    from audit.actors import Actor
    from fleet.models import Device
    from fleet.services import device_issue_credentials

    device = DeviceFactory(uid="legacy-1")
    # a row registered before the API refused such uids (fleet.models.validate_device_uid_not_reserved)
    Device.objects.filter(pk=device.pk).update(uid="fogdeck-bridge-1")
    device.refresh_from_db()
    secret = device_issue_credentials(actor=Actor.system("tests"), device=device).secret
    broker.sync()
    control = control_plane(broker, clients, "fogdeck-bridge-1")

    assert clients(broker.port, device.uid, device.uid, secret).refused is True
    assert control.disconnects == 0


@pytest.mark.parametrize("suffix", ["state", "status", "jobs/7b1c4c52-0cf4-4c57-9a55-1c8e7c6a0d11/update"])
def test_a_will_on_another_devices_topic_has_no_effect(broker, clients, suffix):  # noqa: F811 - `broker` is a fixture
    """Finding 2: the embedded broker published wills without the topic ACL (another device's state, its jobs)."""
    a, secret_a = provision(broker, "id-a")
    b, _ = provision(broker, "id-b")
    control = control_plane(broker, clients)

    forged = (f"{prefix(b.uid)}/{suffix}", b'{"forged": true}')
    dev_a = clients(broker.port, a.uid, a.uid, secret_a, will=forged)
    if broker.kind == "embedded":
        assert dev_a.refused is True  # refused at CONNECT, counted as will_denied
    else:
        assert dev_a.refused is False  # Mosquitto accepts it and never publishes it (ACL checked at publish)
        dev_a.drop()

    own_will = (f"{prefix(a.uid)}/status", b"barrier")
    again = clients(broker.port, a.uid, a.uid, secret_a, will=own_will)
    assert again.refused is False
    again.drop()
    assert control.received_until(own_will[0]) == [own_will]


def test_mosquitto_listeners_keep_devices_and_the_control_plane_apart(mosquitto, clients):
    """Finding 3 (deployment): devices over TLS and plaintext, the control plane on its own listener only."""
    from tests.security.test_mqtt_abuse import BrokerUnderTest

    under_test = BrokerUnderTest("mosquitto", mosquitto.port, mosquitto.control_port, mosquitto)
    a, secret_a = provision(under_test, "id-a")
    ca = str(mosquitto.ca_file)

    assert clients(mosquitto.tls_port, a.uid, a.uid, secret_a, ca_file=ca).refused is False
    for port, ca_file in ((mosquitto.port, None), (mosquitto.tls_port, ca)):
        assert clients(port, "fogdeck-x", CONTROL_USER, CONTROL_PASSWORD, ca_file=ca_file).refused is True
    assert clients(mosquitto.control_port, a.uid, a.uid, secret_a).refused is True
