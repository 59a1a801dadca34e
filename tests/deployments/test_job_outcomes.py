"""Per-device outcomes of a rollout: the jobs API's filters, and the rollout page's failed-devices table and CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.utils import timezone

from deployments.models import Job, JobKind
from tests.deployments.rollout_helpers import rolled_back_rollout
from tests.factories import DeviceFactory, SiteFactory, make_user

pytestmark = pytest.mark.django_db
URL = "/api/v1/deployments/"


@pytest.fixture
def outcome(published_version):
    sites = [SiteFactory(), SiteFactory()]
    devices = [DeviceFactory(site=sites[i % 2]) for i in range(8)]
    rollout, expected = rolled_back_rollout(published_version, devices)
    return rollout, expected, devices, sites


def signed_in(role: str | None):
    from django.test import Client

    client = Client()
    client.force_login(make_user(f"ui-{role}", role))
    return client


def ids(response) -> set[str]:
    assert response.status_code == 200, response.json()
    return {job["id"] for job in response.json()["results"]}


def test_jobs_name_their_rollout_and_wave(viewer_client, outcome):
    rollout, _, _, _ = outcome
    body = viewer_client.get(f"{URL}?rollout={rollout.pk}&kind=install&page_size=100").json()
    assert body["count"] == 8
    assert {(j["rollout"], j["rollout_name"], j["wave"], j["attempt"]) for j in body["results"]} == {
        (rollout.pk, "outcomes", 0, 1)
    }


def test_failed_jobs_of_a_rollout_by_status_wave_device_and_site(viewer_client, outcome):
    rollout, expected, devices, sites = outcome
    failing = f"{URL}?rollout={rollout.pk}&status=FAILED&status=TIMED_OUT&status=REJECTED"
    jobs = Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL)
    by_uid = {j.device.uid: j for j in jobs.select_related("device")}
    assert ids(viewer_client.get(failing)) == {str(by_uid[uid].pk) for uid in expected}
    assert ids(viewer_client.get(f"{failing}&wave=0")) == {str(by_uid[uid].pk) for uid in expected}
    assert ids(viewer_client.get(f"{failing}&wave=1")) == set()
    assert ids(viewer_client.get(f"{URL}?rollout={rollout.pk}&status=TIMED_OUT")) == {str(by_uid[devices[3].uid].pk)}
    on_site = {str(by_uid[d.uid].pk) for d in devices if d.uid in expected and d.site_id == sites[0].pk}
    assert ids(viewer_client.get(f"{failing}&site={sites[0].pk}")) == on_site
    assert ids(viewer_client.get(f"{failing}&device={devices[0].pk}")) == {str(by_uid[devices[0].uid].pk)}
    assert ids(viewer_client.get(f"{failing}&device_uid={devices[1].uid}")) == {str(by_uid[devices[1].uid].pk)}
    rollbacks = ids(viewer_client.get(f"{URL}?rollout={rollout.pk}&kind=rollback"))
    assert rollbacks and rollbacks.isdisjoint(ids(viewer_client.get(f"{URL}?rollout={rollout.pk}&kind=install")))


def test_jobs_by_time(viewer_client, outcome):
    rollout, _, _, _ = outcome
    total = Job.objects.filter(rollout=rollout).count()
    later = (timezone.now() + dt.timedelta(hours=1)).isoformat()
    earlier = (timezone.now() - dt.timedelta(hours=1)).isoformat()
    params = {"rollout": rollout.pk, "page_size": 100}
    assert len(ids(viewer_client.get(URL, {**params, "created_after": earlier}))) == total
    assert ids(viewer_client.get(URL, {**params, "created_after": later})) == set()
    assert len(ids(viewer_client.get(URL, {**params, "created_before": later}))) == total
    finished = Job.objects.filter(rollout=rollout, finished_at__isnull=False).count()
    assert len(ids(viewer_client.get(URL, {**params, "finished_after": earlier}))) == finished


@pytest.mark.parametrize(
    ("query", "field"),
    [("rollout=abc", "rollout"), ("wave=x", "wave"), ("created_after=yesterday", "created_after"),
     ("status=BROKEN", "status"), ("site=99999999999999999999", "site")],
)  # fmt: skip
def test_bad_filters_are_a_400_naming_the_field(viewer_client, query, field):
    response = viewer_client.get(f"{URL}?{query}")
    assert response.status_code == 400
    assert field in {e["field"] for e in response.json()["errors"]}


def test_rollout_page_lists_failed_devices_with_reason_last_step_and_link(outcome):
    rollout, expected, devices, _ = outcome
    html = signed_in("viewer").get(f"/rollouts/{rollout.pk}/").content.decode()
    assert f"Failed, timed-out and rejected devices: {len(expected)}" in html
    for device in devices:
        link = f'<a href="/devices/{device.pk}/">{device.uid}</a>'
        assert (link in html) == (device.uid in expected), device.uid
    assert "checksum mismatch" in html and "verifying" in html and "activating" in html
    assert f'href="/rollouts/{rollout.pk}/failed-devices.csv"' in html


def test_failed_devices_csv_has_every_failed_device(outcome):
    rollout, expected, _, _ = outcome
    response = signed_in("viewer").get(f"/rollouts/{rollout.pk}/failed-devices.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    got = {r["device_uid"]: (r["status"], r["last_step"], r["reason"]) for r in rows}
    assert got == expected
    assert {r["wave"] for r in rows} == {"0"} and {r["kind"] for r in rows} == {"install"}


def test_a_device_that_succeeded_on_retry_is_not_listed(viewer_client, published_version):
    from deployments.selectors import rollout_failed_jobs

    sites = [SiteFactory()]
    devices = [DeviceFactory(site=sites[0]) for _ in range(5)]
    rollout, expected = rolled_back_rollout(published_version, devices)
    listed = {j.device.uid for j in rollout_failed_jobs(rollout)}
    assert listed == set(expected)
    # a second attempt that succeeded hides the first failure
    first = Job.objects.get(rollout=rollout, device=devices[0], kind=JobKind.INSTALL)
    Job.objects.create(
        device=devices[0], model=first.model, version=first.version, kind=JobKind.INSTALL, status="SUCCEEDED",
        timeout_seconds=60, rollout=rollout, wave=first.wave, attempt=2, deadline_at=timezone.now(),
        created_by="tests",
    )  # fmt: skip
    assert {j.device.uid for j in rollout_failed_jobs(rollout)} == set(expected) - {devices[0].uid}


@pytest.mark.parametrize("role", ["viewer", "operator", "admin", None, "anonymous"])
def test_failed_devices_table_and_csv_by_role(outcome, role):
    """Every role reads them; a user without a role is refused; anonymous goes to the login page."""
    from django.test import Client

    rollout, _, _, _ = outcome
    client = Client() if role == "anonymous" else signed_in(role)
    for url in (f"/rollouts/{rollout.pk}/failed-devices.csv", f"/rollouts/{rollout.pk}/"):
        response = client.get(url)
        if role == "anonymous":
            assert response.status_code == 302 and "/login/" in response["Location"]
        else:
            assert response.status_code == (403 if role is None else 200), (role, url)
