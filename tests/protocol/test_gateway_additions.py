"""Protocol additions for the gateway artifact cache: mirrors, transfer source, capabilities, device tokens."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import gateway_tokens, signing
from protocol import messages as m
from tests.protocol.test_messages import EXAMPLES, JOB, JOB_ID, SHA, TS, dumps, reason_of

MIRRORS = [
    {"url": "http://gw.local:8700/v1/artifacts/" + SHA + "?token=t", "source": "gateway"},
    {"url": JOB["artifact_url"], "source": "cloud"},
]


def test_job_with_mirrors_round_trips_and_without_them_has_exactly_the_v1_fields():
    with_mirrors = m.parse_jobs_notify(dumps({"schema_version": 1, "jobs": [JOB | {"mirrors": MIRRORS}]}))
    assert [x.source for x in with_mirrors.jobs[0].mirrors] == ["gateway", "cloud"]
    assert m.parse_jobs_notify(m.encode(with_mirrors)) == with_mirrors
    plain = m.parse_jobs_notify(dumps({"schema_version": 1, "jobs": [JOB]}))
    # what an agent without the `artifact_mirrors` capability receives: nothing it would refuse
    assert set(json.loads(m.encode(plain))["jobs"][0]) == set(JOB)


@pytest.mark.parametrize(
    "mirrors",
    [[], [{"url": "ftp://gw/x", "source": "gateway"}], [{"url": "http://gw/x", "source": "peer"}], MIRRORS * 5],
)
def test_bad_mirrors_are_invalid(mirrors):
    payload = dumps({"schema_version": 1, "jobs": [JOB | {"mirrors": mirrors}]})
    assert reason_of(m.parse_jobs_notify, payload) == "invalid_message"


def update(**changes: object) -> dict[str, object]:
    return {"schema_version": 1, "job_id": JOB_ID, "seq": 9, "status": "SUCCEEDED", "ts": TS} | changes


def test_succeeded_update_carries_source_bytes_and_refusals():
    refused = [{"source": "gateway", "reason": "sha256 mismatch: expected a, got b"}]
    parsed = m.parse_job_update(dumps(update(artifact_source="gateway", artifact_bytes=1234, refused_sources=refused)))
    assert (parsed.artifact_source, parsed.artifact_bytes, parsed.refused_sources[0].source) == (
        "gateway",
        1234,
        "gateway",
    )
    assert "artifact_source" not in json.loads(m.encode(m.parse_job_update(dumps(update()))))


@pytest.mark.parametrize(
    "changes",
    [
        {"artifact_source": "gateway"},  # without its byte count
        {"artifact_bytes": 10},
        {"status": "FAILED", "artifact_source": "cloud", "artifact_bytes": 10},
        {"artifact_source": "disk", "artifact_bytes": 10},
    ],
)
def test_inconsistent_transfer_fields_are_invalid(changes):
    assert reason_of(m.parse_job_update, dumps(update(**changes))) == "invalid_message"


def test_state_advertises_capabilities_and_a_gateway_cache_url_only_when_set():
    state = EXAMPLES[m.StateMessage] | {"capabilities": ["artifact_mirrors"], "cache_url": "http://gw.local:8700"}
    parsed = m.parse_state(dumps(state))
    assert parsed.cache_url == "http://gw.local:8700" and parsed.capabilities == [m.CAPABILITY_ARTIFACT_MIRRORS]
    assert set(json.loads(m.encode(m.parse_state(dumps(EXAMPLES[m.StateMessage]))))) == set(EXAMPLES[m.StateMessage])


# --- device tokens for the gateway -----------------------------------------------------------------------


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def claims_for(key: Ed25519PrivateKey, **changes: object) -> gateway_tokens.GatewayTokenClaims:
    base = {
        "kid": signing.key_id(base64.b64decode(signing.public_key_b64(key))),
        "gw": "gw-1",
        "dev": "edge-1",
        "sha256": SHA,
        "size": 1234,
        "src": "https://cp.example/api/v1/artifacts/abc/",
        "exp": int(time.time()) + 60,
    }
    return gateway_tokens.GatewayTokenClaims(**(base | changes))


def check(token: str, key: Ed25519PrivateKey, **kwargs: object) -> gateway_tokens.GatewayTokenClaims:
    public = signing.public_key_b64(key)
    options = {"gateway_uid": "gw-1", "sha256": SHA} | kwargs
    return gateway_tokens.verify(token, public_key_b64=lambda kid: public, **options)  # type: ignore[arg-type]


def test_token_verifies_for_its_gateway_and_artifact(key):
    claims = claims_for(key)
    assert check(gateway_tokens.mint(key, claims), key) == claims


@pytest.mark.parametrize(
    ("claims", "kwargs", "reason"),
    [
        ({"exp": int(time.time()) - 1}, {}, "expired"),
        ({}, {"gateway_uid": "gw-2"}, "another gateway"),
        ({}, {"sha256": "cd" * 32}, "another artifact"),
        ({"src": "file:///etc/passwd"}, {}, "malformed"),
    ],
)
def test_token_is_refused_when_expired_or_for_something_else(key, claims, kwargs, reason):
    with pytest.raises(gateway_tokens.TokenRefused, match=reason):
        check(gateway_tokens.mint(key, claims_for(key, **claims)), key, **kwargs)


def test_edited_or_foreign_tokens_are_refused(key):
    token = gateway_tokens.mint(key, claims_for(key))
    body, signature = token.split(".")
    edited = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) | {"dev": "edge-2"}
    forged = base64.urlsafe_b64encode(json.dumps(edited).encode()).decode().rstrip("=") + "." + signature
    for bad in (forged, token + "x", "", "a.b.c", "not-a-token"):
        with pytest.raises(gateway_tokens.TokenRefused):
            check(bad, key)
    with pytest.raises(gateway_tokens.TokenRefused, match="bad signature"):
        check(gateway_tokens.mint(Ed25519PrivateKey.generate(), claims_for(key)), key)


def test_a_token_signature_never_verifies_as_a_manifest_signature(key):
    body, signature = gateway_tokens.mint(key, claims_for(key)).split(".")
    text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    assert not signing.verify(signing.public_key_b64(key), text, base64.b64encode(raw).decode())
