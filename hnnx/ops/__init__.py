"""The ``hnnx`` ONNX op domain (opset 1).

Each op is declared once (see :mod:`hnnx.ops.declare`); this module collects the
declarations and derives from them what the rest of hnnx and ONNX tooling need:

* :func:`register_schemas` — ``onnx.defs`` schemas with shape inference (done on import),
  so ``onnx.checker.check_model(full_check=True)`` and ``infer_shapes`` accept hnnx nodes;
* :func:`make_node` — a validated NodeProto;
* :func:`attach_functions` — the model-local FunctionProto of every hnnx node, so a stock
  ``onnxruntime.InferenceSession`` runs the model with no extra library;
* :func:`reference_ops` — kernels for ``onnx.reference.ReferenceEvaluator``;
* :func:`run_reference` — the numpy reference of one node;
* :func:`view_of` — a node's resolved attributes and ports, the handle every question about
  it goes through (ranks, time layout, spikes, integer forms, per-step functions).

Per-step functions (numpy, float and integer; the equations every executor runs):
``LIF.initial_state``/``LIF.step`` (:class:`LIFState`), ``CubaLIF.initial_state``/``CubaLIF.step``,
``LI.initial_state``/``LI.step`` (and ``Integrator``'s), ``A2S.step``,
``S2A.initial_state``/``S2A.step``/``S2A.finish`` (:class:`S2AState`); stateless ops
(``Fire``, ``Requantize``) are their ``reference``. ``decl.state_spec(view)`` (:class:`StateSpec`)
names the input/output port pairs that carry a node's state from one call to the next.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import onnx
from onnx import helper

from hnnx.errors import ModelError
from hnnx.ops.declare import (DOMAIN, IR_VERSION, MIN_ONNX_OPSET, NO_TIME, ONNX_OPSET, OPSET_VERSION, SAME_TIME,
                              TIME_MAJOR, NodeView, OpDeclaration, StateSpec)
from hnnx.ops.cuba import CubaLIF
from hnnx.ops.fire import Fire
from hnnx.ops.hybrid import A2S, S2A, S2AState
from hnnx.ops.integrator import LI, Integrator
from hnnx.ops.lif import LIF, LIFState
from hnnx.ops.neuron import Neuron
from hnnx.ops.primitive_ops import (Accumulate, Leak, Product, Refractory, Reset, Saturate, Threshold,
                                    ThresholdDynamics)
from hnnx.ops.quant import Requantize
from hnnx.ops.spike_layers import SpikeConv, SpikeMatMul

__all__ = [
    "DOMAIN", "OPSET_VERSION", "ONNX_OPSET", "IR_VERSION", "REGISTRY", "OpDeclaration", "NodeView",
    "TIME_MAJOR", "NO_TIME", "SAME_TIME", "LIFState", "S2AState", "StateSpec", "view_of",
    "LIF", "CubaLIF", "LI", "Integrator", "Fire", "A2S", "S2A", "Requantize", "Accumulate", "Leak", "Saturate",
    "Reset", "Threshold", "ThresholdDynamics", "Refractory", "Product", "Neuron", "make_node", "attach_functions", "register_schemas", "reference_ops",
    "run_reference", "declaration", "hnnx_nodes", "op_summary_markdown", "op_reference_markdown",
    "SpikeMatMul", "SpikeConv",
]

REGISTRY: dict[str, type[OpDeclaration]] = {decl.name: decl for decl in (LIF, CubaLIF, LI, Integrator, Fire, A2S,
                                                                           S2A, Requantize)}
"""Every hnnx op declaration by op type."""
# Custom neurons: the single-step primitives and the neuron whose step graph composes them.
REGISTRY.update({decl.name: decl for decl in (Accumulate, Leak, Saturate, Reset, Threshold, ThresholdDynamics,
                                              Refractory, Product, Neuron)})
REGISTRY.update({decl.name: decl for decl in (SpikeMatMul, SpikeConv)})  # spike-input layers


def declaration(op_type: str) -> type[OpDeclaration]:
    """The declaration of hnnx op ``op_type``; ModelError if there is none."""
    try:
        return REGISTRY[op_type]
    except KeyError:
        raise ModelError(f"unknown hnnx op {op_type!r} (known: {', '.join(sorted(REGISTRY))})") from None


def view_of(op_type: str, attrs: dict[str, Any], inputs: Sequence[bool], n_outputs: int,
            name: str = "") -> NodeView:
    """The resolved :class:`NodeView` of an hnnx node given as data (attribute values — bytes
    are read as UTF-8 —, which inputs are connected, how many outputs): for passes that hold
    a node in another form than a NodeProto (e.g. onnx-graphsurgeon). NodeError if invalid."""
    plain = {key: value.decode() if isinstance(value, bytes) else value for key, value in attrs.items()}
    return declaration(op_type).view_for(plain, inputs, n_outputs, name)


def register_schemas() -> None:
    """Register every hnnx schema with ``onnx.defs`` (idempotent)."""
    for decl in REGISTRY.values():
        if onnx.defs.has(decl.name, DOMAIN):
            continue
        onnx.defs.register_schema(decl.schema())


def make_node(
    op_type: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    name: str | None = None,
    **attrs: Any,
) -> onnx.NodeProto:
    """A validated hnnx node. Every attribute is written explicitly (defaults filled).

    ``inputs``/``outputs`` are tensor names; ``""`` marks an absent optional input.
    Raises NodeError naming the node on bad attributes or ports.
    """
    decl = declaration(op_type)
    label = name or f"{op_type}({', '.join(outputs)})"
    resolved = decl.resolve(attrs, label)
    written = {k: v for k, v in resolved.items() if v is not None}
    node = helper.make_node(op_type, list(inputs), list(outputs), name=name, domain=DOMAIN, **written)
    node.overload = decl.structure(decl.view(node))
    return node


def hnnx_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every hnnx-domain node of ``graph``, including nodes inside subgraphs."""
    for node in graph.node:
        if node.domain == DOMAIN:
            yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from hnnx_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from hnnx_nodes(sub)


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every hnnx node its overload key and the model the matching FunctionProtos.

    Edits ``model`` in place and returns it: stale hnnx functions are replaced, the
    ``hnnx`` opset is imported, and the IR version is raised to what overloads need.
    Raises NodeError for an invalid hnnx node.
    """
    imports = {op.domain: op for op in model.opset_import}
    default = imports.get("") or imports.get("ai.onnx")
    opset = default.version if default is not None else ONNX_OPSET
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    for node in hnnx_nodes(model.graph):
        if opset < MIN_ONNX_OPSET:
            raise ModelError(f"hnnx nodes need ai.onnx opset ≥ {MIN_ONNX_OPSET}, the model imports {opset}; "
                             f"convert it first (onnx.version_converter.convert_version)")
        decl = declaration(node.op_type)
        view = decl.view(node)
        node.overload = decl.structure(view)
        key = (node.op_type, node.overload)
        if key not in functions:
            functions[key] = decl.function(view, opset)
    kept = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(kept + [functions[key] for key in sorted(functions)])
    if functions and DOMAIN not in imports:
        model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    if default is None:
        model.opset_import.append(helper.make_opsetid("", ONNX_OPSET))
    model.ir_version = max(model.ir_version, IR_VERSION)
    return model


def run_reference(node: onnx.NodeProto, *inputs: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Run the numpy reference kernel of one hnnx node on arrays."""
    decl = declaration(node.op_type)
    view = decl.view(node)
    return decl.reference(view, *inputs)


def reference_ops() -> list[type]:
    """``OpRun`` kernels for ``onnx.reference.ReferenceEvaluator(model, new_ops=...)``."""
    from onnx.reference.op_run import OpRun

    kernels = []
    for decl in REGISTRY.values():

        def _run(self: Any, *inputs: np.ndarray | None, _decl: type[OpDeclaration] = decl, **_: Any) -> tuple:
            view: NodeView = _decl.view(self.onnx_node)
            present = [x if flag else None for x, flag in zip(inputs, view.inputs)]
            return _decl.reference(view, *present)

        kernels.append(type(decl.name, (OpRun,), {"op_domain": DOMAIN, "_run": _run,
                                                  "_load_attributes": _attributes_from_declaration}))
    return kernels


def _attributes_from_declaration(kernel: Any) -> None:
    """An hnnx kernel reads its node through the declaration (``view``): its attributes are not
    loaded by ``onnx.reference`` (which would evaluate a custom neuron's step graph as a subgraph)."""
    kernel.has_linked_attribute = False
    kernel.attributes_names_ = []


def op_summary_markdown() -> str:
    """One Markdown table row per op (the README's op table), from the declarations."""
    lines = ["| op | summary | inputs | outputs |", "|---|---|---|---|"]
    for decl in REGISTRY.values():
        ins = "<br>".join(f"`{p.name}`{' (opt)' if p.optional else ''}" for p in decl.inputs)
        outs = "<br>".join(f"`{p.name}`{' (opt)' if p.optional else ''}" for p in decl.outputs)
        lines.append(f"| `hnnx.{decl.name}` | {decl.summary()} | {ins} | {outs} |")
    return "\n".join(lines) + "\n"


def op_reference_markdown() -> str:
    """The full op reference (docs/ops.md): summary table, then each op's spec and attributes."""
    sections = [op_summary_markdown().rstrip("\n")]
    for decl in REGISTRY.values():
        rows = ["| attribute | type | default | meaning |", "|---|---|---|---|"]
        for a in decl.attributes:
            default = "absent" if a.default is None else f"`{a.default}`"
            rows.append(f"| `{a.name}` | {a.type.__name__} | {default} | {a.doc} |")
        ports = ["| port | type | meaning |", "|---|---|---|"]
        for kind, group in (("input", decl.inputs), ("output", decl.outputs)):
            for p in group:
                ports.append(f"| {kind} `{p.name}`{' (optional)' if p.optional else ''} | `{p.type}` | {p.doc} |")
        doc = "\n".join(line[4:] if line.startswith("    ") else line
                        for line in (decl.__doc__ or "").strip().splitlines())
        sections.append(f"### hnnx.{decl.name}\n\n{doc}\n\n" + "\n".join(ports) + "\n\n" + "\n".join(rows))
    return "\n\n".join(sections) + "\n"


register_schemas()
