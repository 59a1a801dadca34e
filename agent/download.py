"""Artifact downloads that survive a dropped connection: resume with an HTTP Range request, retry with backoff.

A device on a flaky link (a Raspberry Pi on Wi-Fi, a cellular gateway) must not start a 50 MB model over
because the connection dropped at 49 MB. `fetch` keeps what it received in the `.part` file and asks for
the rest (`Range: bytes=<received>-`); a server that ignores Range (200 instead of 206) or answers with a
different range makes it start over from zero, so the bytes on disk are always a prefix of the artifact.
Between attempts it waits `RetryPolicy.delay(n)` (exponential, with jitter), and never past the job's
deadline. A permanent answer (HTTP 4xx other than 408/429) ends the download at once. Whatever the
transfer did, the job's sha256 and size are checked afterwards (agent/policy.py): resuming never makes a
wrong artifact acceptable.

No Django, no third-party package: the agent's distribution (agent/pyproject.toml) installs without them.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("fogdeck.agent.download")

CHUNK = 64 * 1024
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadFailed(Exception):
    """The artifact could not be fetched from this source (after the retries the policy allows)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Transient(Exception):
    """A failure worth another attempt (connection refused or cut, timeout, 5xx, 408, 429)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # connections in all, the first included
    backoff_s: float = 0.5  # before the second attempt; doubled each time, up to max_backoff_s
    max_backoff_s: float = 8.0
    jitter: float = 0.2  # up to this fraction added, so a fleet cut off together does not return together

    def delay(self, retry: int) -> float:
        """Seconds before retry number `retry` (1 = the second attempt)."""
        base = min(self.max_backoff_s, self.backoff_s * 2.0 ** (retry - 1))
        return base * (1 + random.uniform(0, self.jitter))  # noqa: S311 - jitter, not cryptography


def hash_file(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def fetch(
    url: str,
    target: Path,
    *,
    timeout: float,
    deadline: float,
    max_bytes: int | None = None,
    on_progress: Callable[[int], None] = lambda received: None,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, str]:
    """Download `url` into `target` (started afresh); (bytes received, sha256 hex).

    Stops once more than `max_bytes` arrived (the size check refuses such an artifact anyway).
    `on_progress(received)` runs after every chunk and may raise to stop the download (a cancel, the job's
    deadline): that exception propagates untouched and the partial file stays for the caller to remove.
    """
    target.unlink(missing_ok=True)
    failures = 0
    while True:
        try:
            _attempt(
                url,
                target,
                timeout=max(1.0, min(timeout, deadline - time.monotonic())),
                max_bytes=max_bytes,
                on_progress=on_progress,
            )
            return hash_file(target)
        except _Transient as exc:
            failures += 1
            received = target.stat().st_size if target.exists() else 0
            if failures >= retry.attempts:
                raise DownloadFailed(f"{exc} (after {failures} attempts, {received} bytes kept)") from None
            wait = retry.delay(failures)
            if time.monotonic() + wait >= deadline:
                raise DownloadFailed(f"{exc} (no time left for another attempt)") from None
            logger.warning("download of %s interrupted at %d bytes (%s); resuming in %.1f s", url, received, exc, wait)
            sleep(wait)


def _attempt(
    url: str, target: Path, *, timeout: float, max_bytes: int | None, on_progress: Callable[[int], None]
) -> None:
    have = target.stat().st_size if target.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})  # noqa: S310
    try:
        # The URL comes from a signed-in control plane and is checked to be http(s) by the protocol.
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            resumed = _resume_point(response, have)
            if resumed is None:
                target.unlink(missing_ok=True)  # a range we did not ask for: start over
                raise _Transient(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
            have, total = resumed
            with open(target, "ab" if have else "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    have += len(chunk)
                    on_progress(have)
                    if max_bytes is not None and have > max_bytes:
                        return  # more than announced: the sha256 check will refuse it, no need for the rest
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            target.unlink(missing_ok=True)  # our prefix is not a prefix of what it serves now: start over
            raise _Transient(f"HTTP 416 at byte {have}") from None
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadFailed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Transient(str(getattr(exc, "reason", None) or exc) or type(exc).__name__) from None
    if total is not None and have < total:
        # http.client returns a short body without raising when the server closes early
        raise _Transient(f"connection closed after {have} of {total} bytes")


def _resume_point(response: http.client.HTTPResponse, asked_from: int) -> tuple[int, int | None] | None:
    """(where the body starts in the artifact, the artifact's total size when the server says it);
    None for a partial answer that does not start where we asked."""
    if response.status == 206:
        match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != asked_from:
            return None
        return asked_from, None if match.group(3) == "*" else int(match.group(3))
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None
