"""Telemetry messages as devices send them (validated through the protocol models)."""

from __future__ import annotations

import datetime as dt

from protocol.messages import TelemetryMessage, parse_telemetry
from telemetry.services import TelemetryEnvelope


def telemetry_message(
    *,
    ts: dt.datetime,
    model: str = "demo-classifier",
    version: int = 1,
    requests: int = 100,
    errors: int = 0,
    p50: float = 10.0,
    p95: float = 20.0,
    p99: float = 30.0,
    max_ms: float = 40.0,
    interval_s: float = 10.0,
) -> TelemetryMessage:
    payload = TelemetryMessage.model_validate(
        {
            "schema_version": 1,
            "ts": ts.isoformat(),
            "interval_s": interval_s,
            "samples": [
                {
                    "model": model,
                    "version": version,
                    "requests": requests,
                    "errors": errors,
                    "latency_ms": {"p50": p50, "p95": p95, "p99": p99, "max": max_ms},
                    "inputs": {"x0": {"count": requests, "mean": 0.5, "var": 0.1, "min": 0.0, "max": 1.0}},
                }
            ],
        },
        strict=False,
    )
    return parse_telemetry(payload.model_dump_json().encode())


def envelope(uid: str, **kwargs: object) -> TelemetryEnvelope:
    return TelemetryEnvelope(uid, telemetry_message(**kwargs))  # type: ignore[arg-type]
