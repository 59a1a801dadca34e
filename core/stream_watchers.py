"""Which stream groups a browser is watching, so producers send (and compute) only for those.

A consumer marks its groups as watched when it connects and re-marks them every `WATCH_REFRESH_SECONDS`
while it is open; a mark expires after `WATCH_TTL_SECONDS`, so a crashed web process stops counting
within that time. The marks live in one index in the Django cache (Redis in production, the shared file
cache on the embedded default), so every process sees the same answer; producers read it at most every
`READ_EVERY_SECONDS` per process. With a handful of open pages that is a handful of channel-layer
sends per flush, however many devices report (docs/benchmarks.md, "Figures behind the code").

When the cache fails, every group counts as watched: the cost of an outage is the old behaviour, never a
page that silently stops updating.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable

from django.core.cache import cache

logger = logging.getLogger("fogdeck.telemetry.stream")

WATCH_TTL_SECONDS = 90
WATCH_REFRESH_SECONDS = 30
READ_EVERY_SECONDS = 0.25
INDEX_KEY = "stream-watch:index"
_LOCK_KEY = "stream-watch:lock"


class _Everything(frozenset[str]):
    """What `stream_watched_groups` answers when the registry can't be read: every group is in it."""

    def __contains__(self, item: object) -> bool:
        return True


EVERYTHING = _Everything()


def stream_watch(groups: Iterable[str]) -> None:
    """Mark `groups` as watched for the next WATCH_TTL_SECONDS (a consumer calls it on connect and then
    every WATCH_REFRESH_SECONDS). Writers take turns under a short cache lock, so two pages opening at
    once don't overwrite each other's marks."""
    for _ in range(50):
        if cache.add(_LOCK_KEY, 1, timeout=2):
            break
        time.sleep(0.01)
    try:
        now = time.time()
        index = {g: until for g, until in (cache.get(INDEX_KEY) or {}).items() if until > now}
        index.update({g: now + WATCH_TTL_SECONDS for g in groups})
        cache.set(INDEX_KEY, index, timeout=WATCH_TTL_SECONDS)
    finally:
        cache.delete(_LOCK_KEY)
    _read.at = 0.0  # this process sees its own mark at once


class _Read:
    """This process's latest reading of the index."""

    def __init__(self) -> None:
        self.at = 0.0
        self.groups: frozenset[str] = frozenset()
        self.lock = threading.Lock()


_read = _Read()


def stream_watched_groups(*, read_after: float | None = None) -> frozenset[str]:
    """The groups some open websocket is watching (re-read at most every READ_EVERY_SECONDS per process);
    EVERYTHING when the registry is unavailable. `read_after` (a `time.monotonic()` value) forces a fresh
    reading when the one held was taken before it."""
    with _read.lock:
        now = time.monotonic()
        if now - _read.at >= READ_EVERY_SECONDS or (read_after is not None and _read.at <= read_after):
            try:
                wall = time.time()
                _read.groups = frozenset(g for g, until in (cache.get(INDEX_KEY) or {}).items() if until > wall)
            except Exception:
                logger.warning("stream watch registry unavailable: sending to every group", exc_info=True)
                _read.groups = EVERYTHING
            _read.at = now
        return _read.groups


def stream_watched(groups: Iterable[str], *, offered_at: float | None = None) -> set[str]:
    """The subset of `groups` that is watched. With `offered_at` (when the items for `groups` were
    offered, `time.monotonic()`), a group is left out only on a reading taken after that: a page that
    opened (and marked its groups) before an update was offered always gets it, even when this process's
    held reading is up to READ_EVERY_SECONDS older. A rollout's pause is sent once; no later update would
    make up for it."""
    groups = list(groups)
    watched = stream_watched_groups()
    found = {g for g in groups if g in watched}
    if offered_at is not None and len(found) < len(groups) and _read.at <= offered_at:
        watched = stream_watched_groups(read_after=offered_at)
        found = {g for g in groups if g in watched}
    return found


async def watch_while_open(groups: list[str]) -> None:
    """For a consumer that has marked `groups` (`stream_watch`, before `accept()`): mark them again every
    WATCH_REFRESH_SECONDS until cancelled on disconnect."""
    from asgiref.sync import sync_to_async

    while True:
        await asyncio.sleep(WATCH_REFRESH_SECONDS)
        try:
            await sync_to_async(stream_watch)(groups)
        except Exception:  # a cache hiccup: the next round marks them again
            logger.warning("could not mark %s as watched", groups, exc_info=True)
