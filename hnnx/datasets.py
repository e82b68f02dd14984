"""Small real data sets bundled with hnnx, for demos, examples and tests (no network)."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import numpy as np


@dataclass
class DigitsSplit:
    """The digits data, pixels scaled to [0, 1]: ``x`` [N, 64] float32, ``y`` [N] int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """The bundled 8×8 digits (1,797 samples), shuffled with ``seed`` and split."""
    with importlib.resources.files("hnnx").joinpath("data", "digits.npz").open("rb") as handle:
        archive = np.load(handle)
        images, labels = archive["images"], archive["labels"]
    x = (images.reshape(len(images), 64) / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(round(len(x) * (1 - test_fraction)))
    train, test = order[:cut], order[cut:]
    return DigitsSplit(x[train], labels[train], x[test], labels[test])
