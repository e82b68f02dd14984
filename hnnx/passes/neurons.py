"""Recognition of custom neurons: an ``hnnx.Neuron`` whose step is an ``hnnx.LIF`` becomes that LIF.

A step written from HNN's primitives in the LIF's order (``Threshold → Accumulate → Fire → Reset →
Leak → Saturate``, ``ThresholdDynamics`` and ``Refractory`` for the other states) computes exactly
an ``hnnx.LIF`` configuration (:meth:`hnnx.ops.Neuron.as_lif` reads it). Folding it into the LIF
node gives it what the LIF has: the native kernel, the LIF's quantization and chip lowering. Any
other step keeps its loop.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnx import helper

from hnnx import ops
from hnnx.passes.manager import graph_pass


@graph_pass
def fold_neurons(graph: gs.Graph) -> bool:
    """Replace every ``hnnx.Neuron`` whose step is an ``hnnx.LIF`` configuration by that LIF node
    (states, initial-value inputs and final-state outputs on the LIF's ports)."""
    changed = False
    for node in list(graph.nodes):
        if node.domain != ops.DOMAIN or node.op != "Neuron":
            continue
        view = ops.view_of(node.op, node.attrs, [bool(t.name) for t in node.inputs], len(node.outputs),
                           node.name or node.outputs[0].name)
        initial = {index: tensor.values if isinstance(tensor, gs.Constant) else None
                   for index, tensor in enumerate(node.inputs[1:]) if tensor.name}
        match = ops.Neuron.as_lif(view, initial)
        if isinstance(match, str):
            continue
        width_in = 1 + max([0] + [port for k, port in enumerate(match.ports) if k in initial])
        width_out = 1 + max([0] + [port for k, port in enumerate(match.ports) if k + 1 < len(node.outputs)])
        inputs: list[gs.Tensor] = [node.inputs[0]] + [gs.Variable.empty() for _ in range(width_in - 1)]
        outputs: list[gs.Tensor] = [node.outputs[0]] + [gs.Variable.empty() for _ in range(width_out - 1)]
        for k, port in enumerate(match.ports):
            if k in initial:
                inputs[port] = node.inputs[k + 1]
            if k + 1 < len(node.outputs):
                outputs[port] = node.outputs[k + 1]
        proto = ops.make_node("LIF", [t.name for t in inputs], [t.name for t in outputs], name=view.name,
                              **{key: value for key, value in match.attrs.items() if value is not None})
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        attrs = {key: value.decode() if isinstance(value, bytes) else value for key, value in attrs.items()}
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.append(gs.Node("LIF", name=view.name, domain=ops.DOMAIN, attrs=attrs, inputs=inputs,
                                   outputs=outputs))
        changed = True
    return changed
