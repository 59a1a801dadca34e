"""Run the `fogdeck` CLI as its own process, the way CI runs it (python -m fogdeck_client = the console script)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.processes import ROOT


def cli_env(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGDECK_")}
    env.update({"FOGDECK_CONFIG": str(config), "PYTHONUNBUFFERED": "1", **extra})
    return env


def fogdeck(*args: str, config: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fogdeck_client", *args],
        cwd=ROOT, env=cli_env(config, **env), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def fogdeck_background(*args: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "fogdeck_client", *args], cwd=ROOT, env=cli_env(config), stdout=handle,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def scrape(url: str, token: str = "") -> dict[str, float]:
    """A Prometheus text page as {`name{labels}`: value} (comments skipped)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"} if token else {})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own test server
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str, *labels: str) -> float:
    """The sum of the samples of `prefix` whose labels include every one of `labels` (`kind="job_update"`)."""
    return sum(
        v for k, v in samples.items() if (k == prefix or k.startswith(prefix + "{")) and all(lab in k for lab in labels)
    )
