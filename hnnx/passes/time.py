"""Running stateless per-frame ops on time-major tensors: ``[T, N, ...]`` as ``[T·N, ...]``."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.passes.manager import graph_pass

# Ops that treat dim 0 as the batch and whose spatial rank follows from the node itself.
_SPATIAL_RANK = {
    "Conv": lambda node: _constant_rank(node.inputs[1]) - 2,
    "ConvTranspose": lambda node: _constant_rank(node.inputs[1]) - 2,
    "MaxPool": lambda node: len(node.attrs.get("kernel_shape", [])),
    "AveragePool": lambda node: len(node.attrs.get("kernel_shape", [])),
    "LpPool": lambda node: len(node.attrs.get("kernel_shape", [])),
}


@graph_pass
def fold_time(graph: gs.Graph) -> bool:
    """Wrap per-frame ops fed a time-major tensor in reshapes.

    A Conv/ConvTranspose/pooling node whose input has one dimension more than the op
    takes (``[T, N, C, H, W]`` into a 2-D convolution) runs on ``[T·N, C, H, W]`` and its
    output is reshaped back to ``[T, N, C', H', W']``. Other nodes are left as they are.
    Where shape inference left a rank unknown, it is followed from the graph inputs: hnnx
    nodes answer it from their declarations, standard ops by the rules below.
    """
    graph.toposort()
    ranks: dict[str, int] = {}
    changed = False
    for node in list(graph.nodes):
        _propagate_rank(node, ranks)
        if node.op not in _SPATIAL_RANK or node.domain not in (None, "", "ai.onnx"):
            continue
        x = node.inputs[0]
        spatial = _SPATIAL_RANK[node.op](node)
        if spatial > 0 and _rank_of(x, ranks) == spatial + 3:
            _fold(graph, node, x)
            changed = True
    return changed


# Ranks the shapes may not tell before folding (a Conv fed a 5-D tensor has no inferred
# output), followed through the ops that spiking graphs put between per-frame ops.
_SAME_RANK_AS_INPUT0 = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "Relu", "Sigmoid", "Tanh",
                        "Neg", "Abs", "Clip", "Cast", "Identity", "Dropout", "BatchNormalization", "LeakyRelu"}
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Where", "Pow"}


def _rank_of(tensor: gs.Tensor, ranks: dict[str, int]) -> int | None:
    if tensor.name in ranks:
        return ranks[tensor.name]
    if isinstance(tensor, gs.Constant):
        return tensor.values.ndim
    return len(tensor.shape) if tensor.shape is not None else None


def _propagate_rank(node: gs.Node, ranks: dict[str, int]) -> None:
    inputs = [_rank_of(t, ranks) if t.name else None for t in node.inputs]
    rank: int | None = None
    if node.domain == ops.DOMAIN:
        view = ops.view_of(node.op, node.attrs, [bool(t.name) for t in node.inputs], len(node.outputs), node.name)
        rank = ops.declaration(node.op).output_ranks(view, inputs)[0]
    elif node.op in _SAME_RANK_AS_INPUT0 and inputs:
        rank = inputs[0]
    elif node.op in _BROADCASTING and inputs and None not in inputs:
        rank = max(inputs)  # type: ignore[type-var]
    for output in node.outputs[:1]:
        known = len(output.shape) if output.shape is not None else None
        value = known if known is not None else rank
        if value is not None:
            ranks[output.name] = value


def _fold(graph: gs.Graph, node: gs.Node, x: gs.Tensor) -> None:
    base = node.name or x.name

    def shape_tensor(name: str) -> gs.Variable:
        return gs.Variable(name, dtype=np.int64)

    shape = graph.layer(op="Shape", inputs=[x], outputs=[shape_tensor(f"{base}_time_shape")])[0]
    frames = graph.layer(op="Slice", inputs=[shape, _ints(f"{base}_from2", [2]), _ints(f"{base}_end", [2**62])],
                         outputs=[shape_tensor(f"{base}_frame_shape")])[0]
    folded_shape = graph.layer(op="Concat", inputs=[_ints(f"{base}_minus1", [-1]), frames],
                               outputs=[shape_tensor(f"{base}_folded_shape")], attrs={"axis": 0})[0]
    folded = graph.layer(op="Reshape", inputs=[x, folded_shape],
                         outputs=[gs.Variable(f"{base}_folded", dtype=x.dtype)])[0]
    result = node.outputs[0]
    per_frame = gs.Variable(f"{result.name}_folded", dtype=result.dtype)
    node.inputs[0] = folded
    node.outputs[0] = per_frame
    time_batch = graph.layer(op="Slice", inputs=[shape, _ints(f"{base}_from0", [0]), _ints(f"{base}_to2", [2])],
                             outputs=[shape_tensor(f"{base}_time_batch")])[0]
    out_shape = graph.layer(op="Shape", inputs=[per_frame], outputs=[shape_tensor(f"{base}_out_frame_shape")])[0]
    out_frames = graph.layer(op="Slice", inputs=[out_shape, _ints(f"{base}_from1", [1]),
                                                 _ints(f"{base}_end_out", [2**62])],
                             outputs=[shape_tensor(f"{base}_out_frames")])[0]
    unfolded_shape = graph.layer(op="Concat", inputs=[time_batch, out_frames],
                                 outputs=[shape_tensor(f"{base}_unfolded_shape")], attrs={"axis": 0})[0]
    graph.layer(op="Reshape", inputs=[per_frame, unfolded_shape], outputs=[result])


def _ints(name: str, values: list[int]) -> gs.Constant:
    return gs.Constant(name, np.array(values, dtype=np.int64))


def _constant_rank(tensor: gs.Tensor) -> int:
    return tensor.values.ndim if isinstance(tensor, gs.Constant) else (len(tensor.shape) if tensor.shape else 0)
