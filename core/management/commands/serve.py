from __future__ import annotations

from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

from core.mqtt import embedded_broker


class Command(BaseCommand):
    help = "Serve the web app (ASGI: HTTP and websockets); on the embedded default, also the MQTT broker in-process."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-broker", action="store_true", help="don't start the in-process MQTT broker")

    def handle(self, *args: Any, host: str, port: int, no_broker: bool, **options: Any) -> None:
        broker = None
        if settings.EMBEDDED_MQTT and not no_broker:
            broker = embedded_broker()
            broker.start_in_thread()
            self.stdout.write(f"in-process MQTT broker on 127.0.0.1:{broker.port}")
        try:
            uvicorn.run("config.asgi:application", host=host, port=port, log_level="info", lifespan="off")
        finally:
            if broker is not None:
                broker.stop_thread()
