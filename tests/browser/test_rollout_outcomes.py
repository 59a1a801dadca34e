"""A rolled-back rollout's failed devices in a real browser: the rollout page's table lists each failed,
timed-out and rejected device with its reason and last step and links to the device; its CSV downloads."""

from __future__ import annotations

import csv
import io

import pytest

from tests.deployments.rollout_helpers import rolled_back_rollout
from tests.factories import DeviceFactory, SiteFactory, make_user

from .conftest import screenshot, sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(180)]


def test_failed_devices_of_a_rolled_back_rollout_are_listed_and_downloaded(
    asgi_server, new_page, published_version, tmp_path
):
    site = SiteFactory(name="Lyon")
    devices = [DeviceFactory(site=site, uid=f"edge-lyon-{i:02d}") for i in range(6)]
    rollout, expected = rolled_back_rollout(published_version, devices)
    make_user("vera", "viewer")

    page = new_page()
    sign_in(page, asgi_server, "vera")
    page.goto(f"{asgi_server.url}/rollouts/{rollout.pk}/")
    assert "rolled_back" in page.inner_text("body").lower().replace(" ", "_")
    table = page.get_by_test_id("failed-devices")
    rows = table.locator("tbody tr")
    assert rows.count() == len(expected)
    seen = {}
    for index in range(rows.count()):
        cells = rows.nth(index).locator("td")
        link = cells.nth(0).locator("a")
        uid = link.inner_text()
        assert link.get_attribute("href") == f"/devices/{next(d.pk for d in devices if d.uid == uid)}/"
        seen[uid] = (cells.nth(4).inner_text(), cells.nth(5).inner_text().replace("—", ""), cells.nth(6).inner_text())
    assert seen == expected
    screenshot(page, "rollout-failed-devices")

    with page.expect_download() as download_info:
        page.get_by_test_id("failed-devices-csv").click()
    path = tmp_path / "failed.csv"
    download_info.value.save_as(path)
    rows_csv = list(csv.DictReader(io.StringIO(path.read_text())))
    assert {r["device_uid"]: (r["status"], r["last_step"], r["reason"]) for r in rows_csv} == expected

    # the link leads to the device's page
    table.locator("a", has_text=devices[0].uid).click()
    page.wait_for_url(f"{asgi_server.url}/devices/{devices[0].pk}/")
