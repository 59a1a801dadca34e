"""Telemetry ingest from MQTT into PostgreSQL, in messages per second, end to end.

    . /tmp/testenv.sh   # or any DATABASE_URL/REDIS_URL; Mosquitto on 127.0.0.1:1883 with anonymous access
    .venv/bin/python -m bench.ingest [--messages 20000] [--devices 2000]

Three consumers of the same published burst, measured in the same run (first publish → last message
handled): a bare subscriber that stores nothing (the ceiling), a naive one-INSERT-per-message
subscriber (the baseline), and the real bridge process (`manage.py mqtt_bridge`, COPY + rollup upsert).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid

from bench.common import (
    MQTT_HOST,
    MQTT_PORT,
    ROOT,
    ensure_devices,
    mqtt_client,
    publish_all,
    setup_django,
    telemetry_payload,
)

RATE = [0.0]


def subscribe(handler, client_id: str):  # type: ignore[no-untyped-def]
    """A clean-session QoS 1 subscriber to every device's telemetry, handling messages on paho's thread."""
    ready = threading.Event()
    client = mqtt_client(client_id)
    client.on_connect = lambda c, u, f, r, p: c.subscribe("fogdeck/v1/devices/+/telemetry", qos=1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = lambda c, u, m: handler(m)
    client.connect(MQTT_HOST, MQTT_PORT)
    client.loop_start()
    ready.wait(10)
    return client


def run_subscriber(name: str, messages: list[tuple[str, bytes]], handler_factory) -> float:  # type: ignore[no-untyped-def]
    count = [0]
    last = [time.monotonic()]
    handle = handler_factory()
    ours = {t for t, _ in messages}

    def handler(message) -> None:  # type: ignore[no-untyped-def]
        if message.topic not in ours:  # the shared broker carries other people's devices too
            return
        handle(message)
        count[0] += 1
        last[0] = time.monotonic()

    client = subscribe(handler, f"bench-{name}-{uuid.uuid4().hex[:6]}")
    started = time.monotonic()
    publish_all(messages, rate=RATE[0])
    while count[0] < len(messages) and time.monotonic() - last[0] < 15:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    if count[0] < len(messages):
        print(f"  {name}: handled {count[0]} of {len(messages)} (the broker dropped the rest)")
    return count[0] / (last[0] - started)


def bare_factory():  # type: ignore[no-untyped-def]
    from protocol.messages import parse_telemetry

    return lambda m: parse_telemetry(m.payload)


def naive_factory():  # type: ignore[no-untyped-def]
    """What a first version would do: parse, look the device up, one autocommitted INSERT per message."""
    from fleet.models import Device
    from protocol.device_topics import parse_topic
    from protocol.messages import parse_telemetry
    from telemetry.models import TelemetrySample

    def handle(m) -> None:  # type: ignore[no-untyped-def]
        uid, _, _ = parse_topic(m.topic)
        message = parse_telemetry(m.payload)
        device_id = Device.objects.filter(uid=uid).values_list("pk", flat=True).get()
        for s in message.samples:
            TelemetrySample.objects.create(
                device_id=device_id,
                model_name=s.model,
                version_number=s.version,
                ts=message.ts,
                interval_s=message.interval_s,
                requests=s.requests,
                errors=s.errors,
                p50_ms=s.latency_ms.p50,
                p95_ms=s.latency_ms.p95,
                p99_ms=s.latency_ms.p99,
                max_ms=s.latency_ms.max,
                inputs={k: v.model_dump() for k, v in s.inputs.items()},
            )

    return handle


def run_bridge(messages: list[tuple[str, bytes]]) -> float:
    from telemetry.models import TelemetrySample

    TelemetrySample.objects.all().delete()
    client_id = f"bench-bridge-{uuid.uuid4().hex[:6]}"
    log = open(ROOT / "bench" / "results" / "bridge.log.tmp", "w")
    bridge = subprocess.Popen(
        [sys.executable, "manage.py", "mqtt_bridge", "--client-id", client_id],
        cwd=ROOT,
        env=os.environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while "subscribed" not in (ROOT / "bench" / "results" / "bridge.log.tmp").read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the bridge did not subscribe")
            time.sleep(0.1)
        started = time.monotonic()
        publish_all(messages, rate=RATE[0])
        stored, last_change, last_count = 0, time.monotonic(), -1
        while stored < len(messages) and time.monotonic() - last_change < 15:
            stored = TelemetrySample.objects.count()
            if stored != last_count:
                last_change, last_count = time.monotonic(), stored
            time.sleep(0.05)
        if stored < len(messages):
            print(f"  bridge: stored {stored} of {len(messages)} (the broker dropped the rest)")
        return stored / (last_change - started)
    finally:
        bridge.terminate()
        bridge.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=4000, help="offered load, msg/s (paced publisher)")
    parser.add_argument("--only", choices=["bare", "naive", "bridge"], action="append")
    args = parser.parse_args()
    RATE[0] = args.rate
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    setup_django()
    from protocol.device_topics import telemetry_topic
    from telemetry.models import TelemetryRollup, TelemetrySample

    uids = ensure_devices(args.devices)
    payload = telemetry_payload()
    messages = [(telemetry_topic(uids[i % len(uids)]), payload) for i in range(args.messages)]
    print(
        f"{args.messages} telemetry messages from {len(uids)} devices, QoS 1, offered at {args.rate:.0f} msg/s, "
        f"Mosquitto {MQTT_HOST}:{MQTT_PORT}"
    )
    bare = run_subscriber("bare", messages, bare_factory)
    print(f"  bare subscriber (stores nothing): {bare:9.0f} msg/s")
    TelemetrySample.objects.all().delete()
    naive = run_subscriber("naive", messages, naive_factory)
    print(f"  naive, one INSERT per message:   {naive:9.0f} msg/s")
    TelemetrySample.objects.all().delete()
    TelemetryRollup.objects.all().delete()
    ours = run_bridge(messages)
    print(f"  bridge (COPY + rollup upsert):    {ours:9.0f} msg/s")
    print(f"  bridge / naive = {ours / naive:.1f}x (target >= 10x); bridge / bare = {ours / bare:.0%} (target >= 50%)")
    print(f"  rollup rows: {TelemetryRollup.objects.count()}, raw rows: {TelemetrySample.objects.count()}")


if __name__ == "__main__":
    main()
