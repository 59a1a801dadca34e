"""The processes a benchmark needs, on the real services: a Mosquitto of our own, the ASGI server, the MQTT
bridge, a Celery worker and simulators, all pointed at the bench database (fogdeck_bench) and Redis db 2
(`BENCH_REDIS_URL`), plus a sampler of each process tree's peak RSS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import common

RESULTS = common.ROOT / "bench" / "results"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    peak_rss: int = 0  # bytes, the whole process tree (a Celery worker's pool children included)

    def output(self, tail: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    def sample_rss(self) -> None:
        try:
            root = psutil.Process(self.popen.pid)
            total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return
        self.peak_rss = max(self.peak_rss, total)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the whole process tree so far, children that ended included."""
        try:
            root = psutil.Process(self.popen.pid)
            total = 0.0
            for p in [root, *root.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            return 0.0
        return total

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.popen.pid).children(recursive=True):
                    child.kill()
                self.popen.kill()
                self.popen.wait(5)


SHIPPED_MOSQUITTO_CONF = common.ROOT / "deploy" / "mosquitto" / "mosquitto.conf"


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on this machine (the backends serving the bench among them)."""
    total = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("postgres", "postmaster"):
            try:
                times = p.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
    return total


class CpuMeter:
    """CPU seconds each process of a stack (and PostgreSQL) spent between `start()` and `stop()`."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self._started: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {**{p.name: p.cpu_seconds() for p in self.procs}, "postgresql": postgres_cpu_seconds()}

    def start(self) -> None:
        self._started = self._now()
        self._wall = time.monotonic()

    def stop(self) -> str:
        """The figures as one line: CPU seconds per process, largest first, against the capacity."""
        now, wall = self._now(), time.monotonic() - self._wall
        self.spent = {k: now[k] - self._started.get(k, 0.0) for k in now}
        capacity = wall * (os.cpu_count() or 1)
        total = sum(self.spent.values())
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.spent.items(), key=lambda kv: -kv[1]))
        return f"CPU s in {wall:.1f} s wall ({capacity:.0f} CPU s available): {parts}; total {total:.1f}"


def shipped_broker_limits() -> dict[str, str]:
    """The queue and in-flight window deploy/mosquitto/mosquitto.conf ships (Mosquitto's defaults where unset)."""
    limits = {"max_queued_messages": "1000", "max_inflight_messages": "20"}
    for line in SHIPPED_MOSQUITTO_CONF.read_text().splitlines():
        key, _, value = line.strip().partition(" ")
        if key in limits:
            limits[key] = value.strip()
    return limits


@dataclass
class Stack:
    """Start what a benchmark needs; `close()` stops everything it started, newest first."""

    name: str
    procs: list[Proc] = field(default_factory=list)
    broker_port: int | None = None
    server_port: int | None = None
    _sampling: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.directory = RESULTS / "run" / self.name
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._sampling.is_set():
            for proc in list(self.procs):
                proc.sample_rss()
            time.sleep(0.5)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONUNBUFFERED="1",
            DATABASE_URL=common.bench_database_url(),
            REDIS_URL=common.BENCH_REDIS_URL,
            FOGDECK_DATA_DIR=str(common.DATA_DIR),
        )
        if self.broker_port:
            env["MQTT_URL"] = f"mqtt://127.0.0.1:{self.broker_port}"
        if self.server_port:
            env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{self.server_port}"
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], **env: str) -> Proc:
        log = self.directory / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(args, cwd=common.ROOT, env=self.env(**env), stdout=handle, stderr=subprocess.STDOUT)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def python(self, name: str, *args: str, **env: str) -> Proc:
        return self.spawn(name, [sys.executable, *args], **env)

    # --- the pieces ------------------------------------------------------------------------------
    def broker(self, limits: dict[str, str] | None = None) -> int:
        """An anonymous Mosquitto of our own that queues rather than drops (a capacity test needs that), or
        with `limits` (e.g. `shipped_broker_limits()`), logging its drops ("Outgoing messages are being
        dropped", a notice) to mosquitto.log."""
        self.broker_port = free_port()
        conf = self.directory / "mosquitto.conf"
        queue = {"max_queued_messages": "1000000", "max_inflight_messages": "1000", **(limits or {})}
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            + "".join(f"{key} {value}\n" for key, value in queue.items())
            + "max_connections -1\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            + ("log_type notice\n" if limits else "")
        )
        self.spawn("mosquitto", [MOSQUITTO, "-c", str(conf)])
        wait_for_port(self.broker_port)
        common.MQTT_PORT = self.broker_port
        os.environ["MQTT_URL"] = f"mqtt://127.0.0.1:{self.broker_port}"
        return self.broker_port

    def server(self, workers: int = 1, **env: str) -> str:
        """`manage.py serve` (uvicorn, ASGI: HTTP and websockets on the Redis channel layer), in `workers`
        processes (more than 1: uvicorn's supervisor and its worker processes share the port)."""
        self.server_port = free_port()
        # Under ASGI, Django's sync views run on a thread pool and persistent connections (DB_CONN_MAX_AGE 60
        # by default) pile up per thread: 73 idle ones after a 2,000-device fan-out exhausted the shared
        # PostgreSQL's max_connections. Django's advice for ASGI is 0 (or a pool); the bench follows it.
        env = {"DB_CONN_MAX_AGE": "0", **env}
        self.python(
            "server", "manage.py", "serve", "--port", str(self.server_port), "--no-broker", "--workers", str(workers),
            **env,
        )  # fmt: skip
        wait_for_port(self.server_port)
        return f"http://127.0.0.1:{self.server_port}"

    def bridge(self, client_id: str = "fogdeck-bench-bridge", name: str = "bridge", *args: str, **env: str) -> Proc:
        proc = self.python(name, "manage.py", "mqtt_bridge", "--client-id", client_id, *args, **env)
        wait_until(lambda: "subscribed" in proc.output(), 30, "the bridge to subscribe")
        return proc

    def worker(self, **env: str) -> Proc:
        return self.python(
            "worker", "-m", "celery", "-A", "config", "worker", "--beat", "--concurrency", "2",
            # BENCH_WORKER_LOGLEVEL=INFO logs each task with its duration (worker.log), for profiling
            "--loglevel", os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"),
            "-s", str(self.directory / "beat-schedule"),
            **env,
        )  # fmt: skip

    def close(self) -> None:
        self._sampling.set()
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
