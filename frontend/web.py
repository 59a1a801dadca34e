"""What every UI view shares: the role check, the acting person for the audit log, pagination that keeps
the filters in the URL. Public, so views.py and the other view modules import the same helpers."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse, QueryDict

from audit.actors import Actor
from core.roles import has_role

PAGE_SIZE = 50
View = Callable[..., HttpResponse]


def role_required(role: str) -> Callable[[View], View]:
    """Signed in (else the login page) and at least `role` (else 403)."""

    def decorate(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not has_role(request.user, role):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def paginate(request: HttpRequest, queryset: Any) -> tuple[Page, str]:
    """The requested page and the query string of the other parameters (filters stay in the URL)."""
    page = Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    keep = request_filters(request).urlencode()
    return page, keep


def request_filters(request: HttpRequest) -> QueryDict:
    """The query string without empty values (an empty multiple-choice value is not "any" to django-filter)."""
    params = QueryDict(mutable=True)
    for key, values in request.GET.lists():
        kept = [v for v in values if v.strip()]
        if kept and key != "page":
            params.setlist(key, kept)
    return params


def actor_of(request: HttpRequest) -> Actor:
    return Actor.for_user(request.user)
