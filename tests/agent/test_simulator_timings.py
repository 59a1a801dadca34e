"""The simulator times each model version against the model's first version, in turns, so that versions
timed at moments of different machine load still compare as the models do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.inference import LoadedModel
from agent.simulator import MIN_BASE_MS, Timings
from models_registry.samples import build_classifier
from protocol import latency_histogram


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(data)
    return path


class BusyMachine:
    """While on, every smoke inference takes 3x as long: a machine whose cores are shared with hundreds of
    simulated devices and the control plane (the first install's moment in the e2e tests)."""

    def __init__(self, monkeypatch) -> None:
        self.on = False
        plain = LoadedModel.smoke_test

        def smoke_test(loaded: LoadedModel) -> float:
            return plain(loaded) * (3 if self.on else 1)

        monkeypatch.setattr(LoadedModel, "smoke_test", smoke_test)


def test_an_identical_version_timed_on_a_quiet_machine_is_not_faster_than_the_first_timed_on_a_busy_one(
    tmp_path, monkeypatch
):
    machine = BusyMachine(monkeypatch)
    model = {"slow_layers": 4, "hidden": 256}  # well above the 0.01 ms floor
    v1 = write(tmp_path, "v1", build_classifier(name="first", **model))
    v2 = write(tmp_path, "v2", build_classifier(name="second", **model))  # the same computation, other bytes
    timings = Timings(min_base_ms=0.0001)  # the floor would hide the machine's speed
    machine.on = True
    first = timings.time(v1, model="m", version=1, sha256="a")
    machine.on = False
    alone = Timings(min_base_ms=0.0001).time(v2, model="m", version=2, sha256="b")
    second = timings.time(v2, model="m", version=2, sha256="b")
    # timed on its own, the quiet moment makes the same model look faster than the busy one
    assert alone.base_ms < first.base_ms / 2, (alone.base_ms, first.base_ms)
    # timed in turns with the first version, the two compare as the models do
    assert 0.7 < second.base_ms / first.base_ms < 1.4, (second.base_ms, first.base_ms)


def test_a_version_that_really_is_slower_still_times_slower_against_its_reference(tmp_path):
    v1 = write(tmp_path, "v1", build_classifier(name="first"))
    slow = write(tmp_path, "slow", build_classifier(name="slow", slow_layers=24, hidden=256))
    timings = Timings()
    first = timings.time(v1, model="m", version=1, sha256="a")
    second = timings.time(slow, model="m", version=2, sha256="b")
    # the reference runs in microseconds: it is raised to the floor, and the slower version with it
    assert first.base_ms == MIN_BASE_MS
    assert second.base_ms > 1.5 * first.base_ms, (second.base_ms, first.base_ms)
    other = timings.time(slow, model="other-model", version=1, sha256="c")  # another model: its own reference
    assert other.base_ms == MIN_BASE_MS


def test_versions_at_the_floor_still_tell_apart_in_the_devices_latency_histograms(tmp_path):
    """The sample model on a Raspberry Pi 4 (x4) and at 2x that: both p95s must fall in distinct buckets of
    the histogram the gate merges (it starts at 0.1 ms), so their ratio survives."""
    v1 = write(tmp_path, "v1", build_classifier(name="first"))
    base = Timings().time(v1, model="m", version=1, sha256="a").base_ms
    rng = np.random.default_rng(3)
    p95s = []
    for factor in (4.0, 8.0):
        counts = latency_histogram.counts_of(base * factor * rng.lognormal(0.0, 0.25, size=5000))
        p95s.append(latency_histogram.quantile(counts, 0.95))
    assert p95s[1] / p95s[0] == pytest.approx(2.0, rel=0.2)
