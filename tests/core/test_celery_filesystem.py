"""The embedded default's Celery transport: a worker never sees half a message, and never dies of a bad file."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import filesystem as kombu_filesystem
from kombu.utils.json import dumps as real_dumps

from core import celery_filesystem

TRANSPORT = "core.celery_filesystem:Transport"


def connect(folder: Path) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    return Connection("filesystem://", transport=TRANSPORT, transport_options=options)


def test_the_embedded_default_uses_this_transport(settings: Any) -> None:
    if settings.REDIS_URL:
        assert not getattr(settings, "CELERY_BROKER_TRANSPORT", None)
    else:
        assert settings.CELERY_BROKER_URL.startswith("filesystem://") and settings.CELERY_BROKER_TRANSPORT == TRANSPORT


def test_a_message_being_written_is_invisible_to_the_worker_until_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu's own transport created the file, then serialized and wrote it: a worker looking in between
    read an empty file and stopped with "Unrecoverable error: JSONDecodeError"."""
    serializing, release = threading.Event(), threading.Event()

    def slow_dumps(payload: Any) -> str:
        serializing.set()
        assert release.wait(10)
        return real_dumps(payload)

    monkeypatch.setattr(celery_filesystem, "dumps", slow_dumps)
    monkeypatch.setattr(kombu_filesystem, "dumps", slow_dumps)
    with connect(tmp_path) as producer, connect(tmp_path) as worker:
        writer = threading.Thread(target=producer.default_channel._put, args=("celery", {"task": "tick"}))
        writer.start()
        try:
            assert serializing.wait(10)
            with pytest.raises(Empty):  # not there yet (kombu's transport: JSONDecodeError here)
                worker.default_channel._get("celery")
        finally:
            release.set()
            writer.join(10)
        assert worker.default_channel._get("celery") == {"task": "tick"}


def test_an_unreadable_message_file_is_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "0_00000000-0000-0000-0000-000000000000.celery.msg").write_bytes(b"")  # e.g. another program's
    with connect(tmp_path) as producer, connect(tmp_path) as worker, caplog.at_level(logging.ERROR):
        producer.default_channel._put("celery", {"task": "tick"})
        assert worker.default_channel._get("celery") == {"task": "tick"}
    assert "dropped an unreadable message of Celery queue 'celery'" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_every_message_is_delivered_once_and_nothing_is_left_behind(tmp_path: Path) -> None:
    with connect(tmp_path) as producer, connect(tmp_path) as worker:
        for n in range(5):
            producer.default_channel._put("celery", {"n": n})
        assert worker.default_channel._size("celery") == 5
        assert sorted(worker.default_channel._get("celery")["n"] for _ in range(5)) == list(range(5))
        with pytest.raises(Empty):
            worker.default_channel._get("celery")
    assert list(tmp_path.iterdir()) == []
