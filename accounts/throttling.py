"""API and sign-in throttles: a fixed-window counter per client in the shared cache.

DRF's SimpleRateThrottle keeps every request's timestamp in one cache value and rewrites it on every
request (a 6000-entry list at the user rate); a counter is one atomic increment in Redis.
Rates come from settings.API_THROTTLE_RATES and are read per request (tests lower them).
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from rest_framework.throttling import BaseThrottle

_PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """ "100/min" -> (100, 60); None or "" -> no limit."""
    if not rate:
        return None
    try:
        count, period = rate.split("/")
        return int(count), _PERIODS[period.strip().lower()]
    except (ValueError, KeyError):
        raise ImproperlyConfigured(f"throttle rate {rate!r} is not N/s, N/min, N/hour or N/day") from None


class WindowThrottle(BaseThrottle):
    scope = ""

    def __init__(self) -> None:
        self._wait = 0.0

    def ident(self, request: Any) -> str | None:
        raise NotImplementedError

    def allow_request(self, request: Any, view: Any) -> bool:
        rate = parse_rate(settings.API_THROTTLE_RATES.get(self.scope))
        ident = self.ident(request)
        if rate is None or ident is None:
            return True
        limit, period = rate
        now = time.time()
        window = int(now // period)
        key = f"{settings.SECURITY_CACHE_PREFIX}:throttle:{self.scope}:{ident}:{window}"
        cache.add(key, 0, timeout=period + 1)
        try:
            count = cache.incr(key)
        except ValueError:  # the window's key expired between add and incr
            cache.set(key, 1, timeout=period + 1)
            count = 1
        if count > limit:
            self._wait = (window + 1) * period - now
            return False
        return True

    def wait(self) -> float | None:
        return max(self._wait, 1.0)


class AnonThrottle(WindowThrottle):
    """Unauthenticated API calls, per client address."""

    scope = "anon"

    def ident(self, request: Any) -> str | None:
        user = getattr(request, "_user", None)  # not request.user: this also runs inside authentication
        if user is not None and user.is_authenticated:
            return None
        return str(request.META.get("REMOTE_ADDR") or "unknown")  # not X-Forwarded-For: a client sets it


class UserThrottle(WindowThrottle):
    """Authenticated API calls, per user (all their tokens and sessions together)."""

    scope = "user"

    def ident(self, request: Any) -> str | None:
        if request.user and request.user.is_authenticated:
            return str(request.user.pk)
        return None


class AuthThrottle(WindowThrottle):
    """Sign-in attempts per client address, whatever the user name (the lockout counts per user name)."""

    scope = "auth"

    def ident(self, request: Any) -> str | None:
        return str(request.META.get("REMOTE_ADDR") or "unknown")
