"""The optional `inference_url` of the reported state (additive: absent means what it meant before)."""

from __future__ import annotations

import json

import pytest

from protocol import messages as m

BASE = {
    "schema_version": 1,
    "ts": "2025-03-01T12:00:00Z",
    "agent_version": "0.1.0",
    "hardware": {"arch": "aarch64", "cpu": "Cortex-A72 x4", "memory_mb": 4096, "accelerator": "none"},
    "runtimes": [{"name": "onnxruntime", "version": "1.18"}],
    "slots": {"a": None, "b": None},
    "active": {},
}


def test_a_state_without_the_url_encodes_exactly_as_before():
    state = m.parse_state(json.dumps(BASE).encode())
    assert state.inference_url is None
    assert "inference_url" not in json.loads(m.encode(state))


def test_the_url_round_trips():
    state = m.parse_state(json.dumps(BASE | {"inference_url": "http://10.1.4.7:8600/infer"}).encode())
    assert state.inference_url == "http://10.1.4.7:8600/infer"
    assert m.parse_state(m.encode(state)) == state


@pytest.mark.parametrize("url", ["ftp://x/infer", "10.1.4.7:8600", "http://has space/infer", "", 42])
def test_a_bad_url_is_refused(url):
    with pytest.raises(m.ProtocolError) as caught:
        m.parse_state(json.dumps(BASE | {"inference_url": url}).encode())
    assert caught.value.reason_code == "invalid_message"
