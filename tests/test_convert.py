"""hnnx.convert: ANN → SNN conversion and hybrid cuts against a numpy reference of the balanced
integrate-and-fire network, on the digits ANN (accuracy, quantization, lowering) and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import hnnx
import hnnx.models
from hnnx import ops
from hnnx.cli import main
from hnnx.convert import Converter, hybridize, plan_conversion, to_snn
from hnnx.datasets import load_digits
from hnnx.errors import HnnxError, ModelError
from hnnx.passes import import_graph, preprocess
from hnnx.runtime.simulate import npz_bytes
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return {"calib": {"pixels": data.x_train[:256].reshape(-1, 1, 8, 8)},
            "test": {"pixels": data.x_test.reshape(-1, 1, 8, 8), "labels": data.y_test}}


@pytest.fixture(scope="module")
def ann_cnn():
    return hnnx.load(hnnx.models.path("ann_cnn"))


# --------------------------------------------------------------------------- a hand-checked MLP
def _mlp(rng: np.random.Generator) -> tuple[onnx.ModelProto, list[tuple[np.ndarray, np.ndarray]]]:
    """x [N, 4] → Gemm → Relu → Gemm → Relu → Gemm → y [N, 3] (Gemm weights [out, in], transB)."""
    sizes = [4, 6, 5, 3]
    layers = [(rng.normal(0, 0.8, (o, i)).astype(np.float32), rng.normal(0.1, 0.2, o).astype(np.float32))
              for i, o in zip(sizes, sizes[1:])]
    nodes, inits, x = [], [], "x"
    for k, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        out = "y" if k == len(layers) - 1 else f"h{k}"
        nodes.append(helper.make_node("Gemm", [x, f"w{k}", f"b{k}"], [out], name=f"fc{k}", transB=1))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"a{k}"], name=f"relu{k}"))
            x = f"a{k}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), layers


def _numpy_if_network(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], steps: int, v_init: float
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The balanced network by hand: direct input every step, IF neurons (threshold 1, fire on >,
    subtract 1), the readout's per-step output averaged over the steps."""
    hidden = layers[:-1]
    membranes = [np.full((x.shape[0], w.shape[0]), v_init, np.float32) for w, _ in hidden]
    spikes_seen = [np.zeros((steps, x.shape[0], w.shape[0]), np.float32) for w, _ in hidden]
    total = np.zeros((x.shape[0], layers[-1][0].shape[0]), np.float64)
    for t in range(steps):
        signal = x
        for k, (w, b) in enumerate(hidden):
            membranes[k] = membranes[k] + (signal @ w.T + b)
            fired = (membranes[k] > 1.0).astype(np.float32)
            membranes[k] = membranes[k] - fired
            spikes_seen[k][t] = fired
            signal = fired
        w, b = layers[-1]
        total += signal @ w.T + b
    return (total / steps).astype(np.float32), spikes_seen


def test_balanced_weights_and_spikes_match_a_numpy_reference():
    rng = np.random.default_rng(3)
    model, layers = _mlp(rng)
    calib = {"x": rng.random((64, 4)).astype(np.float32)}
    a0 = np.maximum(calib["x"] @ layers[0][0].T + layers[0][1], 0)
    a1 = np.maximum(a0 @ layers[1][0].T + layers[1][1], 0)
    lam0, lam1 = float(a0.max()), float(a1.max())
    snn, report = to_snn(model, calib, steps=20, observer="max")
    weights = {i.name: numpy_helper.to_array(i) for i in snn.graph.initializer}
    np.testing.assert_allclose(weights["w0.balanced"], layers[0][0] / lam0, rtol=1e-6)
    np.testing.assert_allclose(weights["b0.balanced"], layers[0][1] / lam0, rtol=1e-6)
    np.testing.assert_allclose(weights["w1.balanced"], layers[1][0] * lam0 / lam1, rtol=1e-6)
    np.testing.assert_allclose(weights["b1.balanced"], layers[1][1] / lam1, rtol=1e-6)
    np.testing.assert_allclose(weights["w2.balanced"], layers[2][0] * lam1, rtol=1e-6)
    assert "b2.balanced" not in weights  # the readout's bias stays
    assert [(r.role, round(r.output_range, 5)) for r in report.layers] == \
           [("spiking", round(lam0, 5)), ("spiking", round(lam1, 5)), ("readout", 1.0)]
    balanced = [(weights["w0.balanced"], weights["b0.balanced"]), (weights["w1.balanced"], weights["b1.balanced"]),
                (weights["w2.balanced"], weights["b2"])]
    x = rng.random((16, 4)).astype(np.float32)
    expected, spikes = _numpy_if_network(x, balanced, 20, 0.5)
    neurons = [n.output[0] for n in snn.graph.node if n.op_type == "LIF"]
    result = hnnx.simulate(snn, {"x": x}, probes=neurons)
    for name, want in zip(neurons, spikes):
        assert np.array_equal(result.probes[name].reshape(want.shape), want), name
    np.testing.assert_allclose(result.outputs["y"], expected, rtol=1e-5, atol=1e-6)


def test_long_runs_approach_the_ann():
    """Rate coding: the readout's mean approaches the ANN's output as T grows (calibration = test
    data, so no activation exceeds its range)."""
    rng = np.random.default_rng(4)
    model, _ = _mlp(rng)
    data = {"x": rng.random((32, 4)).astype(np.float32)}
    ann = hnnx.simulate(model, data).outputs["y"]
    errors = []
    for steps in (8, 256):
        snn, _ = to_snn(model, data, steps=steps, observer="max")
        errors.append(float(np.abs(hnnx.simulate(snn, data).outputs["y"] - ann).max()))
    assert errors[1] < errors[0] and errors[1] < 0.05 * float(np.abs(ann).max())


# --------------------------------------------------------------------------- the digits ANN
def test_ann_cnn_converts_within_a_point_and_runs_on_the_chip(ann_cnn, digits):
    snn, report = to_snn(ann_cnn, digits["calib"], steps=16)
    kinds = [(n.op_type, n.domain) for n in snn.graph.node]
    assert kinds[0] == ("A2S", "hnnx") and kinds[-1] == ("S2A", "hnnx")
    lifs = [ops.LIF.view(n) for n in snn.graph.node if n.op_type == "LIF"]
    assert len(lifs) == 3 and all((v.attrs["reset_mode"], v.attrs["alpha"], v.attrs["threshold"], v.attrs["v_init"])
                                  == ("soft", 1.0, 1.0, 0.5) for v in lifs)
    assert [o.name for o in snn.graph.output] == ["scores"]
    onnx.checker.check_model(snn, full_check=True)
    ann_accuracy = hnnx.simulate(ann_cnn, digits["test"]).accuracy
    snn_accuracy = hnnx.simulate(snn, digits["test"]).accuracy
    assert snn_accuracy >= ann_accuracy - 0.01
    integer, quantization = hnnx.quantize(snn, digits["calib"], format="int")
    assert not quantization.excluded
    assert hnnx.simulate(integer, digits["test"]).accuracy >= ann_accuracy - 0.01
    program = hnnx.lower(integer, chip="tianjicx")
    compared = hnnx.chip.verify(integer, program, {"pixels": digits["test"]["pixels"][:8]})
    assert "scores" in compared


def test_hybridize_keeps_the_ann_part(ann_cnn, digits):
    hybrid, report = hybridize(ann_cnn, digits["calib"], "node_linear", steps=16)
    before = {n.name: n for n in preprocess(ann_cnn).graph.node}
    nodes = {n.name: n for n in hybrid.graph.node}
    for name in ("node_Conv_19", "node_relu", "node_Conv_20", "node_relu_1", "node_Reshape_23"):
        assert nodes[name] == before[name]
    kept = {i.name: numpy_helper.to_array(i) for i in hybrid.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in preprocess(ann_cnn).graph.initializer}
    assert np.array_equal(kept["features.0.weight"], original["features.0.weight"])
    coder = next(n for n in hybrid.graph.node if n.op_type == "A2S")
    assert coder.input[0] == "view"  # the flattened ANN features are coded
    assert report.ann_nodes == ["node_Conv_19", "node_relu", "node_Conv_20", "node_relu_1", "node_Reshape_23"]
    assert [r.name for r in report.layers] == ["node_linear", "node_linear_1"]
    assert hnnx.simulate(hybrid, digits["test"]).accuracy >= hnnx.simulate(ann_cnn, digits["test"]).accuracy - 0.01


def test_rate_coding_and_the_curve(ann_cnn, digits):
    converter = Converter(ann_cnn, digits["calib"], coding="rate")
    coder = next(n for n in converter.build(8).graph.node if n.op_type == "A2S")
    assert ops.A2S.view(coder).attrs["coding"] == "rate"
    ann, curve = converter.curve(digits["test"], [2, 32])
    assert [t for t, _ in curve] == [2, 32] and curve[1][1] > curve[0][1] and curve[1][1] >= ann - 0.02


def test_what_cannot_be_converted_is_named(ann_cnn, digits):
    residual = hnnx.load(hnnx.models.path("ann_residual"))
    graph = import_graph(preprocess(residual))
    add = next(n for n in graph.nodes if n.op == "Add" and all(t.inputs for t in n.inputs))  # the residual sum
    with pytest.raises(ModelError, match=f"{add.name}.*Add.*--hybridize --cut"):
        plan_conversion(graph)
    with pytest.raises(ModelError, match="must be a synaptic layer"):
        to_snn(ann_cnn, digits["calib"], steps=4, cut="node_relu")
    with pytest.raises(ModelError, match="no node of that name.*node_Conv_19"):
        to_snn(ann_cnn, digits["calib"], steps=4, cut="nowhere")
    with pytest.raises(HnnxError, match="already has hnnx nodes"):
        to_snn(hnnx.models.path("snn_mlp"), {"pixels": np.zeros((4, 64), np.float32)}, steps=4)
    with pytest.raises(HnnxError, match="nothing to convert"):
        to_snn(ann_cnn, digits["calib"], steps=4, cut="node_linear_1")


def test_cli_convert(ann_cnn, digits, tmp_path):
    source, calib, test = tmp_path / "ann.onnx", tmp_path / "calib.npz", tmp_path / "test.npz"
    hnnx.save(ann_cnn, source)
    calib.write_bytes(npz_bytes(digits["calib"]))
    test.write_bytes(npz_bytes(digits["test"]))
    out, report = tmp_path / "snn.onnx", tmp_path / "snn.json"
    result = CliRunner().invoke(main, ["convert", str(source), "--to", "snn", "--calib", str(calib), "--steps", "8",
                                       "-o", str(out), "--eval", str(test), "--curve", "2,8", "--report", str(report),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert [point[0] for point in written["curve"]] == [2, 8] and written["ann_accuracy"] > 0.95
    assert "ANN" in result.output and f"wrote {out}" in result.output
    assert any(n.op_type == "LIF" for n in hnnx.load(out).graph.node)
    hybrid = CliRunner().invoke(main, ["convert", str(source), "--calib", str(calib), "--steps", "8", "-o", str(out),
                                       "--hybridize", "--cut", "node_linear", "--no-progress"])
    assert hybrid.exit_code == 0, hybrid.output
    bad = CliRunner().invoke(main, ["convert", str(source), "--calib", str(calib), "--steps", "8", "-o", str(out),
                                    "--cut", "node_linear"])
    assert bad.exit_code == 2 and "--hybridize" in bad.output
