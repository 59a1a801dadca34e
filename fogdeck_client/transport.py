"""HTTP for the client: JSON requests, a streamed multipart upload with progress, the API's error body."""

from __future__ import annotations

import json
import mimetypes
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ProgressFn = Callable[[int, int], None]
"""(bytes done, bytes total)"""

CHUNK = 256 * 1024


class TransportError(Exception):
    """The server could not be reached (connection refused, DNS, timeout)."""


class ApiError(Exception):
    """The API answered with an error; `status`, `code`, `detail`, `errors` and `request_id` come from its body."""

    def __init__(self, status: int, body: Mapping[str, Any] | None, text: str = "") -> None:
        body = body or {}
        self.status = status
        self.code = str(body.get("code", ""))
        self.detail = str(body.get("detail", "") or text[:300])
        self.errors: list[dict[str, str]] = list(body.get("errors", []) or [])
        self.request_id = str(body.get("request_id", ""))
        fields = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in self.errors)
        super().__init__(f"HTTP {status} {self.code}: {self.detail}" + (f" ({fields})" if fields else ""))


class Transport:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, user_agent: str = "fogdeck-client") -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"base URL must be http(s)://host[:port], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.user_agent = user_agent

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        if params:
            pairs = [(k, v) for k, value in params.items() if value is not None
                     for v in (value if isinstance(value, list | tuple) else [value])]  # fmt: skip
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(pairs)
        return url

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Token {self.token}", "Accept": "application/json", "User-Agent": self.user_agent}
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        body: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        extra = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            extra["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url(path, params), data=body, method=method, headers=self._headers(extra)
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                payload = json.loads(text)
            except ValueError:
                payload = None
            raise ApiError(exc.code, payload if isinstance(payload, dict) else None, text) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise TransportError(f"{method} {self.url(path)}: {getattr(exc, 'reason', exc)}") from None
        return json.loads(raw) if raw else None

    def upload(
        self,
        path: str,
        *,
        fields: Mapping[str, str],
        file_field: str,
        file_path: Path,
        progress: ProgressFn | None = None,
    ) -> Any:
        """POST multipart/form-data, streaming the file from disk (Content-Length known, so no chunked encoding)."""
        boundary = f"fogdeck-{uuid.uuid4().hex}"
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        )
        content_type = mimetypes.guess_type(file_path.name)[0] or "application/octet-stream"
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{file_path.name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = os.path.getsize(file_path)
        total = len(head) + size + len(tail)

        def stream() -> Iterator[bytes]:
            sent = len(head)
            yield head
            with file_path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    sent += len(chunk)
                    if progress:
                        progress(sent, total)
                    yield chunk
            yield tail
            if progress:
                progress(total, total)

        return self.request(
            "POST", path, body=stream(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(total)},
        )  # fmt: skip
