"""Progress for long operations: one redrawn line on a terminal, a line per change otherwise (CI logs)."""

from __future__ import annotations

import sys
from typing import TextIO

from .transport import ProgressFn
from .types import RolloutDetail


class ProgressLine:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = ""

    def show(self, text: str) -> None:
        if text == self._last:
            return
        self._last = text
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


def bar(done: int, total: int, width: int = 30) -> str:
    fraction = done / total if total else 1.0
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%"


def upload_progress(line: ProgressLine, name: str) -> ProgressFn:
    """A ProgressFn for the upload: on a terminal every chunk, in a log every quarter."""
    last_quarter = [-1]

    def report(done: int, total: int) -> None:
        if line.tty:
            line.show(f"uploading {name} {bar(done, total)} {done / 1e6:.1f}/{total / 1e6:.1f} MB")
            return
        quarter = int(4 * done / total) if total else 4
        if quarter != last_quarter[0]:
            last_quarter[0] = quarter
            line.show(f"uploading {name} {bar(done, total)}")

    return report


def rollout_summary(rollout: RolloutDetail) -> str:
    """`rollout 7 running wave 2/4 | w0 passed 10/10 | w1 installing 40/100 (2 failed) …`"""
    waves = rollout.get("waves") or []
    parts = [f"rollout {rollout['id']} {rollout['status']}"]
    if waves:
        current = rollout.get("current_wave")
        parts[0] += f" wave {(current if current is not None else 0) + 1}/{len(waves)}"
    for wave in waves:
        jobs = wave.get("jobs") or {}
        ok = jobs.get("SUCCEEDED", 0)
        bad = sum(jobs.get(s, 0) for s in ("FAILED", "REJECTED", "TIMED_OUT"))
        text = f"w{wave['index']} {wave['status']} {ok}/{wave.get('size', 0)}"
        if bad:
            text += f" ({bad} failed)"
        if rollbacks := sum((wave.get("rollbacks") or {}).values()):
            text += f" rb {wave['rollbacks'].get('SUCCEEDED', 0)}/{rollbacks}"
        parts.append(text)
    return " | ".join(parts)
