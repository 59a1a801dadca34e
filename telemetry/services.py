"""Telemetry ingest: device metrics written in batches, never one insert per message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleet.models import Device
from protocol.messages import TelemetryMessage

from .models import TelemetrySample


@dataclass(frozen=True)
class TelemetryEnvelope:
    uid: str
    message: TelemetryMessage


def telemetry_ingest_batch(envelopes: Sequence[TelemetryEnvelope]) -> int:
    """Store the samples of many telemetry messages in one multi-row insert; unknown devices are skipped.

    Telemetry is measurement, not an action, so it is not audited.
    """
    if not envelopes:
        return 0
    ids = dict(
        Device.objects.filter(uid__in={e.uid for e in envelopes}, revoked_at__isnull=True).values_list("uid", "pk")
    )
    rows = [
        TelemetrySample(
            device_id=ids[e.uid],
            model_name=sample.model,
            version_number=sample.version,
            ts=e.message.ts,
            interval_s=e.message.interval_s,
            requests=sample.requests,
            errors=sample.errors,
            p50_ms=sample.latency_ms.p50,
            p95_ms=sample.latency_ms.p95,
            p99_ms=sample.latency_ms.p99,
            max_ms=sample.latency_ms.max,
            inputs={name: stats.model_dump() for name, stats in sample.inputs.items()},
        )
        for e in envelopes
        if e.uid in ids
        for sample in e.message.samples
    ]
    TelemetrySample.objects.bulk_create(rows, batch_size=1000)
    return len(rows)
