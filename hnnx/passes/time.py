"""Running stateless per-frame ops on time-major tensors: ``[T, N, ...]`` as ``[T·N, ...]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from hnnx import ops
from hnnx.errors import NodeError
from hnnx.passes.manager import Pass, graph_pass

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
    standard = (None, "", "ai.onnx")
    per_frame = [n for n in graph.nodes if n.op in _SPATIAL_RANK and n.domain in standard and n.inputs]
    if all(_SPATIAL_RANK[n.op](n) <= 0 or (n.inputs[0].shape is not None
                                            and len(n.inputs[0].shape) != _SPATIAL_RANK[n.op](n) + 3)
           for n in per_frame):
        return False  # every per-frame op's input has a known rank, none time-major: no ranks to follow
    graph.toposort()
    ranks: dict[str, int] = {}
    changed = False
    for node in list(graph.nodes):
        _propagate_rank(node, ranks)
        if node.op not in _SPATIAL_RANK or node.domain not in standard:
            continue
        x = node.inputs[0]
        spatial = _SPATIAL_RANK[node.op](node)
        if spatial > 0 and _rank_of(x, ranks) == spatial + 3:
            _fold(graph, node, x)
            changed = True
    return changed


# Ranks the shapes may not tell before folding (a Conv fed a 5-D tensor has no inferred
# output), followed through the ops that spiking graphs put between per-frame ops.
_ELEMENT_WISE = {"Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Clip", "Cast", "Identity", "Dropout", "LeakyRelu"}
"""Element-wise ops of one data input (output 0 has its shape)."""
_SAME_RANK_AS_INPUT0 = _ELEMENT_WISE | {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization"}
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


def hoist_repeated(keep: Iterable[str] = ()) -> Pass:
    """The graph pass that runs the per-frame layers fed a frame repeated over time once per
    frame; ``keep``: tensors that must stay (probes)."""
    kept = set(keep)

    @graph_pass(subgraphs=False)
    def hoist_repeated(graph: gs.Graph) -> bool:
        """Direct coding — a frame repeated over T steps (``Expand(Unsqueeze(x, 0), [T, …])``, or an
        hnnx node whose steps are all the same, such as an A2S with direct coding), folded to
        ``[T·N, …]`` into a layer (a convolution or a dense layer, and the casts, quantization and
        constant element-wise ops around it) and unfolded to ``[T, N, …]`` — computes the same frame
        T times: the chain runs once on the frame, and its result is repeated instead — or, when a
        neuron that takes a constant current (``LIF``'s ``steps``) reads it, given to that neuron as
        one step."""
        changed = False
        fixed = kept | {t.name for t in graph.outputs}
        for node in list(graph.nodes):
            source = _repeat_source(node, fixed)
            match = None if source is None else _folded_chain(source, fixed)
            if match is not None:
                _hoist(graph, source, *match, fixed)
                changed = True
        return changed

    return hoist_repeated


_PER_FRAME = {"Conv", "ConvInteger", "Gemm", "MatMul", "MatMulInteger", "Cast", "QuantizeLinear", "DequantizeLinear",
              "Relu", "Clip", "Add", "Sub", "Mul"}
"""Ops the hoisted chain may hold: each output frame depends on its input frame only, given
constant other inputs that do not vary over the batch axis."""
_LAYERS = {"Conv", "ConvInteger", "Gemm", "MatMul", "MatMulInteger"}
"""The chain must hold one of these: what is worth running once per frame."""


@dataclass
class _RepeatSource:
    """A frame repeated over a new leading (time) axis: ``repeated`` ``[T, N, …]`` holds ``steps``
    copies of a frame of rank ``rank``; ``frame(graph, base, fold)`` adds the nodes that compute
    the frame ``[N, …]`` once (``fold``: the constant shape ``[−1, …]`` that folded the repetition).
    ``dims``: the frame's dims past the batch axis, which the fold must keep (None: not checked)."""

    repeated: gs.Tensor
    rank: int
    steps: int | None
    frame: Callable[[gs.Graph, str, gs.Constant], gs.Tensor]
    dims: tuple[Any, ...] | None = None


def _repeat_source(node: gs.Node, kept: set[str]) -> _RepeatSource | None:
    """``node`` as the source of a repeated frame: an ``Expand`` of an ``Unsqueeze`` on axis 0
    (to the frame's rank + 1), or an hnnx node whose declaration says every step of its output is
    the same (``repeated_step``); None for anything else."""
    if node.op == "Expand":
        return _expand_source(node)
    if node.domain == ops.DOMAIN and node.op in ops.REGISTRY:
        return _hnnx_source(node, kept)
    return None


def _expand_source(expand: gs.Node) -> _RepeatSource | None:
    unsqueeze = expand.inputs[0].inputs[0] if expand.inputs[0].inputs else None
    if unsqueeze is None or unsqueeze.op != "Unsqueeze" or not expand.outputs:
        return None
    axes = unsqueeze.inputs[1] if len(unsqueeze.inputs) > 1 else unsqueeze.attrs.get("axes")
    if isinstance(axes, gs.Variable):
        return None  # axes computed in the graph
    axes = axes.values.tolist() if isinstance(axes, gs.Constant) else axes
    frame = unsqueeze.inputs[0]
    rank = len(frame.shape) if frame.shape is not None else None
    if list(np.ravel(axes) if axes is not None else []) != [0] or rank is None:
        return None
    if _length(expand.inputs[1]) != rank + 1:
        return None  # an Expand of another (or an unknown) rank also broadcasts the leading axes
    shape = expand.inputs[1]
    steps = int(shape.values[0]) if isinstance(shape, gs.Constant) else None

    def broadcast_frame(graph: gs.Graph, base: str, fold: gs.Constant) -> gs.Tensor:
        """The frame broadcast as the Expand would (its shape past the time entry)."""
        frame_shape = graph.layer(op="Slice", inputs=[shape, _ints(f"{base}_hoist_from1", [1]),
                                                      _ints(f"{base}_hoist_end", [2**62])],
                                  outputs=[gs.Variable(f"{base}_hoist_frame_shape", dtype=np.int64)])[0]
        return graph.layer(op="Expand", inputs=[frame, frame_shape],
                           outputs=[gs.Variable(f"{base}_hoist_frame", dtype=frame.dtype)])[0]

    return _RepeatSource(expand.outputs[0], rank, steps, broadcast_frame)


def _hnnx_source(node: gs.Node, kept: set[str]) -> _RepeatSource | None:
    declaration = ops.declaration(node.op)
    view = ops.view_of(node.op, node.attrs, [bool(t.name) for t in node.inputs], len(node.outputs), node.name)
    repeated = declaration.repeated_step(view)
    if repeated is None:
        return None
    steps, one_step = repeated
    dims = _known_dims(node.inputs[0])
    extra = [t for t in node.outputs[1:] if t.name]
    if dims is None or extra or not node.outputs or node.outputs[0].name in kept:
        return None  # another output (a state) would need the node itself

    def one_frame(graph: gs.Graph, base: str, fold: gs.Constant) -> gs.Tensor:
        """The node with one step, reshaped as the fold reshaped the steps (so that the frame's
        rank and dims are known to shape inference, as they were after the fold)."""
        step = gs.Variable(f"{base}_hoist_step", dtype=node.outputs[0].dtype)
        graph.layer(op=node.op, domain=ops.DOMAIN, name=f"{node.name or node.outputs[0].name}_one_step",
                    inputs=list(node.inputs), outputs=[step],
                    attrs={key: value for key, value in one_step.items() if value is not None})
        return graph.layer(op="Reshape", inputs=[step, fold],
                           outputs=[gs.Variable(f"{base}_hoist_frame", dtype=node.outputs[0].dtype)])[0]

    return _RepeatSource(node.outputs[0], len(dims), steps, one_frame, tuple(dims[1:]))


_SAME_SHAPE = _ELEMENT_WISE | {"QuantizeLinear", "DequantizeLinear"}
"""Ops whose output has the shape of their data input."""


def _known_dims(tensor: gs.Tensor) -> tuple[Any, ...] | None:
    """The shape of ``tensor``: its own, else followed back through element-wise ops (a quantized
    input's QuantizeLinear, casts, activations) to a known one; None when not known."""
    while tensor.shape is None:
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None or producer.domain not in (None, "", "ai.onnx") or producer.op not in _SAME_SHAPE:
            return None
        tensor = producer.inputs[0]
    return tuple(tensor.shape)


def _folded_chain(source: _RepeatSource, kept: set[str]) -> tuple[gs.Constant, list[gs.Node], gs.Node] | None:
    """(fold shape, chain, unfold) where ``source``'s repetition goes into a fold → per-frame ops (a layer among
    them) → unfold chain that nothing else reads and whose tensors are not ``kept`` (probes, graph
    outputs); None for anything else."""
    rank = source.rank
    tensor, nodes = source.repeated, []
    while True:
        readers = tensor.outputs
        if tensor.name in kept or len(readers) != 1 or readers[0].inputs[0] is not tensor:
            return None
        node = readers[0]
        nodes.append(node)
        if len(nodes) > 1 and node.op == "Reshape":
            break
        if len(nodes) > 1 and not _per_frame(node, rank):
            return None
        tensor = node.outputs[0]
    fold, chain, unfold = nodes[0], nodes[1:-1], nodes[-1]
    if fold.op != "Reshape" or not any(node.op in _LAYERS for node in chain):
        return None
    if not isinstance(fold.inputs[1], gs.Constant) or not isinstance(unfold.inputs[1], gs.Constant):
        return None
    folded, unfolded = fold.inputs[1].values.tolist(), unfold.inputs[1].values.tolist()
    # The fold merges the time and batch axes ([−1, *frame dims]); the unfold splits them again
    # ([T, −1, *output dims]), T the source's number of steps when known.
    if len(folded) != rank or folded[0] != -1 or any(d < 0 for d in folded[1:]):
        return None
    if source.dims is not None and tuple(folded[1:]) != source.dims:
        return None  # the fold's rows would not be frames
    if len(unfolded) != rank + 1 or unfolded[1] != -1 or unfolded[0] <= 0 or any(d < 0 for d in unfolded[2:]):
        return None
    if source.steps is not None and source.steps != unfolded[0]:
        return None
    return fold.inputs[1], chain, unfold


def _per_frame(node: gs.Node, rank: int) -> bool:
    """Whether ``node`` maps each frame of its (rank-``rank``, batch-first) data input on its own:
    a per-frame op whose other inputs are constants without a batch extent (a dense layer: a
    matrix of weights, frames as rows)."""
    if node.op not in _PER_FRAME or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
        return False
    others = [t for t in node.inputs[1:] if t.name]
    if not all(isinstance(t, gs.Constant) for t in others):
        return False
    if node.op in ("Conv", "ConvInteger"):
        return True  # weights and bias, not broadcast against the data
    if node.op in ("Gemm", "MatMul", "MatMulInteger"):
        # Frames as rows of 2-D data times a 2-D weight matrix; Gemm's bias and MatMulInteger's
        # weight zero point per column, its data zero point one for every row.
        if rank != 2 or node.inputs[1].values.ndim != 2 or node.attrs.get("transA", 0):
            return False
        extra = [(port, t) for port, t in enumerate(node.inputs) if port >= 2 and t.name]
        if node.op == "MatMulInteger":
            return all(t.values.size == 1 if port == 2 else t.values.ndim < 2 for port, t in extra)
        return all(t.values.ndim < 2 or t.values.shape[0] == 1 for _, t in extra)
    return all(t.values.ndim < rank or t.values.shape[0] == 1 for t in others)


def _length(tensor: gs.Tensor) -> int | None:
    """The number of entries of a 1-D shape tensor: a constant's, an inferred one, or followed
    through the Concat of constants and Shape slices that exporters build; None when unknown."""
    if isinstance(tensor, gs.Constant):
        return int(tensor.values.size)
    if tensor.shape is not None and len(tensor.shape) == 1 and isinstance(tensor.shape[0], int):
        return tensor.shape[0]
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is not None and producer.op == "Concat":
        lengths = [_length(t) for t in producer.inputs]
        return None if None in lengths else sum(lengths)  # type: ignore[arg-type]
    if producer is not None and producer.op == "Shape" and producer.inputs[0].shape is not None:
        rank = len(producer.inputs[0].shape)
        start, end = producer.attrs.get("start", 0), producer.attrs.get("end", rank)
        start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
        return max(end - start, 0)
    return None


def _constant_current_reader(tensor: gs.Tensor, kept: set[str]) -> gs.Node | None:
    """The hnnx node that is ``tensor``'s only reader, at input 0 only, and can take it as one step's
    current repeated (its declaration's ``constant_current`` attribute, not yet set); None otherwise
    or when ``tensor`` is ``kept``."""
    if tensor.name in kept or len(tensor.outputs) != 1:
        return None
    node = tensor.outputs[0]
    if node.domain != ops.DOMAIN or node.op not in ops.REGISTRY:
        return None
    attribute = ops.declaration(node.op).constant_current
    if attribute is None or node.attrs.get(attribute, 0) or [t is tensor for t in node.inputs].count(True) != 1:
        return None
    return node if node.inputs[0] is tensor else None


def _hoist(graph: gs.Graph, source: _RepeatSource, fold: gs.Constant, chain: list[gs.Node], unfold: gs.Node,
           kept: set[str]) -> None:
    """``chain`` on ``source``'s frame, then the result repeated over time into ``unfold``'s
    output — or, for a neuron that takes a constant current, fed to it as one step with the
    number of steps."""
    base = next(node.name or node.outputs[0].name for node in chain if node.op in _LAYERS)
    current = source.frame(graph, base, fold)
    for node in chain:
        out = gs.Variable(f"{node.outputs[0].name}_hoisted", dtype=node.outputs[0].dtype)
        current = graph.layer(op=node.op, inputs=[current, *node.inputs[1:]], outputs=[out], attrs=dict(node.attrs),
                              name=f"{node.name or node.outputs[0].name}_hoisted")[0]
    result = unfold.outputs[0]
    one = graph.layer(op="Unsqueeze", inputs=[current, _ints(f"{base}_hoist_axis", [0])],
                      outputs=[gs.Variable(f"{base}_hoist_one", dtype=result.dtype)])[0]
    steps = int(unfold.inputs[1].values.tolist()[0])
    unfold.outputs.clear()  # the folded chain is left without readers (removed by the clean-up)
    neuron = _constant_current_reader(result, kept)
    if neuron is not None:  # the neuron reads the one step instead of T copies of it
        neuron.inputs[0] = one
        neuron.attrs[ops.declaration(neuron.op).constant_current] = steps
        return
    if steps <= _CONCAT_STEPS:  # onnxruntime's Concat copies 3-4× faster than its Expand
        graph.layer(op="Concat", inputs=[one] * steps, outputs=[result], attrs={"axis": 0})
        return
    once_shape = graph.layer(op="Shape", inputs=[current],
                             outputs=[gs.Variable(f"{base}_hoist_shape", dtype=np.int64)])[0]
    repeated_shape = graph.layer(op="Concat", inputs=[_ints(f"{base}_hoist_steps", [steps]), once_shape],
                                 attrs={"axis": 0},
                                 outputs=[gs.Variable(f"{base}_hoist_repeated_shape", dtype=np.int64)])[0]
    graph.layer(op="Expand", inputs=[one, repeated_shape], outputs=[result])


_CONCAT_STEPS = 64
"""Up to this many steps the repeated result is a Concat of copies, beyond it an Expand."""


def repeated_currents(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each neuron that takes a constant current (its declaration's
    ``constant_current`` attribute > 0, e.g. a LIF with ``steps``; as :func:`hoist_repeated`
    makes them) fed that current repeated over its steps instead — for the tools that split a
    neuron's current into steps (step-by-step runs). Returns ``model`` itself when it has none,
    else a changed copy (top-level graph)."""
    if not any(_constant_steps(node) for node in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for node in copy.graph.node:
        steps = _constant_steps(node)
        if steps:
            base = f"{node.name or node.output[0]}_current"
            nodes += [helper.make_node("Constant", [], [f"{base}_{name}"],
                                       value=numpy_helper.from_array(np.array([value], np.int64), f"{base}_{name}"))
                      for name, value in (("steps", steps), ("from1", 1), ("end", 2**62))]
            nodes += [helper.make_node("Shape", [node.input[0]], [f"{base}_one_shape"]),
                      helper.make_node("Slice", [f"{base}_one_shape", f"{base}_from1", f"{base}_end"],
                                       [f"{base}_neuron_shape"]),
                      helper.make_node("Concat", [f"{base}_steps", f"{base}_neuron_shape"], [f"{base}_shape"], axis=0),
                      helper.make_node("Expand", [node.input[0], f"{base}_shape"], [f"{base}_every_step"])]
            node.input[0] = f"{base}_every_step"
            attribute = ops.declaration(node.op_type).constant_current
            kept = [a for a in node.attribute if a.name != attribute]
            del node.attribute[:]
            node.attribute.extend(kept)
        nodes.append(node)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return ops.attach_functions(copy)


def refuse_constant_currents(model: onnx.ModelProto, tool: str) -> None:
    """NodeError naming the first neuron of ``model`` that takes a constant current (a LIF with
    ``steps``, as a simulation's :func:`hoist_repeated` writes it): ``tool`` maps a neuron's
    current step by step and needs the model as it was before."""
    for node in model.graph.node:
        steps = _constant_steps(node)
        if steps:
            declaration = ops.declaration(node.op_type)
            raise NodeError(declaration.view(node).name,
                            f"takes one step's current repeated over {steps} steps ({declaration.constant_current} "
                            f"= {steps}, the form a simulation gives a directly coded input): {tool} needs the "
                            f"current of every step — give it the model before that rewrite")


def _constant_steps(node: onnx.NodeProto) -> int:
    """The steps over which an hnnx node repeats a constant current at input 0 (0: none)."""
    if node.domain != ops.DOMAIN or node.op_type not in ops.REGISTRY:
        return 0
    attribute = ops.declaration(node.op_type).constant_current
    if attribute is None:
        return 0
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == attribute), 0)
