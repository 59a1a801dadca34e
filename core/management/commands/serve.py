from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

from core.channels_relay import relay_serve, relay_socket_path
from core.mqtt import embedded_broker


class Command(BaseCommand):
    help = (
        "Serve the web app (ASGI: HTTP and websockets). On the embedded default it also runs the MQTT broker "
        "in-process and relays live updates from the bridge and worker processes to its in-memory channel layer."
    )

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
        relay = relay_socket_path()
        config = uvicorn.Config("config.asgi:application", host=host, port=port, log_level="info", lifespan="off")
        server = uvicorn.Server(config)

        async def main() -> None:
            if relay:
                # the channel layer is in memory: other processes' live updates come in through this socket
                listener = await relay_serve(relay)
                self.stdout.write(f"relaying live updates from other processes on {relay}")
            try:
                await server.serve()
            finally:
                if relay:
                    listener.close()

        try:
            asyncio.run(main())
        finally:
            if broker is not None:
                broker.stop_thread()
