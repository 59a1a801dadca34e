"""Every API operation in the OpenAPI schema, for anonymous, viewer, operator and admin."""

from __future__ import annotations

import re

import pytest
from drf_spectacular.generators import SchemaGenerator

pytestmark = pytest.mark.django_db

PUBLIC = {("GET", "/api/v1/signing-keys/"), ("GET", "/api/v1/artifacts/{token}/")}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Reads that need query parameters: called without them, they answer 400 naming the missing field.
NEEDS_QUERY = {("GET", "/api/v1/endpoints/resolve/")}
# Writes an operator may make: deployments, rollouts, aliases and reference profiles (operators act on rollouts).
OPERATOR_WRITES = re.compile(
    r"^/api/v1/(deployments|rollouts)/|^/api/v1/models/\{model_id\}/aliases/"
    r"|^/api/v1/models/\{model_id\}/versions/\{number\}/reference-profile/$"
)
# Emergency actions are admin-only even inside the operator's area.
ADMIN_ONLY = re.compile(r"/emergency/$")


def operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    )


OPERATIONS = operations()


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def call(client, method: str, path: str):
    return getattr(client, method.lower())(concrete(path), {}, format="json")


def test_the_matrix_covers_the_api():
    paths = {path for _, path in OPERATIONS}
    assert len(OPERATIONS) > 40
    assert {"/api/v1/devices/", "/api/v1/models/", "/api/v1/deployments/", "/api/v1/audit/"} <= paths


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_anonymous_gets_401_except_on_public_endpoints(anon_client, method, path):
    response = call(anon_client, method, path)
    if (method, path) in PUBLIC:
        assert response.status_code != 401
    else:
        assert response.status_code == 401, (method, path, response.status_code)


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[0] in UNSAFE])
def test_viewer_can_change_nothing(viewer_client, method, path):
    assert call(viewer_client, method, path).status_code == 403


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[0] in UNSAFE])
def test_operator_acts_on_deployments_rollouts_and_aliases_only(operator_client, method, path):
    status = call(operator_client, method, path).status_code
    if OPERATOR_WRITES.search(path) and not ADMIN_ONLY.search(path):
        assert status != 403, (method, path)
    else:
        assert status == 403, (method, path, status)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_admin_is_never_forbidden_and_nothing_crashes(admin_client, method, path):
    status = call(admin_client, method, path).status_code
    assert status < 500, (method, path, status)
    if (method, path) not in PUBLIC:  # an artifact link's token is its only authorization, for everyone
        assert status != 403, (method, path, status)


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[0] == "GET" and op not in PUBLIC])
def test_viewer_reads_everything(viewer_client, method, path):
    allowed = {200, 400, 404} if (method, path) in NEEDS_QUERY else {200, 404}
    assert call(viewer_client, method, path).status_code in allowed, (method, path)
