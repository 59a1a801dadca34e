from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied

from .services import client_address, login_is_locked


class LockoutModelBackend(ModelBackend):
    """Django's user/password check, refused outright while the user name is locked out from this address
    (even with the right password: otherwise the lockout only slows a guesser down until it guesses right).

    PermissionDenied stops Django trying other backends and reports a failed sign-in (audited)."""

    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if username is None:
            from django.contrib.auth import get_user_model

            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if request is not None and username and login_is_locked(str(username), client_address(request)):
            raise PermissionDenied("locked out")
        return super().authenticate(request, username=username, password=password, **kwargs)
