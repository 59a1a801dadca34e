"""Per-request context that services read without threading it through every call."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

current_request_id: ContextVar[str] = ContextVar("fogdeck_request_id", default="")
# the request being answered (the logging filter reads its user once authentication has set it)
current_request: ContextVar[Any] = ContextVar("fogdeck_request", default=None)
