"""The streaming forms of the hybrid units and the declared state of every stateful op.

A2S with ``offset``/``count`` codes a part of its sequence; S2A with its state ports
(``buffer0``/``filled0``/``windows0`` → ``buffer``/``filled``/``windows``) continues a sequence
call by call. Fed in calls of any length, both must give exactly the rows of one call over the
whole sequence — through onnxruntime on the function bodies, the numpy reference and the torch
forward alike — and hand-computed states where the windows straddle calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from hnnx import ops
from hnnx.errors import NodeError

STEPS = 12
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
        np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int8): TensorProto.INT8}


def one_node(op: str, attrs: dict[str, Any], inputs: list[str], outputs: list[str], feeds: dict[str, np.ndarray]
             ) -> tuple[ort.InferenceSession, onnx.NodeProto]:
    """A checked one-node model (time axis of ``x`` symbolic) and its onnxruntime session."""
    node = ops.make_node(op, inputs, outputs, name="unit", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, ELEM[v.dtype], ["T", *v.shape[1:]] if k == "x" and op == "S2A"
                                       else list(v.shape)) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    typed = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    del model.graph.output[:]
    model.graph.output.extend(typed[o] for o in outputs)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), node


def same(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (what, actual.shape, expected.shape)
    # bit patterns, so −0.0 and +0.0 differ
    assert np.array_equal(actual.reshape(-1).view(np.uint8), expected.reshape(-1).view(np.uint8)), \
        f"{what}:\n{actual}\n!=\n{expected}"


def calls(total: int, length: int) -> list[tuple[int, int]]:
    return [(first, min(first + length, total)) for first in range(0, total, length)]


# ---------------------------------------------------------------------------- A2S
A2S_CASES = [
    ({"steps": STEPS, "coding": "rate", "seed": 5}, np.float32),
    ({"steps": STEPS, "coding": "rate", "normalize": "clip", "converter": "sign"}, np.float32),
    ({"steps": STEPS, "coding": "direct", "activation": "relu"}, np.float32),
    ({"steps": STEPS, "coding": "learnable", "converter": "round", "bits": 4}, np.float32),
    ({"steps": STEPS, "coding": "rate", "mode": "integer", "seed": 9}, np.int8),
    ({"steps": STEPS, "coding": "direct", "mode": "integer"}, np.int32),
]


@pytest.mark.parametrize("attrs,dtype", A2S_CASES, ids=lambda c: "-".join(map(str, c.values()))
                         if isinstance(c, dict) else np.dtype(c).name)
@pytest.mark.parametrize("length", [1, 5, STEPS])
def test_a2s_calls_give_the_rows_of_the_whole_sequence(attrs: dict[str, Any], dtype: Any, length: int) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 2, 4)) * (40 if dtype != np.float32 else 1)).astype(dtype)
    learnable = attrs["coding"] == "learnable"
    table = {"w": rng.normal(size=STEPS).astype(np.float32) * 3, "b": rng.normal(size=STEPS).astype(np.float32)}
    extra = table if learnable else {}
    ports = ["w", "b"] if learnable else ["", ""]
    whole_session, _ = one_node("A2S", attrs, ["x", *ports], ["y"], {"x": x, **extra})
    (whole,) = whole_session.run(None, {"x": x, **extra})
    feeds = {"x": x, **extra, "offset": np.array(0, np.int64), "count": np.array(1, np.int64)}
    session, node = one_node("A2S", attrs, ["x", *ports, "offset", "count"], ["y", "end"], feeds)
    view = ops.A2S.view(node)
    offset = np.array(0, np.int64)
    rows = []
    for first, stop in calls(STEPS, length):
        count = np.array(stop - first, np.int64)
        y, end = session.run(None, {"x": x, **extra, "offset": offset, "count": count})
        ref_y, ref_end = ops.run_reference(node, x, extra.get("w"), extra.get("b"), offset, count)
        same(y, ref_y, "onnxruntime vs numpy reference")
        same(end, ref_end, "end")
        assert int(end) == stop
        if dtype == np.float32:
            torch_y, torch_end = ops.A2S.torch_forward(view, torch.from_numpy(x),
                                                       *(torch.from_numpy(extra[k]) if k in extra else None
                                                         for k in ("w", "b")),
                                                       torch.tensor(offset), torch.tensor(count))
            same(torch_y.detach().numpy(), y, "torch forward")
            assert int(torch_end) == stop
        rows.append(y)
        offset = end
    same(np.concatenate(rows), whole, "calls vs whole sequence")


def test_a2s_rate_coding_at_an_offset_draws_that_steps_numbers() -> None:
    """Rate coding of step t uses the generator's words of absolute step t, whatever the call."""
    from hnnx.ops.hybrid import numpy_random_bits

    x = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)  # min 0, max 1: p = x
    view = ops.A2S.view_for({"steps": 10, "coding": "rate", "seed": 3}, [True, False, False, True, True], 1)
    (y,) = ops.A2S.reference(view, x, None, None, np.int64(7), np.int64(2))
    draws = (numpy_random_bits(3, 10, 4)[7:9] >> 8).astype(np.float64) * 2.0**-24  # u[t, i], t = 7, 8
    assert np.array_equal(y[:, 0, :], (draws < x[0]).astype(np.float32))


@pytest.mark.parametrize("offset,count", [(-1, 2), (9, 2), (0, 11), (4, -1)])
def test_a2s_steps_outside_the_sequence_are_an_error(offset: int, count: int) -> None:
    view = ops.A2S.view_for({"steps": 10}, [True, False, False, True, True], 1, name="coder")
    with pytest.raises(NodeError, match="coder.*outside its 10 steps"):
        ops.A2S.reference(view, np.zeros((1, 2), np.float32), None, None, np.int64(offset), np.int64(count))


def test_a2s_count_makes_the_time_axis_a_value() -> None:
    _, node = one_node("A2S", {"steps": 6}, ["x", "", "", "offset", "count"], ["y", "end"],
                       {"x": np.zeros((2, 3), np.float32), "offset": np.array(0, np.int64),
                        "count": np.array(1, np.int64)})
    view = ops.A2S.view(node)
    assert ops.A2S.output_ranks(view, [2]) == [3, 0]
    assert ops.A2S.output_time(view) == [ops.TIME_MAJOR, ops.NO_TIME]


# ---------------------------------------------------------------------------- S2A
S2A_CASES = [
    {"decoding": "rate", "window": 3},
    {"decoding": "rate", "window": 4, "kernel": 2, "stride": 1, "activation": "relu"},
    {"decoding": "global"},
    {"decoding": "global", "activation": "relu"},
    {"decoding": "rate", "window": 2, "mode": "integer"},
    {"decoding": "global", "mode": "integer"},
    {"decoding": "learnable", "window": 3, "kernel": 2, "stride": 1, "padding": 1},
]


def _s2a_inputs(attrs: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if attrs.get("mode") == "integer":
        x = rng.integers(0, 2, (STEPS, 2, 5)).astype(np.int32)
    else:  # not spikes: float sums whose order matters, so a reordered sum would show
        x = (rng.normal(size=(STEPS, 2, 5)) * 10.0 ** rng.integers(-3, 4, (STEPS, 2, 5))).astype(np.float32)
    tables = {}
    if attrs["decoding"] == "learnable":
        tables = {"w": rng.normal(size=(STEPS // 3, 2)).astype(np.float32),
                  "b": rng.normal(size=STEPS // 3).astype(np.float32)}
    return x, tables


@pytest.mark.parametrize("attrs", S2A_CASES, ids=lambda a: "-".join(map(str, a.values())))
@pytest.mark.parametrize("length", [1, 2, 5, STEPS])
def test_s2a_calls_give_the_whole_sequences_outputs(attrs: dict[str, Any], length: int) -> None:
    rng = np.random.default_rng(1)
    x, tables = _s2a_inputs(attrs, rng)
    learnable = attrs["decoding"] == "learnable"
    ports = ["w", "b"] if learnable else ["", ""]
    whole_session, _ = one_node("S2A", attrs, ["x", *ports], ["y"], {"x": x, **tables})
    (whole,) = whole_session.run(None, {"x": x, **tables})
    view = ops.S2A.view_for(attrs, [True, learnable, learnable], 1)
    specs = ops.S2A.state_spec(view)
    state = [spec.initial() for spec in specs]
    names = [f"s{k}" for k in range(len(specs))]
    inputs = ["x", *ports, *names] if learnable else ["x", "", "", *names]
    outputs = ["y", *[f"o{k}" for k in range(len(specs))]]
    session, node = one_node("S2A", attrs, inputs, outputs, {"x": x[:1], **tables, **dict(zip(names, state))})
    stream_view = ops.S2A.view(node)
    pieces = []
    ref_state = list(state)
    for first, stop in calls(STEPS, length):
        got = session.run(None, {"x": x[first:stop], **tables, **dict(zip(names, state))})
        ref = ops.run_reference(node, x[first:stop], tables.get("w"), tables.get("b"), *ref_state)
        for index, (a, b) in enumerate(zip(got, ref)):
            same(a, b, f"onnxruntime vs reference, output {index}, steps {first}:{stop}")
        if attrs.get("mode") != "integer":
            torch_out = ops.S2A.torch_forward(stream_view, torch.from_numpy(x[first:stop]),
                                              *(torch.from_numpy(tables[k]) if k in tables else None
                                                for k in ("w", "b")), *map(torch.from_numpy, ref_state))
            for index, (a, b) in enumerate(zip(torch_out, ref)):
                same(a.detach().numpy(), b, f"torch vs reference, output {index}")
        pieces.append(got[0])
        state, ref_state = got[1:], list(ref[1:])
    result = pieces[-1] if attrs["decoding"] == "global" else np.concatenate(pieces)
    same(result, whole, "calls vs whole sequence")


def test_s2a_window_straddling_calls_by_hand() -> None:
    """Window 3 over steps fed 2 at a time: rates (x0+x1+x2)/3 and (x3+x4+x5)/3, the rest held."""
    view = ops.S2A.view_for({"window": 3}, [True, False, False, True, True], 4)
    x = np.array([[1], [0], [1], [1], [1], [0], [1]], np.float32)  # 7 steps, 1 sample, 1 neuron
    y, buffer, filled, windows = ops.S2A.reference(view, x[0:2])
    assert y.shape == (0, 1) and int(filled) == 2 and int(windows) == 0
    assert buffer[:, 0].tolist() == [1, 0, 0]
    y, buffer, filled, windows = ops.S2A.reference(view, x[2:4], None, None, buffer, filled, windows)
    assert y[:, 0].tolist() == [np.float32(2) / np.float32(3)] and int(filled) == 1 and int(windows) == 1
    assert buffer[:, 0].tolist() == [1, 0, 0]
    y, buffer, filled, windows = ops.S2A.reference(view, x[4:7], None, None, buffer, filled, windows)
    assert y[:, 0].tolist() == [np.float32(2) / np.float32(3)] and int(filled) == 1 and int(windows) == 2
    assert buffer[:, 0].tolist() == [1, 0, 0]


def test_s2a_global_sum_runs_from_zero_in_order() -> None:
    """The running sum starts at +0.0 and adds one step at a time, as a sum over all steps does:
    a sequence of −0.0 sums to +0.0 (0 + −0 = +0) in calls as at once, in every executor."""
    x = np.full((4, 1, 2), -0.0, np.float32)
    whole_session, _ = one_node("S2A", {"decoding": "global"}, ["x"], ["y"], {"x": x})
    (whole,) = whole_session.run(None, {"x": x})
    assert not np.signbit(whole).any()
    view = ops.S2A.view_for({"decoding": "global"}, [True, False, False, True, True], 3)
    y, buffer, filled = ops.S2A.reference(view, x[:3], None, None, np.float32(-0.0), np.int64(0))
    y, _, _ = ops.S2A.reference(view, x[3:], None, None, buffer, filled)
    same(y, whole, "global rate of −0.0")
    # A value whose sum depends on the order: 1e8 + 1 − 1e8 is 0 in float32 when summed in order.
    steps = np.array([1e8, 1, -1e8, 1], np.float32).reshape(4, 1, 1)
    view = ops.S2A.view_for({"decoding": "global", "mode": "float"}, [True], 1)
    state = ops.S2A.initial_state(view, (1, 1))
    for t in range(4):
        _, state = ops.S2A.step(view, state, steps[t])
    assert ops.S2A.finish(view, state)[0].item() == np.float32(0.25)


def test_s2a_filled_outside_the_window_is_an_error() -> None:
    view = ops.S2A.view_for({"window": 3}, [True, False, False, True, True], 3, name="readout")
    with pytest.raises(NodeError, match="readout.*filled0 = 3"):
        ops.S2A.reference(view, np.zeros((1, 2), np.float32), None, None, np.float32(0), np.int64(3))


def test_s2a_streaming_shapes_and_time_layout() -> None:
    view = ops.S2A.view_for({"window": 4}, [True, False, False, True, True], 3)
    shapes = ops.S2A.output_shapes(view, [[8, 2, 5], None, None, None, None])
    assert shapes[1:] == [[4, 2, 5], []] and len(shapes[0]) == 3
    assert ops.S2A.output_time(view) == [ops.TIME_MAJOR, ops.NO_TIME, ops.NO_TIME]
    glob = ops.S2A.view_for({"decoding": "global"}, [True, False, False, True, True], 3)
    assert ops.S2A.output_shapes(glob, [[8, 2, 5], None, None, None, None]) == [[2, 5], [1, 2, 5], []]


# ---------------------------------------------------------------------------- declared state
def test_state_specs_name_the_ports_that_carry_each_state() -> None:
    lif = ops.LIF.view_for({"refractory": 2, "theta_increment": 0.5, "v_init": 0.25}, [True], 1)
    specs = ops.LIF.state_spec(lif)
    assert [(s.name, s.input, s.output, s.dtype.name) for s in specs][:3] == [
        ("v", 1, 1, "float32"), ("theta", 2, 2, "float32"), ("refractory", 3, 3, "int32")]
    assert specs[0].fill == 0.25 and specs[0].shape((4, 7)) == (4, 7)
    for spec in specs:  # each state is named like the ports that carry it
        assert ops.LIF.outputs[spec.output].name == spec.name
    integer = ops.LIF.view_for({"mode": "integer", "threshold": 100}, [True], 1)
    assert [(s.name, s.dtype.name) for s in ops.LIF.state_spec(integer)] == [("v", "int32")]
    a2s = ops.A2S.state_spec(ops.A2S.view_for({"steps": 8}, [True], 1))
    assert [(s.name, s.input, s.output, s.shape((4, 7))) for s in a2s] == [("offset", 3, 1, ())]
    rate = ops.S2A.state_spec(ops.S2A.view_for({"window": 4}, [True], 1))
    assert [(s.name, s.input, s.output, s.shape((2, 5))) for s in rate] == [("buffer", 3, 1, (4, 2, 5)),
                                                                             ("filled", 4, 2, ())]
    learnable = ops.S2A.view_for({"decoding": "learnable", "window": 2}, [True, True], 1)
    assert [s.name for s in ops.S2A.state_spec(learnable)] == ["buffer", "filled", "windows"]
    assert ops.Fire.state_spec(ops.Fire.view_for({}, [True, True], 1)) == ()
    assert ops.Requantize.state_spec(ops.Requantize.view_for({}, [True], 1)) == ()


def test_s2a_initial_state_is_the_declared_fill() -> None:
    glob = ops.S2A.view_for({"decoding": "global"}, [True], 1)
    state = ops.S2A.initial_state(glob, (2, 3))
    assert state.buffer.shape == (1, 2, 3) and not state.buffer.any()
    assert ops.S2A.initial_state(ops.S2A.view_for({"window": 4}, [True], 1), (2,)).buffer.tolist() == [[0, 0]] * 4
