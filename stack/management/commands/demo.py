from __future__ import annotations

import logging
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
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections, transaction

from audit.actors import Actor
from audit.services import audit_record
from deployments.models import Installation
from stack.demo_devices import demo_device_specs
from stack.demo_scenarios import demo_bad_canary_start, demo_baseline_seed
from stack.demo_status import demo_status, format_banner, format_status
from stack.mqtt import embedded_broker

DEMO_USERS = (("admin", "admin"), ("operator", "operator"), ("viewer", "viewer"))
SCENARIOS = ("calm", "bad-canary")
ACTOR = Actor.system("demo")


# Celery warns at length when its worker runs as root (containers, CI): not news on a local demo's console.
_WORKER_WARNINGS = ",".join(
    filter(None, [os.environ.get("PYTHONWARNINGS", ""), "ignore:You're running the worker with superuser privileges"])
)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _wait_for_port(host: str, port: int, timeout: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            stop.wait(0.3)
    return False


class Command(BaseCommand):
    help = (
        "Run the demo: migrate, seed a fleet and the sample models (demo-classifier v1 preinstalled as the "
        "baseline), then start a Celery worker with beat, the MQTT bridge, a simulated fleet and the web server. "
        "--scenario bad-canary also starts a rollout of the slower v2 that its canary's health gate rolls back."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--devices", type=int, default=240)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-worker", action="store_true", help="don't start the Celery worker")
        parser.add_argument("--no-devices", action="store_true", help="don't start the bridge and simulated fleet")
        parser.add_argument(
            "--scenario",
            choices=SCENARIOS,
            default="calm",
            help="calm: the fleet runs its baseline; bad-canary: a slower version's canary fails its health gate "
            "and is rolled back automatically",
        )
        parser.add_argument("--drift-site", help="the simulator shifts the inputs of this site's devices (drift alert)")
        parser.add_argument(
            "--status-every", type=float, default=20.0, help="seconds between status lines (0: none; default 20)"
        )

    def handle(
        self, *args: Any, devices: int, host: str, port: int, no_worker: bool, no_devices: bool, scenario: str,
        drift_site: str | None, status_every: float, **options: Any,
    ) -> None:  # fmt: skip
        if scenario == "bad-canary" and (no_worker or no_devices):
            raise CommandError("--scenario bad-canary needs the worker (its gates) and the simulated devices")
        if "LOG_LEVEL" not in os.environ:
            # our own INFO too: the console is the banner and the status line (LOG_LEVEL=INFO for more)
            logging.getLogger().setLevel(logging.WARNING)
        self.stdout.write("==> migrating")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("==> seeding the demo fleet")
        call_command("seed_demo", devices=devices)
        self.stdout.write("==> registering the sample models (real ONNX classifiers generated locally)")
        call_command("sample_models", register=True)
        baseline, preinstalled = demo_baseline_seed(actor=ACTOR)
        running = Installation.objects.filter(until__isnull=True, version=baseline).count()
        self.stdout.write(
            f"==> baseline: {baseline} runs on {running} devices ({len(preinstalled.installed)} preinstalled now)"
        )
        password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(9)
        self._ensure_users(password)
        url = f"http://{host}:{port}"
        children: list[subprocess.Popen[bytes]] = []
        stopping = threading.Event()
        lock = threading.Lock()  # children are added by the start-up thread and stopped by this one

        # the simulated devices advertise http://<uid>.sim.fogdeck.invalid:8600/infer: trust that form (each
        # device only its own name) so resolve has endpoints to show; a demo choice, never a production default
        if "ENDPOINTS_TRUSTED_INFERENCE_HOSTS" not in os.environ:
            settings.ENDPOINTS_TRUSTED_INFERENCE_HOSTS = ["{uid}.sim.fogdeck.invalid"]  # this process serves the API

        # The demo's children log warnings only unless LOG_LEVEL says otherwise (their banners too).
        env = {
            **os.environ,
            "PUBLIC_BASE_URL": os.environ.get("PUBLIC_BASE_URL", url),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            "ENDPOINTS_TRUSTED_INFERENCE_HOSTS": ",".join(settings.ENDPOINTS_TRUSTED_INFERENCE_HOSTS),
        }

        def spawn(command: list[str], **extra_env: str) -> None:
            with lock:
                if not stopping.is_set():
                    children.append(subprocess.Popen(command, env={**env, **extra_env}))  # noqa: S603 - ours

        count = 0
        devices_file = settings.DATA_DIR / "demo-devices.json"
        if not no_devices:
            self.stdout.write("==> credentials for the simulated devices")
            count = len(demo_device_specs(devices_file, actor=ACTOR))
        extra: list[str] = []
        # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets the
        # `finally` below stop the worker, bridge and simulator instead of leaving them behind.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        # The embedded broker is ours rather than `serve`'s, so it stops after the simulated devices and the
        # bridge have disconnected, not under them (with clients still connected its shutdown can take long).
        broker = embedded_broker() if settings.EMBEDDED_MQTT else None
        try:  # from the first child on, whatever stops the demo stops them too
            if not no_worker:
                beat_schedule = str(settings.DATA_DIR / "celerybeat-schedule")
                spawn([
                    sys.executable, "-m", "celery", "-A", "config", "--quiet", "worker", "--beat",
                    "--loglevel", "WARNING", "--concurrency", "2", "--schedule", beat_schedule,
                ], PYTHONWARNINGS=_WORKER_WARNINGS)  # fmt: skip
            if broker is not None:
                broker.start_in_thread()
                self.stdout.write(f"in-process MQTT broker on 127.0.0.1:{broker.port}")
            threading.Thread(
                target=self._start_up,
                kwargs={
                    "spawn": spawn, "stopping": stopping, "url": url, "count": 0 if no_devices else count,
                    "devices_file": devices_file, "password": password, "scenario": scenario,
                    "drift_site": drift_site, "status_every": status_every, "extra": extra,
                },
                daemon=True,
            ).start()  # fmt: skip
            call_command("serve", host=host, port=port, quiet=True, no_broker=True)
        except KeyboardInterrupt:
            pass  # uvicorn re-raises the Ctrl-C it shut down on: a normal stop, not an error to print
        finally:
            stopping.set()
            with lock:
                for child in children:
                    child.send_signal(signal.SIGTERM)
                for child in children:
                    try:
                        child.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
            if broker is not None:
                # Deliveries still in flight to devices that just disconnected fail while the broker stops
                # (amqtt logs each with a traceback at ERROR): expected when everything stops at once.
                logging.getLogger("amqtt").setLevel(logging.CRITICAL)
                try:
                    broker.stop_thread()
                except TimeoutError:
                    self.stderr.write("the in-process MQTT broker did not stop within 10 s; exiting anyway")
            banner = format_banner(url=url, password=password, extra=tuple(extra))
            self.stdout.write(self.style.SUCCESS(f"\nFogdeck demo stopped.\n{banner}\n"))
            self.stdout.flush()

    def _start_up(
        self, *, spawn: Any, stopping: threading.Event, url: str, count: int, devices_file: Path, password: str,
        scenario: str, drift_site: str | None, status_every: float, extra: list[str],
    ) -> None:  # fmt: skip
        """Once the web server and its broker answer: the bridge and the simulated fleet, the scenario, the
        banner (the last thing start-up prints), then a status line every `status_every` seconds."""
        web = urlsplit(url)
        _wait_for_port(web.hostname or "127.0.0.1", web.port or 80, 60, stopping)
        if count:
            if not settings.EMBEDDED_MQTT:  # the embedded broker is up before the web server answers
                broker = urlsplit(settings.MQTT_PUBLIC_URL)
                _wait_for_port(broker.hostname or "127.0.0.1", broker.port or 1883, 60, stopping)
            spawn([sys.executable, "manage.py", "mqtt_bridge", "--verbosity", "0"])
            simulator = [sys.executable, "-m", "agent.simulator", "--api", url, "--mqtt", settings.MQTT_PUBLIC_URL]
            options = ["--devices", str(count), "--devices-file", str(devices_file), "--offline-fraction", "0.05"]
            if drift_site:
                options += ["--drift-site", drift_site]
            spawn([*simulator, *options, "--telemetry-interval", "10", "--log-level", "WARNING", "--quiet"])
        try:
            if scenario == "bad-canary":
                rollout = self._bad_canary(stopping)
                extra.append(
                    f"  scenario bad-canary: watch {url}/rollouts/{rollout.pk}/ (demo-classifier v2, slower): "
                    "within a minute or two its canary's health gate fails and the canary is rolled back"
                )
            if drift_site:
                extra.append(
                    f"  drift injected at {drift_site!r}: an alert opens at the next drift evaluation "
                    f"(every {settings.DRIFT_EVALUATE_SECONDS} s; DRIFT_EVALUATE_SECONDS sets it)"
                )
        except Exception as exc:  # e.g. a rollout from an earlier run still holds the devices
            self.stderr.write(f"==> scenario {scenario} could not start: {exc}")
        if stopping.is_set():
            return
        self.stdout.write(self.style.SUCCESS(f"\n{format_banner(url=url, password=password, extra=tuple(extra))}\n"))
        self.stdout.flush()
        while status_every > 0 and not stopping.wait(status_every):
            try:
                self.stdout.write(format_status(demo_status()))
                self.stdout.flush()
            except Exception as exc:  # a busy database must not end the demo's status line for good
                self.stdout.write(f"[demo] status unavailable: {exc}")
            finally:
                close_old_connections()

    def _bad_canary(self, stopping: threading.Event) -> Any:
        """Start the rollout once most of the baseline devices are online (its canary is then dispatched
        at once); the worker's beat runs its waves and gates."""
        from fleet.models import Device

        try:
            total = Device.objects.active().count()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stopping.is_set():
                if Device.objects.online().count() >= 0.8 * total:
                    break
                stopping.wait(1.0)
            return demo_bad_canary_start(actor=ACTOR)
        finally:
            close_old_connections()

    @transaction.atomic
    def _ensure_users(self, password: str) -> None:
        User = get_user_model()
        for username, role in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            user.set_password(password)
            user.is_staff = role == "admin"
            user.is_superuser = role == "admin"
            user.save()
            user.groups.add(Group.objects.get(name=role))
            audit_record(
                actor=ACTOR,
                action="user.create" if created else "user.set_password",
                object_type="user",
                object_id=user.pk,
                object_repr=username,
                changes={"role": role},
            )
