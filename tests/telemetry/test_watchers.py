"""The watch registry: only groups an open websocket watches are sent to, and marks expire."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from telemetry import streaming, watchers
from telemetry.streaming import Coalescer, rollout_cohort_offer
from telemetry.watchers import EVERYTHING, stream_watch, stream_watched, stream_watched_groups


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
