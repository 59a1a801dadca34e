"""Coalesced websocket updates: producers offer the latest figures, a small thread sends them.

Many MQTT messages become few websocket messages: `stream_offer` only records, per channel-layer
group, the newest item per key (a device's (model, version), a rollout's wave …). A daemon thread
sends each changed group one message carrying those items, and never flushes more often than every
`TELEMETRY_STREAM_INTERVAL_MS` (200 ms: at most 5 messages per group per second). An update that
arrives after a quiet period goes out at once, so coalescing adds latency only under load.

Only groups some browser is watching are sent (telemetry/watchers.py: consumers register their groups),
so a fleet of thousands of reporting devices costs a send per open page, not per device.

The coalescer lives in the producing process (the MQTT bridge, a worker, a web process acting on a
rollout). It reaches the web processes through the channel layer, so that needs Redis whenever they are
different processes; on the embedded default (in-memory layer) `manage.py serve` runs the bridge in the
web process for that reason (see docs/architecture.md, "Live updates").

Rollout groups get two kinds of items (see `rollout_stream_touch` and `rollout_cohort_offer`): the
rollout's progress (status and per-wave job-state counts), re-read in one query at flush time however
many job updates marked it stale, and per-cohort (canary vs baseline) latency and error figures folded
from each telemetry batch of the rollout's devices.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from django.conf import settings
from django.db import connections

from protocol.streams import TELEMETRY_EVENT, StreamMessage, rollout_group

ROLLOUT_GROUP_PREFIX = rollout_group(0).removesuffix("0")

logger = logging.getLogger("fogdeck.telemetry.stream")

SEND_CONCURRENCY = 16
Sender = Callable[[str, dict[str, Any]], Awaitable[None]]


class Deferred:
    """An item computed when the flush sends it, not when it is offered: many offers, one read."""

    def __init__(self, compute: Callable[[], dict[str, object] | None]) -> None:
        self.compute = compute


Item = dict[str, object] | Deferred


WatchFilter = Callable[[Iterable[str]], set[str]]


class Coalescer:
    """`watched`, when given, narrows each flush to the groups it returns (see telemetry/watchers.py);
    without it every offered group is sent."""

    def __init__(self, *, interval_s: float, send: Sender | None = None, watched: WatchFilter | None = None) -> None:
        self.interval_s = interval_s
        self._send = send
        self._watched = watched
        self._pending: dict[str, dict[str, Item]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0  # messages sent, for the benchmark and the logs

    def offer(self, updates: Mapping[str, Mapping[str, Item]]) -> None:
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
        if pending and self._watched is not None:
            # before computing anything: an unwatched rollout group's progress is not even read
            watched = self._watched(pending)
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
            from .watchers import stream_watched

            _coalescer = Coalescer(interval_s=settings.TELEMETRY_STREAM_INTERVAL_MS / 1000, watched=stream_watched)
        return _coalescer


def stream_offer(updates: Mapping[str, Mapping[str, Item]]) -> None:
    """Hand the latest figures per group to this process's coalescer (call it on commit)."""
    if updates:
        coalescer().offer(updates)


# --- rollout streams -----------------------------------------------------------------------------
ROLLOUT_PROGRESS_KEY = "progress"


def rollout_stream_touch(rollout_id: int) -> None:
    """The rollout's status, a wave's status or one of its jobs changed (call it on commit): its group
    gets the fresh progress (`deployments.selectors.rollout_progress`) at the next flush, read once
    however many changes arrived meanwhile."""

    def compute() -> dict[str, object] | None:
        from deployments.selectors import rollout_progress

        return rollout_progress(rollout_id)

    stream_offer({rollout_group(rollout_id): {ROLLOUT_PROGRESS_KEY: Deferred(compute)}})


# (device id, model name, version number, ts, requests, errors, p95 ms)
CohortSample = tuple[int, str, int, dt.datetime, int, int, float]


def rollout_cohort_items(
    samples: Iterable[CohortSample], memberships: Mapping[int, list[tuple[int, str, int]]]
) -> dict[str, dict[str, Item]]:
    """Fold one telemetry batch into per-rollout cohort figures: `canary` is the rollout's devices on its
    version, `baseline` its devices on any other version of the model. p95 is request-weighted."""
    acc: dict[tuple[int, str], list[Any]] = {}
    for device_id, model, version, ts, requests, errors, p95 in samples:
        for rollout_id, rollout_model, rollout_version in memberships.get(device_id, ()):
            if model != rollout_model:
                continue
            cohort = "canary" if version == rollout_version else "baseline"
            entry = acc.setdefault((rollout_id, cohort), [0, 0, 0.0, None, set()])
            entry[0] += requests
            entry[1] += errors
            entry[2] += p95 * requests
            entry[3] = ts if entry[3] is None or ts > entry[3] else entry[3]
            entry[4].add(device_id)
    out: dict[str, dict[str, Item]] = {}
    for (rollout_id, cohort), (requests, errors, wsum, ts, devices) in acc.items():
        out.setdefault(rollout_group(rollout_id), {})[f"cohort:{cohort}"] = {
            "kind": "cohort",
            "cohort": cohort,
            "ts": ts.isoformat(),
            "requests": requests,
            "errors": errors,
            "error_rate": round(errors / requests, 6) if requests else 0.0,
            "p95_ms": round(wsum / requests, 3) if requests else None,
            "devices": len(devices),
        }
    return out


def rollout_cohort_offer(samples: list[CohortSample]) -> None:
    """Offer a committed telemetry batch to the groups of the active rollouts its devices are in, whose
    pages are open (one indexed query per batch; none when no rollout page is open)."""
    if not samples:
        return
    from deployments.selectors import active_rollouts_of_devices

    from .watchers import EVERYTHING, stream_watched_groups

    watched = stream_watched_groups()
    if watched is EVERYTHING:
        rollouts = None
    else:
        rollouts = {int(g.removeprefix(ROLLOUT_GROUP_PREFIX)) for g in watched if g.startswith(ROLLOUT_GROUP_PREFIX)}
        if not rollouts:
            return  # no rollout page is open: nothing to look up
    memberships = active_rollouts_of_devices({s[0] for s in samples}, rollout_ids=rollouts)
    if memberships:
        stream_offer(rollout_cohort_items(samples, memberships))
