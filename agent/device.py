"""The device agent: one MQTT session, the job worker, the local inference API and telemetry.

Threads: paho's network loop (callbacks), the job worker, the HTTP server, and a telemetry timer;
they share the `StateStore` (locked) and the current `LoadedModel` (swapped by one assignment).
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import AGENT_VERSION
from agent.aws_dialect import AwsJobsLink
from agent.gateway import ArtifactCache, GatewayServer
from agent.http_api import MAX_BODY_BYTES, InferenceServer
from agent.inference import LoadedModel
from agent.jobs import JobRunner, slot_path
from agent.ledger import PROGRESS_INTERVAL_S
from agent.mqtt_url import parse_mqtt_url
from agent.pipeline import LoadedPipeline, load_slot
from agent.policy import SigningKeys
from agent.state import StateStore
from agent.telemetry import TelemetryRecorder
from protocol import aws_jobs
from protocol import device_topics as topics
from protocol.messages import (
    CAPABILITY_ACKED_UPDATES,
    CAPABILITY_ARTIFACT_MIRRORS,
    CAPABILITY_SIGNED_JOBS,
    DEFAULT_HIST_EDGES,
    DeviceState,
    Hardware,
    JobUpdate,
    ProtocolError,
    Runtime,
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
from protocol.messages import JobsGet as JobsGetMessage

logger = logging.getLogger("fogdeck.agent")

QOS = 1
KEEPALIVE_S = 30
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
MAX_QUEUED_MESSAGES = 1000  # QoS 1 publishes kept while the broker is away
RESEND_TICK_S = 1.0  # how often unanswered job updates are looked at (each has its own backoff, agent/ledger.py)


@dataclass(frozen=True)
class GatewayConfig:
    """`--gateway`: serve an artifact cache to the edge devices behind this one (agent/gateway.py)."""

    cache_dir: Path
    max_bytes: int
    host: str = "127.0.0.1"
    port: int = 8700
    advertise_url: str | None = None  # what devices connect to, when not http://host:port
    stats_token: str | None = None  # GET /v1/stats needs it as a bearer token; None refuses /v1/stats


@dataclass(frozen=True)
class AgentConfig:
    api_url: str
    mqtt_url: str
    device_id: str
    secret: str
    state_dir: Path
    http_host: str
    http_port: int
    hardware: Hardware
    runtimes: tuple[Runtime, ...]
    telemetry_interval_s: float = 60.0
    gateway: GatewayConfig | None = None
    hist_edges: tuple[float, ...] = DEFAULT_HIST_EDGES  # input histogram bin edges (drift detection)
    # how applications reach POST /infer from outside (a NAT, a proxy); default: http://<http_host>:<port>/infer
    public_url: str | None = None
    http_token: str | None = None  # when set, POST /infer needs `Authorization: Bearer <it>`
    http_max_body_bytes: int = MAX_BODY_BYTES
    dialect: str = (
        aws_jobs.DIALECT_FOGDECK
    )  # or aws-iot-jobs: jobs over the AWS IoT Jobs MQTT API (agent/aws_dialect.py)


class DeviceAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.uid = config.device_id
        # the AWS dialect's updates have no Fogdeck answers and no re-sends (`due`): none is held back
        aws = config.dialect == aws_jobs.DIALECT_AWS
        self.store = StateStore(config.state_dir, progress_interval_s=0.0 if aws else PROGRESS_INTERVAL_S)
        self.telemetry = TelemetryRecorder(hist_edges=config.hist_edges)
        self.model: LoadedModel | LoadedPipeline | None = None
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._publish_lock = threading.Lock()  # one state/status snapshot at a time, in order
        keys = SigningKeys(config.api_url)
        self.runner = JobRunner(
            store=self.store,
            keys=keys,
            device_uid=self.uid,
            publish_update=self._publish_update,
            on_activated=self._serve,
            on_state_changed=self.publish_state,
        )
        self._resend_thread: threading.Thread | None = None
        self.http = InferenceServer(
            host=config.http_host,
            port=config.http_port,
            current_model=lambda: self.model,
            telemetry=self.telemetry,
            health=lambda: {"mqtt_connected": self.connected.is_set(), "device_id": self.uid},
            token=config.http_token,
            max_body_bytes=config.http_max_body_bytes,
        )
        self.gateway: GatewayServer | None = None
        if config.gateway is not None:
            self.gateway = GatewayServer(
                cache=ArtifactCache(config.gateway.cache_dir, max_bytes=config.gateway.max_bytes),
                gateway_uid=self.uid,
                public_key=keys.public_key,
                host=config.gateway.host,
                port=config.gateway.port,
                advertise_url=config.gateway.advertise_url,
                stats_token=config.gateway.stats_token,
            )
        self._client = self._make_client()
        self._telemetry_thread: threading.Thread | None = None
        self.aws = (
            AwsJobsLink(self.uid, lambda topic, payload: self._client.publish(topic, payload, qos=QOS))
            if config.dialect == aws_jobs.DIALECT_AWS
            else None
        )

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._load_active_model()
        self.http.start()
        logger.info("serving inference on http://%s:%s", self.config.http_host, self.http.port)
        gateway_config = self.config.gateway
        if self.gateway is not None and gateway_config is not None:  # both or neither (__init__)
            self.gateway.start()
            logger.info("serving the artifact cache at %s", self.gateway.url)
            if gateway_config.host in ("127.0.0.1", "::1", "localhost") and not gateway_config.advertise_url:
                logger.warning(
                    "the artifact cache listens on %s only: edge devices cannot reach it (they fall back to the cloud)."
                    " Set --cache-host to the LAN address they use.",
                    gateway_config.host,
                )
        self.runner.start()
        address = parse_mqtt_url(self.config.mqtt_url)
        if address.tls:
            self._client.tls_set()
        # connect_async + loop_start: the loop retries with backoff until the broker is there.
        self._client.connect_async(address.host, address.port, keepalive=KEEPALIVE_S)
        self._client.loop_start()
        self._telemetry_thread = threading.Thread(
            target=self._telemetry_loop, name="fogdeck-agent-telemetry", daemon=True
        )
        self._telemetry_thread.start()
        self._resend_thread = threading.Thread(target=self._resend_loop, name="fogdeck-agent-resend", daemon=True)
        self._resend_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say offline (retained), disconnect cleanly, stop serving."""
        self._stopping.set()
        self.runner.stop(timeout)
        if self.connected.is_set():
            info = self._client.publish(topics.status_topic(self.uid), self._status("offline"), qos=QOS, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                logger.warning("offline status not confirmed before shutdown")
        self._client.disconnect()
        self._client.loop_stop()
        self.http.stop()
        if self.gateway is not None:
            self.gateway.stop()

    def _load_active_model(self) -> None:
        slots = self.store.slots()
        for name, entry in self.store.active().items():
            content = getattr(slots, entry.slot)
            try:
                path = slot_path(self.store.dir, entry.slot)
                self.model = load_slot(
                    path.parent, model=name, version=entry.version, sha256=content.sha256
                ) or LoadedModel(path, model=name, version=entry.version, sha256=content.sha256)
                logger.info("serving %s v%s from slot %s", name, entry.version, entry.slot)
            except Exception:
                logger.exception("active model %s v%s in slot %s does not load", name, entry.version, entry.slot)

    def _serve(self, loaded: LoadedModel | LoadedPipeline) -> None:
        self.model = loaded
        logger.info("now serving %s v%s", loaded.model, loaded.version)

    # --- MQTT -----------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.uid,
            clean_session=False,  # the broker queues job notifications while we are away
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(self.uid, self.config.secret)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # paho's callbacks, CallbackAPIVersion.VERSION2 signatures (paho.mqtt.client.CallbackOnConnect_v2, …)

    def _on_pre_connect(self, client: mqtt.Client, _userdata: Any) -> None:
        # The will's timestamp is the moment this session started.
        client.will_set(topics.status_topic(self.uid), self._status("offline"), qos=QOS, retain=True)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.error("MQTT connection refused: %s", reason_code)
            return
        logger.info("connected to MQTT as %s", self.uid)
        self.connected.set()
        client.publish(topics.status_topic(self.uid), self._status("online"), qos=QOS, retain=True)
        self.publish_state()
        if self.aws is not None:  # start-next plays the part of jobs/get (no Fogdeck answers, no re-sends)
            client.subscribe(self.aws.subscriptions())
            self.aws.start_next()
            return
        client.subscribe(
            [
                (topics.jobs_notify_topic(self.uid), QOS),
                (topics.jobs_get_accepted_topic(self.uid), QOS),
                (topics.job_update_answers_filter(self.uid), QOS),
            ]
        )
        # After SUBSCRIBE on the same connection, so the reply cannot overtake the subscription.
        self._ask_for_jobs()
        for update in self.runner.unanswered():  # a lost connection may have taken them (or their answers)
            self._publish_update(update)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            logger.warning("MQTT connection lost (%s); reconnecting", reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if self.aws is not None and self.aws.handles(message.topic):
                self.aws.on_message(
                    message.topic, message.payload, submit=lambda job: self.runner.submit(job, resend_finished=True),
                    cancel=self.runner.cancel, in_hand=self.runner.held_job_ids,
                )  # fmt: skip
            elif message.topic == topics.jobs_notify_topic(self.uid):
                notify = parse_jobs_notify(message.payload)
                for job in notify.jobs:
                    self.runner.submit(job)
                for job_id in notify.cancel:
                    self.runner.cancel(job_id)
            elif message.topic == topics.jobs_get_accepted_topic(self.uid):
                unsigned_before = self.runner.dropped_unsigned
                for job in parse_jobs_get_accepted(message.payload).jobs:
                    self.runner.submit(job, resend_finished=True)
                if self.runner.dropped_unsigned == unsigned_before:
                    self.runner.jobs_reply_signed()
            elif answer := topics.job_answer_of(self.uid, message.topic):
                if answer[1] == "accepted":
                    self.runner.accepted(parse_job_update_accepted(message.payload))
                else:
                    self.runner.rejected(parse_job_update_rejected(message.payload))
            else:
                logger.warning("ignoring message on unexpected topic %s", message.topic)
        except ProtocolError as exc:
            logger.warning("dropping message on %s: %s", message.topic, exc)
        except Exception:  # a bad message must never kill paho's network thread
            logger.exception("error handling message on %s", message.topic)

    # --- publishing -----------------------------------------------------------------------------

    def _status(self, state: DeviceState) -> bytes:
        return encode(StatusMessage(schema_version=1, state=state, agent_version=AGENT_VERSION, ts=utc_now()))

    def state_message(self) -> StateMessage:
        return StateMessage(
            schema_version=1,
            ts=utc_now(),
            agent_version=AGENT_VERSION,
            hardware=self.config.hardware,
            runtimes=list(self.config.runtimes),
            slots=self.store.slots(),
            active=self.store.active(),
            capabilities=[CAPABILITY_ARTIFACT_MIRRORS, CAPABILITY_SIGNED_JOBS, CAPABILITY_ACKED_UPDATES],
            cache_url=self.gateway.url if self.gateway is not None else None,
            inference_url=self.inference_url,
            recent_jobs=self.runner.recent_jobs() or None,
        )

    @property
    def inference_url(self) -> str:
        if self.config.public_url:
            return self.config.public_url
        host = self.config.http_host
        if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - naming the wildcard, not binding it
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.http.port}/infer"

    def publish_state(self) -> None:
        with self._publish_lock:
            payload = encode(self.state_message())
            self._client.publish(topics.state_topic(self.uid), payload, qos=QOS, retain=True)

    def _publish_update(self, update: JobUpdate) -> None:
        logger.info(
            "job %s seq %s: %s %s %s", update.job_id, update.seq, update.status, update.step or "", update.reason or ""
        )
        if self.aws is None:
            self._client.publish(topics.job_update_topic(self.uid, update.job_id), encode(update), qos=QOS)
            return
        self.aws.publish_update(update)
        if update.status in aws_jobs.TERMINAL_STATUSES:
            self.aws.start_next()  # the next pending execution, if any

    def _ask_for_jobs(self) -> None:
        request = JobsGetMessage(schema_version=1, request_id=secrets.token_hex(8))
        self._client.publish(topics.jobs_get_topic(self.uid), encode(request), qos=QOS)

    def _resend_loop(self) -> None:
        """Send each unanswered job update again when its backoff is over (while connected); after a job
        came unsigned, report the state and ask for the jobs again (agent/ledger.py, REASK_MIN_S)."""
        while not self._stopping.wait(RESEND_TICK_S):
            if self.connected.is_set() and self.aws is None:  # the AWS dialect's answers are its own
                for update in self.runner.due():
                    self._publish_update(update)
                if self.runner.reask_due():
                    self.publish_state()
                    self._ask_for_jobs()

    def _telemetry_loop(self) -> None:
        interval = self.config.telemetry_interval_s
        while not self._stopping.wait(interval):
            message = TelemetryMessage(
                schema_version=1, ts=utc_now(), interval_s=interval, samples=self.telemetry.drain()[:256]
            )
            self._client.publish(topics.telemetry_topic(self.uid), encode(message), qos=QOS)
