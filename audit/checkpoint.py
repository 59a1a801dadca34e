"""The audit chain's head, signed and kept outside the database.

The chain's HMAC stops anyone without the key from editing entries, but someone who can write to the
database can still delete the newest entries and rewind the head row to the last one kept: every
remaining entry is still correctly keyed. The checkpoint closes that: after each commit that appended
entries, the count, id and hash of the newest entry are signed with the audit key and stored where the
database's writer cannot reach with the same access: in Redis when REDIS_URL is set (every process of a
deployment shares it), otherwise in a file in the data directory (mode 0600). It only ever moves forward.

Its limit (docs/security.md): the checkpoint is written after the commit, so entries committed in the
last moment before a crash may not be covered yet; and someone who controls both the database and the
checkpoint store can put back an older checkpoint together with a truncated chain. Shipping checkpoints
to an append-only log elsewhere (`verify_audit` prints the current one) removes that last gap.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

# Writes the checkpoint only if it moves forward (or when forced, after a rekey); atomic in Redis.
_ADVANCE = """
local current = redis.call('HGET', KEYS[1], 'count')
if ARGV[5] == '1' or current == false or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'count', ARGV[1], 'last_id', ARGV[2], 'last_hash', ARGV[3], 'mac', ARGV[4])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Checkpoint:
    count: int
    last_id: int
    last_hash: str
    mac: str = ""

    def expected_mac(self, key: str | None = None) -> str:
        secret = (key if key is not None else settings.AUDIT_HMAC_KEY).encode()
        text = f"fogdeck-audit-checkpoint:{self.count}:{self.last_id}:{self.last_hash}"
        return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()

    def signed(self, key: str | None = None) -> Checkpoint:
        return Checkpoint(self.count, self.last_id, self.last_hash, self.expected_mac(key))

    def is_authentic(self, key: str | None = None) -> bool:
        return hmac.compare_digest(self.mac, self.expected_mac(key))

    def describe(self) -> str:
        return f"{self.count} entries, newest #{self.last_id} {self.last_hash[:16]}… mac {self.mac[:16]}…"


@cache
def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5)


def location() -> str:
    if settings.REDIS_URL:
        return f"redis key {settings.AUDIT_CHECKPOINT_REDIS_KEY}"
    return str(settings.AUDIT_CHECKPOINT_FILE)


def read() -> Checkpoint | None:
    """The stored checkpoint (not yet checked against the key), or None when there is none."""
    if settings.REDIS_URL:
        raw = _redis(settings.REDIS_URL).hgetall(settings.AUDIT_CHECKPOINT_REDIS_KEY)
        if not raw:
            return None
        data: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    else:
        try:
            data = json.loads(settings.AUDIT_CHECKPOINT_FILE.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return Checkpoint(-1, 0, "", "unreadable")
    try:
        return Checkpoint(int(data["count"]), int(data["last_id"]), str(data["last_hash"]), str(data["mac"]))
    except (KeyError, TypeError, ValueError):
        return Checkpoint(-1, 0, "", "unreadable")


def write(checkpoint: Checkpoint, *, force: bool = False, key: str | None = None) -> None:
    """Store the checkpoint, signed, unless a later one is already stored (`force` after a rekey)."""
    signed = checkpoint.signed(key)
    if settings.REDIS_URL:
        _redis(settings.REDIS_URL).eval(
            _ADVANCE,
            1,
            settings.AUDIT_CHECKPOINT_REDIS_KEY,
            signed.count,
            signed.last_id,
            signed.last_hash,
            signed.mac,
            "1" if force else "0",
        )
        return
    path = settings.AUDIT_CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the web server, bridge and worker share the file
        current = read()
        if not force and current is not None and current.count >= signed.count:
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(
                {"count": signed.count, "last_id": signed.last_id, "last_hash": signed.last_hash, "mac": signed.mac},
                handle,
            )
        os.replace(tmp, path)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


def advance(checkpoint: Checkpoint) -> None:
    """on_commit hook of every append. A failure is logged, never raised: the entries are committed, and
    the next append's checkpoint covers them."""
    try:
        write(checkpoint)
    except Exception:
        logger.exception("could not write the audit checkpoint to %s", location())
