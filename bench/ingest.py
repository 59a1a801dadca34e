"""Telemetry ingest from MQTT into PostgreSQL, in messages per second, end to end.

    .venv/bin/python -u -m bench.ingest [--devices 10000] [--messages 30000] [--naive-messages 6000]

Three consumers of the same burst, each measured in the same run the same way: the burst is published
while the consumer is away and queued by the broker for its persistent session (a Mosquitto of our own
that queues instead of dropping, `max_queued_messages 1000000`), then the consumer connects and drains it;
the rate is messages handled / (connection → last message handled). The publisher is not running while a
consumer is timed (it shared a process, and two cores, with the consumers, which made the "ceiling" the
publisher's speed), so each rate is the consumer's own capacity:

* bare: a paho subscriber that parses and stores nothing (the ceiling);
* naive: one device lookup and one autocommitted ORM INSERT per message (the baseline);
* bridge: the real `manage.py mqtt_bridge` process (COPY + rollup upsert per batch, acks after commit),
  started fresh on its session as after a restart (its device directory starts empty).

Every consumer's count of messages received is compared with the count the broker acknowledged: a
shortfall is printed and recorded, never hidden.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from bench import common
from bench.common import ensure_devices, mqtt_client, publish_all, telemetry_payload
from bench.report import Row, print_rows
from bench.stack import Stack, postgres_cpu_seconds


def subscribe(handler, client_id: str, *, clean: bool = True):  # type: ignore[no-untyped-def]
    """A QoS 1 subscriber to every device's telemetry, handling messages on paho's thread; with
    `clean=False` the broker keeps its session (and queues for it) while it is away."""
    ready = threading.Event()
    client = mqtt_client(client_id, clean=clean)
    client.on_connect = lambda c, u, f, r, p: c.subscribe("fogdeck/v1/devices/+/telemetry", qos=1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = lambda c, u, m: handler(m)
    client.connect(common.MQTT_HOST, common.MQTT_PORT)
    client.loop_start()
    ready.wait(10)
    return client


def queue_backlog(messages: list[tuple[str, bytes]]) -> float:
    """Publish `messages` while the consumer is away (the broker queues them for its session); publish rate."""
    seconds = publish_all(messages)
    return len(messages) / seconds


def run_subscriber(name: str, messages: list[tuple[str, bytes]], handler_factory) -> tuple[float, int, float]:  # type: ignore[no-untyped-def]
    """(messages handled per second, messages handled, CPU µs of this process per message handled), draining a
    backlog the broker queued for it (the subscriber runs in this process, which is otherwise idle then)."""
    count = [0]
    last = [time.monotonic()]
    handle = handler_factory()

    def handler(message) -> None:  # type: ignore[no-untyped-def]
        handle(message)
        count[0] += 1
        last[0] = time.monotonic()

    client_id = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    session = subscribe(lambda m: None, client_id, clean=False)  # the session the broker queues for
    session.disconnect()
    session.loop_stop()
    queue_backlog(messages)
    started, cpu = time.monotonic(), time.process_time()
    client = subscribe(handler, client_id, clean=False)
    while count[0] < len(messages) and time.monotonic() - last[0] < 15:
        time.sleep(0.01)
    cpu = time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    return count[0] / (last[0] - started), count[0], cpu / max(1, count[0]) * 1e6


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


def _truncate_telemetry() -> None:
    """Empty the bench's telemetry tables without leaving dead rows behind (a DELETE made later scans slow)."""
    from django.db import connection

    from telemetry.models import TelemetryRollup, TelemetrySample

    with connection.cursor() as cursor:
        tables = f"{TelemetrySample._meta.db_table}, {TelemetryRollup._meta.db_table}"
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY")


def _wait_stored(expected: int, started: float) -> tuple[int, float]:
    """Wait until `expected` rows are stored or 15 s pass without progress: (rows, time of the last change).

    Progress is watched through the newest row id (an index lookup, every 20 ms), not COUNT(*): a count
    every 20 ms scanned the table the bridge was writing and took PostgreSQL time from it. The rows are
    counted once at the end."""
    from django.db.models import Max

    from telemetry.models import TelemetrySample

    newest = lambda: TelemetrySample.objects.aggregate(n=Max("id"))["n"] or 0  # noqa: E731
    first, last_change, last_seen = newest(), time.monotonic(), None
    while time.monotonic() - last_change < 15:
        value = newest()
        if value != last_seen:
            last_change, last_seen = time.monotonic(), value
            # ids can skip (a batch retried after a rollback), so a count confirms the end
            if value - first >= expected and TelemetrySample.objects.count() >= expected:
                break
        time.sleep(0.02)
    return TelemetrySample.objects.count(), last_change


def run_bridge(stack: Stack, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    """The real bridge process, draining a backlog queued for its persistent session while it was stopped
    (what a bridge does after a restart): rows stored per second from its connection, rows stored, and the
    CPU µs per message of the bridge process and of PostgreSQL (every PostgreSQL process on the machine:
    an upper bound when other work shares it). A fresh process, so its device directory starts empty, as
    after any restart."""
    _truncate_telemetry()
    client_id = f"fogdeck-bench-bridge-{uuid.uuid4().hex[:6]}"
    stack.bridge(client_id, "bridge-session").stop()  # subscribed with a persistent session, then away
    queue_backlog(messages)
    bridge = stack.python("bridge", "manage.py", "mqtt_bridge", "--client-id", client_id)
    try:
        while "subscribed" not in bridge.output():  # connected: the broker starts sending the backlog now
            if bridge.popen.poll() is not None:
                raise RuntimeError(f"the bridge exited:\n{bridge.output()}")
            time.sleep(0.01)
        started, cpu, pg = time.monotonic(), bridge.cpu_seconds(), postgres_cpu_seconds()
        stored, last_change = _wait_stored(len(messages), started)
        cpu, pg = bridge.cpu_seconds() - cpu, postgres_cpu_seconds() - pg  # the 15 s idle tail costs ~nothing
        per = 1e6 / max(1, stored)
        return {"rate": stored / (last_change - started), "stored": stored, "cpu_us": cpu * per, "pg_us": pg * per}
    finally:
        bridge.stop()


def run(devices: int = 10000, messages: int = 50000, naive_messages: int = 3000) -> list[Row]:
    from protocol.device_topics import telemetry_topic

    uids = ensure_devices(devices)
    payload = telemetry_payload()
    burst = [(telemetry_topic(uids[i % len(uids)]), payload) for i in range(messages)]
    naive_burst = burst[:naive_messages]
    with Stack("ingest") as stack:
        stack.broker()
        print(
            f"  ingest: {messages} QoS 1 telemetry messages from {len(uids)} devices, queued by the broker for each "
            f"consumer's session while it is away, then drained; Mosquitto 127.0.0.1:{common.MQTT_PORT}"
        )
        bare, bare_n, bare_cpu = run_subscriber("bare", burst, bare_factory)
        print(
            f"  bare subscriber (stores nothing): {bare:9.0f} msg/s, {bare_n}/{len(burst)} received, "
            f"{bare_cpu:.0f} µs CPU/msg"
        )
        _truncate_telemetry()
        naive, naive_n, _ = run_subscriber("naive", naive_burst, naive_factory)
        print(f"  naive, one INSERT per message:   {naive:9.0f} msg/s, {naive_n}/{len(naive_burst)} received")
        bridge = run_bridge(stack, burst)
        ours, ours_n = bridge["rate"], bridge["stored"]
        print(
            f"  bridge (COPY + rollup upsert):    {ours:9.0f} msg/s, {ours_n}/{len(burst)} stored, "
            f"{bridge['cpu_us']:.0f} µs CPU/msg (+ PostgreSQL {bridge['pg_us']:.0f}); {ours / bare:.2f}x bare"
        )
        bridge_log = stack.procs[-1].output(600) if stack.procs else ""
    lost = {"bare": len(burst) - bare_n, "naive": len(naive_burst) - naive_n, "bridge": len(burst) - ours_n}
    note = ", ".join(f"{k} lost {v}" for k, v in lost.items() if v) or "nothing lost (received = published)"
    if lost["bridge"]:
        print(f"  bridge log tail:\n{bridge_log}")
    return [
        Row("ingest", f"bridge throughput, {len(uids):,} devices", ours, "msg/s", "naive 1 INSERT/msg", naive,
            target=">= 10x", met=ours / naive >= 10 and not lost["bridge"], note=note),
        Row("ingest", "bridge vs bare subscriber", ours, "msg/s", "bare subscriber", bare,
            target=">= 0.5x", met=ours / bare >= 0.5 and not lost["bridge"],
            note=f"bridge {bridge['cpu_us']:.0f} µs CPU/msg (PostgreSQL {bridge['pg_us']:.0f}), bare {bare_cpu:.0f}"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--naive-messages", type=int, default=3000)
    args = parser.parse_args()
    common.setup_django()
    print_rows(run(args.devices, args.messages, args.naive_messages))


if __name__ == "__main__":
    main()
