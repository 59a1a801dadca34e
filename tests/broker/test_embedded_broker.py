"""The embedded broker, driven by real paho-mqtt clients over TCP.

"Not delivered" is proven with a barrier rather than a sleep: after the message that must not
arrive, a message that must arrive is sent along the same path; once it is in, the forbidden
one would have been in too.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker.acl import Principal
from broker.embedded import BrokerStartError, EmbeddedBroker, static_authenticator
from broker.passwords import hash_secret

WAIT = 3.0
SERVICE_USER, SERVICE_PASSWORD = "fogdeck-bridge", "bridge-secret"
DEVICE_SECRETS = {"dev-a": "secret-a", "dev-b": "secret-b"}
DEVICE_HASHES = {uid: hash_secret(secret) for uid, secret in DEVICE_SECRETS.items()}
A = "fogdeck/v1/devices/dev-a"
B = "fogdeck/v1/devices/dev-b"
NOT_AUTHORIZED = "Not authorized"  # paho's name for MQTT 3.1.1 CONNACK return code 5


class Client:
    """A paho client that turns callbacks into waitable results."""

    def __init__(
        self,
        port: int,
        client_id: str,
        username: str | None,
        password: str | None,
        *,
        clean_session: bool = True,
    ) -> None:
        self.port = port
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: ReasonCode | None = None
        self._connected = threading.Event()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._suback_ready = threading.Condition()
        self._paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        if username is not None:
            self._paho.username_pw_set(username, password)
        self._paho.on_connect = self._on_connect
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_message = lambda _client, _userdata, message: self.messages.put(message)

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        self.connack = reason_code
        if reason_code.is_failure:
            client.disconnect()  # otherwise paho retries and the broker counts a second refusal
        self._connected.set()

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        with self._suback_ready:
            self._subacks[mid] = list(reason_codes)
            self._suback_ready.notify_all()

    def connect(self) -> ReasonCode:
        self._paho.connect("127.0.0.1", self.port)
        self._paho.loop_start()
        assert self._connected.wait(WAIT), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(self, topic_filter: str, qos: int = 1) -> bool:
        """True when the broker granted the subscription."""
        _, mid = self._paho.subscribe(topic_filter, qos)
        with self._suback_ready:
            assert self._suback_ready.wait_for(lambda: mid in self._subacks, WAIT), "no SUBACK"
            return not self._subacks[mid][0].is_failure

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def receive_until(self, topic: str) -> list[mqtt.MQTTMessage]:
        """Every message up to and including the first one on `topic`."""
        received: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + WAIT
        while not received or received[-1].topic != topic:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"nothing on {topic}; got {[m.topic for m in received]}"
            try:
                received.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                continue
        return received

    def close(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    authenticator = static_authenticator({SERVICE_USER: SERVICE_PASSWORD}, DEVICE_HASHES.get)
    embedded = EmbeddedBroker(port=0, authenticator=authenticator)
    embedded.start_in_thread()
    yield embedded
    embedded.stop_thread()


@pytest.fixture
def client(broker: EmbeddedBroker) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
    ) -> Client:
        new = Client(broker.port, client_id or username or "anon", username, password, clean_session=clean_session)
        made.append(new)
        return new

    yield make
    for each in made:
        each.close()


def connected(make: Callable[..., Client], username: str, password: str, **kwargs: object) -> Client:
    new = make(username, password, **kwargs)
    assert new.connect() == 0
    return new


def device(make: Callable[..., Client], uid: str, **kwargs: object) -> Client:
    return connected(make, uid, DEVICE_SECRETS[uid], **kwargs)


def wait_offline(broker: EmbeddedBroker, client_id: str) -> None:
    """Block until the broker has processed a client's DISCONNECT (amqtt has no public hook for this)."""
    deadline = time.monotonic() + WAIT
    while True:
        session = broker._broker.sessions.get(client_id, (None, None))[0] if broker._broker else None
        if session is not None and session.transitions.state == "disconnected":
            return
        assert time.monotonic() < deadline, f"{client_id} still connected"
        time.sleep(0.01)


def test_device_with_the_right_secret_connects(client, broker):
    assert client("dev-a", "secret-a").connect() == 0
    assert broker.refusals.snapshot() == {}


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("dev-a", "secret-b"),  # another device's secret
        ("dev-z", "secret-a"),  # unknown device
        (SERVICE_USER, "secret-a"),  # wrong service password
        ("dev-a", SERVICE_PASSWORD),
    ],
)
def test_wrong_credentials_are_refused_and_counted(client, broker, username, password):
    connack = client(username, password).connect()

    assert connack.is_failure
    assert connack.getName() == NOT_AUTHORIZED
    assert broker.refusals.snapshot() == {"bad_credentials": 1}


def test_anonymous_client_is_refused_and_counted(client, broker):
    connack = client(None, None).connect()

    assert connack.getName() == NOT_AUTHORIZED
    assert broker.refusals.snapshot() == {"anonymous": 1}


def test_username_without_password_is_refused_as_anonymous(client, broker):
    connack = client("dev-a", None).connect()

    assert connack.getName() == NOT_AUTHORIZED
    assert broker.refusals["anonymous"] == 1


def test_service_receives_what_a_device_publishes_under_its_own_prefix(client):
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("fogdeck/v1/devices/#")
    dev_a = device(client, "dev-a")

    dev_a.publish(f"{A}/telemetry", b'{"temp": 21}')

    [message] = service.receive_until(f"{A}/telemetry")
    assert message.payload == b'{"temp": 21}'


def test_device_publishing_under_another_devices_prefix_is_dropped_and_counted(client, broker):
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("fogdeck/v1/devices/#")
    dev_a = device(client, "dev-a")

    dev_a.publish(f"{B}/jobs/42/status", b'{"state": "done"}')
    dev_a.publish(f"{A}/telemetry", b"barrier")

    received = service.receive_until(f"{A}/telemetry")
    assert [m.topic for m in received] == [f"{A}/telemetry"]
    assert broker.refusals.snapshot() == {"publish_denied": 1}


def test_device_cannot_subscribe_to_other_devices_or_wildcards(client, broker):
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("fogdeck/v1/devices/#")
    dev_a = device(client, "dev-a")
    dev_b = device(client, "dev-b")

    assert not dev_a.subscribe(f"{B}/#")
    assert not dev_a.subscribe("#")
    assert not dev_a.subscribe("fogdeck/v1/devices/+/jobs/notify")
    assert dev_a.subscribe(f"{A}/#")

    dev_b.publish(f"{B}/jobs/notify", b"for b only")
    service.receive_until(f"{B}/jobs/notify")  # the broker has fanned B's message out
    service.publish(f"{A}/jobs/notify", b"barrier")

    received = dev_a.receive_until(f"{A}/jobs/notify")
    assert [m.payload for m in received] == [b"barrier"]
    assert broker.refusals.snapshot() == {"subscribe_denied": 3}


AWS_A, AWS_B = "$aws/things/dev-a/jobs", "$aws/things/dev-b/jobs"


def test_a_thing_uses_its_own_aws_jobs_topics_and_the_bridge_hears_them(client, broker):
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("$aws/things/+/jobs/start-next")
    dev_a = device(client, "dev-a")
    assert dev_a.subscribe(f"{AWS_A}/notify-next") and dev_a.subscribe(f"{AWS_A}/+/update/+")

    dev_a.publish(f"{AWS_A}/start-next", b"{}")
    assert [m.payload for m in service.receive_until(f"{AWS_A}/start-next")] == [b"{}"]
    service.publish(f"{AWS_A}/notify-next", b'{"timestamp": 1}')
    assert [m.topic for m in dev_a.receive_until(f"{AWS_A}/notify-next")] == [f"{AWS_A}/notify-next"]
    assert broker.refusals.snapshot() == {}


def test_a_thing_cannot_read_or_answer_another_things_jobs(client, broker):
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("$aws/things/+/jobs/+/update")
    dev_a = device(client, "dev-a")

    assert not dev_a.subscribe(f"{AWS_B}/notify-next")
    assert not dev_a.subscribe(f"{AWS_B}/#")
    assert not dev_a.subscribe("$aws/things/+/jobs/notify-next")
    assert not dev_a.subscribe("$aws/#")
    assert not dev_a.subscribe("$aws/things/dev-a/shadow/update")  # only the jobs API, not all of $aws
    assert dev_a.subscribe(f"{AWS_A}/notify-next")

    dev_a.publish(f"{AWS_B}/0b0e9c1a/update", b'{"status": "SUCCEEDED"}')  # answering B's job
    dev_a.publish(f"{AWS_A}/0b0e9c1a/update", b"barrier")
    received = service.receive_until(f"{AWS_A}/0b0e9c1a/update")
    assert [m.payload for m in received] == [b"barrier"]

    service.publish(f"{AWS_B}/notify-next", b"for b only")
    service.publish(f"{AWS_A}/notify-next", b"barrier")
    assert [m.payload for m in dev_a.receive_until(f"{AWS_A}/notify-next")] == [b"barrier"]
    assert broker.refusals.snapshot() == {"subscribe_denied": 5, "publish_denied": 1}


def test_retained_message_reaches_a_device_that_subscribes_later(client):
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    service.publish(f"{A}/desired", b'{"model": "v3"}', retain=True)
    dev_a = device(client, "dev-a")

    assert dev_a.subscribe(f"{A}/desired")

    [message] = dev_a.receive_until(f"{A}/desired")
    assert message.payload == b'{"model": "v3"}'
    assert message.retain


def test_other_devices_retained_messages_are_not_replayed_on_connect(client):
    # amqtt 0.12.1 replays retained messages for every broker-wide filter on CONNECT;
    # with the service on `devices/#`, dev-a would otherwise get dev-b's retained state.
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("fogdeck/v1/devices/#")
    dev_b = device(client, "dev-b")
    dev_b.publish(f"{B}/state", b"b's state", retain=True)
    service.receive_until(f"{B}/state")

    dev_a = device(client, "dev-a")
    assert dev_a.subscribe(f"{A}/#")
    service.publish(f"{A}/jobs/notify", b"barrier")

    received = dev_a.receive_until(f"{A}/jobs/notify")
    assert [m.topic for m in received] == [f"{A}/jobs/notify"]


def test_persistent_session_gets_qos1_messages_sent_while_offline(client, broker):
    dev_a = device(client, "dev-a", clean_session=False)
    assert dev_a.subscribe(f"{A}/jobs/notify", qos=1)
    dev_a.close()
    wait_offline(broker, "dev-a")

    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    service.publish(f"{A}/jobs/notify", b"job 7", qos=1)
    back = device(client, "dev-a", clean_session=False)

    [message] = back.receive_until(f"{A}/jobs/notify")
    assert message.payload == b"job 7"


def test_device_using_another_devices_client_id_gets_its_own_session(client, broker):
    dev_b = device(client, "dev-b", clean_session=False)
    assert dev_b.subscribe(f"{B}/jobs/notify", qos=1)
    dev_b.close()
    wait_offline(broker, "dev-b")
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    service.publish(f"{B}/jobs/notify", b"job for b", qos=1)

    # as Mosquitto's use_username_as_clientid: a device's client id is its uid, whatever it sends
    impostor = client("dev-a", "secret-a", client_id="dev-b", clean_session=False)
    assert impostor.connect() == 0
    assert set(broker._broker.sessions) == {"dev-a", "dev-b", SERVICE_USER}

    assert impostor.messages.empty()
    [message] = device(client, "dev-b", clean_session=False).receive_until(f"{B}/jobs/notify")
    assert message.payload == b"job for b"


def test_service_cannot_take_a_devices_session(client, broker):
    dev_b = device(client, "dev-b", clean_session=False)
    assert dev_b.subscribe(f"{B}/jobs/notify", qos=1)

    connack = client(SERVICE_USER, SERVICE_PASSWORD, client_id="dev-b", clean_session=False).connect()

    assert connack.getName() == NOT_AUTHORIZED
    assert broker.refusals.snapshot() == {"session_owned": 1}
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    service.publish(f"{B}/jobs/notify", b"still b's")
    [message] = dev_b.receive_until(f"{B}/jobs/notify")
    assert message.payload == b"still b's"


def test_refused_connect_touches_no_session(client, broker):
    """The credentials are checked on the CONNECT's own session, before amqtt looks the client id up."""
    dev_a = device(client, "dev-a", clean_session=False)
    assert dev_a.subscribe(f"{A}/jobs/notify")
    before = broker._broker.sessions["dev-a"][0]
    will_before = (before.will_flag, before.will_topic, before.username, before.password)

    refused = client("dev-a", "wrong", client_id="dev-a", clean_session=False)
    refused._paho.will_set(f"{B}/state", b"forged", qos=1)
    assert refused.connect().getName() == NOT_AUTHORIZED
    anonymous_clean = client(None, None, client_id="dev-a", clean_session=True)
    assert anonymous_clean.connect().getName() == NOT_AUTHORIZED

    session, _ = broker._broker.sessions["dev-a"]
    assert session is before and session.transitions.is_connected()
    assert (session.will_flag, session.will_topic, session.username, session.password) == will_before
    assert f"{A}/jobs/notify" in broker._broker.subscriptions
    assert broker.refusals.snapshot() == {"bad_credentials": 1, "anonymous": 1}


def test_connect_with_a_will_outside_the_devices_prefix_is_refused_and_counted(client, broker):
    impostor = client("dev-a", "secret-a")
    impostor._paho.will_set(f"{B}/state", b"forged", qos=1)

    assert impostor.connect().getName() == NOT_AUTHORIZED
    assert broker.refusals.snapshot() == {"will_denied": 1}
    assert "dev-a" not in broker._broker.sessions


def test_will_under_the_devices_own_prefix_is_published_when_it_drops(client, broker):
    service = connected(client, SERVICE_USER, SERVICE_PASSWORD)
    assert service.subscribe("fogdeck/v1/devices/#")
    dev_a = client("dev-a", "secret-a")
    dev_a._paho.will_set(f"{A}/status", b"offline", qos=1)
    assert dev_a.connect() == 0

    sock = dev_a._paho.socket()
    dev_a._paho.loop_stop()
    sock.close()

    [message] = service.receive_until(f"{A}/status")
    assert message.payload == b"offline"


def test_clean_connect_closes_the_connection_whose_session_it_replaces(client, broker):
    """amqtt deleted the old session but left its connection open and deaf; the newcomer now takes it over."""
    first = device(client, "dev-a", clean_session=False)
    first._paho.on_disconnect = lambda paho, *_: paho.loop_stop()  # no reconnection
    assert first.subscribe(f"{A}/jobs/notify")
    second = device(client, "dev-a", clean_session=True)
    deadline = time.monotonic() + WAIT
    while first._paho.is_connected():
        assert time.monotonic() < deadline, "the replaced connection is still open"
        time.sleep(0.01)
    assert second._paho.is_connected()


def test_device_uid_in_the_service_namespace_is_refused():
    hashes = {uid: hash_secret("s") for uid in ("fogdeck-healthz-1", "Fogdeck-Healthz-1", "dev-c")}
    authenticate = static_authenticator({SERVICE_USER: SERVICE_PASSWORD}, hashes.get)
    assert authenticate("dev-c", "s") == Principal(username="dev-c", kind="device")
    assert authenticate("fogdeck-healthz-1", "s") is None
    assert authenticate("Fogdeck-Healthz-1", "s") is None


def test_authenticator_failure_refuses_and_is_counted():
    def broken(username: str, password: str) -> Principal | None:
        raise RuntimeError("database is down")

    embedded = EmbeddedBroker(port=0, authenticator=broken)
    embedded.start_in_thread()
    try:
        probe = Client(embedded.port, "dev-a", "dev-a", "secret-a")
        assert probe.connect().getName() == NOT_AUTHORIZED
        probe.close()
    finally:
        embedded.stop_thread()

    assert embedded.refusals.snapshot() == {"authenticator_error": 1}


def test_authenticator_runs_off_the_broker_event_loop_thread():
    threads: list[str] = []

    def recording(username: str, password: str) -> Principal | None:
        threads.append(threading.current_thread().name)
        return Principal(username=username, kind="device")

    embedded = EmbeddedBroker(port=0, authenticator=recording)
    embedded.start_in_thread()
    try:
        probe = Client(embedded.port, "dev-a", "dev-a", "anything")
        assert probe.connect() == 0
        probe.close()
    finally:
        embedded.stop_thread()

    assert len(threads) == 1
    assert not threads[0].startswith("fogdeck-mqtt-broker")


def test_start_in_thread_raises_when_the_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        embedded = EmbeddedBroker(port=port, authenticator=lambda _u, _p: None)

        with pytest.raises(BrokerStartError, match=f"could not listen on 127.0.0.1:{port}"):
            embedded.start_in_thread()

    assert not embedded.is_running


def test_stopped_broker_no_longer_accepts_connections():
    embedded = EmbeddedBroker(port=0, authenticator=lambda _u, _p: None)
    embedded.start_in_thread()
    port = embedded.port
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
        pass

    embedded.stop_thread()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def test_subscription_table_survives_changes_while_it_is_iterated():
    """amqtt's broadcast loop awaits inside `for … in _subscriptions.items()`; others (un)subscribe meanwhile."""
    from broker.embedded import SnapshotSubscriptions

    table = SnapshotSubscriptions({"a/#": [("s1", 1)], "b/#": [("s2", 1)]})
    seen = []
    for topic, subscribers in table.items():
        seen.append((topic, len(subscribers)))
        table[f"new/{topic}"] = []  # a dict would raise "changed size during iteration"
        table.pop("b/#", None)
    assert seen == [("a/#", 1), ("b/#", 1)]
    for topic in table:
        del table[topic]
    assert table == {}


def test_the_running_broker_uses_the_snapshot_table():
    from broker.embedded import EmbeddedBroker, SnapshotSubscriptions

    broker = EmbeddedBroker(port=0, authenticator=lambda username, password: None)
    broker.start_in_thread()
    try:
        assert isinstance(broker._broker._subscriptions, SnapshotSubscriptions)
    finally:
        broker.stop_thread()
