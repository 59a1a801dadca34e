from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from audit.actors import Actor
from audit.services import audit_record
from core.demo_devices import demo_device_specs

DEMO_USERS = (("admin", "admin"), ("operator", "operator"), ("viewer", "viewer"))


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env)  # noqa: S603 - our own programs


class Command(BaseCommand):
    help = (
        "Run the demo: migrate, seed a fleet and the sample models, then start a Celery worker with beat, "
        "the MQTT bridge, a simulated fleet and the web server."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--devices", type=int, default=240)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-worker", action="store_true", help="don't start the Celery worker")
        parser.add_argument("--no-devices", action="store_true", help="don't start the bridge and simulated fleet")

    def handle(
        self, *args: Any, devices: int, host: str, port: int, no_worker: bool, no_devices: bool, **options: Any
    ) -> None:
        self.stdout.write("==> migrating")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("==> seeding the demo fleet")
        call_command("seed_demo", devices=devices)
        self.stdout.write("==> registering the sample models (real ONNX classifiers generated locally)")
        call_command("sample_models", register=True)
        password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(9)
        self._ensure_users(password)
        url = f"http://{host}:{port}"
        children: list[subprocess.Popen[bytes]] = []
        env = {**os.environ, "PUBLIC_BASE_URL": os.environ.get("PUBLIC_BASE_URL", url)}
        if not no_worker:
            beat_schedule = str(settings.DATA_DIR / "celerybeat-schedule")
            worker = [sys.executable, "-m", "celery", "-A", "config", "worker", "--beat", "--loglevel", "WARNING"]
            children.append(_spawn([*worker, "--concurrency", "2", "--schedule", beat_schedule], env))
        if not no_devices:
            self.stdout.write("==> credentials for the simulated devices")
            devices_file = settings.DATA_DIR / "demo-devices.json"
            count = len(demo_device_specs(devices_file, actor=Actor.system("demo")))
            threading.Thread(
                target=self._start_device_side, args=(children, env, url, count, devices_file), daemon=True
            ).start()
        self.stdout.write(
            self.style.SUCCESS(
                f"\nFogdeck demo is starting at {url}/\n"
                f"  sign in as admin / operator / viewer with password: {password}\n"
                f"  API docs {url}/api/v1/docs/   admin {url}/admin/   health {url}/healthz\n"
                "  (set DEMO_PASSWORD to choose the password; Ctrl-C stops everything)\n"
            )
        )
        # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets the
        # `finally` below stop the worker, bridge and simulator instead of leaving them behind.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            call_command("serve", host=host, port=port)
        finally:
            for child in children:
                child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()

    def _start_device_side(
        self, children: list[subprocess.Popen[bytes]], env: dict[str, str], url: str, count: int, devices_file: Path
    ) -> None:
        """Once the web server and its broker answer: the MQTT bridge, then the simulated fleet."""
        broker = urlsplit(settings.MQTT_PUBLIC_URL)
        web = urlsplit(url)
        for target in ((broker.hostname or "127.0.0.1", broker.port or 1883), (web.hostname, web.port)):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(target, timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.3)
        children.append(subprocess.Popen([sys.executable, "manage.py", "mqtt_bridge"], env=env))
        simulator = [sys.executable, "-m", "agent.simulator", "--api", url, "--mqtt", settings.MQTT_PUBLIC_URL]
        options = ["--devices", str(count), "--devices-file", str(devices_file), "--offline-fraction", "0.05"]
        children.append(_spawn([*simulator, *options, "--telemetry-interval", "10", "--log-level", "WARNING"], env))

    @transaction.atomic
    def _ensure_users(self, password: str) -> None:
        User = get_user_model()
        actor = Actor.system("demo")
        for username, role in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            user.set_password(password)
            user.is_staff = role == "admin"
            user.is_superuser = role == "admin"
            user.save()
            user.groups.add(Group.objects.get(name=role))
            audit_record(
                actor=actor,
                action="user.create" if created else "user.set_password",
                object_type="user",
                object_id=user.pk,
                object_repr=username,
                changes={"role": role},
            )
