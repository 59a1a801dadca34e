"""The rollout page's "artifact downloads" partial (included by the rollout page's template)."""

from __future__ import annotations

from django.template.loader import render_to_string

SUMMARY = {
    "cloud_bytes": 3 * 1024 * 1024,
    "gateway_bytes": 6 * 1024 * 1024,
    "cloud_downloads": 1,
    "gateway_downloads": 2,
    "refused_gateway_copies": 1,
    "gateway_fill_bytes_max": 3 * 1024 * 1024,
    "gateways": [{"uid": "fog-gw-01", "bytes": 6 * 1024 * 1024, "downloads": 2}],
}


def test_partial_shows_cloud_and_gateway_bytes_per_gateway_and_refusals():
    html = render_to_string("frontend/_artifact_transfer.html", {"artifact_transfer": SUMMARY})
    assert 'data-testid="transfer-cloud"' in html and "3.0\xa0MB" in html and "6.0\xa0MB" in html
    assert "fog-gw-01" in html
    assert "1 device refused a gateway copy" in html


def test_partial_says_when_nothing_was_downloaded_yet():
    empty = SUMMARY | {"cloud_downloads": 0, "gateway_downloads": 0, "gateways": []}
    html = render_to_string("frontend/_artifact_transfer.html", {"artifact_transfer": empty})
    assert "No device has reported a download" in html and "transfer-cloud" not in html
