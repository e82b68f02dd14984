"""Shared helpers for the hnnx op tests: one-node models, ONNX tooling checks, runners."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import hnnx.ops

ELEM_OF_DTYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}

Dims = tuple[int | str, ...]
OutputTypes = dict[str, tuple[int, Dims]]
"""Graph output name → (ONNX element type, dims) that a model must declare and infer."""


def elem_of(array: np.ndarray) -> int:
    """The ONNX element type of a float32/int32 array."""
    return ELEM_OF_DTYPE[array.dtype]


def inferred_output_types(model: onnx.ModelProto) -> OutputTypes:
    """Graph output types as strict ONNX shape inference derives them from the inputs alone."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for output in probe.graph.output:
        output.type.tensor_type.elem_type = TensorProto.UNDEFINED
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True)
    types: OutputTypes = {}
    for output in inferred.graph.output:
        tensor = output.type.tensor_type
        assert tensor.HasField("shape"), f"shape inference left the shape of {output.name!r} unknown"
        types[output.name] = (tensor.elem_type,
                              tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim))
    return types


def build_model(
    nodes: Sequence[onnx.NodeProto],
    input_types: OutputTypes,
    output_types: OutputTypes,
) -> onnx.ModelProto:
    """A model of ``nodes`` with functions attached, passing the full checker and strict
    shape inference, whose inferred output types equal ``output_types``."""
    graph = helper.make_graph(
        list(nodes), "g",
        [helper.make_tensor_value_info(name, elem, list(dims)) for name, (elem, dims) in input_types.items()],
        [helper.make_tensor_value_info(name, elem, list(dims)) for name, (elem, dims) in output_types.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    hnnx.ops.attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    assert inferred_output_types(model) == output_types
    return model


def single_node_model(node: onnx.NodeProto, feeds: dict[str, np.ndarray], output_types: OutputTypes
                      ) -> onnx.ModelProto:
    """A checked one-node model whose graph inputs are typed like ``feeds``."""
    input_types = {name: (elem_of(array), array.shape) for name, array in feeds.items()}
    return build_model([node], input_types, output_types)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of a stock onnxruntime CPU session (the hnnx function bodies)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_reference_evaluator(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``onnx.reference`` with the hnnx reference kernels."""
    return ReferenceEvaluator(model, new_ops=hnnx.ops.reference_ops()).run(None, feeds)


def run_model_both_ways(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime outputs, after asserting ReferenceEvaluator gives the same arrays."""
    from_ort = run_onnxruntime(model, feeds)
    from_evaluator = run_reference_evaluator(model, feeds)
    assert len(from_ort) == len(from_evaluator)
    for name, a, b in zip([o.name for o in model.graph.output], from_ort, from_evaluator):
        assert_same_array(b, a, f"ReferenceEvaluator vs onnxruntime, output {name!r}")
    return from_ort


def assert_same_array(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal dtype, shape and values (bit-exact)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.array_equal(actual, expected), f"{what}:\n{actual}\n!=\n{expected}"
