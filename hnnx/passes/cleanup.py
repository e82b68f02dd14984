"""Removing nodes that do nothing at inference: Identity and Dropout."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from hnnx.passes.manager import graph_pass


@graph_pass
def remove_identities(graph: gs.Graph) -> bool:
    """Bypass ``Identity`` nodes and inference-mode ``Dropout`` nodes (mask output unused).

    A bypassed node whose output is a graph output hands that name to its input tensor,
    unless the input is itself a graph input or a constant (then the node stays).
    """
    changed = False
    for node in list(graph.nodes):
        if node.op == "Dropout":
            if len(node.outputs) > 1 and node.outputs[1].outputs:
                continue  # the mask is used
            if len(node.inputs) > 2 and _truthy_constant(node.inputs[2]):
                continue  # training_mode = true: not an identity
        elif node.op != "Identity" or node.domain not in (None, "", "ai.onnx"):
            continue
        source, result = node.inputs[0], node.outputs[0]
        if result in graph.outputs:
            if source in graph.inputs or isinstance(source, gs.Constant) or source in graph.outputs:
                continue
            index = graph.outputs.index(result)
            node.outputs.clear()
            source.name, result.name = result.name, source.name
            graph.outputs[index] = source
        else:
            for consumer in list(result.outputs):
                for index, tensor in enumerate(consumer.inputs):
                    if tensor is result:
                        consumer.inputs[index] = source
            node.outputs.clear()
        node.inputs.clear()
        changed = True
    return changed


def _truthy_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) and bool(tensor.values.reshape(-1)[0])
