"""The ``qdq`` target places QDQ pairs where onnxruntime fuses them into integer kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops
from hnnx.quantization import quantize

RNG = np.random.default_rng(8)


def residual_net() -> onnx.ModelProto:
    """conv0 → relu → [conv1 → relu → conv2] + skip → relu → global pool → flatten → fc."""
    def conv(name: str, c_in: int, c_out: int) -> dict[str, np.ndarray]:
        return {f"{name}.w": RNG.normal(0, 0.3, (c_out, c_in, 3, 3)).astype(np.float32),
                f"{name}.b": RNG.normal(0, 0.05, c_out).astype(np.float32)}

    weights = {**conv("conv0", 3, 16), **conv("conv1", 16, 16), **conv("conv2", 16, 16),
               "fc.w": RNG.normal(0, 0.3, (10, 16)).astype(np.float32), "fc.b": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "conv0.w", "conv0.b"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Add", ["c2", "r0"], ["sum"], name="residual"),
             helper.make_node("Relu", ["sum"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def optimized_op_types(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    """The op types onnxruntime runs after its full CPU optimisation."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_every_conv_fuses_into_an_integer_kernel(tmp_path: Path) -> None:
    data = RNG.uniform(0, 1, (16, 3, 16, 16)).astype(np.float32)
    model = residual_net()
    quantized, report = quantize(model, {"x": data}, target="qdq")
    assert report.excluded == {}
    assert "Relu" not in [n.op_type for n in quantized.graph.node]  # absorbed by the zero points
    kinds = optimized_op_types(quantized, tmp_path)
    assert kinds.count("QLinearConv") == 3, kinds
    assert "QLinearAdd" in kinds and "QLinearGlobalAveragePool" in kinds and "QGemm" in kinds, kinds
    assert "Conv" not in kinds and "FusedConv" not in kinds
    x = data[:4]
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sqnr = 10 * np.log10(np.sum(reference**2) / np.sum((got - reference) ** 2))
    assert sqnr > 20, sqnr


def test_an_absorbed_relu_is_exact() -> None:
    """Conv → Relu → Q(zero point 0) equals Conv → Q(zero point 0): the Relu can go."""
    data = RNG.normal(0, 1, (16, 3, 16, 16)).astype(np.float32)
    quantized, _ = quantize(residual_net(), {"x": data}, target="qdq")
    pair = next(n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c0")
    zero = next(numpy_helper.to_array(i) for i in quantized.graph.initializer if i.name == pair.input[2])
    assert zero.dtype == np.uint8 and int(zero) == 0  # the ReLU's range starts at 0
