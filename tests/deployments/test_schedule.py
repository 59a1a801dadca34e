"""A rollout's schedule: nothing is sent before `start_at`, nor to a site outside its maintenance window."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from deployments.models import Job, JobKind, RolloutStatus
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_start
from deployments.services.tick import rollout_advance
from tests.deployments.test_rollouts import OPERATOR, fleet, plan

pytestmark = pytest.mark.django_db


def sent_to_sites(rollout) -> dict[int, int]:
    jobs = Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL).values_list("device__site_id", flat=True)
    counts: dict[int, int] = {}
    for site in jobs:
        counts[site] = counts.get(site, 0) + 1
    return counts


def test_nothing_is_dispatched_before_start_at(published_version):
    fleet(5)
    now = timezone.now()
    start_at = now + dt.timedelta(hours=2)
    rollout = rollout_create(
        actor=OPERATOR, version=published_version, plan=plan(waves=[{"percent": 100}], start_at=start_at.isoformat())
    )
    rollout_start(actor=OPERATOR, rollout=rollout)
    assert rollout_advance(rollout_id=rollout.pk, now=now + dt.timedelta(minutes=5)) == RolloutStatus.RUNNING
    assert not Job.objects.filter(rollout=rollout).exists()
    rollout_advance(rollout_id=rollout.pk, now=start_at + dt.timedelta(seconds=30))
    assert Job.objects.filter(rollout=rollout, kind=JobKind.INSTALL).count() == 10


def test_a_site_outside_its_maintenance_window_waits_until_the_window_opens(published_version):
    devices = fleet(5)  # two sites
    closed_site, open_site = devices[0].site_id, devices[1].site_id
    per_site = {site: sum(d.site_id == site for d in devices) for site in (closed_site, open_site)}
    windows = [{"site": closed_site, "start": "02:00", "end": "04:00"}]
    rollout = rollout_create(
        actor=OPERATOR, version=published_version, plan=plan(waves=[{"percent": 100}], maintenance_windows=windows)
    )
    rollout_start(actor=OPERATOR, rollout=rollout)
    noon = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    rollout_advance(rollout_id=rollout.pk, now=noon)
    # the site without a window is not held back
    assert sent_to_sites(rollout) == {open_site: per_site[open_site]}
    rollout_advance(rollout_id=rollout.pk, now=noon + dt.timedelta(hours=15))  # 03:00 the next day
    assert sent_to_sites(rollout) == per_site


def test_a_window_that_wraps_midnight_is_open_on_both_sides_of_it(published_version):
    devices = fleet(5)
    site = devices[0].site_id
    windows = [{"site": site, "start": "23:00", "end": "01:00"}]
    rollout = rollout_create(
        actor=OPERATOR, version=published_version, plan=plan(waves=[{"percent": 100}], maintenance_windows=windows)
    )
    rollout_start(actor=OPERATOR, rollout=rollout)
    midday = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    rollout_advance(rollout_id=rollout.pk, now=midday)
    assert site not in sent_to_sites(rollout)
    rollout_advance(rollout_id=rollout.pk, now=midday.replace(hour=0, minute=30) + dt.timedelta(days=1))
    assert sent_to_sites(rollout)[site] == sum(d.site_id == site for d in devices)


@pytest.mark.parametrize(
    ("window", "field"),
    [
        ({"start": "25:00", "end": "01:00"}, "maintenance_windows.0.start"),
        ({"start": "02:00", "end": "2am"}, "maintenance_windows.0.end"),
        ({"site": 999_999, "start": "02:00", "end": "04:00"}, "maintenance_windows.0.site"),
    ],
)
def test_a_malformed_maintenance_window_is_refused_with_the_field(operator_client, published_version, window, field):
    devices = fleet(2)
    window = {"site": devices[0].site_id, **window}
    body = plan(version=published_version.pk, maintenance_windows=[window])
    response = operator_client.post("/api/v1/rollouts/", body, format="json")
    assert response.status_code == 400, response.json()
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
