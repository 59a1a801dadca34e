"""`mqtt://host:port` / `mqtts://host:port` as used by `--mqtt`."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class MqttAddress:
    host: str
    port: int
    tls: bool


def parse_mqtt_url(url: str) -> MqttAddress:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in {"mqtt", "mqtts", "tcp", "ssl"}:
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt:// or mqtts://)")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} has no host")
    tls = parts.scheme in {"mqtts", "ssl"}
    return MqttAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)
