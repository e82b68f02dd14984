"""What every quantization target shares: the target interface, report records and graph helpers.

A target (``tianjicx``, ``qdq``) is a :class:`QuantizationTarget`: it says which tensors it needs
calibrated, rewrites the preprocessed float graph in place with those statistics, and returns
a :class:`Rewrite` — the report records, the exclusions with their reasons, and the output
scales. :func:`hnnx.quantize` drives any target the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from hnnx import ops

INT8 = (-128, 127)
INT32 = (-(1 << 31), (1 << 31) - 1)
LAYER_OPS = ("Conv", "Gemm", "MatMul")
"""Synaptic layers with constant weights: what targets quantize."""
SHAPE_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")
"""Ops that move values without computing on them."""


@dataclass
class LayerRecord:
    """What the report says about one quantized node."""

    name: str
    op: str
    role: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rewrite:
    """What a target's rewrite did: report records, excluded nodes with the reason, the real
    value per unit of each integer graph output (``real = value · scale``), and which tensor of
    the new graph stands for each quantized float tensor (for the per-tensor error report)."""

    records: list[LayerRecord] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    output_scales: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Float tensor name → (the tensor of the new graph standing for it, its real value per unit)."""

    def merge(self, other: "Rewrite") -> "Rewrite":
        """This rewrite followed by ``other`` on the same graph."""
        return Rewrite([*self.records, *other.records], {**self.excluded, **other.excluded},
                       {**self.output_scales, **other.output_scales}, {**self.tensors, **other.tensors})


@dataclass(frozen=True)
class TargetOptions:
    """The user's choices that a target reads (see :func:`hnnx.quantize`)."""

    format: str
    excluded_names: frozenset[str] = frozenset()
    bit_shift_unit: int = 2
    per_channel: bool | None = None
    spiking: str = "tianjicx"
    reduce_range: bool = False


class QuantizationTarget(ABC):
    """One quantization target: a name, its output formats, and a graph rewrite."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    """Output formats; the first is the default."""

    def __init__(self, options: TargetOptions) -> None:
        self.options = options

    def calibration_tensors(self, graph: gs.Graph) -> list[str]:
        """Tensors whose ranges the rewrite needs: by default the graph inputs and every
        float32 tensor a node computes."""
        names = [t.name for t in graph.inputs]
        for node in graph.nodes:
            names += [t.name for t in node.outputs if t.name and t.dtype == np.float32]
        return list(dict.fromkeys(names))

    @abstractmethod
    def rewrite(self, graph: gs.Graph, stats: "Statistics") -> Rewrite:
        """Quantize the preprocessed float ``graph`` in place with the calibrated ``stats``."""


@dataclass(frozen=True)
class Statistics:
    """What a target's rewrite reads of the calibration, by float tensor name: ``absmax`` — the
    clip threshold ``T > 0``; ``range`` — ``(lo, hi)`` seen, clipped to ``[−T, T]``;
    ``membrane_ranges`` — each LIF layer's membrane range (real units) by layer name."""

    absmax: Callable[[str], float]
    range: Callable[[str], tuple[float, float]]
    membrane_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, result: Any) -> "Statistics":
        """The statistics of a :class:`hnnx.calibrate.CalibrationResult` (per-tensor: a per-channel
        observer's widest channel)."""

        def absmax(name: str) -> float:
            return float(np.max(result.absmax(name)))

        def clipped(name: str) -> tuple[float, float]:
            threshold = absmax(name)
            low, high = result.range(name)
            return max(float(np.min(low)), -threshold), min(float(np.max(high)), threshold)

        return cls(absmax, clipped, dict(result.membrane_ranges))


def label(node: gs.Node) -> str:
    """The name reports use for ``node``: its name, else its first output."""
    return node.name or node.outputs[0].name


def op_label(node: gs.Node) -> str:
    """``domain.Op`` for a custom-domain node, else the op type."""
    return f"{node.domain}.{node.op}" if node.domain and node.domain not in ("", "ai.onnx") else node.op


def view_of(node: gs.Node) -> ops.NodeView:
    """The declaration's view of an hnnx node of a graphsurgeon graph (attributes resolved)."""
    return ops.view_of(node.op, node.attrs, [bool(t.name) for t in node.inputs], len(node.outputs), label(node))


def feeding_neuron(tensor: gs.Tensor) -> gs.Node | None:
    """The neuron (an op whose declaration says ``neuron``) whose input current ``tensor`` is,
    through shape-only ops, if any."""
    while len(tensor.outputs) == 1:
        consumer = tensor.outputs[0]
        if consumer.domain == ops.DOMAIN and consumer.op in ops.REGISTRY and ops.declaration(consumer.op).neuron \
                and consumer.inputs[0] is tensor:
            return consumer
        if consumer.op not in SHAPE_OPS or consumer.inputs[0] is not tensor:
            return None
        tensor = consumer.outputs[0]
    return None


def hnnx_node(op: str, inputs: list[gs.Tensor], outputs: list[gs.Variable], name: str, **attrs: Any) -> gs.Node:
    """An hnnx node for a graphsurgeon graph, validated through :func:`hnnx.ops.make_node`."""
    proto = ops.make_node(op, [t.name for t in inputs], [t.name for t in outputs], name=name, **attrs)
    written = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}
    written = {k: v.decode() if isinstance(v, bytes) else v for k, v in written.items()}
    return gs.Node(op, name=name, domain=ops.DOMAIN, attrs=written, inputs=inputs, outputs=outputs)
