"""ANN → SNN conversion and hybrid partitioning as graph passes.

The rate-coding conversion of a ReLU network (Diehl et al. 2015, Rueckauer et al. 2017): an
integrate-and-fire neuron with soft reset (reset by subtracting the threshold) fires at a rate
that approximates its ReLU's activation divided by the threshold. Each layer is balanced with
the calibrated activation range ``λ`` of its ReLU (the maximum, or a percentile, over the
calibration data; data-based normalisation): with ``λ_in`` the range its input spikes stand
for (1 for the directly coded input, the input's calibrated range for a rate-coded one),

* a spiking layer's weights become ``W·λ_in/λ`` and its bias ``b/λ``, so its threshold is 1 —
  the same as keeping ``W, b`` and balancing the threshold to ``λ``, written in the normalised
  form the quantizer and the surrogate gradients expect;
* a readout layer's weights become ``W·λ_in`` (bias unchanged), so its per-step output
  averaged over time (``S2A`` global decoding) approximates the ANN's output.

The passes (each a declared graph pass, returning whether it changed anything):

1. :func:`balance_layers` — the weight and bias scaling above;
2. :func:`insert_input_coder` — an ``hnnx.A2S`` (direct or rate coding, ``T`` steps) at the cut,
   its ``[T, N, ...]`` output folded to ``[T·N, ...]`` frames for the first layer;
3. :func:`spike_relus` — each spiking layer's ReLU becomes ``Reshape [T, N, ...] → hnnx.LIF →
   Reshape [T·N, ...]`` (IF by default: ``alpha = 1``, soft reset, threshold 1, the membrane
   starting at ``v_init``);
4. :func:`decode_readouts` — each readout's per-step output ``[T·N, ...] → [T, N, ...] →
   hnnx.S2A`` (global: the mean over time), under the readout's own tensor name;
5. :func:`unfix_batch` — a ``Reshape`` in the converted part with a fixed batch dimension takes
   ``-1`` (its input now holds ``T·N`` frames).

Everything before the cut, and after a readout, stays ANN.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.errors import HnnxError
from hnnx.convert.plan import ConversionPlan, plan_conversion
from hnnx.passes import Pass, graph_pass, import_graph, infer_shapes, model_pass, preprocess, run_passes

CODINGS = ("direct", "rate")
OBSERVERS = ("max", "percentile")
"""How each layer's range ``λ`` is taken from the calibration: the maximum, or a percentile of ``|a|``."""


@dataclass(frozen=True)
class NeuronChoice:
    """The neurons the conversion writes: ``alpha`` (1 = IF, < 1 leaky), the initial membrane
    ``v_init`` as a fraction of the threshold (0.5 halves the first spike's rounding error), the
    surrogate used when the SNN is trained further."""

    alpha: float = 1.0
    v_init: float = 0.5
    surrogate: str = "rectangle"
    surrogate_width: float = 1.0

    def attributes(self) -> dict[str, Any]:
        return {"threshold": 1.0, "reset_mode": "soft", "alpha": self.alpha, "v_init": self.v_init,
                "surrogate": self.surrogate, "surrogate_width": self.surrogate_width}


# --------------------------------------------------------------------------- passes
def _frames(name: str, shape: Sequence[int]) -> gs.Constant:
    return gs.Constant(name, np.array([-1, *shape], np.int64))


def _time_major(name: str, steps: int, shape: Sequence[int]) -> gs.Constant:
    return gs.Constant(name, np.array([steps, -1, *shape], np.int64))


def _hnnx_node(op: str, inputs: list[gs.Tensor], outputs: list[gs.Variable], name: str, **attrs: Any) -> gs.Node:
    """A validated hnnx node for a graphsurgeon graph (attributes resolved by the declaration)."""
    view = ops.view_of(op, attrs, [True] * len(inputs), len(outputs), name)
    written = {key: value for key, value in view.attrs.items() if value is not None}
    return gs.Node(op, name=name, domain=ops.DOMAIN, attrs=written, inputs=inputs, outputs=outputs)


def balance_layers(plan: ConversionPlan, ranges: Mapping[str, float]) -> Pass:
    """The graph pass scaling every converted layer's weight and bias by the ranges ``λ`` (by
    spike or cut tensor name; see the module docstring). Each layer gets its own constants."""

    @graph_pass(subgraphs=False)
    def balance_layers(graph: gs.Graph) -> bool:
        tensors = graph.tensors()
        for layer in plan.layers:
            source = ranges[layer.source]
            out = ranges[layer.spikes] if layer.spikes is not None else 1.0
            node = tensors[layer.output].inputs[0]
            _scale_constant(node, 1, source / out, f"{layer.weight}.balanced")
            if layer.bias is not None and out != 1.0:
                holder = node if node.op in ("Conv", "Gemm") else tensors[layer.end].inputs[0]
                index = next(i for i, t in enumerate(holder.inputs) if t.name == layer.bias)
                _scale_constant(holder, index, 1.0 / out, f"{layer.bias}.balanced")
        return bool(plan.layers)

    return balance_layers


def _scale_constant(node: gs.Node, index: int, factor: float, name: str) -> None:
    constant = node.inputs[index]
    values = (constant.values.astype(np.float64) * factor).astype(constant.values.dtype)
    node.inputs[index] = gs.Constant(name, values)


def insert_input_coder(plan: ConversionPlan, steps: int, coding: str) -> Pass:
    """The graph pass putting an ``hnnx.A2S`` (``steps`` steps, ``coding``) between the cut tensor
    and the first converted layer, whose input becomes the coded frames ``[T·N, ...]``."""

    @graph_pass(subgraphs=False)
    def insert_input_coder(graph: gs.Graph) -> bool:
        tensors = graph.tensors()
        cut = tensors[plan.cut]
        first = tensors[plan.first].inputs[0]
        coded = gs.Variable(f"{plan.cut}.coded", dtype=np.float32)
        attrs: dict[str, Any] = {"steps": steps, "coding": coding}
        if coding == "rate":
            attrs["normalize"] = "minmax"  # the rate coding with an integer form
        graph.nodes.append(_hnnx_node("A2S", [cut], [coded], f"{plan.cut}.coder", **attrs))
        frames = gs.Variable(f"{plan.cut}.frames", dtype=np.float32)
        graph.nodes.append(gs.Node("Reshape", name=f"{plan.cut}.fold",
                                   inputs=[coded, _frames(f"{plan.cut}.frames_shape", plan.frame_shapes[plan.cut])],
                                   outputs=[frames]))
        first.inputs[0] = frames
        return True

    return insert_input_coder


def spike_relus(plan: ConversionPlan, steps: int, neuron: NeuronChoice) -> Pass:
    """The graph pass turning each spiking layer's ReLU into ``Reshape → hnnx.LIF → Reshape`` (the
    neuron named after the layer: ``<layer>.if`` or ``<layer>.lif``)."""

    @graph_pass(subgraphs=False)
    def spike_relus(graph: gs.Graph) -> bool:
        tensors = graph.tensors()
        kind = "if" if neuron.alpha == 1.0 else "lif"
        for layer in plan.spiking:
            relu = tensors[layer.spikes].inputs[0]
            current = relu.inputs[0]
            shape = plan.frame_shapes[layer.spikes]
            steps_major = gs.Variable(f"{layer.spikes}.current", dtype=np.float32)
            fired = gs.Variable(f"{layer.node}.{kind}.spikes", dtype=np.float32)
            graph.nodes.append(gs.Node("Reshape", name=f"{layer.spikes}.unfold",
                                       inputs=[current, _time_major(f"{layer.spikes}.steps_shape", steps, shape)],
                                       outputs=[steps_major]))
            graph.nodes.append(_hnnx_node("LIF", [steps_major], [fired], f"{layer.node}.{kind}",
                                          **neuron.attributes()))
            relu.op, relu.name, relu.attrs = "Reshape", f"{layer.spikes}.fold", {}
            relu.inputs = [fired, _frames(f"{layer.spikes}.frames_shape", shape)]
        return bool(plan.spiking)

    return spike_relus


def decode_readouts(plan: ConversionPlan, steps: int) -> Pass:
    """The graph pass averaging each readout's per-step output over time: ``Reshape [T, N, ...] →
    hnnx.S2A`` (global decoding), the mean taking the readout's tensor name."""

    @graph_pass(subgraphs=False)
    def decode_readouts(graph: gs.Graph) -> bool:
        tensors = graph.tensors()
        for layer in plan.readouts:
            end = tensors[layer.end]
            producer = end.inputs[0]
            per_frame = gs.Variable(f"{layer.end}.frames", dtype=np.float32)
            per_step = gs.Variable(f"{layer.end}.steps", dtype=np.float32)
            index = producer.outputs.index(end)
            producer.outputs[index] = per_frame
            graph.nodes.append(gs.Node("Reshape", name=f"{layer.end}.unfold",
                                       inputs=[per_frame, _time_major(f"{layer.end}.steps_shape", steps,
                                                                      plan.frame_shapes[layer.end])],
                                       outputs=[per_step]))
            graph.nodes.append(_hnnx_node("S2A", [per_step], [end], f"{layer.node}.readout", decoding="global"))
        return bool(plan.readouts)

    return decode_readouts


def unfix_batch(plan: ConversionPlan) -> Pass:
    """The graph pass giving every ``Reshape`` of the converted part a ``-1`` batch dimension when
    its shape is a constant with a fixed one (a shape computed from the input already follows)."""

    @graph_pass(subgraphs=False)
    def unfix_batch(graph: gs.Graph) -> bool:
        tensors = graph.tensors()
        changed = False
        for name in plan.reshapes:
            node = tensors[name].inputs[0]
            shape = node.inputs[1]
            if not isinstance(shape, gs.Constant):
                raise HnnxError(f"node {node.name or name!r}: a Reshape in the converted part needs a constant shape")
            values = shape.values.astype(np.int64).copy()
            if values.size and values[0] > 0:
                if -1 in values[1:]:
                    raise HnnxError(f"node {node.name or name!r}: Reshape to {values.tolist()} fixes the batch "
                                    f"and infers another dimension")
                values[0] = -1
                node.inputs[1] = gs.Constant(f"{shape.name}.frames", values)
                changed = True
        return changed

    return unfix_batch


@model_pass
def forget_shapes(model: onnx.ModelProto) -> bool:
    """Drop the inferred shapes of intermediate tensors (the converted part now holds ``T·N``
    frames where the ANN held ``N`` samples); :data:`hnnx.passes.infer_shapes` infers them anew."""
    changed = bool(model.graph.value_info)
    del model.graph.value_info[:]
    return changed


# --------------------------------------------------------------------------- the converter
@dataclass
class LayerRecord:
    """One converted layer in the report: its role (``spiking`` or ``readout``), the ranges of its
    input and output (``λ_in``, ``λ``; 1 for a readout's output) and the weight factor applied."""

    name: str
    op: str
    role: str
    input_range: float
    output_range: float
    weight_factor: float


@dataclass
class ConversionReport:
    """What :func:`to_snn` did, and (when measured) the accuracy against the number of steps."""

    steps: int
    coding: str
    observer: str
    percentile: float | None
    cut: str
    calibration_samples: int
    alpha: float
    v_init: float
    layers: list[LayerRecord] = field(default_factory=list)
    ann_nodes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ann_accuracy: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def markdown(self) -> str:
        """The report as Markdown tables."""
        neuron = "IF" if self.alpha == 1.0 else f"LIF (alpha {self.alpha})"
        rule = "max" if self.observer == "max" else f"{self.percentile} percentile"
        lines = [f"# ANN → SNN conversion — T = {self.steps}, {self.coding} coding, {neuron}, soft reset",
                 f"thresholds balanced on the {rule} of each ReLU over {self.calibration_samples} calibration "
                 f"samples; input coder at {self.cut!r}; membrane starts at {self.v_init} × threshold", "",
                 "| layer | op | role | λ in | λ out | weight × |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.name} | {r.op} | {r.role} | {r.input_range:.6g} | {r.output_range:.6g} | "
                  f"{r.weight_factor:.6g} |" for r in self.layers]
        if self.ann_nodes:
            lines += ["", f"kept ANN before the cut: {', '.join(self.ann_nodes)}"]
        if self.curve:
            lines += ["", "| T | SNN accuracy | vs ANN |", "|---|---|---|"]
            for steps, value in self.curve:
                delta = "" if self.ann_accuracy is None else f"{100 * (value - self.ann_accuracy):+.2f} pp"
                lines.append(f"| {steps} | {100 * value:.2f} % | {delta} |")
            if self.ann_accuracy is not None:
                lines.append(f"| ANN | {100 * self.ann_accuracy:.2f} % | |")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


class Converter:
    """An ANN prepared for conversion: pre-processed, planned from ``cut`` and calibrated once; it
    then builds the SNN for any number of steps (:meth:`build`) and measures accuracy against
    ``T`` (:meth:`curve`). See :func:`to_snn` for the options."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, calibration: Any, *, cut: str | None = None,
                 coding: str = "direct", observer: str = "percentile", percentile: float = 99.99,
                 neuron: NeuronChoice = NeuronChoice(), num_samples: int | None = None, batch_size: int = 64,
                 progress: bool = False) -> None:
        from hnnx.calibrate import calibrate
        from hnnx.model import load

        if coding not in CODINGS:
            raise HnnxError(f"unknown input coding {coding!r} (known: {', '.join(CODINGS)})")
        if observer not in OBSERVERS:
            raise HnnxError(f"unknown range observer {observer!r} (known: {', '.join(OBSERVERS)})")
        if not isinstance(model, onnx.ModelProto):
            model = load(model)
        if any(True for _ in ops.hnnx_nodes(model.graph)):
            raise HnnxError("the model already has hnnx nodes: the ANN→SNN conversion takes a float ANN")
        self.coding, self.observer, self.percentile, self.neuron = coding, observer, percentile, neuron
        self.float_model = preprocess(model)
        graph = import_graph(self.float_model)
        self.plan = plan_conversion(graph, cut)
        if not self.plan.spiking:
            raise HnnxError(f"nothing to convert after the cut {self.plan.cut!r}: no layer there is followed by a ReLU")
        cut_node = graph.tensors()[self.plan.first].inputs[0]
        self.ann_nodes = [n.name or n.outputs[0].name for n in graph.nodes if n is not cut_node
                          and _before(n, cut_node)]
        tensors = [layer.spikes for layer in self.plan.spiking] + ([self.plan.cut] if coding == "rate" else [])
        stats = calibrate(self.float_model, calibration, tensors,
                          observer="minmax" if observer == "max" else "percentile",
                          observer_options={} if observer == "max" else {"percentile": percentile},
                          batch_size=batch_size, num_samples=num_samples, progress=progress)
        self.samples = stats.samples
        self.ranges: dict[str, float] = {name: _positive(float(np.max(stats.absmax(name)))) for name in tensors}
        if coding == "direct":
            self.ranges[self.plan.cut] = 1.0  # the coder passes the real values every step

    def build(self, steps: int) -> onnx.ModelProto:
        """The converted model for ``steps`` time steps (function bodies attached, shapes inferred)."""
        if steps < 1:
            raise HnnxError(f"the number of steps must be ≥ 1, got {steps}")
        return run_passes(self.float_model, [
            balance_layers(self.plan, self.ranges), insert_input_coder(self.plan, steps, self.coding),
            spike_relus(self.plan, steps, self.neuron), decode_readouts(self.plan, steps), unfix_batch(self.plan),
            forget_shapes, infer_shapes])

    def report(self, steps: int) -> ConversionReport:
        """The conversion report for ``steps`` (without a curve)."""
        records = []
        for layer in self.plan.layers:
            source = self.ranges[layer.source]
            out = self.ranges[layer.spikes] if layer.spikes is not None else 1.0
            records.append(LayerRecord(layer.node, layer.op, "spiking" if layer.spikes else "readout", source, out,
                                       source / out))
        notes = [f"MaxPool {name!r} runs on spikes: it passes the most active input of each window per step, "
                 f"which overestimates the pooled rate" for name in self.plan.max_pools]
        if self.coding == "rate":
            notes.append("rate coding normalises each sample to [0, 1] by its own min and max; the first layer's "
                         "weights assume the calibrated input range")
        return ConversionReport(steps, self.coding, self.observer, self.percentile if self.observer == "percentile"
                                else None, self.plan.cut, self.samples, self.neuron.alpha, self.neuron.v_init,
                                records, self.ann_nodes, notes)

    def curve(self, data: Any, steps: Sequence[int], *, labels: Any = None, batch_size: int = 64
              ) -> tuple[float, list[tuple[int, float]]]:
        """The ANN's accuracy on ``data`` and the converted SNN's at each number of ``steps`` (each a
        separate converted model run in onnxruntime)."""
        from hnnx.runtime.simulate import simulate

        ann = simulate(self.float_model, data, labels=labels, batch_size=batch_size).accuracy
        if ann is None:
            raise HnnxError("accuracy against T needs labelled data (a 'labels' array or --labels)")
        points = []
        for count in steps:
            result = simulate(self.build(count), data, labels=labels, batch_size=batch_size)
            points.append((int(count), float(result.accuracy)))
        return float(ann), points


def to_snn(model: onnx.ModelProto | str | os.PathLike, calibration: Any, *, steps: int, cut: str | None = None,
           coding: str = "direct", observer: str = "percentile", percentile: float = 99.99,
           alpha: float = 1.0, v_init: float = 0.5, num_samples: int | None = None, batch_size: int = 64,
           progress: bool = False) -> tuple[onnx.ModelProto, ConversionReport]:
    """Convert a float ReLU ANN into an SNN of ``steps`` time steps; returns the model and its report.

    ``calibration``: data the ranges are taken from (any source ``hnnx.calibrate`` reads);
    ``cut``: the name of the synaptic layer where the SNN starts — the nodes before it stay ANN
    and an input coder joins them (None: the first layer, the graph input coded); ``coding``:
    ``direct`` (the value every step; the first layer integrates it) or ``rate`` (Bernoulli
    spikes, ``hnnx.A2S`` rate coding); ``observer``: ``max`` or ``percentile`` (of ``|a|``,
    ``percentile``) for each ReLU's range; ``alpha``: 1 for IF neurons, < 1 for leaky ones;
    ``v_init``: the initial membrane in thresholds. HnnxError naming the node that cannot be
    converted.
    """
    converter = Converter(model, calibration, cut=cut, coding=coding, observer=observer, percentile=percentile,
                          neuron=NeuronChoice(alpha=alpha, v_init=v_init), num_samples=num_samples,
                          batch_size=batch_size, progress=progress)
    return converter.build(steps), converter.report(steps)


def hybridize(model: onnx.ModelProto | str | os.PathLike, calibration: Any, cut: str, *, steps: int,
              **options: Any) -> tuple[onnx.ModelProto, ConversionReport]:
    """Keep the part of ``model`` before layer ``cut`` as ANN and convert the rest into an SNN,
    joined by an ``hnnx.A2S`` at the cut and ``hnnx.S2A`` at the readouts (see :func:`to_snn`)."""
    return to_snn(model, calibration, steps=steps, cut=cut, **options)


def print_curve(ann_accuracy: float, curve: Sequence[tuple[int, float]]) -> str:
    """The accuracy-vs-T curve as text: one bar per T, the ANN's accuracy as the last row."""
    width = 40
    rows = [f"{'T':>6}  {'accuracy':>9}  {'vs ANN':>9}"]
    for steps, value in curve:
        bar = "#" * max(0, round(width * value))
        rows.append(f"{steps:>6}  {100 * value:8.2f}%  {100 * (value - ann_accuracy):+8.2f}  {bar}")
    rows.append(f"{'ANN':>6}  {100 * ann_accuracy:8.2f}%  {'':>9}  {'#' * round(width * ann_accuracy)}")
    return "\n".join(rows) + "\n"


def plot_curve(ann_accuracy: float, curve: Sequence[tuple[int, float]], path: str | os.PathLike) -> None:
    """A PNG of the SNN's accuracy against T (log axis), the ANN's as a line. Needs matplotlib;
    without it raises HnnxError with the install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from hnnx.chip.report import PLOT_HINT

        raise HnnxError(f"the accuracy plot needs matplotlib: {PLOT_HINT}") from None
    import io

    from hnnx.model import write_atomic

    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot([t for t, _ in curve], [100 * a for _, a in curve], marker="o", label="SNN")
    axes.axhline(100 * ann_accuracy, color="black", linestyle="--", label="ANN")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("time steps T")
    axes.set_ylabel("accuracy (%)")
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


def _positive(value: float) -> float:
    """A layer's range; a ReLU that never fired on the calibration data gets 1 (its weights unchanged)."""
    return value if value > 0 and math.isfinite(value) else 1.0


def _before(node: gs.Node, cut: gs.Node) -> bool:
    """Whether ``node`` is an ancestor of ``cut``."""
    stack, seen = [t for t in cut.inputs], set()
    while stack:
        tensor = stack.pop()
        for producer in tensor.inputs:
            if producer is node:
                return True
            if id(producer) not in seen:
                seen.add(id(producer))
                stack.extend(producer.inputs)
    return False
