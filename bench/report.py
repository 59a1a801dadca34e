"""One row per figure: the figure, the baseline measured in the same run, their ratio and the target."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class Row:
    bench: str
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        if not self.baseline_value or math.isnan(self.baseline_value) or math.isnan(self.value):
            return float("nan")
        return self.value / self.baseline_value

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Row:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})  # type: ignore[arg-type]


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"


def table(rows: list[Row]) -> str:
    """A Markdown table (it reads as well in a terminal as in docs/benchmarks.md)."""
    lines = [
        "| bench | figure | value | baseline (same run) | ratio | target | met | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.bench} | {r.figure} | {_fmt(r.value)} {r.unit} | {r.baseline}: {_fmt(r.baseline_value)} {r.unit} "
            f"| {_fmt(r.ratio)}x | {r.target} | {met} | {r.note} |"
        )
    return "\n".join(lines)


def print_rows(rows: list[Row]) -> None:
    print(table(rows), flush=True)


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, object]:
    """Cores, RAM, kernel and the service versions, for the record next to the figures."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    import redis

    from bench.common import BENCH_REDIS_URL

    info = redis.Redis.from_url(BENCH_REDIS_URL).info("server")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "ram_gb": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "redis": info.get("redis_version"),
        "mosquitto": _version(["mosquitto", "-h"]),
        "load_average_at_start": os.getloadavg(),
    }


def write_json(path: Path, payload: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def write_rows(path: Path | str, rows: list[Row]) -> None:
    """Rows for the runner, from a benchmark run in a child process (`--rows-json`)."""
    Path(path).write_text(json.dumps([r.as_dict() for r in rows], default=str))


def read_rows(path: Path | str) -> list[Row]:
    return [Row.from_dict(d) for d in json.loads(Path(path).read_text())]
