"""`GET /api/v1/` lists every resource with its API URL; the docs pages load with no network."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from drf_spectacular.generators import SchemaGenerator

pytestmark = pytest.mark.django_db
ROOT = "/api/v1/"


def collection_paths() -> set[str]:
    """The schema's top-level GET collections (no path parameter)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {path for path, item in schema["paths"].items() if "get" in item and "{" not in path}


def test_the_root_lists_every_collection_of_the_schema(viewer_client):
    response = viewer_client.get(ROOT)
    assert response.status_code == 200
    listed = {url.removeprefix("http://testserver") for url in response.json().values()}
    assert all(url.startswith(ROOT) for url in listed), listed
    missing = {p for p in collection_paths() if p not in listed and p != ROOT}
    assert not missing, f"add to core/api_root.py RESOURCES: {sorted(missing)}"
    assert response.json()["devices"] == "http://testserver/api/v1/devices/"  # the API's, not the UI page


def test_every_listed_url_answers(admin_client):
    for name, url in admin_client.get(ROOT).json().items():
        status = admin_client.get(url).status_code
        # the resolver needs a location; everything else answers a plain GET
        assert status == (400 if name == "endpoints-resolve" else 200), (name, url, status)


@pytest.mark.parametrize(("role", "status"), [("viewer", 200), ("operator", 200), ("admin", 200), ("anon", 401)])
def test_the_root_needs_a_signed_in_caller(request, role, status):
    assert request.getfixturevalue(f"{role}_client").get(ROOT).status_code == status


@pytest.mark.parametrize("page", ["docs/", "redoc/"])
def test_docs_load_their_scripts_from_our_static_files(admin_client, page):
    html = admin_client.get(ROOT + page).content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
    assert assets, html[:500]
    for asset in assets:
        assert asset.startswith("/static/"), f"{asset} would need the network"
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a static file"
    assert not re.search(r"https?://(?!testserver)", html.split("</head>")[0]), "an external URL in the head"
