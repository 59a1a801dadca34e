"""Live updates across processes on the embedded default, where the channel layer is in memory.

An in-memory layer only reaches websockets of its own process, but the producers of live updates run
elsewhere: the MQTT bridge (telemetry, device status, job updates) and the Celery worker (rollout
ticks) are separate processes. `RelayedInMemoryChannelLayer` closes that gap without Redis:

* the web server (`manage.py serve`) calls `relay_serve()` on its event loop: it listens on a UNIX socket
  (`CHANNEL_RELAY_SOCKET`, in the data directory by default) and replays each group message it reads
  into its own in-memory layer;
* in every other process, `group_send` writes the message as one JSON line to that socket. With no server
  listening the message is dropped (logged at debug): live updates are best effort, pages read the
  database when they load;
* in the server process, a `group_send` from another thread's event loop (the stream coalescer, or
  `async_to_sync` in a request thread) is handed to the server's loop: asyncio queues are not thread-safe.

With `REDIS_URL` set, channels-redis is used instead and none of this runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.serializers.json import DjangoJSONEncoder

logger = logging.getLogger("fogdeck.channels_relay")

_server_loop: asyncio.AbstractEventLoop | None = None
MAX_LINE = 16 * 1024 * 1024


class RelayedInMemoryChannelLayer(InMemoryChannelLayer):
    def __init__(self, relay_socket: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.relay_socket = relay_socket
        self._client: socket.socket | None = None
        self._client_lock = threading.Lock()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        loop = _server_loop
        if loop is not None:
            if asyncio.get_running_loop() is loop:
                await super().group_send(group, message)
            else:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._local_send(group, message), loop))
            return
        if self.relay_socket:
            self.require_valid_group_name(group)
            self._relay(json.dumps({"group": group, "message": message}, cls=DjangoJSONEncoder) + "\n")
            return
        await super().group_send(group, message)

    async def _local_send(self, group: str, message: dict[str, Any]) -> None:
        await super().group_send(group, message)

    def _relay(self, line: str) -> None:
        """One line to the web server; reconnects once if the server restarted meanwhile."""
        data = line.encode()
        with self._client_lock:
            for attempt in (1, 2):
                try:
                    if self._client is None:
                        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        client.settimeout(2)
                        client.connect(self.relay_socket)
                        self._client = client
                    self._client.sendall(data)
                    return
                except OSError as exc:
                    if self._client is not None:
                        self._client.close()
                        self._client = None
                    if attempt == 2:
                        logger.debug("no web server on %s to relay to: %s", self.relay_socket, exc)


async def relay_serve(path: str) -> asyncio.AbstractServer:
    """Listen on `path` (in the web server's loop) and replay every relayed group message locally."""
    global _server_loop
    _server_loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    if os.path.exists(path):
        os.unlink(path)  # a stale socket of a previous server

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    event = json.loads(line)
                    await layer.group_send(event["group"], event["message"])
                except (ValueError, KeyError, TypeError) as exc:
                    logger.warning("dropped a malformed relayed message: %s", exc)
        except (asyncio.CancelledError, ConnectionError):
            # the server is stopping (its loop cancels this reader) or the producer went away: the end of
            # this connection, not an error (asyncio would print a traceback for a cancelled handler)
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path, limit=MAX_LINE)
    os.chmod(path, 0o600)  # only this user's processes may inject websocket messages
    logger.info("relaying channel-layer messages from other processes on %s", path)
    return server


async def relay_close(server: asyncio.AbstractServer) -> None:
    """Stop relaying (the server is shutting down): group messages of this process are no longer handed
    to its loop."""
    global _server_loop
    _server_loop = None
    server.close()
    await server.wait_closed()


def relay_socket_path() -> str | None:
    """The relay socket when the configured layer relays (the embedded default), else None."""
    from django.conf import settings

    layer = settings.CHANNEL_LAYERS.get("default", {})
    if layer.get("BACKEND", "").endswith("RelayedInMemoryChannelLayer"):
        return layer.get("CONFIG", {}).get("relay_socket") or None
    return None
