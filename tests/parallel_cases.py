"""Models, data and comparisons shared by the data-parallel tests (local processes and Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from hnnx import ops
from hnnx.datasets import load_digits
from hnnx.runtime import SimulationResult

FEATURES = 6
STEPS = 5


def digits(samples: int | None = None) -> dict[str, np.ndarray]:
    """The digits test split as the bundled hybrid models take it: ``pixels`` [N, 1, 8, 8], ``labels`` [N]."""
    split = load_digits()
    pixels = split.x_test.reshape(-1, 1, 8, 8).astype(np.float32)
    return {"pixels": pixels[:samples], "labels": split.y_test[:samples].astype(np.int64)}


def event_model() -> onnx.ModelProto:
    """current [T, N, 6] (time-major) → hnnx.LIF 'lif' → spikes; a global S2A 'readout' → scores [N, 6]."""
    nodes = [
        ops.make_node("LIF", ["current"], ["spikes"], name="lif", threshold=1.0, alpha=0.75, reset_mode="soft"),
        ops.make_node("S2A", ["spikes"], ["scores"], name="readout", decoding="global"),
    ]
    graph = helper.make_graph(
        nodes, "events", [helper.make_tensor_value_info("current", TensorProto.FLOAT, ["T", "N", FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", FEATURES])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


def event_directory(directory: Path, sizes: tuple[int, ...] = (7, 11, 7), seed: int = 5) -> Path:
    """A directory of ``.npz`` files of ``current`` [T, n, 6] and ``labels`` [n], one file per size
    (the second compressed, the others stored: workers map and read both kinds)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for number, size in enumerate(sizes):
        current = rng.uniform(-0.25, 1.0, (STEPS, size, FEATURES)).astype(np.float32)
        labels = rng.integers(0, FEATURES, size)
        save = np.savez_compressed if number == 1 else np.savez
        save(directory / f"part{number}.npz", current=current, labels=labels)
    return directory


def assert_same_result(got: SimulationResult, expected: SimulationResult) -> None:
    """Outputs, probes, firing rates, accuracy, labels and predictions identical (dtype, shape, bits)."""
    assert got.samples == expected.samples
    for kind in ("outputs", "probes"):
        mine, theirs = getattr(got, kind), getattr(expected, kind)
        assert list(mine) == list(theirs), kind
        for name in theirs:
            assert mine[name].dtype == theirs[name].dtype and mine[name].shape == theirs[name].shape, name
            assert np.array_equal(mine[name], theirs[name]), f"{kind} {name} differ"
    assert got.firing_rates == expected.firing_rates
    assert got.accuracy == expected.accuracy
    for name in ("labels", "predicted"):
        mine, theirs = getattr(got, name), getattr(expected, name)
        assert (mine is None) == (theirs is None) and (theirs is None or np.array_equal(mine, theirs)), name
