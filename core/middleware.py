from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from . import metrics
from .context import current_request, current_request_id

request_logger = logging.getLogger("fogdeck.request")

_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


class RequestIdMiddleware:
    """Give each request an id (or keep a sane incoming X-Request-ID), echo it and expose it to audit."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _ACCEPTABLE_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        token = current_request_id.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["X-Request-ID"] = request_id
        return response


class RequestMetricsMiddleware:
    """Count and time every request by route (not by path: ids would make a series per object), and log one
    line per request on `fogdeck.request` when LOG_REQUESTS is on (with the request id and the actor)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        token = current_request.set(request)
        try:
            response = self.get_response(request)
            elapsed = time.perf_counter() - started
            match = request.resolver_match
            view = (match.view_name or match.route) if match else "<unmatched>"
            metrics.HTTP_REQUESTS.labels(request.method, view, str(response.status_code)).inc()
            metrics.HTTP_LATENCY.labels(request.method, view).observe(elapsed)
            if settings.LOG_REQUESTS:
                request_logger.info(
                    "%s %s %s %.1fms", request.method, request.path, response.status_code, elapsed * 1000,
                    extra={"method": request.method, "path": request.path, "status": response.status_code,
                           "duration_ms": round(elapsed * 1000, 2), "view": view},
                )  # fmt: skip
            return response
        finally:
            current_request.reset(token)
