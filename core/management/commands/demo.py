from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from audit.actors import Actor
from audit.services import audit_record

DEMO_USERS = (("admin", "admin"), ("operator", "operator"), ("viewer", "viewer"))


class Command(BaseCommand):
    help = "Run the demo: migrate, seed a fleet, start a Celery worker with beat, serve the dashboard and API."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--devices", type=int, default=240)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-worker", action="store_true", help="don't start the Celery worker")

    def handle(self, *args: Any, devices: int, host: str, port: int, no_worker: bool, **options: Any) -> None:
        self.stdout.write("==> migrating")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("==> seeding the demo fleet")
        call_command("seed_demo", devices=devices)
        password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(9)
        self._ensure_users(password)
        children: list[subprocess.Popen[bytes]] = []
        if not no_worker:
            children.append(
                subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "config",
                        "worker",
                        "--beat",
                        "--loglevel",
                        "WARNING",
                        "--concurrency",
                        "2",
                        "--schedule",
                        str(settings.DATA_DIR / "celerybeat-schedule"),
                    ],
                )
            )
        url = f"http://{host}:{port}/"
        self.stdout.write(
            self.style.SUCCESS(
                "\n".join(
                    [
                        "",
                        f"Fogdeck demo is starting at {url}",
                        f"  sign in as admin / operator / viewer with password: {password}",
                        f"  API docs {url}api/v1/docs/   admin {url}admin/   health {url}healthz",
                        "  (set DEMO_PASSWORD to choose the password; Ctrl-C stops everything)",
                        "",
                    ]
                )
            )
        )
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
