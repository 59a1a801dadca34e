"""An unmodified AWS IoT Device SDK v2 jobs client (`awsiot.iotjobs.IotJobsClient` over `awscrt`) takes a Fogdeck
deployment from the bridge, through our Mosquitto and through the embedded broker, with the device's own
credentials."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from awscrt import io as crt_io
from awscrt import mqtt as crt_mqtt
from awsiot import iotjobs
from django.test import override_settings

from audit.actors import Actor
from broker.embedded import EmbeddedBroker, static_authenticator
from deployments import bridge_handlers
from deployments.models import Job, JobStatus
from deployments.services.jobs import deployment_create
from models_registry.keys import all_keys
from protocol.signing import verify
from stack.mqtt import _device_hash
from tests.mqttbridge.test_runtime import DeviceClient, provision, running_bridge
from tests.processes import CONTROL_PASSWORD, CONTROL_USER, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
QOS = crt_mqtt.QoS.AT_LEAST_ONCE
WAIT = 20.0


class AwsThing:
    """The SDK's jobs client for one thing, its callbacks turned into queues."""

    def __init__(self, port: int, uid: str, secret: str) -> None:
        self.uid = uid
        self._loop = crt_io.EventLoopGroup(1)
        bootstrap = crt_io.ClientBootstrap(self._loop, crt_io.DefaultHostResolver(self._loop))
        self.connection = crt_mqtt.Connection(
            client=crt_mqtt.Client(bootstrap, None), host_name="127.0.0.1", port=port, client_id=uid,
            clean_session=True, keep_alive_secs=30, username=uid, password=secret,
            disable_metrics=True,  # else awscrt appends "?SDK=…" to the username (docs/protocol.md)
        )  # fmt: skip
        self.connection.connect().result(WAIT)
        self.jobs = iotjobs.IotJobsClient(self.connection)
        self.next_changed: queue.Queue[iotjobs.NextJobExecutionChangedEvent] = queue.Queue()
        self.started: queue.Queue[Any] = queue.Queue()
        self.updated: queue.Queue[Any] = queue.Queue()
        self.described: queue.Queue[Any] = queue.Queue()
        thing = self.uid
        subscriptions = [
            self.jobs.subscribe_to_next_job_execution_changed_events(
                iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), QOS, self.next_changed.put
            ),
            self.jobs.subscribe_to_start_next_pending_job_execution_accepted(
                iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), QOS, self.started.put
            ),
            self.jobs.subscribe_to_start_next_pending_job_execution_rejected(
                iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), QOS, self.started.put
            ),
            self.jobs.subscribe_to_update_job_execution_accepted(
                iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id="+"), QOS, self.updated.put
            ),
            self.jobs.subscribe_to_update_job_execution_rejected(
                iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id="+"), QOS, self.updated.put
            ),
            self.jobs.subscribe_to_describe_job_execution_accepted(
                iotjobs.DescribeJobExecutionSubscriptionRequest(thing_name=thing, job_id="+"), QOS, self.described.put
            ),
            self.jobs.subscribe_to_describe_job_execution_rejected(
                iotjobs.DescribeJobExecutionSubscriptionRequest(thing_name=thing, job_id="+"), QOS, self.described.put
            ),
        ]
        for future, _topic in subscriptions:
            future.result(WAIT)

    def start_next(self, token: str, **fields: Any) -> Any:
        request = iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.uid, client_token=token, **fields)
        self.jobs.publish_start_next_pending_job_execution(request, QOS).result(WAIT)
        return self.started.get(timeout=WAIT)

    def update(self, job_id: str, status: str, token: str, **fields: Any) -> Any:
        request = iotjobs.UpdateJobExecutionRequest(
            thing_name=self.uid, job_id=job_id, status=status, client_token=token, **fields
        )
        self.jobs.publish_update_job_execution(request, QOS).result(WAIT)
        return self.updated.get(timeout=WAIT)

    def describe(self, job_id: str, token: str) -> Any:
        request = iotjobs.DescribeJobExecutionRequest(thing_name=self.uid, job_id=job_id, client_token=token)
        self.jobs.publish_describe_job_execution(request, QOS).result(WAIT)
        return self.described.get(timeout=WAIT)

    def close(self) -> None:
        self.connection.disconnect().result(WAIT)


def subscribed(client: DeviceClient, filters: list[tuple[str, int]]) -> None:
    """Subscribe and wait for the SUBACK (granted or not)."""
    granted = threading.Event()
    client.client.on_subscribe = lambda *args: granted.set()
    client.client.subscribe(filters)
    assert granted.wait(WAIT), "no SUBACK"


@dataclass
class Embedded:
    """The embedded broker where the tests take a Mosquitto: one port for devices and the bridge, and
    credentials read from the database at each CONNECT (nothing to sync)."""

    broker: EmbeddedBroker

    @property
    def port(self) -> int:
        return self.broker.port

    control_port = port

    def sync_auth(self) -> None:
        pass


@pytest.fixture(params=["mosquitto", "embedded"])
def mqtt_broker(request):
    """Both brokers devices may be on: the same test runs against each."""
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto")
        return
    embedded = EmbeddedBroker(
        port=0, authenticator=static_authenticator({CONTROL_USER: CONTROL_PASSWORD}, _device_hash)
    )
    embedded.start_in_thread()
    yield Embedded(embedded)
    embedded.stop_thread()


@pytest.fixture
def bridge(mqtt_broker):
    with running_bridge(mqtt_broker, outbox_poll_seconds=0.1, aws_jobs=bridge_handlers.aws_jobs_requests) as instance:
        yield instance


@pytest.fixture
def aws_thing(mqtt_broker, bridge):
    things: list[AwsThing] = []

    def make() -> tuple[AwsThing, Any]:
        device, secret = provision(mqtt_broker, job_dialect="aws-iot-jobs")
        thing = AwsThing(mqtt_broker.port, device.uid, secret)
        things.append(thing)
        return thing, device

    yield make
    for thing in things:
        thing.close()


def test_the_sdk_client_takes_a_deployment_to_succeeded(aws_thing, published_version):
    thing, device = aws_thing()
    job = deployment_create(actor=Actor.system("tests"), device=device, version=published_version)

    event = thing.next_changed.get(timeout=WAIT)
    assert event.execution.job_id == str(job.pk) and event.execution.status == "QUEUED"
    started = thing.start_next("start-1", status_details={"phase": "download"}, step_timeout_in_minutes=30)
    assert isinstance(started, iotjobs.StartNextJobExecutionResponse) and started.client_token == "start-1"
    execution = started.execution
    assert execution.job_id == str(job.pk) and execution.status == "IN_PROGRESS" and execution.version_number == 2
    document = execution.job_document  # Fogdeck's install document: a client that verifies can
    assert document["sha256"] == published_version.sha256 and "/api/v1/artifacts/" in document["artifact_url"]
    key = next(k for k in all_keys() if k.key_id == document["key_id"])
    assert verify(key.public_key_b64, document["manifest"], document["signature"])
    assert json.loads(document["manifest"])["sha256"] == document["sha256"]

    done = thing.update(str(job.pk), "SUCCEEDED", "done-1", status_details={"installed": "yes", "p95Ms": "9"},
                        expected_version=2, include_job_execution_state=True)  # fmt: skip
    assert isinstance(done, iotjobs.UpdateJobExecutionResponse) and done.client_token == "done-1"
    assert done.execution_state.status == "SUCCEEDED" and done.execution_state.version_number == 3
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.status_details == {"installed": "yes", "p95Ms": "9"}
    # nothing pending any more: notify-next without an execution
    assert thing.next_changed.get(timeout=WAIT).execution is None
    described = thing.describe(str(job.pk), "d-1")
    assert isinstance(described, iotjobs.RejectedError) and described.code == "TerminalStateReached"


def test_the_sdk_client_reports_failed_and_a_stale_version_is_refused(aws_thing, published_version):
    thing, device = aws_thing()
    job = deployment_create(actor=Actor.system("tests"), device=device, version=published_version)
    thing.next_changed.get(timeout=WAIT)
    assert thing.start_next("s").execution.version_number == 2

    stale = thing.update(str(job.pk), "SUCCEEDED", "stale-1", expected_version=1)
    assert isinstance(stale, iotjobs.RejectedError) and stale.code == "VersionMismatch"
    assert stale.client_token == "stale-1" and stale.execution_state.version_number == 2
    assert Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS

    failed = thing.update(str(job.pk), "FAILED", "f-1", status_details={"reason": "smoke test: bad input shape"},
                          expected_version=2)  # fmt: skip
    assert isinstance(failed, iotjobs.UpdateJobExecutionResponse) and failed.client_token == "f-1"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.reason == "smoke test: bad input shape"
    assert job.status_details == {"reason": "smoke test: bad input shape"}


def test_one_thing_cannot_read_or_answer_anothers_jobs(mqtt_broker, bridge, published_version):
    owner, owner_secret = provision(mqtt_broker, job_dialect="aws-iot-jobs")
    intruder, intruder_secret = provision(mqtt_broker, job_dialect="aws-iot-jobs")
    spy = DeviceClient(mqtt_broker.port, intruder.uid, intruder_secret)
    watcher = DeviceClient(mqtt_broker.port, owner.uid, owner_secret)
    try:
        mine, theirs = f"$aws/things/{intruder.uid}/jobs/#", f"$aws/things/{owner.uid}/jobs/#"
        subscribed(spy, [(theirs, 1), (mine, 1)])
        subscribed(watcher, [(theirs, 1)])
        job = deployment_create(actor=Actor.system("tests"), device=owner, version=published_version)
        wait_until(lambda: any(t.endswith("/notify-next") for t, _ in watcher.messages), WAIT, "owner notified")
        # the intruder answers the owner's job: Mosquitto drops it, nothing changes
        forged = json.dumps({"status": "SUCCEEDED", "clientToken": "forged"}).encode()
        spy.client.publish(f"$aws/things/{owner.uid}/jobs/{job.pk}/update", forged, qos=1).wait_for_publish(5)
        # barrier: the intruder's own request, on the same path, is answered
        own = json.dumps({"clientToken": f"own-{uuid.uuid4().hex[:6]}"}).encode()
        spy.client.publish(f"$aws/things/{intruder.uid}/jobs/get", own, qos=1).wait_for_publish(5)
        wait_until(lambda: any(t.endswith("/jobs/get/accepted") for t, _ in spy.messages), WAIT, "own reply")
        assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
        assert not any(owner.uid in topic for topic, _ in spy.messages)  # never read the owner's notifications
    finally:
        spy.close()
        watcher.close()


def test_bridges_sharing_the_device_topics_still_answer_the_aws_topics(mosquitto, published_version):
    """Mosquitto delivers no `$` topic to a shared subscription: the AWS request topics are subscribed unshared."""
    device, secret = provision(mosquitto, job_dialect="aws-iot-jobs")
    with (
        override_settings(MQTT_BRIDGE_SHARED_GROUP="fleet"),
        running_bridge(mosquitto, outbox_poll_seconds=0.1, aws_jobs=bridge_handlers.aws_jobs_requests),
    ):
        thing = AwsThing(mosquitto.port, device.uid, secret)
        try:
            job = deployment_create(actor=Actor.system("tests"), device=device, version=published_version)
            assert thing.next_changed.get(timeout=WAIT).execution.job_id == str(job.pk)
            assert thing.start_next("shared").execution.status == "IN_PROGRESS"
        finally:
            thing.close()
