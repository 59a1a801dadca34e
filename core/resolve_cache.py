"""The resolve cache's generation counter: one key every cached answer is filed under.

Services whose changes alter which endpoints a resolve would return (a device going online or
offline, a new active model or inference URL, an install, an alias moving, a site moving) call
`resolve_cache_invalidate()`. It bumps the counter once their transaction commits, so every cached
answer becomes unreachable at once (and expires on its own); a reader racing the commit can only
file the old answer under the old generation.

It lives in core (not endpoints/, which reads it) because fleet, the registry and deployments bump it,
and they sit below endpoints/ in the import layers (tests/core/test_import_graph.py).
"""

from __future__ import annotations

import logging

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.db import transaction

logger = logging.getLogger(__name__)

GENERATION_KEY = "fogdeck:endpoints:generation"


def resolve_cache_generation() -> int:
    value = cache.get(GENERATION_KEY)
    if value is None:
        # first use (or the cache was flushed): start a generation no earlier answer was filed under
        cache.add(GENERATION_KEY, 1, timeout=None)
        value = cache.get(GENERATION_KEY, 1)
    return int(value)


def resolve_cache_bump() -> None:
    """Bump the generation now (services use `resolve_cache_invalidate`, which waits for the commit)."""
    try:
        backend = caches["default"]
        if isinstance(backend, RedisCache):
            # one round trip: Django's incr() checks EXISTS first, and the bridge bumps per online flip
            raw = backend._cache.get_client(GENERATION_KEY, write=True)
            raw.incr(backend.make_and_validate_key(GENERATION_KEY))
        else:
            cache.incr(GENERATION_KEY)
    except ValueError:  # the key is missing: any new value invalidates
        cache.add(GENERATION_KEY, 1, timeout=None)
    except Exception:  # a cache outage must not fail a committed change; answers expire by TTL anyway
        logger.warning("could not bump the resolve cache generation", exc_info=True)


def resolve_cache_invalidate() -> None:
    """Make every cached resolve answer stale once the current transaction commits."""
    transaction.on_commit(resolve_cache_bump)
