"""The hand-written client against the contract: every operation it calls is in the OpenAPI schema that
`manage.py spectacular` writes, and every key its TypedDicts promise is in that operation's response."""

from __future__ import annotations

import io
import typing

import pytest
import yaml
from django.core.management import call_command

from fogdeck_client import types

pytestmark = pytest.mark.django_db

# (method, path, the TypedDict of its answer, whether the answer is a page of them)
OPERATIONS = [
    ("get", "/api/v1/devices/", types.Device, True),
    ("get", "/api/v1/models/", types.RegisteredModel, True),
    ("post", "/api/v1/models/", types.RegisteredModel, False),
    ("post", "/api/v1/models/{model_id}/versions/", types.ModelVersion, False),
    ("get", "/api/v1/models/{model_id}/versions/{number}/", types.ModelVersion, False),
    ("post", "/api/v1/models/{model_id}/versions/{number}/publish/", types.ModelVersion, False),
    ("post", "/api/v1/rollouts/preview/", types.RolloutPreview, False),
    ("post", "/api/v1/rollouts/", types.RolloutDetail, False),
    ("get", "/api/v1/rollouts/", types.Rollout, True),
    ("get", "/api/v1/rollouts/{id}/", types.RolloutDetail, False),
    *[
        ("post", f"/api/v1/rollouts/{{id}}/{verb}/", types.RolloutDetail, False)
        for verb in ("start", "pause", "resume", "abort", "rollback", "approve")
    ],
    ("get", "/api/v1/audit/", types.AuditEntry, True),
]


@pytest.fixture(scope="module")
def schema(django_db_blocker, tmp_path_factory):
    target = tmp_path_factory.mktemp("schema") / "schema.yml"
    with django_db_blocker.unblock():
        call_command("spectacular", "--file", str(target), stdout=io.StringIO())
    return yaml.safe_load(target.read_text())


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    if "allOf" in node:  # drf-spectacular composes some bodies
        merged: dict = {"properties": {}}
        for part in node["allOf"]:
            merged["properties"].update(resolve(schema, part).get("properties", {}))
        return merged
    return node


def answer(schema: dict, method: str, path: str) -> dict:
    responses = schema["paths"][path][method]["responses"]
    ok = next(code for code in ("200", "201") if code in responses)
    return resolve(schema, responses[ok]["content"]["application/json"]["schema"])


@pytest.mark.parametrize(("method", "path", "shape", "paged"), OPERATIONS, ids=lambda v: str(v))
def test_every_client_operation_and_key_is_in_the_schema(schema, method, path, shape, paged):
    assert path in schema["paths"] and method in schema["paths"][path], f"{method.upper()} {path}"
    body = answer(schema, method, path)
    if paged:
        assert set(typing.get_type_hints(types.Page)) <= set(body["properties"])
        body = resolve(schema, body["properties"]["results"]["items"])
    promised = set(typing.get_type_hints(shape))
    assert promised <= set(body["properties"]), promised - set(body["properties"])


def test_the_upload_takes_the_fields_the_client_sends(schema):
    body = schema["paths"]["/api/v1/models/{model_id}/versions/"]["post"]["requestBody"]["content"]
    fields = set(resolve(schema, body["multipart/form-data"]["schema"])["properties"])
    assert {"artifact", "format", "framework", "requirements", "label"} <= fields


def test_the_client_imports_without_django():
    import subprocess
    import sys

    from tests.processes import ROOT

    code = "import sys, fogdeck_client.cli; assert 'django' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
