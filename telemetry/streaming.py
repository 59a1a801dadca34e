"""Coalesced websocket updates: producers offer the latest figures, a small thread sends them.

Many MQTT messages become few websocket messages: `stream_offer` only records, per channel-layer
group, the newest item per key (a device's (model, version), a rollout's wave …). A daemon thread
sends each changed group one message carrying those items, and never flushes more often than every
`TELEMETRY_STREAM_INTERVAL_MS` (200 ms: at most 5 messages per group per second). An update that
arrives after a quiet period goes out at once, so coalescing adds latency only under load.

Only groups some browser is watching are sent (core/stream_watchers.py: consumers register their groups),
so a fleet of thousands of reporting devices costs a send per open page, not per device.

The coalescer lives in the producing process (the MQTT bridge, a worker, a web process acting on a
rollout). It reaches the web processes through the channel layer: Redis in production; on the embedded
default (in-memory layer) other processes' sends reach `manage.py serve` through its relay socket
(core/channels_relay.py; docs/architecture.md, "Live updates").

Producers above telemetry use the same coalescer: deployments/rollout_streams.py offers the rollout
groups' items (the progress as a `Deferred` read at flush time, and cohort figures from each committed
batch, which it receives through `batch_listener_add`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from django.conf import settings
from django.db import connections

from protocol.streams import TELEMETRY_EVENT, StreamMessage

logger = logging.getLogger("fogdeck.telemetry.stream")

SEND_CONCURRENCY = 16
Sender = Callable[[str, dict[str, Any]], Awaitable[None]]


class Deferred:
    """An item computed when the flush sends it, not when it is offered: many offers, one read."""

    def __init__(self, compute: Callable[[], dict[str, object] | None]) -> None:
        self.compute = compute


Item = dict[str, object] | Deferred


class WatchFilter(Protocol):
    def __call__(self, groups: Iterable[str], *, offered_at: float | None = None) -> set[str]: ...


class Coalescer:
    """`watched`, when given, narrows each flush to the groups it returns (see core/stream_watchers.py);
    without it every offered group is sent."""

    def __init__(self, *, interval_s: float, send: Sender | None = None, watched: WatchFilter | None = None) -> None:
        self.interval_s = interval_s
        self._send = send
        self._watched = watched
        self._pending: dict[str, dict[str, Item]] = {}
        self._first_offer_at = 0.0  # monotonic time of the oldest offer in _pending
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.sent = 0  # messages sent, for the benchmark and the logs

    def offer(self, updates: Mapping[str, Mapping[str, Item]]) -> None:
        """Record {group: {key: item}}; a later item for the same group and key replaces the earlier one."""
        with self._lock:
            if not self._pending:
                self._first_offer_at = time.monotonic()
            for group, items in updates.items():
                self._pending.setdefault(group, {}).update(items)
        self._ensure_thread()
        self._wake.set()

    def take(self) -> list[tuple[str, StreamMessage]]:
        """Everything pending as one message per group, and forget it (what one flush sends)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            offered_at = self._first_offer_at
        if pending and self._watched is not None:
            # before computing anything: an unwatched rollout group's progress is not even read
            watched = self._watched(pending, offered_at=offered_at)
            pending = {group: items for group, items in pending.items() if group in watched}
        out: list[tuple[str, StreamMessage]] = []
        deferred = False
        for group, items in pending.items():
            resolved: list[dict[str, object]] = []
            for item in items.values():
                if isinstance(item, Deferred):
                    deferred = True
                    try:
                        value = item.compute()
                    except Exception:  # a failed read must not lose the group's other items
                        logger.exception("computing a deferred stream item for %s failed", group)
                        continue
                    if value is not None:
                        resolved.append(value)
                else:
                    resolved.append(item)
            if resolved:
                out.append((group, {"group": group, "items": resolved}))
        if deferred and threading.current_thread() is self._thread:
            connections.close_all()  # this thread's connections only: don't hold one open between flushes
        return out

    # --- the sending thread ----------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="telemetry-coalescer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """End the sending thread; what is pending is dropped (live pages are best effort). A later offer
        starts a new thread."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._closing = True
        self._wake.set()
        thread.join(timeout)
        self._closing = False

    def _run(self) -> None:
        loop = asyncio.new_event_loop()  # one loop for the thread's life: channels-redis pools are per loop
        try:
            self._loop(loop)
        finally:
            loop.close()
            connections.close_all()

    def _loop(self, loop: asyncio.AbstractEventLoop) -> None:
        last_flush = 0.0
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                with self._lock:
                    self._pending = {}
                return
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
            from core.stream_watchers import stream_watched

            _coalescer = Coalescer(interval_s=settings.TELEMETRY_STREAM_INTERVAL_MS / 1000, watched=stream_watched)
        return _coalescer


def coalescer_close() -> None:
    """Stop this process's coalescer thread, if it runs (tests end each test with it, so no flush of one
    test's updates reads the database during the next)."""
    with _coalescer_lock:
        current = _coalescer
    if current is not None:
        current.close()


def stream_offer(updates: Mapping[str, Mapping[str, Item]]) -> None:
    """Hand the latest figures per group to this process's coalescer (call it on commit)."""
    if updates:
        coalescer().offer(updates)


# --- committed batches ---------------------------------------------------------------------------
# One sample of a committed telemetry batch, as listeners get it:
# (device id, model name, version number, ts, requests, errors, p95 ms, latency histogram or None)
CommittedSample = tuple[int, str, int, dt.datetime, int, int, float, list[int] | None]
BatchListener = Callable[[list[CommittedSample]], None]
_batch_listeners: list[BatchListener] = []


def batch_listener_add(listener: BatchListener) -> None:
    """Have `listener` offered every telemetry batch this process commits, on commit. Apps above telemetry
    register here from their AppConfig.ready() (deployments: the live rollout pages' cohort figures,
    deployments/rollout_streams.py), so telemetry never imports them."""
    if listener not in _batch_listeners:
        _batch_listeners.append(listener)


def committed_batch_offer(samples: list[CommittedSample]) -> None:
    """Offer a committed batch to the registered listeners (call it on commit). Live pages are best effort:
    a listener that raises (e.g. its database connection dropped) is logged and the others still run."""
    if not samples:
        return
    for listener in list(_batch_listeners):
        try:
            listener(samples)
        except Exception:
            logger.exception("telemetry batch listener %s failed", getattr(listener, "__qualname__", listener))
