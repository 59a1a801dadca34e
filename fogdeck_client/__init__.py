"""A small, typed Python client for Fogdeck's REST API (`/api/v1/`). HTTP only: it never imports Django.

from fogdeck_client import FogdeckClient
client = FogdeckClient("https://fogdeck.example", token="…")
version = client.upload_version("defects", "model.onnx", format="onnx", framework="pytorch")
client.publish_version(version["model"], version["number"])
"""

from __future__ import annotations

from .client import FogdeckClient, RolloutOutcome
from .config import ClientConfig, load_config, save_config
from .transport import ApiError, TransportError

__all__ = [
    "ApiError",
    "ClientConfig",
    "FogdeckClient",
    "RolloutOutcome",
    "TransportError",
    "load_config",
    "save_config",
]
