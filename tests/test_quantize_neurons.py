"""tianjicx integer forms of the current-based, recurrent and integrating neurons."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from hnnx import ops
from hnnx.quantization import output_scales, quantize

RNG = np.random.default_rng(31)
STEPS = 6


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()  # basic optimisations keep a fake-quant graph exact
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]


def network() -> onnx.ModelProto:
    """x [N, 8] → direct coding (6 steps) → Linear → CubaLIF → Linear → recurrent LIF → Linear → LI → mean."""
    weights = {"w1": RNG.normal(0, 0.6, (8, 12)), "b1": RNG.normal(0.1, 0.1, 12), "w2": RNG.normal(0, 0.5, (12, 12)),
               "w_rec": RNG.normal(0, 0.3, (12, 12)), "w3": RNG.normal(0, 0.5, (12, 4))}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    nodes = [ops.make_node("A2S", ["x"], ["coded"], name="coder", steps=STEPS),
             helper.make_node("MatMul", ["coded", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["u1"], name="fc1_bias"),
             ops.make_node("CubaLIF", ["u1"], ["s1"], name="cuba", threshold=0.5, alpha=0.75, alpha_syn=0.5),
             helper.make_node("MatMul", ["s1", "w2"], ["u2"], name="fc2"),
             ops.make_node("LIF", ["u2", "", "", "", "", "w_rec"], ["s2"], name="recurrent", threshold=0.6,
                           alpha=0.875),
             helper.make_node("MatMul", ["s2", "w3"], ["u3"], name="fc3"),
             ops.make_node("LI", ["u3"], ["membrane"], name="readout", alpha=0.5),
             ops.make_node("S2A", ["membrane"], ["y"], name="mean", decoding="global")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return RNG.uniform(0, 1, (64, 8)).astype(np.float32)


def test_every_neuron_runs_in_integer_mode(data: np.ndarray) -> None:
    model = network()
    quantized, report = quantize(model, {"x": data})
    assert report.excluded == {}, report.excluded
    neurons = [n for n in ops.hnnx_nodes(quantized.graph) if ops.declaration(n.op_type).neuron]
    assert sorted(n.op_type for n in neurons) == ["CubaLIF", "LI", "LIF"]
    assert all(ops.declaration(n.op_type).view(n).attrs["mode"] == "integer" for n in neurons)
    recurrent = next(n for n in neurons if n.op_type == "LIF")
    weight = next(numpy_helper.to_array(i) for i in quantized.graph.initializer if i.name == recurrent.input[5])
    sigma = next(r for r in report.layers if r["name"] == "recurrent")["details"]["weight_scale"]
    w_rec = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w_rec"))
    assert weight.dtype == np.int32 and np.array_equal(weight, np.round(w_rec.astype(np.float64) * sigma))
    x = data[:16]
    got = _run(quantized, {"x": x})
    expected = ReferenceEvaluator(quantized, new_ops=ops.reference_ops()).run(None, {"x": x})[0]
    assert got.dtype == np.int32 and np.array_equal(got, expected)
    real = got * output_scales(quantized)["y"]
    reference = _run(model, {"x": x})
    sqnr = 10 * math.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((real - reference) ** 2))
    assert sqnr > 10, sqnr


def test_fake_quant_form_equals_and_requantizes_to_the_integer_graph(data: np.ndarray) -> None:
    model = network()
    integer, _ = quantize(model, {"x": data})
    fake, _ = quantize(model, {"x": data}, format="fakequant")
    x = data[:16]
    ratio = output_scales(integer)["y"] / output_scales(fake)["y"]
    np.testing.assert_array_equal(_run(fake, {"x": x}).astype(np.float64), _run(integer, {"x": x}) * ratio)
    again, _ = quantize(fake, {"x": data}, format="int")
    np.testing.assert_array_equal(_run(again, {"x": x}), _run(integer, {"x": x}))


def test_initial_state_inputs_stay_float_with_the_reason(data: np.ndarray) -> None:
    model = network()
    lif = next(n for n in model.graph.node if n.name == "recurrent")
    lif.input[1] = "v_start"
    model.graph.initializer.append(numpy_helper.from_array(np.full(12, 0.1, np.float32), "v_start"))
    _, report = quantize(model, {"x": data})
    assert report.excluded["recurrent"] == "initial-state inputs (v0) are not quantized"


def test_simulation_reports_the_firing_rate_of_every_spiking_neuron(data: np.ndarray) -> None:
    import hnnx

    result = hnnx.simulate(network(), {"x": data[:8]}, probes=["s1", "s2"])
    assert set(result.firing_rates) == {"cuba", "recurrent"}  # the LI readout fires no spikes
    for name, tensor in (("cuba", "s1"), ("recurrent", "s2")):
        assert result.firing_rates[name] == pytest.approx(float(result.probes[tensor].mean()))
