from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audit.models import AuditEntry
from tests.factories import make_user


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
