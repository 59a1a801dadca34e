"""Publish-to-browser latency: device publish → websocket message at a signed-in websocket client.

    .venv/bin/python -u -m bench.latency [--devices 2000] [--probes 60]

A probe device publishes one QoS 1 telemetry message every 0.5 s (each with a distinct p95 value that
identifies it); a websocket client signed in with a viewer's session cookie listens on
`/ws/devices/{probe}/` against `manage.py serve` (uvicorn, Redis channel layer). The path measured is
the whole product path: Mosquitto → bridge batch → PostgreSQL commit → coalescer → Redis group_send →
websocket. Measured twice in the same run: with no other traffic (the baseline) and under the background
load of N simulated devices (agent/simulator.py) sending telemetry every 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench import common
from bench.report import Row, print_rows
from bench.stack import Stack, wait_until

PROBE_SPACING_S = 0.5  # above the coalescer's 200 ms, so each probe is its own websocket message
SIM_TELEMETRY_INTERVAL_S = 5


def session_cookie() -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from tests.factories import make_user

    user = get_user_model().objects.filter(username="bench-viewer").first() or make_user("bench-viewer", "viewer")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def probe_payload(marker: int) -> bytes:
    return common.telemetry_payload(p95=1000.0 + marker)


async def measure(server_port: int, device_id: int, uid: str, cookie: str, probes: int) -> list[float]:
    """Seconds from each probe's publish until the websocket shows it or newer figures (missing probes are
    omitted)."""
    from websockets.asyncio.client import connect

    from protocol.device_topics import telemetry_topic

    sent: dict[int, float] = {}
    latencies: dict[int, float] = {}
    url = f"ws://127.0.0.1:{server_port}/ws/devices/{device_id}/"
    publisher = common.mqtt_client(f"bench-probe-{time.monotonic_ns()}")
    publisher.connect(common.MQTT_HOST, common.MQTT_PORT)
    publisher.loop_start()
    async with connect(
        url, additional_headers={"Cookie": f"sessionid={cookie}"}, origin=f"http://127.0.0.1:{server_port}"
    ) as socket:

        async def receive() -> None:
            async for raw in socket:
                now = time.monotonic()
                message = json.loads(raw)
                for item in message.get("items", []):
                    newest = round(float(item.get("p95_ms", 0)) - 1000.0)
                    # The coalescer sends the latest figures: a probe superseded by a newer one in the same
                    # batch reaches the browser when that newer one does.
                    for marker in [m for m in sent if m <= newest and m not in latencies]:
                        latencies[marker] = now - sent[marker]

        listener = asyncio.create_task(receive())
        await asyncio.sleep(0.5)
        for marker in range(1, probes + 1):
            sent[marker] = time.monotonic()
            publisher.publish(telemetry_topic(uid), probe_payload(marker), qos=1)
            await asyncio.sleep(PROBE_SPACING_S)
        deadline = time.monotonic() + 5
        while len(latencies) < probes and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        listener.cancel()
    publisher.disconnect()
    publisher.loop_stop()
    return list(latencies.values())


def summary(values: list[float]) -> dict[str, float]:
    return {f"p{q}": common.percentile(values, q) * 1000 for q in (50, 95, 99)}


def run(devices: int = 2000, probes: int = 60, bridge_flush_ms: int | None = None) -> list[Row]:
    from fleet.models import Device

    probe_uid = common.ensure_devices(1, prefix="latency-probe")[0]
    probe = Device.objects.get(uid=probe_uid)
    sim_uids = common.ensure_devices(devices, prefix="latency-sim")
    Device.objects.filter(uid__in=sim_uids).update(status="offline", reported_at=None)  # an earlier run's
    cookie = session_cookie()
    with Stack("latency") as stack:
        stack.broker()
        stack.server()
        flush = ["--telemetry-flush-ms", str(bridge_flush_ms)] if bridge_flush_ms else []
        stack.bridge("fogdeck-bench-latency-bridge", "bridge", *flush)
        quiet = asyncio.run(measure(stack.server_port, probe.pk, probe_uid, cookie, probes // 2))
        print(f"  no background load: {summary(quiet)} ms ({len(quiet)}/{probes // 2} probes arrived)")
        devices_file = stack.directory / "devices.json"
        devices_file.write_text(json.dumps([{"uid": u, "secret": "x", "profile": "rpi4"} for u in sim_uids]))
        since = time.monotonic()
        stack.python(
            "sim", "-m", "agent.simulator", "--api", f"http://127.0.0.1:{stack.server_port}",
            "--mqtt", f"mqtt://127.0.0.1:{stack.broker_port}", "--devices", str(devices),
            "--devices-file", str(devices_file), "--telemetry-interval", str(SIM_TELEMETRY_INTERVAL_S),
            "--seed", "3",
        )  # fmt: skip
        # steady state, not the connect storm: every device online and its state report applied (a device
        # sends status, state and jobs/get on connecting; the bridge applies them before later telemetry)
        settled = Device.objects.filter(uid__in=sim_uids, status="online", reported_at__isnull=False)
        wait_until(lambda: settled.count() >= devices, 600, f"{devices} simulated devices settled", interval=1)
        print(f"  {devices} simulated devices online and reported after {time.monotonic() - since:.0f} s", flush=True)
        time.sleep(SIM_TELEMETRY_INTERVAL_S + 2)  # every device has started its telemetry
        loaded = asyncio.run(measure(stack.server_port, probe.pk, probe_uid, cookie, probes))
        print(f"  {devices} devices sending telemetry: {summary(loaded)} ms ({len(loaded)}/{probes} arrived)")
    q, s = summary(quiet), summary(loaded)
    note = f"{len(loaded)}/{probes} probes arrived under load, {len(quiet)}/{probes // 2} without"
    rows = [
        Row("latency", f"publish→websocket p{p}, {devices:,} devices", s[f"p{p}"], "ms", "no load", q[f"p{p}"],
            target="< 300 ms" if p == 95 else "", met=(s["p95"] < 300 and len(loaded) == probes) if p == 95 else None,
            note=note if p == 95 else "")
        for p in (50, 95, 99)
    ]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--bridge-flush-ms", type=int, help="the bridge's --telemetry-flush-ms (default: its own)")
    args = parser.parse_args()
    common.setup_django()
    print_rows(run(args.devices, args.probes, args.bridge_flush_ms))


if __name__ == "__main__":
    main()
