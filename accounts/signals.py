"""Sign-ins reach the audit chain through Django's auth signals.

The house style keeps important work out of signals, and this is the exception it allows: a sign-in is
not one of our state changes but an event Django's own code paths report (the UI's LoginView, the
admin's login, `django.contrib.auth.authenticate` wherever it is called). Receiving Django's signals is
the one place that sees all of them; wrapping each login path instead would miss the next one added.
Each receiver only calls a service.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed


def _on_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    from .services import auth_login_succeeded, client_address

    auth_login_succeeded(user=user, address=client_address(request), request_path=getattr(request, "path", ""))


def _on_login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    from django.contrib.auth import get_user_model

    from .services import auth_login_failed, client_address

    username = str(credentials.get(get_user_model().USERNAME_FIELD) or credentials.get("username") or "")
    auth_login_failed(username=username, address=client_address(request), request_path=getattr(request, "path", ""))


def _on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    from .services import auth_logged_out, client_address

    if user is not None and getattr(user, "is_authenticated", False):
        auth_logged_out(user=user, address=client_address(request))


def connect() -> None:
    user_logged_in.connect(_on_login, dispatch_uid="fogdeck-audit-login")
    user_login_failed.connect(_on_login_failed, dispatch_uid="fogdeck-audit-login-failed")
    user_logged_out.connect(_on_logout, dispatch_uid="fogdeck-audit-logout")
