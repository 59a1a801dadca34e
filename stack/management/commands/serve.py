from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.channels_relay import relay_serve, relay_socket_path
from stack.mqtt import embedded_broker

APP = "config.asgi:application"  # an import string: uvicorn's worker processes import it themselves


class Command(BaseCommand):
    help = (
        "Serve the web app (ASGI: HTTP and websockets). On the embedded default it also runs the MQTT broker "
        "in-process and relays live updates from the bridge and worker processes to its in-memory channel layer."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-broker", action="store_true", help="don't start the in-process MQTT broker")
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="server processes sharing the port (uvicorn's supervisor); more than 1 needs REDIS_URL",
        )
        parser.add_argument(
            "--quiet", action="store_true", help="uvicorn logs warnings only, and no access log (the demo's console)"
        )

    def handle(
        self, *args: Any, host: str, port: int, no_broker: bool, workers: int, quiet: bool = False, **options: Any
    ) -> None:
        if workers < 1:
            raise CommandError(f"--workers must be at least 1, not {workers}")
        layer = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
        if workers > 1 and layer.endswith("InMemoryChannelLayer"):
            # The embedded channel layer lives in one process's memory and its relay socket has one
            # listener: with several workers a websocket would miss every update sent to another worker.
            raise CommandError(
                f"--workers {workers} needs REDIS_URL: the embedded default's in-memory channel layer "
                "cannot be shared between server processes (use --workers 1, or set REDIS_URL)"
            )
        broker = None
        if settings.EMBEDDED_MQTT and not no_broker:
            broker = embedded_broker()
            broker.start_in_thread()
            self.stdout.write(f"in-process MQTT broker on 127.0.0.1:{broker.port}")
        relay = relay_socket_path()
        try:
            if workers > 1:
                # uvicorn.run binds the socket here and spawns `workers` processes that each import APP;
                # this process only supervises them (restarts a dead one, stops them on SIGTERM/SIGINT).
                self.stdout.write(f"serving on {host}:{port} with {workers} worker processes")
                uvicorn.run(
                    APP, host=host, port=port, workers=workers, lifespan="off",
                    log_level="warning" if quiet else "info", access_log=not quiet,
                )  # fmt: skip
            else:
                self._serve_in_process(host, port, relay, quiet=quiet)
        finally:
            if broker is not None:
                broker.stop_thread()

    def _serve_in_process(self, host: str, port: int, relay: str | None, *, quiet: bool = False) -> None:
        config = uvicorn.Config(
            APP, host=host, port=port, lifespan="off", log_level="warning" if quiet else "info", access_log=not quiet
        )
        server = uvicorn.Server(config)

        async def main() -> None:
            listener = None
            if relay:
                # the channel layer is in memory: other processes' live updates come in through this socket
                listener = await relay_serve(relay)
                self.stdout.write(f"relaying live updates from other processes on {relay}")
            try:
                await server.serve()
            finally:
                if listener is not None:
                    listener.close()

        asyncio.run(main())
