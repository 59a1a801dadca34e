"""`/metrics`: who may read it, and what a scrape shows (the web app's requests and the fleet's state)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from audit.actors import Actor
from deployments.services.jobs import deployment_create
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def samples(response) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = b"".join(response.streaming_content if response.streaming else [response.content]).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    ("client_name", "status"),
    [("anon_client", 401), ("viewer_client", 403), ("operator_client", 403), ("admin_client", 200)],
)
def test_only_admins_read_metrics_by_default(request, client_name, status):
    response = request.getfixturevalue(client_name).get("/metrics")
    assert response.status_code == status
    if status == 200:
        assert response["Content-Type"].startswith("text/plain; version=")


def test_a_scraper_holding_the_metrics_token_reads_them_and_a_wrong_one_does_not(anon_client, settings):
    settings.METRICS_TOKEN = "scrape-token-0123456789abcdef"
    assert anon_client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789abcdef").status_code == 200
    assert anon_client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-wrong").status_code == 401
    settings.METRICS_TOKEN = ""  # no token configured: a Bearer header with an empty value opens nothing
    assert anon_client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_an_allowed_network_reads_metrics_without_credentials(anon_client, settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.1.0.0/16"]
    assert anon_client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert anon_client.get("/metrics", REMOTE_ADDR="10.2.0.1").status_code == 401
    # a client-set X-Forwarded-For is not its address
    assert anon_client.get("/metrics", REMOTE_ADDR="10.2.0.1", HTTP_X_FORWARDED_FOR="10.1.2.3").status_code == 401


def test_a_scrape_counts_requests_by_route_and_reads_jobs_by_state(admin_client, published_version):
    device = DeviceFactory()
    deployment_create(actor=Actor.system("tests"), device=device, version=published_version)
    before = samples(admin_client.get("/metrics"))
    key = ("fogdeck_http_requests_total", (("method", "GET"), ("status", "200"), ("view", "device-list")))
    admin_client.get("/api/v1/devices/")
    admin_client.get("/api/v1/devices/")
    after = samples(admin_client.get("/metrics"))
    assert after[key] == before.get(key, 0) + 2
    latency = ("fogdeck_http_request_duration_seconds_count", (("method", "GET"), ("view", "device-list")))
    assert after[latency] >= 2
    assert after[("fogdeck_jobs", (("kind", "install"), ("status", "QUEUED")))] == 1
    assert after[("fogdeck_outbox_pending", ())] >= 1  # the job's notification waits for the bridge
    assert after[("fogdeck_outbox_oldest_pending_age_seconds", ())] >= 0
