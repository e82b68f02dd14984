"""The native ``hnnx.A2S`` / ``hnnx.S2A`` kernels (custom_ops/) against the ONNX function bodies.

1. Every test of test_hybrid_ops.py and test_stream_ops.py runs again here, with each model it
   runs in onnxruntime also run by a session that has the native library registered: the native
   outputs must equal the function-body outputs bit for bit (signed zeros included), and the
   native kernel must have run for every A2S/S2A node.
2. Native-only cases: integer A2S (int8 and int32, every coding and converter the integer form
   has) and integer S2A against the function bodies and the numpy reference; many samples,
   steps and elements over several threads; sequences fed call by call with the state ports;
   errors naming the node.

Without the native library the tests that need it are skipped, unless ``HNNX_REQUIRE_NATIVE=1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import hnnx.ops
import test_hybrid_ops
import test_stream_ops
from conftest import assert_same_array, run_onnxruntime
from hnnx.runtime import native
from test_native import library, native_session  # noqa: F401  (the fixture is used by name)

HYBRID_OPS = ("A2S", "S2A")
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
        np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int64): TensorProto.INT64}


def same_bits(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal dtype, shape and bytes (so −0.0 ≠ +0.0)."""
    assert_same_array(actual, expected, what)
    assert np.asarray(actual).tobytes() == np.asarray(expected).tobytes(), f"{what}: equal values, different bits"


def run_native_hybrid(model: onnx.ModelProto, feeds: dict[str, np.ndarray], lib: Path, threads: int = 0,
                      names: list[str] | None = None) -> list[np.ndarray]:
    """Outputs with the native library registered; asserts its A2S/S2A kernels ran once per node."""
    session = native_session(model, lib, threads)
    counts = {op: sum(n.op_type == op for n in hnnx.ops.hnnx_nodes(model.graph)) for op in HYBRID_OPS}
    before = {op: native.kernel_calls(lib, op) for op in HYBRID_OPS}
    outputs = session.run(names, feeds)
    for op in HYBRID_OPS:
        assert native.kernel_calls(lib, op) - before[op] == counts[op], f"onnxruntime did not run the native {op}"
    return outputs


def assert_native_equals_bodies(model: onnx.ModelProto, feeds: dict[str, np.ndarray], lib: Path,
                                threads: int = 0) -> list[np.ndarray]:
    bodies = run_onnxruntime(model, feeds)
    for name, got, expected in zip([o.name for o in model.graph.output],
                                   run_native_hybrid(model, feeds, lib, threads), bodies):
        same_bits(got, expected, f"native kernel vs function body, output {name!r}")
    return bodies


# ---------------------------------------------------------------------------------------------
# 1. Every test of test_hybrid_ops.py and test_stream_ops.py, through both paths
# ---------------------------------------------------------------------------------------------
class BothSessions:
    """A function-body session and a native one over the same model: ``run`` returns the bodies'
    outputs after asserting the native outputs equal them bit for bit."""

    def __init__(self, model: onnx.ModelProto, lib: Path) -> None:
        self.model, self.lib = model, lib
        self.bodies = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        expected = self.bodies.run(names, feeds)
        got = run_native_hybrid(self.model, feeds, self.lib, names=names)
        for index, (a, b) in enumerate(zip(got, expected)):
            same_bits(a, b, f"native kernel vs function body, output {index}")
        return expected


@pytest.fixture(autouse=True)
def _hybrid_models_also_run_natively(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """For the rerun tests: every model they run in onnxruntime also runs natively."""
    module = getattr(request.function, "__module__", None)
    if module not in (test_hybrid_ops.__name__, test_stream_ops.__name__):
        return
    lib = request.getfixturevalue("library")
    if module == test_hybrid_ops.__name__:
        both_ways = test_hybrid_ops.run_model_both_ways

        def both_ways_and_native(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            outputs = both_ways(model, feeds)  # onnxruntime bodies == onnx.reference
            for name, got, expected in zip([o.name for o in model.graph.output],
                                           run_native_hybrid(model, feeds, lib), outputs):
                same_bits(got, expected, f"native kernel vs function body, output {name!r}")
            return outputs

        def onnxruntime_and_native(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return assert_native_equals_bodies(model, feeds, lib)

        monkeypatch.setattr(test_hybrid_ops, "run_model_both_ways", both_ways_and_native)
        monkeypatch.setattr(test_hybrid_ops, "run_onnxruntime", onnxruntime_and_native)
        return
    one_node = test_stream_ops.one_node

    def one_node_both(op: str, attrs: dict[str, Any], inputs: list[str], outputs: list[str],
                      feeds: dict[str, np.ndarray]) -> tuple[BothSessions, onnx.NodeProto]:
        session, node = one_node(op, attrs, inputs, outputs, feeds)
        model = onnx.load_from_string(session._model_bytes)  # the checked model the session runs
        return BothSessions(model, lib), node

    monkeypatch.setattr(test_stream_ops, "one_node", one_node_both)


RERUN = {name: test for module in (test_hybrid_ops, test_stream_ops) for name, test in vars(module).items()
         if name.startswith("test_") and callable(test)}
globals().update(RERUN)  # collected here too, with the fixture above


def test_every_hybrid_test_is_rerun_here() -> None:
    assert len(RERUN) >= 40
    assert {"test_a2s_agrees_with_independent_reference_on_all_paths", "test_s2a_calls_give_the_whole_sequences_outputs",
            "test_a2s_calls_give_the_rows_of_the_whole_sequence"} <= set(RERUN)


# ---------------------------------------------------------------------------------------------
# 2. Native-only cases
# ---------------------------------------------------------------------------------------------
def one_node_model(node: onnx.NodeProto, feeds: dict[str, np.ndarray], out_types: dict[str, int],
                   time_input: str | None = None) -> onnx.ModelProto:
    """A model of ``node``, inputs typed like ``feeds`` (``time_input``'s first dim symbolic)."""
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, ELEM[v.dtype], ["T", *v.shape[1:]] if k == time_input
                                                    else v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(name, out_types[name], None) for name in node.output if name])
    return hnnx.ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


INTEGER_A2S = [
    {"coding": "direct"},
    {"coding": "direct", "activation": "relu", "converter": "sign"},
    {"coding": "direct", "converter": "round", "bits": 5},
    {"coding": "direct", "activation": "relu", "converter": "round", "bits": 8},
    {"coding": "rate", "seed": 11},
    {"coding": "rate", "seed": 2**32 - 1, "converter": "sign"},
    {"coding": "rate", "seed": 0x61C88647, "activation": "relu"},  # seed + golden wraps to 0
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.int8, np.int32], ids=["int8", "int32"])
@pytest.mark.parametrize("attrs", INTEGER_A2S, ids=lambda a: "-".join(map(str, a.values())))
def test_integer_a2s_equals_bodies_and_reference(library: Path, attrs: dict[str, Any], dtype: Any,
                                                 threads: int) -> None:
    rng = np.random.default_rng(len(str(attrs)))
    info = np.iinfo(dtype)
    x = rng.integers(max(info.min, -3000), min(info.max, 3000) + 1, (37, 3, 50)).astype(dtype)
    x[5] = 7  # a constant sample: minmax gives probability 0
    node = hnnx.ops.make_node("A2S", ["x"], ["y"], name="coder", steps=11, mode="integer", **attrs)
    model = one_node_model(node, {"x": x}, {"y": ELEM[np.dtype(dtype)]})
    (y,) = assert_native_equals_bodies(model, {"x": x}, library, threads)
    assert_same_array(y, hnnx.ops.run_reference(node, x)[0], "function body vs numpy reference")
    if attrs["coding"] == "rate" and "converter" not in attrs:
        assert 0.2 < y.mean() < 0.8 and not y[:, 5].any()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("attrs", [{"decoding": "rate", "window": 4}, {"decoding": "rate", "window": 6, "kernel": 3,
                                                                      "stride": 2},
                                   {"decoding": "global"}, {"decoding": "global", "activation": "relu"}],
                         ids=lambda a: "-".join(map(str, a.values())))
def test_integer_s2a_equals_bodies_and_reference(library: Path, attrs: dict[str, Any], threads: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, (12, 9, 1100)).astype(np.int32)  # 9,900 elements: three work items
    node = hnnx.ops.make_node("S2A", ["x"], ["y"], name="readout", mode="integer", **attrs)
    model = one_node_model(node, {"x": x}, {"y": TensorProto.INT32})
    (y,) = assert_native_equals_bodies(model, {"x": x}, library, threads)
    assert_same_array(y, hnnx.ops.run_reference(node, x)[0], "function body vs numpy reference")


@pytest.mark.parametrize("coding", ["rate", "direct", "learnable"])
def test_float_a2s_many_samples_steps_and_calls(library: Path, coding: str) -> None:
    """70 samples of 3×40 elements, 23 steps coded in calls of 1, 7 and 15 steps over two threads."""
    rng = np.random.default_rng(8)
    x = rng.normal(0.2, 1.0, (70, 3, 40)).astype(np.float32)
    tables = {"w": rng.normal(size=23).astype(np.float32), "b": rng.normal(size=23).astype(np.float32)}
    extra = tables if coding == "learnable" else {}
    ports = ["w", "b"] if extra else ["", ""]
    node = hnnx.ops.make_node("A2S", ["x", *ports, "offset", "count"], ["y", "end"], name="coder", steps=23,
                              coding=coding, seed=99, activation="relu", converter="round", bits=3)
    feeds = {"x": x, **extra, "offset": np.array(0, np.int64), "count": np.array(1, np.int64)}
    model = one_node_model(node, feeds, {"y": TensorProto.FLOAT, "end": TensorProto.INT64})
    offset, pieces = 0, []
    for count in (1, 7, 15):
        feeds.update(offset=np.array(offset, np.int64), count=np.array(count, np.int64))
        y, end = assert_native_equals_bodies(model, feeds, library, threads=2)
        assert int(end) == offset + count and y.shape == (count, 70, 3, 40)
        pieces.append(y)
        offset += count
    whole = hnnx.ops.make_node("A2S", ["x", *ports], ["y"], name="coder", steps=23, coding=coding, seed=99,
                               activation="relu", converter="round", bits=3)
    assert_same_array(np.concatenate(pieces), hnnx.ops.run_reference(whole, x, extra.get("w"), extra.get("b"))[0],
                      "calls vs the whole sequence's reference")


@pytest.mark.parametrize("attrs", [{"decoding": "rate", "window": 5, "kernel": 2, "stride": 2},
                                   {"decoding": "learnable", "window": 4, "kernel": 3, "stride": 1, "padding": 1},
                                   {"decoding": "global", "activation": "relu"}],
                         ids=lambda a: a["decoding"])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_s2a_streaming_calls_over_threads(library: Path, attrs: dict[str, Any], integer: bool) -> None:
    """A sequence of 17 steps fed in calls of 3, 1, 6 and 7 steps, state carried by the ports,
    over two threads: every call's outputs and states equal the function body's."""
    if integer and attrs["decoding"] == "learnable":
        pytest.skip("learnable decoding has no integer form")
    rng = np.random.default_rng(12)
    dtype = np.int32 if integer else np.float32
    x = (rng.random((17, 6, 1500)) < 0.3).astype(dtype)  # 9,000 elements per step
    learnable = attrs["decoding"] == "learnable"
    tables = {"w": rng.normal(size=(3, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    extra = tables if learnable else {}
    ports = ["w", "b"] if learnable else ["", ""]
    view = hnnx.ops.S2A.view_for({**attrs, "mode": "integer" if integer else "float"},
                                 [True, learnable, learnable], 1)
    specs = hnnx.ops.S2A.state_spec(view)
    names = [spec.name + "0" for spec in specs]
    node = hnnx.ops.make_node("S2A", ["x", *ports, *names], ["y", *[spec.name for spec in specs]], name="readout",
                              mode="integer" if integer else "float", **attrs)
    state = {name: spec.initial() for name, spec in zip(names, specs)}
    out_types = {"y": ELEM[np.dtype(dtype)], **{spec.name: ELEM[spec.dtype] for spec in specs}}
    model = one_node_model(node, {"x": x[:1], **extra, **state}, out_types, time_input="x")
    start = 0
    for length in (3, 1, 6, 7):
        got = assert_native_equals_bodies(model, {"x": x[start:start + length], **extra, **state}, library, 2)
        state = dict(zip(names, got[1:]))
        start += length


def test_a2s_steps_outside_the_sequence_name_the_node(library: Path) -> None:
    node = hnnx.ops.make_node("A2S", ["x", "", "", "offset", "count"], ["y"], name="coder_far", steps=4)
    feeds = {"x": np.zeros((2, 3), np.float32), "offset": np.array(3, np.int64), "count": np.array(2, np.int64)}
    session = native_session(one_node_model(node, feeds, {"y": TensorProto.FLOAT}), library)
    with pytest.raises(Exception, match=r"hnnx\.A2S node 'coder_far': A2S steps 3 … 4 \(offset 3, count 2\) are "
                                        r"outside its 4 steps"):
        session.run(None, feeds)


def test_s2a_steps_not_a_multiple_of_the_window_name_the_node(library: Path) -> None:
    node = hnnx.ops.make_node("S2A", ["x"], ["y"], name="windowed", window=4)
    feeds = {"x": np.zeros((6, 2), np.float32)}
    session = native_session(one_node_model(node, feeds, {"y": TensorProto.FLOAT}), library)
    with pytest.raises(Exception, match=r"hnnx\.S2A node 'windowed': S2A needs T to be a positive multiple of "
                                        r"window 4, got T = 6"):
        session.run(None, feeds)


def test_native_hybrid_kernels_win_over_the_model_function(library: Path) -> None:
    """With the library registered onnxruntime runs the A2S kernel whatever the function body
    (here a body that outputs zeros) says."""
    x = np.array([[0.5, -1.0]], np.float32)
    node = hnnx.ops.make_node("A2S", ["x"], ["y"], name="coder", steps=2)
    model = one_node_model(node, {"x": x}, {"y": TensorProto.FLOAT})
    body = model.functions[0]
    del body.node[:]
    body.node.extend([helper.make_node("Constant", [], ["axes"], value_ints=[0]),
                      helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
                      helper.make_node("Sub", ["u", "u"], ["y"])])
    assert not run_onnxruntime(model, {"x": x})[0].any()
    assert_same_array(run_native_hybrid(model, {"x": x}, library)[0], np.stack([x, x]), "native A2S")
