"""The MQTT bridge: one long-running process that applies every device message to the database.

paho's network thread only enqueues. The bridge's main thread validates messages and batches them:
status, state, jobs/get and job updates are applied in one transaction per batch (at most
`device_batch_seconds` or `device_batch_size` messages; job updates folded per job), telemetry is handed
in batches to a writer thread that copies it in while the next batch is parsed. A telemetry batch goes
to a writer as soon as one is idle and nothing more waits in the inbox (`telemetry_flush_due`): a lone
message is stored at once, and under load batches grow while the writers are busy. Every QoS 1 message is
acknowledged only after its batch committed (manual acks, persistent session: a bridge that dies
mid-batch gets the unacknowledged messages again). The main thread also drains the outbox and flushes
the rejection counters. Bad input is dropped, counted by reason and logged; the bridge never dies on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import queue
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.db.utils import IntegrityError, InterfaceError, OperationalError
from django.utils import timezone

from audit.services import audit_deferred
from core import heartbeat, metrics
from fleet.models import Device
from fleet.services import devices_lock, devices_mark_seen_many, devices_report_state_many, devices_touch
from outbox.models import RejectedMessageCount
from protocol import aws_jobs
from protocol.device_topics import BRIDGE_SUBSCRIPTIONS, QOS, parse_topic
from protocol.messages import (
    JobsGet,
    JobUpdate,
    ProtocolError,
    StateMessage,
    parse_job_update,
    parse_jobs_get,
    parse_state,
    parse_status,
    parse_telemetry,
)
from protocol.topics import SERVICE_CLIENT_ID_PREFIX, is_service_client_id
from telemetry.services import DeviceProfile, TelemetryEnvelope, telemetry_ingest_batch

from .outbox import outbox_drain

logger = logging.getLogger("fogdeck.bridge")

DEVICE_CACHE_SECONDS = 5.0
FULL_RELOAD_SECONDS = 120.0
_DIRECTORY_COLUMNS = ("uid", "revoked_at", "id", "site_id", "arch", "cpu", "accelerator")
REFRESH_CHUNK = 5000  # uids per query when the device directory re-reads the devices it has seen
IDLE_FLUSH_SECONDS = 0.05  # device messages: flushed once the inbox has been quiet this long
HEARTBEAT_SECONDS = 5.0  # core/heartbeat.py: the compose healthcheck allows 60 s
# A state's `recent_jobs` are reconciled this long after it arrived: a device publishes its state right
# after its final update, and with bridges sharing the device topics the two often reach different
# bridges; applied at once, the state raced the update for the job's row lock (and won half the time).
# By then a delivered update has long committed, and only results that were really lost remain.
RECONCILE_DELAY_SECONDS = 5.0
RECONCILE_POLL_SECONDS = 0.5
DRAIN_AT_ONCE = 500  # inbox messages handled between two looks at the batch clocks
# Telemetry refreshes a device's last_seen at most this often (status and state messages set it exactly);
# devices count as stale only after DEVICE_STALE_AFTER_SECONDS (120 s by default).
TOUCH_EVERY_SECONDS = 10.0


_PARSERS: dict[str, Callable[[bytes], Any]] = {
    "status": parse_status,
    "state": parse_state,
    "jobs_get": parse_jobs_get,
    "job_update": parse_job_update,
}


def telemetry_flush_due(
    waiting: int, *, batch_size: int, age: float, max_age: float, more_waiting: bool, writer_idle: bool
) -> bool:
    """Whether the telemetry batch being gathered goes to a writer now (the adaptive flush).

    A full batch, or one whose first message has waited `max_age` (`--telemetry-flush-ms`), always goes.
    A smaller one goes as soon as a writer is idle and nothing more waits in the inbox: with nobody busy,
    waiting for more only adds latency (a lone message is stored at once). Under load the writers are
    busy, so messages gather until one is free: batches grow with the load, and so does the throughput.
    """
    if waiting <= 0:
        return False
    if waiting >= batch_size or age >= max_age:
        return True
    return writer_idle and not more_waiting


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


_WAKE = Incoming("", b"", 0, 0)  # put in the inbox to wake the main thread; not a message


@dataclass
class BridgeStats:
    applied: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    last_detail: dict[str, tuple[str, str]] = field(default_factory=dict)


class AckingClient(mqtt.Client):
    """paho's client with `ack_many`: the PUBACKs of a whole batch in one queued write.

    paho's `ack()` queues one 4-byte packet and wakes its network thread (a write to its socket pair)
    per message: for a 500-message batch, 500 wake-ups and 500 `send` calls, which took a tenth of the
    bridge's time in the ingest profile. MQTT lets control packets follow each other in the stream, so
    the batch's PUBACKs go out as one buffer. Uses paho's internal packet queue (`paho-mqtt<3` is pinned).
    """

    def ack_many(self, mids: Iterable[int]) -> None:
        packet = b"".join(struct.pack("!BBH", mqtt.PUBACK, 2, mid) for mid in mids)
        if packet:
            self._packet_queue(mqtt.PUBACK, packet, 0, 1)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """`on_message` straight away: the bridge registers no per-topic callbacks (`message_callback_add`),
        and paho's walk of its topic matcher for them cost 4 % of the bridge's time in the ingest profile."""
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)


class DeviceDirectory:
    """uid → (revoked?, telemetry profile), for the devices this bridge has seen, re-read in one query every
    DEVICE_CACHE_SECONDS.

    A device's first message is checked against the database (a new or just-revoked device is never judged
    from an old snapshot; `check_many` reads all of a batch's new devices in one query); after that its
    answer may be up to DEVICE_CACHE_SECONDS old, re-read in bulk (one query per 5,000 seen devices), never
    per message (docs/benchmarks.md, "Figures behind the code"). The profile (site, hardware) lets
    telemetry batches skip their own device lookup.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[bool, DeviceProfile]] = {}
        self._loaded_at = self._reloaded_at = time.monotonic()
        self._changes_since = timezone.now()

    def _refresh_if_old(self) -> None:
        """Every DEVICE_CACHE_SECONDS, re-read the seen devices that changed since the last look (revoked,
        moved, edited: every such write bumps `updated_at`); every FULL_RELOAD_SECONDS, all of them (which
        also forgets deleted ones): re-reading every seen device each time is too slow at fleet scale
        (docs/benchmarks.md, "Figures behind the code")."""
        now = time.monotonic()
        if not self._seen or now - self._loaded_at <= DEVICE_CACHE_SECONDS:
            return
        if now - self._reloaded_at > FULL_RELOAD_SECONDS:
            self.reload(list(self._seen))
            return
        since, self._changes_since = self._changes_since, timezone.now()
        # the margin covers a write committed after our clock passed its `updated_at`
        margin = dt.timedelta(seconds=DEVICE_CACHE_SECONDS)
        changed = Device.objects.filter(Q(updated_at__gte=since - margin) | Q(revoked_at__gte=since - margin))
        self._store_rows(row for row in changed.values_list(*_DIRECTORY_COLUMNS) if row[0] in self._seen)
        self._loaded_at = now

    def reload(self, uids: list[str]) -> None:
        """Forget and re-read these devices (all seen ones at a full reload)."""
        for uid in uids:
            self._seen.pop(uid, None)
        self._changes_since = timezone.now()
        self._load(uids)
        self._loaded_at = self._reloaded_at = time.monotonic()

    def _load(self, uids: list[str]) -> None:
        for start in range(0, len(uids), REFRESH_CHUNK):
            chunk = uids[start : start + REFRESH_CHUNK]
            if connection.vendor == "postgresql":
                # one array parameter: the ORM's IN list of 5,000 parameters cost more than the query
                table = connection.ops.quote_name(Device._meta.db_table)
                with connection.cursor() as cursor:
                    cursor.execute(f"SELECT {', '.join(_DIRECTORY_COLUMNS)} FROM {table} WHERE uid = ANY(%s)", [chunk])  # noqa: S608 - identifiers are ours
                    rows = cursor.fetchall()
            else:
                rows = list(Device.objects.filter(uid__in=chunk).values_list(*_DIRECTORY_COLUMNS))
            self._store_rows(rows)

    def _store_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        for uid, revoked_at, pk, site_id, arch, cpu, accelerator in rows:
            self._seen[uid] = (revoked_at is not None, DeviceProfile(pk, site_id, arch, cpu, accelerator))

    def check(self, uid: str) -> None:
        reason = self.check_many([uid]).get(uid)
        if reason:
            raise Rejected(reason, uid)

    def check_many(self, uids: Iterable[str]) -> dict[str, str]:
        """{uid: rejection reason} for the uids that may not send (unknown or revoked); the others pass.
        Uids not seen before are read in one query, not one each."""
        self._refresh_if_old()
        wanted = set(uids)
        new = [u for u in wanted if u not in self._seen]
        if new:
            self._load(new)
        refused: dict[str, str] = {}
        for uid in wanted:
            entry = self._seen.get(uid)
            if entry is None:
                refused[uid] = "unknown_device"
            elif entry[0]:
                refused[uid] = "revoked_device"
        return refused

    def profiles(self, uids: Iterable[str]) -> dict[str, DeviceProfile]:
        """The profiles of admitted devices (call after `check_many`)."""
        return {uid: entry[1] for uid in uids if (entry := self._seen.get(uid)) and not entry[0]}

    def forget(self, uid: str) -> None:
        self._seen.pop(uid, None)


class JobUpdates(Protocol):
    """Applies a batch of (uid, job update) inside the caller's transaction: one rejection reason (or
    None) per update, in order; it tallies what it ignored and queues each device's answer on `bridge`
    (`count_applied`, `answer_after_commit`; deployments/bridge_handlers.py)."""

    def __call__(self, items: list[tuple[str, JobUpdate]], bridge: Bridge) -> list[tuple[str, str] | None]: ...


class StateResults(Protocol):
    """Applies the finished jobs a batch of device states lists that the control plane still has active
    (reconciliation of lost updates), answering them on `bridge` (deployments/bridge_handlers.py)."""

    def __call__(self, reports: list[tuple[str, StateMessage]], bridge: Bridge) -> None: ...


class AwsJobsHandler(Protocol):
    """Answers a batch of AWS IoT Jobs requests in order, inside the caller's transaction: one rejection
    (counter, detail) or None per request (deployments/bridge_handlers.py)."""

    def __call__(self, requests: list[aws_jobs.AwsRequest]) -> list[tuple[str, str] | None]: ...


class JobsGetHandler(Protocol):
    """Answers a batch of (uid, jobs/get request) (deployments/bridge_handlers.py)."""

    def __call__(self, requests: list[tuple[str, JobsGet]]) -> None: ...


@dataclass
class DeviceMessage:
    """A parsed status, state, jobs/get or job update, waiting for its batch."""

    incoming: Incoming
    uid: str
    kind: str
    message: Any


class TelemetryWriter:
    """Stores telemetry batches on threads (and database connections) of their own, so the bridge goes on
    reading and parsing while earlier batches are copied in: parsing and storing overlap instead of
    taking turns, and with two threads one batch's COPY overlaps the next one's commit.

    At most one batch per thread waits (a slow database slows the reader, it does not fill memory). Each
    batch is retried as a whole until stored, and its messages are acknowledged only after the commit.
    Each thread keeps its own device directory. Rollup rows are upserted in key order and device rows
    touched in id order, so two threads never deadlock.
    """

    def __init__(self, bridge: Bridge, threads: int = 2) -> None:
        self._bridge = bridge
        self._queue: queue.Queue[list[tuple[Incoming, TelemetryEnvelope]] | None] = queue.Queue(maxsize=threads)
        self._size = threads
        self._busy = 0  # batches submitted and not yet stored (or given up)
        self._busy_lock = threading.Lock()
        self._local = threading.local()
        self._threads = [
            threading.Thread(target=self._run, name=f"telemetry-writer-{n}", daemon=True) for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def idle(self) -> bool:
        """Whether a writer thread waits for a batch (one submitted now is stored at once)."""
        return self._busy < self._size

    def submit(self, batch: list[tuple[Incoming, TelemetryEnvelope]]) -> None:
        with self._busy_lock:
            self._busy += 1
        self._queue.put(batch)

    def close(self) -> None:
        """Store what was submitted, then stop."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    @property
    def _devices(self) -> DeviceDirectory:
        if not hasattr(self._local, "devices"):
            self._local.devices = DeviceDirectory()
        return self._local.devices  # type: ignore[no-any-return]

    @property
    def _touched(self) -> dict[str, float]:
        """uid -> when this thread last refreshed its last_seen."""
        if not hasattr(self._local, "touched"):
            self._local.touched = {}
        return self._local.touched  # type: ignore[no-any-return]

    def _run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                attempt = 0
                while not self._bridge._guarded(functools.partial(self._store, batch)):
                    attempt += 1
                    if self._bridge._stop.is_set() and attempt >= 3:
                        # not acknowledged: the broker sends these again to the bridge's next session
                        logger.error("giving up on a telemetry batch of %s messages at shutdown", len(batch))
                        break
                    time.sleep(min(5.0, 0.2 * attempt))
                with self._busy_lock:
                    self._busy -= 1
                self._bridge.wake_if_waiting()  # a writer is free: the batch being gathered may go now
        finally:
            connection.close()  # this thread's connection

    def _store(self, batch: list[tuple[Incoming, TelemetryEnvelope]]) -> None:
        started = time.perf_counter()
        bridge = self._bridge
        refused = self._devices.check_many(envelope.uid for _, envelope in batch)
        accepted = [(incoming, envelope) for incoming, envelope in batch if envelope.uid not in refused]
        senders = {envelope.uid for _, envelope in accepted}
        now = time.monotonic()
        touch = {uid for uid in senders if now - self._touched.get(uid, -TOUCH_EVERY_SECONDS) >= TOUCH_EVERY_SECONDS}
        try:
            with transaction.atomic():
                if touch:
                    devices_touch(touch)
                # last: its rollup upsert locks rows every writer shares, so they are held only until the commit
                stored = telemetry_ingest_batch(
                    [envelope for _, envelope in accepted], profiles=self._devices.profiles(senders)
                )
        except IntegrityError:
            # a device deleted since the directory read it: read the batch's senders again and retry
            self._devices.reload(list(senders))
            raise
        self._touched.update(dict.fromkeys(touch, now))
        for incoming, envelope in batch:
            if envelope.uid in refused:
                bridge.reject(incoming, refused[envelope.uid], envelope.uid)
        bridge.count_applied("telemetry", len(accepted))
        bridge.count_applied("telemetry_samples", stored)
        metrics.BRIDGE_BATCH.labels("telemetry").observe(time.perf_counter() - started)
        bridge.ack_all(incoming for incoming, _ in accepted)
        logger.debug("telemetry batch of %s stored in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)


class Bridge:
    def __init__(
        self,
        *,
        client_id: str = "fogdeck-bridge",
        telemetry_flush_seconds: float = 0.2,
        telemetry_batch_size: int = 500,
        telemetry_writers: int = 2,
        device_batch_seconds: float = 0.05,
        device_batch_size: int = 500,
        counters_flush_seconds: float = 5.0,
        outbox_poll_seconds: float = 0.5,
        reconcile_delay_seconds: float = RECONCILE_DELAY_SECONDS,
        job_updates: JobUpdates,
        state_results: StateResults,
        jobs_get: JobsGetHandler,
        aws_jobs: AwsJobsHandler | None = None,
    ) -> None:
        """`job_updates`, `state_results` and `jobs_get` are the deployments rules the bridge applies to job
        messages, `aws_jobs` the one for AWS IoT Jobs requests (without it the bridge does not subscribe to
        them); `manage.py mqtt_bridge` passes deployments/bridge_handlers.py's (this module never imports
        them)."""
        if not is_service_client_id(client_id):
            # A device's client id is its uid: outside the reserved namespace, a device registered under
            # this id could connect with it and take the bridge's session over (docs/security.md).
            raise ValueError(f"the bridge's client id must start with {SERVICE_CLIENT_ID_PREFIX!r}, got {client_id!r}")
        self.client_id = client_id
        self.telemetry_flush_seconds = telemetry_flush_seconds
        self.telemetry_batch_size = telemetry_batch_size
        self.telemetry_writers = telemetry_writers
        self.device_batch_seconds = device_batch_seconds
        self.device_batch_size = device_batch_size
        self.counters_flush_seconds = counters_flush_seconds
        self.outbox_poll_seconds = outbox_poll_seconds
        self.stats = BridgeStats()
        self.connected = threading.Event()
        self._inbox: queue.Queue[Incoming] = queue.Queue(maxsize=200_000)
        self._stop = threading.Event()
        self._stats_lock = threading.Lock()
        self._devices = DeviceDirectory()
        self._telemetry: list[tuple[Incoming, TelemetryEnvelope]] = []
        self._device_messages: list[DeviceMessage] = []
        self._unflushed: Counter[str] = Counter()
        self._subscribe_mid: int | None = None
        self._subscribe_topics: list[str] = []
        self._client = self._make_client()
        self._writer: TelemetryWriter | None = None
        self._job_updates = job_updates
        self._state_results = state_results
        self._jobs_get = jobs_get
        self._aws_jobs = aws_jobs
        self._answers: list[tuple[str, bytes]] = []  # to devices once the batch has committed
        # uid -> (due, newest state listing recent jobs): reconciled at `due` (RECONCILE_DELAY_SECONDS)
        self._reconcile: dict[str, tuple[float, StateMessage]] = {}
        self.reconcile_delay_seconds = reconcile_delay_seconds

    # --- MQTT plumbing -------------------------------------------------------------------------
    def _make_client(self) -> AckingClient:
        client = AckingClient(
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
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            logger.error("broker refused the bridge: %s", reason)
            return
        group = settings.MQTT_BRIDGE_SHARED_GROUP
        topics = [f"$share/{group}/{t}" if group else t for t in BRIDGE_SUBSCRIPTIONS]
        if self._aws_jobs is not None and settings.MQTT_BRIDGE_AWS_JOBS:  # never shared: Mosquitto delivers no `$`
            topics += aws_jobs.BRIDGE_SUBSCRIPTIONS  # topic to a shared subscription
        self._subscribe_mid = client.subscribe([(topic, QOS) for topic in topics])[1]
        self._subscribe_topics = topics
        # `connected` waits for the SUBACK (_on_subscribe): until the broker has the subscription, what
        # devices publish is routed to nobody and lost (a fresh session has no subscription to queue for).

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[Any], props: object) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [t for t, r in zip(self._subscribe_topics, reasons, strict=False) if getattr(r, "is_failure", False)]
        if refused:
            logger.error("broker refused the bridge's subscriptions to %s (check its ACL)", ", ".join(refused))
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

    def wake_if_waiting(self) -> None:
        """Wake the main thread if it holds telemetry (a writer just became free: `telemetry_flush_due`)."""
        if self._telemetry:
            with contextlib.suppress(queue.Full):  # a full inbox wakes it anyway
                self._inbox.put_nowait(_WAKE)

    def send(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Start a publish; None when disconnected. The caller waits for the broker's ack (the outbox waits
        for a whole pass at once)."""
        if not self.connected.is_set():
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Publish and wait for the broker's acknowledgement (False when disconnected or timed out)."""
        info = self.send(topic, payload, qos, retain)
        if info is None:
            return False
        try:
            info.wait_for_publish(timeout=5)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def answer_after_commit(self, topic: str, payload: bytes) -> None:
        """Publish this answer to a device once the current batch has committed (dropped if it rolls back).

        Not through the outbox: an answer that is lost costs the device one re-send of its update, which
        gets a new answer, so it needs no row of its own (and a wave's worth of answers no inserts)."""
        self._answers.append((topic, payload))

    def _send_answers(self) -> None:
        answers, self._answers = self._answers, []
        for topic, payload in answers:
            if self.send(topic, payload) is None:
                self.count_applied("job_answer_unsent")  # disconnected: the device sends its update again
            else:
                self.count_applied("job_answer")

    def _ack(self, incoming: Incoming) -> None:
        if incoming.qos > 0:
            self._client.ack(incoming.mid, incoming.qos)

    def ack_all(self, messages: Iterable[Incoming]) -> None:
        """Acknowledge a committed batch (QoS 1 only: the protocol uses no QoS 2) in one write."""
        self._client.ack_many(m.mid for m in messages if m.qos == 1)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._client.connect_async(settings.MQTT_HOST, settings.MQTT_PORT, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(_WAKE)  # don't wait out the main thread's timeout

    def run(self) -> None:
        """Work until `stop()`; survives broker restarts (paho reconnects) and database hiccups."""
        self._writer = TelemetryWriter(self, self.telemetry_writers)
        self.start()
        now = time.monotonic()
        telemetry_since = now  # when the first message of the telemetry batch being gathered arrived
        next_devices = now + self.device_batch_seconds
        next_counters = now + self.counters_flush_seconds
        next_outbox = now
        next_heartbeat = next_reconcile = now
        heartbeat.clear("bridge")
        try:
            while not self._stop.is_set():
                if self.connected.is_set() and time.monotonic() >= next_heartbeat:
                    heartbeat.beat("bridge")  # readiness: connected, subscribed, and this loop turns
                    next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
                # at least every telemetry_flush_seconds: heartbeats, counters and reconciliation turn too
                timeout = max(0.0, min(next_outbox - time.monotonic(), self.telemetry_flush_seconds))
                if self._telemetry:  # a writer that becomes free wakes us (wake_if_waiting)
                    timeout = min(timeout, max(0.0, telemetry_since + self.telemetry_flush_seconds - time.monotonic()))
                if self._device_messages:
                    # Messages are acknowledged only once applied, and the broker stops sending when its
                    # in-flight window of unacknowledged messages is full: flush as soon as it goes quiet.
                    timeout = min(timeout, IDLE_FLUSH_SECONDS)
                try:
                    incoming = self._inbox.get(timeout=timeout)
                except queue.Empty:
                    incoming = None
                had_telemetry = bool(self._telemetry)
                if incoming is not None and incoming is not _WAKE:
                    self._guarded(functools.partial(self.handle, incoming))
                    self._take_waiting()
                now = time.monotonic()
                if self._telemetry and not had_telemetry:
                    telemetry_since = now  # a batch's clock starts at its first message
                idle = incoming is None  # quiet for the whole timeout (a wake is not quiet)
                if self._device_messages and (
                    idle or now >= next_devices or len(self._device_messages) >= self.device_batch_size
                ):
                    self._guarded(self.flush_device_messages)
                    next_devices = now + self.device_batch_seconds
                elif not self._device_messages:
                    next_devices = now + self.device_batch_seconds  # a batch's clock starts at its first message
                if telemetry_flush_due(
                    len(self._telemetry),
                    batch_size=self.telemetry_batch_size,
                    age=now - telemetry_since,
                    max_age=self.telemetry_flush_seconds,
                    more_waiting=not self._inbox.empty(),
                    writer_idle=self._writer.idle,
                ):
                    self.flush_telemetry()
                if now >= next_reconcile and self._reconcile and not self._device_messages:
                    self._guarded(self.reconcile_due_states)
                    next_reconcile = now + RECONCILE_POLL_SECONDS
                if now >= next_outbox:
                    self._guarded(self._drain_outbox)
                    next_outbox = now + self.outbox_poll_seconds
                if now >= next_counters:
                    self._guarded(self.flush_counters)
                    next_counters = now + self.counters_flush_seconds
        finally:
            heartbeat.clear("bridge")
            self.flush_telemetry()
            self._writer.close()
            self._guarded(self.flush_device_messages)
            self._guarded(functools.partial(self.reconcile_due_states, float("inf")))
            self._guarded(self.flush_counters)
            self._client.disconnect()
            self._client.loop_stop()
            connection.close()  # this thread's connection; it must not outlive the bridge

    def _drain_outbox(self) -> None:
        with metrics.BRIDGE_BATCH.labels("outbox").time():
            published = outbox_drain(self.send)
        metrics.BRIDGE_OUTBOX_PUBLISHED.inc(published)

    def _take_waiting(self) -> None:
        """Handle what else is already in the inbox (up to a batch), without a timed wait per message."""
        for _ in range(DRAIN_AT_ONCE):
            if (
                len(self._telemetry) >= self.telemetry_batch_size
                or len(self._device_messages) >= self.device_batch_size
            ):
                return
            try:
                incoming = self._inbox.get_nowait()
            except queue.Empty:
                return
            if incoming is not _WAKE:
                self._guarded(functools.partial(self.handle, incoming))

    def _guarded(self, work: Callable[[], object]) -> bool:
        """Run one unit of work; a lost database connection is reopened and the unit retried once.
        True when it ran to the end."""
        for attempt in (1, 2):
            try:
                work()
                return True
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database error in the bridge (attempt %s): %s", attempt, exc)
                close_old_connections()
                connection.close()
                time.sleep(0.5 * attempt)
            except Exception:
                logger.exception("bridge work failed")
                self.count_rejected("handler_error")
                return False
        return False

    def count_applied(self, kind: str, count: int = 1) -> None:
        with self._stats_lock:
            self.stats.applied[kind] += count
        metrics.BRIDGE_APPLIED.labels(kind).inc(count)

    def count_rejected(self, reason: str) -> None:
        with self._stats_lock:
            self.stats.rejected[reason] += 1
            self._unflushed[reason] += 1
        metrics.BRIDGE_REJECTED.labels(reason).inc()

    # --- applying messages ---------------------------------------------------------------------
    def reject(self, incoming: Incoming, reason: str, detail: str) -> None:
        self.count_rejected(reason)
        self.stats.last_detail[reason] = (incoming.topic[:300], detail[:500])
        logger.warning("rejected message on %s: %s %s", incoming.topic[:200], reason, detail[:200])
        self._ack(incoming)

    def handle(self, incoming: Incoming) -> None:
        """Parse one message; telemetry and device messages wait for their batches, whose senders are checked
        together."""
        try:
            if aws_jobs.is_aws_topic(incoming.topic):  # the AWS IoT Jobs dialect (deployments/aws_jobs.py)
                try:
                    request = aws_jobs.parse_request(incoming.topic, incoming.payload)
                except aws_jobs.UnknownAwsTopic as exc:
                    raise Rejected("unknown_topic", str(exc)) from exc
                self._device_messages.append(DeviceMessage(incoming, request.uid, "aws_jobs", request))
                return
            uid, kind, job_id = parse_topic(incoming.topic)
            if kind == "telemetry":  # its senders are checked per batch, by the telemetry writer
                self._telemetry.append((incoming, TelemetryEnvelope(uid, parse_telemetry(incoming.payload))))
                return
            message = _PARSERS[kind](incoming.payload)  # its sender is checked with its batch's
            if kind == "job_update" and message.job_id != job_id:
                raise Rejected("topic_mismatch", f"payload job {message.job_id} on topic of job {job_id}")
            self._device_messages.append(DeviceMessage(incoming, uid, kind, message))
        except ProtocolError as exc:
            self.reject(incoming, exc.reason_code, exc.detail)
            self._answer_refused_update(incoming, exc.reason_code)
        except Rejected as exc:
            self.reject(incoming, exc.reason, exc.detail)
            if exc.reason == "topic_mismatch":
                self._answer_refused_update(incoming, exc.reason)

    def _answer_refused_update(self, incoming: Incoming, reason: str) -> None:
        """A known device's job update that will never parse: tell it to stop sending it."""
        from deployments.bridge_handlers import rejected_answer

        try:
            uid, kind, job_id = parse_topic(incoming.topic)
        except ProtocolError:
            return
        if kind == "job_update" and job_id is not None and not self._devices.check_many([uid]):
            self.send(*rejected_answer(uid, job_id, None, reason))

    def flush_telemetry(self) -> None:
        """Hand the batch to the writer (blocks while the one before it still waits)."""
        if not self._telemetry:
            return
        batch, self._telemetry = self._telemetry, []
        assert self._writer is not None  # noqa: S101 - run() starts it before any message
        self._writer.submit(batch)

    def flush_device_messages(self) -> None:
        """Apply the waiting status, state, jobs/get and job-update messages in one transaction, then
        acknowledge them. Job updates go first, together (folded per job); the others follow in arrival
        order, each in a savepoint, so one that fails is rejected alone. A database error rolls the whole
        batch back and it is applied again (nothing was acknowledged)."""
        if not self._device_messages:
            return
        batch, self._device_messages = self._device_messages, []
        try:
            # the senders in one query for the devices not seen before (one each cost a tenth of a bridge
            # in a 10,000-device rollout: shared subscriptions show every device to every bridge)
            refused = self._devices.check_many({item.uid for item in batch})
        except (OperationalError, InterfaceError):
            self._device_messages = batch + self._device_messages
            raise
        if refused:
            for item in batch:
                if reason := refused.get(item.uid):
                    self.reject(item.incoming, reason, item.uid)
            batch = [item for item in batch if item.uid not in refused]
            if not batch:
                return
        self._answers = []
        try:
            # the chain head is locked only at the end
            timer = metrics.BRIDGE_BATCH.labels("device_messages").time()
            with timer, transaction.atomic(), audit_deferred():
                devices_lock(uids=(item.uid for item in batch))  # one lock order for the whole batch
                verdicts = self._apply_device_batch(batch)
        except (OperationalError, InterfaceError):
            self._device_messages = batch + self._device_messages
            self._answers = []
            raise
        except Exception as exc:  # a bug or a message no rule expected: never retry the same batch forever
            self._answers = []
            self._isolate_failing(batch, exc)
            return
        self._send_answers()  # after the commit: an accepted answer means the update is stored
        self.ack_all(item.incoming for item, verdict in zip(batch, verdicts, strict=True) if verdict is None)
        for item, verdict in zip(batch, verdicts, strict=True):
            if verdict is None:
                self.count_applied(item.kind)
            else:
                if verdict[0] == "revoked_device":
                    self._devices.forget(item.uid)
                self.reject(item.incoming, *verdict)

    def reconcile_due_states(self, now: float | None = None) -> None:
        """Apply the finished jobs listed by the states whose delay is over, in one transaction, answering
        the devices after the commit. A state whose reconciliation fails on the database is kept for the
        next turn; the device's own re-sends and the timeout sweep's look at the stored state cover a
        bridge that stops meanwhile."""
        now = time.monotonic() if now is None else now
        due = [(uid, state) for uid, (at, state) in self._reconcile.items() if at <= now]
        if not due:
            return
        for uid, _ in due:
            del self._reconcile[uid]
        self._answers = []
        try:
            with metrics.BRIDGE_BATCH.labels("reconcile").time(), transaction.atomic(), audit_deferred():
                devices_lock(uids=(uid for uid, _ in due))
                self._state_results(due, self)
        except (OperationalError, InterfaceError):
            self._answers = []
            for uid, state in due:
                self._reconcile.setdefault(uid, (now, state))
            raise
        except Exception:
            self._answers = []
            logger.exception("reconciling the recent jobs of %s device states failed", len(due))
            return
        self._send_answers()

    def _isolate_failing(self, batch: list[DeviceMessage], exc: Exception) -> None:
        """A batch failed for another reason than the database: apply its messages one by one, so the
        others are applied and only the one that fails alone is rejected (counted, logged, acknowledged),
        instead of the whole batch being re-applied, and failing, for as long as the bridge runs."""
        if len(batch) == 1:
            logger.error("device message on %s failed: %r", batch[0].incoming.topic[:200], exc, exc_info=exc)
            self.reject(batch[0].incoming, "handler_error", f"{type(exc).__name__}: {exc}")
            return
        logger.warning("a batch of %s device messages failed (%r): applying them one by one", len(batch), exc)
        waiting, self._device_messages = self._device_messages, []
        for item in batch:
            self._device_messages = [item]
            self.flush_device_messages()
        self._device_messages = waiting + self._device_messages

    def _apply_device_batch(self, batch: list[DeviceMessage]) -> list[tuple[str, str] | None]:
        """Job updates, status messages, state reports, then jobs/get (last, so the answers leave out jobs
        this batch finished): each kind in one service call for the whole batch."""
        verdicts: list[tuple[str, str] | None] = [None] * len(batch)
        by_kind: dict[str, list[int]] = {}
        for index, item in enumerate(batch):
            by_kind.setdefault(item.kind, []).append(index)
        if updates := by_kind.get("job_update"):
            applied = self._job_updates([(batch[i].uid, batch[i].message) for i in updates], self)
            for index, verdict in zip(updates, applied, strict=True):
                verdicts[index] = verdict
        if statuses := by_kind.get("status"):
            refused = devices_mark_seen_many(
                reports=[(batch[i].uid, batch[i].message.state == "online") for i in statuses]
            )
            for index in statuses:
                if reason := refused.get(batch[index].uid):
                    verdicts[index] = (reason, batch[index].uid)
        if states := by_kind.get("state"):
            refused = devices_report_state_many(
                reports=[
                    (batch[i].uid, batch[i].message.model_dump(mode="json"), batch[i].message.agent_version)
                    for i in states
                ]
            )
            for index in states:
                if reason := refused.get(batch[index].uid):
                    verdicts[index] = (reason, batch[index].uid)
            # the finished jobs the states list that we still have active (lost updates): reconciled a
            # little later (RECONCILE_DELAY_SECONDS), from the newest state of each device
            due = time.monotonic() + self.reconcile_delay_seconds
            for index in states:
                state = batch[index].message
                if verdicts[index] is None and isinstance(state, StateMessage) and state.recent_jobs:
                    first_due = self._reconcile.get(batch[index].uid, (due, state))[0]
                    self._reconcile[batch[index].uid] = (first_due, state)
        if requests := by_kind.get("jobs_get"):
            self._jobs_get([(batch[i].uid, batch[i].message) for i in requests])
        if (aws_requests := by_kind.get("aws_jobs")) and self._aws_jobs is not None:
            answered = self._aws_jobs([batch[i].message for i in aws_requests])
            for index, verdict in zip(aws_requests, answered, strict=True):
                verdicts[index] = verdict
        return verdicts

    def flush_counters(self) -> None:
        with self._stats_lock:
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
            with self._stats_lock:
                self._unflushed.update(pending)
            raise
