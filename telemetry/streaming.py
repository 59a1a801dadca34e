"""Coalesced websocket updates: producers offer the latest figures, a small thread sends them.

Many MQTT messages become few websocket messages: `stream_offer` only records, per channel-layer
group, the newest item per key (a device's (model, version), a rollout's wave …). A daemon thread
sends each changed group one message carrying those items, and never flushes more often than every
`TELEMETRY_STREAM_INTERVAL_MS` (200 ms: at most 5 messages per group per second). An update that
arrives after a quiet period goes out at once, so coalescing adds latency only under load.

The coalescer lives in the producing process (the MQTT bridge). It reaches the web processes through
the channel layer, so that needs Redis whenever they are different processes; see docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.conf import settings

from protocol.streams import TELEMETRY_EVENT, StreamMessage

logger = logging.getLogger("fogdeck.telemetry.stream")

SEND_CONCURRENCY = 16
Sender = Callable[[str, dict[str, Any]], Awaitable[None]]


class Coalescer:
    def __init__(self, *, interval_s: float, send: Sender | None = None) -> None:
        self.interval_s = interval_s
        self._send = send
        self._pending: dict[str, dict[str, dict[str, object]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0  # messages sent, for the benchmark and the logs

    def offer(self, updates: Mapping[str, Mapping[str, dict[str, object]]]) -> None:
        """Record {group: {key: item}}; a later item for the same group and key replaces the earlier one."""
        with self._lock:
            for group, items in updates.items():
                self._pending.setdefault(group, {}).update(items)
        self._ensure_thread()
        self._wake.set()

    def take(self) -> list[tuple[str, StreamMessage]]:
        """Everything pending as one message per group, and forget it (what one flush sends)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return [(group, {"group": group, "items": list(items.values())}) for group, items in pending.items()]

    # --- the sending thread ----------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="telemetry-coalescer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()  # one loop for the thread's life: channels-redis pools are per loop
        last_flush = 0.0
        while True:
            self._wake.wait()
            self._wake.clear()
            wait = last_flush + self.interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # more offers merge into the pending messages meanwhile
            last_flush = time.monotonic()
            batch = self.take()
            if not batch:
                continue
            try:
                loop.run_until_complete(self._flush(batch))
            except Exception:  # a layer outage must not kill the thread; the next update retries
                logger.exception("sending %s telemetry stream messages failed", len(batch))

    async def _flush(self, batch: list[tuple[str, StreamMessage]]) -> None:
        send = self._send or _layer_send
        # bounded: one flush may touch thousands of device groups, the layer's connection pool is small
        limit = asyncio.Semaphore(SEND_CONCURRENCY)

        async def one(group: str, message: StreamMessage) -> None:
            async with limit:
                await send(group, {"type": TELEMETRY_EVENT, "payload": message})

        await asyncio.gather(*(one(group, message) for group, message in batch))
        self.sent += len(batch)


async def _layer_send(group: str, event: dict[str, Any]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(group, event)


_coalescer: Coalescer | None = None
_coalescer_lock = threading.Lock()


def coalescer() -> Coalescer:
    """This process's coalescer (created on first use)."""
    global _coalescer
    with _coalescer_lock:
        if _coalescer is None:
            _coalescer = Coalescer(interval_s=settings.TELEMETRY_STREAM_INTERVAL_MS / 1000)
        return _coalescer


def stream_offer(updates: Mapping[str, Mapping[str, dict[str, object]]]) -> None:
    """Hand the latest figures per group to this process's coalescer (call it on commit)."""
    if updates:
        coalescer().offer(updates)
