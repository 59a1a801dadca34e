"""The sign-in pages (the UI's and the admin's) behind the auth throttle; the lockout is in the backend."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse

from .services import client_address, login_is_locked
from .throttling import AuthThrottle


def _throttled(request: HttpRequest) -> HttpResponse | None:
    if request.method != "POST":
        return None
    throttle = AuthThrottle()
    if throttle.allow_request(request, None):
        return None
    wait = int(throttle.wait() or 1)
    response = HttpResponse(
        f"Too many sign-in attempts from your address: try again in {wait} s.\n", status=429, content_type="text/plain"
    )
    response["Retry-After"] = str(wait)
    return response


class LoginView(auth_views.LoginView):
    template_name = "frontend/login.html"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return _throttled(request) or super().dispatch(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        username = str(form.data.get("username") or "")
        locked = bool(username) and login_is_locked(username, client_address(self.request))
        return self.render_to_response(self.get_context_data(form=form, locked_out=locked))


def admin_login(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
    return _throttled(request) or admin.site.login(request, extra_context)
