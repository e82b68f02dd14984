"""The public per-step functions of the op declarations equal the multi-step ops.

Stepping ``LIF.step``/``A2S.step``/``S2A.step`` through T steps must give, bit for bit, what
onnxruntime computes with the op's function body over all T steps at once (the chip simulator
and the streaming form run the steps; the graph runs the whole sequence).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hnnx import ops
from hnnx.errors import NodeError

STEPS = 6
BATCH = 3
NEURONS = (2, 5)


def run_onnxruntime(op: str, attrs: dict[str, Any], feeds: dict[str, np.ndarray], n_outputs: int = 1,
                    extra_inputs: tuple[str, ...] = ()) -> list[np.ndarray]:
    """One hnnx node run by onnxruntime through its function body."""
    inputs = ["x", *extra_inputs]
    outputs = [f"y{k}" for k in range(n_outputs)]
    node = ops.make_node(op, inputs, outputs, name="node", **attrs)
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
            np.dtype(np.int8): TensorProto.INT8}
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, elem[v.dtype], v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in outputs])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))
    # Declare the outputs as the op's shape inference types them.
    typed = list(onnx.shape_inference.infer_shapes(model).graph.output)
    del model.graph.output[:]
    model.graph.output.extend(typed)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


LIF_CASES = [
    {"threshold": 1.0, "alpha": 0.75, "beta": -0.0625},
    {"threshold": 0.5, "reset_mode": "soft", "v_lower": -1.0, "refractory": 2},
    {"threshold": 0.75, "theta_alpha": 0.5, "theta_increment": 0.25, "reset_mode": "soft_constant",
     "reset_decrement": 0.5},
    {"mode": "integer", "threshold": 200, "alpha": 0.8125, "beta": -3, "refractory": 1, "state_bits": 12},
    {"mode": "integer", "threshold": 90, "reset_mode": "soft", "theta_alpha": 0.75, "theta_increment": 40,
     "v_lower": -500},
]


@pytest.mark.parametrize("attrs", LIF_CASES, ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()))
def test_lif_steps_equal_the_multi_step_op(attrs: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    integer = attrs.get("mode") == "integer"
    if integer:
        current = rng.integers(-150, 400, (STEPS, BATCH, *NEURONS)).astype(np.int32)
    else:
        current = (rng.integers(-4, 12, (STEPS, BATCH, *NEURONS)) / 8).astype(np.float32)
    view = ops.LIF.view_for(attrs, [True], 4 if len(ops.LIF.state_names(ops.LIF.view_for(attrs, [True], 1))) > 1
                            else 2)
    n_outputs = 1 + len(ops.LIF.state_names(view))
    view = ops.LIF.view_for(attrs, [True], n_outputs)
    expected = run_onnxruntime("LIF", attrs, {"x": current}, n_outputs)

    state = ops.LIF.initial_state(view, (BATCH, *NEURONS))
    spikes = []
    for t in range(STEPS):
        spikes_t, state = ops.LIF.step(view, state, current[t])
        spikes.append(spikes_t)
    np.testing.assert_array_equal(np.stack(spikes), expected[0])
    assert np.stack(spikes).dtype == expected[0].dtype
    for got, want in zip(state.arrays(), expected[1:]):
        np.testing.assert_array_equal(got, want)
    assert expected[0].any() and not expected[0].all()  # the case exercises firing and silence


def test_lif_step_by_hand() -> None:
    """Integer leak and hard reset, hand-computed: v = 0; u = 100, 100, 40 with θ = 150, α = 0.5."""
    view = ops.LIF.view_for({"mode": "integer", "threshold": 150, "alpha": 0.5}, [True], 2)
    state = ops.LIF.initial_state(view, (1,))
    trace = []
    for u in (100, 100, 40):
        spike, state = ops.LIF.step(view, state, np.array([u], np.int32))
        trace.append((int(spike[0]), int(state.v[0])))
    # 100 → no spike, v = floor(128·100/256) = 50; 150 → not > 150, v = 75; 115 → v = 57
    assert trace == [(0, 50), (0, 75), (0, 57)]


def test_lif_state_names_follow_the_structure() -> None:
    assert ops.LIF.state_names(ops.LIF.view_for({}, [True], 1)) == ("v",)
    assert ops.LIF.state_names(ops.LIF.view_for({"refractory": 2}, [True], 1)) == ("v", "refractory")
    assert ops.LIF.state_names(ops.LIF.view_for({"theta_increment": 0.5}, [True], 1)) == ("v", "theta")


def test_lif_step_rejects_a_current_of_the_wrong_type() -> None:
    view = ops.LIF.view_for({"mode": "integer"}, [True], 1, name="lif7")
    state = ops.LIF.initial_state(view, (2,))
    with pytest.raises(NodeError, match="lif7.*int32"):
        ops.LIF.step(view, state, np.zeros(2, np.float32))


def test_integer_attributes_scale_the_membrane_constants() -> None:
    view = ops.LIF.view_for({"threshold": 0.5, "beta": -0.01, "alpha": 0.7, "v_lower": -1.0}, [True], 1)
    attrs = ops.LIF.integer_attributes(view, 100.0)
    assert (attrs["threshold"], attrs["beta"], attrs["v_lower"], attrs["mode"]) == (50.0, -1.0, -100.0, "integer")
    assert attrs["alpha"] * 256 == round(0.7 * 256)
    assert attrs["surrogate_width"] == 100.0  # the training window spans the same membrane range
    with pytest.raises(NodeError, match="exceeds 2\\^24"):
        ops.LIF.integer_attributes(view, 1e8)


A2S_CASES = [
    ({"steps": STEPS, "coding": "direct", "activation": "relu"}, np.float32),
    ({"steps": STEPS, "coding": "rate", "seed": 7}, np.float32),
    ({"steps": STEPS, "coding": "rate", "normalize": "clip", "converter": "sign"}, np.float32),
    ({"steps": STEPS, "coding": "rate", "mode": "integer", "seed": 3}, np.int8),
    ({"steps": STEPS, "coding": "direct", "mode": "integer"}, np.int32),
]


@pytest.mark.parametrize("attrs,dtype", A2S_CASES, ids=lambda c: str(c) if isinstance(c, dict) else "")
def test_a2s_steps_equal_the_multi_step_op(attrs: dict[str, Any], dtype: Any) -> None:
    rng = np.random.default_rng(1)
    x = (rng.integers(-100, 100, (BATCH, *NEURONS)) if dtype != np.float32
         else rng.uniform(-0.5, 1.5, (BATCH, *NEURONS))).astype(dtype)
    view = ops.A2S.view_for(attrs, [True], 1)
    (expected,) = run_onnxruntime("A2S", attrs, {"x": x})
    got = np.stack([ops.A2S.step(view, x, t) for t in range(STEPS)])
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype


def test_a2s_learnable_steps() -> None:
    attrs = {"steps": STEPS, "coding": "learnable"}
    x = np.linspace(-1, 1, BATCH * 4, dtype=np.float32).reshape(BATCH, 4)
    weight = np.arange(STEPS, dtype=np.float32) / 4
    bias = -np.arange(STEPS, dtype=np.float32) / 8
    view = ops.A2S.view_for(attrs, [True, True, True], 1)
    (expected,) = run_onnxruntime("A2S", attrs, {"x": x, "w": weight, "b": bias}, extra_inputs=("w", "b"))
    got = np.stack([ops.A2S.step(view, x, t, weight, bias) for t in range(STEPS)])
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(NodeError, match="outside"):
        ops.A2S.step(view, x, STEPS, weight, bias)


S2A_CASES = [
    {"decoding": "rate", "window": 3},
    {"decoding": "rate", "window": 6, "kernel": 2, "stride": 1, "activation": "relu"},
    {"decoding": "global"},
    {"decoding": "rate", "window": 2, "mode": "integer"},
    {"decoding": "global", "mode": "integer"},
]


@pytest.mark.parametrize("attrs", S2A_CASES, ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()))
def test_s2a_steps_equal_the_multi_step_op(attrs: dict[str, Any]) -> None:
    rng = np.random.default_rng(2)
    dtype = np.int32 if attrs.get("mode") == "integer" else np.float32
    x = rng.integers(0, 2, (STEPS, BATCH, *NEURONS)).astype(dtype)
    view = ops.S2A.view_for(attrs, [True], 1)
    (expected,) = run_onnxruntime("S2A", attrs, {"x": x})
    state = ops.S2A.initial_state(view, x.shape[1:])
    outputs: list[np.ndarray] = []
    for t in range(STEPS):
        emitted, state = ops.S2A.step(view, state, x[t])
        outputs += emitted
    outputs += ops.S2A.finish(view, state)
    got = outputs[0] if attrs["decoding"] == "global" else np.stack(outputs)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype


def test_s2a_learnable_steps_use_each_windows_row() -> None:
    attrs = {"decoding": "learnable", "window": 3, "kernel": 2, "stride": 1, "padding": 1}
    x = np.random.default_rng(3).integers(0, 2, (STEPS, BATCH, 4)).astype(np.float32)
    weight = np.array([[0.5, 0.25], [-0.75, 1.0]], np.float32)
    bias = np.array([0.125, -0.5], np.float32)
    view = ops.S2A.view_for(attrs, [True, True, True], 1)
    (expected,) = run_onnxruntime("S2A", attrs, {"x": x, "w": weight, "b": bias}, extra_inputs=("w", "b"))
    state = ops.S2A.initial_state(view, x.shape[1:])
    outputs: list[np.ndarray] = []
    for t in range(STEPS):
        emitted, state = ops.S2A.step(view, state, x[t], weight, bias)
        outputs += emitted
    np.testing.assert_array_equal(np.stack(outputs), expected)


def test_s2a_finish_inside_a_window_is_an_error() -> None:
    view = ops.S2A.view_for({"window": 4}, [True], 1, name="readout")
    state = ops.S2A.initial_state(view, (2,))
    _, state = ops.S2A.step(view, state, np.ones(2, np.float32))
    with pytest.raises(NodeError, match="readout.*inside a window"):
        ops.S2A.finish(view, state)


def test_s2a_integer_divisor() -> None:
    assert ops.S2A.integer_divisor(ops.S2A.view_for({"window": 4, "kernel": 2}, [True], 1), 8) == 2
    assert ops.S2A.integer_divisor(ops.S2A.view_for({"decoding": "global"}, [True], 1), 8) == 8
    with pytest.raises(NodeError, match="unknown number of steps"):
        ops.S2A.integer_divisor(ops.S2A.view_for({"decoding": "global"}, [True], 1, name="g"), None)


def test_declarations_answer_ranks_time_and_spikes() -> None:
    lif = ops.LIF.view_for({}, [True], 2)
    assert ops.LIF.output_ranks(lif, [5]) == [5, 4]
    assert ops.LIF.output_time(lif) == [ops.TIME_MAJOR, ops.NO_TIME]
    a2s = ops.A2S.view_for({"steps": 4, "coding": "rate"}, [True], 1)
    assert ops.A2S.output_ranks(a2s, [4]) == [5] and ops.A2S.emits_spikes(a2s)
    assert not ops.A2S.emits_spikes(ops.A2S.view_for({"steps": 4}, [True], 1))
    glob = ops.S2A.view_for({"decoding": "global"}, [True], 1)
    assert ops.S2A.output_ranks(glob, [5]) == [4] and ops.S2A.output_time(glob) == [ops.NO_TIME]
    rate = ops.S2A.view_for({"decoding": "rate", "window": 2}, [True], 1)
    assert ops.S2A.output_ranks(rate, [5]) == [5] and ops.S2A.output_time(rate) == [ops.TIME_MAJOR]
    assert ops.S2A.output_ranks(rate, [None]) == [None]
