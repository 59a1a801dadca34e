"""An in-process amqtt broker that admits only known credentials and keeps devices in their own topics.

The stock amqtt plugins don't fit: `AnonymousAuthPlugin` admits any username and
`TopicAccessControlListPlugin` has no per-username pattern, so authentication and topic
authorization are our own plugins around `broker.acl`. amqtt keeps sessions, queued QoS 1
messages and retained messages in memory only (no persistence plugin is loaded), so a
restart of the broker forgets them; the embedded broker is the zero-configuration default,
Mosquitto is the production broker.

Every CONNECT is authenticated before amqtt touches any session (see `_AclBroker`), a device's
client id is its username (as Mosquitto's `use_username_as_clientid`), and a CONNECT whose Last
Will the topic ACL would refuse is itself refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext, BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.events import MQTTEvents
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from broker.acl import Principal, may_publish, may_receive, may_subscribe
from broker.passwords import verify_secret
from broker.reserved_topics import ReservedTopicsMixin
from protocol.topics import is_service_client_id, is_valid_device_uid

logger = logging.getLogger("fogdeck.broker")

Authenticator = Callable[[str, str], Principal | None]
"""(username, password) -> the principal, or None to refuse. May block: it runs in a worker thread."""

RefusalReason = Literal[
    "anonymous",  # no username or no password in CONNECT
    "bad_credentials",  # the authenticator returned None
    "authenticator_error",  # the authenticator raised; refused rather than crash the connection handler
    "session_owned",  # a session's client id is already bound to another principal
    "will_denied",  # the CONNECT's Last Will topic is one this principal may not publish to
    "no_principal",  # a topic check on a session that never authenticated
    "publish_denied",
    "subscribe_denied",
    "receive_denied",
]

# Session.attributes is amqtt's slot for plugin-owned data; the key is namespaced as it asks.
_PRINCIPAL_KEY = "fogdeck.principal"

DEFAULT_SESSION_EXPIRY_SECONDS = 24 * 3600


class BrokerStartError(RuntimeError):
    """The broker could not start, usually because its port is taken."""


class RefusalCounter:
    """Refusals by reason: written on the broker's loop, read from any thread (health checks, tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def increment(self, reason: RefusalReason) -> None:
        with self._lock:
            self._counts[reason] += 1

    def __getitem__(self, reason: RefusalReason) -> int:
        with self._lock:
            return self._counts[reason]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _refuse(refusals: RefusalCounter, reason: RefusalReason, session: Session | None, detail: str = "") -> None:
    client_id = session.client_id if session else None
    username = session.username if session else None
    address = session.remote_address if session else None
    logger.warning(
        "MQTT refused (%s): client_id=%r username=%r from=%s%s",
        reason,
        client_id,
        username,
        address,
        f" {detail}" if detail else "",
    )
    refusals.increment(reason)


def principal_of(session: Session | None) -> Principal | None:
    """The principal this session authenticated as, if any."""
    if session is None:
        return None
    principal = session.attributes.get(_PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None


class CredentialAuthPlugin(BaseAuthPlugin):
    """Refuses anonymous clients and any credentials the authenticator does not map to a principal."""

    @dataclass
    class Config:
        # `Any` because amqtt builds this with dacite, which cannot type-check a Callable.
        authenticator: Any = None
        refusals: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        authenticator, refusals = self.config.authenticator, self.config.refusals
        if not callable(authenticator) or not isinstance(refusals, RefusalCounter):
            raise TypeError("CredentialAuthPlugin needs an `authenticator` callable and a `refusals` counter")
        self._authenticator: Authenticator = authenticator
        self._refusals: RefusalCounter = refusals

    async def authenticate(self, *, session: Session) -> bool:
        if not session.username or session.password is None:
            _refuse(self._refusals, "anonymous", session)
            return False
        try:
            # The Django authenticator queries the database; keep it off the broker's event loop.
            principal = await asyncio.to_thread(self._authenticator, session.username, session.password)
        except Exception:
            logger.exception("MQTT authenticator failed for username=%r", session.username)
            _refuse(self._refusals, "authenticator_error", session)
            return False
        if principal is None:
            _refuse(self._refusals, "bad_credentials", session)
            return False
        # `session` is the CONNECT's own, fresh session (`_AclBroker` authenticates before any lookup).
        session.attributes[_PRINCIPAL_KEY] = principal
        return True


class TopicAclPlugin(BaseTopicPlugin):
    """Applies `broker.acl` to every publish, subscribe and delivery."""

    @dataclass
    class Config:
        refusals: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        if not isinstance(self.config.refusals, RefusalCounter):
            raise TypeError("TopicAclPlugin needs a `refusals` counter")
        self._refusals: RefusalCounter = self.config.refusals

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        principal = principal_of(session)
        if principal is None or topic is None:
            _refuse(self._refusals, "no_principal", session, f"action={action} topic={topic!r}")
            return False
        reason: RefusalReason
        if action == Action.PUBLISH:
            allowed, reason = may_publish(principal, topic), "publish_denied"
        elif action == Action.SUBSCRIBE:
            allowed, reason = may_subscribe(principal, topic), "subscribe_denied"
        else:
            allowed, reason = may_receive(principal, topic), "receive_denied"
        if not allowed:
            _refuse(self._refusals, reason, session, f"topic={topic!r}")
        return allowed


class SnapshotSubscriptions(dict[str, list[tuple[Session, int]]]):
    """amqtt's subscription table, iterated over a snapshot.

    amqtt 0.12.1's broadcast loop iterates `_subscriptions.items()` across `await`s while other
    clients (un)subscribe, which raises "dictionary changed size during iteration" under load and
    drops the message being broadcast. Iterating copies makes concurrent changes safe.
    """

    def items(self) -> list[tuple[str, list[tuple[Session, int]]]]:  # type: ignore[override]
        return [(key, list(value)) for key, value in super().items()]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(super().keys()))


class _AclBroker(ReservedTopicsMixin, Broker):
    """amqtt's broker with its CONNECT handling reordered, one leak closed and one crash avoided.

    amqtt 0.12.1 looks up the session of a CONNECT's client id *before* authenticating: a clean
    session deletes the existing one (its subscriptions), a persistent one gets the newcomer's will,
    username and password copied onto it, and the connected client is taken over, all before the
    refusal is sent. Here `_initialize_client_session` reads the CONNECT, authenticates it on its own
    fresh session, refuses (CONNACK 5, nothing touched) a failed login, a device whose Last Will
    topic the ACL refuses, or a client id bound to another principal; only then does it look up,
    replace or take over a session. A device's client id is forced to its username.

    On every CONNECT amqtt also replays the retained messages matching *every* filter any
    client subscribed to, not only the connecting client's (`_handle_client_session`), and
    that replay skips the topic plugins; a device would receive other devices' retained state.
    Its subscription table is replaced by `SnapshotSubscriptions` (see there).
    """

    def __init__(self, *args: Any, refusals: RefusalCounter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = SnapshotSubscriptions()
        self._refusals = refusals

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        # Reading the CONNECT: as amqtt does (it answers malformed ones itself).
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc

        principal = await self._admit(incoming)
        if principal is None:
            connack = ConnackPacket.build(0, NOT_AUTHORIZED)
            await self.plugins_manager.fire_event(MQTTEvents.PACKET_SENT, packet=connack)
            await connack.to_stream(writer)
            await writer.close()
            raise AMQTTError(f"CONNECT from {remote_address}:{remote_port} refused")

        client_id = incoming.client_id
        existing = self._sessions.get(client_id) if client_id else None
        if incoming.clean_session:
            if not client_id:
                incoming.client_id = gen_client_id()
            elif existing is not None:
                # amqtt would drop the old session but leave its connection open and orphaned (it
                # never receives again); close it, as a takeover does.
                old_session, old_handler = existing
                if old_session.transitions.is_connected():
                    await old_handler.handle_connection_closed()
                    await old_handler.stop()
                await self._delete_session(client_id)
            incoming.parent = 0
            session = incoming
        elif existing is not None:
            # The same principal reconnecting to its persistent session: the new CONNECT's settings apply.
            session = existing[0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                         "username", "password", "remote_address", "remote_port", "ssl_object"):  # fmt: skip
                setattr(session, name, getattr(incoming, name))
            session.attributes[_PRINCIPAL_KEY] = principal
            session.parent = 1
        else:
            incoming.parent = 0
            session = incoming

        timeout_disconnect_delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(timeout_disconnect_delay, int):
            session.keep_alive += timeout_disconnect_delay
        return handler, session

    async def _admit(self, incoming: Session) -> Principal | None:
        """The principal a CONNECT may proceed as, or None (counted and logged) to refuse it.

        Runs on the CONNECT's own session object: no stored session is read or changed here.
        """
        if not await super()._authenticate(incoming, None):  # type: ignore[arg-type]  # amqtt ignores the listener
            return None
        principal = principal_of(incoming)
        if principal is None:
            return None
        if principal.kind == "device" and incoming.client_id != principal.username:
            # Mosquitto's `use_username_as_clientid`: a device is its uid, whatever id it sent, so it can
            # reach no session but its own.
            logger.info("MQTT client id %r of device %r replaced by its uid", incoming.client_id, principal.username)
            incoming.client_id = principal.username
        if incoming.will_flag and not may_publish(principal, incoming.will_topic or ""):
            _refuse(self._refusals, "will_denied", incoming, f"will_topic={incoming.will_topic!r}")
            return None
        existing = self._sessions.get(incoming.client_id) if incoming.client_id else None
        owner = principal_of(existing[0]) if existing is not None else None
        if owner is not None and owner != principal:
            # A client id stays bound to the principal whose session it names (e.g. a service's bridge
            # session against a device whose uid happens to equal the bridge's client id).
            _refuse(self._refusals, "session_owned", incoming, f"owner={owner.username!r}")
            return None
        return principal

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        # `_handle_client_session` asks again after `_initialize_client_session`, which refuses (and never
        # returns) a CONNECT that failed; what reaches here was admitted and carries its principal.
        return principal_of(session) is not None

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter = subscription[0]
        if any(s.client_id == session.client_id for s, _ in self.subscriptions.get(topic_filter, [])):
            await super()._publish_retained_messages_for_subscription(subscription, session)


def _plugin_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class EmbeddedBroker:
    """An MQTT 3.1.1 broker on `host:port` that authenticates with `authenticator`.

    `port=0` picks a free port; after `start()` `port` holds the one actually bound.
    Refusals are counted by reason in `refusals`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 1884,
        authenticator: Authenticator,
        session_expiry_seconds: int | None = DEFAULT_SESSION_EXPIRY_SECONDS,
    ) -> None:
        self.host = host
        self.port = port
        self.refusals = RefusalCounter()
        self._authenticator = authenticator
        # Persistent sessions live in memory; expiring them bounds what vanished devices leave behind.
        self._session_expiry_seconds = session_expiry_seconds
        self._broker: Broker | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _config(self) -> BrokerConfig:
        bind_host = f"[{self.host}]" if ":" in self.host else self.host
        return BrokerConfig(
            listeners={"default": ListenerConfig(type=ListenerType.TCP, bind=f"{bind_host}:{self.port}")},
            session_expiry_interval=self._session_expiry_seconds,
            # Listing plugins replaces amqtt's defaults, which include the admit-everyone AnonymousAuthPlugin.
            plugins={
                _plugin_path(CredentialAuthPlugin): {
                    "authenticator": self._authenticator,
                    "refusals": self.refusals,
                },
                _plugin_path(TopicAclPlugin): {"refusals": self.refusals},
            },
        )

    @property
    def is_running(self) -> bool:
        return self._broker is not None

    async def start(self) -> None:
        """Listen on `host:port`; raises `BrokerStartError` when the port cannot be bound."""
        if self._broker is not None:
            raise RuntimeError("the embedded MQTT broker is already running")
        broker = _AclBroker(self._config(), loop=asyncio.get_running_loop(), refusals=self.refusals)
        try:
            await broker.start()
        except BrokerError as exc:
            cause = exc.__cause__ or exc
            raise BrokerStartError(
                f"embedded MQTT broker could not listen on {self.host}:{self.port}: {cause}"
            ) from exc
        self._broker = broker
        # amqtt has no public accessor for the bound socket; needed to report the port when port=0.
        server = broker._servers["default"].instance
        sockets = getattr(server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("embedded MQTT broker listening on %s:%s", self.host, self.port)

    async def shutdown(self) -> None:
        """Disconnect every client and close the listener; a no-op when not running."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
            logger.info("embedded MQTT broker on %s:%s stopped", self.host, self.port)

    def start_in_thread(self, *, timeout: float = 10.0) -> None:
        """Run the broker on its own event loop in a daemon thread; return once it accepts connections.

        The web process serves requests on its own threads/loop, so the broker gets a private
        loop rather than sharing one whose lifetime it does not control.
        """
        if self._thread is not None:
            raise RuntimeError("the embedded MQTT broker thread is already running")
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                loop.close()
                started.set()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                try:
                    loop.run_until_complete(self.shutdown())
                finally:
                    loop.close()

        thread = threading.Thread(target=run, name=f"fogdeck-mqtt-broker-{self.port}", daemon=True)
        thread.start()
        if not started.wait(timeout):
            loop.call_soon_threadsafe(loop.stop)
            raise BrokerStartError(f"embedded MQTT broker on {self.host}:{self.port} did not start in {timeout}s")
        if failure:
            thread.join(timeout)
            error = failure[0]
            if isinstance(error, BrokerStartError):
                raise error
            raise BrokerStartError(f"embedded MQTT broker on {self.host}:{self.port} failed: {error}") from error
        self._thread, self._loop = thread, loop

    def stop_thread(self, *, timeout: float = 10.0) -> None:
        """Shut down a broker started with `start_in_thread` and wait for its thread to end."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = self._loop = None
        if loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.shutdown(), loop).result(timeout)
        except concurrent.futures.TimeoutError:
            # amqtt waits on each client's disconnect; a busy machine can take longer than `timeout`.
            # Stopping the loop ends the broker all the same (its sockets close with the thread).
            logger.warning("embedded MQTT broker on %s:%s did not shut down within %ss: stopping its loop",
                           self.host, self.port, timeout)  # fmt: skip
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)


def static_authenticator(service_users: dict[str, str], device_hashes: Callable[[str], str | None]) -> Authenticator:
    """Services by plain username -> password; devices by their stored `$7$` hash looked up by uid.

    A service username never falls through to the device lookup, so a device cannot take a
    service's name by registering it as a uid; nor may a device's uid be in the control plane's
    client id namespace (`fogdeck-…`), since a device's client id is its uid.
    """
    services = {name: secret.encode("utf-8") for name, secret in service_users.items()}

    def authenticate(username: str, password: str) -> Principal | None:
        expected = services.get(username)
        if expected is not None:
            ok = hmac.compare_digest(password.encode("utf-8"), expected)
            return Principal(username=username, kind="service") if ok else None
        if not is_valid_device_uid(username) or is_service_client_id(username):
            return None
        encoded = device_hashes(username)
        if encoded is None or not verify_secret(password, encoded):
            return None
        return Principal(username=username, kind="device")

    return authenticate
