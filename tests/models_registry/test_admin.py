from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from models_registry.models import ModelVersion

from .conftest import make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_browser(client):
    client.force_login(get_user_model().objects.create_superuser("root-admin", password="x-not-used-1!"))
    return client


def test_model_metadata_edit_in_the_admin_is_audited(admin_browser, registered_model, assert_audited):
    response = admin_browser.post(
        f"/admin/models_registry/registeredmodel/{registered_model.pk}/change/",
        {"name": registered_model.name, "task": "detection", "description": "", "owner": ""},
    )
    assert response.status_code == 302
    entry = assert_audited("model", registered_model.pk, "model.update", actor="user:root-admin")
    assert entry.changes["task"] == {"before": "classification", "after": "detection"}


def test_versions_are_read_only_in_the_admin(admin_browser, registered_model):
    version = make_version(registered_model, publish=True)
    assert admin_browser.get("/admin/models_registry/modelversion/").status_code == 200
    page = admin_browser.get(f"/admin/models_registry/modelversion/{version.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    response = admin_browser.post(f"/admin/models_registry/modelversion/{version.pk}/change/", {"label": "x"})
    assert response.status_code == 403
    assert ModelVersion.objects.get(pk=version.pk).label == ""
