"""Backend probes for `/healthz`: each returns None when healthy or the reason it is not."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection

PROBE_TIMEOUT_SECONDS = 3.0


def check_database() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return None


def check_channel_layer() -> str | None:
    layer = get_channel_layer()
    if layer is None:
        return "no channel layer configured"

    async def roundtrip() -> str | None:
        channel = await layer.new_channel("healthz.")
        await layer.send(channel, {"type": "healthz.ping"})
        message = await asyncio.wait_for(layer.receive(channel), PROBE_TIMEOUT_SECONDS)
        return None if message.get("type") == "healthz.ping" else "channel layer returned a wrong message"

    return async_to_sync(roundtrip)()


def check_mqtt() -> str | None:
    """Connect to the broker with the control plane's credentials and wait for the CONNACK."""
    connected = threading.Event()
    outcome: dict[str, str] = {}

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            outcome["error"] = f"broker refused the control plane: {reason}"
        connected.set()

    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"fogdeck-healthz-{uuid.uuid4().hex[:12]}",
    )
    if settings.MQTT_USERNAME:
        client.username_pw_set(settings.MQTT_USERNAME, settings.MQTT_PASSWORD or None)
    if settings.MQTT_TLS:
        client.tls_set()
    client.on_connect = on_connect
    try:
        client.connect(settings.MQTT_HOST, settings.MQTT_PORT, keepalive=10)
    except OSError as exc:
        return f"cannot reach {settings.MQTT_HOST}:{settings.MQTT_PORT}: {exc}"
    client.loop_start()
    try:
        if not connected.wait(PROBE_TIMEOUT_SECONDS):
            return f"no CONNACK from {settings.MQTT_HOST}:{settings.MQTT_PORT} within {PROBE_TIMEOUT_SECONDS}s"
        return outcome.get("error")
    finally:
        client.disconnect()
        client.loop_stop()


def check_storage() -> str | None:
    """Write, read back and delete a small object in the artifact storage."""
    name = default_storage.save(f"healthz/{uuid.uuid4().hex}.txt", ContentFile(b"ok"))
    try:
        with default_storage.open(name) as handle:
            if handle.read() != b"ok":
                return "storage returned different bytes than written"
    finally:
        default_storage.delete(name)
    return None


CHECKS: dict[str, Callable[[], str | None]] = {
    "database": check_database,
    "channel_layer": check_channel_layer,
    "mqtt": check_mqtt,
    "storage": check_storage,
}


def backend_label(name: str) -> str:
    labels = {
        "database": "sqlite (embedded)" if settings.EMBEDDED_DATABASE else connection.vendor,
        "channel_layer": "redis" if settings.REDIS_URL else "in-memory (embedded)",
        "mqtt": "embedded broker" if settings.EMBEDDED_MQTT else f"{settings.MQTT_HOST}:{settings.MQTT_PORT}",
        "storage": "s3" if not settings.EMBEDDED_STORAGE else "local files (embedded)",
    }
    return labels[name]


def run_checks() -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, probe in CHECKS.items():
        started = time.perf_counter()
        try:
            error = probe()
        except Exception as exc:  # a probe reports any failure of its backend, whatever its type
            error = f"{type(exc).__name__}: {exc}"
        results[name] = {
            "ok": error is None,
            "backend": backend_label(name),
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            **({"error": error} if error else {}),
        }
    return results
