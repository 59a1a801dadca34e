"""Django's ASGI handler, with the middleware chain run synchronously in one thread hop per request."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase


class SyncChainASGIHandler(ASGIHandler):
    """In async mode Django runs each async-capable middleware (all of Django's own) as a coroutine that
    hands its `process_request` and `process_response` to the request's thread and back, and a
    sync-only one (ours, WhiteNoise) through `async_to_sync`: about a dozen thread/event-loop hand-offs
    per request before the sync view gets the same thread once more. Every view and middleware here is
    sync, so the whole chain is built in sync mode (the WSGI handler's) and run in a single
    `sync_to_async` on that thread: the same middleware in the same order, the same per-request thread
    (ThreadSensitiveContext) and so the same database connection, for less CPU per request
    (docs/benchmarks.md, "CPU per request"). An async view would still work, through `async_to_sync`."""

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        # BaseHandler.get_response: URLconf, chain, resource closers, log_response for 4xx/5xx
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
