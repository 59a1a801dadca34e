"""`manage.py runserver`: Django's development server (autoreload, static files) on Daphne, so the live
pages' websockets work as they do under `manage.py serve`."""

from __future__ import annotations

import asyncio
from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings

from core.channels_relay import relay_serve, relay_socket_path

ASGIApp = Any


class RelayOnFirstCall:
    """Starts the embedded channel layer's relay listener in the server's event loop at the first request
    (Daphne has no startup hook), so live updates sent by the bridge and worker processes reach this
    server's websockets, as with `manage.py serve`."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path
        self._started: asyncio.Future[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)
        await self.app(scope, receive, send)

    async def _start(self) -> None:
        await relay_serve(self.path)


class Command(DaphneRunserver):
    help = (
        "Development server with autoreload: HTTP and websockets (Daphne). On the embedded default it also "
        "receives the live updates relayed by the bridge and worker; it does not start the in-process MQTT "
        "broker (`manage.py serve` and `manage.py demo` do)."
    )

    def inner_run(self, *args: Any, **options: Any) -> None:
        if settings.EMBEDDED_MQTT:
            self.stdout.write(
                "runserver starts no MQTT broker: devices need `manage.py serve` (or `manage.py mqtt_broker`)"
            )
        super().inner_run(*args, **options)

    def get_application(self, options: dict[str, Any]) -> ASGIApp:
        app = super().get_application(options)
        relay = relay_socket_path()
        return RelayOnFirstCall(app, relay) if relay else app
