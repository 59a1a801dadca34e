"""Readiness of the processes that serve no HTTP (worker, beat, bridge): each touches its heartbeat file
while it is doing its job, and `python -m core.heartbeat check NAME` (docker-compose's healthcheck) says
whether that file is fresh.

No Django import: the check runs in a fresh interpreter every few seconds, and must stay cheap.
The directory is `HEARTBEAT_DIR` (default /tmp/fogdeck-heartbeat): local to the container, one file per
process name. What "doing its job" means: the bridge is connected and subscribed and its loop turns; the
worker's broker connection is up; beat's scheduler ticks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_DIR = "/tmp/fogdeck-heartbeat"  # noqa: S108 - one container's own processes, not shared
DEFAULT_MAX_AGE_SECONDS = 60.0
NAMES = ("worker", "beat", "bridge")


def heartbeat_path(name: str) -> Path:
    return Path(os.environ.get("HEARTBEAT_DIR") or DEFAULT_DIR) / name


def beat(name: str) -> None:
    """`name` is alive and ready now."""
    path = heartbeat_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{time.time():.3f}\n")


def clear(name: str) -> None:
    """Not ready (starting, stopping): a file left by an earlier run must not count."""
    heartbeat_path(name).unlink(missing_ok=True)


def problem(name: str, max_age: float = DEFAULT_MAX_AGE_SECONDS) -> str | None:
    """None when `name` beat within `max_age` seconds, else why it is not ready."""
    path = heartbeat_path(name)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return f"{name}: no heartbeat at {path} (not started, or not ready yet)"
    if age > max_age:
        return f"{name}: last heartbeat {age:.0f}s ago (more than {max_age:g}s)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.heartbeat", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check"])
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_SECONDS, help="seconds (default 60)")
    args = parser.parse_args(argv)
    reason = problem(args.name, args.max_age)
    print(reason or f"{args.name}: ready")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
