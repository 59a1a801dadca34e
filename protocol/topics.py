"""MQTT topic builders for protocol version 1 (see docs/protocol.md)."""

from __future__ import annotations

import re

PROTOCOL_VERSION = 1
ROOT = f"fogdeck/v{PROTOCOL_VERSION}"
DEVICES_ROOT = f"{ROOT}/devices"

# Device uids appear verbatim in topics, so they may not contain MQTT wildcards or separators.
DEVICE_UID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_DEVICE_UID_RE = re.compile(rf"^{DEVICE_UID_PATTERN}$")


def is_valid_device_uid(uid: str) -> bool:
    return bool(_DEVICE_UID_RE.match(uid))


# MQTT client ids starting with this are the control plane's (bridges, health checks). A device's client
# id is its uid (both brokers enforce it), so no device may have a uid in this namespace: it could
# otherwise connect under a service's client id and take that session over.
SERVICE_CLIENT_ID_PREFIX = "fogdeck-"


def is_service_client_id(client_id: str) -> bool:
    """True for client ids reserved for the control plane (compared case-insensitively, to be safe)."""
    return client_id.lower().startswith(SERVICE_CLIENT_ID_PREFIX)


def device_prefix(uid: str) -> str:
    """Every topic a device may use starts with this prefix (its ACL boundary)."""
    if not is_valid_device_uid(uid):
        raise ValueError(f"invalid device uid {uid!r}")
    return f"{DEVICES_ROOT}/{uid}"


def device_uid_from_topic(topic: str) -> str | None:
    """The device uid a topic belongs to, or None when it is not a device topic."""
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:3]) != DEVICES_ROOT:
        return None
    uid = parts[3]
    return uid if is_valid_device_uid(uid) else None
