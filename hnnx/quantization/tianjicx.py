"""The ``tianjicx`` target: shift-only integer graphs for ANN, SNN and hybrid models.

Numerics (the HNN framework's scheme, with per-edge ranges instead of one global range):

* **ANN layers** (Conv, Gemm, MatMul + bias) take int8 activations ``X`` with a real value
  ``X·s_in``. The input scale is folded into the weights, ``w_eff = w·s_in``, which are
  quantized with a power-of-two scale: ``W = clamp(round(w_eff·2^f), −128, 127)``, ``f`` the
  multiple of ``bit_shift_unit`` on either side of ``log2(127/absmax)`` with the smaller
  weight error (HNN's rule rounds up from ``frac(t) ≥ 0.75`` and may clamp a fifth of a
  kernel). The int32 accumulator ``Σ W·X + B`` (``B = round(b·2^f)``) has the real value
  ``acc·2^−f``. It is requantized to int8 by ``hnnx.Requantize`` (floor of a right shift) by
  the smallest multiple of ``bit_shift_unit`` whose range holds the calibrated one, rounding
  to nearest: the bias carries ``2^(shift−1)``, or an accumulator without one gets it as an
  int32 addend. A layer whose activation only synaptic layers, residual Adds and
  channel-wise Concats read also folds a factor ``c ∈ [1, 2^unit)`` into ``w_eff`` and its
  bias (real value ``acc·2^−f/c``) so that the int8 range fits the calibrated one; the
  readers' weights absorb ``1/c`` as they absorb any input scale, and layers meeting at an Add
  share one ``c`` (see ``TianjicxQuantizer._plan_range_fits``). A Concat read only by layers
  joins its int8 inputs on their own scales (the value's scale is then one per channel, which
  the readers fold into their weights). The last layer before a graph output keeps its int32
  accumulator.
* **SNN layers** (a synaptic layer whose output feeds an ``hnnx.LIF``) quantize ``w_eff``
  with ``σ = 128/absmax(w_eff)``; the int32 current is ``Σ W·X + round(b·σ)``, and the LIF
  runs in integer mode with every membrane constant scaled by ``σ`` and rounded (half to
  even), ``alpha``/``theta_alpha`` snapped to multiples of 1/256.
* **Hybrid units**: ``A2S`` (direct, rate) runs in integer mode on the int8 activation;
  ``S2A`` (rate, global) in integer mode returns spike counts whose scale ``1/K`` is folded
  into the next layer's weights (or into the output scale).
* Graph inputs are quantized by ``QuantizeLinear`` with a power-of-two scale from
  calibration; graph outputs are integers whose real value is ``value · scale``, the scale
  stored in the model's metadata (``hnnx.output_scale.<name>``).

Nodes outside this set run in float: their integer inputs are dequantized first, and they
are reported as excluded with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.errors import HnnxError, NodeError
from hnnx.ops.lif import state_range
from hnnx.quantization.common import (INT8, INT32, LAYER_OPS, SHAPE_OPS, LayerRecord, QuantizationTarget, Rewrite,
                                      Statistics, feeding_neuron, hnnx_node, label, op_label, view_of)


@dataclass
class QValue:
    """An integer tensor of the new graph standing for a float tensor: ``real = value · scale``.

    ``kind``: ``int8`` (activation), ``acc`` (int32 accumulator), ``spike`` (0/1),
    ``count`` (int32 spike counts) or ``current`` (int32 synaptic current of an SNN layer).
    In the fake-quant form ``tensor`` is float and holds ``value · fake``, exactly.

    ``scale`` is a vector ``[C]`` (one per channel, axis 1) after a channel-wise ``Concat`` of
    inputs with different scales; such a value reaches only ops that take a scale per channel
    (see :meth:`TianjicxQuantizer._takes_channel_scales`).
    """

    tensor: gs.Variable
    kind: str
    scale: float | np.ndarray
    fake: float = 1.0  # fake-quant form: the float tensor holds value · fake (a power of two)

    @property
    def per_channel(self) -> bool:
        return np.ndim(self.scale) > 0


@dataclass
class TianjicxQuantizer:
    """Rewrites a preprocessed float graph into the integer ``tianjicx`` graph.

    ``absmax(name)``: the calibrated clip threshold of float tensor ``name``;
    ``bit_shift_unit``: shifts and weight exponents are multiples of it (2 on TianjicX);
    ``fakequant``: emit the float fake-quant form (QuantizeLinear/DequantizeLinear weights,
    floor fake-quantization of activations) whose tensors equal the integer graph's times a
    power of two per tensor, instead of the integer graph; ``spiking_only``: leave ANN
    layers in float (for another target to quantize) and quantize only the spiking parts.
    """

    graph: gs.Graph
    absmax: Callable[[str], float]
    bit_shift_unit: int = 2
    excluded_names: frozenset[str] = frozenset()
    fakequant: bool = False
    spiking_only: bool = False
    membrane_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    values: dict[str, QValue] = field(default_factory=dict)
    records: list[LayerRecord] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    output_scales: dict[str, float] = field(default_factory=dict)
    _consumed: set[int] = field(default_factory=set)
    _requantized: dict[str, QValue] = field(default_factory=dict)
    _biases: dict[str, tuple[gs.Constant, float]] = field(default_factory=dict)
    """A layer's bias constant (and its value per unit) by the accumulator it is added to: a
    requantization of that accumulator folds its rounding offset into it."""
    _fits: dict[str, float] = field(default_factory=dict)
    """The range fit of each ANN layer that has one, by its result tensor (see :meth:`_plan_range_fits`)."""
    _dequantized_tensors: dict[tuple[str, str], gs.Variable] = field(default_factory=dict)
    _ranks: dict[str, int] = field(default_factory=dict)
    """The rank of each float tensor of known shape."""
    _integer_casts: dict[tuple[str, str], gs.Variable] = field(default_factory=dict)
    """The integer tensor already made of (value tensor, dtype): a value used by several ops (a
    DenseNet block output feeding every later Concat) is cast once, under one name."""

    # ------------------------------------------------------------------ driver
    def run(self) -> Rewrite:
        """Rewrite the graph in place; returns what was done."""
        graph = self.graph
        graph.toposort()
        self._ranks = {name: len(t.shape) for name, t in graph.tensors().items() if t.shape is not None}
        self._plan_range_fits()
        for node in list(graph.nodes):
            if id(node) in self._consumed:
                continue
            if label(node) in self.excluded_names:
                self._float_island(node, "excluded by the user")
                continue
            if self.spiking_only and node.domain != ops.DOMAIN and not any(t.name in self.values
                                                                           for t in node.inputs):
                continue  # float part, left to the other target
            handler = self._handler(node)
            if handler is None:
                self._float_island(node, f"{op_label(node)} has no tianjicx integer form")
                continue
            try:
                handler(node)
            except _LeftToOtherTarget:
                self._float_island(node, None)
            except _Unsupported as reason:
                self._float_island(node, str(reason))
        self._finish_outputs()
        graph.cleanup().toposort()
        # An accumulator is compared where it became int8: its bias holds the requantization's
        # rounding half-step, so the int32 tensor itself sits half a step off the float one.
        chosen = {name: self._requantized.get(name, value) for name, value in self.values.items()}
        chosen = {name: value for name, value in chosen.items() if not value.per_channel}
        tensors = {name: (value.tensor.name, value.scale / value.fake if self.fakequant else value.scale)
                   for name, value in chosen.items()}
        return Rewrite(self.records, self.excluded, self.output_scales, tensors)

    def _handler(self, node: gs.Node) -> Callable[[gs.Node], None] | None:
        if node.domain == ops.DOMAIN:
            if ops.declaration(node.op).neuron:
                return self._neuron
            return {"A2S": self._a2s, "S2A": self._s2a}.get(node.op)
        if node.domain not in (None, "", "ai.onnx"):
            return None
        if node.op in LAYER_OPS:
            return self._layer
        if node.op in SHAPE_OPS:
            return self._pass_through
        return {"Relu": self._relu, "MaxPool": self._maxpool, "Mul": self._mul, "Add": self._add, "Sum": self._add,
                "Concat": self._concat, "AveragePool": self._average_pool, "GlobalAveragePool": self._average_pool,
                "Clip": self._clip}.get(node.op)

    # ------------------------------------------------------------------ inputs
    def _quantized(self, tensor: gs.Tensor, kinds: tuple[str, ...] = ("int8", "spike", "count"),
                   channel_scales: bool = False) -> QValue:
        """``tensor`` as an integer value of one of ``kinds``, quantizing a float tensor to int8;
        ``channel_scales``: the caller takes a value with a scale per channel."""
        value = self.values.get(tensor.name)
        if value is None:
            if isinstance(tensor, gs.Constant):
                raise _Unsupported(f"constant input {tensor.name!r}")
            value = self._quantize_input(tensor)
        if value.kind == "acc" and "int8" in kinds:
            value = self._requantized.get(tensor.name) or self._requantize(value, tensor.name)
        if value.kind not in kinds:
            raise _Unsupported(f"input {tensor.name!r} is a {value.kind} tensor")
        if value.per_channel and not channel_scales:
            raise _Unsupported(f"input {tensor.name!r} has a scale per channel")
        return value

    def _quantize_input(self, tensor: gs.Variable) -> QValue:
        exponent = math.floor(math.log2(127.0 / self.absmax(tensor.name)))
        scale = 2.0 ** -exponent
        scale_const = _const(f"{tensor.name}.q_scale", np.float32(scale))
        out = self._variable(f"{tensor.name}.q", np.int8)
        self._node("QuantizeLinear", [tensor, scale_const, _const(f"{tensor.name}.q_zero", np.int8(0))], [out])
        if self.fakequant:
            real = self._variable(f"{tensor.name}.fq", np.float32)
            self._node("DequantizeLinear", [out, scale_const], [real])
            out = real
        value = QValue(out, "int8", scale, scale)
        self.values[tensor.name] = value
        self.records.append(LayerRecord(tensor.name, "QuantizeLinear", "input", {"exponent": exponent}))
        return value

    def _requantize(self, value: QValue, name: str) -> QValue:
        """int32 accumulator → int8 by a right shift (floor), chosen from the calibrated range.

        The shift is the smallest multiple of ``bit_shift_unit`` whose int8 range holds the
        calibrated ``absmax``; an accumulator whose scale is not a power of two (an average over
        a window of k values carries ``1/k``, a layer its range fit) keeps that factor in the
        int8 scale, and the next layer's weights absorb it.
        """
        unit = self.bit_shift_unit
        # The scale may carry a factor that is no power of two: a window's 1/k, a layer's range fit.
        shift = max(0, _grid_step(self.absmax(name) / (127.0 * value.scale), unit))
        if shift > 30:
            raise _Unsupported(f"accumulator {name!r} needs a shift of {shift} bits (at most 30)")
        # floor((acc + 2^(shift−1)) / 2^shift) rounds to nearest where floor alone loses half a step
        # on average (a bias every later layer inherits, which no average pooling removes): a
        # layer's bias takes the offset for free, any other accumulator (a layer without bias, a
        # residual sum, an aligned concat, a pooling window's sum) gets it as one more int32 addend.
        bias = self._biases.pop(value.tensor.name, None)
        if bias is not None and shift > 0:
            constant, per_unit = bias
            rounded = constant.values.astype(np.float64) + 2.0 ** (shift - 1) * per_unit
            constant.values = (rounded.astype(np.float32) if self.fakequant
                               else np.clip(rounded, *INT32).astype(np.int32))
        elif shift > 0:
            offset = (np.array(2.0 ** (shift - 1) * value.fake, np.float32) if self.fakequant
                      else np.array(2 ** (shift - 1), np.int32))
            summed = self._variable(f"{name}.rounding", np.float32 if self.fakequant else np.int32)
            self._node("Add", [value.tensor, _const(f"{name}.half_step", offset)], [summed])
            value = QValue(summed, value.kind, value.scale, value.fake)
        scale, fake = value.scale * 2.0**shift, value.fake * 2.0**shift
        if self.fakequant:  # floor(acc / 2^shift), clamped, held times a power of two: exact
            scaled = self._float_op("Mul", [value.tensor, _const(f"{name}.fq_up", np.float32(1.0 / fake))],
                                    f"{name}.fq_scaled")
            low, high = (_const(f"{name}.fq_{side}", np.float32(v)) for side, v in zip(("lo", "hi"), INT8))
            clipped = self._float_op("Clip", [self._float_op("Floor", [scaled], f"{name}.fq_floor"), low, high],
                                     f"{name}.fq_clip")
            out = self._float_op("Mul", [clipped, _const(f"{name}.fq_down", np.float32(fake))], f"{name}.fq")
        else:
            out = self._variable(f"{name}.i8", np.int8)
            self.graph.nodes.append(hnnx_node("Requantize", [value.tensor], [out], f"{name}.requantize", shift=shift))
        result = QValue(out, "int8", scale, fake)
        self._requantized[name] = result
        exponent = -math.log2(scale)
        self.records.append(LayerRecord(name, "Requantize", "requantize",
                                        {"shift": shift, "exponent": round(exponent) if exponent.is_integer()
                                         else round(exponent, 4)}))
        return result

    # ------------------------------------------------------------------ synaptic layers
    def _layer(self, node: gs.Node) -> None:
        if self.spiking_only and feeding_neuron(node.outputs[0]) is None and not (
                node.op == "MatMul" and len(node.outputs[0].outputs) == 1
                and feeding_neuron(node.outputs[0].outputs[0].outputs[0]) is not None):
            raise _LeftToOtherTarget()
        x = self._quantized(node.inputs[0], channel_scales=True)
        weight, bias, last = self._layer_parameters(node)
        conv_attrs = {k: v for k, v in node.attrs.items() if k in ("auto_pad", "dilations", "group", "kernel_shape",
                                                                      "pads", "strides")}
        self._synaptic(node, x, weight, bias, last, "Conv" if node.op == "Conv" else "MatMul", conv_attrs)

    def _synaptic(self, node: gs.Node, x: QValue, weight: np.ndarray, bias: np.ndarray | None, last: gs.Node,
                  op: str, conv_attrs: dict[str, Any], affine: bool = False) -> None:
        """Quantize a synaptic layer ``op`` (``Conv`` or ``MatMul``; weights in that op's layout) whose
        result is ``last``'s output: int8 weights, int32 accumulator (ANN) or current (SNN).

        ``affine``: the layer is an unfolded BatchNorm's per-channel factor (see
        :meth:`_weight_exponent`). An input with a scale per channel folds it along the weight's
        input-channel axis."""
        neuron = feeding_neuron(last.outputs[0])
        fit = 1.0 if neuron is not None else self._range_fit(last.outputs[0])
        in_scale = x.scale
        if x.per_channel:
            axis = _input_channel_axis(op, weight, conv_attrs)
            if axis is None:
                raise _Unsupported("a grouped convolution reads a tensor with a scale per channel")
            in_scale = _along(x.scale, axis, weight.ndim)
        weight_eff = weight * in_scale * fit  # fold the input's scale (and the range fit) into the weights
        absmax = max(float(np.abs(weight_eff).max()), 1e-30)
        if neuron is not None:
            sigma = 128.0 / absmax
            multiplier, out_kind, out_scale, out_fake = sigma, "current", 1.0 / sigma, 1.0
            # The current saturates to the neuron's state range on entry: the bias can hold no more.
            state_range = ops.LIF.integer_state_range(view_of(neuron))  # every neuron's state_bits
            b_int = None if bias is None else np.clip(np.round(bias * sigma), *state_range).astype(np.int32)
            details: dict[str, Any] = {"weight_scale": sigma}
        else:
            exponent = self._weight_exponent(weight_eff, affine)
            multiplier, out_kind, out_scale = 2.0**exponent, "acc", 2.0**-exponent / fit
            out_fake = 2.0**-exponent  # the fake-quant form holds the integers times a power of two
            b_int = None if bias is None else np.clip(np.round(bias * fit * 2.0**exponent), *INT32).astype(np.int32)
            details = {"weight_exponent": exponent}
            if fit != 1.0:
                details["range_fit"] = round(fit, 6)
        # W = clamp(round(w_src / q)) with a power-of-two q, in float32: the integer graph stores W,
        # the fake-quant graph computes it with QuantizeLinear — the same operation.
        q = out_fake / x.fake
        w_src = (weight_eff * multiplier * q).astype(np.float32)
        w_int = np.clip(np.round(w_src / np.float32(q)), *INT8).astype(np.int8)
        details["saturated_weights"] = int(np.sum(np.abs(np.round(w_src / np.float32(q))) > INT8[1]))
        out = self._emit_layer(node, op, conv_attrs, x, w_src, np.float32(q), w_int, b_int, out_fake)
        self.values[last.outputs[0].name] = QValue(out, out_kind, out_scale, out_fake)
        self.records.append(LayerRecord(label(node), node.op, "snn" if out_kind == "current" else "ann", details))

    def _weight_exponent(self, weight_eff: np.ndarray, affine: bool) -> int:
        """The exponent ``f`` of an ANN layer's int8 weights ``clamp(round(w_eff·2^f))``, a multiple
        of ``bit_shift_unit`` (activation scales then stay ``2^(unit·k)`` apart, as the chip's
        alignment shifts need).

        An affine's factors take the largest exponent that clamps none (each factor is a channel's
        whole gain). Other layers take the exponent on either side of ``log2(127/absmax)`` with
        the smaller squared weight error, where HNN's rule rounds up from a 0.75 fraction and can
        clamp up to 30 % of a uniform kernel's weights.
        """
        unit = self.bit_shift_unit
        below = -_grid_step(max(float(np.abs(weight_eff).max()), 1e-30) / 127.0, unit)  # the largest clamping none
        if affine:
            return below
        return min((below, below + unit), key=lambda f: _weight_error(weight_eff, f))

    def _calibrated(self, name: str) -> float | None:
        try:
            return self.absmax(name)
        except HnnxError:  # a tensor calibration did not see
            return None

    def _range_fit(self, result: gs.Variable) -> float:
        """The factor ``c ∈ [1, 2^unit)`` an ANN layer folds into its weights and bias (real value of
        its accumulator ``acc·2^−f/c``): 1 where the plan gave it none."""
        return self._fits.get(result.name, 1.0)

    def _plan_range_fits(self) -> None:
        """Choose the range fit ``c`` of every ANN layer whose int8 activation only layers, residual
        Adds and channel-wise Concats read (through ReLU, MaxPool, Clip, pooling and shape ops).

        Shifts alone reach int8 ranges ``2^unit`` apart (up to two bits of the grid lost on
        TianjicX). A factor ``c`` in a layer's weights moves its scales off the powers of two, and
        the layers that read it absorb ``1/c`` with the rest of their input scale. Activations
        that meet at an Add must stay a power of two apart to be aligned by shifts:
        such layers form one group with one ``c``, the one that wastes the least int8 range over
        the group's calibrated tensors. A channel-wise Concat joins inputs of any scales, so each
        of its inputs keeps its own ``c``. A group touching anything else (another Concat, a graph
        output, a neuron, an input, a scalar Mul) keeps ``c = 1``.
        """
        if self.spiking_only:
            return  # the ANN layers are another target's
        parent: dict[str, str] = {}

        def find(key: str) -> str:
            while parent.setdefault(key, key) != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        fixed: set[str] = set()
        layers: list[str] = []
        for node in self.graph.nodes:
            kind = self._scale_kind(node)
            if kind is None:
                continue
            key = node.outputs[0].name
            find(key)
            if kind == "layer":
                layers.append(key)
                if feeding_neuron(node.outputs[0]) is not None or label(node) in self.excluded_names:
                    fixed.add(key)
            else:  # a join: its operands' sources share its scale
                for operand in node.inputs:
                    if isinstance(operand, gs.Constant):
                        continue
                    source = self._scale_source(operand)
                    if source is None:
                        fixed.add(key)
                    else:
                        parent[find(source)] = find(key)
            if not self._read_by_layers_and_joins(node.outputs[0]):
                fixed.add(key)
        groups: dict[str, list[str]] = {}
        for key in parent:
            groups.setdefault(find(key), []).append(key)
        for members in groups.values():
            if any(key in fixed for key in members) or not any(key in layers for key in members):
                continue
            ranges = [self._calibrated(key) for key in members]
            if None in ranges:
                continue  # a tensor without calibration: no fit
            fit = self._least_wasteful_fit(ranges)
            self._fits.update({key: fit for key in members if key in layers and fit != 1.0})

    def _least_wasteful_fit(self, ranges: list[float]) -> float:
        """The ``c ∈ [1, 2^unit)`` minimising the int8 range wasted, ``Σ log2(127·scale/absmax)``, over
        tensors of calibrated ``ranges`` whose scales are ``2^(unit·k)/c`` (each the smallest that holds it)."""
        unit = self.bit_shift_unit

        def exact(absmax: float) -> float:  # the c at which this tensor wastes nothing
            return 127.0 * 2.0 ** _grid_step(absmax / 127.0, unit) / absmax

        def waste(c: float) -> float:
            return sum(_grid_step(a * c / 127.0, unit) - math.log2(a * c / 127.0) for a in ranges)

        return min((exact(a) for a in ranges), key=waste)

    def _scale_kind(self, node: gs.Node) -> str | None:
        """``"layer"`` for a node whose output is an ANN layer's result (a Conv or Gemm, a MatMul or
        per-channel Mul with or without its bias Add), ``"join"`` for a residual Add, else None (a
        Concat too: it does not tie its inputs' scales — a channel-wise one keeps each input's, an
        aligned one requantizes their int32 join)."""
        if node.domain not in (None, "", "ai.onnx"):
            return None
        if self._synaptic_node(node):
            return "layer" if node.op in ("Conv", "Gemm") or self._bias_add(node) is None else None
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if node.op in ("Add", "Sum") and not constants:
            return "join"
        if node.op == "Add" and len(constants) == 1:
            producer = next(t for t in node.inputs if not isinstance(t, gs.Constant)).inputs
            if producer and producer[0].op in ("MatMul", "Mul") and self._synaptic_node(producer[0]) \
                    and self._bias_add(producer[0]) is not None:
                return "layer"
        return None

    @staticmethod
    def _synaptic_node(node: gs.Node) -> bool:
        """Whether ``node`` computes an ANN layer from its data input: a Conv, Gemm or MatMul with
        constant weights, or a Mul by one constant factor per channel (an unfolded BatchNorm)."""
        if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
            return False
        return node.op in LAYER_OPS or (node.op == "Mul" and node.inputs[1].values.size > 1)

    def _bias_add(self, node: gs.Node) -> tuple[gs.Node, gs.Constant] | None:
        """The constant ``Add`` a MatMul or per-channel Mul takes as its bias, and that constant:
        the only reader of ``node``'s output, which is no graph output."""
        consumers = node.outputs[0].outputs
        if len(consumers) != 1 or consumers[0].op != "Add" or self._is_output(node.outputs[0]):
            return None
        other = [t for t in consumers[0].inputs if t is not node.outputs[0]]
        if len(other) != 1 or not isinstance(other[0], gs.Constant):
            return None
        return consumers[0], other[0]

    def _scale_source(self, tensor: gs.Tensor) -> str | None:
        """The layer or join output whose scale ``tensor`` carries (up through ReLU, MaxPool, Clip and
        shape ops), or None for any other source."""
        while tensor.inputs and tensor.inputs[0].op in _SCALE_KEEPING:
            tensor = tensor.inputs[0].inputs[0]
        if not tensor.inputs or self._scale_kind(tensor.inputs[0]) is None:
            return None
        return tensor.name

    def _read_by_layers_and_joins(self, result: gs.Variable) -> bool:
        """Whether only layers (as their data input), joins and channel-wise Concats read ``result``,
        through ReLU, MaxPool, Clip, pooling and shape ops (pooling carries any factor to the layer
        after it)."""
        tensors = [(result, False)]  # (tensor, reached through a pooling)
        for tensor, pooled in tensors:
            if self._is_output(tensor) or not tensor.outputs:
                return False
            for consumer in tensor.outputs:
                kind = self._scale_kind(consumer)
                if consumer.op in _SCALE_KEEPING and consumer.inputs[0] is tensor:
                    tensors.append((consumer.outputs[0], pooled))
                elif consumer.op in ("AveragePool", "GlobalAveragePool") and consumer.inputs[0] is tensor:
                    tensors.append((consumer.outputs[0], True))
                elif consumer.op == "Add" and kind == "layer" and not pooled:
                    tensors.append((consumer.outputs[0], pooled))  # the layer's own bias
                elif (kind == "join" and not pooled) or (self._synaptic_node(consumer) and consumer.inputs[0] is tensor):
                    continue  # a join after a pooling sees the window's 1/k: it is not in the group
                elif consumer.op == "Concat" and self._takes_channel_scales(consumer.outputs[0]):
                    continue  # a channel-wise join: each input keeps its own scale
                else:
                    return False
        return True

    def _takes_channel_scales(self, tensor: gs.Variable) -> bool:
        """Whether every reader of ``tensor`` (through ReLU, MaxPool and channel-axis Concats) folds
        a scale per input channel into its weights, so that ``tensor`` may carry one: a Conv (not
        grouped, or depthwise), a Gemm or MatMul reading a matrix, an unfolded BatchNorm's
        per-channel Mul. A Concat of such a tensor then joins int8 inputs of different scales as
        they are, without an int32 alignment and a requantization (DenseNet's blocks, Inception's
        modules)."""
        if self.spiking_only:
            return False
        pending, seen = [tensor], set()
        for current in pending:
            if current.name in seen:
                continue
            seen.add(current.name)
            rank = len(current.shape) if current.shape is not None else 0
            if self._is_output(current) or not current.outputs or rank < 2:
                return False
            for consumer in current.outputs:
                if label(consumer) in self.excluded_names or consumer.domain not in (None, "", "ai.onnx"):
                    return False
                if consumer.op == "Concat":
                    if consumer.attrs.get("axis", 1) % rank != 1:
                        return False
                    pending.append(consumer.outputs[0])
                elif consumer.inputs[0] is not current:
                    return False
                elif consumer.op == "Relu" or (consumer.op == "MaxPool" and len(consumer.outputs) == 1):
                    pending.append(consumer.outputs[0])
                elif not self._folds_channel_scales(consumer, rank):
                    return False
        return True

    @staticmethod
    def _folds_channel_scales(node: gs.Node, rank: int) -> bool:
        """Whether layer ``node`` folds a scale per channel of its (rank-``rank``) input into its weights."""
        if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
            return False
        weight = node.inputs[1].values
        if node.op == "Conv":
            return _input_channel_axis("Conv", weight, node.attrs) is not None
        if node.op == "Gemm":
            return rank == 2 and not node.attrs.get("transA", 0)
        if node.op == "MatMul":
            return rank == 2 and weight.ndim == 2
        if node.op == "Mul":
            return rank >= 3 and _channel_vector(weight, rank) is not None and weight.size > 1
        return False

    def _is_output(self, tensor: gs.Tensor) -> bool:
        return any(tensor is out for out in self.graph.outputs)

    def _layer_parameters(self, node: gs.Node) -> tuple[np.ndarray, np.ndarray | None, gs.Node]:
        """Float weight in the integer op's layout, bias, and the node whose output ends the layer."""
        weight_tensor = node.inputs[1]
        if not isinstance(weight_tensor, gs.Constant):
            raise _Unsupported("weight is not a constant")
        w = weight_tensor.values.astype(np.float64)
        bias = None
        last = node
        if node.op == "Conv":
            if len(node.inputs) > 2:
                bias = _constant_values(node.inputs[2], "bias")
        elif node.op == "Gemm":
            if node.attrs.get("transA", 0):
                raise _Unsupported("Gemm with transA")
            w = (w.T if node.attrs.get("transB", 0) else w) * float(node.attrs.get("alpha", 1.0))
            if len(node.inputs) > 2:
                bias = _constant_values(node.inputs[2], "bias") * float(node.attrs.get("beta", 1.0))
        else:  # MatMul, maybe followed by a constant bias Add
            if w.ndim != 2:
                raise _Unsupported("MatMul weight is not a matrix")
            found = self._bias_add(node)
            if found is not None and found[1].values.size == w.shape[1]:
                add, constant = found
                bias, last = constant.values.astype(np.float64).reshape(-1), add
                self._consumed.add(id(add))
        return w, bias, last

    def _emit_layer(self, node: gs.Node, op: str, conv_attrs: dict[str, Any], x: QValue, w_src: np.ndarray,
                    q: np.float32, w_int: np.ndarray, b_int: np.ndarray | None, out_fake: float) -> gs.Variable:
        base = label(node)
        bias_shape = (1, -1) + (1,) * (w_int.ndim - 2) if op == "Conv" else (-1,)
        if self.fakequant:
            q_scale, zero = _const(f"{base}.weight_scale", q), _const(f"{base}.weight_zero", np.int8(0))
            w_q = self._variable(f"{base}.weight_q", np.int8)
            self._node("QuantizeLinear", [_const(f"{base}.weight", w_src), q_scale, zero], [w_q])
            weight = self._float_op("DequantizeLinear", [w_q, q_scale, zero], f"{base}.weight_fq")
            acc = self._float_op(op, [x.tensor, weight], f"{base}.acc", conv_attrs if op == "Conv" else None)
            if b_int is None:
                return acc
            bias = _const(f"{base}.bias_fq", (b_int.astype(np.float64) * out_fake).astype(np.float32).reshape(bias_shape))
            out = self._float_op("Add", [acc, bias], f"{base}.acc_bias")
            self._biases[out.name] = (bias, out_fake)
            return out
        x8 = self._as_int8(x, node.inputs[0].name)
        acc = self._variable(f"{base}.acc", np.int32)
        if op == "Conv":
            self._node("ConvInteger", [x8, _const(f"{base}.weight_q", w_int)], [acc], conv_attrs)
        else:
            self._node("MatMulInteger", [x8, _const(f"{base}.weight_q", w_int)], [acc])
        if b_int is None:
            return acc
        out = self._variable(f"{base}.acc_bias", np.int32)
        bias = _const(f"{base}.bias_q", b_int.reshape(bias_shape))
        self._node("Add", [acc, bias], [out])
        self._biases[out.name] = (bias, 1.0)
        return out

    def _as_int8(self, value: QValue, name: str) -> gs.Variable:
        if value.tensor.dtype == np.int8:
            return value.tensor
        if value.kind == "count" and round(1.0 / value.scale) > INT8[1]:
            raise _Unsupported(f"spike counts {name!r} of up to {round(1.0 / value.scale)} do not fit int8 "
                               f"(use windows of at most 127 steps)")
        out = self._variable(f"{name}.i8", np.int8)
        self._node("Cast", [value.tensor], [out], {"to": onnx.TensorProto.INT8})
        return out

    # ------------------------------------------------------------------ element-wise and shape ops
    def _relu(self, node: gs.Node) -> None:
        x = self._quantized(node.inputs[0], ("int8", "acc", "count", "current"), channel_scales=True)
        out = self._variable(f"{node.outputs[0].name}.q", x.tensor.dtype)
        self._node("Relu", [x.tensor], [out])
        self.values[node.outputs[0].name] = QValue(out, x.kind, x.scale, x.fake)

    def _maxpool(self, node: gs.Node) -> None:
        x = self._quantized(node.inputs[0], ("int8",), channel_scales=True)
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            raise _Unsupported("MaxPool indices are used")
        out = self._variable(f"{node.outputs[0].name}.q", x.tensor.dtype)
        self._node("MaxPool", [x.tensor], [out], dict(node.attrs))
        self.values[node.outputs[0].name] = QValue(out, "int8", x.scale, x.fake)

    def _pass_through(self, node: gs.Node) -> None:
        x = self.values.get(node.inputs[0].name)
        if x is None:
            raise _LeftToOtherTarget()  # a float tensor reshaped: nothing to quantize
        if x.per_channel:
            raise _Unsupported(f"input {node.inputs[0].name!r} has a scale per channel")
        out = self._variable(f"{node.outputs[0].name}.q", x.tensor.dtype)
        self._node(node.op, [x.tensor, *node.inputs[1:]], [out], dict(node.attrs))
        self.values[node.outputs[0].name] = QValue(out, x.kind, x.scale, x.fake)
        if x.tensor.name in self._biases and len(x.tensor.outputs) == 1:
            # A layer's accumulator flattened before its requantization: the rounding half-step
            # (the same for every element) still goes into the layer's bias.
            self._biases[out.name] = self._biases.pop(x.tensor.name)

    def _scale_by_constant(self, node: gs.Node) -> None:
        quantized = [t for t in node.inputs if t.name in self.values]
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if len(quantized) != 1 or len(constants) != 1 or constants[0].values.size != 1:
            raise _Unsupported("Mul of two tensors")
        factor = float(constants[0].values.reshape(-1)[0])
        x = self.values[quantized[0].name]
        if factor <= 0:
            raise _Unsupported("Mul by a non-positive constant")
        self.values[node.outputs[0].name] = QValue(x.tensor, x.kind, x.scale * factor, x.fake)

    def _mul(self, node: gs.Node) -> None:
        """A scalar factor moves into the scale; a per-channel factor (an unfolded BatchNorm's
        ``x·a + b``) becomes a depthwise 1×1 layer with int8 factors and an int32 offset."""
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if len(constants) == 1 and constants[0].values.size == 1:
            self._scale_by_constant(node)
            return
        variables = [t for t in node.inputs if not isinstance(t, gs.Constant)]
        x_tensor = variables[0] if len(variables) == 1 else None
        rank = len(x_tensor.shape) if x_tensor is not None and x_tensor.shape is not None else 0
        if x_tensor is None or len(constants) != 1 or rank < 3:
            raise _Unsupported("Mul of two tensors" if len(variables) > 1 else "Mul by a non-channel constant")
        channels = _channel_vector(constants[0].values, rank)
        if channels is None or x_tensor.shape[1] != channels.size:
            raise _Unsupported("Mul by a constant that is not one factor per channel")
        x = self._quantized(x_tensor, channel_scales=True)
        last, bias = node, None
        found = self._bias_add(node)
        offsets = _channel_vector(found[1].values, rank) if found is not None else None
        if offsets is not None and offsets.size == channels.size:
            bias, last = offsets, found[0]
            self._consumed.add(id(last))
        weight = channels.reshape(-1, 1, *([1] * (rank - 2)))
        self._synaptic(node, x, weight, bias, last, "Conv",
                       {"group": int(channels.size), "kernel_shape": [1] * (rank - 2)}, affine=True)

    def _add(self, node: gs.Node) -> None:
        """Residual ``Add``/``Sum``: int8 operands aligned by left shifts to the finest scale and
        summed in int32 (every activation scale is a power of two apart from the others, so the
        sum is exact); a constant operand is rounded onto that scale."""
        variables = [t for t in node.inputs if not isinstance(t, gs.Constant)]
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if not variables:
            raise _Unsupported("Add of constants")
        operands = [self._quantized(t) for t in variables]
        finest = min(operands, key=lambda v: v.scale)
        name = node.outputs[0].name
        terms = [self._aligned(v, t.name, finest, name) for v, t in zip(operands, variables)]
        for index, constant in enumerate(constants):
            units = np.clip(np.round(constant.values.astype(np.float64) / finest.scale), *INT32)
            value = (units * finest.fake).astype(np.float32) if self.fakequant else units.astype(np.int32)
            terms.append(_const(f"{name}.term{index}_q", value))
        total = terms[0]
        for index, term in enumerate(terms[1:]):
            partial = self._variable(f"{name}.sum{index}", np.float32 if self.fakequant else np.int32)
            self._node("Add", [total, term], [partial])
            total = partial
        self.values[name] = QValue(total, "acc", finest.scale, finest.fake)
        self.records.append(LayerRecord(label(node), node.op, "add", {"operands": len(terms),
                                                                       "shifts": [_shift_between(v, finest)
                                                                                  for v in operands]}))

    def _concat(self, node: gs.Node) -> None:
        """``Concat``: int8 inputs of one scale are joined as they are; so are int8 inputs of
        different scales when only layers read the join (a scale per channel, see
        :meth:`_takes_channel_scales`); other inputs of different scales are brought to the finest
        one (int32, left shifts) and the result requantized where used."""
        if any(isinstance(t, gs.Constant) for t in node.inputs):
            raise _Unsupported("Concat with a constant input")
        operands = [self._quantized(t, channel_scales=True) for t in node.inputs]
        name = node.outputs[0].name
        same = all((v.kind, v.scale, v.fake, v.tensor.dtype) == (operands[0].kind, operands[0].scale,
                                                                   operands[0].fake, operands[0].tensor.dtype)
                   for v in operands)
        channels = [t.shape[1] if t.shape is not None and len(t.shape) > 1 else None for t in node.inputs]
        if same:
            parts, kind, finest = [v.tensor for v in operands], operands[0].kind, operands[0]
        elif (all(v.kind == "int8" for v in operands) and all(isinstance(c, int) for c in channels)
              and self._takes_channel_scales(node.outputs[0])):
            # Each input keeps its scale: the readers fold one per channel into their weights. The
            # fake-quant form holds every input's integers times one power of two (exact rescaling).
            scale = _compact(np.concatenate([np.broadcast_to(np.asarray(v.scale, np.float64), (c,))
                                             for v, c in zip(operands, channels)]))
            fake = min(v.fake for v in operands)
            parts = [v.tensor if v.fake == fake or not self.fakequant else self._float_op(
                "Mul", [v.tensor, _const(f"{t.name}.{name}.rehold", np.float32(fake / v.fake))], f"{t.name}.{name}.held")
                     for v, t in zip(operands, node.inputs)]
            out = self._variable(f"{name}.q", operands[0].tensor.dtype)
            self._node("Concat", parts, [out], {"axis": 1})
            self.values[name] = QValue(out, "int8", scale, fake)
            self.records.append(LayerRecord(label(node), "Concat", "concat", {"inputs": len(operands),
                                                                               "aligned": False, "channel_scales": True}))
            return
        else:
            finest = min(operands, key=lambda v: v.scale)
            parts = [self._aligned(v, t.name, finest, name) for v, t in zip(operands, node.inputs)]
            kind = "acc"
        out = self._variable(f"{name}.q", parts[0].dtype)
        self._node("Concat", parts, [out], {"axis": node.attrs.get("axis", 1)})
        self.values[name] = QValue(out, kind, finest.scale, finest.fake)
        self.records.append(LayerRecord(label(node), "Concat", "concat", {"inputs": len(parts), "aligned": not same}))

    def _average_pool(self, node: gs.Node) -> None:
        """Average pooling as an integer window sum (a depthwise all-ones ``ConvInteger``, or a
        ``ReduceSum`` for the global pool); the ``1/k`` of a k-value window stays in the scale."""
        x = self._quantized(node.inputs[0])
        shape = node.inputs[0].shape
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[1:]):
            raise _Unsupported("pooling over a tensor whose channel and spatial sizes are unknown")
        spatial = list(shape[2:])
        name = node.outputs[0].name
        if node.op == "GlobalAveragePool":
            window = math.prod(spatial)
            axes = _const(f"{name}.axes", np.arange(2, len(shape), dtype=np.int64))
            source = x.tensor if self.fakequant else self._to_int32(x, f"{node.inputs[0].name}.i32")
            total = self._variable(f"{name}.sum", np.float32 if self.fakequant else np.int32)
            self._node("ReduceSum", [source, axes], [total], {"keepdims": 1})
        else:
            attrs = dict(node.attrs)
            kernel = list(attrs.get("kernel_shape", []))
            pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
            if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
                raise _Unsupported("AveragePool with SAME padding")
            if any(pads) and not attrs.get("count_include_pad", 0):
                raise _Unsupported("padded AveragePool that divides border windows by fewer values "
                                   "(count_include_pad = 0)")
            if attrs.get("ceil_mode", 0):
                raise _Unsupported("AveragePool with ceil_mode (partial border windows)")
            window = math.prod(kernel)
            conv_attrs = {"group": int(shape[1]), "kernel_shape": kernel, "pads": pads,
                          "strides": list(attrs.get("strides", [1] * len(kernel)))}
            if "dilations" in attrs:
                conv_attrs["dilations"] = list(attrs["dilations"])
            ones = np.ones((int(shape[1]), 1, *kernel), np.int8)
            if self.fakequant:
                total = self._float_op("Conv", [x.tensor, _const(f"{name}.ones", ones.astype(np.float32))],
                                       f"{name}.sum", conv_attrs)
            else:
                total = self._variable(f"{name}.sum", np.int32)
                self._node("ConvInteger", [self._as_int8(x, node.inputs[0].name), _const(f"{name}.ones", ones)],
                           [total], conv_attrs)
        self.values[name] = QValue(total, "acc", x.scale / window, x.fake)
        self.records.append(LayerRecord(label(node), node.op, "pool", {"window": window}))

    def _clip(self, node: gs.Node) -> None:
        """``Clip`` (ReLU6 and the like) on the integers: the real bounds mapped inward onto the grid."""
        x = self._quantized(node.inputs[0], ("int8", "acc", "count", "spike"))
        bounds = []
        for index, attr, default in ((1, "min", -math.inf), (2, "max", math.inf)):
            given = node.inputs[index] if len(node.inputs) > index and node.inputs[index].name else None
            if given is not None and not isinstance(given, gs.Constant):
                raise _Unsupported("Clip with a computed bound")
            bounds.append(float(given.values) if given is not None else float(node.attrs.get(attr, default)))
        limits = INT8 if x.kind == "int8" else INT32  # by kind: the fake-quant form holds int8 values in float
        low = limits[0] if bounds[0] == -math.inf else max(limits[0], math.ceil(bounds[0] / x.scale - 1e-9))
        high = limits[1] if bounds[1] == math.inf else min(limits[1], math.floor(bounds[1] / x.scale + 1e-9))
        name = node.outputs[0].name
        dtype = x.tensor.dtype
        as_bound = (lambda v: np.float32(v * x.fake)) if self.fakequant else (lambda v: np.asarray(v, dtype))
        out = self._variable(f"{name}.q", dtype)
        self._node("Clip", [x.tensor, _const(f"{name}.lo", as_bound(low)), _const(f"{name}.hi", as_bound(high))],
                   [out])
        self.values[name] = QValue(out, x.kind, x.scale, x.fake)

    def _aligned(self, value: QValue, source: str, finest: QValue, user: str) -> gs.Variable:
        """``value`` on ``finest``'s scale for summing or joining: the int32 tensor times
        ``2^k`` (integer graph), or the float tensor times the power of two that makes it hold
        ``value · 2^k · finest.fake`` (fake-quant graph)."""
        shift = _shift_between(value, finest)
        if shift is None:
            raise _Unsupported(f"input {source!r}: its scale is not a power of two apart from the finest input's")
        if shift > 23:
            raise _Unsupported(f"input {source!r}: scales {shift} bits apart (at most 23)")
        if self.fakequant:
            factor = 2.0**shift * finest.fake / value.fake
            if factor == 1.0:
                return value.tensor
            return self._float_op("Mul", [value.tensor, _const(f"{source}.{user}.align", np.float32(factor))],
                                  f"{source}.{user}.aligned")
        wide = self._to_int32(value, f"{source}.i32")
        if shift == 0:
            return wide
        out = self._variable(f"{source}.{user}.aligned", np.int32)
        self._node("Mul", [wide, _const(f"{source}.{user}.align", np.int32(1 << shift))], [out])
        return out

    def _to_int32(self, value: QValue, name: str) -> gs.Variable:
        return self._to_integer(value, np.int32, name)

    # ------------------------------------------------------------------ spiking ops
    def _neuron(self, node: gs.Node) -> None:
        """A neuron (LIF, CubaLIF, LI, Integrator) in integer mode on its integer current: the
        declaration scales its constants by the current's ``σ``; a recurrent weight becomes
        ``round(W·σ)`` (int32)."""
        current = self.values.get(node.inputs[0].name)
        if current is None or current.kind != "current":
            raise _Unsupported("its input current does not come from a synaptic layer")
        declaration = ops.declaration(node.op)
        view = view_of(node)
        recurrent = next((i for i, port in enumerate(declaration.inputs) if port.name == "recurrent_weight"), None)
        states = [declaration.inputs[i].name for i in range(1, len(node.inputs))
                  if node.inputs[i].name and i != recurrent]
        if states:
            raise _Unsupported(f"initial-state inputs ({', '.join(states)}) are not quantized")
        if len(node.outputs) > 1:
            raise _Unsupported(f"state outputs ({', '.join(p.name for p in declaration.outputs[1:len(node.outputs)])}) "
                               f"are not quantized")
        if view.attrs["mode"] == "integer":
            raise _Unsupported(f"already an integer {node.op}")
        # Custom neurons (hnnx.Neuron): a step with an operation that has no integer form stays float.
        integer_problem = getattr(declaration, "integer_problem", None)
        if integer_problem is not None and (problem := integer_problem(view)) is not None:
            raise _Unsupported(problem)
        sigma = 1.0 / current.scale
        attrs = declaration.integer_attributes(view, sigma)
        # The fake-quant form runs the same integer neuron on its (integer-valued) current.
        inputs: list[gs.Tensor] = [self._to_integer(current, np.int32, f"{node.inputs[0].name}.i32")]
        if recurrent is not None and recurrent < len(node.inputs) and node.inputs[recurrent].name:
            weight = node.inputs[recurrent]
            if not isinstance(weight, gs.Constant):
                raise _Unsupported("recurrent weight is not a constant")
            low, high = state_range(attrs["state_bits"])
            scaled = np.clip(np.round(weight.values.astype(np.float64) * sigma), low, high).astype(np.int32)
            inputs += [gs.Variable.empty()] * (recurrent - 1) + [_const(f"{view.name}.recurrent_weight_q", scaled)]
        out = self._variable(f"{node.outputs[0].name}.q", np.int32)
        self.graph.nodes.append(hnnx_node(node.op, inputs, [out], view.name,
                                          **{k: v for k, v in attrs.items() if v is not None}))
        spikes = declaration.emits_spikes(view)
        # A leaky integrator's output is its membrane: the current's units, σ per real unit.
        self.values[node.outputs[0].name] = QValue(self._from_integer(out, 1.0, node.outputs[0].name),
                                                   "spike" if spikes else "acc", 1.0 if spikes else current.scale)
        details: dict[str, Any] = {"weight_scale": sigma,
                                   **{k: attrs[k] for k in ("threshold", "v_reset", "alpha", "beta") if k in attrs}}
        if view.name in self.membrane_ranges:
            # The calibrated membrane in integer units, against the saturating state range.
            peak = max(abs(v) for v in self.membrane_ranges[view.name]) * sigma
            details["membrane_peak_int"] = round(peak)
            details["membrane_headroom_bits"] = round(attrs["state_bits"] - 1 - math.log2(max(peak, 1.0)), 1)
        self.records.append(LayerRecord(view.name, node.op, "neuron", details))

    def _a2s(self, node: gs.Node) -> None:
        x = self._quantized(node.inputs[0], ("int8",))
        view = view_of(node)
        attrs = {k: v for k, v in view.attrs.items() if v is not None}
        try:  # the declaration says which codings have an integer form
            ops.A2S.resolve({**attrs, "mode": "integer"}, view.name)
        except NodeError as exc:
            raise _Unsupported(exc.detail) from None
        if attrs["converter"] != "identity":
            raise _Unsupported("A2S precision converter")
        attrs["mode"] = "integer"
        out = self._variable(f"{node.outputs[0].name}.q", np.int8)
        self.graph.nodes.append(hnnx_node("A2S", [self._to_integer(x, np.int8, f"{node.inputs[0].name}.i8")], [out],
                                          view.name, **attrs))
        coding = attrs["coding"]
        kind, scale, fake = ("spike", 1.0, 1.0) if ops.A2S.emits_spikes(view) else ("int8", x.scale, x.fake)
        self.values[node.outputs[0].name] = QValue(self._from_integer(out, fake, node.outputs[0].name), kind, scale,
                                                   fake)
        self.records.append(LayerRecord(view.name, "A2S", "hybrid", {"coding": coding}))

    def _s2a(self, node: gs.Node) -> None:
        # Spikes give counts; an accumulator (a readout layer per step) gives sums of accumulators.
        x = self._quantized(node.inputs[0], ("spike", "acc"))
        view = view_of(node)
        decoding = view.attrs["decoding"]
        steps = node.inputs[0].shape[0] if node.inputs[0].shape else None
        try:
            divisor = ops.S2A.integer_divisor(view, steps if isinstance(steps, int) else None)
        except NodeError as exc:
            raise _Unsupported(exc.detail) from None
        spikes = self._to_integer(x, np.int32, f"{node.inputs[0].name}.i32")
        attrs = {k: v for k, v in view.attrs.items() if v is not None}
        attrs["mode"] = "integer"
        out = self._variable(f"{node.outputs[0].name}.q", np.int32)
        self.graph.nodes.append(hnnx_node("S2A", [spikes], [out], view.name, **attrs))
        kind = "count" if x.kind == "spike" else "acc"
        self.values[node.outputs[0].name] = QValue(self._from_integer(out, x.fake, node.outputs[0].name), kind,
                                                   x.scale / divisor, x.fake)
        self.records.append(LayerRecord(view.name, "S2A", "hybrid", {"decoding": decoding, "divisor": divisor}))

    # ------------------------------------------------------------------ float islands and outputs
    def _float_island(self, node: gs.Node, reason: str | None) -> None:
        """Keep ``node`` in float: dequantize its integer inputs (``reason`` None: not an exclusion)."""
        for index, tensor in enumerate(node.inputs):
            value = self.values.get(tensor.name)
            if value is not None:
                node.inputs[index] = self._dequantized(value, tensor.name)
        if reason is not None:
            self.excluded[label(node)] = reason

    def _dequantized(self, value: QValue, name: str) -> gs.Variable:
        """``value`` in float, made once per tensor (two float islands reading it share it)."""
        made = self._dequantized_tensors.get((value.tensor.name, name))
        if made is None:
            made = self._dequantized_tensors[(value.tensor.name, name)] = self._dequantize(value, name)
        return made

    def _dequantize(self, value: QValue, name: str) -> gs.Variable:
        ratio = np.asarray(value.scale / value.fake if self.fakequant else value.scale, np.float32)  # per unit
        if ratio.ndim:  # one scale per channel (axis 1)
            ratio = ratio.reshape(-1, *[1] * (self._ranks[name] - 2))
        if self.fakequant:
            if np.all(ratio == 1.0):
                return value.tensor
            return self._float_op("Mul", [value.tensor, _const(f"{name}.dq_scale", ratio)], f"{name}.dq")
        # Cast and Mul, not DequantizeLinear: onnxruntime's QDQ propagation pushes a
        # DequantizeLinear into the function body of a float consumer and aborts.
        real = self._float_op("Cast", [value.tensor], f"{name}.dq_units", {"to": onnx.TensorProto.FLOAT})
        return self._float_op("Mul", [real, _const(f"{name}.dq_scale", ratio)], f"{name}.dq")

    def _finish_outputs(self) -> None:
        for index, output in enumerate(list(self.graph.outputs)):
            value = self.values.get(output.name)
            if value is None:
                continue
            name = output.name
            output.name = f"{name}.float"  # the float producer is dropped by cleanup
            value.tensor.name = name
            value.tensor.shape = output.shape
            self.graph.outputs[index] = value.tensor
            self.output_scales[name] = value.scale / value.fake if self.fakequant else value.scale

    # ------------------------------------------------------------------ helpers
    def _to_integer(self, value: QValue, dtype: Any, name: str) -> gs.Variable:
        """The integer tensor of ``value``: itself in the integer graph; ``value / fake`` cast in
        the fake-quant graph (exact: the float tensor holds an integer times a power of two)."""
        if not self.fakequant and value.tensor.dtype == np.dtype(dtype):
            return value.tensor
        key = (value.tensor.name, np.dtype(dtype).name)
        if key in self._integer_casts:
            return self._integer_casts[key]
        self._integer_casts[key] = out = self._cast_to_integer(value, dtype, name)
        return out

    def _cast_to_integer(self, value: QValue, dtype: Any, name: str) -> gs.Variable:
        if not self.fakequant:
            out = self._variable(name, dtype)
            self._node("Cast", [value.tensor], [out], {"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))})
            return out
        units = value.tensor
        if value.fake != 1.0:
            units = self._float_op("Mul", [units, _const(f"{name}.unit_scale", np.float32(1.0 / value.fake))],
                                   f"{name}.units")
        out = self._variable(name, dtype)
        self._node("Cast", [units], [out], {"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))})
        return out

    def _from_integer(self, tensor: gs.Variable, fake: float, name: str) -> gs.Variable:
        """Back from an integer op: the tensor itself, or (fake-quant) ``value · fake`` in float."""
        if not self.fakequant:
            return tensor
        real = self._float_op("Cast", [tensor], f"{name}.fq_units", {"to": onnx.TensorProto.FLOAT})
        if fake == 1.0:
            return real
        return self._float_op("Mul", [real, _const(f"{name}.fq_scale", np.float32(fake))], f"{name}.fq")

    def _float_op(self, op: str, inputs: list[gs.Tensor], name: str, attrs: dict[str, Any] | None = None
                  ) -> gs.Variable:
        out = self._variable(name, np.float32)
        self._node(op, inputs, [out], attrs)
        return out

    def _variable(self, name: str, dtype: Any) -> gs.Variable:
        return gs.Variable(name, dtype=np.dtype(dtype))

    def _node(self, op: str, inputs: list[gs.Tensor], outputs: list[gs.Variable],
              attrs: dict[str, Any] | None = None) -> None:
        self.graph.nodes.append(gs.Node(op, name=f"{outputs[0].name}.{op}", attrs=attrs or {}, inputs=inputs,
                                        outputs=outputs))


class TianjicxTarget(QuantizationTarget):
    """The ``tianjicx`` target: the integer graph (``int``) or its fake-quant form (``fakequant``)."""

    name = "tianjicx"
    formats = ("int", "fakequant")

    def rewrite(self, graph: gs.Graph, stats: Statistics) -> Rewrite:
        options = self.options
        return TianjicxQuantizer(graph, stats.absmax, options.bit_shift_unit, options.excluded_names,
                                 fakequant=options.format == "fakequant",
                                 membrane_ranges=dict(stats.membrane_ranges)).run()


_SCALE_KEEPING = ("Relu", "MaxPool", "Clip", *SHAPE_OPS)
"""Ops whose output has their input's scale."""


def _grid_step(ratio: float, unit: int) -> int:
    """The smallest multiple ``k`` of ``unit`` with ``2^k ≥ ratio``: how far a range must be
    shifted to hold ``ratio`` times the int8 range (a tolerance keeps an exact power of two on its
    own step)."""
    return unit * math.ceil(math.log2(ratio) / unit - 1e-9)


class _Unsupported(Exception):
    """A node that stays in float, with the reason."""


class _LeftToOtherTarget(Exception):
    """A node that stays in float without being an exclusion (a float reshape, or an ANN
    layer that ``spiking_only`` leaves for another target)."""


def _input_channel_axis(op: str, weight: np.ndarray, conv_attrs: dict[str, Any]) -> int | None:
    """The axis of a layer's weight (in the integer op's layout) that runs over the input's
    channels, or None for a grouped convolution other than a depthwise one."""
    if op != "Conv":
        return 0  # MatMul weights are [K, N]
    group = int(conv_attrs.get("group", 1))
    if group == 1:
        return 1
    return 0 if weight.shape[1] == 1 and weight.shape[0] == group else None


def _along(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along ``axis`` of a rank-``rank`` array."""
    shape = [1] * rank
    shape[axis] = -1
    return np.asarray(values, np.float64).reshape(shape)


def _compact(values: np.ndarray) -> float | np.ndarray:
    """A per-channel vector, or its one value when every channel has it."""
    return float(values[0]) if np.all(values == values[0]) else values


def _weight_error(weight: np.ndarray, exponent: int) -> float:
    """Relative squared error of ``weight`` as int8 ``clamp(round(weight·2^exponent))·2^−exponent``."""
    scaled = weight * 2.0**exponent
    error = np.clip(np.round(scaled), *INT8) - scaled
    return float(np.sum(error * error) / max(float(np.sum(scaled * scaled)), 1e-300))


def _shift_between(value: QValue, finest: QValue) -> int | None:
    """``k`` with ``value.scale = finest.scale · 2^k``, or None when no integer k fits."""
    ratio = value.scale / finest.scale
    k = round(math.log2(ratio))
    return k if math.isclose(ratio, 2.0**k, rel_tol=1e-9) else None


def _channel_vector(values: np.ndarray, rank: int) -> np.ndarray | None:
    """A constant that broadcasts one value per channel (axis 1) of a rank-``rank`` tensor, as
    ``[C]`` float64; None for any other shape."""
    shape = list(values.shape)
    if len(shape) > rank:
        return None
    shape = [1] * (rank - len(shape)) + shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]):
        return None
    return values.astype(np.float64).reshape(-1)


def _constant_values(tensor: gs.Tensor, what: str) -> np.ndarray:
    if not isinstance(tensor, gs.Constant):
        raise _Unsupported(f"{what} is not a constant")
    return tensor.values.astype(np.float64).reshape(-1)


def _const(name: str, values: Any) -> gs.Constant:
    return gs.Constant(name, np.asarray(values))
