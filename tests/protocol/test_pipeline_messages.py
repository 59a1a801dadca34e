"""The additive pipeline fields: a model job's wire form is unchanged, a pipeline job is all stages or nothing."""

from __future__ import annotations

import json

import pytest

from protocol.messages import JobsNotify, ProtocolError, TelemetryMessage, encode, parse_jobs_notify, parse_telemetry
from protocol.pipelines import condition_errors, condition_holds

SHA = "a" * 64
BASE = {
    "job_id": "0b0e9c1a-1111-4222-8333-444455556666", "kind": "install", "model": "m", "model_id": 1,
    "version": 1, "version_id": 1, "manifest": "{}", "signature": "c2ln", "key_id": "0123456789abcdef",
    "timeout_seconds": 60, "created_at": "2025-03-01T12:00:00Z",
}  # fmt: skip
STAGE = {
    "name": "detect", "model": "d", "model_id": 2, "version": 1, "version_id": 3, "format": "onnx",
    "artifact_url": "http://cp/a", "sha256": SHA, "size": 10, "manifest": "{}", "signature": "c2ln",
    "key_id": "0123456789abcdef",
}  # fmt: skip


def notify(job: dict) -> bytes:
    return json.dumps({"schema_version": 1, "jobs": [job]}).encode()


def test_a_model_job_keeps_its_v1_wire_form_without_stages():
    job = {**BASE, "format": "onnx", "artifact_url": "http://cp/a", "sha256": SHA, "size": 10}
    wire = json.loads(encode(parse_jobs_notify(notify(job))))
    assert "stages" not in wire["jobs"][0]
    assert wire["jobs"][0]["sha256"] == SHA


def test_a_pipeline_job_carries_stages_and_no_top_level_artifact():
    job = {**BASE, "format": "pipeline", "stages": [STAGE, {**STAGE, "name": "classify",
           "condition": {"output": "score", "op": ">=", "value": 0.5}}]}  # fmt: skip
    parsed = parse_jobs_notify(notify(job)).jobs[0]
    assert parsed.is_pipeline and parsed.stages[1].condition.op == ">="
    assert json.loads(encode(JobsNotify(schema_version=1, jobs=[parsed])))["jobs"][0]["stages"][0]["name"] == "detect"


@pytest.mark.parametrize(
    "job",
    [
        {**BASE, "format": "pipeline"},  # no stages
        {**BASE, "format": "onnx", "stages": [STAGE]},  # stages on a model job
        {**BASE, "format": "pipeline", "stages": [STAGE], "sha256": SHA},  # both
        {**BASE, "format": "pipeline", "stages": [{**STAGE, "condition": {"output": "s", "op": "~", "value": 1}}]},
    ],
)
def test_mixed_or_malformed_pipeline_jobs_are_invalid(job):
    with pytest.raises(ProtocolError) as refused:
        parse_jobs_notify(notify(job))
    assert refused.value.reason_code == "invalid_message"


def test_telemetry_stages_are_optional_and_left_out_when_absent():
    sample = {"model": "m", "version": 1, "requests": 2, "errors": 0,
              "latency_ms": {"p50": 1, "p95": 2, "p99": 2, "max": 3}}  # fmt: skip
    message = {"schema_version": 1, "ts": "2025-03-01T12:00:00Z", "interval_s": 1.0, "samples": [sample]}
    plain = parse_telemetry(json.dumps(message).encode())
    assert "stages" not in json.loads(encode(plain))["samples"][0]
    staged = {**sample, "stages": [{"name": "detect", "model": "d", "version": 1, "requests": 2, "skipped": 0,
                                    "latency_ms": {"p50": 0.5, "p95": 1, "p99": 1, "max": 1}}]}  # fmt: skip
    parsed = parse_telemetry(json.dumps({**message, "samples": [staged]}).encode())
    assert isinstance(parsed, TelemetryMessage) and parsed.samples[0].stages[0].latency_ms.p95 == 1


def test_conditions_compare_the_largest_element_of_the_named_output():
    import numpy as np

    condition = {"output": "score", "op": ">=", "value": 0.5}
    assert condition_holds(condition, {"score": np.array([[0.2], [0.7]])}) == (True, pytest.approx(0.7))
    assert condition_holds(condition, {"score": np.array([[0.2]])})[0] is False
    assert condition_holds(None, {}) == (True, None)
    assert condition_errors({"output": "", "op": "=>", "value": float("nan"), "x": 1}) == [
        "unknown keys: x",
        "output must be the name of the previous stage's output (1-128 characters)",
        "op must be one of >=, >, <=, <, ==, !=",
        "value must be a finite number",
    ]
