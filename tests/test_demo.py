"""The bundled trained models reach their accuracy in onnxruntime, and `hnnx demo` runs one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import hnnx
from hnnx import models, ops
from hnnx.cli import main
from hnnx.datasets import load_digits
from hnnx.demo import DEMO_MODEL, run_demo

EXPECTED_HNNX_OPS = {
    "ann_cnn": set(),
    "ann_residual": set(),
    "snn_mlp": {"A2S", "LIF", "S2A"},
    "snn_conv": {"A2S", "LIF", "S2A"},
    "hybrid_a2s": {"A2S", "LIF", "S2A"},
    "hybrid_s2a": {"A2S", "LIF", "S2A"},
}


def test_digits_split_is_disjoint_and_complete() -> None:
    data = load_digits()
    assert data.x_train.shape[1] == 64 and data.x_train.dtype == np.float32
    assert len(data.x_train) + len(data.x_test) == 1797
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert set(np.unique(data.y_test)) == set(range(10))
    train_rows = {row.tobytes() for row in data.x_train}
    # A few digits are duplicated in the data set itself; the split must not copy rows across.
    assert sum(row.tobytes() in train_rows for row in data.x_test) < 10


def test_every_bundled_model_is_listed() -> None:
    assert models.available() == sorted(EXPECTED_HNNX_OPS)
    with pytest.raises(hnnx.HnnxError, match="no bundled model"):
        models.path("nope")


@pytest.mark.parametrize("name", sorted(EXPECTED_HNNX_OPS))
def test_bundled_model_reaches_accuracy_on_the_test_split(name: str) -> None:
    model = hnnx.load(models.path(name))
    onnx.checker.check_model(model, full_check=True)
    assert {node.op_type for node in ops.hnnx_nodes(model.graph)} == EXPECTED_HNNX_OPS[name]
    data = load_digits()
    pixels = data.x_test.reshape(-1, *models.input_layout(name))
    result = hnnx.simulate(model, {"pixels": pixels}, labels=data.y_test, batch_size=100)
    assert result.accuracy is not None and result.accuracy >= 0.95
    assert len(result.firing_rates) == sum(n.op_type == "LIF" for n in ops.hnnx_nodes(model.graph))
    for layer, rate in result.firing_rates.items():
        assert 0.0 < rate < 1.0, layer


def test_run_demo_writes_model_and_data(tmp_path: Path) -> None:
    model_path, data_path, result = run_demo(tmp_path / "out", progress=False)
    assert model_path.read_bytes() == models.path(DEMO_MODEL).read_bytes()
    assert set(np.load(data_path)) == {"pixels", "labels"}
    assert result.samples == 359 and result.accuracy >= 0.95
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "temporary files left"


def test_demo_command_and_inspect_list_the_hybrid_units(tmp_path: Path) -> None:
    runner = CliRunner()
    demo = runner.invoke(main, ["demo", "--out", str(tmp_path)])
    assert demo.exit_code == 0, demo.output
    assert "accuracy:" in demo.stdout and "hidden_lif" in demo.stdout
    inspect = runner.invoke(main, ["inspect", str(tmp_path / f"digits_{DEMO_MODEL}.onnx")])
    assert inspect.exit_code == 0, inspect.output
    for expected in ("a2s  (A2S", "coding = rate", "hidden_lif  (LIF", "rate  (S2A", "decoding = global"):
        assert expected in inspect.stdout
