"""The pipeline pages: the chain with its conditions and per-stage p95 latency from ingested telemetry."""

from __future__ import annotations

import pytest
from django.utils import timezone

from protocol.messages import TelemetryMessage, parse_telemetry
from telemetry.services import TelemetryEnvelope, telemetry_ingest_batch
from tests.factories import DeviceFactory
from tests.frontend.test_pages import login
from tests.pipeline_helpers import publish_sample_pipeline

pytestmark = pytest.mark.django_db


def _pipeline_telemetry(uid: str, *, detect_p95: float, classify_p95: float) -> TelemetryEnvelope:
    def latency(p95: float) -> dict[str, float]:
        return {"p50": p95 / 2, "p95": p95, "p99": p95 * 1.2, "max": p95 * 1.5}

    message = TelemetryMessage.model_validate(
        {
            "schema_version": 1, "ts": timezone.now().isoformat(), "interval_s": 10.0,
            "samples": [{
                "model": "motion-then-classify", "version": 1, "requests": 10, "errors": 0,
                "latency_ms": latency(detect_p95 + classify_p95),
                "stages": [
                    {"name": "detect", "model": "motion-detector", "version": 1, "requests": 10,
                     "latency_ms": latency(detect_p95)},
                    {"name": "classify", "model": "frame-classifier", "version": 1, "requests": 4, "skipped": 6,
                     "latency_ms": latency(classify_p95)},
                ],
            }],
        },
        strict=False,
    )  # fmt: skip
    return TelemetryEnvelope(uid, parse_telemetry(message.model_dump_json().encode()))


def test_pipeline_page_shows_the_chain_its_condition_and_per_stage_p95(settings, tmp_path):
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    version = publish_sample_pipeline()
    device = DeviceFactory()
    assert telemetry_ingest_batch([_pipeline_telemetry(device.uid, detect_p95=0.25, classify_p95=0.75)]) == 1

    viewer = login("viewer")
    listing = viewer.get("/pipelines/").content.decode()
    assert "motion-then-classify" in listing
    page = viewer.get(f"/pipelines/{version.pipeline_id}/").content.decode()
    assert page.index("1. detect") < page.index("when score &gt;= 0.5") < page.index("2. classify")
    assert "0.25 ms" in page and "0.75 ms" in page
    assert "4 runs, 6 skipped" in page
    assert 'data-testid="pipeline-p95">1.00 ms' in page


def test_pipeline_pages_need_a_role(client):
    assert client.get("/pipelines/").status_code == 302
    assert login(None).get("/pipelines/").status_code == 403
