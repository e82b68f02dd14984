"""Export a ``tianjicx``/``int`` model to the ONNX dialect of BiMap, the TianjicX compiler.

BiMap's front end reads the ONNX files of the HNN framework's exporter. That dialect differs
from hnnx's integer graphs in three ways, which :func:`export_bimap` bridges:

* **One time step of one sample.** hnnx graphs are time-major (``[T, N, ...]``, convolutions
  on ``[T·N, ...]`` between the ``fold_time`` reshapes); BiMap's graph is one step of one
  sample (``[1, C, H, W]`` or ``[1, F]``), run T times with the membranes kept between steps,
  T travelling as the ``time_window_size`` attribute of each neuron. An ``hnnx.A2S`` at a
  graph input becomes the per-step input; an ``hnnx.S2A`` (rate or global) at a graph output
  becomes a per-step output that the host decodes.
* **Integers in float containers.** Opset 9 (Clip's bounds are attributes), whole-number
  float32 weights and biases stored as ``raw_data``; requantization as ``Clip(INT32) →
  Div(2^k) → Floor → Clip(INT8)``, which BiMap turns into a shift by k; the last layer ends in
  ``Clip(INT32)``.
* **Neurons as marked spans.** ``Conv/Gemm → Clip(INT28) → snn::LIFRecorder → Add(·, v) →
  Clip(INT28) → snn::RectangleFire``, ``v`` a graph input: BiMap fuses the span into one LIF
  task whose dynamics come only from the recorder's attributes (the TianjicX P08 soma fields).

A flatten of ``[C, H, W]`` becomes ``Transpose(perm=[0, 2, 3, 1]) → Flatten`` (BiMap reads
every flatten channel-last) and the next Gemm's weight columns are permuted to match, so the
ONNX meaning of the file and BiMap's reading of it agree. Parts the dialect cannot express
stop the export with a NodeError naming the node: the export never writes a different network.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops
from hnnx.errors import HnnxError, ModelError, NodeError
from hnnx.model import write_atomic
from hnnx.ops.quant import INT8_RANGE
from hnnx.passes.time import refuse_constant_currents
from hnnx.quantization import output_scales
from hnnx.quantization import quantized_as

DIALECT_OPSET = 9
"""BiMap reads Clip's ``min``/``max`` as attributes (opset ≤ 10)."""
DIALECT_IR_VERSION = 6
SNN_DOMAIN = "snn"
SNN_DOMAIN_VERSION = 1
SOURCE_FORM = "tianjicx/int"
"""The only form exported: ``hnnx.quantize(model, data, target="tianjicx")``'s integer graph."""
CHIP_STATE_BITS = 28
"""The TianjicX soma's membrane width."""
INT32_RANGE = (-(1 << 31), (1 << 31) - 1)
CHANNEL_LAST = [0, 2, 3, 1]
RECORDER_ATTRIBUTES = ("v_th", "v_leaky_alpha", "v_leaky_beta", "v_reset", "v_leaky_adpt_en", "v_init",
                       "time_window_size")
"""The attributes BiMap accepts on ``snn::LIFRecorder`` (it rejects any other name)."""

_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
_KIND_TEXT = {"int8": "an int8 activation", "spikes": "0/1 spikes", "acc": "an int32 layer accumulator"}
_REASONS = {
    "AveragePool": "BiMap computes average pooling through a float mean (window sums come out one short)",
    "GlobalAveragePool": "an integer graph has no global average pooling to export",
    "Concat": "BiMap lists Concat but its front end crashes on it",
    "Add": "BiMap's residual Add needs its own requantization, which integer graphs do not carry",
    "Transpose": "BiMap reads Transpose only as the channel-last flatten",
}


@dataclass
class BimapReport:
    """How the exported per-step graph is driven: what the host feeds and reads at each of the
    ``steps`` executions per sample, the layers and neurons as BiMap will see them, and notes.

    ``inputs``: per graph input, its shape ``[1, ...]``, the source tensor whose int8 values it
    carries (the output of the source graph's ``QuantizeLinear``, with its scale), and its
    coding — ``none`` (fed once, T = 1), ``direct`` (the same values every step) or ``rate``
    (the spikes of step t from the source's A2S, which the host draws). ``membranes``: one
    graph input per neuron layer, fed ``v_init`` at step 0 (BiMap keeps the membrane between
    steps). ``outputs``: per exported output, the source output it stands for and how the host
    decodes it — as is, stacked over the T steps, or by the source's S2A over the T per-step
    outputs — and the real value per unit of the decoded output (``scale``).
    """

    steps: int
    network: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    membranes: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    neurons: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=float)

    def markdown(self) -> str:
        """A readable summary (Markdown)."""
        lines = [f"# BiMap export — {self.network.upper()}, {self.steps} step{'s' if self.steps > 1 else ''} "
                 f"per sample", "",
                 "The graph is one time step of one sample; the host runs it "
                 f"{self.steps} time{'s' if self.steps > 1 else ''} per sample.", "",
                 "| graph input | shape | host feeds |", "|---|---|---|"]
        lines += [f"| {i['name']} | {i['shape']} | {i['host']} |" for i in self.inputs]
        lines += [f"| {m['name']} | {m['shape']} | {m['host']} |" for m in self.membranes]
        lines += ["", "| graph output | shape | host reads | real value per unit |", "|---|---|---|---|"]
        lines += [f"| {o['name']} | {o['shape']} | {o['host']} | {o['scale']:g} |" for o in self.outputs]
        lines += ["", "| layer | op | weight | then |", "|---|---|---|---|"]
        lines += [f"| {layer['name']} | {layer['op']} | {layer['weight_shape']} | {layer['then']} |"
                  for layer in self.layers]
        if self.neurons:
            lines += ["", "| neuron | " + " | ".join(RECORDER_ATTRIBUTES) + " |",
                      "|---|" + "---|" * len(RECORDER_ATTRIBUTES)]
            lines += [f"| {n['name']} | " + " | ".join(f"{n[key]:g}" for key in RECORDER_ATTRIBUTES) + " |"
                      for n in self.neurons]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def export_bimap(model: onnx.ModelProto, *, graph_name: str | None = None) -> tuple[onnx.ModelProto, BimapReport]:
    """The ``tianjicx``/``int`` model ``model`` in BiMap's ONNX dialect, and how to drive it.

    ``model``: written by ``hnnx.quantize(model, data, target="tianjicx")`` (metadata
    ``hnnx.quantized = tianjicx/int``). Returns the per-step model — opset 9 plus the ``snn``
    domain when it has neurons, every tensor float32 ``[1, ...]`` holding whole numbers, a
    ``value_info`` entry for every intermediate tensor — and a :class:`BimapReport` saying what
    the host feeds and reads at each of the T steps.

    Raises ModelError when the model is not such an integer graph, and NodeError naming the node
    for what BiMap cannot express: rate coding inside the network, an S2A feeding more layers,
    refractory periods, adaptive thresholds, soft resets, a lower membrane bound (v_lower), group
    convolution, ops outside the dialect (AveragePool, Sigmoid, Concat, …).
    """
    form = quantized_as(model)
    if form != SOURCE_FORM:
        found = f"a {form} model" if form else "not a quantized model"
        raise ModelError(f"BiMap export needs a tianjicx integer graph, this is {found}: run "
                         f"`hnnx quantize MODEL -o OUT.onnx --calib DATA --target tianjicx --format int` first")
    refuse_constant_currents(model, "BiMap export")
    return _BimapExporter(model, graph_name).run()


def write_bimap(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write an exported model to ``path`` atomically (complete or not at all); returns the path."""
    path = Path(path)
    write_atomic(path, model.SerializeToString())
    return path


# ---------------------------------------------------------------------------- the translation
@dataclass
class _Value:
    """A tensor of the source graph as the per-step graph holds it."""

    name: str  # the exported tensor (before `pending`)
    kind: str  # "int8" activation, "spikes" (0/1) or "acc" (int32 accumulator of `layer`)
    shape: tuple[int, ...]  # one step of one sample, after `pending`
    time: str  # source layout: "none" [N, ...], "major" [T, N, ...] or "folded" [T·N, ...]
    limit: int  # bound on |value|
    layer: str = ""
    # Relu/flatten the source applies to an accumulator; emitted after the epilogue that BiMap
    # needs right after the layer (requantization, neuron clamp, output clamp) — they commute with it.
    pending: tuple[tuple[Any, ...], ...] = ()
    order: np.ndarray | None = None  # after a channel-last flatten: element j is source element order[j]
    cut_end: bool = False  # the Clip(INT8) that ends a requantization


class _BimapExporter:
    def __init__(self, model: onnx.ModelProto, graph_name: str | None) -> None:
        self.source = model
        graph = model.graph
        self.graph_name = graph_name or graph.name or "hnnx"
        self.initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.source_outputs = [vi.name for vi in graph.output]
        self.steps = _window_length(model)
        # A probe batch that differs from T keeps [T, N, ...], [T·N, ...] and [N, ...] apart.
        self.batch = 3 if self.steps == 2 else 2
        self.shapes = _static_shapes(model, self.batch)
        self.snn = any(node.domain == ops.DOMAIN and node.op_type == "LIF" for node in graph.node)
        self.report = BimapReport(steps=self.steps, network="snn" if self.snn else "ann")
        self.values: dict[str, _Value] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.new_initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.tensor_shapes: dict[str, tuple[int, ...]] = {}
        self.names: set[str] = set()
        self.input_entries: dict[str, dict[str, Any]] = {}  # source tensor → report input entry
        self.layer_entries: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, tuple[str, dict[str, Any]]] = {}  # source output → (exported tensor, entry)
        self.skipped: set[int] = set()

    # ------------------------------------------------------------------ driver
    def run(self) -> tuple[onnx.ModelProto, BimapReport]:
        for vi in self.source.graph.input:
            if vi.name not in self.initializers and vi.type.tensor_type.elem_type == TensorProto.INT8:
                self._graph_input_value(vi.name, vi.name)
        for node in self.source.graph.node:
            if id(node) in self.skipped:
                continue
            handler = self._handler(node)
            if handler is None:
                self._unsupported(node)
            handler(node)
        self._finish_outputs()
        return self._model(), self.report

    def _handler(self, node: onnx.NodeProto) -> Callable[[onnx.NodeProto], None] | None:
        """The translation of ``node``, None when the dialect has no form for it (a layer's bias Add
        is translated with the layer and skipped)."""
        if node.domain == ops.DOMAIN:
            return {"A2S": self._a2s, "LIF": self._lif, "S2A": self._s2a, "Requantize": self._requantize}.get(
                node.op_type)
        if node.domain not in ("", "ai.onnx") or (node.op_type == "Cast" and not _integer_cast(node)):
            return None
        return {"QuantizeLinear": self._quantize_linear, "ConvInteger": self._conv, "MatMulInteger": self._gemm,
                "Relu": self._relu, "MaxPool": self._maxpool, "Cast": self._cast,
                **dict.fromkeys(_SHAPE_OPS, self._reshape)}.get(node.op_type)

    def _unsupported(self, node: onnx.NodeProto) -> None:
        """Refuse ``node``, which has no form in the dialect. A Cast or Mul that dequantizes the
        input of a float part is blamed on the float op it feeds, which the quantizer left in float."""
        culprit, queue, seen = node, [node], set()
        while queue:
            current = queue.pop(0)
            if current.op_type not in ("Cast", "Mul"):
                if self._handler(current) is None:
                    culprit = current
                break
            for name in current.output:
                queue += [n for n in self.consumers[name] if id(n) not in seen]
                seen.update(id(n) for n in self.consumers[name])
        if culprit.op_type == "Cast":
            raise NodeError(_label(culprit), "Cast to float: the quantizer left a part of the graph in float, and "
                                             "BiMap's dialect is integer-only (see the quantization report's "
                                             "exclusions)")
        op = culprit.op_type if culprit.domain in ("", "ai.onnx") else f"{culprit.domain}.{culprit.op_type}"
        what = "Add of two computed tensors" if op == "Add" else f"{op} has no form in BiMap's ONNX dialect"
        reason = _REASONS.get(op, "it reads Conv, Gemm, Relu, MaxPool, the channel-last flatten, shift "
                                  "requantization and LIF neurons")
        raise NodeError(_label(culprit), f"{what}: {reason}")

    # ------------------------------------------------------------------ inputs and hybrid units
    def _graph_input_value(self, source_tensor: str, input_name: str,
                           quantization: dict[str, Any] | None = None) -> None:
        shape = self._shape(source_tensor)[1:]
        self.names.add(input_name)
        self.inputs.append(helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, *shape]))
        self.values[source_tensor] = _Value(input_name, "int8", shape, "none", -INT8_RANGE[0])
        entry = {"name": input_name, "shape": [1, *shape], "source_tensor": source_tensor,
                 "quantization": quantization, "coding": "none", "coder": None,
                 "host": "the int8 sample" + (_quantization_text(quantization) if quantization else "") + ", once"}
        self.input_entries[source_tensor] = entry
        self.report.inputs.append(entry)

    def _quantize_linear(self, node: onnx.NodeProto) -> None:
        source = node.input[0]
        if source in self.initializers or source not in {vi.name for vi in self.source.graph.input}:
            raise NodeError(_label(node), "QuantizeLinear of a computed tensor: only graph inputs are quantized "
                                          "(by the host)")
        scale = float(self._constant(node, 1).reshape(-1)[0])
        zero = int(self._constant(node, 2).reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0
        self._graph_input_value(node.output[0], source, {"scale": scale, "zero_point": zero})

    def _a2s(self, node: onnx.NodeProto) -> None:
        view = ops.A2S.view(node)
        label = view.name
        a = view.attrs
        if a["mode"] != "integer":
            raise NodeError(label, "float-mode A2S: quantize the model first (hnnx quantize --target tianjicx)")
        if a["converter"] != "identity":
            raise NodeError(label, f"A2S converter {a['converter']!r} has no form in BiMap's dialect")
        x = self._operand(node, 0, ("int8",))
        if x.time != "none":
            raise NodeError(label, "A2S of a time-major tensor")
        entry = self.input_entries.get(node.input[0])
        if a["coding"] == "rate":
            if entry is None or len(self.consumers[node.input[0]]) != 1:
                raise NodeError(label, "rate-coding A2S inside the network: BiMap's graph has no spike generator; "
                                       "only a rate coder that alone reads a graph input can run on the host")
            entry.update(coding="rate", coder={"node": label, "attrs": _plain(a)},
                         host=f"the spikes of step t from A2S {label!r} (hnnx.ops.A2S.step) of the int8 sample"
                              + _quantization_text(entry["quantization"]))
            self.values[node.output[0]] = replace(x, kind="spikes", time="major", limit=1)
            return
        if a["coding"] != "direct":
            raise NodeError(label, f"A2S coding {a['coding']!r} has no form in BiMap's dialect")
        if entry is not None:
            entry.update(coding="direct", coder={"node": label, "attrs": _plain(a)},
                         host="the int8 sample" + _quantization_text(entry["quantization"]) + ", at every step")
        else:
            self.report.notes.append(f"the layers before A2S {label!r} (direct coding) run at every step; they give "
                                     f"the same values each step")
        value = replace(x, time="major")
        if a["activation"] == "relu":
            value = replace(value, name=self._emit("Relu", [x.name], f"{label}.relu", x.shape), cut_end=False)
        self.values[node.output[0]] = value

    def _s2a(self, node: onnx.NodeProto) -> None:
        view = ops.S2A.view(node)
        label = view.name
        a = view.attrs
        if a["mode"] != "integer" or a["decoding"] == "learnable":
            raise NodeError(label, f"{a['mode']}-mode {a['decoding']} S2A has no integer form to export")
        out = node.output[0]
        if out not in self.source_outputs or self.consumers[out]:
            users = ", ".join(_label(n) for n in self.consumers[out]) or "not a graph output"
            raise NodeError(label, f"{a['decoding']} S2A feeds more layers ({users}): BiMap's graph runs one step "
                                   f"at a time and holds no values across steps; only an S2A at a graph output "
                                   f"is decoded, by the host")
        x = self._operand(node, 0, ("spikes", "acc"))
        if x.time != "major":
            raise NodeError(label, "S2A of a tensor without a time axis")
        exported = self._final(x, node, f"{out}.step")
        host = (f"S2A {label!r}: the sum over the {self.steps} steps" if a["decoding"] == "global"
                else f"S2A {label!r} over the per-step outputs (hnnx.ops.S2A.step), window {a['window']}")
        host += ", then ReLU" if a["activation"] == "relu" else ""
        self.outputs[out] = (exported, {"name": f"{out}.step", "source": out, "shape": [1, *x.shape],
                                        "decoder": {"node": label, "attrs": _plain(a)}, "stacked": False,
                                        "host": host})

    # ------------------------------------------------------------------ layers
    def _conv(self, node: onnx.NodeProto) -> None:
        label = _label(node)
        x = self._operand(node, 0, ("int8", "spikes"))
        weight = self._weight(node)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("group", 1) != 1:
            raise NodeError(label, f"group convolution (group={attrs['group']}): TianjicX convolutions have no groups")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise NodeError(label, "auto_pad: write explicit pads")
        if x.time == "major":
            raise NodeError(label, "convolution of a time-major tensor (expected the fold_time reshape before it)")
        spatial = weight.shape[2:]
        conv_attrs = {"kernel_shape": list(attrs.get("kernel_shape", spatial)),
                      "pads": list(attrs.get("pads", [0] * 2 * len(spatial))),
                      "strides": list(attrs.get("strides", [1] * len(spatial))),
                      "dilations": list(attrs.get("dilations", [1] * len(spatial))), "group": 1}
        bias, last = self._bias(node, weight.shape[0])
        inputs = [x.name, self._initializer(weight, f"{label}.weight")]
        if bias is not None:
            inputs.append(self._initializer(bias, f"{label}.bias"))
        shape = self._shape(last)[1:]
        name = self._emit("Conv", inputs, last, shape, **conv_attrs)
        per_output = np.abs(weight.astype(np.int64)).reshape(weight.shape[0], -1).sum(axis=1) * x.limit
        self._layer_value(node, last, name, "Conv", weight.shape, bias, per_output, x.time, shape)

    def _gemm(self, node: onnx.NodeProto) -> None:
        label = _label(node)
        x = self._operand(node, 0, ("int8", "spikes"))
        weight = self._weight(node)  # [K, M]
        if len(x.shape) != 1 or weight.ndim != 2 or weight.shape[0] != x.shape[0]:
            raise NodeError(label, f"MatMulInteger of a step shaped {list(x.shape)} by a weight {list(weight.shape)}: "
                                   f"BiMap's Gemm takes [1, K]")
        # Gemm(transB=1) takes B = [M, K]; after a channel-last flatten its columns follow the exported order.
        matrix = (weight if x.order is None else weight[x.order]).T
        bias, last = self._bias(node, weight.shape[1])
        # Opset 9's Gemm needs C: a zero bias when the layer has none.
        c = bias if bias is not None else np.zeros(weight.shape[1], np.int64)
        inputs = [x.name, self._initializer(matrix, f"{label}.weight"), self._initializer(c, f"{label}.bias")]
        shape = (weight.shape[1],)
        name = self._emit("Gemm", inputs, last, shape, alpha=1.0, beta=1.0, transB=1)
        per_output = np.abs(weight.astype(np.int64)).sum(axis=0) * x.limit
        self._layer_value(node, last, name, "Gemm", matrix.shape, bias, per_output, x.time, shape)

    def _layer_value(self, node: onnx.NodeProto, last: str, name: str, op: str, weight_shape: Sequence[int],
                     bias: np.ndarray | None, per_output: np.ndarray, time: str, shape: tuple[int, ...]) -> None:
        label = _label(node)
        bound = per_output + (0 if bias is None else np.abs(bias))
        self.values[last] = _Value(name, "acc", shape, time, int(bound.max(initial=0)), layer=label)
        entry = {"name": label, "op": op, "weight_shape": list(weight_shape), "bias": bias is not None,
                 "then": "unused"}
        self.layer_entries[label] = entry
        self.report.layers.append(entry)

    def _weight(self, node: onnx.NodeProto) -> np.ndarray:
        label = _label(node)
        weight = self.initializers.get(node.input[1])
        if weight is None or weight.dtype != np.int8:
            raise NodeError(label, "the weight is not an int8 constant")
        for index in (2, 3):  # zero points
            if len(node.input) > index and node.input[index] and np.any(self._constant(node, index)):
                raise NodeError(label, "non-zero zero point: TianjicX weights and activations are symmetric")
        return weight

    def _bias(self, node: onnx.NodeProto, channels: int) -> tuple[np.ndarray | None, str]:
        """The layer's constant int32 bias (from the Add after it) and the tensor that ends the layer."""
        out = node.output[0]
        users = self.consumers[out]
        if len(users) != 1 or users[0].op_type != "Add" or out in self.source_outputs:
            return None, out
        add = users[0]
        other = [name for name in add.input if name != out]
        bias = self.initializers.get(other[0]) if len(other) == 1 else None
        if bias is None or bias.size != channels or not np.issubdtype(bias.dtype, np.integer):
            return None, out
        bias = bias.astype(np.int64).reshape(-1)
        inexact = bias[bias.astype(np.float32).astype(np.int64) != bias]
        if inexact.size:
            raise NodeError(_label(node), f"bias {int(inexact[0])} is not exact in float32, which BiMap stores "
                                          f"biases in")
        self.skipped.add(id(add))
        return bias, add.output[0]

    def _requantize(self, node: onnx.NodeProto) -> None:
        view = ops.Requantize.view(node)
        shift = view.attrs["shift"]
        x = self._operand(node, 0, ("acc",))
        if shift == 0 and not self.snn:
            raise NodeError(view.name, "shift 0: BiMap simplifies ANN graphs with onnx-simplifier, which drops the "
                                       "Div(1) of the requantization and then rejects it")
        if shift % 2:
            self.report.notes.append(f"{view.name}: odd shift {shift}; TianjicX1 shifts an even number of bits only "
                                     f"(quantize with --bit-shift-unit 2)")
        self._then(x, f"requantize: floor(x / 2^{shift}), clamp to int8")
        base = x.name
        clipped = self._emit("Clip", [x.name], f"{base}.clip32", self.tensor_shapes[x.name],
                             min=float(INT32_RANGE[0]), max=float(INT32_RANGE[1]))
        divisor = self._initializer(np.array(1 << shift), f"{base}.divisor")
        divided = self._emit("Div", [clipped, divisor], f"{base}.div", self.tensor_shapes[x.name])
        floored = self._emit("Floor", [divided], f"{base}.floor", self.tensor_shapes[x.name])
        name = self._emit("Clip", [floored], node.output[0], self.tensor_shapes[x.name],
                          min=float(INT8_RANGE[0]), max=float(INT8_RANGE[1]))
        self.values[node.output[0]] = replace(x, name=self._apply_pending(x, name), kind="int8", pending=(),
                                              limit=-INT8_RANGE[0], cut_end=not x.pending)

    def _lif(self, node: onnx.NodeProto) -> None:
        view = ops.LIF.view(node)
        label = view.name
        _check_lif(view, node)
        current = self._operand(node, 0, ("acc",), "the input current must come from a Conv/Gemm layer (BiMap's "
                                                   "neuron starts at a layer's output)")
        if current.time != "major":
            raise NodeError(label, "LIF current without a time axis")
        a = view.attrs
        low, high = ops.LIF.integer_state_range(view)
        self._then(current, f"neuron {label}")
        shape = current.shape
        clipped = self._emit("Clip", [self._apply_pending(current, current.name)], f"{label}.current", shape,
                             min=float(low), max=float(high))
        leaky = a["alpha"] != 1.0
        recorder = {"v_th": a["threshold"], "v_leaky_alpha": a["alpha"], "v_leaky_beta": a["beta"],
                    "v_reset": a["v_reset"], "v_leaky_adpt_en": int(leaky), "v_init": a["v_init"],
                    "time_window_size": float(self.steps)}
        recorded = self._emit("LIFRecorder", [clipped], f"{label}.recorded", shape, domain=SNN_DOMAIN, **recorder)
        membrane = self._fresh(f"{label}.v")
        self.inputs.append(helper.make_tensor_value_info(membrane, TensorProto.FLOAT, [1, *shape]))
        integrated = self._emit("Add", [recorded, membrane], f"{label}.integrated", shape)
        saturated = self._emit("Clip", [integrated], f"{label}.saturated", shape, min=float(low), max=float(high))
        spikes = self._emit("RectangleFire", [saturated], node.output[0], shape, domain=SNN_DOMAIN,
                            v_th0=a["threshold"])
        self.values[node.output[0]] = _Value(spikes, "spikes", shape, "major", 1, order=current.order)
        self.report.membranes.append({"name": membrane, "neuron": label, "shape": [1, *shape], "v_init": a["v_init"],
                                      "host": f"v_init = {a['v_init']:g} at step 0; BiMap keeps the membrane "
                                              f"between steps"})
        self.report.neurons.append({"name": label, **recorder, "current_bound": current.limit})
        if current.limit > high:
            self.report.notes.append(
                f"{label}: BiMap drops the neuron's input clamp (it computes clamp28(u + v), hnnx "
                f"clamp28(clamp28(u) + v)); they differ only for |u| > 2^27, which this layer's weights allow "
                f"(|u| ≤ {current.limit})")

    # ------------------------------------------------------------------ element-wise and shape ops
    def _relu(self, node: onnx.NodeProto) -> None:
        x = self._operand(node, 0, ("int8", "spikes", "acc"))
        if x.kind == "acc":
            self.values[node.output[0]] = replace(x, pending=x.pending + (("relu",),))
        elif x.kind == "spikes":  # 0/1: Relu is the identity
            self.values[node.output[0]] = x
        else:
            name = self._emit("Relu", [x.name], node.output[0], x.shape)
            self.values[node.output[0]] = replace(x, name=name, cut_end=False)

    def _maxpool(self, node: onnx.NodeProto) -> None:
        label = _label(node)
        x = self._operand(node, 0, ("int8", "spikes"))
        if len(node.output) > 1 and node.output[1] and self.consumers[node.output[1]]:
            raise NodeError(label, "MaxPool indices are used")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [])):
            raise NodeError(label, "MaxPool with ceil_mode or dilations: BiMap's pooling takes kernel, pads and "
                                   "strides only")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise NodeError(label, "auto_pad: write explicit pads")
        kernel = list(attrs["kernel_shape"])
        pool_attrs = {"kernel_shape": kernel, "pads": list(attrs.get("pads", [0] * 2 * len(kernel))),
                      "strides": list(attrs.get("strides", [1] * len(kernel)))}
        shape = self._shape(node.output[0])[1:]
        name = self._emit("MaxPool", [x.name], node.output[0], shape, **pool_attrs)
        self.values[node.output[0]] = replace(x, name=name, shape=shape, cut_end=False)

    def _cast(self, node: onnx.NodeProto) -> None:
        x = self._operand(node, 0, ("int8", "spikes", "acc"))
        if x.kind == "acc" and helper.get_attribute_value(_attribute(node, "to")) == TensorProto.INT8:
            raise NodeError(_label(node), "Cast of an int32 accumulator to int8 (it wraps; BiMap requantizes)")
        self.values[node.output[0]] = x  # spikes and int8 values are the same numbers in either type

    def _reshape(self, node: onnx.NodeProto) -> None:
        label = _label(node)
        x = self._operand(node, 0, ("int8", "spikes", "acc"))
        time, shape = self._layout(node, self._shape(node.output[0]), x.time)
        if shape == x.shape:  # a reshape of the time or sample axes only: nothing in one step
            self.values[node.output[0]] = replace(x, time=time)
            return
        if len(x.shape) != 3 or shape != (math.prod(x.shape),):
            raise NodeError(label, f"reshape of one step from {list(x.shape)} to {list(shape)}: BiMap reads only the "
                                   f"flatten of [C, H, W]")
        order = np.arange(math.prod(x.shape)).reshape(x.shape).transpose(1, 2, 0).reshape(-1)
        if x.kind == "acc":
            value = replace(x, pending=x.pending + (("flatten", x.shape),))
        else:
            value = replace(x, name=self._flatten(x.name, x.shape, node.output[0]), cut_end=False)
        self.values[node.output[0]] = replace(value, time=time, shape=shape, order=order)

    def _flatten(self, name: str, shape: tuple[int, ...], output: str) -> str:
        """``Transpose(perm=[0, 2, 3, 1]) → Flatten``: the flatten as BiMap reads it (channel-last)."""
        channels, height, width = shape
        transposed = self._emit("Transpose", [name], f"{output}.hwc", (height, width, channels), perm=CHANNEL_LAST)
        return self._emit("Flatten", [transposed], output, (channels * height * width,), axis=1)

    def _layout(self, node: onnx.NodeProto, shape: tuple[int, ...], time: str) -> tuple[str, tuple[int, ...]]:
        """The source layout of a reshaped tensor and the shape of one step of one sample."""
        label = _label(node)
        steps, batch = self.steps, self.batch
        if time == "none":
            if not shape or shape[0] != batch:
                raise NodeError(label, "reshape across samples: BiMap's graph holds one sample")
            return "none", shape[1:]
        if len(shape) >= 2 and shape[0] == steps and shape[1] == batch:
            return "major", shape[2:]
        if shape and shape[0] == steps * batch:
            return "folded", shape[1:]
        raise NodeError(label, "reshape mixes the time and sample axes")

    # ------------------------------------------------------------------ epilogues and outputs
    def _apply_pending(self, value: _Value, name: str) -> str:
        """Emit an accumulator's pending Relu/flatten after ``name``; returns the last tensor."""
        shape = self.tensor_shapes.get(name, value.shape)
        for op in value.pending:
            if op[0] == "relu":
                name = self._emit("Relu", [name], f"{name}.relu", shape)
            else:
                name = self._flatten(name, op[1], f"{name}.flat")
                shape = (math.prod(op[1]),)
        return name

    def _final(self, value: _Value, node: onnx.NodeProto | None, output: str) -> str:
        """The exported tensor of an output: an accumulator ends in Clip(INT32), as BiMap expects of the
        last layer."""
        if value.order is not None:
            where = _label(node) if node is not None else output
            raise ModelError(f"{where}: a flattened value reaches a graph output; BiMap and the source order its "
                             f"elements differently")
        if value.kind == "acc":
            self._then(value, "graph output (int32)")
            name = self._apply_pending(value, value.name)
            return self._emit("Clip", [name], f"{value.name}.clip32", value.shape, min=float(INT32_RANGE[0]),
                              max=float(INT32_RANGE[1]))
        if value.cut_end:
            raise ModelError(f"{output}: a requantized int8 activation is a graph output; BiMap needs another op after "
                             f"a requantization (end the network with a layer)")
        return value.name

    def _finish_outputs(self) -> None:
        scales = output_scales(self.source)
        for source in self.source_outputs:
            if source in self.outputs:
                exported, entry = self.outputs[source]
            else:
                value = self.values.get(source)
                if value is None:
                    raise ModelError(f"graph output {source!r} is not computed by the integer graph")
                if value.time == "none":
                    entry = {"name": source, "source": source, "shape": [1, *value.shape], "decoder": None,
                             "stacked": False, "host": "as is, once per sample"}
                elif value.time == "major":
                    entry = {"name": f"{source}.step", "source": source, "shape": [1, *value.shape], "decoder": None,
                             "stacked": True, "host": f"stacked over the {self.steps} steps: [{self.steps}, 1, ...]"}
                else:
                    raise ModelError(f"graph output {source!r} is folded over time and samples")
                exported = self._final(value, None, entry["name"])
            if exported in {vi.name for vi in self.inputs}:
                raise ModelError(f"graph output {source!r} is a graph input of the per-step graph")
            self._rename(exported, entry["name"])
            entry["scale"] = scales.get(source, 1.0)
            self.report.outputs.append(entry)

    def _then(self, value: _Value, text: str) -> None:
        entry = self.layer_entries.get(value.layer)
        if entry is not None:
            entry["then"] = text if entry["then"] == "unused" else f"{entry['then']}; {text}"

    # ------------------------------------------------------------------ emission
    def _fresh(self, name: str) -> str:
        fresh, index = name, 1
        while fresh in self.names:
            fresh, index = f"{name}_{index}", index + 1
        self.names.add(fresh)
        return fresh

    def _emit(self, op: str, inputs: list[str], output: str, shape: Sequence[int], domain: str = "",
              **attrs: Any) -> str:
        name = self._fresh(output)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, domain=domain, **attrs))
        self.tensor_shapes[name] = tuple(shape)
        return name

    def _initializer(self, values: np.ndarray, name: str) -> str:
        """A float32 initializer (raw_data) holding whole numbers."""
        name = self._fresh(name)
        self.new_initializers.append(numpy_helper.from_array(np.asarray(values).astype(np.float32), name))
        return name

    def _rename(self, old: str, new: str) -> None:
        """Give exported tensor ``old`` the name ``new`` (an output name); a tensor holding that name
        moves aside."""
        if old == new:
            return
        if old not in self.tensor_shapes or (new in self.names and new not in self.tensor_shapes):
            raise ModelError(f"output name {new!r} is taken by an input or a constant of the per-step graph")
        if new in self.tensor_shapes:
            self._replace_name(new, self._fresh(f"{new}.inner"))
        self.names.add(new)
        self._replace_name(old, new)

    def _replace_name(self, old: str, new: str) -> None:
        for node in self.nodes:
            node.input[:] = [new if name == old else name for name in node.input]
            node.output[:] = [new if name == old else name for name in node.output]
            if node.name == old:
                node.name = new
        self.tensor_shapes[new] = self.tensor_shapes.pop(old)

    def _model(self) -> onnx.ModelProto:
        output_names = [entry["name"] for entry in self.report.outputs]
        outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, *self.tensor_shapes[name]])
                   for name in output_names]
        value_info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, *shape])
                      for name, shape in self.tensor_shapes.items() if name not in output_names]
        graph = helper.make_graph(self.nodes, self.graph_name, self.inputs, outputs, self.new_initializers,
                                  value_info=value_info)
        imports = [helper.make_opsetid("", DIALECT_OPSET)]
        if any(node.domain == SNN_DOMAIN for node in self.nodes):
            imports.append(helper.make_opsetid(SNN_DOMAIN, SNN_DOMAIN_VERSION))
        model = helper.make_model(graph, opset_imports=imports, ir_version=DIALECT_IR_VERSION, producer_name="hnnx")
        helper.set_model_props(model, {"hnnx.exported_from": SOURCE_FORM, "hnnx.time_window_size": str(self.steps)})
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ModelError(f"the exported BiMap graph is invalid: {str(exc).strip().splitlines()[0]}") from None
        return model

    # ------------------------------------------------------------------ lookups
    def _operand(self, node: onnx.NodeProto, index: int, kinds: tuple[str, ...], why: str = "") -> _Value:
        name = node.input[index]
        value = self.values.get(name)
        if value is None:
            raise NodeError(_label(node), f"input {name!r} is not an integer tensor of the exported graph")
        if value.kind not in kinds:
            wanted = " or ".join(_KIND_TEXT[kind] for kind in kinds)
            raise NodeError(_label(node), why or f"input {name!r} is {_KIND_TEXT[value.kind]}, expected {wanted}")
        return value

    def _constant(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        values = self.initializers.get(node.input[index])
        if values is None:
            raise NodeError(_label(node), f"input {index} ({node.input[index]!r}) is not a constant")
        return values

    def _shape(self, name: str) -> tuple[int, ...]:
        try:
            return self.shapes[name]
        except KeyError:
            raise ModelError(f"tensor {name!r}: shape inference left its shape unknown") from None


def _check_lif(view: ops.NodeView, node: onnx.NodeProto) -> None:
    """Refuse what BiMap's LIF (hard reset, constant threshold, 28-bit state) cannot run."""
    a = view.attrs
    if a["mode"] != "integer":
        raise NodeError(view.name, "float-mode LIF: quantize the model first (hnnx quantize --target tianjicx)")
    if a["state_bits"] != CHIP_STATE_BITS:
        raise NodeError(view.name, f"state_bits {a['state_bits']}: the TianjicX soma holds a {CHIP_STATE_BITS}-bit "
                                   f"membrane")
    if a["reset_mode"] != "hard":
        raise NodeError(view.name, f"reset_mode {a['reset_mode']!r}: BiMap's LIF resets hard (to v_reset) only")
    names = ops.LIF.state_names(view)
    if "refractory" in names:
        raise NodeError(view.name, f"refractory period ({a['refractory']} steps): BiMap's LIF has none")
    if "theta" in names:
        raise NodeError(view.name, "adaptive threshold (theta_alpha/theta_beta/theta_increment): BiMap's LIF has a "
                                   "constant threshold")
    if a["v_lower"] is not None:  # an integer-mode v_lower is within 2^24, so it does bound the membrane
        raise NodeError(view.name, f"v_lower {a['v_lower']:g}: BiMap's LIF bounds the membrane only by the "
                                   f"{CHIP_STATE_BITS}-bit range")
    extra = [port.name for port, name in zip(ops.LIF.inputs[1:], node.input[1:]) if name]
    extra += [port.name for port, name in zip(ops.LIF.outputs[1:], node.output[1:]) if name]
    if extra:
        raise NodeError(view.name, f"connected ports {', '.join(extra)}: BiMap's LIF takes only its current and gives "
                                   f"only its spikes (every window starts at v_init; the state stays in the chip)")


def _window_length(model: onnx.ModelProto) -> int:
    """T: the steps of the model's A2S nodes (1 for an ANN)."""
    steps = {ops.A2S.view(node).attrs["steps"] for node in model.graph.node
             if node.domain == ops.DOMAIN and node.op_type == "A2S"}
    if len(steps) > 1:
        raise ModelError(f"the A2S nodes code different numbers of steps ({sorted(steps)}); BiMap runs one window")
    initializers = {init.name for init in model.graph.initializer}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in initializers and dims and dims[0].dim_param == "T":
            raise ModelError(f"graph input {vi.name!r} is time-major: the export takes the window length and the "
                             f"per-step input from an A2S node")
    return steps.pop() if steps else 1


def _static_shapes(model: onnx.ModelProto, batch: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape with the graph inputs' sample axis set to ``batch``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    initializers = {init.name for init in probe.graph.initializer}
    for vi in probe.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            raise ModelError(f"graph input {vi.name!r} has no shape")
        dims[0].Clear()
        dims[0].dim_value = batch
    del probe.graph.value_info[:]
    for vi in probe.graph.output:
        vi.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, HnnxError) as exc:
        raise ModelError(f"shape inference with {batch} samples failed: {str(exc).strip().splitlines()[0]}") from None
    shapes = {name: tuple(values.shape) for name, values in
              ((init.name, numpy_helper.to_array(init)) for init in model.graph.initializer)}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = vi.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tensor.shape.dim)
    return shapes


def _integer_cast(node: onnx.NodeProto) -> bool:
    return helper.get_attribute_value(_attribute(node, "to")) in (TensorProto.INT8, TensorProto.INT32)


def _attribute(node: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    for attr in node.attribute:
        if attr.name == name:
            return attr
    raise NodeError(_label(node), f"{node.op_type} has no attribute {name!r}")


def _plain(attrs: dict[str, Any]) -> dict[str, Any]:
    """Resolved attributes without the absent ones (JSON-ready)."""
    return {key: value for key, value in attrs.items() if value is not None}


def _quantization_text(quantization: dict[str, Any] | None) -> str:
    if not quantization:
        return ""
    return f" (QuantizeLinear, scale {quantization['scale']:g}, zero point {quantization['zero_point']})"


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({', '.join(node.output)})"
