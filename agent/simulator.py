"""`fogdeck-sim`: N virtual devices in one asyncio process, speaking device protocol v1.

Each device has its own MQTT connection and credentials. The paho clients are driven by the one
event loop through their socket callbacks (paho's `loop_read`/`loop_write`/`loop_misc`, as in
paho's asyncio example), not a thread per device. Job policy is the agent's (`agent.policy`):
a tampered artifact, a bad signature or an old version is refused with the same status and reason.
Artifacts are downloaded for real (once per URL and sha256) and each version is run once with
onnxruntime to measure a base latency; devices then draw latencies scaled by their hardware profile.

Inputs come from a stationary distribution: the sample models' (`protocol/sample_inputs.py`, the one
their reference profiles describe) for the samples' 4 features, a standard normal per feature for any
other width. `--drift-site SITE --drift-shift S` adds S to every feature of the devices at SITE (their
site comes from `--provision` or the devices file's `site`), and SIGUSR1 turns that injected drift off
and on again while running.

A devices file may say what a device already runs (`preinstalled`: model, version, sha256 and a local
path to the artifact, e.g. the demo's baseline): it is active from the first connection, and its
telemetry flows before any job arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
import resource
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import AGENT_VERSION
from agent.aws_dialect import AwsJobsLink
from agent.inference import LoadedModel
from agent.ledger import JobLedger, LedgerState
from agent.mqtt_url import parse_mqtt_url
from agent.pipeline import manifest_digest, verify_pipeline_manifest
from agent.policy import (
    JobRefused,
    SigningKeys,
    admission_refusal,
    check_envelope,
    check_version,
    verify_download,
)
from agent.telemetry import TelemetryRecorder
from protocol import aws_jobs
from protocol import device_topics as topics
from protocol.messages import (
    CAPABILITY_ACKED_UPDATES,
    CAPABILITY_SIGNED_JOBS,
    TERMINAL_JOB_STATUSES,
    ActiveModel,
    DeviceState,
    Hardware,
    JobDocument,
    JobsGet,
    JobStatus,
    JobStep,
    JobUpdate,
    PipelineStageDocument,
    ProtocolError,
    Runtime,
    SlotContent,
    SlotName,
    Slots,
    StateMessage,
    StatusMessage,
    TelemetryMessage,
    encode,
    parse_job_update_accepted,
    parse_job_update_rejected,
    parse_jobs_get_accepted,
    parse_jobs_notify,
    utc_now,
)
from protocol.sample_inputs import sample_inputs

logger = logging.getLogger("fogdeck.sim")

QOS = 1
KEEPALIVE_S = 60
CONNECT_WINDOW = 64  # connections awaiting CONNACK at once
RESEND_TICK_S = 1.0  # how often unanswered job updates are looked at (each has its own backoff, agent/ledger.py)
SIM_TAG = "sim"
DEFAULT_SITE = "Simulated Site"

# --- hardware profiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SimProfile:
    """Mirrors fleet/demo_fleet.py's PROFILES (kept equal by a test) plus how fast the hardware is.

    `speed_factor` multiplies the latency measured on this machine; `link_mbps` sets download time.
    """

    name: str
    tier: str
    arch: str
    cpu: str
    memory_mb: int
    accelerator: str
    runtimes: tuple[tuple[str, str], ...]
    speed_factor: float
    link_mbps: float
    weight: int  # share in a generated fleet
    version_factors: dict[str, float] = field(default_factory=dict)  # "model@version" -> speed_factor

    def factor_for(self, model: str, version: int) -> float:
        return self.version_factors.get(f"{model}@{version}", self.speed_factor)


PROFILES: dict[str, SimProfile] = {
    p.name: p
    for p in (
        SimProfile("gpu-server", "cloud", "x86_64", "Xeon Gold 6338 x32", 131072, "gpu",
                   (("onnxruntime", "1.18"), ("tensorrt", "8.6"), ("openvino", "2024.1")), 0.3, 1000, 1),
        SimProfile("cpu-server", "cloud", "x86_64", "EPYC 7543 x16", 65536, "none",
                   (("onnxruntime", "1.18"), ("openvino", "2024.1")), 1.0, 1000, 2),
        SimProfile("atom-gateway", "fog", "x86_64", "Atom x6425E x4", 8192, "none",
                   (("onnxruntime", "1.17"), ("openvino", "2024.1")), 3.0, 100, 4),
        SimProfile("jetson-orin", "fog", "aarch64", "Cortex-A78AE x8", 32768, "gpu",
                   (("onnxruntime", "1.18"), ("tensorrt", "8.6")), 0.6, 100, 2),
        SimProfile("lte-gateway", "fog", "armv7l", "Cortex-A7 x2", 512, "none", (("tflite", "2.11"),), 12.0, 5, 1),
        SimProfile("rpi4", "edge", "aarch64", "Cortex-A72 x4", 4096, "none",
                   (("onnxruntime", "1.18"), ("tflite", "2.14")), 4.0, 50, 38),
        SimProfile("rpi3", "edge", "armv7l", "Cortex-A53 x4", 1024, "none",
                   (("onnxruntime", "1.14"), ("tflite", "2.12")), 8.0, 20, 8),
        SimProfile("jetson-nano", "edge", "aarch64", "Cortex-A57 x4", 4096, "gpu",
                   (("onnxruntime", "1.16"), ("tensorrt", "8.2")), 2.0, 50, 14),
        SimProfile("coral-dev", "edge", "aarch64", "Cortex-A53 x4", 4096, "tpu", (("tflite", "2.14"),), 1.5, 50, 14),
        SimProfile("atom-box", "edge", "x86_64", "Atom x5-E3940 x4", 8192, "none",
                   (("onnxruntime", "1.17"), ("openvino", "2023.3")), 3.5, 100, 16),
    )
}  # fmt: skip


def load_profile_overrides(path: Path) -> dict[str, SimProfile]:
    """`{"rpi4": {"speed_factor": 5, "link_mbps": 20, "versions": {"shelf-detector@3": 9.0}}, …}`."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of profile name to overrides")
    profiles = dict(PROFILES)
    for name, override in data.items():
        if name not in profiles or not isinstance(override, dict):
            raise ValueError(f"{path}: unknown profile {name!r} or its overrides are not an object")
        changes: dict[str, Any] = {}
        for key in ("speed_factor", "link_mbps"):
            if key in override:
                value = float(override[key])
                if not 0 < value < 1e6:
                    raise ValueError(f"{path}: {name}.{key} must be positive")
                changes[key] = value
        versions = override.get("versions", {})
        if not isinstance(versions, dict):
            raise ValueError(f"{path}: {name}.versions must be an object of 'model@version' to factor")
        changes["version_factors"] = {str(k): float(v) for k, v in versions.items()}
        profiles[name] = replace(profiles[name], **changes)
    return profiles


# --- driving many paho clients from one asyncio loop ---------------------------------------------


class PahoDriver:
    """Registers each client's socket with the event loop; one task runs `loop_misc` for all of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clients: set[mqtt.Client] = set()
        self._misc: asyncio.Task[None] | None = None

    def attach(self, client: mqtt.Client) -> None:
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.clients.add(client)
        if self._misc is None:
            self._misc = self.loop.create_task(self._misc_loop())

    def detach(self, client: mqtt.Client) -> None:
        self.clients.discard(client)

    def _on_socket_open(self, client: mqtt.Client, _userdata: object, sock: Any) -> None:
        self.loop.add_reader(sock, client.loop_read)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: object, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, _userdata: object, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: object, sock: Any) -> None:
        self.loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        while True:
            for client in list(self.clients):
                client.loop_misc()  # keepalive pings and dead-connection detection
            await asyncio.sleep(1)

    def close(self) -> None:
        if self._misc is not None:
            self._misc.cancel()


# --- shared, per-artifact work ---------------------------------------------------------------------


@dataclass
class StageBench:
    name: str
    model: str
    version: int
    bench: Bench


@dataclass
class Bench:
    base_ms: float
    feature_widths: dict[str, int]  # input name -> last-axis width, for synthetic input statistics
    stages: list[StageBench] | None = None  # a pipeline's, in order


@dataclass(frozen=True)
class Artifact:
    """A single-model job's artifact or one pipeline stage's: what `Artifacts` fetches, verifies and times."""

    document: JobDocument | PipelineStageDocument  # what `verify_download` checks
    url: str
    sha256: str
    size: int

    @classmethod
    def of(cls, document: JobDocument | PipelineStageDocument) -> Artifact:
        if document.artifact_url is None or document.sha256 is None or document.size is None:
            # not for a valid document: a job without stages has all three (JobDocument's validator)
            raise JobRefused("REJECTED", "the job names no artifact")
        return cls(document, document.artifact_url, document.sha256, document.size)


class Artifacts:
    """Downloads, verification results and latency benchmarks, each done once and shared by devices."""

    def __init__(self, keys: SigningKeys, workdir: Path, downloads: int = 8) -> None:
        self.keys = keys
        self.workdir = workdir
        self._downloads: dict[tuple[str, str], asyncio.Task[tuple[Path, int, str]]] = {}
        self._verdicts: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self._benches: dict[str, asyncio.Task[Bench]] = {}
        self.timings = Timings()
        self._slots = asyncio.Semaphore(downloads)

    @staticmethod
    def _url_key(artifact: Artifact) -> str:
        # Presigned URLs differ only in their query; the object is the same.
        parts = urllib.parse.urlsplit(artifact.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def download(self, artifact: Artifact) -> asyncio.Task[tuple[Path, int, str]]:
        key = (self._url_key(artifact), artifact.sha256)
        if key not in self._downloads:
            self._downloads[key] = asyncio.ensure_future(self._download(artifact))
        return self._downloads[key]

    async def _download(self, artifact: Artifact) -> tuple[Path, int, str]:
        async with self._slots:
            return await asyncio.to_thread(self._fetch, artifact)

    def _fetch(self, artifact: Artifact) -> tuple[Path, int, str]:
        target = self.workdir / f"{hashlib.sha256(artifact.url.encode()).hexdigest()[:16]}-{artifact.sha256}"
        digest, size = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(artifact.url, timeout=30) as response, open(target, "wb") as out:  # noqa: S310 (http(s) by the protocol)
                while chunk := response.read(256 * 1024):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if size > artifact.size:
                        break
        except urllib.error.HTTPError as exc:
            raise JobRefused("FAILED", f"download failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise JobRefused("FAILED", f"download failed: {getattr(exc, 'reason', exc)}") from None
        return target, size, digest.hexdigest()

    def verify(self, artifact: Artifact, size: int, sha256: str) -> asyncio.Task[None]:
        job = artifact.document
        key = (artifact.sha256, str(artifact.size), sha256, str(size), job.manifest, job.signature, job.key_id,
               job.model, str(job.version), job.format)  # fmt: skip
        if key not in self._verdicts:
            self._verdicts[key] = asyncio.ensure_future(
                asyncio.to_thread(verify_download, job, size, sha256, self.keys)
            )
        return self._verdicts[key]

    def bench(self, artifact: Artifact, path: Path) -> asyncio.Task[Bench]:
        job = artifact.document
        if artifact.sha256 not in self._benches:
            self._benches[artifact.sha256] = asyncio.ensure_future(asyncio.to_thread(
                self.timings.time, path, model=job.model, version=job.version, sha256=artifact.sha256
            ))  # fmt: skip
        return self._benches[artifact.sha256]


BENCH_RUNS = 30
# A simulated request never takes less than this on "this machine": the sample models run in microseconds,
# and a device's latency histogram starts at 0.1 ms (protocol/latency_histogram.py), so on a fast profile
# two versions would both land in its first bucket and compare as equal, whatever their speeds.
MIN_BASE_MS = 1.0


@dataclass
class _Timed:
    loaded: LoadedModel
    base_ms: float


class Timings:
    """Times each artifact on this machine: the fastest of `BENCH_RUNS` smoke inferences after a warm-up.

    A model's first timed version is its reference; each later version is timed in turns with the
    reference and scaled by the ratio of their fastest runs. Versions timed minutes apart would otherwise
    compare the machine's load at two moments, not the models: the first install's timing, taken while
    hundreds of simulated devices were busy, once made an identical version look 2x faster, hiding the 2x
    slowdown its test gave it. The fastest run is the one least disturbed by other work. A reference
    faster than `min_base_ms` is raised to it, and the later versions with it, so ratios are kept."""

    def __init__(self, min_base_ms: float = MIN_BASE_MS) -> None:
        self.min_base_ms = min_base_ms
        self._references: dict[str, _Timed] = {}
        self._lock = threading.Lock()

    def time(self, path: Path, *, model: str, version: int, sha256: str) -> Bench:
        try:
            loaded = LoadedModel(path, model=model, version=version, sha256=sha256)
        except Exception as exc:
            raise JobRefused("FAILED", f"model does not load: {exc}"[:1000]) from None
        with self._lock:
            reference = self._references.get(model)
        try:
            loaded.smoke_test()  # warm-up
            runs, reference_runs = [], []
            for _ in range(BENCH_RUNS):
                runs.append(loaded.smoke_test())
                if reference is not None:
                    reference_runs.append(reference.loaded.smoke_test())
        except Exception as exc:
            raise JobRefused("FAILED", f"smoke inference failed: {exc}"[:1000]) from None
        fastest = max(min(runs), 0.0001)
        if reference is None:
            base_ms = max(fastest, self.min_base_ms)
            with self._lock:
                self._references.setdefault(model, _Timed(loaded, base_ms))
        else:
            base_ms = reference.base_ms * fastest / max(min(reference_runs), 0.0001)
        widths = {s.name: s.shape[-1] for s in loaded.inputs if s.shape and s.shape[-1] and s.shape[-1] <= 16}
        return Bench(base_ms=base_ms, feature_widths=widths)


# --- one simulated device ------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    api_url: str
    mqtt_url: str
    telemetry_interval_s: float = 10.0
    requests_per_s: float = 2.0
    error_rate: float = 0.001
    install_failure_rate: float = 0.0
    crash_during_activation: float = 0.0
    flaky: float = 0.0
    seed: int | None = None
    drift_site: str | None = None  # devices at this site get shifted input distributions
    drift_shift: float = 0.0  # added to the mean of every input feature there
    # in a pipeline, the chance that a stage's condition on the previous stage's output holds
    pipeline_pass_rate: float = 0.5
    dialect: str = "fogdeck"  # or "aws-iot-jobs": jobs over the AWS IoT Jobs MQTT API (agent/aws_dialect.py)


class SimDevice:
    def __init__(
        self, sim: Simulator, uid: str, secret: str, profile: SimProfile, rng: random.Random, site: str | None = None
    ) -> None:
        self.sim, self.uid, self.secret, self.profile, self.rng = sim, uid, secret, profile, rng
        self.site = site
        self.connected = False
        self.stopping = False
        self.slots: dict[str, SlotContent | None] = {"a": None, "b": None}
        self.active: dict[str, ActiveModel] = {}
        self.benches: dict[str, Bench] = {}  # sha256 of each active version -> its benchmark
        # the agent's job ledger (agent/ledger.py), in memory: a simulated device never restarts its process
        self.ledger = JobLedger(LedgerState(), rng=random.Random(rng.getrandbits(32)))  # noqa: S311
        self.interrupted: str | None = None  # a job cut short by a simulated crash, reported on reconnect
        self.revoked: dict[str, set[int]] = {}  # per model, from signed job envelopes (only grows)
        self.dropped_unsigned = 0
        self._worker: asyncio.Task[None] | None = None
        self.telemetry = TelemetryRecorder(rng=rng)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=uid,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(uid, secret)
        self.client.on_pre_connect = lambda client, _u: client.will_set(
            topics.status_topic(uid), self._status("offline"), qos=QOS, retain=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.aws = (
            AwsJobsLink(uid, lambda topic, payload: self.client.publish(topic, payload, qos=QOS))
            if sim.config.dialect == aws_jobs.DIALECT_AWS
            else None
        )
        if self.aws is not None:  # its updates have no Fogdeck answers and no re-sends: none is held back
            self.ledger.progress_interval_s = 0.0

    # --- connection ---

    def connect(self) -> bool:
        """Start the first connection; True when a CONNACK (or a disconnect) will follow."""
        address = self.sim.address
        self.sim.driver.attach(self.client)
        try:
            self.client.connect(address.host, address.port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            logger.debug("%s: connect failed (%s); retrying", self.uid, exc)
            self._schedule_reconnect()
            return False
        self._tune_socket()
        return True

    def _tune_socket(self) -> None:
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _schedule_reconnect(self, delay: float | None = None) -> None:
        if self.stopping:
            return
        self.sim.loop.call_later(delay if delay is not None else self.rng.uniform(1, 5), self._reconnect)

    def _reconnect(self) -> None:
        if self.stopping or self.connected:
            return
        try:
            self.client.reconnect()
            self._tune_socket()
        except OSError:
            self._schedule_reconnect()

    def drop(self) -> None:
        """Lose the connection without DISCONNECT, as a crash or network cut would (the will fires)."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # paho's callbacks, CallbackAPIVersion.VERSION2 signatures (paho.mqtt.client.CallbackOnConnect_v2, …)

    def _on_connect(
        self,
        client: mqtt.Client,
        _u: Any,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.sim.connect_window_release(self)
            logger.warning("%s: connection refused (%s)", self.uid, reason_code)
            self.sim.refused.add(self.uid)
            self.stopping = True  # a refused device does not hammer the broker
            client.disconnect()
            return
        self.connected = True
        self.sim.on_connected(self)
        self.sim.connect_window_release(self)
        client.publish(topics.status_topic(self.uid), self._status("online"), qos=QOS, retain=True)
        self.publish_state()
        if self.aws is not None:  # start-next plays the part of jobs/get (no Fogdeck answers, no re-sends)
            client.subscribe(self.aws.subscriptions())
            self.aws.start_next()
        else:
            client.subscribe(
                [
                    (topics.jobs_notify_topic(self.uid), QOS),
                    (topics.jobs_get_accepted_topic(self.uid), QOS),
                    (topics.job_update_answers_filter(self.uid), QOS),
                ]
            )
            self.ask_for_jobs()
            for update in self.ledger.unanswered(time.monotonic()):
                self.publish_update(update)
        if self.interrupted is not None:
            job_id, self.interrupted = self.interrupted, None
            self.report(job_id, "FAILED", reason="interrupted by agent restart")

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _u: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _props: Properties | None,
    ) -> None:
        was = self.connected
        self.sim.connect_window_release(self)
        self.connected = False
        if was:
            self.sim.on_disconnected(self)
        if not self.stopping:
            self._schedule_reconnect()

    def _on_message(self, _client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if self.aws is not None and self.aws.handles(message.topic):
                in_hand = self.ledger.held
                submit = lambda job: self.submit(job, resend_finished=True)  # noqa: E731
                self.aws.on_message(message.topic, message.payload, submit=submit, cancel=self.cancel, in_hand=in_hand)
            elif message.topic.endswith("/jobs/notify"):
                notify = parse_jobs_notify(message.payload)
                for job in notify.jobs:
                    self.submit(job)
                for job_id in notify.cancel:
                    self.cancel(job_id)
            elif message.topic.endswith("/jobs/get/accepted"):
                unsigned_before = self.dropped_unsigned
                for job in parse_jobs_get_accepted(message.payload).jobs:
                    self.submit(job, resend_finished=True)
                if self.dropped_unsigned == unsigned_before:
                    self.ledger.jobs_reply_signed()
            elif answer := topics.job_answer_of(self.uid, message.topic):
                if answer[1] == "accepted":
                    self.ledger.on_accepted(parse_job_update_accepted(message.payload), time.monotonic())
                else:
                    rejected = parse_job_update_rejected(message.payload)
                    if self.ledger.on_rejected(rejected):
                        logger.warning("%s: update %s of job %s rejected: %s", self.uid, rejected.seq,
                                       rejected.job_id, rejected.reason_code)  # fmt: skip
        except ProtocolError as exc:
            logger.warning("%s: dropping message on %s: %s", self.uid, message.topic, exc)

    # --- messages ---

    def _status(self, state: DeviceState) -> bytes:
        return encode(StatusMessage(schema_version=1, state=state, agent_version=f"{AGENT_VERSION}-sim", ts=utc_now()))

    def publish_status_offline(self) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topics.status_topic(self.uid), self._status("offline"), qos=QOS, retain=True)

    def publish_state(self) -> None:
        p = self.profile
        state = StateMessage(
            schema_version=1,
            ts=utc_now(),
            agent_version=f"{AGENT_VERSION}-sim",
            hardware=Hardware(arch=p.arch, cpu=p.cpu, memory_mb=p.memory_mb, accelerator=p.accelerator),
            runtimes=[Runtime(name=n, version=v) for n, v in p.runtimes],
            slots=Slots(a=self.slots["a"], b=self.slots["b"]),
            active=dict(self.active),
            inference_url=self.inference_url,
            # verifies job envelopes like the agent (agent.policy); keeps updates until answered (agent.ledger)
            capabilities=[CAPABILITY_SIGNED_JOBS, CAPABILITY_ACKED_UPDATES],
            recent_jobs=self.ledger.recent_jobs() or None,
        )
        self.client.publish(topics.state_topic(self.uid), encode(state), qos=QOS, retain=True)

    @property
    def inference_url(self) -> str:
        """A plausible, never-resolving address per simulated device (`.invalid` is reserved, RFC 2606)."""
        host = re.sub(r"[^a-z0-9-]", "-", self.uid.lower())
        return f"http://{host}.sim.fogdeck.invalid:8600/infer"

    def report(
        self,
        job_id: str,
        status: JobStatus,
        *,
        step: JobStep | None = None,
        progress: float | None = None,
        reason: str | None = None,
    ) -> None:
        update = self.ledger.update(job_id, status, now=time.monotonic(), step=step, progress=progress, reason=reason)
        if update is not None:  # None: a progress update held back (agent/ledger.py, PROGRESS_INTERVAL_S)
            self.publish_update(update)
        self.sim.job_states[(self.uid, job_id)] = status
        if status in TERMINAL_JOB_STATUSES:
            self.publish_state()  # the retained state lists it among the recent jobs (reconciliation)

    def publish_update(self, update: JobUpdate) -> None:
        if self.sim.updates_sent is not None:
            self.sim.updates_sent[(update.job_id, update.seq)] += 1
        if self.aws is not None:
            self.aws.publish_update(update)
            if update.status in TERMINAL_JOB_STATUSES:
                self.aws.start_next()  # the next pending execution, if any
            return
        self.client.publish(topics.job_update_topic(self.uid, update.job_id), encode(update), qos=QOS)

    def ask_for_jobs(self) -> None:
        request = JobsGet(schema_version=1, request_id=secrets.token_hex(6))
        self.client.publish(topics.jobs_get_topic(self.uid), encode(request), qos=QOS)

    def resend_due(self, now: float) -> None:
        """Send the unanswered updates whose backoff is over again (the ledger decides which); after a job
        came unsigned, report the state and ask for the jobs again (agent/ledger.py, REASK_MIN_S)."""
        if self.aws is not None:  # the AWS dialect's answers are its own: no Fogdeck re-sends
            return
        for update in self.ledger.due(now):
            self.publish_update(update)
        if self.ledger.reask_due(now):
            self.publish_state()
            self.ask_for_jobs()

    async def _execute_pipeline(self, job: JobDocument, deadline: float) -> None:
        """Every stage downloaded, verified and benchmarked (shared work, like a model's), then activated at once.

        The same checks as agent/pipeline.py; a refusal names the stage. Raises JobRefused.
        """
        artifacts, stages = self.sim.artifacts, job.stages or []
        self.report(job.job_id, "IN_PROGRESS", step="verifying")
        await asyncio.to_thread(lambda: verify_pipeline_manifest(job, artifacts.keys.public_key(job.key_id)))
        self.report(job.job_id, "IN_PROGRESS", step="downloading", progress=0.0)
        stage_artifacts = [Artifact.of(stage) for stage in stages]
        fetched = [artifacts.download(artifact) for artifact in stage_artifacts]
        transfer_s = sum(stage.size for stage in stages) * 8 / (self.profile.link_mbps * 1e6)
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < transfer_s:
            await asyncio.sleep(min(1.0, transfer_s - elapsed))
            self._checkpoint(job, deadline)
        benches: list[StageBench] = []
        for position, (stage, artifact, task) in enumerate(zip(stages, stage_artifacts, fetched, strict=True)):
            try:
                path, size, sha256 = await task
                await artifacts.verify(artifact, size, sha256)
                bench = await artifacts.bench(artifact, path)
            except JobRefused as refused:
                raise JobRefused(refused.status, f"stage {position + 1} ({stage.name}): {refused.reason}") from None
            benches.append(StageBench(stage.name, stage.model, stage.version, bench))
            self._checkpoint(job, deadline)
        self.ledger.start_activation()
        self.report(job.job_id, "IN_PROGRESS", step="activating")
        if self.rng.random() < self.sim.config.crash_during_activation:
            self.interrupted = job.job_id
            self.drop()
            return
        if self.rng.random() < self.sim.config.install_failure_rate:
            raise JobRefused("FAILED", "simulated install failure")
        digest = manifest_digest(job.manifest)
        slot: SlotName = "b" if any(a.slot == "a" for a in self.active.values()) else "a"
        self.slots[slot] = SlotContent(model=job.model, version=job.version, sha256=digest)
        self.active = {job.model: ActiveModel(version=job.version, slot=slot)}
        total = sum(stage.bench.base_ms for stage in benches)
        self.benches = {digest: Bench(base_ms=total, feature_widths=benches[0].bench.feature_widths, stages=benches)}
        self.report(job.job_id, "SUCCEEDED")  # and the new state

    def _simulate_pipeline(self, name: str, version: int, bench: Bench, count: int, errors: int,
                           gen: np.random.Generator) -> None:  # fmt: skip
        """Each request runs stage 1, and each later stage while the previous condition held (pass rate)."""
        stages = bench.stages or []
        ok = count - errors
        reach = np.ones(ok, dtype=bool)
        totals = np.zeros(ok)
        for index, stage in enumerate(stages):
            if index > 0:
                reach &= gen.random(ok) < self.sim.config.pipeline_pass_rate
            scale = stage.bench.base_ms * self.profile.factor_for(stage.model, stage.version)
            latencies = scale * gen.lognormal(0.0, 0.25, size=int(reach.sum()))
            totals[reach] += latencies
            self.telemetry.record_stage_latencies(
                name, version, stage.name, stage.model, stage.version, latencies, skipped=int(ok - reach.sum())
            )
        # stage factors already apply; an override for the pipeline itself (e.g. "name@2") multiplies on top
        extra = self.profile.version_factors.get(f"{name}@{version}", 1.0)
        self.telemetry.record_latencies(name, version, totals * extra, errors)

    def preinstall(self, installed: Preinstalled, bench: Bench) -> None:
        """Start out running `installed` (a factory image): in slot a, active, benchmarked."""
        self.slots["a"] = SlotContent(model=installed.model, version=installed.version, sha256=installed.sha256)
        self.active = {installed.model: ActiveModel(version=installed.version, slot="a")}
        self.benches = {installed.sha256: bench}

    def publish_telemetry(self, interval_s: float) -> None:
        for name, entry in self.active.items():
            content = self.slots[entry.slot]
            bench = self.benches.get(content.sha256) if content else None
            if bench is None:
                continue
            config = self.sim.config
            if bench.stages:
                gen = np.random.default_rng(self.rng.getrandbits(32))
                count = int(gen.poisson(config.requests_per_s * interval_s))
                errors = sum(1 for _ in range(count) if self.rng.random() < config.error_rate)
                self._simulate_pipeline(name, entry.version, bench, count, errors, gen)
                continue
            count = int(np.random.default_rng(self.rng.getrandbits(32)).poisson(config.requests_per_s * interval_s))
            errors = sum(1 for _ in range(count) if self.rng.random() < config.error_rate)
            scale = bench.base_ms * self.profile.factor_for(name, entry.version)
            gen = np.random.default_rng(self.rng.getrandbits(32))
            latencies = scale * gen.lognormal(0.0, 0.25, size=count - errors)
            self.telemetry.record_latencies(name, entry.version, latencies, errors)
            if count - errors > 0:
                # Inputs from the sample models' distribution, stationary unless drift is injected.
                shift = self.sim.input_shift(self)
                synthetic = {
                    n: sample_inputs(gen, count - errors, w, shift=shift) for n, w in bench.feature_widths.items()
                }
                self.telemetry.record_inputs(name, entry.version, synthetic)
        samples = self.telemetry.drain()
        message = TelemetryMessage(schema_version=1, ts=utc_now(), interval_s=interval_s, samples=samples)
        self.client.publish(topics.telemetry_topic(self.uid), encode(message), qos=QOS)

    # --- jobs ---

    def submit(self, job: JobDocument, *, resend_finished: bool = False) -> None:
        ledger = self.ledger
        if ledger.finished_job(job.job_id) is not None:
            if resend_finished and (again := ledger.resend_finished(job.job_id, time.monotonic())) is not None:
                self.publish_update(again)
            return
        if ledger.is_queued(job.job_id) or job.job_id == ledger.running:
            return
        refusal = admission_refusal(job)
        if refusal is not None:
            self.dropped_unsigned += 1
            ledger.refused_unsigned(time.monotonic())
            logger.warning("%s: dropping job %s unqueued: %s", self.uid, job.job_id, refusal)
            return
        ledger.admit(job)
        self.sim.job_states[(self.uid, job.job_id)] = "QUEUED"
        if self._worker is None or self._worker.done():
            self._worker = self.sim.loop.create_task(self._work())

    def cancel(self, job_id: str) -> None:
        if self.ledger.cancel(job_id) == "dequeued":
            self.report(job_id, "CANCELED", reason="canceled by the control plane before it started")

    async def _work(self) -> None:
        while (job := self.ledger.take_next()) is not None:
            try:
                await self._execute(job)
            except Exception as exc:
                logger.exception("%s: job %s failed", self.uid, job.job_id)
                self.report(job.job_id, "FAILED", reason=f"agent error: {type(exc).__name__}: {exc}"[:1000])
            finally:
                self.ledger.done_running()

    def _checkpoint(self, job: JobDocument, deadline: float) -> None:
        self.ledger.checkpoint(job, deadline, time.monotonic())

    async def _execute(self, job: JobDocument) -> None:
        deadline = time.monotonic() + job.timeout_seconds
        artifacts = self.sim.artifacts
        try:
            # in the loop, not in a thread: an Ed25519 check takes tens of microseconds, while the hop to a
            # thread and back cost more than the check (a sixth of a simulator in the 10,000-device fan-out);
            # the signing keys are fetched (over HTTP) once per process, or again for a key id not seen yet
            claims = check_envelope(job, device_uid=self.uid, keys=artifacts.keys)
            revoked = self.revoked.setdefault(job.model, set())
            revoked |= set(claims.revoked)
            active = self.active.get(job.model)
            check_version(job, active.version if active else None, claims=claims, revoked=revoked)
            if job.is_pipeline:
                await self._execute_pipeline(job, deadline)
                return
            artifact = Artifact.of(job)
            self.report(job.job_id, "IN_PROGRESS", step="downloading", progress=0.0)
            fetched = artifacts.download(artifact)
            # The bytes travel once; each device still takes as long as its link needs.
            transfer_s = artifact.size * 8 / (self.profile.link_mbps * 1e6)
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < transfer_s:
                await asyncio.sleep(min(1.0, transfer_s - elapsed))
                self._checkpoint(job, deadline)
                self.report(job.job_id, "IN_PROGRESS", step="downloading",
                            progress=min(1.0, (time.monotonic() - started) / transfer_s))  # fmt: skip
            path, size, sha256 = await fetched
            self.report(job.job_id, "IN_PROGRESS", step="downloading", progress=1.0)
            self._checkpoint(job, deadline)
            self.report(job.job_id, "IN_PROGRESS", step="verifying")
            await artifacts.verify(artifact, size, sha256)
            self._checkpoint(job, deadline)
            self.ledger.start_activation()
            self.report(job.job_id, "IN_PROGRESS", step="activating")
            config = self.sim.config
            if self.rng.random() < config.crash_during_activation:
                # Power loss mid-activation: nothing was switched, the previous version comes back.
                self.interrupted = job.job_id
                self.drop()
                return
            bench = await artifacts.bench(artifact, path)
            if self.rng.random() < config.install_failure_rate:
                raise JobRefused("FAILED", "simulated install failure")
            slot: SlotName = "b" if any(a.slot == "a" for a in self.active.values()) else "a"
            self.slots[slot] = SlotContent(model=job.model, version=job.version, sha256=artifact.sha256)
            self.active = {job.model: ActiveModel(version=job.version, slot=slot)}
            self.benches = {artifact.sha256: bench}
            self.report(job.job_id, "SUCCEEDED")  # and the new state
        except JobRefused as refused:
            self.report(job.job_id, refused.status, reason=refused.reason)


# --- the fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preinstalled:
    """A version a device runs from the start, and where its artifact is on this machine."""

    model: str
    version: int
    sha256: str
    path: Path


@dataclass(frozen=True)
class DeviceSpec:
    uid: str
    secret: str
    profile: str
    site: str | None = None  # the site's name, for drift injection
    preinstalled: Preinstalled | None = None


class Simulator:
    def __init__(self, config: SimConfig, devices: list[DeviceSpec], *, offline_fraction: float = 0.0,
                 profiles: dict[str, SimProfile] | None = None) -> None:  # fmt: skip
        self.config = config
        self.address = parse_mqtt_url(config.mqtt_url)
        self.rng = random.Random(config.seed)  # noqa: S311 (simulation, not security)
        self.profiles = profiles or PROFILES
        self.specs = devices
        self.offline_fraction = offline_fraction
        self.drift_active = config.drift_site is not None
        self.job_states: dict[tuple[str, str], str] = {}
        # how often each (job id, seq) was sent: above 1 is a re-send of an unanswered update
        self.updates_sent: Counter[tuple[str, int]] | None = Counter()
        self.refused: set[str] = set()
        self.connected_count = 0
        self.ever_connected: set[str] = set()
        self.all_connected_at: float | None = None
        self.devices: list[SimDevice] = []
        self._stop = asyncio.Event()
        self._in_window: set[str] = set()
        self._workdir = tempfile.TemporaryDirectory(prefix="fogdeck-sim-")

    def on_connected(self, device: SimDevice) -> None:
        self.connected_count += 1
        self.ever_connected.add(device.uid)
        if self.all_connected_at is None and len(self.ever_connected) == len(self.devices):
            self.all_connected_at = time.monotonic()

    def connect_window_release(self, device: SimDevice) -> None:
        if device.uid in self._in_window:
            self._in_window.discard(device.uid)
            self._window.release()

    def on_disconnected(self, _device: SimDevice) -> None:
        self.connected_count -= 1

    def stop(self) -> None:
        self._stop.set()

    def input_shift(self, device: SimDevice) -> float:
        """The mean of a device's synthetic inputs: 0, or the injected shift at the drifting site."""
        config = self.config
        if self.drift_active and config.drift_site is not None and device.site == config.drift_site:
            return config.drift_shift
        return 0.0

    def toggle_drift(self) -> None:
        """Turn the injected drift off (or back on); the simulator's control for "drift stops"."""
        self.drift_active = not self.drift_active
        sys.stderr.write(f"[fogdeck-sim] injected drift on site {self.config.drift_site!r}: "
                         f"{'on' if self.drift_active else 'off'}\n")  # fmt: skip
        sys.stderr.flush()

    def summary(self) -> str:
        states = Counter(self.job_states.values())
        jobs = " ".join(f"{s.lower()}={n}" for s, n in sorted(states.items())) or "none"
        return (f"connected {self.connected_count}/{len(self.devices)} (offline by design "
                f"{len(self.specs) - len(self.devices)}, refused {len(self.refused)}) | jobs: {jobs} | "
                f"updates unanswered {self.unanswered()}, re-sent {self.resent()}")  # fmt: skip

    async def run(self, duration: float | None = None, *, progress: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.driver = PahoDriver(self.loop)
        self.artifacts = Artifacts(SigningKeys(self.config.api_url), Path(self._workdir.name))
        online = [s for s in self.specs if self.rng.random() >= self.offline_fraction]
        for spec in online:
            device_rng = random.Random(self.rng.getrandbits(64))  # noqa: S311
            self.devices.append(
                SimDevice(self, spec.uid, spec.secret, self.profiles[spec.profile], device_rng, spec.site)
            )
        await self._preinstall()
        started = time.monotonic()
        reporter = self.loop.create_task(self._report_progress(started)) if progress else None
        # A window of connections awaiting CONNACK: the blocking TCP connect never waits on a full
        # listen backlog, and the loop keeps answering the brokers in between.
        self._window = asyncio.Semaphore(CONNECT_WINDOW)
        for device in self.devices:
            await self._window.acquire()
            self._in_window.add(device.uid)
            if not device.connect():
                self.connect_window_release(device)
        tasks = [self.loop.create_task(self._telemetry(device)) for device in self.devices]
        tasks.append(self.loop.create_task(self._resend_unanswered()))
        if self.config.flaky > 0:
            tasks.append(self.loop.create_task(self._flap()))
        try:
            remaining = None if duration is None else max(0.0, duration - (time.monotonic() - started))
            await asyncio.wait_for(self._stop.wait(), timeout=remaining)
        except TimeoutError:
            pass
        for task in tasks:
            task.cancel()
        if reporter:
            reporter.cancel()
        await self._shutdown()
        if progress:
            sys.stderr.write(f"\n[fogdeck-sim] done after {time.monotonic() - started:.1f}s: {self.summary()}\n")

    async def _preinstall(self) -> None:
        """Each preinstalled artifact is loaded and timed once; its devices start out running it."""
        specs = {spec.uid: spec for spec in self.specs}
        benches: dict[str, Bench] = {}
        for device in self.devices:
            installed = specs[device.uid].preinstalled
            if installed is None:
                continue
            if installed.sha256 not in benches:
                if hashlib.sha256(installed.path.read_bytes()).hexdigest() != installed.sha256:
                    raise ValueError(f"{installed.path}: its sha256 is not {installed.sha256}")
                benches[installed.sha256] = await asyncio.to_thread(
                    self.artifacts.timings.time, installed.path, model=installed.model, version=installed.version,
                    sha256=installed.sha256,
                )  # fmt: skip
            device.preinstall(installed, benches[installed.sha256])

    async def _telemetry(self, device: SimDevice) -> None:
        interval = self.config.telemetry_interval_s
        await asyncio.sleep(device.rng.uniform(0, interval))  # spread the fleet over the interval
        while True:
            if device.connected:
                device.publish_telemetry(interval)
            await asyncio.sleep(interval)

    async def _resend_unanswered(self) -> None:
        while True:
            await asyncio.sleep(RESEND_TICK_S)
            now = time.monotonic()
            for device in self.devices:
                if device.connected and device.ledger.waiting():  # most devices have nothing waiting
                    device.resend_due(now)

    def unanswered(self) -> int:
        """Job updates the control plane has not answered yet, over the fleet."""
        return sum(len(device.ledger.state.unacked) for device in self.devices)

    def resent(self) -> int:
        """Updates sent more than once (re-sends of unanswered ones, and outcomes re-reported on jobs/get)."""
        return sum(n - 1 for n in (self.updates_sent or {}).values() if n > 1)

    async def _flap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for device in self.devices:
                # `flaky` is the chance a device drops within a minute
                if device.connected and device.rng.random() < self.config.flaky / 60:
                    device.drop()

    async def _report_progress(self, started: float) -> None:
        tty = sys.stderr.isatty()
        reported_all = False
        while True:
            await asyncio.sleep(1.0 if tty else 5.0)
            line = f"[fogdeck-sim] t={time.monotonic() - started:.0f}s {self.summary()}"
            sys.stderr.write(f"\r{line}\033[K" if tty else f"{line}\n")
            if self.all_connected_at is not None and not reported_all:
                reported_all = True
                sys.stderr.write(f"\n[fogdeck-sim] all {len(self.devices)} devices connected in "
                                 f"{self.all_connected_at - started:.2f}s\n")  # fmt: skip
            sys.stderr.flush()

    async def _shutdown(self) -> None:
        """Every connected device says offline (retained) and disconnects cleanly."""
        infos = []
        for device in self.devices:
            device.stopping = True
            if device.connected:
                infos.append(device.publish_status_offline())
        deadline = time.monotonic() + 10
        while any(not i.is_published() for i in infos) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for device in self.devices:
            device.client.disconnect()
        await asyncio.sleep(0.1)  # let the DISCONNECT packets be written by the loop's writers
        self.driver.close()
        self._workdir.cleanup()


# --- devices: provisioned through the API, or from a file -----------------------------------------


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base.rstrip("/"), token

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        url = path if path.startswith(("http://", "https://")) else f"{self.base}{path}"
        if not url.startswith(("http://", "https://")):
            raise RuntimeError(f"refusing to call {url[:100]!r}: only http(s)")
        request = urllib.request.Request(  # noqa: S310 (checked to be http(s) above)
            url,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json",
                     "Accept": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (checked above)
                return json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise RuntimeError(f"{method} {url}: HTTP {exc.code}: {detail}") from None

    def list_all(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        url: str | None = path
        while url:
            page = self.call("GET", url)
            if isinstance(page, list):
                return items + page
            items += page.get("results", [])
            url = page.get("next")
        return items


def fleet_plan(count: int, seed: int | None, prefix: str = "sim") -> list[tuple[str, SimProfile]]:
    """Deterministic uids and profiles; fog/cloud devices first so edge devices can name a parent."""
    rng = random.Random(seed if seed is not None else 0)  # noqa: S311
    names = list(PROFILES)
    chosen = rng.choices(names, weights=[PROFILES[n].weight for n in names], k=count)
    order = {"cloud": 0, "fog": 1, "edge": 2}
    chosen.sort(key=lambda n: order[PROFILES[n].tier])
    return [(f"{prefix}-{i:05d}", PROFILES[name]) for i, name in enumerate(chosen)]


def provision(api: Api, count: int, site_name: str, seed: int | None) -> list[DeviceSpec]:
    sites = api.list_all("/api/v1/sites/?page_size=1000")
    site = next((s for s in sites if s.get("name") == site_name), None)
    if site is None:
        site = api.call("POST", "/api/v1/sites/", {"name": site_name, "region": "simulated",
                                                    "latitude": 52.52, "longitude": 13.405})  # fmt: skip
    existing = {d["uid"]: d for d in api.list_all(f"/api/v1/devices/?tag={SIM_TAG}&page_size=1000")}
    specs: list[DeviceSpec] = []
    gateways: list[int] = []
    for index, (uid, profile) in enumerate(fleet_plan(count, seed)):
        device = existing.get(uid)
        if device is None:
            parent = gateways[index % len(gateways)] if profile.tier == "edge" and gateways else None
            device = api.call("POST", "/api/v1/devices/", {
                "uid": uid, "name": f"Simulated {profile.name} {index}", "site": site["id"], "tier": profile.tier,
                "parent": parent, "arch": profile.arch, "cpu": profile.cpu, "memory_mb": profile.memory_mb,
                "accelerator": profile.accelerator,
                "runtimes": [{"name": n, "version": v} for n, v in profile.runtimes],
                "tags": [SIM_TAG, profile.name],
            })  # fmt: skip
        if profile.tier == "fog":
            gateways.append(device["id"])
        credentials = api.call("POST", f"/api/v1/devices/{device['id']}/credentials/", {})
        specs.append(DeviceSpec(uid=uid, secret=credentials["secret"], profile=profile.name, site=site_name))
        if index % 100 == 99:
            sys.stderr.write(f"[fogdeck-sim] provisioned {index + 1}/{count}\n")
    return specs


def _preinstalled(row: dict[str, Any], path: Path) -> Preinstalled | None:
    entry = row.get("preinstalled")
    if not entry:
        return None
    try:
        artifact = Path(entry["path"])
        if not artifact.is_absolute():
            artifact = path.parent / artifact
        return Preinstalled(str(entry["model"]), int(entry["version"]), str(entry["sha256"]), artifact)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path}: {row.get('uid')}: preinstalled needs model, version, sha256 and path ({exc})"
        ) from None


def read_devices_file(path: Path) -> list[DeviceSpec]:
    """`[{"uid", "secret", "profile"?, "site"?, "preinstalled"?}]` (or `{"devices": [...]}`); a missing profile
    is drawn from the mix; `preinstalled` is `{"model", "version", "sha256", "path"}` (a path relative to the file)."""
    data = json.loads(path.read_text())
    rows = data["devices"] if isinstance(data, dict) else data
    plan = fleet_plan(len(rows), 0)
    specs = []
    for row, (_, fallback) in zip(rows, plan, strict=True):
        profile = row.get("profile") or fallback.name
        if profile not in PROFILES:
            raise ValueError(f"{path}: unknown profile {profile!r} for {row.get('uid')}")
        site = row.get("site")
        specs.append(
            DeviceSpec(
                uid=row["uid"], secret=row["secret"], profile=profile, site=str(site) if site else None,
                preinstalled=_preinstalled(row, path),
            )
        )  # fmt: skip
    return specs


def raise_open_file_limit() -> int:
    """One socket per device: lift the soft RLIMIT_NOFILE to the hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fogdeck-sim", description="Simulate a fleet of Fogdeck devices")
    p.add_argument("--api", required=True, help="control plane base URL (REST API and signing keys)")
    p.add_argument("--mqtt", required=True, help="broker URL, mqtt://host:1883")
    p.add_argument("--token", help="admin API token (needed with --provision)")
    p.add_argument("--devices", type=int, required=True, help="number of devices")
    p.add_argument("--provision", action="store_true", help="create or reuse the devices through the API")
    p.add_argument("--devices-file", type=Path, help="JSON [{uid, secret, profile}] (without --provision); "
                   "with --provision, where to write the provisioned devices")  # fmt: skip
    p.add_argument("--site", default=DEFAULT_SITE, help=f"site for provisioned devices (default {DEFAULT_SITE!r})")
    p.add_argument("--offline-fraction", type=float, default=0.0, help="share of devices that never connect")
    p.add_argument("--install-failure-rate", type=float, default=0.0, help="share of installs reported FAILED")
    p.add_argument(
        "--crash-during-activation",
        type=float,
        default=0.0,
        help="share of installs where the device drops mid-activation and comes back on the old version",
    )
    p.add_argument("--flaky", type=float, default=0.0, help="chance per device per minute of a dropped connection")
    p.add_argument("--profile-file", type=Path, help="JSON overrides of speed_factor/link_mbps per profile "
                   'and per "model@version"')  # fmt: skip
    p.add_argument("--telemetry-interval", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--rps", type=float, default=2.0, help="simulated inference requests per second per device")
    p.add_argument("--duration", type=float, help="seconds to run (default: until SIGINT/SIGTERM)")
    p.add_argument("--drift-site", help="inject input drift on the devices of this site (SIGUSR1 toggles it)")
    p.add_argument("--drift-shift", type=float, default=1.5, help="shift added to every input feature there "
                   "(default 1.5: about 4 noise standard deviations of the sample inputs)")  # fmt: skip
    p.add_argument(
        "--dialect",
        choices=[aws_jobs.DIALECT_FOGDECK, aws_jobs.DIALECT_AWS],
        default=aws_jobs.DIALECT_FOGDECK,
        help="the jobs API the devices speak (default fogdeck; aws-iot-jobs: the AWS IoT Jobs MQTT API)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (the demo prints its own)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("offline_fraction", "install_failure_rate", "crash_during_activation", "flaky"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.devices < 1 or args.telemetry_interval <= 0:
        parser.error("--devices must be ≥ 1 and --telemetry-interval > 0")
    try:
        parse_mqtt_url(args.mqtt)
        profiles = load_profile_overrides(args.profile_file) if args.profile_file else PROFILES
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    limit = raise_open_file_limit()
    if limit < args.devices + 64:
        sys.stderr.write(f"[fogdeck-sim] warning: open-file limit {limit} is low for {args.devices} devices\n")
    if args.provision:
        if not args.token:
            parser.error("--provision needs --token")
        specs = provision(Api(args.api, args.token), args.devices, args.site, args.seed)
        if args.devices_file:
            rows = [{"uid": s.uid, "secret": s.secret, "profile": s.profile, "site": s.site} for s in specs]
            args.devices_file.write_text(json.dumps(rows, indent=1))
            args.devices_file.chmod(0o600)
    elif args.devices_file:
        specs = read_devices_file(args.devices_file)[: args.devices]
    else:
        parser.error("give --provision (with --token) or --devices-file")
    config = SimConfig(
        api_url=args.api,
        mqtt_url=args.mqtt,
        telemetry_interval_s=args.telemetry_interval,
        requests_per_s=args.rps,
        install_failure_rate=args.install_failure_rate,
        crash_during_activation=args.crash_during_activation,
        flaky=args.flaky,
        seed=args.seed,
        drift_site=args.drift_site,
        drift_shift=args.drift_shift if args.drift_site else 0.0,
        dialect=args.dialect,
    )
    simulator = Simulator(config, specs, offline_fraction=args.offline_fraction, profiles=profiles)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, simulator.stop)
        loop.add_signal_handler(signal.SIGUSR1, simulator.toggle_drift)
        await simulator.run(args.duration, progress=not args.quiet)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
