from __future__ import annotations

import io

import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_openapi_schema_validates_without_warnings(tmp_path):
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target), stdout=io.StringIO())
    schema = yaml.safe_load(target.read_text())
    paths = set(schema["paths"])
    for expected in (
        "/api/v1/devices/",
        "/api/v1/devices/{id}/credentials/",
        "/api/v1/devices/{id}/revoke/",
        "/api/v1/devices/import/",
        "/api/v1/groups/{id}/members/",
        "/api/v1/sites/",
        "/api/v1/audit/",
    ):
        assert expected in paths, expected
    assert "tokenAuth" in schema["components"]["securitySchemes"]


def test_schema_and_docs_are_served(admin_client):
    assert admin_client.get("/api/v1/schema/").status_code == 200
    assert admin_client.get("/api/v1/docs/").status_code == 200
