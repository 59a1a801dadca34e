"""The fog gateway's artifact cache (`fogdeck-agent --gateway`): serves artifacts to the edge devices behind it.

- Stored by sha256 under `--cache-dir`, evicted least-recently-used past `--cache-max-mb`.
- Filled from the cloud once per artifact: concurrent requests for one sha256 wait for a single fetch.
- Verified before serving: the fill is hashed while it streams and kept only if sha256 and size match;
  before each serve the file's (size, mtime, inode) must still be the ones recorded when it was
  verified, otherwise it is hashed again and dropped (and refilled) when it no longer matches.
  Devices still check sha256 and the manifest signature themselves: the gateway is not trusted.
- Edge devices authenticate with the short-lived token in their job's mirror URL
  (protocol/gateway_tokens.py), which names this gateway, the artifact and where to fill it from.

HTTP: `GET /v1/artifacts/{sha256}?token=…` (the artifact), `GET /v1/stats` (counters and cached hashes;
needs `Authorization: Bearer <--stats-token>`, refused when none is configured), `GET /healthz`.
The server binds 127.0.0.1 unless `--cache-host` names the LAN address edge devices use; it is
bounded and timed out like every agent server (agent/http_json.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO

from agent.http_json import DEFAULT_IO_TIMEOUT_S, BoundedHTTPServer, JsonRequestHandler
from agent.policy import JobRefused
from protocol import gateway_tokens

logger = logging.getLogger("fogdeck.agent.gateway")

_CHUNK = 64 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
ARTIFACT_PATH = "/v1/artifacts/"


class CacheError(Exception):
    """The cache cannot serve this artifact; `status` is the HTTP answer."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class CacheStats:
    cloud_fetches: int = 0
    cloud_bytes: int = 0
    hits: int = 0
    served: int = 0
    served_bytes: int = 0
    evictions: int = 0
    refused_fills: int = 0  # the cloud sent bytes that did not match the job's sha256/size
    dropped_tampered: int = 0  # a cached file changed on disk and no longer matched its sha256


@dataclass
class _Entry:
    size: int
    fingerprint: tuple[int, int, int]


@dataclass
class _Fill:
    done: threading.Event = field(default_factory=threading.Event)
    error: CacheError | None = None


def _fingerprint(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _hash_file(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class ArtifactCache:
    """Verified artifacts by sha256, LRU within `max_bytes`; `open_verified` fills on a miss."""

    def __init__(
        self, directory: Path, *, max_bytes: int, fetch_timeout_s: float = 30.0, keepalive_s: float = 2.0
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fetch_timeout_s = fetch_timeout_s
        self.keepalive_s = keepalive_s
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._fills: dict[str, _Fill] = {}
        directory.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        """Keep what a previous run left, if it still hashes to its name; oldest use first."""
        found = []
        for path in self.directory.iterdir():
            if path.name.startswith("."):
                path.unlink(missing_ok=True)  # an interrupted fill
            elif _SHA256.match(path.name):
                size, sha256 = _hash_file(path)
                if sha256 == path.name:
                    found.append((path.stat().st_atime_ns, path.name, _Entry(size, _fingerprint(path))))
                else:
                    path.unlink(missing_ok=True)
        for _, name, entry in sorted(found):
            self._entries[name] = entry
        self._evict(keep=None)

    @property
    def used_bytes(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    def contains(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._entries

    def path(self, sha256: str) -> Path:
        return self.directory / sha256

    def open_verified(
        self, sha256: str, size: int, source_url: str, *, waiting: Callable[[], None] | None = None
    ) -> BinaryIO:
        """An open handle on the verified artifact; fetched from `source_url` once if not cached.

        A miss starts one background fill per sha256 that every requester waits for; `waiting` is
        called every `keepalive_s` meanwhile (the HTTP side sends `100 Continue` so devices with a
        short read timeout keep waiting). If the requester goes away, the fill still completes.
        """
        if size > self.max_bytes:
            raise CacheError(HTTPStatus.INSUFFICIENT_STORAGE, f"{size} bytes do not fit a {self.max_bytes}-byte cache")
        while True:
            with self._lock:
                handle = self._open_cached(sha256)
                if handle is not None:
                    self.stats.hits += 1
                    return handle
                fill = self._fills.get(sha256)
                if fill is None:
                    fill = self._fills[sha256] = _Fill()
                    threading.Thread(
                        target=self._run_fill, args=(sha256, size, source_url, fill), name="fogdeck-gateway-fill"
                    ).start()
            while not fill.done.wait(self.keepalive_s):
                if waiting is not None:
                    waiting()
            if fill.error is not None:
                raise fill.error

    def _run_fill(self, sha256: str, size: int, source_url: str, fill: _Fill) -> None:
        try:
            self._fill(sha256, size, source_url)
        except CacheError as exc:
            fill.error = exc
        except Exception as exc:
            logger.exception("filling %s failed", sha256)
            fill.error = CacheError(HTTPStatus.BAD_GATEWAY, f"cache fill failed: {type(exc).__name__}")
        finally:
            with self._lock:
                self._fills.pop(sha256, None)
            fill.done.set()

    def _open_cached(self, sha256: str) -> BinaryIO | None:
        """Under the lock: the cached file if its fingerprint is the verified one (re-hashed otherwise)."""
        entry = self._entries.get(sha256)
        if entry is None:
            return None
        path = self.path(sha256)
        try:
            fingerprint = _fingerprint(path)
            if fingerprint != entry.fingerprint:
                _, actual = _hash_file(path)
                if actual != sha256:
                    raise ValueError(f"cached copy hashes to {actual}")
                entry.fingerprint = _fingerprint(path)
            handle = open(path, "rb")  # the caller streams and closes it
        except (OSError, ValueError) as exc:
            logger.warning("dropping cached %s: %s", sha256, exc)
            self.stats.dropped_tampered += 1
            self._entries.pop(sha256, None)
            path.unlink(missing_ok=True)
            return None
        self._entries.move_to_end(sha256)
        return handle

    def _fill(self, sha256: str, size: int, source_url: str) -> None:
        part = self.directory / f".{sha256}.{threading.get_ident()}.part"
        digest, received = hashlib.sha256(), 0
        try:
            # The URL comes from a token the control plane signed; only http(s) is accepted there.
            with urllib.request.urlopen(source_url, timeout=self.fetch_timeout_s) as response, open(part, "wb") as out:  # noqa: S310
                while chunk := response.read(_CHUNK):
                    received += len(chunk)
                    if received > size:
                        break
                    out.write(chunk)
                    digest.update(chunk)
        except urllib.error.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise CacheError(HTTPStatus.BAD_GATEWAY, f"cloud answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            part.unlink(missing_ok=True)
            raise CacheError(HTTPStatus.BAD_GATEWAY, f"cloud fetch failed: {getattr(exc, 'reason', exc)}") from None
        with self._lock:
            self.stats.cloud_fetches += 1
            self.stats.cloud_bytes += received
        if received != size or digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            with self._lock:
                self.stats.refused_fills += 1
            raise CacheError(HTTPStatus.BAD_GATEWAY, "the cloud's bytes do not match the artifact's sha256 and size")
        with self._lock:
            part.replace(self.path(sha256))
            self._entries[sha256] = _Entry(size, _fingerprint(self.path(sha256)))
            self._evict(keep=sha256)
        logger.info("cached %s (%s bytes) from the cloud", sha256, size)

    def _evict(self, *, keep: str | None) -> None:
        """Under the lock: drop least recently used entries until the cache fits (open handles keep reading)."""
        total = self.used_bytes
        for name in list(self._entries):
            if total <= self.max_bytes:
                break
            if name == keep:
                continue
            total -= self._entries.pop(name).size
            self.path(name).unlink(missing_ok=True)
            self.stats.evictions += 1
            logger.info("evicted %s", name)

    def note_served(self, size: int) -> None:
        with self._lock:
            self.stats.served += 1
            self.stats.served_bytes += size

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self.stats) | {
                "entries": list(self._entries),
                "used_bytes": self.used_bytes,
                "max_bytes": self.max_bytes,
            }


class GatewayServer:
    """The cache's HTTP side. `public_key` looks up a control-plane signing key by id (agent.policy.SigningKeys)."""

    def __init__(
        self,
        *,
        cache: ArtifactCache,
        gateway_uid: str,
        public_key: Callable[[str], str | None],
        host: str,
        port: int,
        advertise_url: str | None = None,
        stats_token: str | None = None,
        max_connections: int = 64,
        io_timeout_s: float = DEFAULT_IO_TIMEOUT_S,
    ) -> None:
        server = self

        class Handler(_GatewayHandler):
            owner = server

        self.cache = cache
        self.gateway_uid = gateway_uid
        self.public_key = public_key
        self.stats_token = stats_token or None
        # every edge device behind the gateway may download at once; each held slot is one streaming thread
        self._httpd = BoundedHTTPServer(
            (host, port), Handler, max_connections=max_connections, io_timeout_s=io_timeout_s
        )
        # A wildcard address is no URL: devices get this machine's name unless --cache-url says otherwise.
        reachable = socket.gethostname() if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        self.url = (advertise_url or f"http://{reachable}:{self.port}").rstrip("/")

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self._httpd.serve_forever, name="fogdeck-gateway-http", daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def authorize(self, sha256: str, token: str) -> gateway_tokens.GatewayTokenClaims:
        def lookup(key_id: str) -> str | None:
            try:
                return self.public_key(key_id)
            except JobRefused as exc:  # the control plane's key list is unreachable
                raise CacheError(HTTPStatus.SERVICE_UNAVAILABLE, exc.reason) from None

        try:
            return gateway_tokens.verify(token, public_key_b64=lookup, gateway_uid=self.gateway_uid, sha256=sha256)
        except gateway_tokens.TokenRefused as exc:
            raise CacheError(HTTPStatus.FORBIDDEN if token else HTTPStatus.UNAUTHORIZED, str(exc)) from None


class _GatewayHandler(JsonRequestHandler):
    owner: GatewayServer
    access_logger = logger

    def do_GET(self) -> None:
        if self._refuse_body():
            return
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok", "gateway": self.owner.gateway_uid})
        elif url.path == "/v1/stats":
            # the counters list every cached artifact's sha256: what this site runs is not for anyone on the LAN
            if not self._refuse_unauthorized(self.owner.stats_token):
                self._json(HTTPStatus.OK, self.owner.cache.snapshot())
        elif url.path.startswith(ARTIFACT_PATH) and _SHA256.match(url.path[len(ARTIFACT_PATH) :]):
            sha256 = url.path[len(ARTIFACT_PATH) :]
            token = (urllib.parse.parse_qs(url.query).get("token") or [""])[0]
            try:
                claims = self.owner.authorize(sha256, token)
                handle = self.owner.cache.open_verified(sha256, claims.size, claims.src, waiting=self._still_working)
            except CacheError as exc:
                logger.warning("refused %s to %s: %s", sha256[:12], self.address_string(), exc.reason)
                self._json(exc.status, {"error": exc.reason})
                return
            except OSError:
                logger.info("%s went away while %s was being fetched", self.address_string(), sha256[:12])
                return
            self._stream(handle, claims)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _still_working(self) -> None:
        # An interim 1xx answer: clients skip it and restart their read timeout (RFC 9110 §15.2).
        self.send_response_only(HTTPStatus.CONTINUE)
        self.end_headers()

    def _stream(self, handle: BinaryIO, claims: gateway_tokens.GatewayTokenClaims) -> None:
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            sent = 0
            while chunk := handle.read(_CHUNK):
                self.wfile.write(chunk)
                sent += len(chunk)
        self.owner.cache.note_served(sent)
        logger.info("served %s (%s bytes) to %s", claims.sha256[:12], sent, claims.dev)
