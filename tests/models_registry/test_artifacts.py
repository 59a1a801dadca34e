"""Artifacts: streamed upload with a size limit, content-addressed storage, time-limited downloads."""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.storage import default_storage
from django.test import override_settings

from audit.models import AuditEntry
from models_registry.models import ModelVersion
from models_registry.services import model_version_download_url
from tests.factories import TEST_ACTOR

from .conftest import MODELS, make_version, s3_keys

pytestmark = pytest.mark.django_db

ONNX_BYTES = bytes(range(256)) * 40  # 10 KiB, not all one value


def versions_url(model, number=None, suffix=""):
    base = f"{MODELS}{model.pk}/versions/"
    return f"{base}{number}/{suffix}" if number is not None else base


def fetch(client, url):
    """GET the time-limited URL the way a device would (the test client for our own signed path)."""
    path = urlsplit(url)
    response = client.get(path.path)
    return response.status_code, b"".join(response.streaming_content) if response.status_code == 200 else b""


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_publish_download_round_trip_on_local_storage(
    admin_client, anon_client, upload, registered_model, assert_audited, tmp_path
):
    response = upload(registered_model, ONNX_BYTES, label="1.0.0", metrics={"accuracy": 0.93, "latency_ms": 12})
    assert response.status_code == 201, response.json()
    body = response.json()
    expected_sha = hashlib.sha256(ONNX_BYTES).hexdigest()
    assert (body["number"], body["size"], body["sha256"], body["status"]) == (1, len(ONNX_BYTES), expected_sha, "draft")
    assert body["id"]
    key = f"artifacts/{registered_model.pk}/{expected_sha}.onnx"
    assert (tmp_path / "media" / key).read_bytes() == ONNX_BYTES
    assert_audited("model_version", body["id"], "model_version.create", actor="user:alice-admin")

    assert admin_client.post(versions_url(registered_model, 1, "publish/")).status_code == 200
    response = admin_client.get(versions_url(registered_model, 1, "download/"))
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith("http://testserver/api/v1/artifacts/")
    status, content = fetch(anon_client, location)  # the signed link itself is the authorization
    assert status == 200
    assert hashlib.sha256(content).hexdigest() == expected_sha
    entry = assert_audited("model_version", body["id"], "model_version.download", actor="user:alice-admin")
    assert entry.changes["ttl_seconds"] == 900


def test_download_needs_authentication_but_any_role(anon_client, viewer_client, registered_model):
    make_version(registered_model, ONNX_BYTES, publish=True)
    assert anon_client.get(versions_url(registered_model, 1, "download/")).status_code == 401
    assert viewer_client.get(versions_url(registered_model, 1, "download/")).status_code == 302


def test_local_signed_url_stops_working_when_it_expires(anon_client, registered_model):
    version = make_version(registered_model, ONNX_BYTES, publish=True)
    url = model_version_download_url(actor=TEST_ACTOR, version=version, ttl=1)
    assert fetch(anon_client, url)[0] == 200
    time.sleep(1.2)
    response = anon_client.get(url)
    assert response.status_code == 403
    assert "expired" in response.json()["detail"]


def test_tampered_or_unsigned_link_is_refused(anon_client, registered_model):
    version = make_version(registered_model, ONNX_BYTES, publish=True)
    url = model_version_download_url(actor=TEST_ACTOR, version=version)
    token = url.split("/artifacts/")[1].rstrip("/")
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert anon_client.get(f"/api/v1/artifacts/{forged}/").status_code == 403
    assert anon_client.get(f"/api/v1/artifacts/{version.artifact_key}/").status_code in (403, 404)


def test_revoked_version_is_not_downloadable_even_with_an_old_link(admin_client, anon_client, registered_model):
    version = make_version(registered_model, ONNX_BYTES, publish=True)
    url = model_version_download_url(actor=TEST_ACTOR, version=version)
    admin_client.post(versions_url(registered_model, 1, "revoke/"), {"reason": "leaks PII"}, format="json")
    assert anon_client.get(url).status_code == 403
    response = admin_client.get(versions_url(registered_model, 1, "download/"))
    assert response.status_code == 409
    assert "revoked" in response.json()["detail"]


def test_upload_round_trip_on_s3_through_moto_server(s3_storage, admin_client, upload, registered_model):
    response = upload(registered_model, ONNX_BYTES)
    assert response.status_code == 201, response.json()
    sha = response.json()["sha256"]
    assert s3_keys(s3_storage) == [f"artifacts/{registered_model.pk}/{sha}.onnx"]
    admin_client.post(versions_url(registered_model, 1, "publish/"))

    response = admin_client.get(versions_url(registered_model, 1, "download/"))
    assert response.status_code == 302
    url = response["Location"]
    assert url.startswith(f"{s3_storage}/fogdeck-test-artifacts/artifacts/")  # the configured endpoint_url
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Signature"][0]
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - our own moto endpoint
        assert hashlib.sha256(reply.read()).hexdigest() == sha


def test_s3_url_carries_the_per_call_ttl(s3_storage, registered_model):
    version = make_version(registered_model, ONNX_BYTES, publish=True)
    url = model_version_download_url(actor=TEST_ACTOR, version=version, ttl=2)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["2"]


@override_settings(MAX_ARTIFACT_SIZE_MB=1)
def test_upload_over_the_limit_is_refused_and_leaves_nothing(upload, registered_model, tmp_path):
    audit_before = AuditEntry.objects.count()
    response = upload(registered_model, b"\x01" * (2 * 1024 * 1024))
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "payload_too_large" and "1 MB" in body["detail"]
    assert not ModelVersion.objects.exists()
    assert AuditEntry.objects.count() == audit_before
    assert stored_files(tmp_path / "media") == []


@override_settings(MAX_ARTIFACT_SIZE_MB=1)
def test_upload_over_the_limit_leaves_nothing_on_s3(s3_storage, upload, registered_model):
    before = s3_keys(s3_storage)
    assert upload(registered_model, b"\x02" * (2 * 1024 * 1024)).status_code == 413
    assert s3_keys(s3_storage) == before
    assert not ModelVersion.objects.exists()


def test_upload_handler_stops_reading_at_the_limit(settings, registered_model):
    from models_registry.exceptions import ArtifactTooLarge
    from models_registry.uploads import ArtifactUploadHandler

    settings.MAX_ARTIFACT_SIZE_MB = 1
    handler = ArtifactUploadHandler()
    handler.new_file("artifact", "m.onnx", "application/octet-stream", None)
    chunk = b"\0" * handler.chunk_size
    received = 0
    with pytest.raises(ArtifactTooLarge):
        for start in range(0, 10 * 1024 * 1024, len(chunk)):
            handler.receive_data_chunk(chunk, start)
            received += len(chunk)
    assert received == 1024 * 1024  # the chunk that crossed the limit was not accepted
    assert handler._file is None  # its temporary file is gone


def test_invalid_metadata_is_refused_without_storing_anything(upload, registered_model, tmp_path):
    response = upload(registered_model, ONNX_BYTES, metrics='{"accuracy": NaN}')
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "metrics"
    response = upload(registered_model, ONNX_BYTES, requirements={"archs": ["sparc"]})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"].startswith("requirements")
    response = upload(registered_model, ONNX_BYTES, metrics={"accuracy": "high"})
    assert response.status_code == 400
    assert not ModelVersion.objects.exists()
    assert stored_files(tmp_path / "media") == []


def test_database_failure_removes_the_stored_artifact(registered_model, tmp_path, monkeypatch):
    from models_registry import lifecycle

    def fail(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(lifecycle, "audit_record", fail)  # the create's audit entry, in its transaction
    with pytest.raises(RuntimeError):
        make_version(registered_model, ONNX_BYTES)
    assert not ModelVersion.objects.exists()
    assert stored_files(tmp_path / "media") == []


def test_same_bytes_are_stored_once_and_versions_number_up(upload, registered_model, tmp_path):
    assert upload(registered_model, ONNX_BYTES).json()["number"] == 1
    assert upload(registered_model, ONNX_BYTES, label="same-bytes-new-metadata").json()["number"] == 2
    assert len(stored_files(tmp_path / "media")) == 1
    assert default_storage.exists(ModelVersion.objects.get(number=2).artifact_key)


def test_viewer_cannot_upload_and_anonymous_gets_401(viewer_client, anon_client, upload, registered_model):
    assert upload(registered_model, ONNX_BYTES, client=viewer_client).status_code == 403
    assert upload(registered_model, ONNX_BYTES, client=anon_client).status_code == 401
    assert not ModelVersion.objects.exists()
