"""The codebase's own checks, run by the suite so that `.ci/run` fails on them.

- ruff lint and ruff format (pyproject `[tool.ruff]`);
- mypy, strict on protocol/, agent/ and deployments/ (pyproject `[tool.mypy]` names what is strict
  and every relaxation);
- the OpenAPI schema: tests/core/test_schema.py runs `manage.py spectacular --validate --fail-on-warn`.
The import graph has its own test (tests/core/test_import_graph.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    result = _run("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_packages_type_check() -> None:
    # its cache under var/ (gitignored), so a re-run takes seconds
    result = _run("mypy", "--cache-dir", str(ROOT / "var" / "mypy-cache"))
    assert result.returncode == 0, result.stdout + result.stderr
