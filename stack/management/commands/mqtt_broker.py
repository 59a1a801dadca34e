from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand

from stack.mqtt import embedded_broker


class Command(BaseCommand):
    help = "Run the embedded MQTT broker standalone, with the same per-device rules as in the demo."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=None, help="default: EMBEDDED_MQTT_PORT")

    def handle(self, *args: Any, host: str, port: int | None, **options: Any) -> None:
        broker = embedded_broker(host=host, port=port)

        async def run() -> None:
            await broker.start()
            self.stdout.write(f"embedded MQTT broker listening on {broker.host}:{broker.port}")
            try:
                await asyncio.Event().wait()
            finally:
                await broker.shutdown()

        try:
            asyncio.run(run())
        except KeyboardInterrupt:
            self.stdout.write("stopped")
