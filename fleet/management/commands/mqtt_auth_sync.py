from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from fleet.mosquitto_auth import render_auth_files


class Command(BaseCommand):
    help = "Write Mosquitto's password and ACL files from the inventory (per-device credentials and topics)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--out", required=True, help="directory for `passwd-control`, `passwd-devices` and `acl`")
        parser.add_argument("--watch", type=float, default=0, help="re-sync every N seconds (0: once)")

    def handle(self, *args: Any, out: str, watch: float, **options: Any) -> None:
        directory = Path(out)
        service_hash: str | None = None
        while True:
            files = render_auth_files(service_password_hash=service_hash)
            # keep the service line stable between passes so an unchanged fleet rewrites nothing
            service_hash = files.control_passwd.strip().split(":", 1)[1]
            changed = files.write(directory)
            if changed or not watch:
                self.stdout.write(
                    f"mosquitto auth: {files.devices} devices -> {directory} ({'updated' if changed else 'unchanged'})"
                )
            if not watch:
                return
            time.sleep(watch)
            close_old_connections()  # a long-running loop must not hold a dead connection
