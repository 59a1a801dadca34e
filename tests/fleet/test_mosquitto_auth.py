"""The generated password/ACL files, enforced by a real Mosquitto started on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.core.management import call_command
from django.test import override_settings

from audit.actors import Actor
from fleet.services import device_issue_credentials, device_revoke
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(conf: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"mosquitto did not start: {process.stderr.read().decode() if process.stderr else ''}")


def connect(port: int, username: str, password: str) -> tuple[mqtt.Client, bool]:
    done = threading.Event()
    result: dict[str, bool] = {}

    def on_connect(client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        result["ok"] = not reason.is_failure
        done.set()

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    answered = done.wait(5)
    if not answered or not result["ok"]:
        # a refused client would go on retrying on paho's thread after the test
        client.disconnect()
        client.loop_stop()
    assert answered, "no CONNACK"
    return client, result["ok"]


@override_settings(MQTT_USERNAME="fogdeck-control", MQTT_PASSWORD="control-secret")
def test_mosquitto_enforces_per_device_credentials_and_topics(tmp_path):
    from tests.processes import mosquitto_conf, write_test_certificate

    port, control_port, tls_port = free_port(), free_port(), free_port()
    auth = tmp_path / "auth"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(mosquitto_conf(auth, {1883: control_port, 1884: port, 8883: tls_port}))
    write_test_certificate(auth / "certs")
    actor = Actor.system("tests")
    a, b, revoked = DeviceFactory(uid="dev-a"), DeviceFactory(uid="dev-b"), DeviceFactory(uid="dev-r")
    secret_a = device_issue_credentials(actor=actor, device=a).secret
    device_issue_credentials(actor=actor, device=b)
    secret_r = device_issue_credentials(actor=actor, device=revoked).secret
    device_revoke(actor=actor, device=revoked)
    reserved = DeviceFactory(uid="legacy-1")
    # a row registered before the API refused uids in the control plane's client id namespace
    type(reserved).objects.filter(pk=reserved.pk).update(uid="fogdeck-bridge-2")
    reserved.refresh_from_db()
    device_issue_credentials(actor=actor, device=reserved)
    call_command("mqtt_auth_sync", out=str(auth))
    devices = (auth / "passwd-devices").read_text()
    assert "dev-a:$7$" in devices and "dev-r" not in devices
    assert "fogdeck-" not in devices  # neither the control user nor a device in its client id namespace
    assert [line.split(":")[0] for line in (auth / "passwd-control").read_text().splitlines()] == ["fogdeck-control"]
    broker = start_broker(conf, port)
    try:
        assert connect(port, "fogdeck-control", "control-secret")[1] is False  # not where devices connect
        control, ok = connect(control_port, "fogdeck-control", "control-secret")
        assert ok
        received: list[str] = []
        got = threading.Event()

        def on_message(client, userdata, message):  # type: ignore[no-untyped-def]
            received.append(message.topic)
            if message.topic.endswith("/barrier"):
                got.set()

        control.on_message = on_message
        control.subscribe("fogdeck/v1/devices/#", qos=1)[0]
        time.sleep(0.2)  # let the SUBACK land before devices publish

        assert connect(port, "dev-a", "wrong")[1] is False
        assert connect(port, "dev-r", secret_r)[1] is False
        device_a, ok = connect(port, "dev-a", secret_a)
        assert ok
        device_a.publish("fogdeck/v1/devices/dev-b/status", b"spoofed", qos=1).wait_for_publish(5)
        device_a.publish("fogdeck/v1/devices/dev-a/status", b"mine", qos=1).wait_for_publish(5)
        device_a.publish("fogdeck/v1/devices/dev-a/barrier", b"", qos=1).wait_for_publish(5)
        assert got.wait(5)
        assert "fogdeck/v1/devices/dev-a/status" in received
        assert "fogdeck/v1/devices/dev-b/status" not in received
        for client in (control, device_a):
            client.disconnect()
            client.loop_stop()
    finally:
        broker.terminate()
        broker.wait(5)
