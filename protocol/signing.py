"""Ed25519 signatures over model-version manifests, shared by the control plane and the device agent.

No Django import: the agent verifies what the registry signed with exactly these functions.

The signed bytes are the canonical JSON text of the manifest (sorted keys, no whitespace, UTF-8). The
registry stores that text verbatim and devices verify the text they received, never a re-serialization.
The manifest's `version` is the per-model version number agents use to refuse rollbacks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any, TypedDict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST_SCHEMA_VERSION = 1
ALGORITHM = "ed25519"


class Requirements(TypedDict):
    runtime: str
    min_runtime_version: str
    archs: list[str]
    min_memory_mb: int | None
    accelerator: str


class Manifest(TypedDict):
    schema_version: int
    model: str
    model_id: int
    version: int
    label: str
    format: str
    framework: str
    sha256: str
    size: int
    requirements: Requirements
    published_at: str


def canonical_text(manifest: Manifest | dict[str, Any]) -> str:
    """The one text form of a manifest that is signed and stored."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(manifest: Manifest | dict[str, Any]) -> bytes:
    return canonical_text(manifest).encode()


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key_raw: bytes) -> str:
    """First 16 hex characters of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def private_key_from_b64(value: str) -> Ed25519PrivateKey:
    """A private key from base64 of its raw 32 bytes (the SIGNING_KEY format)."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the signing key is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 private key is 32 raw bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    return base64.b64encode(raw_public_key(private_key.public_key())).decode()


def sign(private_key: Ed25519PrivateKey, manifest_text: str) -> str:
    """Base64 Ed25519 signature over the UTF-8 bytes of the manifest text."""
    return base64.b64encode(private_key.sign(manifest_text.encode())).decode()


def verify(public_key_b64: str, manifest_text: str, signature_b64: str) -> bool:
    """True only when the signature is a valid Ed25519 signature of exactly this manifest text."""
    try:
        public_raw = base64.b64decode(public_key_b64, validate=True)
        signature = base64.b64decode(signature_b64, validate=True)
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, manifest_text.encode())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def manifest_version(manifest_text: str) -> int:
    """The version number inside a manifest (what an agent compares to refuse a rollback)."""
    value = json.loads(manifest_text)["version"]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("manifest version is not an integer")
    return value
