"""Protocol v1 messages: round trips, rejections by reason code, and fuzzing that only ProtocolError escapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages as m

TS = "2025-03-01T12:00:00Z"
JOB_ID = "0b0e9c1a-1111-4222-8333-444455556666"
SHA = "ab" * 32

JOB = {
    "job_id": JOB_ID,
    "kind": "install",
    "model": "shelf-detector",
    "model_id": 3,
    "version": 4,
    "version_id": 17,
    "format": "onnx",
    "artifact_url": "https://cp.example/artifacts/17?sig=abc",
    "sha256": SHA,
    "size": 1234,
    "manifest": '{"model":"shelf-detector"}',
    "signature": "c2lnbmF0dXJl",
    "key_id": "0123456789abcdef",
    "timeout_seconds": 600,
    "created_at": TS,
}

EXAMPLES: dict[type[m._Message], dict[str, object]] = {
    m.StatusMessage: {"schema_version": 1, "state": "online", "agent_version": "0.1.0", "ts": TS},
    m.StateMessage: {
        "schema_version": 1,
        "ts": TS,
        "agent_version": "0.1.0",
        "hardware": {"arch": "aarch64", "cpu": "Cortex-A72 x4", "memory_mb": 4096, "accelerator": "none"},
        "runtimes": [{"name": "onnxruntime", "version": "1.18"}],
        "slots": {"a": {"model": "shelf-detector", "version": 3, "sha256": SHA}, "b": None},
        "active": {"shelf-detector": {"version": 3, "slot": "a"}},
    },
    m.JobsNotify: {"schema_version": 1, "jobs": [JOB], "cancel": [JOB_ID]},
    m.JobsGet: {"schema_version": 1, "request_id": "r-1"},
    m.JobsGetAccepted: {"schema_version": 1, "request_id": "r-1", "jobs": [JOB]},
    m.JobUpdate: {
        "schema_version": 1,
        "job_id": JOB_ID,
        "seq": 2,
        "status": "IN_PROGRESS",
        "step": "downloading",
        "progress": 0.5,
        "reason": None,
        "ts": TS,
    },
    m.TelemetryMessage: {
        "schema_version": 1,
        "ts": TS,
        "interval_s": 10.0,
        "samples": [
            {
                "model": "shelf-detector",
                "version": 3,
                "requests": 120,
                "errors": 1,
                "latency_ms": {"p50": 4.1, "p95": 9.0, "p99": 12.5, "max": 20.0},
                "inputs": {
                    "x[0]": {
                        "count": 120,
                        "mean": 0.1,
                        "var": 0.02,
                        "min": -1.0,
                        "max": 1.0,
                        "hist": {"edges": [-0.5, 0.0, 0.5], "counts": [10, 50, 50, 10]},
                    }
                },
            }
        ],
    },
}

PARSERS = {
    m.StatusMessage: m.parse_status,
    m.StateMessage: m.parse_state,
    m.JobsNotify: m.parse_jobs_notify,
    m.JobsGet: m.parse_jobs_get,
    m.JobsGetAccepted: m.parse_jobs_get_accepted,
    m.JobUpdate: m.parse_job_update,
    m.TelemetryMessage: m.parse_telemetry,
}
ALL = list(EXAMPLES)


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def reason_of(parser, payload: bytes) -> str:
    with pytest.raises(m.ProtocolError) as caught:
        parser(payload)
    return caught.value.reason_code


@pytest.mark.parametrize("model", ALL, ids=lambda c: c.__name__)
def test_example_round_trips_through_encode(model):
    parsed = PARSERS[model](dumps(EXAMPLES[model]))

    assert isinstance(parsed, model)
    assert PARSERS[model](m.encode(parsed)) == parsed
    assert json.loads(m.encode(parsed)) == json.loads(dumps(EXAMPLES[model])) | (
        {"ts": "2025-03-01T12:00:00Z"} if "ts" in EXAMPLES[model] else {}
    )


def test_encoded_timestamps_are_aware_iso8601():
    status = m.StatusMessage(
        schema_version=1, state="offline", agent_version="x", ts=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    assert json.loads(m.encode(status))["ts"] == "2025-01-02T03:04:05Z"


@pytest.mark.parametrize("model", ALL, ids=lambda c: c.__name__)
def test_other_schema_version_is_unsupported(model):
    assert reason_of(PARSERS[model], dumps(EXAMPLES[model] | {"schema_version": 2})) == "unsupported_version"


@pytest.mark.parametrize("version", [True, "1", 1.0, None])
def test_schema_version_must_be_the_integer_one(version):
    payload = dumps(EXAMPLES[m.JobsGet] | {"schema_version": version})
    assert reason_of(m.parse_jobs_get, payload) == "invalid_message"


def test_missing_schema_version_is_invalid():
    body = dict(EXAMPLES[m.JobsGet])
    del body["schema_version"]
    assert reason_of(m.parse_jobs_get, dumps(body)) == "invalid_message"


@pytest.mark.parametrize("model", ALL, ids=lambda c: c.__name__)
def test_unknown_field_is_invalid(model):
    assert reason_of(PARSERS[model], dumps(EXAMPLES[model] | {"surprise": 1})) == "invalid_message"


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"\xff\xfe{}", b"not json", b"[" * 100_000 + b"]" * 100_000],
    ids=["empty", "truncated", "not-utf8", "text", "deeply-nested"],
)
def test_unparseable_payload_is_bad_json(payload):
    assert reason_of(m.parse_status, payload) == "bad_json"


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"online"', b"null"])
def test_json_that_is_not_an_object_is_invalid(payload):
    assert reason_of(m.parse_status, payload) == "invalid_message"


def test_payload_over_256_kib_is_oversize_before_parsing():
    payload = b" " * (m.MAX_PAYLOAD_BYTES + 1)
    assert reason_of(m.parse_telemetry, payload) == "oversize"


def test_payload_of_exactly_256_kib_is_parsed():
    body = dumps(EXAMPLES[m.JobsGet])
    padded = body + b" " * (m.MAX_PAYLOAD_BYTES - len(body))
    assert m.parse_jobs_get(padded).request_id == "r-1"


@pytest.mark.parametrize(
    ("model", "change"),
    [
        (m.StatusMessage, {"state": "sleeping"}),
        (m.StatusMessage, {"ts": "2025-03-01T12:00:00"}),  # naive timestamps are ambiguous
        (m.StatusMessage, {"agent_version": ""}),
        (m.StatusMessage, {"agent_version": "x" * 65}),
        (m.JobUpdate, {"seq": -1}),
        (m.JobUpdate, {"seq": "2"}),  # strict: no strings for ints
        (m.JobUpdate, {"seq": 2.0}),
        (m.JobUpdate, {"progress": 1.5}),
        (m.JobUpdate, {"status": "DONE"}),
        (m.JobUpdate, {"status": "SUCCEEDED"}),  # step is only valid while IN_PROGRESS
        (m.JobUpdate, {"job_id": "not-a-uuid"}),
        (m.JobUpdate, {"reason": "x" * 1025}),
        (m.JobsGet, {"request_id": "a/b"}),  # request ids are never topic-like
        (m.JobsNotify, {"cancel": [JOB_ID] * 1025}),
        (m.JobsNotify, {"jobs": [JOB | {"sha256": "AB" * 32}]}),
        (m.JobsNotify, {"jobs": [JOB | {"sha256": "ab" * 31}]}),
        (m.JobsNotify, {"jobs": [JOB | {"kind": "upgrade"}]}),
        (m.JobsNotify, {"jobs": [JOB | {"artifact_url": "file:///etc/passwd"}]}),
        (m.JobsNotify, {"jobs": [JOB | {"version": 0}]}),
        (m.JobsNotify, {"jobs": [JOB | {"size": 0}]}),
        (m.JobsNotify, {"jobs": [JOB | {"key_id": "0123"}]}),
        (m.JobsNotify, {"jobs": [{k: v for k, v in JOB.items() if k != "manifest"}]}),
        (m.StateMessage, {"slots": {"a": None}}),
        (m.StateMessage, {"active": {"shelf-detector": {"version": 3, "slot": "b"}}}),  # slot b is empty
        (m.StateMessage, {"active": {"other": {"version": 3, "slot": "a"}}}),  # slot a holds another model
        (m.StateMessage, {"runtimes": [{"name": "ort", "version": "1"}] * 33}),
        (m.TelemetryMessage, {"interval_s": 0}),
    ],
)
def test_out_of_bounds_field_is_invalid(model, change):
    assert reason_of(PARSERS[model], dumps(EXAMPLES[model] | change)) == "invalid_message"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_invalid(literal):
    sample = json.dumps(EXAMPLES[m.TelemetryMessage]).encode()
    payload = sample.replace(b'"mean": 0.1', b'"mean": ' + literal)
    assert payload != sample
    assert reason_of(m.parse_telemetry, payload) == "invalid_message"


def test_telemetry_errors_cannot_exceed_requests():
    body = json.loads(dumps(EXAMPLES[m.TelemetryMessage]))
    body["samples"][0]["errors"] = 121
    assert reason_of(m.parse_telemetry, dumps(body)) == "invalid_message"


def test_detail_does_not_echo_the_offending_input():
    secret_looking = "x" * 5000
    with pytest.raises(m.ProtocolError) as caught:
        m.parse_status(dumps(EXAMPLES[m.StatusMessage] | {"state": secret_looking}))
    assert secret_looking[:100] not in caught.value.detail
    assert "state" in caught.value.detail


def test_non_bytes_payload_is_refused_as_protocol_error():
    with pytest.raises(m.ProtocolError):
        m.parse_status("{}")  # type: ignore[arg-type]


# --- fuzzing: whatever arrives on the wire, only ProtocolError comes out -----------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def _mutations(model: type[m._Message]) -> st.SearchStrategy[bytes]:
    """Valid examples with one top-level field replaced, dropped or added: close to the real thing."""
    base = EXAMPLES[model]
    keys = st.sampled_from([*base, "extra"])
    replaced = st.builds(lambda k, v: {**base, k: v}, keys, json_values)
    dropped = keys.map(lambda k: {x: y for x, y in base.items() if x != k})
    return st.one_of(replaced, dropped).map(lambda d: json.dumps(d, allow_nan=True).encode())


@pytest.mark.parametrize("model", ALL, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_parsers_raise_only_protocol_error(model, data):
    payload = data.draw(
        st.one_of(
            st.binary(max_size=300),
            json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
            _mutations(model),
        )
    )
    try:
        parsed = PARSERS[model](payload)
    except m.ProtocolError as exc:
        assert exc.reason_code in {"oversize", "bad_json", "unsupported_version", "invalid_message"}
    else:
        assert isinstance(parsed, model)
        assert PARSERS[model](m.encode(parsed)) == parsed


# --- input histograms (drift detection): optional, additive -----------------------------------------


def _telemetry_with_inputs(stats: dict[str, object]) -> bytes:
    message = json.loads(dumps(EXAMPLES[m.TelemetryMessage]))
    message["samples"][0]["inputs"] = {"x[0]": stats}
    return dumps(message)


def test_telemetry_without_a_histogram_still_parses():
    stats = {"count": 3, "mean": 0.1, "var": 0.02, "min": -1.0, "max": 1.0}
    parsed = m.parse_telemetry(_telemetry_with_inputs(stats))
    assert parsed.samples[0].inputs["x[0]"].hist is None


@pytest.mark.parametrize(
    "hist",
    [
        {"edges": [0.0, 1.0], "counts": [1, 2]},  # one count short of len(edges) + 1
        {"edges": [1.0, 0.0], "counts": [1, 1, 1]},  # edges not increasing
        {"edges": [0.0, 0.0], "counts": [1, 1, 1]},  # repeated edge
        {"edges": [0.0, 1.0], "counts": [1, 1, 2]},  # counts add up to 4, not count (3)
        {"edges": [], "counts": [3]},
        {"edges": [0.0], "counts": [1, -1, 3]},
        {"edges": [0.0, 1.0], "counts": [1, 1, 1], "extra": 1},
    ],
)
def test_a_malformed_histogram_is_an_invalid_message(hist):
    stats = {"count": 3, "mean": 0.1, "var": 0.02, "min": -1.0, "max": 1.0, "hist": hist}
    assert reason_of(m.parse_telemetry, _telemetry_with_inputs(stats)) == "invalid_message"


def test_default_edges_are_increasing_and_within_the_protocol_bound():
    edges = m.DEFAULT_HIST_EDGES
    assert all(b > a for a, b in pairwise(edges))
    assert 1 <= len(edges) <= m.MAX_HIST_EDGES
