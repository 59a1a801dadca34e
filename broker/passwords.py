"""MQTT secrets hashed in Mosquitto's password-file format.

`$7$<iterations>$<base64 salt>$<base64 hash>` is PBKDF2-HMAC-SHA512 as written by
`mosquitto_passwd`, so a hash stored for a device can be copied into a Mosquitto password
file unchanged when a deployment switches from the embedded broker to Mosquitto.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

_PREFIX = "$7$"
_SALT_BYTES = 12
# Mosquitto accepts 12-byte salts (2.0) and 64-byte salts (2.1+); its derived key is always 64 bytes.
_ACCEPTED_SALT_BYTES = frozenset({12, 64})
_HASH_BYTES = 64
# Mosquitto parses iterations with atoi into an int; anything larger is not a hash it wrote.
_MAX_ITERATIONS = 2**31 - 1


def _derive(secret: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations, dklen=_HASH_BYTES)


def hash_secret(secret: str, *, iterations: int = 1000) -> str:
    """Hash `secret` with a fresh 12-byte salt; the result verifies in Mosquitto and in `verify_secret`."""
    if iterations < 1 or iterations > _MAX_ITERATIONS:
        raise ValueError(f"iterations must be between 1 and {_MAX_ITERATIONS}")
    if "\x00" in secret:
        # Mosquitto hashes a C string, so it would silently hash only the part before the NUL.
        raise ValueError("secret must not contain NUL characters")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _derive(secret, salt, iterations)
    salt_b64 = base64.b64encode(salt).decode("ascii")
    hash_b64 = base64.b64encode(digest).decode("ascii")
    return f"{_PREFIX}{iterations}${salt_b64}${hash_b64}"


def verify_secret(secret: str, encoded: str) -> bool:
    """True only when `encoded` is a well-formed `$7$` hash of `secret`; never raises.

    A malformed or foreign hash is treated as a failed login rather than an error, so a
    corrupt row cannot turn an authentication attempt into a crash.
    """
    try:
        if not isinstance(secret, str) or not isinstance(encoded, str) or "\x00" in secret:
            return False
        if not encoded.startswith(_PREFIX):
            return False
        parts = encoded[len(_PREFIX) :].split("$")
        if len(parts) != 3:
            return False
        iterations_s, salt_b64, hash_b64 = parts
        if not (iterations_s.isascii() and iterations_s.isdigit()):
            return False
        iterations = int(iterations_s)
        if iterations < 1 or iterations > _MAX_ITERATIONS:
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        if len(salt) not in _ACCEPTED_SALT_BYTES or len(expected) != _HASH_BYTES:
            return False
        return hmac.compare_digest(_derive(secret, salt, iterations), expected)
    except (ValueError, binascii.Error, UnicodeError):
        return False


def generate_secret() -> str:
    """A new random MQTT secret (256 bits, URL-safe so it survives config files and env vars)."""
    return secrets.token_urlsafe(32)
