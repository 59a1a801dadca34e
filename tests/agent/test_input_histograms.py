"""The agent's input histograms (drift detection): bins as the protocol defines them, edges from the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from agent.telemetry import TelemetryRecorder, parse_hist_edges


def test_the_agent_histogram_puts_values_in_the_bins_the_protocol_defines():
    recorder = TelemetryRecorder(hist_edges=(0.0, 1.0))
    recorder.record_inputs("m", 1, {"x": np.array([[-1.0], [0.0], [0.5], [1.0], [3.0], [np.nan]])})
    recorder.record_inputs("m", 1, {"x": np.array([[0.2]])})
    (sample,) = recorder.drain()
    stats = sample.inputs["x"]
    assert stats.count == 6  # the NaN row is dropped
    assert stats.hist is not None
    assert stats.hist.edges == [0.0, 1.0]
    assert stats.hist.counts == [1, 3, 2]  # below 0 | [0, 1) | at or above 1


def test_agent_histogram_edges_from_the_command_line_are_checked():
    assert parse_hist_edges("-1,0,2.5") == (-1.0, 0.0, 2.5)
    for bad in ("1,0", "0,0", "a,b", "", ",".join(str(i) for i in range(65)), "0,inf"):
        with pytest.raises(ValueError):
            parse_hist_edges(bad)


def test_each_column_of_a_multi_column_input_gets_its_own_histogram():
    recorder = TelemetryRecorder(hist_edges=(0.0, 1.0))
    recorder.record_inputs("m", 1, {"input": np.array([[-1.0, 5.0], [0.5, 0.5]])})
    (sample,) = recorder.drain()
    assert sample.inputs["input[0]"].hist.counts == [1, 1, 0]
    assert sample.inputs["input[1]"].hist.counts == [0, 1, 1]


def test_only_the_first_64_features_carry_a_histogram():
    recorder = TelemetryRecorder()
    recorder.record_inputs("m", 1, {"wide": np.zeros((3, 100))})
    (sample,) = recorder.drain()
    with_hist = [name for name, stats in sample.inputs.items() if stats.hist is not None]
    assert len(sample.inputs) == 100 and len(with_hist) == 64
    assert with_hist == [f"wide[{i}]" for i in range(64)]
