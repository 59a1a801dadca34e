"""Who may publish, subscribe to and receive which MQTT topics.

Pure functions over a `Principal`, so the rule is tested without a broker and the same rule
can later be rendered into a Mosquitto ACL file (`pattern readwrite fogdeck/v1/devices/%u/#` and
`pattern readwrite $aws/things/%u/jobs/#`, fleet/mosquitto_auth.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocol.aws_jobs import jobs_prefix
from protocol.topics import device_prefix, is_service_client_id, is_valid_device_uid

PrincipalKind = Literal["service", "device"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated MQTT client: the control plane's bridge ("service") or one device.

    A device's username is its uid, which is what ties it to its topic prefix.
    """

    username: str
    kind: PrincipalKind


def _own_roots(principal: Principal) -> tuple[str, ...]:
    """The device's topic prefixes: its Fogdeck prefix and its AWS IoT Jobs prefix (`$aws/things/{uid}/jobs`);
    none when its username could never be a device uid."""
    if (
        principal.kind != "device"
        or not is_valid_device_uid(principal.username)
        or is_service_client_id(principal.username)
    ):
        return ()
    return (device_prefix(principal.username), jobs_prefix(principal.username))


def _below(topic: str, roots: tuple[str, ...]) -> bool:
    return any(topic.startswith(root + "/") and len(topic) > len(root) + 1 for root in roots)


def may_publish(principal: Principal, topic: str) -> bool:
    """Services publish anywhere; a device only to concrete topics below its own prefixes."""
    if principal.kind == "service":
        return True
    if "+" in topic or "#" in topic:
        return False
    return _below(topic, _own_roots(principal))


def may_subscribe(principal: Principal, topic_filter: str) -> bool:
    """Services subscribe to anything; a device only to filters below its own prefixes.

    Wildcards are allowed only after `<prefix>/`, so `+` or `#` at or above the device level
    (`fogdeck/v1/devices/+/jobs/notify`, `#`) never reaches another device's topics.
    """
    if principal.kind == "service":
        return True
    return _below(topic_filter, _own_roots(principal))


def may_receive(principal: Principal, topic: str) -> bool:
    """Checked per delivered message: a second line behind `may_subscribe` for sessions the broker reuses.

    `<prefix>/#` also matches the bare `<prefix>` topic in MQTT, so that one is the device's too.
    """
    if principal.kind == "service":
        return True
    return any(topic == root or topic.startswith(root + "/") for root in _own_roots(principal))
