"""API tokens, sign-in records and the login lockout.

Token changes are audited like any other change. Sign-ins, sign-in failures, lockouts and sign-outs are
audited too: Django's own login views (the UI's and the admin's) report them through its
`user_logged_in` / `user_login_failed` / `user_logged_out` signals (accounts/signals.py), which call the
`auth_*` services below.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record

from .models import ApiToken, hash_key, lookup_prefix, new_key


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    key: str  # shown once; only its hash is stored


def api_token_create(*, actor: Actor, user: Any, name: str, days: int | None = None) -> IssuedToken:
    """Issue a named token for `user`, expiring after `days` (settings.API_TOKEN_DEFAULT_DAYS when None,
    never when 0). The clear key is returned once and never stored."""
    name = name.strip()
    if not name:
        raise TokenError("a token needs a name")
    if days is None:
        days = settings.API_TOKEN_DEFAULT_DAYS
    if days < 0:
        raise TokenError("days must be 0 (never expires) or more")
    key = new_key()
    now = timezone.now()
    token = ApiToken(
        user=user,
        name=name,
        prefix=lookup_prefix(key),
        key_hash=hash_key(key),
        created_at=now,
        expires_at=now + dt.timedelta(days=days) if days else None,
    )
    try:
        with transaction.atomic():
            token.save()
            audit_record(
                actor=actor,
                action="api_token.create",
                object_type="api_token",
                object_id=token.pk,
                object_repr=str(token),
                changes={"user": user.get_username(), "name": name, "expires_at": token.expires_at},
            )
    except IntegrityError:
        raise TokenError(f"{user.get_username()} already has a token named {name!r}; revoke it first") from None
    return IssuedToken(token, key)


def api_token_revoke(*, actor: Actor, token: ApiToken) -> ApiToken:
    """Revoke a token at once; revoking a revoked token changes nothing."""
    with transaction.atomic():
        now = timezone.now()
        if not ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
            token.refresh_from_db()
            return token
        token.revoked_at = now
        audit_record(
            actor=actor,
            action="api_token.revoke",
            object_type="api_token",
            object_id=token.pk,
            object_repr=str(token),
            changes={"revoked_at": now},
        )
    return token


# --- sign-in ---------------------------------------------------------------------------------------
def client_address(request: Any) -> str:
    """The peer address. Behind a reverse proxy this is the proxy's, so the lockout then counts per user
    name across all clients (safer than trusting a forgeable X-Forwarded-For)."""
    if request is None:
        return "unknown"
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _lockout_keys(username: str, address: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{username.lower()}\0{address}".encode()).hexdigest()[:32]
    prefix = settings.SECURITY_CACHE_PREFIX
    return f"{prefix}:login-failures:{digest}", f"{prefix}:login-locked:{digest}"


def login_is_locked(username: str, address: str) -> bool:
    return cache.get(_lockout_keys(username, address)[1]) is not None


def _user_for(username: str) -> Any:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    return User.objects.filter(**{User.USERNAME_FIELD: username}).first()


def auth_login_failed(*, username: str, address: str, request_path: str = "") -> bool:
    """Record a failed sign-in; after settings.LOGIN_LOCKOUT_FAILURES of them for this user name from
    this address, lock the pair out for LOGIN_LOCKOUT_SECONDS (also audited). Returns whether it is locked.

    The counter lives in the shared cache (Redis in production), so every web process sees it."""
    failures_key, locked_key = _lockout_keys(username, address)
    already_locked = cache.get(locked_key) is not None
    cache.add(failures_key, 0, timeout=settings.LOGIN_LOCKOUT_SECONDS)
    try:
        failures = cache.incr(failures_key)
    except ValueError:  # expired between add and incr
        cache.set(failures_key, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS)
        failures = 1
    locks_now = not already_locked and failures >= settings.LOGIN_LOCKOUT_FAILURES
    if locks_now:
        cache.set(locked_key, timezone.now().isoformat(), timeout=settings.LOGIN_LOCKOUT_SECONDS)
    user = _user_for(username)
    common = {
        "object_type": "user",
        "object_id": user.pk if user else "",
        "object_repr": username[:200],
    }
    with transaction.atomic():
        audit_record(
            actor=Actor.system("login"),
            action="auth.login_failed",
            changes={
                "username": username[:150],
                "address": address,
                "path": request_path[:200],
                "failures": failures,
                "reason": "locked out" if already_locked else "wrong credentials",
            },
            **common,
        )
        if locks_now:
            audit_record(
                actor=Actor.system("login"),
                action="auth.lockout",
                changes={"address": address, "failures": failures, "seconds": settings.LOGIN_LOCKOUT_SECONDS},
                **common,
            )
    return already_locked or locks_now


def auth_login_succeeded(*, user: Any, address: str, request_path: str = "") -> None:
    """Record a sign-in and forget the user name's failures from this address."""
    cache.delete(_lockout_keys(user.get_username(), address)[0])
    with transaction.atomic():
        audit_record(
            actor=Actor.for_user(user),
            action="auth.login",
            object_type="user",
            object_id=user.pk,
            object_repr=user.get_username(),
            changes={"address": address, "path": request_path[:200]},
        )


def auth_logged_out(*, user: Any, address: str) -> None:
    with transaction.atomic():
        audit_record(
            actor=Actor.for_user(user),
            action="auth.logout",
            object_type="user",
            object_id=user.pk,
            object_repr=user.get_username(),
            changes={"address": address},
        )


def auth_lockout_clear(*, actor: Actor, username: str, address: str) -> None:
    """Lift a lockout before its cooldown ends (an admin's decision, audited)."""
    failures_key, locked_key = _lockout_keys(username, address)
    cache.delete_many([failures_key, locked_key])
    user = _user_for(username)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="auth.lockout_clear",
            object_type="user",
            object_id=user.pk if user else "",
            object_repr=username[:200],
            changes={"address": address},
        )
