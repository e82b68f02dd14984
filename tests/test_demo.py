"""The demo trains a real hybrid network on the bundled digits and simulates it in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import hnnx
from hnnx import demo, ops

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def trained() -> tuple[demo.DigitsSplit, dict[str, np.ndarray]]:
    data = demo.load_digits()
    return data, demo.train_hybrid(data, epochs=8)


def test_digits_split_is_disjoint_and_complete() -> None:
    data = demo.load_digits()
    assert data.x_train.shape[1] == 64 and data.x_train.dtype == np.float32
    assert len(data.x_train) + len(data.x_test) == 1797
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert set(np.unique(data.y_test)) == set(range(10))


def test_demo_model_reaches_accuracy_in_onnxruntime(trained, tmp_path: Path) -> None:
    data, weights = trained
    path = hnnx.save(demo.build_hybrid_model(weights), tmp_path / "hybrid.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    result = hnnx.simulate(path, {"pixels": data.x_test}, labels=data.y_test)
    assert result.accuracy is not None and result.accuracy >= 0.9
    assert 0.0 < result.firing_rates["hidden_lif"] < 1.0


def test_onnx_model_computes_what_torch_trained(trained) -> None:
    """The exported graph and the torch training forward agree (same weights, same LIF)."""
    data, weights = trained
    model = demo.build_hybrid_model(weights)
    result = hnnx.simulate(model, {"pixels": data.x_test}, probes=["hidden_current", "hidden_spikes"])
    lif = ops.LIF.view_for(demo.LIF_ATTRIBUTES, [True], 1)
    # The LIF itself is bit-exact given the same current.
    (spikes,) = ops.LIF.torch_forward(lif, torch.from_numpy(result.probes["hidden_current"]))
    assert np.array_equal(spikes.numpy(), result.probes["hidden_spikes"])
    # End to end, matmul rounding may differ between torch and onnxruntime: compare decisions.
    x = torch.from_numpy(data.x_test)
    features = torch.relu(x @ torch.from_numpy(weights["feature.weight"]).T + torch.from_numpy(weights["feature.bias"]))
    current = features @ torch.from_numpy(weights["hidden.weight"]).T + torch.from_numpy(weights["hidden.bias"])
    (torch_spikes,) = ops.LIF.torch_forward(lif, current.unsqueeze(0).expand(demo.STEPS, *current.shape))
    logits = (torch_spikes @ torch.from_numpy(weights["readout.weight"]).T
              + torch.from_numpy(weights["readout.bias"])).mean(0)
    agree = (logits.argmax(1).numpy() == result.outputs["logits"].argmax(1)).mean()
    assert agree >= 0.99


def test_run_demo_writes_model_and_data(tmp_path: Path) -> None:
    model_path, result = demo.run_demo(tmp_path / "out", epochs=1, progress=False)
    assert model_path.is_file() and (tmp_path / "out" / "digits_test.npz").is_file()
    assert result.samples == 359
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "temporary files left"
