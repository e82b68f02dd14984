"""The ``hnnx demo``: train a small hybrid ANN→SNN network on the bundled digits, save it
as ONNX with an ``hnnx.LIF`` node, and simulate it in onnxruntime.

Network (time-major inside the spiking part, T steps, direct coding):

    pixels [N, 64] → Gemm 64→64 → Relu              (ANN feature layer)
                   → repeat T times → [T, N, 64]     (ANN→SNN: direct coding)
                   → MatMul 64→128 + bias → LIF      (spiking layer, [T, N, 128])
                   → MatMul 128→10 + bias → mean over T → logits [N, 10]   (rate readout)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops
from hnnx.datasets import DigitsSplit, load_digits

STEPS = 8
LIF_ATTRIBUTES = {"threshold": 1.0, "alpha": 0.875, "reset_mode": "hard", "v_reset": 0.0, "surrogate": "atan"}


def train_hybrid(data: DigitsSplit, epochs: int = 25, seed: int = 0, steps: int = STEPS) -> dict[str, np.ndarray]:
    """Train the demo network in torch (surrogate gradients through hnnx's LIF); returns its weights."""
    import torch

    torch.manual_seed(seed)
    feature = torch.nn.Linear(64, 64)
    hidden = torch.nn.Linear(64, 128)
    readout = torch.nn.Linear(128, 10)
    params = [*feature.parameters(), *hidden.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    lif = ops.LIF.view_for(LIF_ATTRIBUTES, [True], 1)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(seed)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        features = torch.relu(feature(batch))
        current = hidden(features.unsqueeze(0).expand(steps, *features.shape))
        (spikes,) = ops.LIF.torch_forward(lif, current)
        return readout(spikes).mean(dim=0)

    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(forward(x[index]), y[index])
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return {
            "feature.weight": feature.weight.numpy().copy(), "feature.bias": feature.bias.numpy().copy(),
            "hidden.weight": hidden.weight.numpy().copy(), "hidden.bias": hidden.bias.numpy().copy(),
            "readout.weight": readout.weight.numpy().copy(), "readout.bias": readout.bias.numpy().copy(),
        }


def build_hybrid_model(weights: dict[str, np.ndarray], steps: int = STEPS) -> onnx.ModelProto:
    """The demo network as an ONNX model with input ``pixels`` [N, 64] and output ``logits`` [N, 10]."""
    init = [
        numpy_helper.from_array(weights["feature.weight"], "feature.weight"),
        numpy_helper.from_array(weights["feature.bias"], "feature.bias"),
        numpy_helper.from_array(weights["hidden.weight"].T.copy(), "hidden.weight_t"),
        numpy_helper.from_array(weights["hidden.bias"], "hidden.bias"),
        numpy_helper.from_array(weights["readout.weight"].T.copy(), "readout.weight_t"),
        numpy_helper.from_array(weights["readout.bias"], "readout.bias"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([steps], np.int64), "steps"),
    ]
    nodes = [
        helper.make_node("Gemm", ["pixels", "feature.weight", "feature.bias"], ["features_linear"],
                         name="feature", transB=1),
        helper.make_node("Relu", ["features_linear"], ["features"], name="feature_relu"),
        helper.make_node("Unsqueeze", ["features", "axis0"], ["features_1"], name="direct_coding_unsqueeze"),
        helper.make_node("Shape", ["features"], ["feature_shape"], name="direct_coding_shape"),
        helper.make_node("Concat", ["steps", "feature_shape"], ["coded_shape"], name="direct_coding_concat", axis=0),
        helper.make_node("Expand", ["features_1", "coded_shape"], ["coded"], name="direct_coding"),
        helper.make_node("MatMul", ["coded", "hidden.weight_t"], ["hidden_matmul"], name="hidden"),
        helper.make_node("Add", ["hidden_matmul", "hidden.bias"], ["hidden_current"], name="hidden_bias"),
        ops.make_node("LIF", ["hidden_current"], ["hidden_spikes"], name="hidden_lif", **LIF_ATTRIBUTES),
        helper.make_node("MatMul", ["hidden_spikes", "readout.weight_t"], ["readout_matmul"], name="readout"),
        helper.make_node("Add", ["readout_matmul", "readout.bias"], ["readout_steps"], name="readout_bias"),
        helper.make_node("ReduceMean", ["readout_steps", "axis0"], ["logits"], name="rate_readout", keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "hnnx_demo_hybrid",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)],
                              producer_name="hnnx-demo", ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


def run_demo(out_dir: Path, epochs: int = 25, progress: bool = True) -> "tuple[Path, object]":
    """Train, save and simulate the demo network; returns the model path and the result."""
    import hnnx
    from hnnx.model import write_atomic
    from hnnx.runtime.simulate import npz_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    weights = train_hybrid(data, epochs=epochs)
    model_path = hnnx.save(build_hybrid_model(weights), out_dir / "digits_hybrid.onnx")
    data_path = out_dir / "digits_test.npz"
    write_atomic(data_path, npz_bytes({"pixels": data.x_test, "labels": data.y_test}))
    result = hnnx.simulate(model_path, data_path, progress=progress)
    return model_path, result
