"""The ``hnnx demo``: simulate the bundled hybrid ANN→SNN network on the digits test split.

The model (``hnnx.models`` ``hybrid_a2s``, trained by ``examples/hybrid_a2s.py``):

    pixels [N, 1, 8, 8] → Conv → ReLU → Conv → ReLU            (ANN)
                        → A2S rate coding, T = 16 steps        (ANN→SNN Hybrid Unit)
                        → Linear → LIF → Linear → LIF           (SNN)
                        → S2A global firing rate → scores [N, 10]
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hnnx import models
from hnnx.datasets import load_digits
from hnnx.model import write_atomic
from hnnx.runtime.simulate import SimulationResult, npz_bytes, simulate

DEMO_MODEL = "hybrid_a2s"


def run_demo(out_dir: Path, progress: bool = True) -> tuple[Path, Path, SimulationResult]:
    """Copy the demo model and the digits test split to ``out_dir`` and simulate.

    Returns the model path, the data path and the simulation result.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / f"digits_{DEMO_MODEL}.onnx"
    shutil.copyfile(models.path(DEMO_MODEL), model_path)
    data = load_digits()
    data_path = out_dir / "digits_test.npz"
    pixels = data.x_test.reshape(-1, *models.input_layout(DEMO_MODEL))
    write_atomic(data_path, npz_bytes({"pixels": pixels, "labels": data.y_test}))
    return model_path, data_path, simulate(model_path, data_path, progress=progress)
