"""Small models and numpy expectations shared by the runtime, CLI and model I/O tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops

HYBRID_STEPS = 3
HYBRID_LIF = {"threshold": 0.5, "alpha": 0.75, "beta": -0.125}
# Multiples of 1/4 and 1/8 keep every sum and leak product exact in float32, so onnxruntime
# and numpy agree bit for bit regardless of summation order.
WEIGHT = (np.arange(20, dtype=np.float32).reshape(5, 4) % 7 - 3) / 4
BIAS = np.array([0.125, -0.25, 0.375, 0.0, 0.5], np.float32)


def hybrid_model(attach: bool = True) -> onnx.ModelProto:
    """x [N, 4] → Gemm → repeat 3 steps → hnnx.LIF 'lif1' → mean over time → logits [N, 5]."""
    initializers = [
        numpy_helper.from_array(WEIGHT, "w"),
        numpy_helper.from_array(BIAS, "b"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([HYBRID_STEPS, 1, 1], np.int64), "repeat_shape"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["current_n"], name="fc", transB=1),
        helper.make_node("Unsqueeze", ["current_n", "axis0"], ["current_1"], name="add_time"),
        helper.make_node("Expand", ["current_1", "repeat_shape"], ["current"], name="repeat"),
        ops.make_node("LIF", ["current"], ["spikes"], name="lif1", **HYBRID_LIF),
        helper.make_node("ReduceMean", ["spikes", "axis0"], ["logits"], name="rate", keepdims=0),
    ]
    graph = helper.make_graph(nodes, "hybrid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model) if attach else model


def lif_hard_reset(current: np.ndarray, threshold: float = 1.0, alpha: float = 1.0, beta: float = 0.0,
                   v_reset: float = 0.0) -> np.ndarray:
    """Spikes of a hard-reset LIF over axis 0, starting from v = 0."""
    v = np.zeros(current.shape[1:], np.float32)
    spikes = np.zeros_like(current)
    for t in range(current.shape[0]):
        v1 = v + current[t]
        fired = v1 > np.float32(threshold)
        spikes[t] = fired
        v = np.where(fired, np.float32(v_reset), v1) * np.float32(alpha) + np.float32(beta)
    return spikes
