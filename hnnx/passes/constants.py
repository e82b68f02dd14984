"""Constant folding and shape inference."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.passes.manager import graph_pass, model_pass


@model_pass
def infer_shapes(model: onnx.ModelProto) -> bool:
    """Annotate every tensor with its inferred type and shape (hnnx ops included)."""
    from hnnx.passes.intake import shape_skeleton

    # Inferred on the graph without its float weights (never read for shapes): copying 100 MB
    # of weights in and out of onnx's C++ inference cost more than the inference itself.
    skeleton = shape_skeleton(model)
    skeleton.graph.value_info.extend(model.graph.value_info)
    inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True).graph
    changed = len(inferred.value_info) != len(model.graph.value_info) or any(
        a != b for a, b in zip(inferred.output, model.graph.output))
    for ours, theirs in ((model.graph.value_info, inferred.value_info), (model.graph.output, inferred.output)):
        del ours[:]
        ours.extend(theirs)
    return changed


@graph_pass(subgraphs=False)  # graphsurgeon's folding recurses into subgraphs itself
def fold_constants(graph: gs.Graph) -> bool:
    """Evaluate every subgraph whose inputs are all constant (with onnxruntime) and replace it
    by its values; shape computations on known shapes fold too. hnnx nodes are kept: they
    are the model's meaning, not arithmetic to precompute."""
    if not any(_foldable(node) for node in graph.nodes):
        return False  # nothing constant to evaluate: skip graphsurgeon's (costly) partitioning
    before = len(graph.nodes)
    graph.fold_constants(should_exclude_node=lambda node: node.domain == ops.DOMAIN, error_ok=True)
    graph.cleanup()
    return len(graph.nodes) != before


def _foldable(node: gs.Node) -> bool:
    """A node that constant folding could replace: all inputs constant, or a shape query of a
    tensor whose shape is known."""
    if node.domain == ops.DOMAIN:
        return False
    if node.op in ("Shape", "Size") and node.inputs and node.inputs[0].shape is not None:
        return all(isinstance(d, int) for d in node.inputs[0].shape)
    present = [t for t in node.inputs if t.name]
    # A node with no inputs is a Constant (nothing to gain) or one a pass already detached.
    return bool(present) and all(isinstance(t, gs.Constant) for t in present)
