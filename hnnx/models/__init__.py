"""Trained models that ship with hnnx (made by the scripts in ``examples/`` on the bundled digits).

| name | network |
|---|---|
| ``ann_cnn`` | Conv → BatchNorm → ReLU → Conv → BatchNorm → ReLU → Linear → ReLU → Linear (no spiking ops) |
| ``ann_residual`` | Conv → residual block (Add) → two branches joined by Concat (one through AvgPool 3×3) → AvgPool → Linear |
| ``snn_mlp`` | direct coding → Linear → LIF → Linear → LIF → firing rate |
| ``snn_conv`` | direct coding → Conv → LIF → Conv → LIF → Linear → mean over time |
| ``hybrid_a2s`` | ANN conv front → A2S rate coding → spiking MLP → firing rate |
| ``hybrid_s2a`` | direct coding → Conv → LIF → S2A windowed rates → ANN head |

Each takes ``pixels`` (``[N, 64]`` for ``snn_mlp``, else ``[N, 1, 8, 8]``, values in [0, 1])
and returns ``scores`` ``[N, 10]``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from hnnx.errors import HnnxError


def available() -> list[str]:
    """Names of the bundled models."""
    folder = importlib.resources.files("hnnx.models")
    return sorted(entry.name[: -len(".onnx")] for entry in folder.iterdir() if entry.name.endswith(".onnx"))


def path(name: str) -> Path:
    """The file of bundled model ``name``."""
    if name not in available():
        raise HnnxError(f"no bundled model {name!r} (available: {', '.join(available())})")
    return Path(str(importlib.resources.files("hnnx.models").joinpath(f"{name}.onnx")))


def input_layout(name: str) -> tuple[int, ...]:
    """The per-sample input shape of bundled model ``name``."""
    return (64,) if name == "snn_mlp" else (1, 8, 8)
