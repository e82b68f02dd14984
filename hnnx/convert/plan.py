"""What an ANN → SNN conversion changes: the layers after the cut, read from the float graph.

:func:`plan_conversion` walks the pre-processed float graph from the cut (a synaptic layer;
default: the first one) to the outputs and classifies every node it reaches:

* **spiking layers** — a ``Conv``/``Gemm``/``MatMul`` (with its bias ``Add``) whose result feeds
  exactly one ``Relu``: the ReLU becomes an integrate-and-fire neuron;
* **readout layers** — a synaptic layer whose result is not rectified: its per-step output is
  averaged over time (``S2A`` global decoding), and everything after it stays ANN on that mean;
* **per-sample ops** between layers — pooling, ``Flatten``, ``Reshape`` — run unchanged on the
  ``[T·N, ...]`` frames (the batch dimension of a ``Reshape`` becomes ``-1``).

Any other op before a readout (a residual ``Add``, a ``Concat`` of layers, a ``Sigmoid``, …) has
no spiking form here and stops the conversion with an error naming it: cut after it
(``--hybridize --cut``) to keep it in the ANN part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from hnnx.errors import ModelError

SYNAPTIC_OPS = ("Conv", "Gemm", "MatMul")
PER_SAMPLE_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Identity", "Dropout")
"""Ops that run frame by frame on ``[T·N, ...]`` and commute with a positive scaling of their input."""


@dataclass
class LayerPlan:
    """One synaptic layer of the converted part, named by tensors (node names may be absent).

    ``output``: the layer node's output; ``end``: the tensor that ends the layer (the bias
    ``Add``'s output, else ``output``); ``spikes``: the rectified tensor that becomes spikes (a
    spiking layer's ReLU output; None for a readout); ``source``: the spike tensor or the cut whose
    scale the layer's input carries; ``weight``/``bias``: the constants' names; ``node``: its name
    for reports.
    """

    node: str
    op: str
    output: str
    end: str
    spikes: str | None
    source: str
    weight: str
    bias: str | None


@dataclass
class ConversionPlan:
    """The cut tensor (what the input coder codes), the node it feeds (the first converted layer),
    the layers in graph order, and the per-sample shape of every tensor the rewrite reshapes."""

    cut: str
    first: str
    layers: list[LayerPlan] = field(default_factory=list)
    frame_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    reshapes: list[str] = field(default_factory=list)
    """Outputs of the ``Reshape`` nodes whose batch dimension becomes ``-1``."""
    max_pools: list[str] = field(default_factory=list)

    @property
    def spiking(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.spikes is not None]

    @property
    def readouts(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.spikes is None]


def plan_conversion(graph: gs.Graph, cut: str | None = None) -> ConversionPlan:
    """The conversion of ``graph`` (pre-processed, shapes inferred) from node ``cut`` (a synaptic
    layer, by node name; None: the first synaptic layer). ModelError naming the node at fault."""
    graph.toposort()
    nodes = list(graph.nodes)
    if cut is None:
        first = next((n for n in nodes if n.op in SYNAPTIC_OPS), None)
        if first is None:
            raise ModelError("the model has no Conv, Gemm or MatMul layer to convert")
    else:
        first = next((n for n in nodes if n.name == cut), None)
        if first is None:
            known = ", ".join(n.name for n in nodes if n.op in SYNAPTIC_OPS and n.name)
            raise ModelError(f"--cut {cut!r}: no node of that name (layers: {known or 'none named'})")
        if first.op not in SYNAPTIC_OPS:
            raise ModelError(f"--cut {cut!r}: the cut must be a synaptic layer (Conv, Gemm, MatMul), "
                             f"not a {first.op}")
    plan = ConversionPlan(cut=first.inputs[0].name, first=first.outputs[0].name)
    region = _downstream(first)
    readout_tails: set[int] = set()  # nodes after a readout: they stay ANN
    for node in nodes:
        if id(node) not in region or id(node) in readout_tails:
            continue
        if node.op in SYNAPTIC_OPS and _constant_weight(node):
            layer = _layer(node, plan.cut if node is first else None)
            plan.layers.append(layer)
            if layer.spikes is None:
                end = _node_of(graph, layer.end)
                readout_tails |= _downstream(end) - {id(end)} if end is not None else set()
                readout_tails |= {id(c) for c in _tensor(graph, layer.end).outputs}
                plan.frame_shapes[layer.end] = _frame_shape(_tensor(graph, layer.end), node)
            else:
                plan.frame_shapes[layer.spikes] = _frame_shape(_tensor(graph, layer.spikes), node)
        elif node.op in ("Relu", "Add") and _claimed(node, plan):
            continue
        elif node.op in PER_SAMPLE_OPS:
            if node.op == "Reshape":
                plan.reshapes.append(node.outputs[0].name)
            if node.op == "MaxPool":
                plan.max_pools.append(node.name or node.outputs[0].name)
        else:
            raise ModelError(f"node {node.name or node.outputs[0].name!r} ({node.op}) has no spiking form in the "
                             f"ANN→SNN conversion; keep it in the ANN part: --hybridize --cut <a layer after it>")
    ends = {layer.end for layer in plan.readouts}
    for node in nodes:  # what follows a readout runs on its mean: it may not read the spiking part
        if id(node) not in readout_tails:
            continue
        for tensor in node.inputs:
            producer = tensor.inputs[0] if tensor.inputs else None
            if producer is not None and id(producer) in region and id(producer) not in readout_tails \
                    and tensor.name not in ends:
                raise ModelError(f"node {node.name or node.outputs[0].name!r} ({node.op}) joins a layer's output "
                                 f"with {tensor.name!r} of the spiking part: it has no spiking form in the ANN→SNN "
                                 f"conversion; keep it in the ANN part: --hybridize --cut <a layer after it>")
    for layer in plan.layers:
        layer.source = layer.source or _source(graph, layer, plan)
    plan.frame_shapes[plan.cut] = _frame_shape(_tensor(graph, plan.cut), first)
    return plan


def _downstream(start: gs.Node) -> set[int]:
    """ids of ``start`` and every node that depends on it."""
    seen: set[int] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for tensor in node.outputs:
            stack.extend(tensor.outputs)
    return seen


def _constant_weight(node: gs.Node) -> bool:
    return len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant)


def _layer(node: gs.Node, source: str | None) -> LayerPlan:
    label = node.name or node.outputs[0].name
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        raise ModelError(f"node {label!r}: Gemm with transA is not converted")
    bias = node.inputs[2].name if node.op in ("Conv", "Gemm") and len(node.inputs) > 2 and node.inputs[2].name else None
    if bias is not None and not isinstance(node.inputs[2], gs.Constant):
        raise ModelError(f"node {label!r}: its bias is not a constant")
    end = node.outputs[0]
    if node.op == "MatMul" and len(end.outputs) == 1 and end.outputs[0].op == "Add":
        add = end.outputs[0]
        other = [t for t in add.inputs if t is not end]
        if len(other) == 1 and isinstance(other[0], gs.Constant):
            bias, end = other[0].name, add.outputs[0]
    consumers = end.outputs
    spikes = None
    if len(consumers) == 1 and consumers[0].op == "Relu":
        spikes = consumers[0].outputs[0].name
    elif any(c.op == "Relu" for c in consumers):
        raise ModelError(f"node {label!r}: its output feeds a ReLU and other nodes; a spiking layer's result "
                         f"must feed its ReLU alone")
    return LayerPlan(label, node.op, node.outputs[0].name, end.name, spikes, source or "",
                     node.inputs[1].name, bias)


def _claimed(node: gs.Node, plan: ConversionPlan) -> bool:
    """Whether ``node`` is a layer's bias Add or ReLU (handled with the layer)."""
    names = {t.name for t in node.outputs}
    return any(layer.spikes in names or (layer.end in names and layer.end != layer.output) for layer in plan.layers)


def _source(graph: gs.Graph, layer: LayerPlan, plan: ConversionPlan) -> str:
    """The spike tensor (or the cut) a layer's input comes from, through per-sample ops."""
    spikes = {other.spikes for other in plan.layers if other.spikes}
    tensor = _node_of(graph, layer.output).inputs[0]  # type: ignore[union-attr]
    while True:
        if tensor.name in spikes or tensor.name == plan.cut:
            return tensor.name
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None or producer.op not in PER_SAMPLE_OPS:
            raise ModelError(f"node {layer.node!r}: its input {tensor.name!r} does not come from a spiking layer "
                             f"through pooling or reshapes")
        tensor = producer.inputs[0]


def _node_of(graph: gs.Graph, output: str) -> gs.Node | None:
    return next((n for n in graph.nodes if any(t.name == output for t in n.outputs)), None)


def _tensor(graph: gs.Graph, name: str) -> gs.Tensor:
    return graph.tensors()[name]


def _frame_shape(tensor: gs.Tensor, near: gs.Node) -> tuple[int, ...]:
    """The per-sample shape of ``tensor`` (all but the batch dimension), which must be static."""
    shape = tensor.shape
    if shape is None or len(shape) < 1 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise ModelError(f"tensor {tensor.name!r} (at node {near.name or near.outputs[0].name!r}): its per-sample "
                         f"shape {shape} is not static; the conversion reshapes it to [T, N, ...]")
    return tuple(int(d) for d in shape[1:])
