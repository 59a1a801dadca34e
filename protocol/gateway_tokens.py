"""Short-lived tokens that let an edge device fetch one artifact from its fog gateway's cache.

The control plane mints one per job (it is part of the gateway mirror URL in the job document) and
signs it with its active Ed25519 signing key; the gateway checks it with the public keys it already
fetches from `/api/v1/signing-keys/`, so no secret is shared with gateways.

Wire form: `base64url(claims JSON) "." base64url(signature)`. The signed bytes are
`DOMAIN + claims JSON`; DOMAIN is not JSON, so a token signature can never pass as a manifest
signature (manifests are JSON texts) nor the other way round.

Claims: `kid` signing key id, `gw` the gateway uid, `dev` the device uid, `sha256` and `size` of the
artifact, `src` the (time-limited) cloud URL the gateway fills its cache from, `exp` Unix seconds.
No Django import: the agent uses it too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"fogdeck-gateway-token/v1\n"
MAX_TOKEN_CHARS = 3072
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class TokenRefused(ValueError):
    """The token is malformed, expired, for another gateway or artifact, or badly signed."""


@dataclass(frozen=True)
class GatewayTokenClaims:
    kid: str
    gw: str
    dev: str
    sha256: str
    size: int
    src: str
    exp: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(private_key: Ed25519PrivateKey, claims: GatewayTokenClaims) -> str:
    body = json.dumps(asdict(claims), sort_keys=True, separators=(",", ":")).encode()
    return f"{_b64(body)}.{_b64(private_key.sign(DOMAIN + body))}"


def verify(
    token: str,
    *,
    public_key_b64: Callable[[str], str | None],
    gateway_uid: str,
    sha256: str,
    now: float | None = None,
) -> GatewayTokenClaims:
    """The claims of a valid token for this gateway and artifact; raises TokenRefused otherwise."""
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise TokenRefused("malformed token")
    body_b64, signature_b64 = token.split(".")
    try:
        body, signature = _unb64(body_b64), _unb64(signature_b64)
        raw = json.loads(body)
        claims = GatewayTokenClaims(**raw) if isinstance(raw, dict) else None
    except (binascii.Error, ValueError, TypeError):
        raise TokenRefused("malformed token") from None
    if claims is None or not _KEY_ID.match(str(claims.kid)) or not _SHA256.match(str(claims.sha256)):
        raise TokenRefused("malformed token")
    if (
        type(claims.exp) is not int
        or type(claims.size) is not int
        or not str(claims.src).startswith(("http://", "https://"))
    ):
        raise TokenRefused("malformed token")
    public = public_key_b64(claims.kid)
    if public is None:
        raise TokenRefused(f"unknown signing key {claims.kid}")
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public, validate=True)).verify(signature, DOMAIN + body)
    except (InvalidSignature, binascii.Error, ValueError):
        raise TokenRefused("bad signature") from None
    if claims.exp < (time.time() if now is None else now):
        raise TokenRefused("token expired")
    if claims.gw != gateway_uid:
        raise TokenRefused("token is for another gateway")
    if claims.sha256 != sha256:
        raise TokenRefused("token is for another artifact")
    return claims
