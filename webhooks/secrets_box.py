"""Subscription secrets at rest: encrypted with a key derived from SECRET_KEY (Fernet, AES-128-CBC + HMAC).

The secret is needed in clear to sign each delivery, so it cannot be hashed; encrypting it keeps a
database dump from handing out every receiver's key. Rotating SECRET_KEY makes stored secrets
unreadable: rotate each subscription's secret afterwards (POST /api/v1/webhooks/{id}/rotate-secret/).
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet
from django.conf import settings


def _box() -> Fernet:
    key = hashlib.sha256(f"fogdeck-webhook-secrets:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def seal(secret: str) -> str:
    return _box().encrypt(secret.encode()).decode()


def unseal(token: str) -> str:
    return _box().decrypt(token.encode()).decode()
