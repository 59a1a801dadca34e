"""Real processes for integration tests: a Mosquitto of our own with per-device auth, the bridge, agents.

The fixtures `mosquitto` and `processes` are registered in tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connection

from fleet.mosquitto_auth import render_auth_files, write_atomically

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CONTROL_USER = "fogdeck-control"
CONTROL_PASSWORD = "e2e-control-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str], interval: float = 0.2
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


@dataclass
class Mosquitto:
    """A Mosquitto of our own on a free port, enforcing the generated password and ACL files."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{CONTROL_USER}:{CONTROL_PASSWORD}@127.0.0.1:{self.port}"

    def sync_auth(self) -> None:
        """Regenerate the password/ACL files from the database and make Mosquitto re-read them."""
        from django.test import override_settings

        with override_settings(MQTT_USERNAME=CONTROL_USER, MQTT_PASSWORD=CONTROL_PASSWORD):
            files = render_auth_files()
        write_atomically(self.directory / "passwd", files.passwd)
        write_atomically(self.directory / "acl", files.acl)
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)
            time.sleep(0.3)  # mosquitto reloads asynchronously

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings false\nallow_anonymous false\n"
            f"password_file {self.directory}/passwd\nacl_file {self.directory}/acl\n"
            f"listener {self.port} 127.0.0.1\npersistence true\npersistence_location {self.directory}/\n"
            "max_queued_messages 10000\nmax_inflight_messages 1000\nlog_dest stderr\nuser root\n"
        )
        self.sync_auth()
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def mosquitto_fixture(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.directory.mkdir()
    broker.start()
    yield broker
    broker.stop()


def process_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that must see the test database and our broker."""
    env = dict(os.environ)
    db = connection.settings_dict
    if db["ENGINE"].endswith("postgresql"):
        user = db.get("USER") or "postgres"
        env["DATABASE_URL"] = f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Process:
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def processes_fixture(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(name: str, *args: str, **env: str) -> Process:
        proc = Process([sys.executable, *args], process_env(**env), tmp_path / f"{name}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
