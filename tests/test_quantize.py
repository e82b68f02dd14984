"""`hnnx quantize`, target tianjicx, integer format: exact integer graphs that keep accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import hnnx
from hnnx import models, ops
from hnnx.cli import main
from hnnx.datasets import load_digits
from hnnx.quantization import quantize
from hnnx.quantization.api import output_scales

RNG = np.random.default_rng(5)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def quantized_models(digits) -> dict[str, tuple[onnx.ModelProto, object]]:
    out = {}
    for name in models.available():
        calibration = {"pixels": digits.x_train[:256].reshape(-1, *models.input_layout(name))}
        out[name] = quantize(models.path(name), calibration)
    return out


@pytest.mark.parametrize("name", models.available())
def test_bundled_model_quantizes_fully_and_keeps_accuracy(name: str, digits, quantized_models) -> None:
    quantized, report = quantized_models[name]
    assert report.excluded == {}
    assert {init.data_type for init in quantized.graph.initializer} <= {
        TensorProto.INT8, TensorProto.INT32, TensorProto.INT64, TensorProto.FLOAT}
    weights = [init for init in quantized.graph.initializer if init.name.endswith(".weight_q")]
    assert weights and all(w.data_type == TensorProto.INT8 for w in weights)
    lifs = [n for n in ops.hnnx_nodes(quantized.graph) if n.op_type == "LIF"]
    assert all(ops.LIF.view(n).attrs["mode"] == "integer" for n in lifs)
    pixels = digits.x_test.reshape(-1, *models.input_layout(name))
    float_accuracy = hnnx.simulate(models.path(name), {"pixels": pixels}, labels=digits.y_test).accuracy
    result = hnnx.simulate(quantized, {"pixels": pixels}, labels=digits.y_test)
    assert result.outputs["scores"].dtype == np.int32
    assert result.accuracy >= float_accuracy - 0.01  # SNN and hybrid target: ≤ 1 pp drop
    assert set(output_scales(quantized)) == {"scores"}


@pytest.mark.parametrize("name", models.available())
def test_integer_graph_is_bit_exact_against_the_numpy_reference(name: str, digits, quantized_models) -> None:
    quantized, _ = quantized_models[name]
    pixels = digits.x_test[:12].reshape(-1, *models.input_layout(name))
    (got,) = _run(quantized, {"pixels": pixels})
    (expected,) = ReferenceEvaluator(quantized, new_ops=ops.reference_ops()).run(None, {"pixels": pixels})
    assert got.dtype == expected.dtype == np.int32
    assert np.array_equal(got, expected)


def _weight_exponent(weight: np.ndarray, unit: int = 2) -> int:
    """An ANN layer's weight exponent: of the multiples of ``unit`` on either side of the largest
    exponent clamping no weight, the one whose int8 weights ``clip(round(w·2^f))·2^−f`` lie closer
    to ``w`` (written out independently of hnnx)."""
    below = unit * math.floor(math.log2(127 / np.abs(weight).max()) / unit)
    candidates = [below, below + unit]
    errors = [np.sum((np.clip(np.round(weight * 2.0**f), -128, 127) * 2.0**-f - weight) ** 2) for f in candidates]
    return candidates[int(np.argmin(errors))]


def test_ann_layers_follow_the_shift_only_equations() -> None:
    w1, b1 = RNG.normal(0, 0.4, (6, 4)).astype(np.float32), RNG.normal(0, 0.1, 6).astype(np.float32)
    w2, b2 = RNG.normal(0, 0.4, (3, 6)).astype(np.float32), RNG.normal(0, 0.1, 3).astype(np.float32)
    model = _model([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
                    helper.make_node("Relu", ["h"], ["r"], name="relu"),
                    helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                   {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
    x = RNG.normal(0, 1, (40, 4)).astype(np.float32)
    quantized, report = quantize(model, {"x": x})

    # The scheme by hand: power-of-two input, weights folded with the input scale, floor requantization
    # by an even shift; fc1, which only fc2 reads, folds the range fit c into its weights and bias so
    # that 127·scale is h's calibrated absmax (h: where its accumulator becomes int8, before the ReLU).
    f_x = math.floor(math.log2(127 / np.abs(x).max()))
    big_x = np.clip(np.round(x.astype(np.float64) * 2.0**f_x), -128, 127)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 6]))
    absmax_h = float(np.abs(_run(probe, {"x": x})[1]).max())  # as calibration sees it (onnxruntime's Gemm)
    octaves = 2 * math.ceil(math.log2(absmax_h / 127) / 2)
    c = 127 * 2.0**octaves / absmax_h
    assert 1 <= c < 4
    w1_eff = w1.astype(np.float64) * 2.0**-f_x * c
    f_w1 = _weight_exponent(w1_eff)
    shift = octaves + f_w1
    assert shift > 0 and shift % 2 == 0
    # The bias also carries half a step of the shift: the floor then rounds to nearest.
    acc1 = big_x @ np.clip(np.round(w1_eff * 2.0**f_w1), -128, 127).T + np.round(b1 * c * 2.0**f_w1) + 2**(shift - 1)
    big_r = np.clip(np.floor(np.maximum(acc1, 0) / 2.0**shift), -128, 127)
    w2_eff = w2.astype(np.float64) * 2.0**octaves / c  # fc2 takes fc1's activation scale, 2^octaves / c
    f_w2 = _weight_exponent(w2_eff)
    acc2 = big_r @ np.clip(np.round(w2_eff * 2.0**f_w2), -128, 127).T + np.round(b2 * 2.0**f_w2)

    (got,) = _run(quantized, {"x": x})
    assert got.dtype == np.int32
    assert np.array_equal(got, acc2.astype(np.int32))
    assert output_scales(quantized)["y"] == 2.0**-f_w2
    assert report.sqnr_db["y"] > 18  # int8 with power-of-4 ranges: coarse, but far from noise
    roles = {layer["name"]: layer["role"] for layer in report.layers}
    assert roles["fc1"] == roles["fc2"] == "ann"


def test_weight_exponent_clamps_no_uniform_kernel_where_hnns_rule_clamps_a_fifth() -> None:
    """A uniform kernel (as torch initialises layers) whose absmax puts HNN's ``t`` at a 0.85
    fraction: HNN rounds the exponent up and clamps about a fifth of the weights at ±127; hnnx
    takes the exponent with the smaller weight error, here the one that clamps none."""
    x = np.linspace(-1.0, 1.0, 4 * 16, dtype=np.float32).reshape(16, 4)  # absmax 1: x on the grid 2^-6
    absmax_eff = 128 / 2 ** (2 * 4 + 2 * 0.85)  # w_eff = w·2^-6: t = log2(128/absmax_eff)/2 = 4.85
    w = RNG.uniform(-1, 1, (3, 4)) * absmax_eff * 64
    w[0, 0] = absmax_eff * 64
    model = _model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], {"w": w.astype(np.float32)})
    _, report = quantize(model, {"x": x})
    fc = next(layer["details"] for layer in report.layers if layer["name"] == "fc")
    w_eff = w.T / 64
    hnn = 2 * math.ceil(math.log2(128 / absmax_eff) / 2)  # frac 0.85 ≥ 0.75: rounded up
    assert int(np.sum(np.abs(np.round(w_eff * 2.0**hnn)) > 127)) >= 1  # HNN's exponent clamps
    assert fc["weight_exponent"] == _weight_exponent(w_eff) == hnn - 2 and fc["saturated_weights"] == 0


def test_snn_layer_reproduces_the_hnn_integer_constants() -> None:
    # Inputs in {0, 1} calibrate to exponent 6 (scale 1/64); a weight absmax of 64·128/513.27
    # then gives the spec's weight scale 513.27 (hnn_spec.md §2.5).
    w = RNG.uniform(-1, 1, (8, 3))
    w = (w / np.abs(w).max() * 64 * 128 / 513.27).astype(np.float32)
    lif = ops.make_node("LIF", ["current"], ["spikes"], name="lif", threshold=1.0, v_reset=0.1, beta=0.05,
                        alpha=0.9)
    model = _model([ops.make_node("A2S", ["x"], ["coded"], name="code", steps=4),
                    helper.make_node("MatMul", ["coded", "w"], ["current"], name="synapse"), lif,
                    ops.make_node("S2A", ["spikes"], ["rate"], name="rate", decoding="global")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                   [helper.make_tensor_value_info("rate", TensorProto.FLOAT, ["N", 3])], {"w": w})
    x = (RNG.random((32, 8)) < 0.5).astype(np.float32)
    quantized, report = quantize(model, {"x": x})
    (node,) = [n for n in ops.hnnx_nodes(quantized.graph) if n.op_type == "LIF"]
    attrs = ops.LIF.view(node).attrs
    assert (attrs["mode"], attrs["threshold"], attrs["v_reset"], attrs["beta"]) == ("integer", 513, 51, 26)
    assert attrs["alpha"] * 256 == 230
    # The integer neuron on the integer current, by hand: v1 = v + U; fire on v1 > 513; reset to 51;
    # v ← floor(230·v / 256) + 26.
    weight_q = np.clip(np.round(w.astype(np.float64) / 64 * 513.27), -128, 127)
    assert np.array_equal(numpy_helper.to_array(next(i for i in quantized.graph.initializer
                                                     if i.name.endswith(".weight_q"))), weight_q.astype(np.int8))
    current = (x * 64) @ weight_q  # int8 input 64 for a 1.0 pixel, the same every step
    v = np.zeros_like(current)
    counts = np.zeros_like(current)
    for _ in range(4):
        v1 = np.clip(v + current, -(2**27), 2**27 - 1)
        fired = v1 > 513
        counts += fired
        v = np.floor(230 * np.where(fired, 51, v1) / 256) + 26
    (got,) = _run(quantized, {"x": x})
    assert np.array_equal(got, counts.astype(np.int32))
    assert output_scales(quantized)["rate"] == 0.25


def test_excluded_node_stays_float_and_is_reported() -> None:
    model = hnnx.load(models.path("snn_mlp"))
    data = load_digits()
    quantized, report = quantize(model, {"pixels": data.x_train[:64]}, exclude=["out_lif"])
    assert report.excluded["out_lif"] == "excluded by the user"
    float_lifs = [n for n in ops.hnnx_nodes(quantized.graph) if n.op_type == "LIF"
                  and ops.LIF.view(n).attrs["mode"] == "float"]
    assert [n.name for n in float_lifs] == ["out_lif"]
    result = hnnx.simulate(quantized, {"pixels": data.x_test}, labels=data.y_test)
    assert result.accuracy > 0.9


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "loihi"}, "unknown target"),
    ({"format": "fp8"}, "not available"),
    ({"target": "qdq", "format": "int"}, "not available"),
    ({"bit_shift_unit": 3}, "bit_shift_unit"),
    ({"exclude": ["no_such_node"]}, "matches no node"),
])
def test_bad_options_are_reported(kwargs: dict, message: str) -> None:
    with pytest.raises(hnnx.HnnxError, match=message):
        quantize(models.path("snn_mlp"), {"pixels": load_digits().x_train[:8]}, **kwargs)


def test_cli_quantize_writes_model_and_report(tmp_path: Path) -> None:
    data = load_digits()
    calib = tmp_path / "calib.npz"
    np.savez(calib, pixels=data.x_train[:100])
    out, report = tmp_path / "q.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["quantize", str(models.path("snn_mlp")), "-o", str(out), "--calib", str(calib),
                                       "--report", str(report), "--observer", "percentile", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "| hidden_lif | LIF | neuron |" in result.stdout
    content = json.loads(report.read_text())
    assert content["target"] == "tianjicx" and content["observer"] == "percentile"
    assert content["size_bytes"]["quantized"] < content["size_bytes"]["float"]
    assert (tmp_path / "report.md").is_file()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_cli_rejects_bad_calibration_before_writing(tmp_path: Path) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, pixels=np.full((4, 64), np.nan, np.float32))
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(main, ["quantize", str(models.path("snn_mlp")), "-o", str(out), "--calib", str(calib)])
    assert result.exit_code == 2
    assert result.stderr.startswith("hnnx: error:") and "NaN" in result.stderr
    assert not out.exists()


def _run_exact(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    # onnxruntime's extended optimisations turn DequantizeLinear(int8 weight) + MatMul into
    # MatMulNBits, an approximation; basic optimisations keep the graph's arithmetic.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("name", models.available())
def test_fakequant_graph_equals_integer_graph_up_to_the_output_scale(name: str, digits, quantized_models) -> None:
    calibration = {"pixels": digits.x_train[:256].reshape(-1, *models.input_layout(name))}
    fake, report = quantize(models.path(name), calibration, format="fakequant")
    integer, _ = quantized_models[name]
    assert report.excluded == {}
    weights = [n for n in fake.graph.node if n.op_type == "QuantizeLinear" and n.input[0].endswith(".weight")]
    assert weights, "weights are fake-quantized by QuantizeLinear/DequantizeLinear pairs"
    pixels = digits.x_test.reshape(-1, *models.input_layout(name))
    (as_int,) = _run(integer, {"pixels": pixels})
    (as_fake,) = _run_exact(fake, {"pixels": pixels})
    assert as_fake.dtype == np.float32
    # Element-wise: fake = int × (power of two), i.e. both scale to the same real values.
    ratio = output_scales(integer)["scores"] / output_scales(fake)["scores"]
    assert ratio == 2.0 ** round(math.log2(ratio))
    assert np.array_equal(as_int.astype(np.float64) * ratio, as_fake.astype(np.float64))
    (reference,) = ReferenceEvaluator(fake, new_ops=ops.reference_ops()).run(None, {"pixels": pixels[:8]})
    assert np.array_equal(reference, as_fake[:8])


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_qdq_target_quantizes_ann_layers_and_leaves_spiking_parts_float(per_channel: bool, digits) -> None:
    name = "hybrid_a2s"
    calibration = {"pixels": digits.x_train[:256].reshape(-1, 1, 8, 8)}
    model, report = quantize(models.path(name), calibration, target="qdq", per_channel=per_channel, spiking="float",
                             reduce_range=False)
    assert report.weight_bits == 8
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(".weight.q")]
    assert len(weight_dq) == 2  # the two ANN convolutions
    per_channel_axes = [next((a.i for a in n.attribute if a.name == "axis"), None) for n in weight_dq]
    assert all((axis == 0) if per_channel else (axis is None) for axis in per_channel_axes)
    for node in weight_dq:
        values = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == node.input[0]))
        assert values.dtype == np.int8 and np.abs(values).max() == 127  # symmetric: the absmax maps to 127
    lifs = [n for n in ops.hnnx_nodes(model.graph) if n.op_type == "LIF"]
    assert all(ops.LIF.view(n).attrs["mode"] == "float" for n in lifs)
    assert "hidden_lif" in report.excluded
    pixels = digits.x_test.reshape(-1, 1, 8, 8)
    float_accuracy = hnnx.simulate(models.path(name), {"pixels": pixels}, labels=digits.y_test).accuracy
    accuracy = hnnx.simulate(model, {"pixels": pixels}, labels=digits.y_test).accuracy
    assert accuracy >= float_accuracy - 0.005


def test_qdq_target_runs_the_spiking_parts_as_tianjicx_by_default(digits) -> None:
    calibration = {"pixels": digits.x_train[:256].reshape(-1, 1, 8, 8)}
    model, report = quantize(models.path("hybrid_a2s"), calibration, target="qdq")
    assert report.excluded == {}
    assert [n.op_type for n in model.graph.node if n.op_type in ("ConvInteger", "Conv")] == ["Conv", "Conv"]
    spiking = [n for n in ops.hnnx_nodes(model.graph) if n.op_type in ("LIF", "A2S", "S2A")]
    assert spiking and all(ops.declaration(n.op_type).view(n).attrs["mode"] == "integer" for n in spiking)
    pixels = digits.x_test.reshape(-1, 1, 8, 8)
    float_accuracy = hnnx.simulate(models.path("hybrid_a2s"), {"pixels": pixels}, labels=digits.y_test).accuracy
    assert hnnx.simulate(model, {"pixels": pixels}, labels=digits.y_test).accuracy >= float_accuracy - 0.01


def test_qdq_matches_a_hand_quantized_conv() -> None:
    w = RNG.normal(0, 0.5, (3, 2, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])], {"w": w})
    x = RNG.normal(0, 1, (5, 2, 4, 4)).astype(np.float32)
    quantized, _ = quantize(model, {"x": x}, target="qdq", reduce_range=False)
    # Activations: asymmetric uint8 over the calibrated range (holding 0); weights: symmetric int8.
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    x_scale = np.float32((hi - lo) / 255)
    zero = np.clip(round(-lo / x_scale), 0, 255)
    w_scale = (np.abs(w).reshape(3, -1).max(axis=1) / 127).astype(np.float32)
    x_q = (np.clip(np.round(x / x_scale) + zero, 0, 255) - zero) * x_scale
    w_q = np.clip(np.round(w / w_scale[:, None, None, None]), -128, 127) * w_scale[:, None, None, None]
    expected = _run(_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
                           {"w": w_q.astype(np.float32)}), {"x": x_q.astype(np.float32)})[0]
    (got,) = _run_exact(quantized, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_per_channel_is_refused_for_tianjicx() -> None:
    with pytest.raises(hnnx.HnnxError, match="per-channel"):
        quantize(models.path("snn_mlp"), {"pixels": load_digits().x_train[:8]}, per_channel=True)


@pytest.mark.parametrize("fmt", ["int", "fakequant"])
def test_quantizing_is_idempotent(fmt: str, digits) -> None:
    calibration = {"pixels": digits.x_train[:64]}
    once, _ = quantize(models.path("snn_mlp"), calibration, format=fmt)
    twice, report = quantize(once, calibration, format=fmt)
    assert twice.SerializeToString() == once.SerializeToString()
    assert report.layers == [] and report.output_scales == output_scales(once)
    if fmt == "int":  # an integer graph cannot become its fake-quant form again
        with pytest.raises(hnnx.HnnxError, match="already quantized"):
            quantize(once, calibration, format="fakequant")


@pytest.mark.parametrize("name", models.available())
def test_fakequant_form_requantizes_to_the_integer_graph(name: str, digits, quantized_models) -> None:
    calibration = {"pixels": digits.x_train[:256].reshape(-1, *models.input_layout(name))}
    fake, _ = quantize(models.path(name), calibration, format="fakequant")
    requantized, _ = quantize(fake, calibration, format="int")
    integer, _ = quantized_models[name]
    pixels = digits.x_test.reshape(-1, *models.input_layout(name))
    (direct,) = _run(integer, {"pixels": pixels})
    (again,) = _run(requantized, {"pixels": pixels})
    assert np.array_equal(direct, again)
    assert output_scales(requantized) == output_scales(integer)


def test_requantization_takes_the_fine_tuned_weight_sources(digits) -> None:
    """A QAT round trip: change the float weight sources of the fake-quant graph (as fine-tuning
    does); the re-quantized integer graph follows them exactly."""
    calibration = {"pixels": digits.x_train[:256].reshape(-1, 1, 8, 8)}
    fake, _ = quantize(models.path("hybrid_s2a"), calibration, format="fakequant")
    sources = {n.input[0] for n in fake.graph.node if n.op_type == "QuantizeLinear" and n.input[0].endswith(".weight")}
    rng = np.random.default_rng(0)
    for init in fake.graph.initializer:
        if init.name in sources:
            values = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((values * rng.uniform(0.8, 1.2, values.shape)).astype(np.float32),
                                                  init.name))
    requantized, _ = quantize(fake, calibration, format="int")
    pixels = digits.x_test.reshape(-1, 1, 8, 8)
    (as_fake,) = _run_exact(fake, {"pixels": pixels})
    (as_int,) = _run(requantized, {"pixels": pixels})
    ratio = output_scales(requantized)["scores"] / output_scales(fake)["scores"]
    assert np.array_equal(as_int.astype(np.float64) * ratio, as_fake.astype(np.float64))


def test_comparison_runs_on_the_samples_its_value_budget_allows(digits, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report compares on all calibration samples of a small model (up to 128), and on the floor of
    samples when a sample's tensors exceed the value budget; the report says on how many."""
    from hnnx.quantization import api
    from hnnx.quantization import compare as compare_module

    calibration = {"pixels": digits.x_train[:40].reshape(-1, 1, 8, 8)}
    _, report = quantize(models.path("ann_cnn"), calibration)
    assert report.compared_samples == 40 and "on 40 of the calibration samples" in report.markdown()
    monkeypatch.setattr(compare_module, "COMPARISON_VALUES", 1000)  # fewer values than one sample's tensors hold
    _, small = quantize(models.path("ann_cnn"), calibration)
    assert small.compared_samples == api.MIN_COMPARISON_SAMPLES
    assert math.isfinite(small.sqnr_db["scores"]) and small.tensor_errors


def test_qdq_reduce_range_keeps_weights_in_seven_bits(digits) -> None:
    calibration = {"pixels": digits.x_train[:256].reshape(-1, 1, 8, 8)}
    model, report = quantize(models.path("ann_cnn"), calibration, target="qdq", reduce_range=True)
    assert report.weight_bits == 7 and "weights: 7-bit" in report.markdown()
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith(".weight.q")]
    assert weights and all(np.abs(w).max() == 63 for w in weights)  # each channel's absmax maps to 63
    pixels = digits.x_test.reshape(-1, 1, 8, 8)
    float_accuracy = hnnx.simulate(models.path("ann_cnn"), {"pixels": pixels}, labels=digits.y_test).accuracy
    assert hnnx.simulate(model, {"pixels": pixels}, labels=digits.y_test).accuracy >= float_accuracy - 0.005
    with pytest.raises(hnnx.HnnxError, match="reduce_range .* option of --target qdq"):
        quantize(models.path("ann_cnn"), calibration, reduce_range=True)


@pytest.mark.parametrize(("machine", "flags", "reduced"), [
    ("x86_64", "fpu sse2 avx avx2 fma", True),  # vpmaddubsw sums pairs in int16: 7-bit weights
    ("x86_64", "fpu sse2 avx2 avx512f avx512_vnni", False),
    ("x86_64", "fpu sse2 avx2 avx_vnni", False),
    ("aarch64", "fp asimd", False),
])
def test_default_reduce_range_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, machine: str, flags: str,
                                              reduced: bool) -> None:
    import platform

    from hnnx.quantization.qdq import default_reduce_range

    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert default_reduce_range(f"processor\t: 0\nflags\t\t: {flags}\n") is reduced
    assert default_reduce_range("processor\t: 0\n") is False  # no flags line: full range
