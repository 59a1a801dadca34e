"""Where the CLI keeps the server URL and token: a JSON file readable by its owner only, or the environment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "FOGDECK_URL"
ENV_TOKEN = "FOGDECK_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENV_CONFIG = "FOGDECK_CONFIG"


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str


def config_path() -> Path:
    if explicit := os.environ.get(ENV_CONFIG):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fogdeck" / "config.json"


def save_config(config: ClientConfig, path: Path | None = None) -> Path:
    """Write the file with mode 0600 from the start (never world-readable, not even for a moment)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"url": config.url, "token": config.token}, handle)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
    return path


def load_config(path: Path | None = None) -> ClientConfig | None:
    """The environment wins over the file, each variable on its own; None when no URL or no token is known."""
    path = path or config_path()
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    url = os.environ.get(ENV_URL) or stored.get("url", "")
    token = os.environ.get(ENV_TOKEN) or stored.get("token", "")
    return ClientConfig(url=url, token=token) if url and token else None
