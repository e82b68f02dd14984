"""Constant folding and shape inference."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.passes.manager import model_pass


@model_pass
def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Annotate every tensor with its inferred type and shape (hnnx ops included)."""
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def fold_constants(graph: gs.Graph) -> None:
    """Evaluate every subgraph whose inputs are all constant (with onnxruntime) and replace it
    by its values; shape computations on known shapes fold too. hnnx nodes are kept: they
    are the model's meaning, not arithmetic to precompute."""
    graph.fold_constants(should_exclude_node=lambda node: node.domain == ops.DOMAIN, error_ok=True)
    graph.cleanup()
