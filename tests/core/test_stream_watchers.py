"""The watch registry: only groups an open websocket watches are sent to, and marks expire."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core import stream_watchers as watchers
from core.stream_watchers import EVERYTHING, stream_watch, stream_watched, stream_watched_groups
from deployments.rollout_streams import rollout_cohort_offer
from telemetry import streaming
from telemetry.streaming import Coalescer


def _group(kind: str = "device") -> str:
    # unique per test run: the registry lives in the shared cache
    return f"{kind}.{uuid.uuid4().int % 10**12}"


@pytest.fixture(autouse=True)
def fresh_reads():
    watchers._read.at = 0.0
    yield
    watchers._read.at = 0.0


def test_only_watched_groups_are_sent():
    watched, unwatched = _group(), _group()
    stream_watch([watched])
    coalescer = Coalescer(interval_s=0.2, send=None, watched=stream_watched)
    coalescer._pending = {watched: {"k": {"n": 1}}, unwatched: {"k": {"n": 2}}}
    assert [group for group, _ in coalescer.take()] == [watched]


def test_a_mark_expires_unless_it_is_refreshed(monkeypatch):
    group = _group()
    now = [1_000_000.0]
    monkeypatch.setattr(watchers.time, "time", lambda: now[0])
    stream_watch([group])
    assert group in stream_watched_groups()
    now[0] += watchers.WATCH_TTL_SECONDS - 1
    watchers._read.at = 0.0
    assert group in stream_watched_groups()
    now[0] += 2
    watchers._read.at = 0.0
    assert group not in stream_watched_groups()


def test_two_pages_marking_at_once_both_count():
    first, second = _group(), _group()
    stream_watch([first])
    stream_watch([second])
    assert {first, second} <= stream_watched([first, second, _group()])


def test_an_unreadable_registry_counts_every_group_as_watched(monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(watchers.cache, "get", broken)
    assert stream_watched_groups() is EVERYTHING
    assert stream_watched(["device.1", "rollout.2"]) == {"device.1", "rollout.2"}


@pytest.mark.django_db
def test_no_rollout_lookup_for_a_batch_when_no_rollout_page_is_open(monkeypatch):
    monkeypatch.setattr(watchers, "stream_watched_groups", lambda: frozenset({_group()}))
    offered: list[object] = []
    monkeypatch.setattr(streaming, "stream_offer", offered.append)
    sample = (1, "m", 1, None, 10, 0, 5.0)
    with CaptureQueriesContext(connection) as queries:
        rollout_cohort_offer([sample])  # type: ignore[list-item]
    assert len(queries) == 0 and offered == []


def _mark_from_another_process(group: str) -> None:
    """What `stream_watch` does in a web process: the cache index changes, this process's reading doesn't."""
    held = watchers._read.at
    stream_watch([group])
    watchers._read.at = held


def test_a_page_that_opened_before_an_update_was_offered_gets_it_despite_a_recent_reading():
    stream_watched_groups()  # this process's reading is fresh: READ_EVERY_SECONDS would keep it
    group = _group("rollout")
    _mark_from_another_process(group)
    assert group not in watchers._read.groups  # the held reading predates the mark
    sent: list[str] = []
    arrived = threading.Event()

    async def send(to: str, event: dict) -> None:
        sent.append(to)
        arrived.set()

    coalescer = Coalescer(interval_s=0.2, send=send, watched=stream_watched)
    try:
        coalescer.offer({group: {"progress": {"status": "paused"}}})
        assert arrived.wait(5), "the update for the open page was dropped"
    finally:
        coalescer.close()
    assert sent == [group]


def test_an_unwatched_group_costs_one_fresh_reading_per_flush_not_one_per_group(monkeypatch):
    stream_watched_groups()
    reads: list[str] = []
    real_get = watchers.cache.get
    monkeypatch.setattr(watchers.cache, "get", lambda key, *a, **k: reads.append(key) or real_get(key, *a, **k))
    offered_at = watchers.time.monotonic()
    assert stream_watched([_group(), _group(), _group()], offered_at=offered_at) == set()
    assert reads == [watchers.INDEX_KEY]
    assert stream_watched([_group()], offered_at=offered_at) == set()  # a reading after the offer is held
    assert reads == [watchers.INDEX_KEY]
