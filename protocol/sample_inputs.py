"""The input distribution of the sample models: what they were "trained" on and what calm devices feed them.

Both sides of the demo need the same distribution: `models_registry/samples.py` builds the sample
classifiers' centroids and their reference profiles (drift detection's "training data") from it, and
the fleet simulator (`agent/simulator.py`) draws the inputs its devices report from it. Were they to
disagree, every simulated site would raise a drift alert as soon as its devices ran a sample model.
It lives here because `protocol/` is what the Django side and the agent may both import.

A row is one of three class centroids (chosen uniformly) plus independent N(0, `SAMPLE_NOISE`) noise per
feature. Inputs of any other width than the samples' (`SAMPLE_FEATURES`) are standard normal.
"""

from __future__ import annotations

import numpy as np

SAMPLE_FEATURES = 4
SAMPLE_CENTROIDS = np.array([[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.5], [0.0, 0.0, 1.0, -0.5]], dtype=np.float32)
SAMPLE_NOISE = 0.35


def sample_labels(rows: int) -> np.ndarray:
    """Balanced class labels 0, 1, 2, 0, 1, … (the evaluation set's order)."""
    return np.arange(rows) % len(SAMPLE_CENTROIDS)


def sample_inputs(
    gen: np.random.Generator, rows: int, width: int = SAMPLE_FEATURES, *, shift: float = 0.0,
    labels: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """`rows` inputs of `width` features from the samples' distribution, every feature moved by `shift`.

    `labels` picks each row's centroid (default: drawn uniformly); a width other than the samples' gets
    N(shift, 1) per feature, the simulator's generic synthetic input.
    """
    if width != SAMPLE_FEATURES:
        return gen.normal(shift, 1.0, size=(rows, width))
    if labels is None:
        labels = gen.integers(0, len(SAMPLE_CENTROIDS), size=rows)
    noise = gen.normal(0.0, SAMPLE_NOISE, size=(rows, width))
    return SAMPLE_CENTROIDS[labels] + noise + shift
