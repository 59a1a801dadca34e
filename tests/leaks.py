"""What a test leaves running: threads and child processes started during it that are still alive after it.

A thread or process that outlives its test keeps working on the next test's broker, database or files
(a bridge thread draining the outbox after its test's database access ended, an agent still publishing):
such failures show up in some other test, by chance. `tests/conftest.py` fails the test that leaked.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Our code's modules: a daemon thread running one of these (or paho's network thread, which only our
# MQTT clients start) is ours, and must be stopped by whoever started it.
OUR_PACKAGES = frozenset(
    {"agent", "audit", "broker", "config", "core", "deployments", "endpoints", "fleet", "models_registry",
     "mqttbridge", "protocol", "telemetry", "webhooks", "tests", "bench"}
)  # fmt: skip
PAHO_THREAD_PREFIX = "paho-mqtt-client-"


def _thread_module(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    if target is not None:
        return getattr(target, "__module__", "") or ""
    return type(thread).__module__


def is_ours(thread: threading.Thread) -> bool:
    """Non-daemon threads always count (they keep the interpreter alive); daemon threads when our code
    runs in them. Idle workers of unnamed thread pools do not: asgiref keeps one for the process
    (`sync_to_async`), and asyncio one per loop; they run nothing between calls."""
    if thread.name.startswith("ThreadPoolExecutor-") and _thread_module(thread) == "concurrent.futures.thread":
        return False
    if not thread.daemon:
        return True
    if thread.name.startswith(PAHO_THREAD_PREFIX):
        return True
    return _thread_module(thread).split(".")[0] in OUR_PACKAGES


def _children() -> dict[int, str]:
    """{pid: command line} of this process's live (not zombie) children; empty where there is no /proc."""
    me = os.getpid()
    found: dict[int, str] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ")"
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if int(ppid) != me or state == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = cmdline[:200]
    return found


@dataclass
class Snapshot:
    threads: frozenset[int]
    children: frozenset[int]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(frozenset(t.ident or 0 for t in threading.enumerate()), frozenset(_children()))


def leaked_since(before: Snapshot, grace: float) -> list[str]:
    """Descriptions of the threads (ours or non-daemon) and child processes started since `before` that are
    still alive after waiting up to `grace` seconds for them to end."""
    deadline = time.monotonic() + grace
    while True:
        threads = [t for t in threading.enumerate() if t.ident not in before.threads and t.is_alive() and is_ours(t)]
        children = {pid: cmd for pid, cmd in _children().items() if pid not in before.children}
        if (not threads and not children) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    found = [
        f"thread {t.name!r} ({'daemon' if t.daemon else 'non-daemon'}, running {_thread_module(t) or '?'})"
        for t in threads
    ]
    found += [f"child process {pid}: {cmd}" for pid, cmd in sorted(children.items())]
    return found


def kill_children_since(before: Snapshot) -> None:
    """Stop the child processes a failed test left, so they do not run on into the next test."""
    import signal

    for pid in set(_children()) - before.children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
