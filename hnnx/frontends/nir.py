"""NIR → hnnx: a NIR graph as an hnnx ONNX model, with a report of every approximation.

    model, report = import_nir("net.nir", dt=1e-4)      # or: hnnx nir import net.nir -o net.onnx --dt 1e-4
    print(report.to_markdown())

The model takes every NIR ``Input`` as a time-major graph input ``[T, N, *shape]`` (float32)
and gives every ``Output`` as a graph output ``[T, N, *shape]``. NIR's continuous-time nodes
become discrete steps of ``dt`` by the chosen :class:`~hnnx.interop.nir_file.Discretisation`
(forward Euler by default, as snnTorch and Norse do):

========================  =====================================================================
NIR                        hnnx
========================  =====================================================================
Affine / Linear            ``MatMul`` with ``Wᵀ`` (+ ``Add`` of the bias), on the last axis
Scale                      ``Mul``
Conv1d / Conv2d            ``Conv`` on ``[T·N, C, ...]`` (reshapes around it)
SumPool2d                  depthwise ``Conv`` with ones (an exact sum of the window)
AvgPool2d                  ``AveragePool`` (padding counted, as NIR's SumPool then Scale)
Flatten                    ``Reshape`` of the sample dims
Threshold                  ``hnnx.Fire``
IF                         ``Mul`` (gain ``R·dt``) + ``hnnx.LIF`` (``alpha = 1``)
LIF                        ``Mul`` (gain ``R·gain(τ)``) + ``hnnx.LIF`` (``alpha = decay(τ)``,
                           ``beta = v_leak·gain(τ)``)
CubaLIF                    ``Mul`` + ``hnnx.CubaLIF`` (``alpha_syn = decay(τ_syn)``, ``alpha =
                           decay(τ_mem)``; gain ``w_in·gain(τ_syn)·R·gain(τ_mem)`` on the input)
LI                         ``Mul`` + ``hnnx.LI``;  I: ``Mul`` (``R·dt``) + ``hnnx.Integrator``
neuron ⇄ Linear/Affine     the neuron's ``recurrent_weight`` (``Wᵀ`` times the gain), bias added
cycle                      to its input
nested NIRGraph            inlined (its Input/Output nodes join the edges)
========================  =====================================================================

A gain of exactly 1 (snnTorch's ``r = τ/dt``) writes no ``Mul``. Parameters may be arrays per
neuron: when they differ between neurons the node is split into groups of equal parameters
(``Gather`` → one node per group → ``Concat`` → ``Gather``), which is exact. Everything else — an
unsupported node type, a cycle other than a neuron's recurrent weight, shapes that do not fit
— is a one-line :class:`~hnnx.errors.ModelError` naming the node.

Reading the file needs ``h5py`` only (``pip install 'hnnx[nir]'``); neither the ``nir`` package
nor any simulator is needed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops
from hnnx.errors import ModelError
from hnnx.interop.nir_file import GAIN_DOC, Discretisation, NirGraph, NirNode, read_nir

NEURONS = ("IF", "LIF", "CubaLIF", "LI", "I")
SPIKING = ("IF", "LIF", "CubaLIF")
LINEAR = ("Affine", "Linear")
SUPPORTED = ("Input", "Output", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "Flatten", "SumPool2d",
             "AvgPool2d", "Threshold", *NEURONS, "NIRGraph")
"""The NIR node types hnnx imports."""

CONVENTIONS = (
    "Spikes: a neuron fires when v > v_threshold (strict), as NIR defines; writers whose own neurons fire at "
    "v ≥ θ (Sinabs, SpikingJelly, Lava) can differ on ties.",
    "Reset: to v_reset in the step of the spike, before the next step (NIR; snnTorch with reset_delay=False, "
    "Norse). NIR cannot say 'subtract the threshold', so a writer's subtractive reset is not recovered.",
    "Initial state: membranes and synaptic currents start at 0 (NIR defines none).",
    "Several edges into one node are summed.",
    "A recurrent edge (spikes through a Linear/Affine back into the same neuron) arrives one step later.",
    "CubaLIF: each step updates the synaptic current first, then the membrane with it (snnTorch's Synaptic); "
    "Norse applies the input to the current after the membrane update (one step later).",
    "Parameters are derived in float64 and rounded once to float32.",
)


# ---------------------------------------------------------------------------- report
@dataclass
class NodeImport:
    """How one NIR node was imported: the hnnx/ONNX nodes it became, whether they compute what
    NIR specifies exactly (``exact``), and what was approximated or changed (``notes``)."""

    name: str
    type: str
    hnnx: list[str]
    exact: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """What :func:`import_nir` did: the source, the discretisation, the conventions it applied
    and one :class:`NodeImport` per NIR node."""

    source: str
    version: str
    dt: float
    scheme: str
    discretisation: str
    conventions: list[str]
    nodes: list[NodeImport]
    notes: list[str] = field(default_factory=list)

    @property
    def approximated(self) -> list[NodeImport]:
        return [node for node in self.nodes if not node.exact]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2) + "\n"

    def markdown(self) -> str:
        return self.to_markdown()

    def to_markdown(self) -> str:
        lines = [f"# NIR import: {self.source}", "",
                 f"NIR file version {self.version}; {self.discretisation} (scheme `{self.scheme}`).", ""]
        lines += [f"- {note}" for note in (*self.notes, *self.conventions)]
        lines += ["", "| NIR node | type | hnnx | exact | notes |", "|---|---|---|---|---|"]
        for node in self.nodes:
            lines.append(f"| {node.name} | {node.type} | {', '.join(node.hnnx) or '—'} | "
                         f"{'yes' if node.exact else 'no'} | {'; '.join(node.notes)} |")
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        exact = len(self.nodes) - len(self.approximated)
        return (f"imported {len(self.nodes)} NIR nodes from {self.source} ({self.discretisation}): "
                f"{exact} exact, {len(self.approximated)} discretised or approximated")


# ---------------------------------------------------------------------------- import
def import_nir(source: str | os.PathLike | NirGraph, dt: float, scheme: str = "euler",
               name: str | None = None) -> tuple[onnx.ModelProto, ImportReport]:
    """The hnnx model of a NIR graph (a ``.nir`` file or a :class:`NirGraph`), stepped every ``dt``
    (NIR's time unit, e.g. seconds) with ``scheme`` (``euler`` or ``exp``), and the report.

    The model has its function bodies attached and passes ``onnx.checker`` (full check);
    graph inputs and outputs are ``[T, N, *shape]`` float32. Raises ModelError (naming the file
    and node) for what hnnx cannot import.
    """
    disc = Discretisation(float(dt), scheme)
    if isinstance(source, NirGraph):
        graph, version, label = source, "in memory", name or "nir_graph"
    else:
        graph, version = read_nir(source)
        label = str(source)
    builder = _Importer(graph, disc, label)
    model = builder.build(name or _slug(Path(label).stem))
    report = ImportReport(label, version, disc.dt, scheme, disc.describe(), list(CONVENTIONS), builder.entries,
                          builder.notes)
    written_dt = graph.metadata.get("hnnx.dt")
    if written_dt is not None and not math.isclose(float(np.asarray(written_dt)), disc.dt, rel_tol=1e-9):
        report.notes.append(f"the file was written by hnnx with dt = {float(np.asarray(written_dt)):g}; "
                            f"imported with dt = {disc.dt:g}")
    helper.set_model_props(model, {"hnnx.nir.dt": repr(disc.dt), "hnnx.nir.scheme": scheme, "hnnx.nir.source": label,
                                   "hnnx.nir.version": version})
    return model, report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "nir"


class _Importer:
    """Builds the ONNX graph of one flattened NIR graph."""

    def __init__(self, graph: NirGraph, disc: Discretisation, label: str) -> None:
        self.disc = disc
        self.label = label
        self.notes: list[str] = []
        self.entries: list[NodeImport] = []
        self.nodes, self.edges = _flatten(graph, label)
        self.recurrent = _recurrences(self.nodes, self.edges, label)
        self.order = _topological(self.nodes, self.edges, self.recurrent, label)
        self.onnx_nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.tensors: dict[str, str] = {}  # NIR node → its output tensor
        self.shapes: dict[str, tuple[int, ...]] = {}  # NIR node → per-sample output shape
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()  # tensor names
        self._node_names: set[str] = set()
        self._steps_samples: str | None = None
        self.recurrent_entries: dict[str, tuple[bool, list[str]]] = {}  # neuron → (exact, notes) of its weight

    def where(self, name: str) -> str:
        return f"{self.label}: node {name!r}"

    def fail(self, name: str, message: str) -> ModelError:
        return ModelError(f"{self.where(name)}: {message}")

    # ------------------------------------------------------------------ graph assembly
    def build(self, graph_name: str) -> onnx.ModelProto:
        for name in self.order:
            node = self.nodes[name]
            handler = getattr(self, f"on_{node.type}", None)
            if handler is None:
                raise self.fail(name, f"NIR node type {node.type!r} is not supported (supported: "
                                      f"{', '.join(t for t in SUPPORTED if t != 'NIRGraph')})")
            handler(name, node)
        for name, weight in self.recurrent.items():
            exact, notes = self.recurrent_entries[name]
            self.entries.append(NodeImport(weight, self.nodes[weight].type, [f"{name} (recurrent_weight)"], exact,
                                           notes))
        if not self.inputs:
            raise ModelError(f"{self.label}: the graph has no Input node")
        if not self.outputs:
            raise ModelError(f"{self.label}: the graph has no Output node")
        graph = helper.make_graph(self.onnx_nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)],
                                  ir_version=ops.IR_VERSION, producer_name="hnnx nir import")
        ops.attach_functions(model)
        return model

    def fresh(self, hint: str, taken: set[str] | None = None) -> str:
        """A new name from ``hint`` (tensor names; node names with ``taken = self._node_names``)."""
        taken = self._names if taken is None else taken
        name = _slug(hint)
        candidate, index = name, 1
        while candidate in taken:
            index += 1
            candidate = f"{name}_{index}"
        taken.add(candidate)
        return candidate

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def emit(self, op_type: str, inputs: Sequence[str], hint: str, domain: str = "", node: str | None = None,
             **attrs: Any) -> str:
        """Append an ONNX node (named ``node``, else ``hint``) whose output tensor is named from ``hint``."""
        out = self.fresh(hint)
        name = self.fresh(node or hint, self._node_names)
        if domain:
            self.onnx_nodes.append(ops.make_node(op_type, list(inputs), [out], name=name, **attrs))
        else:
            self.onnx_nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def steps_samples(self) -> str:
        """A 1-D int64 tensor ``[T, N]`` of the first graph input (for unfolding time)."""
        if self._steps_samples is None:
            first = self.inputs[0].name
            shape = self.emit("Shape", [first], "time_shape")
            self._steps_samples = self.emit("Slice", [shape, self.constant("zero", np.array([0], np.int64)),
                                                      self.constant("two", np.array([2], np.int64))], "steps_samples")
        return self._steps_samples

    def input_of(self, name: str) -> tuple[str, tuple[int, ...]]:
        """The tensor feeding NIR node ``name`` (its incoming edges summed) and its sample shape."""
        sources = [a for a, b in self.edges if b == name and not self._is_recurrent_edge(a, b)]
        if not sources:
            raise self.fail(name, "has no input edge")
        shapes = {self.shapes[s] for s in sources}
        if len(shapes) > 1:
            raise self.fail(name, f"its inputs have different shapes {sorted(shapes)}; NIR sums them")
        tensor = self.tensors[sources[0]]
        for other in sources[1:]:
            tensor = self.emit("Add", [tensor, self.tensors[other]], f"{name}.sum")
        return tensor, shapes.pop()

    def _is_recurrent_edge(self, a: str, b: str) -> bool:
        return self.recurrent.get(a) == b or self.recurrent.get(b) == a or a in self.recurrent.values()

    def done(self, name: str, node: NirNode, tensor: str, shape: tuple[int, ...], hnnx_nodes: list[str],
             exact: bool = True, notes: Sequence[str] = ()) -> None:
        self.tensors[name] = tensor
        self.shapes[name] = tuple(int(d) for d in shape)
        self.entries.append(NodeImport(name, node.type, hnnx_nodes, exact, list(notes)))

    # ------------------------------------------------------------------ I/O
    def on_Input(self, name: str, node: NirNode) -> None:
        shape = _shape_param(node, "shape", self.where(name))
        tensor = self.fresh(name)
        self.inputs.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, ["T", "N", *shape]))
        self.done(name, node, tensor, shape, [f"graph input {tensor} [T, N, {', '.join(map(str, shape))}]"])

    def on_Output(self, name: str, node: NirNode) -> None:
        tensor, shape = self.input_of(name)
        notes = []
        if "shape" in node.params:
            declared = _shape_param(node, "shape", self.where(name))
            if math.prod(declared) != math.prod(shape):
                raise self.fail(name, f"declares shape {list(declared)} but receives {list(shape)}")
            if declared != shape:
                notes.append(f"declares shape {list(declared)}; the graph computes {list(shape)} (kept)")
        out = self.emit("Identity", [tensor], name)
        self.outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["T", "N", *shape]))
        self.done(name, node, out, shape, [f"graph output {out}"], True, notes)

    # ------------------------------------------------------------------ stateless nodes
    def on_Affine(self, name: str, node: NirNode) -> None:
        self._linear(name, node, bias=True)

    def on_Linear(self, name: str, node: NirNode) -> None:
        self._linear(name, node, bias=False)

    def _linear(self, name: str, node: NirNode, bias: bool) -> None:
        x, shape = self.input_of(name)
        weight = self.weight(name, node, shape)
        notes = _rounding_note(node.params["weight"], "weight")
        y = self.emit("MatMul", [x, self.constant(f"{name}.weight_t", weight.T.copy())], name if not bias else f"{name}.mm",
                      node=name)
        made = ["MatMul"]
        if bias:
            b = node.array("bias", self.where(name)).astype(np.float32)
            if b.shape != (weight.shape[0],):
                raise self.fail(name, f"bias of shape {list(b.shape)} does not match weight {list(weight.shape)}")
            notes += _rounding_note(node.params["bias"], "bias")
            y = self.emit("Add", [y, self.constant(f"{name}.bias", b)], name, node=f"{name}.bias")
            made.append("Add")
        self.done(name, node, y, (*shape[:-1], weight.shape[0]), made, not notes, notes)

    def weight(self, name: str, node: NirNode, shape: tuple[int, ...]) -> np.ndarray:
        """The (out, in) weight of a Linear/Affine node, checked against its input shape."""
        weight = node.array("weight", self.where(name)).astype(np.float32)
        if weight.ndim != 2:
            raise self.fail(name, f"{node.type} weight must be 2-D (out, in), got shape {list(weight.shape)}")
        if not shape or shape[-1] != weight.shape[1]:
            hint = " (a weight stored (in, out)?)" if shape and shape[-1] == weight.shape[0] else ""
            raise self.fail(name, f"{node.type} weight of shape {list(weight.shape)} maps {weight.shape[1]} inputs "
                                  f"to {weight.shape[0]} outputs, but its input has shape {list(shape)}{hint}")
        return weight

    def on_Scale(self, name: str, node: NirNode) -> None:
        x, shape = self.input_of(name)
        scale = self.per_neuron(name, node, "scale", shape).astype(np.float32)
        y = self.emit("Mul", [x, self.constant(f"{name}.scale", _compact(scale))], name)
        notes = _rounding_note(node.params["scale"], "scale")
        self.done(name, node, y, shape, ["Mul"], not notes, notes)

    def on_Threshold(self, name: str, node: NirNode) -> None:
        x, shape = self.input_of(name)
        threshold = self.per_neuron(name, node, "threshold", shape).astype(np.float32)
        y = self.emit("Fire", [x, self.constant(f"{name}.threshold", _compact(threshold))], name, domain=ops.DOMAIN)
        notes = _rounding_note(node.params["threshold"], "threshold")
        self.done(name, node, y, shape, ["hnnx.Fire"], not notes, notes + ["fires when x > threshold (strict)"])

    def on_Flatten(self, name: str, node: NirNode) -> None:
        x, shape = self.input_of(name)
        rank = len(shape)
        start = int(np.asarray(node.params.get("start_dim", 0)))
        end = int(np.asarray(node.params.get("end_dim", -1)))
        start, end = start + rank if start < 0 else start, end + rank if end < 0 else end
        if not 0 <= start <= end < rank:
            raise self.fail(name, f"Flatten dims {start}…{end} do not fit its input shape {list(shape)} "
                                  f"(NIR counts sample dims from 0, without batch)")
        new = (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])
        target = self.constant(f"{name}.shape", np.array([0, 0, *new], np.int64))
        self.done(name, node, self.emit("Reshape", [x, target], name), new, ["Reshape"])

    def on_Conv1d(self, name: str, node: NirNode) -> None:
        self._conv(name, node, 1)

    def on_Conv2d(self, name: str, node: NirNode) -> None:
        self._conv(name, node, 2)

    def _conv(self, name: str, node: NirNode, dims: int) -> None:
        x, shape = self.input_of(name)
        weight = node.array("weight", self.where(name)).astype(np.float32)
        if weight.ndim != dims + 2 or len(shape) != dims + 1:
            raise self.fail(name, f"Conv{dims}d weight {list(weight.shape)} and input shape {list(shape)} must have "
                                  f"{dims + 2} and {dims + 1} dims")
        groups = int(np.asarray(node.params.get("groups", 1)))
        if shape[0] != weight.shape[1] * groups:
            raise self.fail(name, f"weight {list(weight.shape)} with groups {groups} expects {weight.shape[1] * groups} "
                                  f"input channels, the input has {shape[0]}")
        given = node.params.get("input_shape")
        if given is not None and np.size(given) and tuple(np.atleast_1d(given).astype(int)) != tuple(shape[1:]):
            raise self.fail(name, f"input_shape {list(np.atleast_1d(given))} differs from its input {list(shape[1:])}")
        kernel = weight.shape[2:]
        stride = _pair(node.params.get("stride", 1), dims, self.where(name), "stride")
        dilation = _pair(node.params.get("dilation", 1), dims, self.where(name), "dilation")
        pads = _padding(node.params.get("padding", 0), kernel, stride, dilation, self.where(name))
        inputs = [self.constant(f"{name}.weight", weight)]
        notes = _rounding_note(node.params["weight"], "weight")
        if "bias" in node.params:
            bias = node.array("bias", self.where(name)).astype(np.float32)
            if bias.shape != (weight.shape[0],):
                raise self.fail(name, f"bias of shape {list(bias.shape)} does not match {weight.shape[0]} channels")
            inputs.append(self.constant(f"{name}.bias", bias))
            notes += _rounding_note(node.params["bias"], "bias")
        out = (weight.shape[0], *_conv_out(shape[1:], kernel, stride, dilation, pads))
        y = self.folded(name, x, shape, out, "Conv", inputs, kernel_shape=list(kernel), strides=list(stride),
                        dilations=list(dilation), pads=[p for p, _ in pads] + [q for _, q in pads], group=groups)
        self.done(name, node, y, out, ["Conv (on [T·N, ...])"], not notes, notes)

    def on_SumPool2d(self, name: str, node: NirNode) -> None:
        x, shape = self.input_of(name)
        kernel, stride, pads = self._pool_geometry(name, node, shape)
        ones = self.constant(f"{name}.ones", np.ones((shape[0], 1, *kernel), np.float32))
        out = (shape[0], *_conv_out(shape[1:], kernel, stride, (1, 1), pads))
        y = self.folded(name, x, shape, out, "Conv", [ones], kernel_shape=list(kernel), strides=list(stride),
                        pads=[p for p, _ in pads] + [q for _, q in pads], group=shape[0])
        self.done(name, node, y, out, ["depthwise Conv with ones (on [T·N, ...])"])

    def on_AvgPool2d(self, name: str, node: NirNode) -> None:
        x, shape = self.input_of(name)
        kernel, stride, pads = self._pool_geometry(name, node, shape)
        out = (shape[0], *_conv_out(shape[1:], kernel, stride, (1, 1), pads))
        y = self.folded(name, x, shape, out, "AveragePool", [], kernel_shape=list(kernel), strides=list(stride),
                        pads=[p for p, _ in pads] + [q for _, q in pads], count_include_pad=1)
        self.done(name, node, y, out, ["AveragePool (on [T·N, ...])"], True,
                  ["the mean of the window (padding counted), rounded once; NIR: SumPool then Scale 1/k²"])

    def _pool_geometry(self, name: str, node: NirNode, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        if len(shape) != 3:
            raise self.fail(name, f"{node.type} needs a [C, H, W] input, got {list(shape)}")
        kernel = _pair(node.params.get("kernel_size"), 2, self.where(name), "kernel_size")
        stride = _pair(node.params.get("stride", kernel), 2, self.where(name), "stride")
        pads = _padding(node.params.get("padding", 0), kernel, stride, (1, 1), self.where(name))
        return kernel, stride, pads

    def folded(self, name: str, x: str, shape: tuple[int, ...], out: tuple[int, ...], op_type: str,
               inputs: list[str], **attrs: Any) -> str:
        """``op_type`` on ``x [T, N, *shape]`` folded to ``[T·N, *shape]``, unfolded to ``[T, N, *out]``."""
        fold = self.emit("Reshape", [x, self.constant(f"{name}.fold", np.array([-1, *shape], np.int64))],
                         f"{name}.folded")
        y = self.emit(op_type, [fold, *inputs], f"{name}.{op_type.lower()}", node=name, **attrs)
        target = self.emit("Concat", [self.steps_samples(), self.constant(f"{name}.dims", np.array(out, np.int64))],
                           f"{name}.unfold", axis=0)
        return self.emit("Reshape", [y, target], name, node=f"{name}.unfolded")

    # ------------------------------------------------------------------ neurons
    def on_IF(self, name: str, node: NirNode) -> None:
        self._neuron(name, node)

    on_LIF = on_CubaLIF = on_LI = on_I = on_IF

    def per_neuron(self, name: str, node: NirNode, param: str, shape: tuple[int, ...],
                   default: Any = None) -> np.ndarray:
        """Parameter ``param`` broadcast to the neuron shape (float64)."""
        value = node.array(param, self.where(name), default)
        try:
            return np.broadcast_to(value, shape).astype(np.float64)
        except ValueError:
            raise self.fail(name, f"parameter {param!r} of shape {list(value.shape)} does not fit its input "
                                  f"shape {list(shape)}") from None

    def _neuron(self, name: str, node: NirNode) -> None:
        x, shape = self.input_of(name)
        derived, gain, op, notes = self.discretise(name, node, shape)
        weight_name = self.recurrent.get(name)
        made: list[str] = []
        rec_inputs: list[str] = []
        if weight_name is not None:
            x, weight_tensor = self.recurrence(name, weight_name, x, shape, gain)
            made.append(f"{self.nodes[weight_name].type} {weight_name!r} as recurrent_weight")
            rec_inputs = [weight_tensor]
        if np.any(gain.astype(np.float32) != 1.0):
            x = self.emit("Mul", [x, self.constant(f"{name}.gain", _compact(gain.astype(np.float32)))], f"{name}.in",
                          node=f"{name}.gain")
            self.onnx_nodes[-1].doc_string = GAIN_DOC  # the exporter gives this factor back to r (w_in)
            made.insert(0, "Mul (input gain)")
        groups = _groups(derived, shape)
        outputs = 1
        ports = len(ops.declaration(op).inputs)
        if len(groups) == 1:
            attrs = groups[0][0]
            inputs = [x] + ([""] * (ports - 2) + rec_inputs if rec_inputs else [])
            y = self.emit(op, inputs, name, domain=ops.DOMAIN, **attrs)
            made.append(f"hnnx.{op}")
        else:
            if rec_inputs:
                raise self.fail(name, "a recurrent neuron whose parameters differ between neurons is not supported")
            y = self.grouped(name, op, x, shape, groups, outputs)
            made.append(f"hnnx.{op} × {len(groups)} groups of equal parameters (Gather/Concat)")
            notes.append(f"parameters differ between neurons: {len(groups)} groups, exact")
        self.done(name, node, y, shape, made, False, notes)

    def discretise(self, name: str, node: NirNode, shape: tuple[int, ...]
                   ) -> tuple[dict[str, np.ndarray], np.ndarray, str, list[str]]:
        """Per-neuron hnnx attributes (float64 arrays of the neuron shape), the input gain, the hnnx
        op and notes, from a NIR neuron's parameters and the discretisation."""
        d, kind = self.disc, node.type
        p = lambda param, default=None: self.per_neuron(name, node, param, shape, default)  # noqa: E731
        notes = [self.disc.describe()]
        attrs: dict[str, np.ndarray] = {}
        if kind in SPIKING:
            attrs["threshold"] = p("v_threshold")
            if "v_reset" not in node.params:
                notes.append("no v_reset (a file older than NIR 1.0): 0")
            attrs["v_reset"] = p("v_reset", 0.0)
        r = p("r", 1.0)
        if kind in ("IF", "I"):
            gain = r * d.dt
            notes.append("dv/dt = R·I stepped exactly: v + R·dt·I")
        elif kind in ("LIF", "LI"):
            tau = self.positive(name, p("tau"), "tau")
            attrs["alpha"] = self.decay(name, tau, "tau")
            attrs["beta"] = p("v_leak", 0.0) * d.gain(tau)
            attrs["v_init"] = attrs["beta"]
            gain = r * d.gain(tau)
        else:  # CubaLIF
            tau_syn, tau_mem = self.positive(name, p("tau_syn"), "tau_syn"), self.positive(name, p("tau_mem"), "tau_mem")
            attrs["alpha_syn"] = self.decay(name, tau_syn, "tau_syn")
            attrs["alpha"] = self.decay(name, tau_mem, "tau_mem")
            attrs["beta"] = p("v_leak", 0.0) * d.gain(tau_mem)
            attrs["v_init"] = attrs["beta"]
            gain = p("w_in", 1.0) * d.gain(tau_syn) * r * d.gain(tau_mem)
            notes.append("the membrane gain R·gain(τ_mem) is carried into the synaptic current (linear: exact "
                         "up to float rounding)")
            if d.scheme == "exp":
                notes.append("exponential Euler per state, not the exact solution of the coupled current/membrane")
        op = {"IF": "LIF", "LIF": "LIF", "CubaLIF": "CubaLIF", "LI": "LI", "I": "Integrator"}[kind]
        return attrs, gain, op, notes

    def positive(self, name: str, tau: np.ndarray, param: str) -> np.ndarray:
        if np.any(tau <= 0):
            raise self.fail(name, f"{param} must be > 0, got {tau.min():g}")
        return tau

    def decay(self, name: str, tau: np.ndarray, param: str) -> np.ndarray:
        decay = self.disc.decay(tau)
        if np.any(decay < 0):
            raise self.fail(name, f"dt = {self.disc.dt:g} exceeds {param} = {tau.min():g}: the forward-Euler decay "
                                  f"1 − dt/τ = {decay.min():g} is negative; use a smaller --dt or --scheme exp")
        return decay

    def recurrence(self, name: str, weight_name: str, x: str, shape: tuple[int, ...], gain: np.ndarray
                   ) -> tuple[str, str]:
        """The recurrent weight (``Wᵀ`` scaled by the neurons' input gain, ``[F, F]``) and the input
        current with the recurrent bias added."""
        node = self.nodes[weight_name]
        features = math.prod(shape)
        weight = node.array("weight", self.where(weight_name)).astype(np.float32)
        if weight.shape != (features, features):
            raise self.fail(weight_name, f"recurrent {node.type} weight of shape {list(weight.shape)} does not fit "
                                         f"the {features} neurons of {name!r}")
        scale = gain.reshape(-1).astype(np.float32)
        scaled = (weight * scale[:, None]).T.copy()  # rows: presynaptic neurons
        exact = bool(np.all(scale == 1.0))
        notes = ["transposed into the neuron's recurrent_weight (rows: presynaptic neurons)"]
        if not exact:
            notes.append("multiplied by the neuron's input gain in float32 (rounded)")
        notes += _rounding_note(node.params["weight"], "weight")
        if node.type == "Affine":
            bias = node.array("bias", self.where(weight_name)).astype(np.float32)
            x = self.emit("Add", [x, self.constant(f"{weight_name}.bias", bias.reshape(shape))], f"{name}.with_bias")
            notes.append("bias added to the neuron's input at every step (the loop's first step sees W·0 + b)")
        self.recurrent_entries[name] = (exact and not _rounding_note(node.params["weight"], "weight"), notes)
        return x, self.constant(f"{weight_name}.weight", scaled)

    def grouped(self, name: str, op: str, x: str, shape: tuple[int, ...], groups: list[tuple[dict, np.ndarray]],
                outputs: int) -> str:
        """Neurons split into groups of equal parameters: gather each group from ``[T, N, M]``, run
        one node per group, concatenate and put every neuron back in its place."""
        flat = self.emit("Reshape", [x, self.constant(f"{name}.flat", np.array([0, 0, -1], np.int64))], f"{name}.flat")
        parts, order = [], []
        for index, (attrs, members) in enumerate(groups):
            picked = self.emit("Gather", [flat, self.constant(f"{name}.group{index}", members.astype(np.int64))],
                               f"{name}.in{index}", axis=2)
            part = self.emit(op, [picked], f"{name}.out{index}", domain=ops.DOMAIN, node=f"{name}.group{index}",
                             **attrs)
            parts.append(part)
            order.append(members)
        joined = self.emit("Concat", parts, f"{name}.joined", axis=2)
        inverse = np.argsort(np.concatenate(order)).astype(np.int64)
        placed = self.emit("Gather", [joined, self.constant(f"{name}.places", inverse)], f"{name}.placed", axis=2)
        return self.emit("Reshape", [placed, self.constant(f"{name}.shape", np.array([0, 0, *shape], np.int64))], name,
                         node=f"{name}.placed_back")


# ---------------------------------------------------------------------------- graph structure
def _flatten(graph: NirGraph, label: str) -> tuple[dict[str, NirNode], list[tuple[str, str]]]:
    """Nested graphs inlined (names joined by ``.``; their Input/Output nodes become pass-throughs,
    then removed), edges checked and deduplicated."""
    nodes: dict[str, NirNode] = {}
    edges: list[tuple[str, str]] = []
    passes: set[str] = set()

    def walk(g: NirGraph, prefix: str) -> tuple[dict[str, str], dict[str, str]]:
        entry: dict[str, str] = {}
        exit_: dict[str, str] = {}
        for name, node in g.nodes.items():
            full = prefix + name
            if "/" in name:
                raise ModelError(f"{label}: node name {full!r} contains '/'")
            if isinstance(node, NirGraph):
                sub_in, sub_out = walk(node, full + ".")
                ins = [n for n, c in node.nodes.items() if c.type == "Input"]
                outs = [n for n, c in node.nodes.items() if c.type == "Output"]
                if len(ins) != 1 or len(outs) != 1:
                    raise ModelError(f"{label}: node {full!r}: a nested NIRGraph needs one Input and one Output node "
                                     f"(it has {len(ins)} and {len(outs)})")
                entry[name], exit_[name] = f"{full}.{ins[0]}", f"{full}.{outs[0]}"
                passes.update((entry[name], exit_[name]))
            else:
                nodes[full] = node
                entry[name] = exit_[name] = full
        for a, b in g.edges:
            for end in (a, b):
                if end not in g.nodes:
                    where = f"node {prefix[:-1]!r}" if prefix else "the graph"
                    raise ModelError(f"{label}: {where}: edge ({a!r} → {b!r}) names node {end!r}, which does not "
                                     f"exist")
            edges.append((exit_[a], entry[b]))
        return entry, exit_

    walk(graph, "")
    for p in passes:
        before = [a for a, b in edges if b == p]
        after = [b for a, b in edges if a == p]
        edges = [e for e in edges if p not in e] + [(a, b) for a in before for b in after]
        nodes.pop(p, None)
    unique = list(dict.fromkeys(edges))
    return nodes, unique


def _recurrences(nodes: dict[str, NirNode], edges: list[tuple[str, str]], label: str) -> dict[str, str]:
    """Neuron → the Linear/Affine node of its recurrent loop; ModelError for any other cycle."""
    recurrent: dict[str, str] = {}
    for component in _cycles(nodes, edges):
        names = sorted(component)
        pair = [n for n in names if nodes[n].type in SPIKING], [n for n in names if nodes[n].type in LINEAR]
        if len(names) == 2 and len(pair[0]) == 1 and len(pair[1]) == 1:
            neuron, weight = pair[0][0], pair[1][0]
            w_in = [a for a, b in edges if b == weight]
            w_out = [b for a, b in edges if a == weight]
            if w_in == [neuron] and w_out == [neuron]:
                recurrent[neuron] = weight
                continue
        raise ModelError(f"{label}: nodes {', '.join(repr(n) for n in names)} form a cycle hnnx cannot express: only "
                         f"a spiking neuron (IF, LIF, CubaLIF) whose spikes pass one Linear/Affine node back into "
                         f"itself is supported")
    return recurrent


def _cycles(nodes: dict[str, NirNode], edges: list[tuple[str, str]]) -> list[set[str]]:
    """The strongly connected components with a cycle (Tarjan's algorithm, iterative)."""
    successors: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        successors[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if child < len(successors[node]):
                work.append((node, child + 1))
                nxt = successors[node][child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in successors[node]:
                    found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _topological(nodes: dict[str, NirNode], edges: list[tuple[str, str]], recurrent: dict[str, str],
                 label: str) -> list[str]:
    """Node order for emission (recurrent weights left out: they become neuron inputs)."""
    skip = set(recurrent.values())
    kept = [n for n in nodes if n not in skip]
    pending = {n: 0 for n in kept}
    forward = [(a, b) for a, b in edges if a not in skip and b not in skip]
    for _, b in forward:
        pending[b] += 1
    ready = [n for n in kept if pending[n] == 0]
    order = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for a, b in forward:
            if a == node:
                pending[b] -= 1
                if pending[b] == 0:
                    ready.append(b)
    if len(order) != len(kept):
        raise ModelError(f"{label}: the graph has a cycle through {sorted(set(kept) - set(order))}")
    return order


# ---------------------------------------------------------------------------- helpers
def _groups(attrs: dict[str, np.ndarray], shape: tuple[int, ...]) -> list[tuple[dict[str, float], np.ndarray]]:
    """Neurons grouped by their float32 attribute values: ``[(attributes, flat neuron indices)]``."""
    names = sorted(attrs)
    if not names:
        return [({}, np.arange(math.prod(shape)))]
    table = np.stack([np.broadcast_to(attrs[n], shape).astype(np.float32).reshape(-1) for n in names], axis=1)
    unique, inverse = np.unique(table, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    return [({n: float(v) for n, v in zip(names, row)}, np.flatnonzero(inverse == k)) for k, row in enumerate(unique)]


def _compact(values: np.ndarray) -> np.ndarray:
    """A scalar when every entry is equal (broadcast by ONNX), else the array."""
    flat = np.asarray(values).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return np.asarray(flat[0], values.dtype)
    return np.asarray(values)


def _rounding_note(value: Any, what: str) -> list[str]:
    array = np.asarray(value)
    if array.dtype == np.float64 and not np.array_equal(array.astype(np.float32).astype(np.float64), array):
        return [f"{what} stored in float64, rounded to float32"]
    return []


def _shape_param(node: NirNode, param: str, where: str) -> tuple[int, ...]:
    value = np.atleast_1d(np.asarray(node.params.get(param)))
    if value.dtype.kind not in "iu" or np.any(value < 0):
        raise ModelError(f"{where}: {node.type} {param} must be non-negative integers, got {value!r}")
    return tuple(int(v) for v in value)


def _pair(value: Any, dims: int, where: str, what: str) -> tuple[int, ...]:
    if value is None:
        raise ModelError(f"{where}: no {what}")
    array = np.atleast_1d(np.asarray(value)).astype(np.int64)
    if array.size == 1:
        array = np.repeat(array, dims)
    if array.size != dims or np.any(array < 0):
        raise ModelError(f"{where}: {what} {list(array)} must be {dims} non-negative integers")
    return tuple(int(v) for v in array)


def _padding(value: Any, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
             where: str) -> list[tuple[int, int]]:
    """Per spatial dim ``(begin, end)`` padding from NIR's int, pair, ``'valid'`` or ``'same'``."""
    if isinstance(value, str):
        if value == "valid":
            return [(0, 0)] * len(kernel)
        if value == "same":
            if any(s != 1 for s in stride):
                raise ModelError(f"{where}: padding 'same' needs stride 1 (as in PyTorch), got {list(stride)}")
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return [(t // 2, t - t // 2) for t in totals]
        raise ModelError(f"{where}: padding {value!r} is neither a number, 'same' nor 'valid'")
    return [(p, p) for p in _pair(value, len(kernel), where, "padding")]


def _conv_out(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
              pads: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    return tuple((n + a + b - d * (k - 1) - 1) // s + 1
                 for n, k, s, d, (a, b) in zip(size, kernel, stride, dilation, pads))
