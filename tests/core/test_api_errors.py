"""The API's error contract outside the views: unmatched URLs, documented error responses, JSON only."""

from __future__ import annotations

import pytest
from drf_spectacular.generators import SchemaGenerator

pytestmark = pytest.mark.django_db


def test_an_unmatched_api_url_answers_with_the_json_error_body(operator_client):
    response = operator_client.get("/api/v1/devices/0.5/cancel/")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found" and response.json()["errors"] == []


def test_an_unmatched_page_url_keeps_the_html_page(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


def test_every_operation_documents_the_shared_errors_with_the_error_body():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"status", "code", "detail", "errors"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            writes = ["409"] if method in {"post", "put", "patch", "delete"} else []
            for status in ("400", "401", "403", "404", *writes):
                content = operation["responses"][status]["content"]
                assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (path, method)


def test_form_encoded_bodies_are_refused_where_json_is_expected(operator_client, published_version):
    response = operator_client.post("/api/v1/rollouts/preview/", {"version": published_version.pk}, format="multipart")
    assert response.status_code == 415
