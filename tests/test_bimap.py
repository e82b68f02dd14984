"""Export to BiMap's ONNX dialect: the per-step graph's structure, its numerics against the
integer graph run by hnnx, and the refusals of what BiMap cannot express."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import hnnx
from hnnx import models, ops
from hnnx.cli import main
from hnnx.datasets import load_digits
from hnnx.interop import BimapInterpreter, export_bimap, run_host_loop, write_bimap
from hnnx.interop.bimap import RECORDER_ATTRIBUTES

SAMPLES = 36
INT32_BOUNDS = (-2.0**31, 2.0**31 - 1)
INT28_BOUNDS = (-2.0**27, 2.0**27 - 1)

Quantized = Callable[[str], onnx.ModelProto]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def quantized(digits) -> Quantized:
    """The tianjicx integer graph of a bundled model (quantized once per module)."""
    cache: dict[str, onnx.ModelProto] = {}

    def get(name: str) -> onnx.ModelProto:
        if name not in cache:
            calibration = {"pixels": digits.x_train[:128].reshape(-1, *models.input_layout(name))}
            cache[name] = hnnx.quantize(models.path(name), calibration)[0]
        copy = onnx.ModelProto()
        copy.CopyFrom(cache[name])
        return copy

    return get


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _nodes(model: onnx.ModelProto, op_type: str, domain: str = "") -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type and n.domain == domain]


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def _assert_dialect_numbers(model: onnx.ModelProto) -> None:
    """float32 initializers in raw_data holding whole numbers; weights in int8's range."""
    for init in model.graph.initializer:
        assert init.data_type == TensorProto.FLOAT, init.name
        assert init.raw_data and not init.float_data, init.name
        values = numpy_helper.to_array(init)
        assert np.array_equal(values, np.floor(values)), f"{init.name} holds fractions"
        if values.ndim >= 2:
            assert values.min() >= -128 and values.max() <= 127, init.name


def _assert_value_info_everywhere(model: onnx.ModelProto) -> None:
    """Every node output is typed [1, ...] in value_info or the graph outputs, with its rank."""
    declared = {vi.name: _dims(vi) for vi in [*model.graph.value_info, *model.graph.output]}
    for node in model.graph.node:
        dims = declared.get(node.output[0])
        assert dims is not None, f"no value_info for {node.output[0]!r} ({node.op_type})"
        assert dims[0] == 1 and all(d > 0 for d in dims), (node.output[0], dims)
    for node in model.graph.node:
        if node.op_type in ("Relu", "Clip", "Div", "Floor", "Add", "LIFRecorder", "RectangleFire"):
            assert declared[node.output[0]] == declared.get(node.input[0], declared[node.output[0]])


# ---------------------------------------------------------------------------- structure
def test_ann_export_is_the_shift_requantized_dialect(quantized: Quantized) -> None:
    source = quantized("ann_cnn")
    model, report = export_bimap(source)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 9)]
    cut = ["Clip", "Div", "Floor", "Clip"]
    assert [n.op_type for n in model.graph.node] == [
        "Conv", *cut, "Relu", "Conv", *cut, "Relu", "Transpose", "Flatten", "Gemm", *cut, "Relu", "Gemm", "Clip"]
    assert _dims(model.graph.input[0]) == [1, 1, 8, 8] and _dims(model.graph.output[0]) == [1, 10]
    # Each requantization: Clip(INT32) → Div(2^shift of the source's Requantize) → Floor → Clip(INT8).
    shifts = [ops.Requantize.view(n).attrs["shift"] for n in _nodes(source, "Requantize", ops.DOMAIN)]
    divisors = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    by_output = {n.output[0]: n for n in model.graph.node}
    consumer = {n.input[0]: n for n in model.graph.node}
    divs = _nodes(model, "Div")
    assert [divisors[d.input[1]].shape for d in divs] == [()] * len(shifts)
    assert [float(divisors[d.input[1]]) for d in divs] == [2.0**s for s in shifts]
    for div in divs:
        clip32, floor = by_output[div.input[0]], consumer[div.output[0]]
        clip8 = consumer[floor.output[0]]
        assert clip32.op_type == "Clip" and floor.op_type == "Floor" and clip8.op_type == "Clip"
        assert (_attrs(clip32)["min"], _attrs(clip32)["max"]) == tuple(np.float32(INT32_BOUNDS))
        assert (_attrs(clip8)["min"], _attrs(clip8)["max"]) == (-128.0, 127.0)
    last = model.graph.node[-1]
    assert last.output[0] == "scores" and (_attrs(last)["min"], _attrs(last)["max"]) == tuple(np.float32(INT32_BOUNDS))
    for gemm in _nodes(model, "Gemm"):
        assert _attrs(gemm) == {"alpha": 1.0, "beta": 1.0, "transB": 1}
    transpose = _nodes(model, "Transpose")[0]
    assert _attrs(transpose) == {"perm": [0, 2, 3, 1]} and by_output["view.q"].input == [transpose.output[0]]
    assert all("auto_pad" not in _attrs(n) and _attrs(n)["group"] == 1 for n in _nodes(model, "Conv"))
    _assert_dialect_numbers(model)
    _assert_value_info_everywhere(model)
    assert report.steps == 1 and report.network == "ann"
    assert report.inputs[0]["quantization"] == {"scale": 0.015625, "zero_point": 0}
    assert report.outputs[0]["scale"] == hnnx.quantization.output_scales(source)["scores"]


def test_snn_export_marks_each_neuron_with_its_soma_fields(quantized: Quantized) -> None:
    source = quantized("snn_mlp")
    model, report = export_bimap(source)
    onnx.checker.check_model(model, full_check=True)
    assert sorted((o.domain, o.version) for o in model.opset_import) == [("", 9), ("snn", 1)]
    neuron = ["Gemm", "Clip", "LIFRecorder", "Add", "Clip", "RectangleFire"]
    assert [n.op_type for n in model.graph.node] == neuron * 2
    sources = {n.name: ops.LIF.view(n).attrs for n in _nodes(source, "LIF", ops.DOMAIN)}
    inputs = {vi.name: _dims(vi) for vi in model.graph.input}
    recorders = _nodes(model, "LIFRecorder", "snn")
    fires = _nodes(model, "RectangleFire", "snn")
    assert len(recorders) == len(fires) == 2
    for name, recorder, fire, clip, add in zip(sources, recorders, fires, _nodes(model, "Clip")[::2],
                                               _nodes(model, "Add")):
        lif = sources[name]
        attrs = _attrs(recorder)
        assert set(attrs) == set(RECORDER_ATTRIBUTES)
        assert attrs == {"v_th": lif["threshold"], "v_leaky_alpha": lif["alpha"], "v_leaky_beta": lif["beta"],
                         "v_reset": lif["v_reset"], "v_leaky_adpt_en": 1, "v_init": lif["v_init"],
                         "time_window_size": 8.0}
        assert attrs["v_leaky_alpha"] == 0.875  # α itself: BiMap multiplies by 256
        assert _attrs(fire) == {"v_th0": lif["threshold"]}
        assert (_attrs(clip)["min"], _attrs(clip)["max"]) == tuple(np.float32(INT28_BOUNDS))
        assert clip.output[0] == recorder.input[0] and add.input[0] == recorder.output[0]
        assert add.input[1] == f"{name}.v" and inputs[f"{name}.v"][0] == 1  # the membrane: a graph input
    assert inputs == {"pixels": [1, 64], "hidden_lif.v": [1, 128], "out_lif.v": [1, 10]}
    assert [o.name for o in model.graph.output] == ["scores.step"] and fires[-1].output[0] == "scores.step"
    _assert_dialect_numbers(model)
    _assert_value_info_everywhere(model)
    assert report.steps == 8 and report.network == "snn"
    assert report.inputs[0]["coding"] == "direct"
    assert [m["name"] for m in report.membranes] == ["hidden_lif.v", "out_lif.v"]
    assert report.outputs[0]["decoder"]["attrs"]["decoding"] == "global"


# ---------------------------------------------------------------------------- numerics
def _compare_with_hnnx(source: onnx.ModelProto, model: onnx.ModelProto, report: hnnx.interop.BimapReport,
                       pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The host loop over the exported graph, sample by sample, equals hnnx's run of the integer graph."""
    tensor = report.inputs[0]["source_tensor"]
    result = hnnx.simulate(source, {"pixels": pixels}, probes=[tensor])
    quantized_pixels = result.probes[tensor]
    decoded = [run_host_loop(model, report, {report.inputs[0]["name"]: quantized_pixels[i:i + 1]})
               for i in range(len(pixels))]
    got = np.concatenate([d["scores"] for d in decoded])
    expected = result.outputs["scores"]
    assert got.shape == expected.shape and np.array_equal(got, expected), np.abs(got - expected).max()
    # A real spread of values and predicted classes, not a trivial match.
    assert np.unique(expected).size >= 5 and np.unique(expected.argmax(axis=1)).size >= 5
    return {"quantized_pixels": quantized_pixels}


def test_ann_export_computes_the_integer_logits_exactly(quantized: Quantized, digits) -> None:
    source = quantized("ann_cnn")
    model, report = export_bimap(source)
    pixels = digits.x_test[:SAMPLES].reshape(-1, 1, 8, 8)
    quantized_pixels = _compare_with_hnnx(source, model, report, pixels)["quantized_pixels"]
    # The file is plain opset-9 ONNX: onnxruntime gives the same logits (sums stay below 2^24).
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"pixels": quantized_pixels[i:i + 1].astype(np.float32)})[0]
                             for i in range(SAMPLES)])
    expected = hnnx.simulate(source, {"pixels": pixels}).outputs["scores"]
    assert np.array_equal(logits, expected)


@pytest.mark.parametrize("name", ["snn_mlp", "snn_conv"])
def test_snn_export_per_step_outputs_accumulate_to_the_integer_graph(name: str, quantized: Quantized,
                                                                      digits) -> None:
    """snn_mlp: the host's count of output spikes = S2A's counts; snn_conv: the host's sum of the
    per-step readout (a Gemm after a channel-last flatten of conv spikes) = S2A's sum."""
    source = quantized(name)
    model, report = export_bimap(source)
    _compare_with_hnnx(source, model, report, digits.x_test[:SAMPLES].reshape(-1, *models.input_layout(name)))


def test_hidden_spikes_match_at_every_step(quantized: Quantized, digits) -> None:
    source = quantized("snn_mlp")
    model, report = export_bimap(source)
    result = hnnx.simulate(source, {"pixels": digits.x_test[:8]}, probes=["pixels.q", "hidden_lif.spikes.q"])
    expected = result.probes["hidden_lif.spikes.q"]  # [T, N, 128]
    assert 0 < expected.mean() < 1
    for sample in range(8):
        interpreter = BimapInterpreter(model)
        for t in range(report.steps):
            got = interpreter.step({"pixels": result.probes["pixels.q"][sample:sample + 1]},
                                   probes=["hidden_lif.spikes.q"])["hidden_lif.spikes.q"]
            assert np.array_equal(got[0], expected[t, sample]), (sample, t)


def test_rate_coded_input_is_coded_by_the_host(digits) -> None:
    float_model = hnnx.load(models.path("snn_mlp"))
    (a2s,) = [n for n in float_model.graph.node if n.op_type == "A2S"]
    next(a for a in a2s.attribute if a.name == "coding").s = b"rate"
    source, _ = hnnx.quantize(float_model, {"pixels": digits.x_train[:128]})
    model, report = export_bimap(source)
    assert report.inputs[0]["coding"] == "rate" and report.inputs[0]["coder"]["node"] == a2s.name
    _compare_with_hnnx(source, model, report, digits.x_test[:SAMPLES])


def test_interpreter_neuron_follows_bimaps_lif_by_hand() -> None:
    """One neuron layer of 3, fed a constant current for 4 steps; membranes worked out by hand."""
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    recorder = dict(v_th=10.0, v_leaky_alpha=0.75, v_leaky_beta=-1.0, v_reset=2.0, v_leaky_adpt_en=1, v_init=0.0,
                    time_window_size=4.0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["u"], name="fc", alpha=1.0, beta=1.0, transB=1),
             helper.make_node("Clip", ["u"], ["c"], name="c", min=INT28_BOUNDS[0], max=INT28_BOUNDS[1]),
             helper.make_node("LIFRecorder", ["c"], ["r"], name="r", domain="snn", **recorder),
             helper.make_node("Add", ["r", "v"], ["a"], name="a"),
             helper.make_node("Clip", ["a"], ["s"], name="s", min=INT28_BOUNDS[0], max=INT28_BOUNDS[1]),
             helper.make_node("RectangleFire", ["s"], ["spikes"], name="fire", domain="snn", v_th0=10.0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
                                           helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, [1, 3])], [weight, bias])
    interpreter = BimapInterpreter(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9),
                                                                           helper.make_opsetid("snn", 1)]))
    x = np.array([[7, -5, 2**27]])
    # α = 0.75 → 192/256, β = −1, θ = 10, v_reset = 2 (the Gemm is the identity):
    # neuron 0: v1 7 → floor(192·7/256) − 1 = 4; 11 fires, reset 2 → floor(1.5) − 1 = 0; 7 → 4; 11 fires → 0
    # neuron 1: v1 −5 → floor(−3.75) − 1 = −5; −10 → floor(−7.5) − 1 = −9; −14 → −12; −17 → −14
    # neuron 2: clamp28(2^27) = 2^27 − 1 fires every step; reset 2 → 0; then 2^27 − 1 again
    expected_spikes = [[0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1]]
    expected_v = [[4, -5, 0], [0, -9, 0], [4, -12, 0], [0, -14, 0]]
    for t in range(4):
        spikes = interpreter.step({"x": x})["spikes"]
        assert spikes.tolist() == [expected_spikes[t]], t
        assert interpreter.membranes["v"].tolist() == [expected_v[t]], t
    interpreter.reset()
    assert interpreter.membranes["v"].tolist() == [[0, 0, 0]]


# ---------------------------------------------------------------------------- refusals
def _one_line_naming(exc: pytest.ExceptionInfo, node: str, reason: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and f"node {node!r}" in message and reason in message, message


def test_refuses_models_that_are_not_tianjicx_integer_graphs(digits) -> None:
    with pytest.raises(hnnx.ModelError, match="not a quantized model.*hnnx quantize"):
        export_bimap(hnnx.load(models.path("snn_mlp")))
    fake, _ = hnnx.quantize(models.path("snn_mlp"), {"pixels": digits.x_train[:64]}, format="fakequant")
    with pytest.raises(hnnx.ModelError, match="tianjicx/fakequant model.*hnnx quantize"):
        export_bimap(fake)


@pytest.mark.parametrize("name, node, reason", [
    ("hybrid_a2s", "a2s", "rate-coding A2S inside the network"),
    ("hybrid_s2a", "s2a", "rate S2A feeds more layers"),
])
def test_refuses_hybrid_units_bimap_cannot_run(name: str, node: str, reason: str, quantized: Quantized) -> None:
    with pytest.raises(hnnx.NodeError) as exc:
        export_bimap(quantized(name))
    _one_line_naming(exc, node, reason)


@pytest.mark.parametrize("attrs, reason", [
    ({"reset_mode": "soft"}, "reset_mode 'soft'"),
    ({"reset_mode": "soft_constant", "reset_decrement": 100.0}, "reset_mode 'soft_constant'"),
    ({"refractory": 2}, "refractory period"),
    ({"theta_increment": 50.0}, "adaptive threshold"),
    ({"v_lower": -1000.0}, "v_lower -1000"),
    ({"state_bits": 24}, "state_bits 24"),
])
def test_refuses_neuron_features_bimap_lacks(attrs: dict[str, Any], reason: str, quantized: Quantized) -> None:
    model = quantized("snn_mlp")
    (lif,) = [n for n in model.graph.node if n.name == "hidden_lif"]
    kept = [a for a in lif.attribute if a.name not in attrs]
    del lif.attribute[:]
    lif.attribute.extend(kept + [helper.make_attribute(k, v) for k, v in attrs.items()])
    with pytest.raises(hnnx.NodeError) as exc:
        export_bimap(model)
    _one_line_naming(exc, "hidden_lif", reason)


def test_refuses_neuron_state_ports(quantized: Quantized) -> None:
    model = quantized("snn_mlp")
    (lif,) = [n for n in model.graph.node if n.name == "hidden_lif"]
    lif.output.append("hidden_lif.v_final")
    with pytest.raises(hnnx.NodeError) as exc:
        export_bimap(model)
    _one_line_naming(exc, "hidden_lif", "connected ports v:")


def _float_cnn(middle: list[onnx.NodeProto], group: int = 1, features: int = 4 * 36,
               output_relu: bool = False) -> onnx.ModelProto:
    """x [N, 2, 6, 6] → Conv 'conv' (4 channels) → ``middle`` (reads 'a', writes 'b', ``features``
    values per sample) → Flatten → Gemm 'fc' → y [N, 3] (through a Relu with ``output_relu``)."""
    rng = np.random.default_rng(3)
    initializers = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 2 // group, 3, 3)).astype(np.float32), "cw"),
                    numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "cb"),
                    numpy_helper.from_array(rng.normal(0, 0.3, (3, features)).astype(np.float32), "fw"),
                    numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["a"], name="conv", pads=[1, 1, 1, 1], group=group),
             *middle,
             helper.make_node("Flatten", ["b"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["fc_out" if output_relu else "y"], name="fc", transB=1)]
    if output_relu:
        nodes.append(helper.make_node("Relu", ["fc_out"], ["y"], name="out_relu"))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)], ir_version=ops.IR_VERSION)


def _relu_on_accumulators(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same integer network with each ReLU moved onto the int32 accumulator it follows
    (relu(clamp(floor(x/2^k))) = clamp(floor(relu(x)/2^k))); the last layer's requantization
    before the output ReLU is dropped, so the output is the ReLU of the int32 accumulator."""
    graph = model.graph
    consumers = {name: [n for n in graph.node if name in n.input] for n in graph.node for name in n.output}
    outputs = {o.name: o for o in graph.output}
    for requantize in [n for n in graph.node if n.op_type == "Requantize"]:
        (relu,) = consumers[requantize.output[0]]
        assert relu.op_type == "Relu"
        if relu.output[0] in outputs:
            relu.input[0] = requantize.input[0]
            graph.node.remove(requantize)
            outputs[relu.output[0]].type.tensor_type.elem_type = TensorProto.INT32
        else:
            acc, int8, out = requantize.input[0], requantize.output[0], relu.output[0]
            relu.input[0], relu.output[0] = acc, f"{acc}.relu"
            requantize.input[0], requantize.output[0] = f"{acc}.relu", out
            graph.node.remove(relu)
            graph.node.insert(list(graph.node).index(requantize), relu)
            assert int8 not in {name for n in graph.node for name in n.input}
    return model


def test_pooling_and_relus_on_accumulators_compute_exactly() -> None:
    """Conv → ReLU → MaxPool → Flatten → Gemm → ReLU, with each ReLU on the int32 accumulator: the
    export writes it after the requantization or the closing Clip(INT32) that BiMap needs right after
    a layer; host loop and onnxruntime equal hnnx on the integer graph."""
    middle = [helper.make_node("Relu", ["a"], ["r"], name="relu"),
              helper.make_node("MaxPool", ["r"], ["b"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    x = np.random.default_rng(5).random((64, 2, 6, 6)).astype(np.float32)
    quantized_model, _ = hnnx.quantize(_float_cnn(middle, features=4 * 9, output_relu=True), {"x": x[:32]})
    source = _relu_on_accumulators(quantized_model)
    model, report = export_bimap(source)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Clip", "Div", "Floor", "Clip", "Relu", "MaxPool",
                                                     "Transpose", "Flatten", "Gemm", "Relu", "Clip"]
    assert _attrs(_nodes(model, "MaxPool")[0]) == {"kernel_shape": [2, 2], "pads": [0, 0, 0, 0], "strides": [2, 2]}
    result = hnnx.simulate(source, {"x": x[32:]}, probes=["x.q"])
    expected = result.outputs["y"]
    assert expected.dtype == np.int32 and np.unique(expected).size > 10 and (expected == 0).any()
    got = np.concatenate([run_host_loop(model, report, {"x": result.probes["x.q"][i:i + 1]})["y"] for i in range(32)])
    assert np.array_equal(got, expected)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = [session.run(None, {"x": result.probes["x.q"][i:i + 1].astype(np.float32)})[0] for i in range(32)]
    assert np.array_equal(np.concatenate(logits), expected)


@pytest.mark.parametrize("middle, group, op_type, reason", [
    ([helper.make_node("AveragePool", ["a"], ["b"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], 1,
     "AveragePool", "AveragePool has no form"),
    ([helper.make_node("Sigmoid", ["a"], ["b"], name="squash")], 1, "Sigmoid", "Sigmoid has no form"),
    ([helper.make_node("Relu", ["a"], ["r"], name="relu"),
      helper.make_node("Concat", ["r", "r"], ["b"], name="join", axis=1)], 1, "Concat", "Concat has no form"),
    ([helper.make_node("Relu", ["a"], ["r"], name="relu"),
      helper.make_node("Add", ["r", "a"], ["b"], name="residual")], 1, "Add", "Add of two computed tensors"),
    ([helper.make_node("Relu", ["a"], ["b"], name="relu")], 2, "ConvInteger", "group convolution (group=2)"),
])
def test_refuses_ops_outside_the_dialect(middle: list[onnx.NodeProto], group: int, op_type: str,
                                         reason: str) -> None:
    x = np.random.default_rng(5).random((32, 2, 6, 6)).astype(np.float32)
    features = (8 if op_type == "Concat" else 4) * 36
    source, _ = hnnx.quantize(_float_cnn(middle, group, features), {"x": x})
    with pytest.raises(hnnx.NodeError) as exc:
        export_bimap(source)
    # The node named is the source graph's node of that op (float or integer, as the quantizer left it).
    culprits = [n.name for n in source.graph.node if n.op_type == op_type and n.name == exc.value.node]
    assert culprits, f"{exc.value} does not name a {op_type} node"
    _one_line_naming(exc, culprits[0], reason)


def test_refuses_a_zero_shift_that_onnx_simplifier_would_drop(quantized: Quantized) -> None:
    model = quantized("ann_cnn")
    requantize = _nodes(model, "Requantize", ops.DOMAIN)[0]
    next(a for a in requantize.attribute if a.name == "shift").i = 0
    with pytest.raises(hnnx.NodeError) as exc:
        export_bimap(model)
    _one_line_naming(exc, requantize.name, "shift 0")


# ---------------------------------------------------------------------------- command line and files
def test_cli_export_writes_model_and_report(tmp_path: Path, quantized: Quantized) -> None:
    source = tmp_path / "q.onnx"
    hnnx.save(quantized("snn_mlp"), source)
    out, report = tmp_path / "bimap.onnx", tmp_path / "export.json"
    result = CliRunner().invoke(main, ["export", str(source), "--format", "bimap", "-o", str(out),
                                       "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "| hidden_lif.v | [1, 128] |" in result.stdout and f"wrote {out}" in result.stdout
    written = onnx.load(str(out))
    assert [n.op_type for n in written.graph.node].count("LIFRecorder") == 2
    content = json.loads(report.read_text())
    assert content["steps"] == 8 and content["outputs"][0]["name"] == "scores.step"
    assert (tmp_path / "export.md").is_file()


def test_cli_export_refuses_a_float_model_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "bimap.onnx"
    result = CliRunner().invoke(main, ["export", str(models.path("snn_mlp")), "--format", "bimap", "-o", str(out)])
    assert result.exit_code == 2
    assert result.stderr.startswith("hnnx: error:") and "hnnx quantize" in result.stderr
    assert result.stderr.count("\n") == 1 and not out.exists()


def test_write_bimap_is_atomic(tmp_path: Path, quantized: Quantized) -> None:
    model, _ = export_bimap(quantized("ann_cnn"))
    path = write_bimap(model, tmp_path / "ann.onnx")
    assert onnx.load(str(path)) == model and [p.name for p in tmp_path.iterdir()] == ["ann.onnx"]
    with pytest.raises(hnnx.HnnxError, match="does not exist"):
        write_bimap(model, tmp_path / "missing" / "ann.onnx")
