"""Offline storms: many devices going offline within a short window (a site losing power or uplink).

The bridge (Last Will / status "offline") and the stale sweep report each batch of devices that went
offline. Counts go into fixed buckets of OFFLINE_STORM_WINDOW_SECONDS in the shared cache (Redis in
production, so every bridge process adds to the same counter); the current and previous buckets
together approximate a sliding window. At OFFLINE_STORM_THRESHOLD devices one `fleet.offline_storm`
event is published, then none until a window has passed.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from core.events import publish

logger = logging.getLogger(__name__)

_BUCKET_KEY = "fogdeck:fleet:offline:{}"
_ALERTED_KEY = "fogdeck:fleet:offline_storm:alerted"


def _count(bucket: int, count: int, window: int) -> int:
    key = _BUCKET_KEY.format(bucket)
    cache.add(key, 0, timeout=window * 3)
    try:
        return int(cache.incr(key, count))
    except ValueError:  # evicted between add and incr
        cache.set(key, count, timeout=window * 3)
        return count


def offline_storm_check(*, count: int, now: float | None = None) -> bool:
    """Add `count` devices gone offline; publish `fleet.offline_storm` when the window crosses the threshold."""
    window = settings.OFFLINE_STORM_WINDOW_SECONDS
    threshold = settings.OFFLINE_STORM_THRESHOLD
    if count <= 0 or threshold <= 0:
        return False
    at = time.time() if now is None else now
    bucket = int(at // window)
    current = _count(bucket, count, window)
    previous = int(cache.get(_BUCKET_KEY.format(bucket - 1)) or 0)
    # the part of the previous bucket that still lies inside the sliding window
    overlap = 1.0 - (at % window) / window
    in_window = current + int(previous * overlap)
    if in_window < threshold:
        return False
    if not cache.add(_ALERTED_KEY, at, timeout=window):  # already announced this storm
        return False
    logger.warning("offline storm: %s devices offline within %s s", in_window, window)
    publish(
        "fleet.offline_storm",
        devices_offline=in_window,
        window_seconds=window,
        threshold=threshold,
        detected_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
    )
    return True


def offline_storm_observe(*, count: int) -> None:
    """Count devices that went offline, after the current transaction commits (never fails the caller)."""

    def check() -> None:
        try:
            offline_storm_check(count=count)
        except Exception:
            logger.warning("offline storm check failed", exc_info=True)

    transaction.on_commit(check)
