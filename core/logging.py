"""Log records that carry the request id and the actor; JSON lines on request (LOG_FORMAT=json)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from django.utils.functional import empty

from .context import current_request, current_request_id

# LogRecord's own attributes: everything else on a record came from `extra=` and goes into the JSON
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "actor"}


def request_actor() -> str:
    """`user:alice` for the request being answered, once it is authenticated; "" otherwise.

    DRF sets the Django request's `user` when it authenticates a token, so records logged inside a view see
    the token's user. A session user not yet loaded is left alone: logging must not query the database."""
    request = current_request.get()
    if request is None:
        return ""
    user = request.__dict__.get("user")
    if user is None or getattr(user, "_wrapped", None) is empty:
        return ""
    if not getattr(user, "is_authenticated", False):
        return "anonymous"
    return f"user:{user.get_username()}"


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        if not hasattr(record, "actor"):
            record.actor = request_actor()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, actor, extras."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", ""),
            "actor": getattr(record, "actor", ""),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)
