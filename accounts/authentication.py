from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import Group
from django.db.models import Exists, OuterRef
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from core.roles import ROLES

from .models import ApiToken, lookup_prefix
from .throttling import AnonThrottle

# last_used_at is written at most this often per token, so authentication stays one read per request
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Token <key>`: the row found by the key's prefix, the key checked against its hash,
    refused when revoked or expired or when its user is inactive."""

    keyword = "Token"

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: give `Token <key>`.")
        try:
            key = parts[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid token header: the key has invalid characters.") from None
        # the user's roles in the same query (core.roles reads them from the user): one query per request
        roles = {f"_has_{role}": Exists(Group.objects.filter(user=OuterRef("user_id"), name=role)) for role in ROLES}
        token = ApiToken.objects.select_related("user").annotate(**roles).filter(prefix=lookup_prefix(key)).first()
        if token is None or not token.matches(key):
            # wrong keys count against the caller's anonymous rate, as requests without one do
            throttle = AnonThrottle()
            if not throttle.allow_request(request, None):
                raise exceptions.Throttled(throttle.wait())
            raise exceptions.AuthenticationFailed("Invalid token.")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This token was revoked.")
        now = timezone.now()
        if token.expires_at is not None and token.expires_at <= now:
            raise exceptions.AuthenticationFailed("This token has expired; create a new one.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        token.user._fogdeck_role_names = {role for role in ROLES if getattr(token, f"_has_{role}")}
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return self.keyword
