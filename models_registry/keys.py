"""Where the registry's Ed25519 signing keys live.

Two sources, both optional:

* `SIGNING_KEY` (or `SIGNING_KEY_FILE`): base64 of a raw 32-byte private key. When set it is the active key.
* `SIGNING_KEY_DIR` (default DATA_DIR/signing-keys): `<key_id>.pem` PKCS#8 private keys plus `keys.json`
  recording which one is active and when each was created. `manage.py signing_keys rotate` adds a new
  active key; the old ones stay, so their public keys are still served and old signatures still verify.

With neither configured (the embedded default), the first publish creates a key in the directory.
Only public keys ever leave this module.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from protocol import signing

from .exceptions import SigningKeyError

logger = logging.getLogger(__name__)
INDEX_FILE = "keys.json"


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_key: Ed25519PrivateKey
    active: bool
    created_at: dt.datetime | None
    source: str  # "env" or the PEM path

    @property
    def public_key_b64(self) -> str:
        return signing.public_key_b64(self.private_key)


def _key_dir() -> Path:
    return Path(settings.SIGNING_KEY_DIR)


def _key_id_of(private_key: Ed25519PrivateKey) -> str:
    return signing.key_id(signing.raw_public_key(private_key.public_key()))


def _read_index(directory: Path) -> dict[str, object]:
    path = directory / INDEX_FILE
    if not path.exists():
        return {"active": "", "keys": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"{path} cannot be read: {exc}") from None
    data.setdefault("active", "")
    data.setdefault("keys", {})
    return data


def _write_index(directory: Path, index: dict[str, object]) -> None:
    tmp = directory / f".{INDEX_FILE}.tmp"
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
    os.replace(tmp, directory / INDEX_FILE)  # atomic: readers see the old or the new index


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize key creation between processes (two first publishes must not make two active keys)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load_pem(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not a readable PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def _env_key() -> SigningKey | None:
    value = settings.SIGNING_KEY
    if not value:
        return None
    try:
        private_key = signing.private_key_from_b64(value)
    except ValueError as exc:
        raise SigningKeyError(f"SIGNING_KEY: {exc}") from None
    return SigningKey(_key_id_of(private_key), private_key, True, None, "env")


def directory_keys() -> list[SigningKey]:
    directory = _key_dir()
    if not directory.is_dir():
        return []
    index = _read_index(directory)
    meta: dict[str, dict[str, str]] = index["keys"]  # type: ignore[assignment]
    keys = []
    for path in sorted(directory.glob("*.pem")):
        private_key = _load_pem(path)
        kid = _key_id_of(private_key)
        created = meta.get(kid, {}).get("created_at")
        keys.append(
            SigningKey(
                key_id=kid,
                private_key=private_key,
                active=kid == index["active"],
                created_at=dt.datetime.fromisoformat(created) if created else None,
                source=str(path),
            )
        )
    return keys


def all_keys() -> list[SigningKey]:
    """Every key we can serve the public half of: the env key (active) first, then the directory's."""
    env = _env_key()
    keys = directory_keys()
    if env is not None:
        # SIGNING_KEY wins: a directory key that was active before is served as inactive
        keys = [
            SigningKey(k.key_id, k.private_key, False, k.created_at, k.source) for k in keys if k.key_id != env.key_id
        ]
        return [env, *keys]
    return sorted(keys, key=lambda k: (not k.active, k.created_at or dt.datetime.min.replace(tzinfo=dt.UTC)))


def generate_key(*, activate: bool = True) -> SigningKey:
    """Write a new private key into the key directory (mode 0600), optionally making it active."""
    directory = _key_dir()
    with _locked(directory):
        return _generate_locked(directory, activate=activate)


def _generate_locked(directory: Path, *, activate: bool) -> SigningKey:
    private_key = Ed25519PrivateKey.generate()
    kid = _key_id_of(private_key)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = directory / f"{kid}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    now = dt.datetime.now(dt.UTC)
    index = _read_index(directory)
    index["keys"][kid] = {"created_at": now.isoformat()}  # type: ignore[index]
    if activate or not index["active"]:
        index["active"] = kid
    _write_index(directory, index)
    return SigningKey(kid, private_key, index["active"] == kid, now, str(path))


def active_key(*, create: bool = True) -> SigningKey:
    """The key new publications are signed with; on the embedded default the first call creates one."""
    env = _env_key()
    if env is not None:
        return env
    for key in directory_keys():
        if key.active:
            return key
    if not create:
        raise SigningKeyError("no active signing key: set SIGNING_KEY or run `manage.py signing_keys generate`")
    directory = _key_dir()
    with _locked(directory):
        for key in directory_keys():  # another process may have created it while we waited for the lock
            if key.active:
                return key
        key = _generate_locked(directory, activate=True)
    logger.warning("created signing key %s in %s (no SIGNING_KEY was configured)", key.key_id, directory)
    return key
