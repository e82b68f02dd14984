"""tianjicx integer forms of residual, concat, pooling, clip and per-channel affine ops.

Each form is checked four ways: no float island is left, the integer graph gives the same
integers in onnxruntime and in onnx's ReferenceEvaluator, the fake-quant graph equals the
integer graph element-wise up to its output scale, and (where the arithmetic is simple) the
integers equal a hand-written numpy computation of the scheme.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from hnnx import ops
from hnnx.quantization import quantize
from hnnx.quantization.api import output_scales

RNG = np.random.default_rng(21)
C = 4


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    # Basic optimisations keep a fake-quant graph's arithmetic exact (see README, Quantization).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _model(nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray], out_shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def _conv(name: str, x: str, y: str, c_in: int = 2, c_out: int = C) -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    weights = {f"{name}.w": RNG.normal(0, 0.5, (c_out, c_in, 3, 3)).astype(np.float32),
               f"{name}.b": RNG.normal(0, 0.1, c_out).astype(np.float32)}
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], pads=[1, 1, 1, 1], name=name), weights


def _head(x: str, flat_size: int) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Flatten → Gemm(3): the last layer keeps int32 logits."""
    w = RNG.normal(0, 0.3, (3, flat_size)).astype(np.float32)
    return ([helper.make_node("Flatten", [x], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "head.w", "head.b"], ["y"], transB=1, name="head")],
            {"head.w": w, "head.b": RNG.normal(0, 0.1, 3).astype(np.float32)})


def residual() -> onnx.ModelProto:
    """conv1 → relu → conv2 (+ conv1's output, residual Add) → relu → head."""
    c1, w1 = _conv("conv1", "x", "c1")
    c2, w2 = _conv("conv2", "r1", "c2", C, C)
    head, wh = _head("r2", C * 36)
    return _model([c1, helper.make_node("Relu", ["c1"], ["r1"]), c2,
                   helper.make_node("Add", ["c2", "r1"], ["sum"], name="residual"),
                   helper.make_node("Relu", ["sum"], ["r2"]), *head], {**w1, **w2, **wh}, ["N", 3])


def inception() -> onnx.ModelProto:
    """Three branches joined by Concat: a 3×3 conv, a 3×3 average pool (its 1/9 carried into the
    1×1 projection after it), and the stem itself (another scale)."""
    c1, w1 = _conv("stem", "x", "s")
    c2, w2 = _conv("branch", "r", "b1", C, C)
    projection = {"proj.w": RNG.normal(0, 0.5, (C, C, 1, 1)).astype(np.float32)}
    head, wh = _head("joined", 3 * C * 36)
    return _model([c1, helper.make_node("Relu", ["s"], ["r"]), c2,
                   helper.make_node("AveragePool", ["r"], ["pooled"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                    count_include_pad=1, name="pool"),
                   helper.make_node("Conv", ["pooled", "proj.w"], ["b2"], name="proj"),
                   helper.make_node("Concat", ["b1", "b2", "r"], ["joined"], axis=1, name="concat"), *head],
                  {**w1, **w2, **wh, **projection}, ["N", 3])


def global_pool_clip() -> onnx.ModelProto:
    """conv → ReLU6 (Clip 0..6) → global average pool (36 values: a non-power-of-two 1/k) → head."""
    c1, w1 = _conv("conv", "x", "c")
    head, wh = _head("pooled", C)
    return _model([c1, helper.make_node("Clip", ["c", "zero", "six"], ["r6"], name="relu6"),
                   helper.make_node("GlobalAveragePool", ["r6"], ["pooled"], name="gap"), *head],
                  {**w1, **wh, "zero": np.float32(0.0), "six": np.float32(6.0)}, ["N", 3])


def preactivation() -> onnx.ModelProto:
    """conv → per-channel affine (an unfolded BatchNorm: Mul then Add) → ReLU → conv → head."""
    c1, w1 = _conv("conv1", "x", "c1")
    c2, w2 = _conv("conv2", "r", "c2", C, C)
    head, wh = _head("c2", C * 36)
    affine = {"bn.scale": RNG.uniform(0.5, 1.5, (C, 1, 1)).astype(np.float32),
              "bn.shift": RNG.normal(0, 0.2, (C, 1, 1)).astype(np.float32)}
    return _model([c1, helper.make_node("Mul", ["c1", "bn.scale"], ["scaled"], name="bn.mul"),
                   helper.make_node("Add", ["scaled", "bn.shift"], ["shifted"], name="bn.add"),
                   helper.make_node("Relu", ["shifted"], ["r"]), c2, *head], {**w1, **w2, **wh, **affine}, ["N", 3])


def dense_block() -> onnx.ModelProto:
    """A DenseNet block: every layer's output joins every later Concat (the stem's in both), each
    input on its own scale."""
    c1, w1 = _conv("stem", "x", "s")
    c2, w2 = _conv("layer1", "r", "l1", C, C)
    c3, w3 = _conv("layer2", "cat1", "l2", 2 * C, C)
    w2["layer1.w"] *= 8  # another scale than the stem's: the Concats align their inputs
    head, wh = _head("cat2", 3 * C * 36)
    return _model([c1, helper.make_node("Relu", ["s"], ["r"]), c2,
                   helper.make_node("Concat", ["r", "l1"], ["cat1"], axis=1, name="concat1"), c3,
                   helper.make_node("Concat", ["r", "l1", "l2"], ["cat2"], axis=1, name="concat2"), *head],
                  {**w1, **w2, **w3, **wh}, ["N", 3])


def _affine(name: str, x: str, y: str, channels: int) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """An unfolded BatchNorm (Mul, Add) then ReLU."""
    weights = {f"{name}.scale": RNG.uniform(0.5, 3.0, (channels, 1, 1)).astype(np.float32),
               f"{name}.shift": RNG.normal(0, 0.2, (channels, 1, 1)).astype(np.float32)}
    return ([helper.make_node("Mul", [x, f"{name}.scale"], [f"{name}.scaled"], name=f"{name}.mul"),
             helper.make_node("Add", [f"{name}.scaled", f"{name}.shift"], [f"{name}.shifted"], name=f"{name}.add"),
             helper.make_node("Relu", [f"{name}.shifted"], [y])], weights)


def preactivation_dense_block() -> onnx.ModelProto:
    """DenseNet's pre-activation block: each layer reads the Concat of all earlier outputs through a
    BatchNorm and ReLU, its conv has no bias; the block ends in BatchNorm, ReLU, global pooling and
    the head. Every Concat is read by per-channel affines only: its inputs keep their own scales."""
    c1, w1 = _conv("stem", "x", "s")
    bn1, a1 = _affine("bn1", "r", "a1", C)
    c2, w2 = _conv("layer1", "a1", "l1", C, C)
    bn2, a2 = _affine("bn2", "cat1", "a2", 2 * C)
    c3, w3 = _conv("layer2", "a2", "l2", 2 * C, C)
    bn3, a3 = _affine("bn3", "cat2", "a3", 3 * C)
    for conv, weights, gain in ((c2, w2, 3.0), (c3, w3, 0.4)):  # ranges apart from the stem's
        del conv.input[2]
        weights.pop(f"{conv.name}.b")
        weights[f"{conv.name}.w"] *= gain
    head, wh = _head("pooled", 3 * C)
    return _model([c1, helper.make_node("Relu", ["s"], ["r"]), *bn1, c2,
                   helper.make_node("Concat", ["r", "l1"], ["cat1"], axis=1, name="concat1"), *bn2, c3,
                   helper.make_node("Concat", ["r", "l1", "l2"], ["cat2"], axis=1, name="concat2"), *bn3,
                   helper.make_node("GlobalAveragePool", ["a3"], ["pooled"], name="gap"), *head],
                  {**w1, **w2, **w3, **wh, **a1, **a2, **a3}, ["N", 3])


MODELS = {"residual": residual, "inception": inception, "global_pool_clip": global_pool_clip,
          "preactivation": preactivation, "dense_block": dense_block,
          "preactivation_dense_block": preactivation_dense_block}


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return RNG.uniform(0, 1, (48, 2, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_integer_form_is_exact_and_close_to_float(name: str, data: np.ndarray) -> None:
    model = MODELS[name]()
    quantized, report = quantize(model, {"x": data})
    assert report.excluded == {}, report.excluded
    onnx.checker.check_model(quantized, full_check=True)  # sorted, one producer per tensor name
    assert not [n.op_type for n in quantized.graph.node if n.op_type in ("Cast",) and
                any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)], "a float island is left"
    x = data[:16]
    got = _run(quantized, {"x": x})
    expected = ReferenceEvaluator(quantized, new_ops=ops.reference_ops()).run(None, {"x": x})[0]
    assert got.dtype == np.int32 and np.array_equal(got, expected)
    fake, _ = quantize(model, {"x": data}, format="fakequant")
    ratio = output_scales(quantized)["y"] / output_scales(fake)["y"]  # fake = int × a power of two
    assert ratio == 2.0 ** round(math.log2(ratio))
    np.testing.assert_array_equal(_run(fake, {"x": x}).astype(np.float64), got.astype(np.float64) * ratio)
    real = got * output_scales(quantized)["y"]
    reference = _run(model, {"x": x})
    sqnr = 10 * np.log10(np.sum(reference**2) / np.sum((real - reference) ** 2))
    assert sqnr > 15, sqnr


def test_residual_add_aligns_operands_by_shifts(data: np.ndarray) -> None:
    """The Add's integer operands, on the finest scale, sum to the integer the graph holds."""
    quantized, report = quantize(residual(), {"x": data})
    record = next(r for r in report.layers if r["name"] == "residual")
    assert record["role"] == "add" and len(record["details"]["shifts"]) == 2 and 0 in record["details"]["shifts"]
    names = {n.output[0] for n in quantized.graph.node}
    add = next(n for n in quantized.graph.node if n.op_type == "Add" and n.output[0].startswith("sum."))
    probe = onnx.ModelProto()
    probe.CopyFrom(quantized)
    for tensor in [*add.input, add.output[0]]:
        if tensor in names:
            probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.INT32, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in probe.graph.output], session.run(None, {"x": data[:8]})))
    assert np.array_equal(values[add.input[0]] + values[add.input[1]], values[add.output[0]])


def test_global_pool_carries_one_over_k_into_the_next_layer(data: np.ndarray) -> None:
    """A 36-value window: the pooled int8 scale is not a power of two; the head's weights absorb it
    and the logits' scale is a power of two again."""
    quantized, report = quantize(global_pool_clip(), {"x": data})
    scale = output_scales(quantized)["y"]
    assert math.log2(scale).is_integer()
    requantize = next(r for r in report.layers if r["role"] == "requantize" and r["name"] == "flat")
    assert not float(requantize["details"]["exponent"]).is_integer()  # 1/36 stays in the scale
    pool = next(r for r in report.layers if r["name"] == "gap")
    assert pool["details"]["window"] == 36
    clip = next(n for n in quantized.graph.node if n.op_type == "Clip")
    bounds = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer if i.name in clip.input[1:]}
    assert {b.dtype for b in bounds.values()} == {np.dtype(np.int8)}  # ReLU6 on the requantized int8
    assert bounds[clip.input[1]] == 0 and 0 < bounds[clip.input[2]] <= 127  # 127: 6 is at or above the range


def test_clip_bounds_map_inward_onto_the_grid() -> None:
    """Clip(x, 0.3, 0.8) on an int8 input of scale 1/64: integer bounds ceil(19.2) = 20, floor(51.2) = 51."""
    model = ops.attach_functions(helper.make_model(helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(np.float32(0.3), "lo"), numpy_helper.from_array(np.float32(0.8), "hi")]),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    x = np.array([[-1.0, 0.5, 1.9]], np.float32)  # absmax 1.9 → input exponent floor(log2(127/1.9)) = 6
    quantized, report = quantize(model, {"x": x})
    assert report.excluded == {}
    got = _run(quantized, {"x": np.array([[0.0, 0.5, 1.0]], np.float32)})
    assert got.tolist() == [[20, 32, 51]]
    assert output_scales(quantized)["y"] == 2.0**-6


def test_report_gives_every_quantized_tensor_its_error_worst_first(data: np.ndarray) -> None:
    from hnnx.quantization.api import COMPARISON_SAMPLES

    model = residual()
    quantized, report = quantize(model, {"x": data})
    errors = report.tensor_errors
    assert [e["sqnr_db"] for e in errors] == sorted(e["sqnr_db"] for e in errors)
    assert {"c1", "r1", "sum", "r2", "y"} <= {e["tensor"] for e in errors}
    # Recompute one entry independently: probe both models on the comparison samples.
    entry = next(e for e in errors if e["tensor"] == "sum")
    samples = data[:COMPARISON_SAMPLES]

    def probe(m: onnx.ModelProto, name: str, elem: int) -> np.ndarray:
        copy = onnx.ModelProto()
        copy.CopyFrom(m)
        copy.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run([name], {"x": samples})[0]

    float_sum = probe(model, "sum", TensorProto.FLOAT).astype(np.float64)
    assert entry["quantized_tensor"] == "sum.i8"  # where the int32 sum became int8 (its rounding addend added)
    int_sum = probe(quantized, entry["quantized_tensor"], TensorProto.INT8).astype(np.float64)
    expected = 10 * np.log10(np.sum(float_sum**2) / np.sum((int_sum * entry["unit"] - float_sum) ** 2))
    assert abs(entry["sqnr_db"] - expected) < 1e-3  # float32 sums: far below the hundredths the report shows
    assert entry["elements"] == float_sum.size
    assert "| quantized tensor (worst first) |" in report.markdown()
    assert all(e["saturated"] <= e["elements"] for e in errors)


@pytest.mark.parametrize("name", MODELS)
def test_fake_quant_form_requantizes_to_the_same_integers(name: str, data: np.ndarray) -> None:
    """The QAT round trip reads the new forms back: fake-quant → int equals the direct int graph."""
    model = MODELS[name]()
    direct, _ = quantize(model, {"x": data})
    fake, _ = quantize(model, {"x": data}, format="fakequant")
    again, _ = quantize(fake, {"x": data}, format="int")
    x = data[:16]
    np.testing.assert_array_equal(_run(again, {"x": x}), _run(direct, {"x": x}))
    assert output_scales(again) == output_scales(direct)


def test_residual_digits_model_loses_at_most_half_a_point() -> None:
    import hnnx
    from hnnx import models
    from hnnx.datasets import load_digits

    digits = load_digits()
    pixels = digits.x_test.reshape(-1, 1, 8, 8)
    quantized, report = quantize(models.path("ann_residual"), {"pixels": digits.x_train[:256].reshape(-1, 1, 8, 8)})
    assert report.excluded == {}
    ops_used = {n.op_type for n in quantized.graph.node}
    assert {"ConvInteger", "Concat", "Requantize"} <= ops_used and "Conv" not in ops_used
    float_accuracy = hnnx.simulate(models.path("ann_residual"), {"pixels": pixels}, labels=digits.y_test).accuracy
    accuracy = hnnx.simulate(quantized, {"pixels": pixels}, labels=digits.y_test).accuracy
    assert accuracy >= float_accuracy - 0.005


def test_a_layer_only_layers_read_fits_its_int8_range_to_the_calibrated_one(data: np.ndarray) -> None:
    """conv1 → ReLU → MaxPool → conv2 → ReLU → head: conv1's activation is read by a layer only,
    so conv1 folds a factor c ∈ [1, 4) into its weights and bias, and its int8 activation spans the
    calibrated range (127·scale = absmax, up to the floor of the shift); so does conv2."""
    c1, w1 = _conv("conv1", "x", "c1")
    c2, w2 = _conv("conv2", "p1", "c2", C, C)
    head, wh = _head("r2", C * 9)
    model = _model([c1, helper.make_node("Relu", ["c1"], ["r1"]),
                    helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]), c2,
                    helper.make_node("Relu", ["c2"], ["r2"]), *head], {**w1, **w2, **wh}, ["N", 3])
    quantized, report = quantize(model, {"x": data})
    assert report.excluded == {}
    details = {r["name"]: r["details"] for r in report.layers}
    assert all(r["details"]["shift"] % 2 == 0 for r in report.layers if r["op"] == "Requantize")
    # c1: where conv1's accumulator becomes int8 (before the ReLU)
    absmax = float(np.abs(_tensor(model, {"x": data}, "c1", TensorProto.FLOAT)).max())
    octaves = 2 * math.ceil(math.log2(absmax / 127) / 2)
    assert details["conv1"]["range_fit"] == pytest.approx(127 * 2.0**octaves / absmax, rel=1e-6)
    assert 1 <= details["conv1"]["range_fit"] < 4 and "range_fit" in details["conv2"]
    assert "range_fit" not in details["head"]  # a graph output keeps a power-of-two scale
    top = int(np.abs(_tensor(quantized, {"x": data}, "c1.i8", TensorProto.INT8).astype(np.int32)).max())
    assert top >= 126  # the top of the int8 grid is used
    x = data[:16]
    got = _run(quantized, {"x": x})
    reference = ReferenceEvaluator(quantized, new_ops=ops.reference_ops())
    np.testing.assert_array_equal(got, reference.run(None, {"x": x})[0])
    fake, _ = quantize(model, {"x": data}, format="fakequant")
    ratio = output_scales(quantized)["y"] / output_scales(fake)["y"]
    assert ratio == 2.0 ** round(math.log2(ratio))
    np.testing.assert_array_equal(_run(fake, {"x": x}).astype(np.float64), got.astype(np.float64) * ratio)


def _tensor(model: onnx.ModelProto, feeds: dict[str, np.ndarray], name: str, elem: int) -> np.ndarray:
    """Tensor ``name`` (element type ``elem``) of ``model`` on ``feeds``, made an output."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], feeds)[0]


def test_layers_meeting_at_a_residual_add_share_the_least_wasteful_range_fit(data: np.ndarray) -> None:
    """conv1 (through its ReLU) and conv2 meet at the residual Add: one range fit c for both, so their
    scales stay a power of two apart, chosen to waste the least int8 range over c1, c2 and the sum."""
    model = residual()
    quantized, report = quantize(model, {"x": data})
    details = {r["name"]: r["details"] for r in report.layers}
    fit = details["conv1"]["range_fit"]
    assert details["conv2"]["range_fit"] == fit and 1 <= fit < 4
    assert all(isinstance(shift, int) for shift in details["residual"]["shifts"])
    ranges = [float(np.abs(_tensor(model, {"x": data}, name, TensorProto.FLOAT)).max()) for name in ("c1", "c2", "sum")]

    def waste(c: float) -> float:  # bits of the int8 range left unused, scales 4^k / c
        # (a tolerance for the report's six decimals of c: the fit may put a range on a power of 4)
        return sum(2 * math.ceil(math.log2(a * c / 127) / 2 - 1e-6) - math.log2(a * c / 127) for a in ranges)

    grid = np.exp2(np.linspace(0, 2, 4001, endpoint=False))
    assert waste(fit) <= min(waste(float(c)) for c in grid) + 1e-4


def test_an_unfolded_batchnorm_saturates_none_of_its_channel_factors(data: np.ndarray) -> None:
    """Equal per-channel factors (a BatchNorm at its initial statistics) whose int8 grid HNN's weight
    rule would round up: every channel would clamp at 127, a gain error on all of them alike. The
    affine takes the largest exponent that clamps none."""
    model = preactivation()
    scale = next(i for i in model.graph.initializer if i.name == "bn.scale")
    scale.CopyFrom(numpy_helper.from_array(np.full((C, 1, 1), 1.0, np.float32), "bn.scale"))
    quantized, report = quantize(model, {"x": data})
    affine = next(r["details"] for r in report.layers if r["name"] == "bn.mul")
    assert affine["saturated_weights"] == 0
    factors = numpy_helper.to_array(next(i for i in quantized.graph.initializer if i.name == "bn.mul.weight_q"))
    assert len(set(factors.ravel().tolist())) == 1 and 127 / 4 < int(factors.ravel()[0]) <= 127  # shifts 2 bits apart


def test_a_concat_read_by_layers_only_keeps_each_input_on_its_own_scale(data: np.ndarray) -> None:
    """DenseNet's Concats feed per-channel affines only: the int8 inputs are joined as they are (no
    int32 alignment, no requantization of the join), each conv fits its own range, and the readers
    fold one scale per input channel into their factors."""
    model = preactivation_dense_block()
    quantized, report = quantize(model, {"x": data})
    joins = {r["name"]: r["details"] for r in report.layers if r["op"] == "Concat"}
    assert joins["concat1"]["channel_scales"] and joins["concat2"]["channel_scales"]
    assert not any(r["role"] == "requantize" and r["name"].startswith("cat") for r in report.layers)
    concats = [n for n in quantized.graph.node if n.op_type == "Concat"]
    producers = {o: n for n in quantized.graph.node for o in n.output}
    assert all(producers[i].op_type in ("Requantize", "Relu", "Concat") for n in concats for i in n.input)
    details = {r["name"]: r["details"] for r in report.layers}
    fits = [details[name]["range_fit"] for name in ("stem", "layer1", "layer2")]
    assert all(1 <= c < 4 for c in fits) and len(set(fits)) == 3  # three ranges, three fits
    # Each join input spans its calibrated range: the top of its own int8 grid is used.
    for name in ("s", "l1", "l2"):
        top = int(np.abs(_tensor(quantized, {"x": data}, f"{name}.i8", TensorProto.INT8).astype(np.int32)).max())
        assert top >= 126, name
    # bn3 folds three scales, one per join input, into its per-channel factors.
    scale = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}["bn3.scale"].reshape(-1)
    factors = numpy_helper.to_array(next(i for i in quantized.graph.initializer if i.name == "bn3.mul.weight_q"))
    factors, scale = factors.reshape(3, C).astype(np.float64), scale.reshape(3, C).astype(np.float64)
    gains = np.sum(factors * scale, axis=1) / np.sum(scale * scale, axis=1)  # one per input: ∝ its scale
    assert np.all(np.abs(factors - scale * gains[:, None]) <= 0.75)  # each factor: round(a·gain)
    assert min(abs(a - b) / max(a, b) for a, b in ((gains[0], gains[1]), (gains[1], gains[2]), (gains[0], gains[2]))) > 0.1


def test_every_requantization_rounds_to_nearest() -> None:
    """A conv without bias and a window sum: each accumulator gets half a step before the shift
    (floor alone would lower every value by half a step on average, an offset no later average
    pooling removes). By hand: x on the grid 2^-f_x; conv weights ones (f = 0: w_eff = 2^-f_x);
    AveragePool 2×2 over the int8 conv output."""
    x = np.array([[[[0.3, 1.0], [2.0, -0.6]]]], np.float32)  # one channel, 2×2
    weights = {"w": np.full((1, 1, 1, 1), 0.5, np.float32), "head.w": np.ones((1, 1), np.float32)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], name="pool"),
         helper.make_node("Flatten", ["p"], ["flat"]),
         helper.make_node("Gemm", ["flat", "head.w"], ["y"], transB=1, name="head")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    quantized, report = quantize(model, {"x": x})
    assert report.excluded == {}
    shifts = [r["details"]["shift"] for r in report.layers if r["role"] == "requantize"]
    assert len(shifts) == 2 and all(s > 0 for s in shifts)
    conv_shift, pool_shift = shifts
    f_x = math.floor(math.log2(127 / 2.0))
    big_x = np.round(x.astype(np.float64) * 2.0**f_x)
    conv = next(r["details"] for r in report.layers if r["name"] == "conv")
    f_w, fit = conv["weight_exponent"], conv.get("range_fit", 1.0)  # only the head reads the conv: it fits
    acc = big_x * np.round(0.5 * 2.0**-f_x * fit * 2.0**f_w)
    c8 = np.clip(np.floor((acc + 2 ** (conv_shift - 1)) / 2**conv_shift), -128, 127)
    p8 = np.clip(np.floor((c8.sum() + 2 ** (pool_shift - 1)) / 2**pool_shift), -128, 127)
    f_head = next(r["details"]["weight_exponent"] for r in report.layers if r["name"] == "head")
    pooled_scale = 2.0 ** (conv_shift - f_w) / fit / 4 * 2.0**pool_shift  # the head absorbs it
    w_head = np.round(pooled_scale * 2.0**f_head)
    got = _run(quantized, {"x": x})
    assert got.tolist() == [[int(p8 * w_head)]]


@pytest.mark.parametrize("name", MODELS)
def test_qdq_target_quantizes_the_same_forms(name: str, data: np.ndarray) -> None:
    """The qdq target on the same graphs (their ReLUs unnamed: one absorbed into a layer's output
    quantization is skipped, not read after removal): onnxruntime runs the result close to float."""
    model = MODELS[name]()
    quantized, report = quantize(model, {"x": data}, target="qdq")
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    x = data[:16]
    reference = _run(model, {"x": x})
    got = _run(quantized, {"x": x})
    assert 10 * np.log10(np.sum(reference**2) / np.sum((got - reference) ** 2)) > 15
