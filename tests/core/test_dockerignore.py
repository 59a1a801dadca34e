"""`COPY . .` in the Dockerfile must not bake secrets, local data or history into the image (issue 14, finding 14).

There is no Docker engine here, so .dockerignore is read with Docker's rules: patterns relative to the build
context, `*` and `?` within one path segment, `**` across segments, `!` re-includes, the last matching line
wins, and a path is excluded when it or one of its parent directories is.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(f"^{out}$")


@cache
def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = pattern.strip("/")  # Docker cleans `/a/` to `a`
        rules.append((negated, _regex(pattern)))
    return rules


def excluded(path: str) -> bool:
    """True when Docker leaves `path` (relative to the build context) out of the context."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, regex in _rules():
        if any(regex.match(candidate) for candidate in candidates):
            result = not negated
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        "deploy/.env",
        "var/fogdeck.sqlite3",
        "var/signing/ed25519.key",
        "var/demo-devices.json",
        "agent/var/state.json",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        ".venv/bin/python",
        "deploy/mosquitto/certs/server.key",
        "fleet/__pycache__/models.cpython-311.pyc",
    ],
)
def test_secrets_local_data_and_history_stay_out_of_the_image(path):
    assert excluded(path), f"{path} would be copied into the image"


@cache
def _tracked() -> list[str]:
    result = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # not a git checkout (e.g. an sdist): read the tree instead
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    return result.stdout.split()


def test_what_the_image_needs_is_kept():
    for path in ("pyproject.toml", "README.md", "manage.py", "config/settings.py", "frontend/static"):
        assert not excluded(path), path
    packages = ["config", "core", "audit", "fleet", "models_registry", "deployments", "telemetry", "frontend",
                "mqttbridge", "outbox", "protocol", "broker", "agent", "endpoints", "webhooks"]  # fmt: skip
    dropped = [p for p in _tracked() if p.split("/")[0] in packages and excluded(p)]
    assert dropped == [], f"tracked source files left out of the image: {dropped[:10]}"


def test_the_matcher_follows_dockers_rules():
    assert _regex("**/var").match("a/b/var") and _regex("**/var").match("var")
    assert not _regex("*.pyc").match("a/b.pyc")  # `*` stays within one segment
    assert _regex("var").match("var") and not _regex("var").match("variables")
