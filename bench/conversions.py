"""Benchmark: how often one ``hnnx.quantize`` converts the model between forms.

Counts, during one ``hnnx.quantize`` call on a bundled model (digits calibration data):

* ``serialize`` — ``ModelProto.SerializeToString`` calls (onnxruntime sessions, the checker and
  shape inference each need the model as bytes);
* ``shape inference`` — ``onnx.shape_inference.infer_shapes`` and onnxruntime's symbolic shape
  inference runs;
* ``graph import`` / ``graph export`` — onnx-graphsurgeon ``import_onnx`` / ``export_onnx`` calls.

The calls are counted with a profile hook (C calls included), so nothing in hnnx is patched.
Run: python bench/conversions.py [--model hybrid_a2s --model ann_cnn ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import format_table  # noqa: E402

COUNTED = {
    "SerializeToString": "serialize",
    "infer_shapes": "shape inference",
    "infer_shapes_path": "shape inference",
    "infer_symbolic_shapes": "shape inference",
    "import_onnx": "graph import",
    "export_onnx": "graph export",
}


def count_conversions(work: Callable[[], Any]) -> tuple[Counter, float]:
    """Run ``work()`` and count the conversions it makes; returns the counts and the wall time (s)."""
    counts: Counter = Counter()

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            name = getattr(arg, "__name__", "")
            if name == "SerializeToString" and type(getattr(arg, "__self__", None)).__name__ == "ModelProto":
                counts["serialize"] += 1
        elif event == "call":
            label = COUNTED.get(frame.f_code.co_name)
            if label and label != "serialize" and _is_entry(frame):
                counts[label] += 1

    started = time.perf_counter()
    sys.setprofile(hook)
    try:
        work()
    finally:
        sys.setprofile(None)
    return counts, time.perf_counter() - started


def _is_entry(frame: Any) -> bool:
    """Count a library's public entry once, not its recursive helpers of the same name."""
    caller = frame.f_back
    return caller is None or caller.f_code.co_name != frame.f_code.co_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="bundled model name (repeatable)")
    parser.add_argument("--samples", type=int, default=128, help="calibration samples")
    args = parser.parse_args()

    import numpy as np

    import hnnx
    import hnnx.models
    from hnnx.datasets import load_digits

    names = args.model or ["ann_cnn", "hybrid_a2s"]
    rows = []
    for name in names:
        model = hnnx.load(hnnx.models.path(name))
        pixels = load_digits().x_train[: args.samples]
        shape = [d.dim_value or -1 for d in model.graph.input[0].type.tensor_type.shape.dim]
        calibration = {model.graph.input[0].name: pixels.reshape(-1, *shape[1:]).astype(np.float32)}
        hnnx.quantize(model, calibration)  # warm-up: imports and caches
        counts, seconds = count_conversions(lambda: hnnx.quantize(model, calibration))
        rows.append([name, *(str(counts[k]) for k in ("serialize", "shape inference", "graph import",
                                                        "graph export")), f"{seconds:.3f}"])
    print(format_table(["model", "serialize", "shape inference", "graph import", "graph export", "time (s)"],
                         rows))


if __name__ == "__main__":
    main()
