"""The MQTT bridge: one long-running process that applies every device message to the database.

paho's network thread only enqueues; one worker thread validates and applies messages, batches
telemetry, acknowledges each QoS 1 message after it was applied (manual acks, persistent session: a
bridge that dies mid-batch gets the unacknowledged messages again), drains the outbox and flushes the
rejection counters. Bad input is dropped, counted by reason and logged; the bridge never dies on it.
"""

from __future__ import annotations

import functools
import logging
import queue
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.db.utils import InterfaceError, OperationalError

from audit.actors import Actor
from fleet.exceptions import DeviceRevoked
from fleet.models import Device
from fleet.services import device_mark_seen, device_report_state, devices_touch
from protocol.device_topics import BRIDGE_SUBSCRIPTIONS, QOS, parse_topic
from protocol.messages import (
    ProtocolError,
    parse_job_update,
    parse_jobs_get,
    parse_state,
    parse_status,
    parse_telemetry,
)
from telemetry.services import TelemetryEnvelope, telemetry_ingest_batch

from .models import RejectedMessageCount
from .outbox import outbox_drain

logger = logging.getLogger("fogdeck.bridge")

DEVICE_CACHE_SECONDS = 5.0
REFRESH_CHUNK = 5000  # uids per query when the device directory re-reads the devices it has seen
IDLE_FLUSH_SECONDS = 0.05


class Rejected(Exception):
    """A message the bridge drops; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass
class BridgeStats:
    applied: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    last_detail: dict[str, tuple[str, str]] = field(default_factory=dict)


class DeviceDirectory:
    """uid → revoked?, for the devices this bridge has seen, re-read in one query every DEVICE_CACHE_SECONDS.

    A device's first message is checked against the database on its own (a new or just-revoked device is
    never judged from an old snapshot); after that its answer may be up to DEVICE_CACHE_SECONDS old. One
    query per uid per 5 s meant one query per message for a fleet reporting less often than that (10,000
    devices every 10 s: 1,000 queries a second, half the bridge's time); now it is one query per 5,000 seen
    devices per 5 s.
    """

    def __init__(self) -> None:
        self._revoked: dict[str, bool] = {}
        self._loaded_at = time.monotonic()

    def check(self, uid: str) -> None:
        now = time.monotonic()
        if self._revoked and now - self._loaded_at > DEVICE_CACHE_SECONDS:
            seen = list(self._revoked)  # only these: the inventory may be far larger than the connected fleet
            self._revoked = {}
            for start in range(0, len(seen), REFRESH_CHUNK):
                rows = Device.objects.filter(uid__in=seen[start : start + REFRESH_CHUNK])
                self._revoked.update((u, at is not None) for u, at in rows.values_list("uid", "revoked_at"))
            self._loaded_at = now
        revoked = self._revoked.get(uid)
        if revoked is None:
            row = Device.objects.filter(uid=uid).values_list("revoked_at").first()
            if row is None:
                raise Rejected("unknown_device", uid)
            revoked = self._revoked[uid] = row[0] is not None
        if revoked:
            raise Rejected("revoked_device", uid)

    def forget(self, uid: str) -> None:
        self._revoked.pop(uid, None)


JobHandler = Callable[[str, bytes, str | None], None]


class Bridge:
    def __init__(
        self,
        *,
        client_id: str = "fogdeck-bridge",
        telemetry_flush_seconds: float = 1.0,
        telemetry_batch_size: int = 1000,
        counters_flush_seconds: float = 5.0,
        outbox_poll_seconds: float = 0.5,
    ) -> None:
        self.client_id = client_id
        self.telemetry_flush_seconds = telemetry_flush_seconds
        self.telemetry_batch_size = telemetry_batch_size
        self.counters_flush_seconds = counters_flush_seconds
        self.outbox_poll_seconds = outbox_poll_seconds
        self.stats = BridgeStats()
        self.connected = threading.Event()
        self._inbox: queue.Queue[Incoming] = queue.Queue(maxsize=200_000)
        self._stop = threading.Event()
        self._devices = DeviceDirectory()
        self._telemetry: list[tuple[Incoming, TelemetryEnvelope]] = []
        self._unflushed: Counter[str] = Counter()
        self._client = self._make_client()
        self._job_handlers: dict[str, JobHandler] = {}
        from deployments.bridge_handlers import job_handlers

        self._job_handlers = job_handlers(self)

    # --- MQTT plumbing -------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # the broker queues QoS 1 device messages while the bridge is down
            manual_ack=True,
        )
        if settings.MQTT_USERNAME:
            client.username_pw_set(settings.MQTT_USERNAME, settings.MQTT_PASSWORD or None)
        if settings.MQTT_TLS:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=15)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            logger.error("broker refused the bridge: %s", reason)
            return
        group = settings.MQTT_BRIDGE_SHARED_GROUP
        topics = [f"$share/{group}/{t}" if group else t for t in BRIDGE_SUBSCRIPTIONS]
        client.subscribe([(topic, QOS) for topic in topics])
        self.connected.set()
        logger.info("bridge connected to %s:%s and subscribed", settings.MQTT_HOST, settings.MQTT_PORT)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            logger.warning("bridge disconnected (%s); paho reconnects", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._inbox.put(Incoming(message.topic, bytes(message.payload), message.mid, message.qos))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Publish and wait for the broker's acknowledgement (False when disconnected or timed out)."""
        if not self.connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout=5)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def _ack(self, incoming: Incoming) -> None:
        if incoming.qos > 0:
            self._client.ack(incoming.mid, incoming.qos)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._client.connect_async(settings.MQTT_HOST, settings.MQTT_PORT, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Work until `stop()`; survives broker restarts (paho reconnects) and database hiccups."""
        self.start()
        next_flush = time.monotonic() + self.telemetry_flush_seconds
        next_counters = time.monotonic() + self.counters_flush_seconds
        next_outbox = time.monotonic()
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(next_flush, next_outbox) - time.monotonic())
                if self._telemetry:
                    # Telemetry is acknowledged only once stored, and the broker stops sending when its
                    # in-flight window of unacknowledged messages is full: flush as soon as it goes quiet.
                    timeout = min(timeout, IDLE_FLUSH_SECONDS)
                try:
                    incoming = self._inbox.get(timeout=timeout)
                except queue.Empty:
                    incoming = None
                if incoming is not None:
                    self._guarded(functools.partial(self.handle, incoming))
                now = time.monotonic()
                idle = incoming is None and bool(self._telemetry)
                if idle or now >= next_flush or len(self._telemetry) >= self.telemetry_batch_size:
                    self._guarded(self.flush_telemetry)
                    next_flush = now + self.telemetry_flush_seconds
                if now >= next_outbox:
                    self._guarded(lambda: outbox_drain(self.publish))
                    next_outbox = now + self.outbox_poll_seconds
                if now >= next_counters:
                    self._guarded(self.flush_counters)
                    next_counters = now + self.counters_flush_seconds
        finally:
            self._guarded(self.flush_telemetry)
            self._guarded(self.flush_counters)
            self._client.disconnect()
            self._client.loop_stop()
            connection.close()  # this thread's connection; it must not outlive the bridge

    def _guarded(self, work: Callable[[], object]) -> None:
        """Run one unit of work; a lost database connection is reopened and the unit retried once."""
        for attempt in (1, 2):
            try:
                work()
                return
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database error in the bridge (attempt %s): %s", attempt, exc)
                close_old_connections()
                connection.close()
                time.sleep(0.5 * attempt)
            except Exception:
                logger.exception("bridge work failed")
                self.stats.rejected["handler_error"] += 1
                self._unflushed["handler_error"] += 1
                return

    # --- applying messages ---------------------------------------------------------------------
    def reject(self, incoming: Incoming, reason: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        self._unflushed[reason] += 1
        self.stats.last_detail[reason] = (incoming.topic[:300], detail[:500])
        logger.warning("rejected message on %s: %s %s", incoming.topic[:200], reason, detail[:200])
        self._ack(incoming)

    def handle(self, incoming: Incoming) -> None:
        try:
            uid, kind, job_id = parse_topic(incoming.topic)
            self._devices.check(uid)
            self._apply(incoming, uid, kind, job_id)
        except ProtocolError as exc:
            self.reject(incoming, exc.reason_code, exc.detail)
        except Rejected as exc:
            self.reject(incoming, exc.reason, exc.detail)
        except DeviceRevoked as exc:
            self._devices.forget(str(exc))
            self.reject(incoming, "revoked_device", str(exc))

    def _apply(self, incoming: Incoming, uid: str, kind: str, job_id: str | None) -> None:
        actor = Actor.device(uid)
        if kind == "telemetry":
            message = parse_telemetry(incoming.payload)
            self._telemetry.append((incoming, TelemetryEnvelope(uid, message)))
            return  # acknowledged when its batch is stored
        if kind == "status":
            status = parse_status(incoming.payload)
            device_mark_seen(actor=actor, uid=uid, online=status.state == "online")
        elif kind == "state":
            state = parse_state(incoming.payload)
            device_report_state(
                actor=actor, uid=uid, state=state.model_dump(mode="json"), agent_version=state.agent_version
            )
        elif kind == "jobs_get":
            parse_jobs_get(incoming.payload)
            self._job_handlers["jobs_get"](uid, incoming.payload, None)
        elif kind == "job_update":
            parse_job_update(incoming.payload)
            self._job_handlers["job_update"](uid, incoming.payload, job_id)
        self.stats.applied[kind] += 1
        self._ack(incoming)

    def flush_telemetry(self) -> None:
        if not self._telemetry:
            return
        batch, self._telemetry = self._telemetry, []
        try:
            with transaction.atomic():
                stored = telemetry_ingest_batch([envelope for _, envelope in batch])
                devices_touch({envelope.uid for _, envelope in batch})
        except Exception:
            self._telemetry = batch + self._telemetry  # nothing half-written: retried as a whole
            raise
        self.stats.applied["telemetry"] += len(batch)
        self.stats.applied["telemetry_samples"] += stored
        for incoming, _ in batch:
            self._ack(incoming)

    def flush_counters(self) -> None:
        if not self._unflushed:
            return
        pending, self._unflushed = self._unflushed, Counter()
        try:
            with transaction.atomic():
                for reason, count in pending.items():
                    topic, detail = self.stats.last_detail.get(reason, ("", ""))
                    updated = RejectedMessageCount.objects.filter(reason=reason).update(
                        count=F("count") + count, last_detail=detail, last_topic=topic
                    )
                    if not updated:
                        RejectedMessageCount.objects.create(
                            reason=reason, count=count, last_detail=detail, last_topic=topic
                        )
        except Exception:
            self._unflushed.update(pending)
            raise
