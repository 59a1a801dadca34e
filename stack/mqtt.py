"""The control plane's side of the embedded MQTT broker: who may connect."""

from __future__ import annotations

from django.conf import settings
from django.db import connection

from broker.acl import Principal
from broker.embedded import Authenticator, EmbeddedBroker, static_authenticator


def _device_hash(uid: str) -> str | None:
    from fleet.services import device_credential_hash

    # Runs on the broker's worker threads, which outlive any request: don't keep a connection there.
    try:
        return device_credential_hash(uid)
    finally:
        connection.close()


def broker_authenticator() -> Authenticator:
    """The control plane's service user, plus every non-revoked device by its stored credential hash."""
    return static_authenticator({settings.MQTT_USERNAME: settings.MQTT_PASSWORD}, _device_hash)


def embedded_broker(*, host: str = "127.0.0.1", port: int | None = None) -> EmbeddedBroker:
    return EmbeddedBroker(
        host=host,
        port=settings.EMBEDDED_MQTT_PORT if port is None else port,
        authenticator=broker_authenticator(),
    )


__all__ = ["Principal", "broker_authenticator", "embedded_broker"]
