from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from fleet.models import Site
from tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_browser(client):
    user = get_user_model().objects.create_superuser("root-admin", password="x-not-used-1!")
    client.force_login(user)
    return client


def test_admin_edit_is_audited_with_before_and_after(admin_browser, assert_audited):
    site = SiteFactory(name="Old name", latitude=10, longitude=10)
    response = admin_browser.post(
        f"/admin/fleet/site/{site.pk}/change/",
        {"name": "New name", "region": "eu", "latitude": "10", "longitude": "10"},
    )
    assert response.status_code == 302
    assert Site.objects.get(pk=site.pk).name == "New name"
    entry = assert_audited("site", site.pk, "site.update", actor="user:root-admin")
    assert entry.changes["name"] == {"before": "Old name", "after": "New name"}
    assert entry.changes["via"] == "admin"


def test_admin_delete_is_audited(admin_browser, assert_audited):
    site = SiteFactory()
    response = admin_browser.post(f"/admin/fleet/site/{site.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Site.objects.filter(pk=site.pk).exists()
    assert_audited("site", site.pk, "site.delete", actor="user:root-admin")


def test_audit_entries_cannot_be_changed_in_the_admin(admin_browser):
    SiteFactory()
    from audit.models import AuditEntry

    entry = AuditEntry.objects.first()
    assert admin_browser.get(f"/admin/audit/auditentry/{entry.pk}/delete/").status_code == 403
    assert admin_browser.get("/admin/audit/auditentry/add/").status_code == 403
