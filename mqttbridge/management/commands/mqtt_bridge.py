from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand

from mqttbridge.runtime import Bridge


class Command(BaseCommand):
    help = "Run the MQTT bridge: apply device status, state, job updates and telemetry; publish the outbox."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--client-id", default="fogdeck-bridge", help="one id per bridge process")

    def handle(self, *args: Any, client_id: str, **options: Any) -> None:
        bridge = Bridge(client_id=client_id)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: bridge.stop())
        self.stdout.write(f"MQTT bridge {client_id} starting")
        bridge.run()
        self.stdout.write(
            f"MQTT bridge stopped: applied {dict(bridge.stats.applied)}, rejected {dict(bridge.stats.rejected)}"
        )
