"""The embedded default end to end: no service variables, a real server process, a real MQTT client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, *, token: str | None = None, method: str = "GET") -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method)  # noqa: S310 - loopback test server
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def mqtt_connect(port: int, username: str, password: str) -> bool:
    done, result = threading.Event(), {}

    def on_connect(client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        result["ok"] = not reason.is_failure
        done.set()

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"smoke-{username}")
    client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK from the embedded broker"
        return result["ok"]
    finally:
        client.disconnect()
        client.loop_stop()


def test_embedded_default_serves_health_api_and_broker(tmp_path):
    http_port, mqtt_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    env.update(DEBUG="true", FOGDECK_DATA_DIR=str(tmp_path), EMBEDDED_MQTT_PORT=str(mqtt_port))
    manage = [sys.executable, str(ROOT / "manage.py")]

    def run(*args: str) -> str:
        result = subprocess.run([*manage, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("migrate", "--noinput", "-v", "0")
    assert "demo fleet" in run("seed_demo", "--devices", "40")
    assert "(0 new)" in run("seed_demo", "--devices", "40")  # idempotent
    run(
        "shell",
        "-c",
        "from django.contrib.auth.models import User, Group; u = User.objects.create_user('ops');"
        " u.groups.add(Group.objects.get(name='admin'))",
    )
    token = run("token_create", "ops", "--name", "smoke").strip()
    server = subprocess.Popen(
        [*manage, "serve", "--port", str(http_port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health = request(f"http://127.0.0.1:{http_port}/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert status == 200, health
        assert health["checks"]["database"]["backend"] == "sqlite (embedded)"
        assert health["checks"]["mqtt"] == {
            **health["checks"]["mqtt"],
            "ok": True,
            "backend": "embedded broker",
        }
        assert health["checks"]["channel_layer"]["backend"] == "in-memory (embedded)"

        assert request(f"http://127.0.0.1:{http_port}/api/v1/devices/")[0] == 401
        status, devices = request(f"http://127.0.0.1:{http_port}/api/v1/devices/?tier=edge", token=token)
        assert status == 200 and devices["count"] > 20
        device_id = devices["results"][0]["id"]
        uid = devices["results"][0]["uid"]
        status, creds = request(
            f"http://127.0.0.1:{http_port}/api/v1/devices/{device_id}/credentials/",
            token=token,
            method="POST",
        )
        assert status == 201
        assert mqtt_connect(mqtt_port, uid, creds["secret"]) is True
        assert mqtt_connect(mqtt_port, uid, "not-the-secret") is False
        assert mqtt_connect(mqtt_port, "no-such-device", "x") is False
    finally:
        server.terminate()
        server.wait(15)


@pytest.mark.timeout(240)
def test_demo_command_runs_the_whole_embedded_stack(tmp_path):
    """`./dev demo` runs `manage.py demo`: seeded fleet, sample models, bridge and simulated devices online."""
    http_port, mqtt_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    env.update(
        DEBUG="true",
        FOGDECK_DATA_DIR=str(tmp_path),
        EMBEDDED_MQTT_PORT=str(mqtt_port),
        DEMO_PASSWORD="smoke-demo-password",
        MQTT_PUBLIC_URL=f"mqtt://127.0.0.1:{mqtt_port}",
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    demo = subprocess.Popen(
        [*manage, "demo", "--devices", "30", "--port", str(http_port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 150
        token = None
        online = 0
        while time.monotonic() < deadline:
            time.sleep(1)
            assert demo.poll() is None, demo.stdout.read().decode()[-3000:] if demo.stdout else ""
            try:
                if token is None:
                    status, _ = request(f"http://127.0.0.1:{http_port}/healthz")
                    if status != 200:
                        continue
                    result = subprocess.run(
                        [*manage, "token_create", "admin", "--name", "smoke"],
                        env=env,
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                    token = result.stdout.strip()
                status, body = request(
                    f"http://127.0.0.1:{http_port}/api/v1/devices/?status=online&page_size=1", token=token
                )
                online = body.get("count", 0)
                if online >= 25:
                    break
            except (urllib.error.URLError, ConnectionError, IndexError):
                continue
        assert online >= 25, f"only {online} simulated devices online"
        status, models = request(f"http://127.0.0.1:{http_port}/api/v1/models/", token=token)
        assert status == 200 and models["count"] >= 1
    finally:
        demo.terminate()
        demo.wait(30)
