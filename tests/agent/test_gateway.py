"""The fog gateway's artifact cache: real `python -m agent --gateway` and edge agents as processes, plus the
cache and its HTTP side in process, against the stand-in control plane (tests/agent/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.gateway import ArtifactCache, CacheError, GatewayServer
from agent.policy import SigningKeys
from broker.passwords import hash_secret
from protocol import device_topics as topics
from protocol import gateway_tokens
from protocol.messages import ArtifactMirror, JobDocument, parse_state
from tests.agent.conftest import AgentProcess, Bridge, ControlPlane, ControlPlaneHttp, Signer, free_port, make_onnx

GATEWAY = "fog-gw-01"


def token_for(signer: Signer, job: JobDocument, *, device: str, gateway: str = GATEWAY, ttl: int = 600) -> str:
    claims = gateway_tokens.GatewayTokenClaims(
        kid=signer.key_id,
        gw=gateway,
        dev=device,
        sha256=job.sha256,
        size=job.size,
        src=job.artifact_url,
        exp=int(time.time()) + ttl,
    )
    return gateway_tokens.mint(signer.private, claims)


def via_gateway(
    job: JobDocument, cache_url: str, signer: Signer, *, device: str, cloud_url: str | None = None
) -> JobDocument:
    """The job as the control plane sends it to a device behind the gateway: gateway mirror, then the cloud."""
    if cloud_url is not None:
        job = job.model_copy(update={"artifact_url": cloud_url})
    token = token_for(signer, job, device=device)
    mirrors = [
        ArtifactMirror(url=f"{cache_url}/v1/artifacts/{job.sha256}?token={token}", source="gateway"),
        ArtifactMirror(url=job.artifact_url, source="cloud"),
    ]
    return JobDocument.model_validate(job.model_dump() | {"mirrors": [m.model_dump() for m in mirrors]})


STATS_TOKEN = "stats-token-for-tests"


def gateway_stats(cache_url: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {STATS_TOKEN}"}
    request = urllib.request.Request(f"{cache_url}/v1/stats", headers=headers)  # noqa: S310 (the test gateway)
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.load(response)


def artifact_fetches(cp_http: ControlPlaneHttp, url: str) -> int:
    path = url.split("://", 1)[1].split("/", 1)[1]
    return sum(1 for p in cp_http.requests if p == f"/{path}")


@pytest.fixture
def start_device(broker, bridge, cp_http, device_hashes, tmp_path) -> Iterator[Callable[..., AgentProcess]]:
    made: list[AgentProcess] = []

    def start(uid: str, *extra: str) -> AgentProcess:
        secret = f"secret-of-{uid}"
        device_hashes[uid] = hash_secret(secret)
        agent = AgentProcess(
            uid=uid, secret=secret, broker_port=broker.port, api_url=cp_http.url, state_dir=tmp_path / uid
        )
        agent.args += list(extra)
        agent.start()
        made.append(agent)
        # subscribed once it asks for its jobs: notifications sent from then on reach it
        bridge.wait_for(lambda messages: any(m.topic == topics.jobs_get_topic(uid) for m in messages))
        return agent

    yield start
    for agent in made:
        agent.stop()


@pytest.fixture
def gateway(bridge: Bridge, start_device, tmp_path: Path) -> dict[str, Any]:
    port = free_port()
    cache_dir = tmp_path / "gw-cache"
    process = start_device(
        GATEWAY, "--gateway", "--cache-host", "127.0.0.1", "--cache-port", str(port), "--cache-dir", str(cache_dir),
        "--stats-token", STATS_TOKEN,
    )  # fmt: skip
    state = bridge.wait_for(
        lambda messages: next(
            (parse_state(m.payload) for m in messages if m.topic == topics.state_topic(GATEWAY)), None
        )
    )
    return {"process": process, "url": state.cache_url, "dir": cache_dir}


def test_gateway_advertises_its_cache_and_every_agent_its_mirror_capability(gateway):
    assert gateway["url"] == f"http://127.0.0.1:{gateway['url'].rsplit(':', 1)[1]}"
    assert gateway_stats(gateway["url"])["entries"] == []


def test_two_edge_devices_download_from_the_gateway_which_fetches_from_the_cloud_once(
    bridge, control_plane, cp_http, signer, gateway, start_device
):
    artifact = make_onnx(7)
    edges = [start_device(f"edge-{n}") for n in range(2)]
    first = control_plane.job(artifact, version=1)
    jobs = {
        edge.uid: via_gateway(
            control_plane.job(artifact, version=1),
            gateway["url"],
            signer,
            device=edge.uid,
            cloud_url=first.artifact_url,
        )
        for edge in edges
    }
    for edge in edges:  # both at once: the gateway coalesces the two misses into one cloud fetch
        bridge.notify(edge.uid, [jobs[edge.uid]])
    for edge in edges:
        done = bridge.wait_terminal(jobs[edge.uid].job_id, timeout=30)
        assert done.status == "SUCCEEDED", f"{done.reason}\n{edge.output()}"
        assert (done.artifact_source, done.artifact_bytes, done.refused_sources) == ("gateway", len(artifact), None)
        assert edge.infer({"x": [[0.0, 1.0, 2.0, 3.0]]})[0] == 200

    assert artifact_fetches(cp_http, first.artifact_url) == 1
    stats = gateway_stats(gateway["url"])
    assert (stats["cloud_fetches"], stats["served"], stats["served_bytes"]) == (1, 2, 2 * len(artifact))
    assert stats["entries"] == [hashlib.sha256(artifact).hexdigest()]


def test_tampered_cached_copy_is_refused_by_the_device_which_falls_back_to_the_cloud(
    bridge, control_plane, cp_http, signer, gateway, start_device
):
    artifact = make_onnx(8)
    warm, victim = start_device("edge-warm"), start_device("edge-victim")
    cloud = control_plane.job(artifact, version=1)
    job = via_gateway(cloud, gateway["url"], signer, device=warm.uid)
    bridge.notify(warm.uid, [job])
    assert bridge.wait_terminal(job.job_id, timeout=30).artifact_source == "gateway"

    # A compromised gateway: same size, same mtime, same inode — the gateway's own check can't see it.
    cached = gateway["dir"] / job.sha256
    before = cached.stat()
    with open(cached, "r+b") as handle:
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))

    again = via_gateway(control_plane.job(artifact, version=1), gateway["url"], signer, device=victim.uid)
    bridge.notify(victim.uid, [again])
    done = bridge.wait_terminal(again.job_id, timeout=30)
    assert done.status == "SUCCEEDED", f"{done.reason}\n{victim.output()}"
    assert (done.artifact_source, done.artifact_bytes) == ("cloud", len(artifact))
    assert [r.source for r in done.refused_sources] == ["gateway"]
    assert "sha256 mismatch" in done.refused_sources[0].reason
    assert "gateway copy refused: sha256 mismatch" in done.reason
    assert artifact_fetches(cp_http, again.artifact_url) == 1


def test_gateway_down_makes_the_device_fall_back_to_the_cloud(bridge, control_plane, signer, start_device):
    artifact = make_onnx(9)
    edge = start_device("edge-alone")
    nobody = f"http://127.0.0.1:{free_port()}"  # a gateway that is down: connection refused
    job = via_gateway(control_plane.job(artifact, version=1), nobody, signer, device=edge.uid)
    bridge.notify(edge.uid, [job])
    done = bridge.wait_terminal(job.job_id, timeout=30)
    assert done.status == "SUCCEEDED", f"{done.reason}\n{edge.output()}"
    assert done.artifact_source == "cloud"
    assert done.refused_sources[0].source == "gateway" and "download failed" in done.refused_sources[0].reason


def test_every_source_failing_fails_the_job_naming_each(bridge, control_plane, signer, start_device, cp_http):
    artifact = make_onnx(10)
    edge = start_device("edge-unlucky")
    job = control_plane.job(artifact, version=1, served=b"not the model" * 10)
    job = via_gateway(job, f"http://127.0.0.1:{free_port()}", signer, device=edge.uid)
    bridge.notify(edge.uid, [job])
    done = bridge.wait_terminal(job.job_id, timeout=30)
    assert done.status == "REJECTED"
    assert done.reason.startswith("sha256 mismatch") and "gateway copy refused: download failed" in done.reason
    assert done.artifact_source is None


# --- the cache and its HTTP side, in process ----------------------------------------------------------


@pytest.fixture
def served(cp_http: ControlPlaneHttp) -> Callable[[bytes, str], str]:
    def serve(data: bytes, name: str) -> str:
        cp_http.artifacts[name] = data
        return f"{cp_http.url}/artifacts/{name}"

    return serve


def test_concurrent_misses_for_one_artifact_make_one_cloud_fetch(tmp_path, cp_http, served):
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    url = served(data, "big")
    cache = ArtifactCache(tmp_path / "c", max_bytes=10_000_000)
    results: list[bytes] = []

    def fetch() -> None:
        with cache.open_verified(sha, len(data), url) as handle:
            results.append(handle.read())

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [data] * 8
    assert artifact_fetches(cp_http, url) == 1
    assert cache.stats.cloud_fetches == 1


def test_cache_evicts_least_recently_used_past_its_size_limit(tmp_path, served):
    blobs = {name: os.urandom(400) for name in "abc"}
    shas = {name: hashlib.sha256(b).hexdigest() for name, b in blobs.items()}
    cache = ArtifactCache(tmp_path / "c", max_bytes=1000)
    for name in "ab":
        cache.open_verified(shas[name], 400, served(blobs[name], name)).close()
    cache.open_verified(shas["a"], 400, served(blobs["a"], "a")).close()  # a is now the most recent
    cache.open_verified(shas["c"], 400, served(blobs["c"], "c")).close()
    assert cache.snapshot()["entries"] == [shas["a"], shas["c"]]
    assert not (tmp_path / "c" / shas["b"]).exists() and cache.stats.evictions == 1
    with pytest.raises(CacheError, match="do not fit"):
        cache.open_verified("0" * 64, 1001, "http://unused.invalid/")


def test_cloud_bytes_that_do_not_match_are_never_cached(tmp_path, served):
    cache = ArtifactCache(tmp_path / "c", max_bytes=10_000)
    good = b"x" * 100
    with pytest.raises(CacheError, match="do not match"):
        cache.open_verified(hashlib.sha256(good).hexdigest(), 100, served(b"y" * 100, "bad"))
    assert cache.snapshot()["entries"] == [] and cache.stats.refused_fills == 1
    assert [p.name for p in (tmp_path / "c").iterdir()] == []


def test_a_cached_file_changed_on_disk_is_dropped_and_fetched_again(tmp_path, cp_http, served):
    data = b"model bytes" * 50
    sha, url = hashlib.sha256(data).hexdigest(), served(b"model bytes" * 50, "m")
    cache = ArtifactCache(tmp_path / "c", max_bytes=10_000)
    cache.open_verified(sha, len(data), url).close()
    (tmp_path / "c" / sha).write_bytes(b"evil bytes!" * 50)
    with cache.open_verified(sha, len(data), url) as handle:
        assert handle.read() == data
    assert cache.stats.dropped_tampered == 1 and artifact_fetches(cp_http, url) == 2


def test_a_restarted_gateway_keeps_verified_entries_and_drops_corrupt_ones(tmp_path, served):
    good, bad = b"g" * 10, b"b" * 10
    directory = tmp_path / "c"
    first = ArtifactCache(directory, max_bytes=1000)
    first.open_verified(hashlib.sha256(good).hexdigest(), 10, served(good, "g")).close()
    (directory / hashlib.sha256(bad).hexdigest()).write_bytes(b"not b at all")
    assert ArtifactCache(directory, max_bytes=1000).snapshot()["entries"] == [hashlib.sha256(good).hexdigest()]


def test_gateway_http_needs_a_valid_token_for_this_gateway_and_artifact(tmp_path, cp_http, signer, served):
    data = b"weights" * 100
    url = served(data, "w")
    server = GatewayServer(
        cache=ArtifactCache(tmp_path / "c", max_bytes=10_000),
        gateway_uid=GATEWAY,
        public_key=SigningKeys(cp_http.url).public_key,
        host="127.0.0.1",
        port=0,
    )
    server.start()
    try:
        cp = ControlPlane(cp_http, signer)
        job = cp.job(data, version=1).model_copy(update={"artifact_url": url})
        base = f"{server.url}/v1/artifacts/{job.sha256}"

        def get(query: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(base + query, timeout=5) as response:  # noqa: S310
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert get("")[0] == 401
        assert get(f"?token={token_for(signer, job, device='e1', gateway='other-gw')}") == (
            403,
            b'{"error": "token is for another gateway"}',
        )
        assert get(f"?token={token_for(signer, job, device='e1', ttl=-5)}")[0] == 403
        assert get(f"?token={token_for(Signer(), job, device='e1')}")[0] == 403  # a key the control plane never had
        assert get(f"?token={token_for(signer, job, device='e1')}") == (200, data)
    finally:
        server.stop()


def test_a_slow_cloud_fill_keeps_the_device_waiting_instead_of_timing_out(tmp_path, cp_http, signer):
    data = b"slow weights" * 1000

    class SlowCloud(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(1.5)  # longer than the device's read timeout below
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    cloud = ThreadingHTTPServer(("127.0.0.1", 0), SlowCloud)
    threading.Thread(target=cloud.serve_forever, daemon=True).start()
    server = GatewayServer(
        cache=ArtifactCache(tmp_path / "c", max_bytes=1_000_000, keepalive_s=0.2),
        gateway_uid=GATEWAY,
        public_key=SigningKeys(cp_http.url).public_key,
        host="127.0.0.1",
        port=0,
    )
    server.start()
    try:
        job = ControlPlane(cp_http, signer).job(data, version=1)
        job = job.model_copy(update={"artifact_url": f"http://127.0.0.1:{cloud.server_address[1]}/artifact"})
        url = f"{server.url}/v1/artifacts/{job.sha256}?token={token_for(signer, job, device='e1')}"
        with urllib.request.urlopen(url, timeout=0.7) as response:  # noqa: S310
            assert (response.status, response.read()) == (200, data)
    finally:
        server.stop()
        cloud.shutdown()
        cloud.server_close()
