"""The bridge answers every job update after its commit, and applies the results a device's state lists,
on both brokers (our Mosquitto with the generated ACL, and the embedded broker): a device may read its
own `P/jobs/{id}/update/accepted|rejected`."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from django.test import override_settings
from django.utils import timezone

from audit.actors import Actor
from deployments import bridge_handlers
from deployments.models import Job
from deployments.services.jobs import deployment_create
from fleet.services import device_issue_credentials
from mqttbridge.runtime import Bridge
from protocol import device_topics as topics
from protocol.messages import parse_job_update_accepted, parse_job_update_rejected
from tests.factories import DeviceFactory
from tests.processes import CONTROL_PASSWORD, CONTROL_USER, wait_until
from tests.security.test_mqtt_abuse import BrokerUnderTest
from tests.security.test_mqtt_abuse import broker as broker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
ACTOR = Actor.system("tests")
WAIT = 10.0
RECONCILE_DELAY = 1.5  # shorter than the bridge's default, long enough to see that it waits


@pytest.fixture
def bridge(broker: BrokerUnderTest) -> Iterator[Bridge]:
    with override_settings(MQTT_HOST="127.0.0.1", MQTT_PORT=broker.control_port, MQTT_USERNAME=CONTROL_USER,
                           MQTT_PASSWORD=CONTROL_PASSWORD, MQTT_TLS=False):  # fmt: skip
        instance = Bridge(
            client_id=f"fogdeck-bridge-{uuid.uuid4().hex[:6]}", outbox_poll_seconds=0.1,
            reconcile_delay_seconds=RECONCILE_DELAY, **bridge_handlers.HANDLERS,
        )  # fmt: skip
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        try:
            assert instance.connected.wait(WAIT), "bridge did not connect"
            yield instance
        finally:
            instance.stop()
            thread.join(WAIT)


class Device:
    """A device on its own credentials, subscribed to the answers to its job updates."""

    def __init__(self, broker: BrokerUnderTest, published_version) -> None:
        self.row = DeviceFactory()
        self.uid = self.row.uid
        secret = device_issue_credentials(actor=ACTOR, device=self.row).secret
        broker.sync()
        self.answers: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.paho = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.uid)
        self.paho.username_pw_set(self.uid, secret)
        subscribed = threading.Event()
        self.paho.on_connect = lambda c, *_: c.subscribe(topics.job_update_answers_filter(self.uid), 1)
        self.paho.on_subscribe = lambda c, u, mid, reasons, p: subscribed.set() if not reasons[0].is_failure else None
        self.paho.on_message = lambda c, u, m: self.answers.put((m.topic, bytes(m.payload)))
        self.paho.connect("127.0.0.1", broker.port)
        self.paho.loop_start()
        assert subscribed.wait(WAIT), "the broker refused a device its own answers"
        self.job = deployment_create(actor=ACTOR, device=self.row, version=published_version)

    def send(self, job_id: str, payload: dict | bytes) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.paho.publish(f"fogdeck/v1/devices/{self.uid}/jobs/{job_id}/update", body, qos=1).wait_for_publish(WAIT)

    def update(self, seq: int, status: str, job_id: str | None = None, **extra: object) -> None:
        job_id = job_id or str(self.job.id)
        self.send(job_id, {"schema_version": 1, "job_id": job_id, "seq": seq, "status": status,
                           "ts": timezone.now().isoformat(), **extra})  # fmt: skip

    def next_answer(self) -> tuple[str, str, object]:
        topic, payload = self.answers.get(timeout=WAIT)
        job_id, kind = topics.job_answer_of(self.uid, topic)  # type: ignore[misc]
        parse = parse_job_update_accepted if kind == "accepted" else parse_job_update_rejected
        return kind, job_id, parse(payload)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def device(broker, bridge, published_version) -> Iterator[Device]:
    made = Device(broker, published_version)
    yield made
    made.close()


def test_each_update_is_answered_with_the_job_as_stored_after_the_commit(device):
    job_id = str(device.job.id)
    device.update(1, "IN_PROGRESS", step="downloading", progress=0.5)
    kind, answered, answer = device.next_answer()
    assert (kind, answered, answer.status, answer.seq) == ("accepted", job_id, "IN_PROGRESS", 1)
    assert Job.objects.get(pk=job_id).last_seq == 1  # stored before it was answered

    device.update(1, "IN_PROGRESS", step="downloading", progress=0.5)  # a duplicate: answered all the same
    assert device.next_answer()[2].seq == 1

    device.update(3, "SUCCEEDED")
    kind, _, answer = device.next_answer()
    assert (kind, answer.status, answer.seq) == ("accepted", "SUCCEEDED", 3)
    device.update(2, "IN_PROGRESS", step="activating")  # late: the answer says what is stored
    kind, _, answer = device.next_answer()
    assert (kind, answer.status, answer.seq) == ("accepted", "SUCCEEDED", 3)
    assert Job.objects.get(pk=job_id).status == "SUCCEEDED"


def test_an_update_that_can_never_apply_is_rejected_with_its_reason(device):
    unknown = str(uuid.uuid4())
    device.update(1, "SUCCEEDED", job_id=unknown)
    kind, job_id, answer = device.next_answer()
    assert (kind, job_id, answer.seq, answer.reason_code) == ("rejected", unknown, 1, "unknown_job")

    device.send(str(device.job.id), b'{"schema_version": 1, "job_id": "nope"}')
    kind, job_id, answer = device.next_answer()
    assert (kind, job_id, answer.seq, answer.reason_code) == ("rejected", str(device.job.id), None, "invalid_message")
    assert Job.objects.get(pk=device.job.pk).status == "QUEUED"


def stored_state(device: Device) -> dict:
    return type(device.row).objects.get(pk=device.row.pk).reported_state or {}


def test_a_result_the_state_lists_is_applied_when_its_update_never_came(device, bridge):
    job_id = str(device.job.id)
    state = {
        "schema_version": 1, "ts": timezone.now().isoformat(), "agent_version": "1.0",
        "hardware": {"arch": "x86_64", "cpu": "test", "memory_mb": 2048, "accelerator": "none"},
        "runtimes": [{"name": "onnxruntime", "version": "1.18"}], "slots": {"a": None, "b": None}, "active": {},
        "recent_jobs": [{"job_id": job_id, "status": "FAILED", "seq": 6, "reason": "disk full"}],
    }  # fmt: skip
    device.paho.publish(topics.state_topic(device.uid), json.dumps(state).encode(), qos=1, retain=True)
    published = time.monotonic()

    # the state itself is stored at once; its recent jobs wait for the reconcile delay (an update sent
    # just before it, to another bridge, has committed by then)
    wait_until(lambda: "recent_jobs" in stored_state(device), WAIT, "the state stored")
    if time.monotonic() - published < RECONCILE_DELAY - 0.2:
        assert Job.objects.get(pk=job_id).status == "QUEUED", "reconciled before its delay"
    wait_until(lambda: Job.objects.get(pk=job_id).status == "FAILED", WAIT, "the reported result")
    assert time.monotonic() - published >= RECONCILE_DELAY - 0.1
    job = Job.objects.get(pk=job_id)
    assert (job.last_seq, job.reason) == (6, "disk full")
    kind, answered, answer = device.next_answer()  # the device can stop sending that update
    assert (kind, answered, answer.status, answer.seq) == ("accepted", job_id, "FAILED", 6)
    assert bridge.stats.applied["job_result_from_state"] == 1
