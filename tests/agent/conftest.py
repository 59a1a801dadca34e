"""A stand-in control plane for agent and simulator tests: embedded broker, artifact/key HTTP server, signer.

Everything is real except the Django control plane: the broker is the embedded amqtt broker with
per-device auth, artifacts are real ONNX models served over HTTP, manifests are signed with a
real Ed25519 key through `protocol.signing`, and the "bridge" is a paho client on the service user.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper
from paho.mqtt.enums import CallbackAPIVersion

from broker.embedded import EmbeddedBroker, static_authenticator
from broker.passwords import hash_secret
from protocol import device_topics as topics
from protocol import job_envelope, signing
from protocol.messages import JobDocument, JobsNotify, JobUpdate, encode, parse_job_update

# a ceiling, not a pace: waits end as soon as the condition holds; a 2-core machine running two suites
# and a load of 10 took more than 15 s to connect 200 simulated devices
WAIT = 60.0
ROOT = Path(__file__).resolve().parents[2]
SERVICE_USER, SERVICE_PASSWORD = "fogdeck-bridge", "bridge-secret"
MODEL = "tiny-classifier"


# --- ONNX -------------------------------------------------------------------------------------


def make_onnx(seed: int, *, features: int = 4, classes: int = 3, hidden: int = 0) -> bytes:
    """x[N, features] @ W → softmax; `hidden` adds MatMul layers so a model can be made heavier."""
    rng = np.random.default_rng(seed)
    nodes, inits, width, current = [], [], features, "x"
    for layer in range(hidden):
        name = f"H{layer}"
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, [width, 256], rng.normal(size=(width, 256)).ravel()))
        nodes.append(helper.make_node("MatMul", [current, name], [f"h{layer}"]))
        current, width = f"h{layer}", 256
    weights = rng.normal(size=(width, classes)).astype(np.float32)
    inits.append(helper.make_tensor("W", TensorProto.FLOAT, [width, classes], weights.ravel()))
    nodes += [
        helper.make_node("MatMul", [current, "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


# --- the HTTP side of the control plane -------------------------------------------------------


class ControlPlaneHttp:
    """Serves `/artifacts/<name>` and `/api/v1/signing-keys/`, and counts requests per path."""

    def __init__(self) -> None:
        self.artifacts: dict[str, bytes] = {}
        self.keys: list[dict[str, Any]] = []
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if self.path == "/api/v1/signing-keys/":
                    body = json.dumps({"count": len(owner.keys), "next": None, "results": owner.keys}).encode()
                elif self.path.startswith("/artifacts/") and self.path[len("/artifacts/") :] in owner.artifacts:
                    body = owner.artifacts[self.path[len("/artifacts/") :]]
                else:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class Signer:
    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.public_b64 = signing.public_key_b64(self.private)
        self.key_id = signing.key_id(base64.b64decode(self.public_b64))

    def entry(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "public_key": self.public_b64, "algorithm": "ed25519"}


class ControlPlane:
    """Makes signed jobs whose artifacts the HTTP side serves."""

    def __init__(self, http: ControlPlaneHttp, signer: Signer) -> None:
        self.http, self.signer = http, signer

    def job(
        self,
        artifact: bytes,
        *,
        version: int,
        kind: str = "install",
        model: str = MODEL,
        served: bytes | None = None,
        signer: Signer | None = None,
        manifest_changes: dict[str, Any] | None = None,
        timeout_seconds: int = 600,
    ) -> JobDocument:
        job_id = str(uuid.uuid4())
        sha256 = hashlib.sha256(artifact).hexdigest()
        manifest = {
            "schema_version": 1,
            "model": model,
            "model_id": 1,
            "version": version,
            "label": f"v{version}",
            "format": "onnx",
            "framework": "onnx",
            "sha256": sha256,
            "size": len(artifact),
            "requirements": {
                "runtime": "onnxruntime",
                "min_runtime_version": "1.14",
                "archs": [],
                "min_memory_mb": None,
                "accelerator": "none",
            },
            "published_at": "2025-03-01T12:00:00Z",
        } | (manifest_changes or {})
        text = signing.canonical_text(manifest)
        self.http.artifacts[job_id] = artifact if served is None else served
        return JobDocument(
            job_id=job_id,
            kind=kind,
            model=model,
            model_id=1,
            version=version,
            version_id=100 + version,
            format="onnx",
            artifact_url=f"{self.http.url}/artifacts/{job_id}",
            sha256=sha256,
            size=len(artifact),
            manifest=text,
            signature=signing.sign((signer or self.signer).private, text),
            key_id=self.signer.key_id,
            timeout_seconds=timeout_seconds,
            created_at=datetime.now(UTC),
        )


# --- the MQTT side of the control plane -------------------------------------------------------


def envelope_for(
    signer: Signer, job: JobDocument, uid: str, *, ttl: int = 900, revoked: list[int] | None = None, **changes: Any
) -> str:
    """The control plane's signed envelope for `job` on device `uid` (protocol/job_envelope.py); `changes`
    override claims, to sign something other than what the job says."""
    claims = job_envelope.JobEnvelopeClaims(
        kid=signer.key_id,
        job=job.job_id,
        dev=uid,
        kind=job.kind,
        model=job.model,
        version=job.version,
        sha256=job_envelope.subject_sha256(job),
        exp=int(time.time()) + ttl,
        revoked=revoked or [],
    )
    claims = job_envelope.JobEnvelopeClaims(**(claims.__dict__ | changes))
    return job_envelope.mint(signer.private, claims)


def signed(signer: Signer, job: JobDocument, uid: str, **kwargs: Any) -> JobDocument:
    return job.model_copy(update={"envelope": envelope_for(signer, job, uid, **kwargs)})


class Bridge:
    """A paho client on the service user that records every device message.

    `notify` signs an envelope for each job that has none, as the control plane does for agents that
    verify them; `sign=False` sends the jobs exactly as given."""

    def __init__(self, port: int, signer: Signer | None = None) -> None:
        self.signer = signer
        self.messages: list[mqtt.MQTTMessage] = []
        self._changed = threading.Condition()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bridge-{uuid.uuid4().hex[:8]}"
        )
        self._client.username_pw_set(SERVICE_USER, SERVICE_PASSWORD)
        subscribed = threading.Event()
        self._client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in topics.BRIDGE_SUBSCRIPTIONS])
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._record
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        assert subscribed.wait(WAIT), "bridge did not subscribe"

    def _record(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[mqtt.MQTTMessage]], Any], timeout: float = WAIT) -> Any:
        """The first truthy value of `predicate(messages so far)`, waiting for new messages in between."""
        with self._changed:
            result = self._changed.wait_for(lambda: predicate(self.messages), timeout)
            assert result, f"timed out; got {[m.topic.split('/', 3)[-1] for m in self.messages][-20:]}"
            return result

    def updates(self, job_id: str) -> list[JobUpdate]:
        with self._changed:
            found = [m for m in self.messages if m.topic.endswith(f"/jobs/{job_id}/update")]
        return sorted((parse_job_update(m.payload) for m in found), key=lambda u: u.seq)

    def wait_terminal(self, job_id: str, timeout: float = WAIT) -> JobUpdate:
        suffix = f"/jobs/{job_id}/update"

        def terminal(messages: list[mqtt.MQTTMessage]) -> JobUpdate | None:
            for m in messages:
                if m.topic.endswith(suffix):
                    update = parse_job_update(m.payload)
                    if update.status not in ("QUEUED", "IN_PROGRESS"):
                        return update
            return None

        return self.wait_for(terminal, timeout)

    def count(self, topic: str) -> int:
        with self._changed:
            return sum(1 for m in self.messages if m.topic == topic)

    def notify(self, uid: str, jobs: list[JobDocument] = (), cancel: list[str] = (), *, sign: bool = True) -> None:  # type: ignore[assignment]
        if sign and self.signer is not None:
            jobs = [job if job.envelope is not None else signed(self.signer, job, uid) for job in jobs]
        payload = encode(JobsNotify(schema_version=1, jobs=list(jobs), cancel=list(cancel)))
        info = self._client.publish(topics.jobs_notify_topic(uid), payload, qos=1)
        info.wait_for_publish(WAIT)

    def publish(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1).wait_for_publish(WAIT)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def device_hashes() -> dict[str, str]:
    return {}


@pytest.fixture
def broker(device_hashes: dict[str, str]) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(
        port=0, authenticator=static_authenticator({SERVICE_USER: SERVICE_PASSWORD}, device_hashes.get)
    )
    embedded.start_in_thread()
    yield embedded
    embedded.stop_thread()


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def cp_http(signer: Signer) -> Iterator[ControlPlaneHttp]:
    http = ControlPlaneHttp()
    http.keys.append(signer.entry())
    yield http
    http.close()


@pytest.fixture
def control_plane(cp_http: ControlPlaneHttp, signer: Signer) -> ControlPlane:
    return ControlPlane(cp_http, signer)


@pytest.fixture
def bridge(broker: EmbeddedBroker, signer: Signer) -> Iterator[Bridge]:
    made = Bridge(broker.port, signer)
    yield made
    made.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_session_offline(broker: EmbeddedBroker, client_id: str) -> None:
    """Until the broker has processed a client's disconnect (amqtt has no public hook for this)."""
    deadline = time.monotonic() + WAIT
    while True:
        session = broker._broker.sessions.get(client_id, (None, None))[0] if broker._broker else None
        if session is not None and session.transitions.state == "disconnected":
            return
        assert time.monotonic() < deadline, f"{client_id} still connected"
        time.sleep(0.01)


class AgentProcess:
    """`python -m agent` as a real subprocess."""

    def __init__(
        self,
        *,
        uid: str,
        secret: str,
        broker_port: int,
        api_url: str,
        state_dir: Path,
        telemetry_interval: float = 60.0,
    ) -> None:
        self.uid, self.http_port = uid, free_port()
        self.args = [
            sys.executable,
            "-m",
            "agent",
            "--api",
            api_url,
            "--mqtt",
            f"mqtt://127.0.0.1:{broker_port}",
            "--device-id",
            uid,
            "--state-dir",
            str(state_dir),
            "--port",
            str(self.http_port),
            "--arch",
            "x86_64",
            "--cpu",
            "test cpu x2",
            "--memory-mb",
            "2048",
            "--accelerator",
            "none",
            "--telemetry-interval",
            str(telemetry_interval),
            "--log-level",
            "INFO",
        ]
        self.env = os.environ | {"FOGDECK_DEVICE_SECRET": secret, "PYTHONUNBUFFERED": "1"}
        self.log = state_dir.parent / f"{uid}-agent.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                assert self.process.wait(10) == 0, self.output()
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def infer(self, inputs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/infer",
            data=json.dumps({"inputs": inputs}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:  # noqa: S310
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)


@pytest.fixture
def start_agent(
    broker: EmbeddedBroker, cp_http: ControlPlaneHttp, device_hashes: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., AgentProcess]]:
    made: list[AgentProcess] = []

    def start(uid: str = "agent-01", **kwargs: Any) -> AgentProcess:
        secret = f"secret-of-{uid}"
        device_hashes[uid] = hash_secret(secret)
        agent = AgentProcess(
            uid=uid, secret=secret, broker_port=broker.port, api_url=cp_http.url, state_dir=tmp_path / uid, **kwargs
        )
        agent.start()
        made.append(agent)
        return agent

    yield start
    for agent in made:
        agent.stop()
