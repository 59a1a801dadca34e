from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audit.actors import Actor
from audit.models import AuditEntry
from tests.factories import make_user
from tests.processes import Mosquitto, Process, mosquitto_fixture, processes_fixture


def _client_for(role: str | None, username: str) -> APIClient:
    user = make_user(username, role)
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    client.user = user  # type: ignore[attr-defined]
    return client


@pytest.fixture
def admin_client(db: Any) -> APIClient:
    return _client_for("admin", "alice-admin")


@pytest.fixture
def operator_client(db: Any) -> APIClient:
    return _client_for("operator", "oscar-operator")


@pytest.fixture
def viewer_client(db: Any) -> APIClient:
    return _client_for("viewer", "vera-viewer")


@pytest.fixture
def anon_client(db: Any) -> APIClient:
    return APIClient()


@pytest.fixture
def assert_audited() -> Callable[..., AuditEntry]:
    """Assert the newest entry for an object has this action (and, optionally, this actor)."""

    def check(object_type: str, object_id: object, action: str, actor: str | None = None) -> AuditEntry:
        entry = AuditEntry.objects.for_object(object_type, object_id).filter(action=action).order_by("-id").first()
        assert entry is not None, f"no audit entry {action} for {object_type}:{object_id}"
        if actor is not None:
            assert entry.actor == actor
        return entry

    return check


@pytest.fixture
def mosquitto(tmp_path: Any) -> Any:
    """A Mosquitto of our own on a free port, enforcing generated per-device password and ACL files."""
    yield from mosquitto_fixture(tmp_path)


@pytest.fixture
def processes(tmp_path: Any) -> Any:
    """Start project processes (`processes("bridge", "manage.py", "mqtt_bridge", MQTT_URL=…)`); stopped after."""
    yield from processes_fixture(tmp_path)


__all__ = ["Mosquitto", "Process"]


@pytest.fixture
def published_version(db: Any, settings: Any, tmp_path: Any) -> Any:
    """The sample classifier's first version, uploaded and published (signed with a throwaway key)."""
    import io

    from models_registry.samples import sample_versions
    from models_registry.services import model_create, model_version_create, model_version_publish

    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    actor = Actor.system("tests")
    sample = sample_versions()[0]
    model = model_create(actor=actor, name="shape-classifier", task="classification")
    version = model_version_create(
        actor=actor,
        model=model,
        artifact=io.BytesIO(sample.onnx_bytes),
        format="onnx",
        framework="other",
        requirements={"runtime": "onnxruntime", "min_runtime_version": "1.16", "min_memory_mb": 512},
    )
    return model_version_publish(actor=actor, version=version)
