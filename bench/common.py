"""Shared set-up for the telemetry benchmarks: a database of their own, devices, messages, a publisher."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from bench.report import Row

ROOT = Path(__file__).resolve().parents[1]
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883  # replaced by the port of our own Mosquitto once bench.stack starts it
# Redis database 2: the bench's Celery tasks and channel layer never meet another run's
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
DATA_DIR = ROOT / "bench" / "results" / "var"  # artifacts and signing keys of the bench processes


# the bench's own database (BENCH_DATABASE_NAME lets two checkouts on one server keep apart)
BENCH_DATABASE = os.environ.get("BENCH_DATABASE_NAME", "fogdeck_bench")


def bench_database_url(database: str = BENCH_DATABASE) -> str:
    """DATABASE_URL with the database renamed to `database` (BENCH_DATABASE unless a benchmark has its own)."""
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/fogdeck"
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{database}"))


def own_database(suffix: str) -> str:
    """The name of a benchmark's private database, next to BENCH_DATABASE (fogdeck_bench_<suffix>)."""
    return f"{BENCH_DATABASE}_{suffix}"


def setup_django(*, fresh: bool = False, database: str = BENCH_DATABASE) -> str:
    """Point this process at `database` (fogdeck_bench unless a benchmark keeps its own; dropped and
    re-created first when `fresh`) and migrate it."""
    url = bench_database_url(database)
    os.environ["DATABASE_URL"] = url
    os.environ["REDIS_URL"] = BENCH_REDIS_URL
    os.environ["FOGDECK_DATA_DIR"] = str(DATA_DIR)
    os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
    os.environ.setdefault("CSRF_COOKIE_SECURE", "false")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", "fogdeck-bench-secret-key-not-for-production-0123456789")
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")  # testserver: Django's test client
    os.environ.setdefault("MQTT_URL", f"mqtt://{MQTT_HOST}:{MQTT_PORT}")
    # Benchmarks measure capacity: one bench user sends thousands of requests a second, far above the
    # per-user API throttle a deployment runs with (THROTTLE_RATE_USER, 6000/min by default).
    for scope in ("ANON", "USER", "AUTH"):
        os.environ.setdefault(f"THROTTLE_RATE_{scope}", "10000000/min")
    sys.path.insert(0, str(ROOT))
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env=os.environ)
    import django

    django.setup()
    return url


def run_isolated(module: str, *args: str) -> list[Row]:
    """Run `python -m bench.<module> --rows-json FILE *args` in a child process and return the rows it wrote.

    For a benchmark with a database of its own: Django in the runner's process is set up once, on
    BENCH_DATABASE, and cannot switch databases cleanly (model caches, content types, sequences)."""
    from bench.report import read_rows

    with tempfile.TemporaryDirectory(prefix="fogdeck-bench-") as tmp:
        rows_file = Path(tmp) / "rows.json"
        child = subprocess.Popen([sys.executable, "-u", "-m", f"bench.{module}", "--rows-json", str(rows_file), *args],
                                 cwd=ROOT, env=os.environ)  # fmt: skip
        try:
            code = child.wait()
        finally:
            if child.poll() is None:  # interrupted: let the child unwind (it stops what it started)
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(5)
        if code != 0:
            raise RuntimeError(f"bench.{module} exited with status {code}")
        return read_rows(rows_file)


def ensure_devices(count: int, prefix: str = "bench") -> list[str]:
    """`count` devices named prefix-00000…, created directly (bench data, not audited)."""
    from fleet.models import Device, DeviceRuntime, Site

    site, _ = Site.objects.get_or_create(name="bench-site", defaults={"latitude": 0, "longitude": 0})
    uids = [f"{prefix}-{i:05d}" for i in range(count)]
    existing = set(Device.objects.filter(uid__in=uids).values_list("uid", flat=True))
    Device.objects.bulk_create(
        [
            Device(uid=u, name=u, site=site, tier="edge", arch="aarch64", cpu="A72", memory_mb=2048)
            for u in uids
            if u not in existing
        ],
        batch_size=2000,
    )
    devices = Device.objects.filter(uid__in=uids).exclude(runtimes__name="onnxruntime").values_list("pk", flat=True)
    DeviceRuntime.objects.bulk_create(
        [DeviceRuntime(device_id=pk, name="onnxruntime", version="1.18") for pk in devices]
    )
    return uids


def telemetry_payload(ts: dt.datetime | None = None, p95: float = 20.0) -> bytes:
    from protocol.messages import encode, parse_telemetry

    stamp = (ts or dt.datetime.now(dt.UTC)).isoformat()
    raw = (
        f'{{"schema_version":1,"ts":"{stamp}","interval_s":10.0,"samples":[{{"model":"demo-classifier","version":1,'
        f'"requests":120,"errors":1,"latency_ms":{{"p50":9.5,"p95":{p95},"p99":31.0,"max":44.0}},'
        '"inputs":{"x0":{"count":120,"mean":0.5,"var":0.1,"min":0.0,"max":1.0}}}]}'
    )
    return encode(parse_telemetry(raw.encode()))


def mqtt_client(client_id: str, *, clean: bool = True):  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


def publish_all(messages: list[tuple[str, bytes]], *, clients: int = 4, rate: float = 0) -> float:
    """Publish every (topic, payload) at QoS 1 from a few clients, paced at `rate` msg/s in all when given
    (Mosquitto's default per-subscriber queue of 1,000 messages drops an unpaced burst); returns seconds
    until all were acknowledged by the broker."""
    chunks = [messages[i::clients] for i in range(clients)]
    started = time.monotonic()
    per_client = rate / clients if rate else 0

    def run(index: int, chunk: list[tuple[str, bytes]]) -> None:
        client = mqtt_client(f"bench-pub-{os.getpid()}-{index}")
        client.connect(MQTT_HOST, MQTT_PORT)
        client.loop_start()
        infos = []
        for n, (topic, payload) in enumerate(chunk):
            if per_client:
                wait = started + n / per_client - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            infos.append(client.publish(topic, payload, qos=1))
        for info in infos:
            info.wait_for_publish(60)
        client.disconnect()
        client.loop_stop()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(chunks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
