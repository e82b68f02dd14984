"""Long sequences a few steps at a time: the stepwise form, chunked simulation and ``hnnx.Stream``.

Every run that carries the state from call to call must give, bit for bit, what one run over the
whole sequence gives — outputs, probes, firing rates and accuracy — for every bundled model,
float and integer, on the native LIF kernel and on the function bodies, for chunk lengths that
divide the sequence and that do not, with S2A windows straddling calls.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from torch import nn

import hnnx
import hnnx.frontends.torch as hnn
from hnnx import models, ops, passes
from hnnx.cli import main
from hnnx.datasets import load_digits
from hnnx.errors import DataError, HnnxError
from hnnx.passes.stepwise import LAST, METADATA_KEY, STEPS_INPUT, stepwise_parts
from hnnx.runtime import native as native_kernels
from hnnx.runtime.stream import OVERHEAD, bytes_per_step

SAMPLES = 24
REQUIRED = os.environ.get("HNNX_REQUIRE_NATIVE", "") == "1"
STATEFUL = [name for name in models.available() if any(
    n.domain == ops.DOMAIN for n in onnx.load(models.path(name)).graph.node)]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module", params=["native", "bodies"])
def kernel(request: pytest.FixtureRequest) -> bool:
    """Both LIF paths: the native kernel (skipped without it, unless HNNX_REQUIRE_NATIVE=1) and the bodies."""
    if request.param == "native" and not native_kernels.status().active:
        if REQUIRED:
            pytest.fail(f"HNNX_REQUIRE_NATIVE=1 but the native kernel is unavailable: {native_kernels.status().reason}")
        pytest.skip(f"native kernel unavailable: {native_kernels.status().reason}")
    return request.param == "native"


@pytest.fixture(scope="module")
def bundled(digits) -> dict[tuple[str, str], onnx.ModelProto]:
    """Every bundled model with hnnx nodes, float and as its tianjicx integer graph."""
    out = {}
    for name in STATEFUL:
        layout = models.input_layout(name)
        out[name, "float"] = hnnx.load(models.path(name))
        calibration = {"pixels": digits.x_train[:64].reshape(-1, *layout)}
        out[name, "integer"], _ = hnnx.quantize(models.path(name), calibration, target="tianjicx")
    return out


def assert_same_result(got: hnnx.SimulationResult, whole: hnnx.SimulationResult, what: str) -> None:
    for kind in ("outputs", "probes"):
        expected, actual = getattr(whole, kind), getattr(got, kind)
        assert actual.keys() == expected.keys(), what
        for name in expected:
            a, b = actual[name], expected[name]
            assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {name} {a.shape} vs {b.shape}"
            assert np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)), f"{what}: {name}"
    assert got.firing_rates == whole.firing_rates, what
    assert got.accuracy == whole.accuracy, what


# ---------------------------------------------------------------------------- bundled models
@pytest.mark.parametrize("numeric", ["float", "integer"])
@pytest.mark.parametrize("name", STATEFUL)
def test_chunked_runs_equal_the_whole_run(name: str, numeric: str, kernel: bool, bundled, digits) -> None:
    model = bundled[name, numeric]
    parts = stepwise_parts(model)
    steps = parts.steps
    assert parts.chunk is not None and not parts.whole_sequence, "every stateful node runs step by step"
    lifs = [n.name for n in ops.hnnx_nodes(parts.chunk.graph) if n.op_type == "LIF"]
    probes = [n.output[0] for n in ops.hnnx_nodes(model.graph) if n.op_type in ("LIF", "A2S")]
    data = {"pixels": digits.x_test[:SAMPLES].reshape(-1, *models.input_layout(name))}
    common = dict(labels=digits.y_test[:SAMPLES], batch_size=10, probes=probes, native=kernel)
    whole = hnnx.simulate(model, data, chunk_steps=0, **common)
    assert whole.chunk_steps is None and len(whole.firing_rates) == len(lifs) > 0
    for chunk in (1, 3, steps + 2):  # 3 divides none of the sequences (6, 8, 16): windows straddle calls
        got = hnnx.simulate(model, data, chunk_steps=chunk, **common)
        assert got.chunk_steps == chunk
        assert_same_result(got, whole, f"{name} {numeric} chunk {chunk}")


def test_every_stateful_node_of_the_bundled_models_carries_its_declared_state(bundled) -> None:
    for (name, numeric), model in bundled.items():
        parts = stepwise_parts(model)
        carried = {(s.node, s.name) for s in parts.states}
        for node in ops.hnnx_nodes(model.graph):
            decl = ops.declaration(node.op_type)
            for spec in decl.state_spec(decl.view(node)):
                assert (node.name, spec.name) in carried, f"{name} {numeric}: {node.name}.{spec.name}"


# ---------------------------------------------------------------------------- the pass
def test_stepwise_pass_gives_a_self_contained_stateful_graph(digits) -> None:
    """snn_conv's stateful form, run by a stock onnxruntime session 4 steps then 2, equals the model."""
    model = hnnx.load(models.path("snn_conv"))
    changes: dict[str, bool] = {}
    stateful = passes.run_passes(model, [passes.stepwise], changes)
    assert changes == {"stepwise": True}
    onnx.checker.check_model(stateful, full_check=True)
    roles = json.loads({p.key: p.value for p in stateful.metadata_props}[METADATA_KEY])
    assert roles["steps"] == 6 and roles["steps_input"] == STEPS_INPUT and roles["outputs"]["scores"] == LAST
    assert {(s["node"], s["state"]) for s in roles["states"]} == {
        ("encode", "offset"), ("lif1", "v"), ("lif2", "v"), ("mean", "buffer"), ("mean", "filled")}
    pixels = digits.x_test[:5].reshape(-1, 1, 8, 8)
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": pixels})
    session = ort.InferenceSession(stateful.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = {i.name: i.shape for i in session.get_inputs()}
    state = {}
    for s in roles["states"]:  # initial values at the declared shapes ('N' = 5 samples)
        shape = [5 if d == "N" else d for d in shapes[s["input"]]]
        state[s["input"]] = np.full(shape, s["initial"], s["dtype"])
    for steps in (4, 2):
        got = dict(zip(names, session.run(None, {"pixels": pixels, STEPS_INPUT: np.array(steps, np.int64), **state})))
        state = {s["input"]: got[s["output"]] for s in roles["states"]}
    assert np.array_equal(got["scores"], expected)
    assert int(got["encode.end"]) == 6 and int(got["mean.filled"]) == 6


def test_stepwise_pass_leaves_a_model_without_state_unchanged() -> None:
    changes: dict[str, bool] = {}
    model = hnnx.load(models.path("ann_cnn"))
    out = passes.run_passes(model, [passes.stepwise], changes)
    assert changes == {"stepwise": False} and [n.op_type for n in out.graph.node] == [
        n.op_type for n in model.graph.node]


def test_the_sequence_length_baked_into_reshapes_becomes_the_calls() -> None:
    """The exporter writes T = 16 into hybrid_a2s's reshapes; the chunk graph reads the call's length."""
    model = hnnx.load(models.path("hybrid_a2s"))
    assert any(n.op_type == "Reshape" and onnx.numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == n.input[1]))[0] == 16
        for n in model.graph.node if n.op_type == "Reshape" and n.input[1] in {i.name for i in model.graph.initializer})
    parts = stepwise_parts(model)
    constants = {i.name for i in parts.chunk.graph.initializer}
    reshapes = [n for n in parts.chunk.graph.node if n.op_type == "Reshape" and n.input[1] not in constants]
    assert len(reshapes) >= 2  # the two reshapes back to [T, N, F] take the call's length


def mixer_model() -> onnx.ModelProto:
    """x [T, N, 4] → LIF 'first' → reversed in time (a Slice with step −1) → LIF 'second' → global S2A."""
    steps = {name: onnx.numpy_helper.from_array(np.array(value, np.int64), name)
             for name, value in (("start", [-1]), ("end", [-(2**62)]), ("axis", [0]), ("step", [-1]))}
    nodes = [ops.make_node("LIF", ["x"], ["first.spikes"], name="first", threshold=0.5, alpha=0.75),
             helper.make_node("Slice", ["first.spikes", "start", "end", "axis", "step"], ["flipped"], name="flip"),
             ops.make_node("LIF", ["flipped"], ["second.spikes"], name="second", threshold=0.25),
             ops.make_node("S2A", ["second.spikes"], ["y"], name="readout", decoding="global")]
    graph = helper.make_graph(nodes, "mixer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=list(steps.values()))
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))


def test_a_node_after_a_time_mixing_op_runs_on_the_whole_sequence() -> None:
    model = mixer_model()
    parts = stepwise_parts(model)
    assert [n.name for n in ops.hnnx_nodes(parts.chunk.graph)] == ["first"]
    assert set(parts.whole_sequence) == {"second", "readout"}
    x = np.random.default_rng(0).normal(0.3, 0.5, (9, 6, 4)).astype(np.float32)
    whole = hnnx.simulate(model, {"x": x}, batch_size=4, chunk_steps=0, probes=["first.spikes", "flipped"])
    got = hnnx.simulate(model, {"x": x}, batch_size=4, chunk_steps=2, probes=["first.spikes", "flipped"])
    assert_same_result(got, whole, "after a flip over time")
    assert np.array_equal(whole.probes["flipped"], whole.probes["first.spikes"][::-1])
    assert "second ran on the whole sequence" in got.summary()


def two_phase_model() -> onnx.ModelProto:
    """x [N, 4] → A2S (4 steps) → LIF → global S2A → ×2 → A2S (6 steps) → LIF → global S2A → y."""
    two = onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [ops.make_node("A2S", ["x"], ["a.y"], name="a", steps=4, coding="rate", seed=1),
             ops.make_node("LIF", ["a.y"], ["l1.spikes"], name="l1", threshold=0.5),
             ops.make_node("S2A", ["l1.spikes"], ["r1.y"], name="r1", decoding="global"),
             helper.make_node("Mul", ["r1.y", "two"], ["doubled"], name="scale"),
             ops.make_node("A2S", ["doubled"], ["b.y"], name="b", steps=6),
             ops.make_node("LIF", ["b.y"], ["l2.spikes"], name="l2", threshold=0.75, alpha=0.5),
             ops.make_node("S2A", ["l2.spikes"], ["y"], name="r2", decoding="global")]
    graph = helper.make_graph(nodes, "two_phase", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=[two])
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))


def test_a_second_sequence_behind_a_readout_runs_whole_after_the_first() -> None:
    model = two_phase_model()
    parts = stepwise_parts(model)
    assert parts.steps == 4 and [n.name for n in ops.hnnx_nodes(parts.chunk.graph)] == ["a", "l1", "r1"]
    assert set(parts.whole_sequence) == {"b", "l2", "r2"}
    x = np.random.default_rng(2).random((7, 4)).astype(np.float32)
    whole = hnnx.simulate(model, {"x": x}, batch_size=4, chunk_steps=0, probes=["l1.spikes", "l2.spikes"])
    assert whole.probes["l2.spikes"].shape == (6, 7, 4) and whole.probes["l1.spikes"].any()
    for chunk in (1, 3):
        got = hnnx.simulate(model, {"x": x}, batch_size=4, chunk_steps=chunk, probes=["l1.spikes", "l2.spikes"])
        assert_same_result(got, whole, f"two phases, chunk {chunk}")


def neurons_model(integer: bool) -> onnx.ModelProto:
    """x [T, N, 6] → recurrent LIF with refractory period → CubaLIF → LI → Integrator."""
    rng = np.random.default_rng(0)
    if integer:
        weight = rng.integers(-40, 40, (6, 6)).astype(np.int32)
        attrs = [dict(threshold=120, alpha=0.75, refractory=1), dict(threshold=2, alpha_syn=0.5),
                 dict(alpha=0.875)]
    else:
        weight = (rng.normal(size=(6, 6)) * 0.3).astype(np.float32)
        attrs = [dict(threshold=0.5, alpha=0.75, refractory=1), dict(threshold=0.4, alpha=0.8, alpha_syn=0.5),
                 dict(alpha=0.9)]
    mode = {"mode": "integer" if integer else "float"}
    nodes = [ops.make_node("LIF", ["x", "", "", "", "", "w"], ["s1"], name="rec", **attrs[0], **mode),
             ops.make_node("CubaLIF", ["s1"], ["s2"], name="cuba", **attrs[1], **mode),
             ops.make_node("LI", ["s2"], ["y_li"], name="li", **attrs[2], **mode),
             ops.make_node("Integrator", ["y_li"], ["y"], name="acc", **mode)]
    elem = TensorProto.INT32 if integer else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "neurons", [helper.make_tensor_value_info("x", elem, ["T", "N", 6])],
                              [helper.make_tensor_value_info("y", elem, ["T", "N", 6])],
                              initializer=[onnx.numpy_helper.from_array(weight, "w")])
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_recurrent_and_current_based_neurons_carry_their_state(integer: bool, kernel: bool) -> None:
    model = neurons_model(integer)
    parts = stepwise_parts(model)
    assert [(s.node, s.name) for s in parts.states] == [
        ("rec", "v"), ("rec", "refractory"), ("rec", "last_spikes"), ("cuba", "v"), ("cuba", "i"), ("li", "v"),
        ("acc", "v")]
    rng = np.random.default_rng(1)
    x = (rng.integers(-60, 200, (13, 5, 6)).astype(np.int32) if integer
         else rng.normal(0.3, 0.6, (13, 5, 6)).astype(np.float32))
    whole = hnnx.simulate(model, {"x": x}, batch_size=3, chunk_steps=0, native=kernel, probes=["s1", "s2"])
    assert whole.probes["s1"].any() and whole.probes["s2"].any() and not whole.probes["s1"].all()
    for chunk in (1, 4, 13):
        got = hnnx.simulate(model, {"x": x}, batch_size=3, chunk_steps=chunk, native=kernel, probes=["s1", "s2"])
        assert_same_result(got, whole, f"neurons chunk {chunk}")


# ---------------------------------------------------------------------------- time-major inputs
class EventNet(nn.Module):
    """Events [T, N, 2, 16, 16] → Conv → LIF → Conv → LIF → Linear → windowed and global readouts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = hnn.TimeFold(nn.Conv2d(2, 4, 3, stride=2, padding=1))
        self.lif1 = hnn.LIF(threshold=0.2, alpha=0.875, refractory=1)
        self.conv2 = hnn.TimeFold(nn.Conv2d(4, 8, 3, stride=2, padding=1))
        self.lif2 = hnn.LIF(threshold=0.2, reset_mode="soft", theta_increment=0.125, theta_alpha=0.5, outputs=2)
        self.fc = hnn.TimeFold(nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 5)))
        self.windows = hnn.S2A(decoding="rate", window=3)
        self.mean = hnn.S2A(decoding="global")

    def forward(self, events: torch.Tensor) -> tuple[torch.Tensor, ...]:
        spikes, v = self.lif2(self.conv2(self.lif1(self.conv1(events))))
        scores = self.fc(spikes)
        return self.mean(scores), self.windows(spikes), v


@pytest.fixture(scope="module")
def event_model() -> onnx.ModelProto:
    torch.manual_seed(3)
    return hnn.export(EventNet(), (torch.rand(3, 2, 2, 16, 16),), None, input_names=["events"],
                      output_names=["scores", "rates", "v_last"])


def events(steps: int, batch: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((steps, batch, 2, 16, 16)) < 0.2).astype(np.float32)


def test_export_marks_an_input_feeding_time_major_layers(event_model) -> None:
    dims = [d.dim_param or d.dim_value for d in event_model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["T", "N", 2, 16, 16]


def test_event_model_in_chunks_from_a_file_equals_the_whole_run(event_model, kernel: bool, tmp_path: Path) -> None:
    path = tmp_path / "events.npy"
    np.save(path, events(12, 7))  # read K steps at a time from the memory map
    probes = ["lif1.spikes"]
    whole = hnnx.simulate(event_model, path, batch_size=3, chunk_steps=0, probes=probes, native=kernel)
    assert whole.outputs["rates"].shape == (4, 7, 8, 4, 4) and whole.outputs["v_last"].shape == (7, 8, 4, 4)
    for chunk in (1, 2, 5, 12):  # the 3-step windows straddle calls of 2 and 5
        got = hnnx.simulate(event_model, path, batch_size=3, chunk_steps=chunk, probes=probes, native=kernel)
        assert_same_result(got, whole, f"events chunk {chunk}")


def test_quantized_event_model_in_chunks_equals_the_whole_run(event_model, kernel: bool) -> None:
    """tianjicx quantization of the event model: lif1 integer, the rest float islands (lif2 has a
    state output, the global S2A runs over an unknown T)."""
    quantized, _ = hnnx.quantize(event_model, {"events": events(12, 16, seed=9)}, target="tianjicx")
    parts = stepwise_parts(quantized)
    assert sorted(n.op_type for n in ops.hnnx_nodes(parts.chunk.graph)) == ["LIF", "LIF", "S2A", "S2A"]
    x = events(12, 7, seed=1)
    assert ops.LIF.view(next(ops.hnnx_nodes(quantized.graph))).attrs["mode"] == "integer"
    whole = hnnx.simulate(quantized, {"events": x}, batch_size=4, chunk_steps=0, native=kernel)
    for chunk in (1, 5):
        got = hnnx.simulate(quantized, {"events": x}, batch_size=4, chunk_steps=chunk, native=kernel)
        assert_same_result(got, whole, f"integer events chunk {chunk}")


def test_stream_steps_give_the_whole_runs_steps(event_model, kernel: bool) -> None:
    x = events(9, 3, seed=1)
    whole = hnnx.simulate(event_model, {"events": x}, chunk_steps=0, native=kernel)
    stream = hnnx.Stream(event_model, native=kernel)
    rates, seen = [], 0
    for steps in (1, 4, 2, 2):
        out = stream.step({"events": x[seen:seen + steps]})
        seen += steps
        rates.append(out["rates"])
        assert out["scores"].shape == (3, 5)  # the running mean over the steps so far
    assert stream.position == 9
    assert np.array_equal(out["scores"], whole.outputs["scores"])
    assert np.array_equal(out["v_last"], whole.outputs["v_last"])
    assert np.array_equal(np.concatenate(rates), whole.outputs["rates"])
    assert [r.shape[0] for r in rates] == [0, 1, 1, 1]  # windows of 3 complete in steps 3, 6, 9


def test_stream_state_can_be_saved_and_restored(event_model) -> None:
    x = events(8, 2, seed=2)
    stream = hnnx.Stream(event_model)
    stream.step({"events": x[:3]})
    saved = stream.get_state()
    first = stream.step({"events": x[3:]})
    stream.reset()
    assert stream.position == 0
    stream.set_state(saved)
    again = stream.step({"events": x[3:]})
    assert saved.position == 3 and all(np.array_equal(first[k], again[k]) for k in first)
    with pytest.raises(HnnxError, match="set_state"):
        stream.set_state(hnnx.runtime.StreamState(0, {"x": np.zeros(1)}, {}, {}, {}))


def test_stream_runs_an_a2s_model_one_step_at_a_time(bundled, digits, kernel: bool) -> None:
    for numeric in ("float", "integer"):
        model = bundled["hybrid_a2s", numeric]
        pixels = digits.x_test[:4].reshape(-1, 1, 8, 8)
        whole = hnnx.simulate(model, {"pixels": pixels}, chunk_steps=0, native=kernel).outputs["scores"]
        stream = hnnx.Stream(model, native=kernel)
        assert stream.steps == 16
        out = stream.step({"pixels": pixels})
        for _ in range(15):
            out = stream.step()
        assert np.array_equal(out["scores"], whole) and out["scores"].dtype == whole.dtype
        with pytest.raises(HnnxError, match="16 steps; 16 ran"):
            stream.step()
        stream.reset()
        with pytest.raises(DataError, match="pixels"):
            stream.step()


def test_stream_gives_outputs_that_need_the_whole_sequence_when_it_is_complete(bundled, digits) -> None:
    model = bundled["hybrid_s2a", "float"]  # windowed S2A → Transpose → ANN head
    pixels = digits.x_test[:4].reshape(-1, 1, 8, 8)
    whole = hnnx.simulate(model, {"pixels": pixels}, chunk_steps=0).outputs["scores"]
    stream = hnnx.Stream(model)
    assert "scores" not in stream.step({"pixels": pixels}, steps=5)
    with pytest.raises(HnnxError, match="8 steps but 5 ran"):
        stream.finish()
    assert np.array_equal(stream.step(steps=3)["scores"], whole)
    assert np.array_equal(stream.finish()["scores"], whole)


# ---------------------------------------------------------------------------- memory budget
def test_the_memory_budget_chooses_the_chunk_length(event_model) -> None:
    x = events(21, 4, seed=4)
    per_step = bytes_per_step(stepwise_parts(event_model), {"N": 4})
    # float32 per sample: events 2·16·16, conv1 and lif1 4·8·8 each, conv2 and lif2 8·4·4 each,
    # fc 5, the window rates 8·4·4 (reshapes are views); 4 samples
    assert per_step == int(OVERHEAD * 4 * 4 * (2 * 16 * 16 + 2 * 4 * 8 * 8 + 2 * 8 * 4 * 4 + 5 + 8 * 4 * 4))
    whole = hnnx.simulate(event_model, {"events": x}, batch_size=4)
    assert whole.chunk_steps is None  # fits the default budget
    got = hnnx.simulate(event_model, {"events": x}, batch_size=4, memory_limit=per_step * 6)
    assert got.chunk_steps == 6
    assert_same_result(got, whole, "memory-limited")


# ---------------------------------------------------------------------------- command line
def test_cli_chunked_simulation_writes_the_same_outputs(event_model, tmp_path: Path) -> None:
    model_path, data_path = tmp_path / "events.onnx", tmp_path / "events.npz"
    hnnx.save(event_model, model_path)
    np.savez(data_path, events=events(9, 5, seed=5))
    runner = CliRunner()
    whole = runner.invoke(main, ["simulate", str(model_path), "-i", str(data_path), "--chunk", "0",
                                 "-o", str(tmp_path / "whole.npz"), "--probe", "lif2.spikes"])
    chunked = runner.invoke(main, ["simulate", str(model_path), "-i", str(data_path), "--chunk", "4",
                                   "-o", str(tmp_path / "chunked.npz"), "--probe", "lif2.spikes"])
    assert whole.exit_code == 0 and chunked.exit_code == 0, chunked.output
    assert "in chunks of 4 steps" in chunked.output and "chunks" not in whole.output
    a, b = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "chunked.npz")
    assert sorted(a.files) == sorted(b.files) == ["lif2.spikes", "rates", "scores", "v_last"]
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    limited = runner.invoke(main, ["simulate", str(model_path), "-i", str(data_path), "--memory-limit", "20K"])
    assert limited.exit_code == 0 and "in chunks of" in limited.output
    bad = runner.invoke(main, ["simulate", str(model_path), "-i", str(data_path), "--memory-limit", "lots"])
    assert bad.exit_code == 2 and "'lots' is not a size" in bad.output


def test_chunked_simulation_errors_name_what_is_wrong(event_model, tmp_path: Path) -> None:
    bad = events(6, 2)
    bad[4, 1, 0, 3, 3] = np.nan
    with pytest.raises(DataError, match="'events' holds 1 NaN"):
        hnnx.simulate(event_model, {"events": bad}, chunk_steps=2)
    with pytest.raises(DataError, match="chunk steps must be ≥ 1"):
        hnnx.simulate(event_model, {"events": bad}, chunk_steps=-1)
    with pytest.raises(hnnx.ModelError, match="probe 'nope'"):
        hnnx.simulate(event_model, {"events": events(6, 2)}, chunk_steps=2, probes=["nope"])


# ---------------------------------------------------------------------------- export
class Direct(nn.Module):
    """The time axis made inside the model: [N, 5] → repeat 3 steps → TimeFold(Linear) → LIF."""

    def __init__(self) -> None:
        super().__init__()
        self.fold = hnn.TimeFold(nn.Linear(5, 4))
        self.lif = hnn.LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.fold(x.unsqueeze(0).expand(3, *x.shape)))


class Scaled(nn.Module):
    """An input that reaches a LIF through an element-wise op: [T, N, 5] → ×2 → LIF."""

    def __init__(self) -> None:
        super().__init__()
        self.lif = hnn.LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(x * 2.0)


def _dims(model: onnx.ModelProto) -> list[list[Any]]:
    return [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]


def test_export_finds_time_major_inputs_and_refuses_wrong_ones() -> None:
    assert _dims(hnn.export(Scaled(), (torch.rand(3, 2, 5),), None, input_names=["x"])) == [["T", "N", 5]]
    assert _dims(hnn.export(Direct(), (torch.rand(2, 5),), None, input_names=["x"])) == [["N", 5]]
    with pytest.raises(HnnxError, match=r"input 0 \('x'\) feeds the time-major layer LIF 'lif'.*time_major_inputs=\[0\]"):
        hnn.export(Scaled(), (torch.rand(3, 2, 5),), None, input_names=["x"], time_major_inputs=[])
    with pytest.raises(HnnxError, match=r"feeds A2S '0'.*drop it from time_major_inputs"):
        hnn.export(nn.Sequential(hnn.A2S(steps=3), hnn.LIF()), (torch.rand(2, 5),), None, input_names=["x"],
                   time_major_inputs=[0])
