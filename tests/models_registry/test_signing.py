"""Ed25519 manifests: what is signed, verification with the served public keys, key handling."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command

from models_registry import keys
from protocol import signing

from .conftest import MODELS, make_version

pytestmark = pytest.mark.django_db


def flip_char(text: str, index: int) -> str:
    replacement = "0" if text[index] != "0" else "1"
    return text[:index] + replacement + text[index + 1 :]


def test_published_manifest_verifies_with_the_served_public_key(admin_client, viewer_client, registered_model, upload):
    requirements = {"runtime": "onnxruntime", "archs": ["aarch64"]}
    upload(registered_model, b"model bytes", label="1.0.0", requirements=requirements)
    admin_client.post(f"{MODELS}{registered_model.pk}/versions/1/publish/")
    version = viewer_client.get(f"{MODELS}{registered_model.pk}/versions/1/").json()
    served = viewer_client.get("/api/v1/signing-keys/").json()
    assert len(served) == 1
    key = served[0]
    assert key["algorithm"] == "ed25519" and key["active"] is True
    assert version["key_id"] == key["key_id"] == signing.key_id(base64.b64decode(key["public_key"]))

    manifest = version["manifest"]
    assert signing.verify(key["public_key"], manifest, version["signature"])
    assert manifest == signing.canonical_text(json.loads(manifest))  # stored exactly in canonical form
    fields = json.loads(manifest)
    assert fields == {
        "schema_version": 1,
        "model": "defect-detector",
        "model_id": registered_model.pk,
        "version": 1,
        "label": "1.0.0",
        "format": "onnx",
        "framework": "pytorch",
        "sha256": version["sha256"],
        "size": len(b"model bytes"),
        "requirements": {
            "runtime": "onnxruntime",
            "min_runtime_version": "",
            "archs": ["aarch64"],
            "min_memory_mb": None,
            "accelerator": "",
        },
        "published_at": fields["published_at"],
    }
    assert signing.manifest_version(manifest) == 1

    sha_at = manifest.index(version["sha256"])
    assert not signing.verify(key["public_key"], flip_char(manifest, sha_at), version["signature"])
    raw_signature = bytearray(base64.b64decode(version["signature"]))
    raw_signature[10] ^= 0x01
    assert not signing.verify(key["public_key"], manifest, base64.b64encode(bytes(raw_signature)).decode())
    assert not signing.verify(key["public_key"], manifest, "not base64!")


def test_signing_keys_are_public_and_carry_no_private_material(anon_client):
    """Devices fetch the keys without an API token; only public keys are ever served."""
    from models_registry import keys

    keys.generate_key()
    response = anon_client.get("/api/v1/signing-keys/")
    assert response.status_code == 200
    (key,) = response.json()
    assert set(key) == {"key_id", "public_key", "algorithm", "active", "created_at"}
    assert len(base64.b64decode(key["public_key"])) == 32
    assert anon_client.post("/api/v1/signing-keys/", {}).status_code in (401, 403, 405)


def test_drafts_carry_no_signature(registered_model, viewer_client):
    make_version(registered_model)
    body = viewer_client.get(f"{MODELS}{registered_model.pk}/versions/1/").json()
    assert (body["manifest"], body["signature"], body["key_id"]) == ("", "", "")


def test_rotation_keeps_old_signatures_verifiable(registered_model, viewer_client, capsys):
    call_command("signing_keys", "generate")
    old = make_version(registered_model, b"v1", publish=True)
    call_command("signing_keys", "rotate")
    new = make_version(registered_model, b"v2", publish=True)
    assert old.key_id != new.key_id

    served = {k["key_id"]: k for k in viewer_client.get("/api/v1/signing-keys/").json()}
    assert served[new.key_id]["active"] and not served[old.key_id]["active"]
    assert signing.verify(served[old.key_id]["public_key"], old.manifest, old.signature)
    assert signing.verify(served[new.key_id]["public_key"], new.manifest, new.signature)
    assert not signing.verify(served[new.key_id]["public_key"], old.manifest, old.signature)
    call_command("signing_keys", "list")
    assert new.key_id in capsys.readouterr().out


def test_first_publish_creates_a_key_on_the_embedded_default(registered_model, settings):
    assert keys.directory_keys() == []
    version = make_version(registered_model, publish=True)
    created = keys.directory_keys()
    assert [k.key_id for k in created] == [version.key_id] and created[0].active
    pem = next(settings.SIGNING_KEY_DIR.glob("*.pem"))
    assert pem.stat().st_mode & 0o077 == 0  # private key readable by its owner only


def test_signing_key_from_the_environment_wins(registered_model, settings, viewer_client):
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes_raw()
    settings.SIGNING_KEY = base64.b64encode(raw).decode()
    version = make_version(registered_model, publish=True)
    expected_id = signing.key_id(signing.raw_public_key(private.public_key()))
    assert version.key_id == expected_id
    assert keys.directory_keys() == []  # nothing was written to disk
    served = viewer_client.get("/api/v1/signing-keys/").json()
    assert [(k["key_id"], k["active"]) for k in served] == [(expected_id, True)]


def test_a_bad_signing_key_fails_loudly(registered_model, settings):
    settings.SIGNING_KEY = base64.b64encode(b"short").decode()
    version = make_version(registered_model)
    with pytest.raises(keys.SigningKeyError, match="32 raw bytes"):
        keys.active_key()
    assert version.status == "draft"


def test_canonical_bytes_are_stable_and_unicode_kept():
    manifest = {"b": 1, "a": "modèle", "nested": {"z": [1, 2], "y": None}}
    assert signing.canonical_bytes(manifest) == '{"a":"modèle","b":1,"nested":{"y":null,"z":[1,2]}}'.encode()
