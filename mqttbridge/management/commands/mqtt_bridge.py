from __future__ import annotations

import gc
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mqttbridge.runtime import Bridge


class Command(BaseCommand):
    help = "Run the MQTT bridge: apply device status, state, job updates and telemetry; publish the outbox."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--client-id", default="fogdeck-bridge", help="one id per bridge process")
        parser.add_argument(
            "--telemetry-flush-ms",
            type=int,
            default=200,
            help="longest a telemetry message waits for its batch under continuous traffic (default 200)",
        )

    def handle(self, *args: Any, client_id: str, telemetry_flush_ms: int, **options: Any) -> None:
        if telemetry_flush_ms < 10:
            raise CommandError("--telemetry-flush-ms must be at least 10")
        bridge = Bridge(client_id=client_id, telemetry_flush_seconds=telemetry_flush_ms / 1000)
        # What is loaded by now (Django, the models, the protocol's schemas) lives as long as the process;
        # frozen, full cyclic collections no longer walk it (as config/asgi.py does for the web process).
        gc.freeze()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: bridge.stop())
        self.stdout.write(f"MQTT bridge {client_id} starting")
        bridge.run()
        self.stdout.write(
            f"MQTT bridge stopped: applied {dict(bridge.stats.applied)}, rejected {dict(bridge.stats.rejected)}"
        )
