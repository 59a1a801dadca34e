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

from django.conf import settings
from django.db import connection

from fleet.mosquitto_auth import render_auth_files

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
    """A Mosquitto of our own from deploy/mosquitto/mosquitto.conf (see `mosquitto_conf`) and the generated
    password and ACL files: devices on `port` and `tls_port`, the control plane on `control_port`.
    """

    directory: Path
    port: int = field(default_factory=free_port)  # devices, plaintext (shipped: 1884)
    control_port: int = field(default_factory=free_port)  # the control plane (shipped: 1883)
    tls_port: int = field(default_factory=free_port)  # devices over TLS (shipped: 8883)
    # settings that replace the fixture's (e.g. Debian's stock {"max_queued_messages": "1000",
    # "max_inflight_messages": "20"}); and where Mosquitto's log goes (None: nowhere)
    limits: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        """The TLS listener's self-signed certificate, for clients to trust."""
        return self.directory / "certs" / "server.crt"

    @property
    def url(self) -> str:
        """The control plane's MQTT_URL."""
        return f"mqtt://{CONTROL_USER}:{CONTROL_PASSWORD}@127.0.0.1:{self.control_port}"

    def sync_auth(self) -> None:
        """Regenerate the password/ACL files from the database and make Mosquitto re-read them."""
        from django.test import override_settings

        with override_settings(MQTT_USERNAME=CONTROL_USER, MQTT_PASSWORD=CONTROL_PASSWORD):
            files = render_auth_files()
        files.write(self.directory)
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)
            time.sleep(0.3)  # mosquitto reloads asynchronously

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        ports = {1883: self.control_port, 1884: self.port, 8883: self.tls_port}
        conf.write_text(mosquitto_conf(self.directory, ports, self.limits))
        if not self.ca_file.exists():
            write_test_certificate(self.ca_file.parent)
        self.sync_auth()
        log = self.log_path.open("ab") if self.log_path is not None else subprocess.DEVNULL
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=log)
        for port in (self.port, self.control_port, self.tls_port):
            wait_for_port(port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


SHIPPED_MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"


def mosquitto_conf(directory: Path, ports: dict[int, int], limits: dict[str, str] | None = None) -> str:
    """deploy/mosquitto/mosquitto.conf as shipped, with its container paths moved into `directory`.

    `ports` maps each shipped listener port to the free port it gets here (bound to loopback). Every
    listener and security setting is kept as it is, so the tests run on the broker users deploy. Two limits
    stay as this fixture always had them: `max_queued_messages` is 10000 (the e2e fleets queue more than
    1000 messages per bridge session while it restarts) and `max_packet_size` is left out, so oversized
    payloads reach the bridge's own 256 KiB check (the only one on the embedded broker) instead of
    Mosquitto cutting the device off. `limits` replaces (or adds) global settings, e.g. Debian's stock
    queue and in-flight window for the tests that must see Mosquitto drop messages.
    """
    limits = dict(limits or {})
    lines = ["user root"]
    for raw in SHIPPED_MOSQUITTO_CONF.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            shipped_port = int(value.split()[0])
            line = f"listener {ports[shipped_port]} 127.0.0.1"
        elif key == "log_dest":
            line = "log_dest stderr"
        elif key in limits:
            line = f"{key} {limits.pop(key)}"
        elif key == "max_queued_messages":
            line = "max_queued_messages 10000"
        elif key == "max_packet_size":
            continue
        line = line.replace("/mosquitto/auth/", f"{directory}/").replace("/mosquitto/data/", f"{directory}/")
        line = line.replace("/mosquitto/certs/", f"{directory}/certs/")
        lines.append(line)
    # global settings must come before the first listener (per_listener_settings)
    first_listener = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    lines[first_listener:first_listener] = [f"{key} {value}" for key, value in limits.items()]
    return "\n".join(lines) + "\n"


def write_test_certificate(directory: Path) -> Path:
    """A self-signed certificate for `localhost` (server.crt, server.key), for the TLS listener; returns the cert."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / "server.crt"


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
    elif db["ENGINE"].endswith("sqlite3"):
        # the test database file, whatever data directory the subprocess is given
        env["DATABASE_URL"] = f"sqlite:///{Path(db['NAME']).resolve()}"
    # the test's own audit checkpoint, throttle and lockout namespace and rates (tests/conftest.py)
    env["AUDIT_CHECKPOINT_FILE"] = str(settings.AUDIT_CHECKPOINT_FILE)
    env["AUDIT_CHECKPOINT_REDIS_KEY"] = settings.AUDIT_CHECKPOINT_REDIS_KEY
    env["SECURITY_CACHE_PREFIX"] = settings.SECURITY_CACHE_PREFIX
    for scope, rate in settings.API_THROTTLE_RATES.items():
        env[f"THROTTLE_RATE_{scope.upper()}"] = rate
    # the bridge and workers sign job envelopes and gateway tokens with the key the test's server publishes
    env["SIGNING_KEY_DIR"] = str(settings.SIGNING_KEY_DIR)
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
