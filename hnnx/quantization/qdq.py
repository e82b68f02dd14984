"""The ``qdq`` target: standard ONNX INT8 QuantizeLinear/DequantizeLinear graphs.

Layers with constant weights (Conv, Gemm, MatMul that do not feed a spiking neuron) get
symmetric int8 weights — per output channel with ``per_channel``, else per tensor; 7-bit
(``−63 … 63``) with ``reduce_range``, by default on x86 CPUs without VNNI (see
:func:`default_reduce_range`) — and an int32 bias with scale ``s_x·s_w``. Activations are asymmetric uint8, ``scale = (hi − lo)/255``
with the zero point where 0 falls, from the calibrated range ``[lo, hi]`` (clipped to the
observer's threshold; always holding 0). QDQ pairs go where onnxruntime's QDQ fusions look
for them: around every layer and around residual ``Add``, ``Concat``, pooling and the data
movement between them (``Flatten``, ``Reshape``, ``Transpose``, … which keep their input's
parameters). A ``Relu`` (or ``Clip(0, m)``) after a layer is absorbed into the layer's output
quantization — a zero point of 0 clamps exactly what the ReLU would — so onnxruntime runs
``QLinearConv``/``QGemm`` chains in uint8 on the CPU. Graph outputs stay in float.

The spiking parts (LIF, A2S, S2A and their synaptic layers) are quantized as in the
``tianjicx`` target (:mod:`hnnx.quantization.tianjicx`, run first with ``spiking_only``), or
stay in float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.quantization.common import (INT8, LAYER_OPS, LayerRecord, QuantizationTarget, Rewrite, Statistics,
                                      feeding_neuron, label)
from hnnx.quantization.tianjicx import TianjicxQuantizer

COMPUTING_OPS = (*LAYER_OPS, "Add", "Concat", "GlobalAveragePool", "AveragePool")
"""Ops whose inputs and outputs are quantized with their own calibrated parameters."""
DATA_MOVEMENT_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
"""Ops whose output keeps the quantization parameters of their input."""
UINT8 = (0, 255)

Range = Callable[[str], tuple[float, float]]
"""Calibrated ``(lo, hi)`` of a float tensor, clipped to the observer's threshold."""


@dataclass(frozen=True)
class ActivationParams:
    """Asymmetric uint8 quantization: ``real = (q − zero_point) · scale``."""

    scale: float
    zero_point: int

    @classmethod
    def of_range(cls, lo: float, hi: float) -> "ActivationParams":
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # 0 must be exact (zero padding, ReLU)
        scale = max(hi - lo, 1e-12) / (UINT8[1] - UINT8[0])
        return cls(float(np.float32(scale)), int(np.clip(round(UINT8[0] - lo / scale), *UINT8)))


@dataclass
class QdqQuantizer:
    """Inserts QDQ pairs into a preprocessed float graph (see the module docstring)."""

    graph: gs.Graph
    ranges: Range
    per_channel: bool = True
    excluded_names: frozenset[str] = frozenset()
    spiking_float: bool = True
    reduce_range: bool = False
    """7-bit weights (``−63 … 63``): see :func:`default_reduce_range`."""
    records: list[LayerRecord] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    output_scales: dict[str, float] = field(default_factory=dict)
    _qdq: dict[str, gs.Variable] = field(default_factory=dict)
    _params: dict[str, ActivationParams] = field(default_factory=dict)

    def run(self) -> Rewrite:
        """Rewrite the graph in place; returns what was done."""
        self.graph.toposort()
        for node in list(self.graph.nodes):
            if not node.outputs:
                continue  # a ReLU already absorbed into the output quantization of the layer before it
            name = label(node)
            if node.domain not in (None, "", "ai.onnx"):
                if node.domain == ops.DOMAIN and self.spiking_float:
                    self.excluded[name] = f"hnnx.{node.op} stays in float (spiking parts: float)"
                continue
            if node.op not in COMPUTING_OPS and node.op not in DATA_MOVEMENT_OPS or not _computes_in_float(node):
                continue
            if name in self.excluded_names:
                self.excluded[name] = "excluded by the user"
                continue
            if node.op in LAYER_OPS:
                reason = self._quantize_layer(node)
                if reason:
                    self.excluded[name] = reason
                continue
            if node.op in DATA_MOVEMENT_OPS and not self._is_quantized(node.inputs[0]):
                continue  # moves a float tensor: nothing to gain
            for index, tensor in enumerate(node.inputs[:1] if node.op in DATA_MOVEMENT_OPS else node.inputs):
                if isinstance(tensor, gs.Variable) and tensor.dtype in (np.float32, None):
                    node.inputs[index] = self._input(tensor)
            shared = self._params.get(self._source_of(node.inputs[0])) if node.op in DATA_MOVEMENT_OPS else None
            self._quantize_output(node, shared)
            self.records.append(LayerRecord(name, node.op, "qdq", {}))
        self.graph.cleanup().toposort()
        return Rewrite(self.records, self.excluded, self.output_scales,
                       {name: (restored.name, 1.0) for name, restored in self._qdq.items()})

    # ------------------------------------------------------------------ layers
    def _quantize_layer(self, node: gs.Node) -> str | None:
        weight = node.inputs[1]
        if not isinstance(weight, gs.Constant):
            return "weight is not a constant"
        if feeding_neuron(node.outputs[0]) is not None:
            return "synaptic layer of a spiking neuron (spiking parts: float)" if self.spiking_float else ""
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            return "Gemm with transA"
        w = weight.values.astype(np.float64)
        if node.op == "MatMul" and w.ndim != 2:
            return "MatMul weight is not a matrix"
        node.inputs[0] = self._input(node.inputs[0])
        x_scale = self._params[self._source_of(node.inputs[0])].scale
        axis = {"Conv": 0, "Gemm": 0 if node.attrs.get("transB", 0) else 1, "MatMul": 1}[node.op]
        w_scale = _weight_scales(w, axis if self.per_channel else None, 63 if self.reduce_range else 127)
        shape = [1] * w.ndim
        shape[axis] = -1
        w_int = np.clip(np.round(w / w_scale.reshape(shape if w_scale.size > 1 else [1] * w.ndim)), *INT8).astype(np.int8)
        base = label(node)
        node.inputs[1] = self._dequantize(f"{base}.weight", w_int, w_scale, axis if w_scale.size > 1 else None)
        if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant) and node.op in ("Conv", "Gemm"):
            bias = node.inputs[2].values.astype(np.float64)
            if node.op == "Gemm":
                bias = bias * float(node.attrs.get("beta", 1.0))
                node.attrs["beta"] = 1.0
            b_scale = x_scale * w_scale * (float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0)
            b_scale = np.broadcast_to(b_scale, bias.shape)
            b_int = np.clip(np.round(bias / b_scale), -(2**31), 2**31 - 1).astype(np.int32)
            node.inputs[2] = self._dequantize(f"{base}.bias", b_int, b_scale.astype(np.float32),
                                              0 if b_scale.size > 1 else None)
        self._quantize_output(node, None)
        self.records.append(LayerRecord(base, node.op, "ann", {"input_scale": x_scale,
                                                               "weight_scale_max": float(w_scale.max())}))
        return None

    # ------------------------------------------------------------------ activations
    def _quantize_output(self, node: gs.Node, shared: ActivationParams | None) -> None:
        """QDQ on the node's output; a sole ``Relu``/``Clip(0, m)`` consumer is absorbed into it."""
        tensor = node.outputs[0]
        if tensor in self.graph.outputs or tensor.name in self._qdq:
            return
        consumers = tensor.outputs
        activation = consumers[0] if len(consumers) == 1 and shared is None else None
        if activation is not None and self._absorbable(activation):
            result = activation.outputs[0]
            params = self._params_of(result.name)
            restored = self._fake_quantized(tensor, params, result.name)
            _rewire(result, restored)
            activation.inputs.clear()
            activation.outputs.clear()
            return
        params = shared or self._params_of(tensor.name)
        restored = self._fake_quantized(tensor, params, tensor.name)
        _rewire(tensor, restored, skip=f"{tensor.name}.quantize")

    def _absorbable(self, node: gs.Node) -> bool:
        """A ReLU, or a Clip from 0, whose output quantization (zero point 0) clamps the same."""
        if node.op not in ("Relu", "Clip") or node.outputs[0] in self.graph.outputs:
            return False
        if node.op == "Relu":
            return True
        low = node.inputs[1] if len(node.inputs) > 1 else None
        high = node.inputs[2] if len(node.inputs) > 2 else None
        if not isinstance(low, gs.Constant) or float(low.values) != 0.0:
            return False
        return high is None or (isinstance(high, gs.Constant) and
                                self._params_of(node.outputs[0].name).scale * 255 <= float(high.values) + 1e-6)

    def _input(self, tensor: gs.Tensor) -> gs.Tensor:
        """``tensor`` fake-quantized with its calibrated parameters (one pair per tensor)."""
        if self._is_quantized(tensor):
            return tensor
        return self._fake_quantized(tensor, self._params_of(tensor.name), tensor.name)

    def _is_quantized(self, tensor: gs.Tensor) -> bool:
        return any(restored is tensor for restored in self._qdq.values())

    def _source_of(self, tensor: gs.Tensor) -> str:
        return next((name for name, restored in self._qdq.items() if restored is tensor), tensor.name)

    def _params_of(self, name: str) -> ActivationParams:
        if name not in self._params:
            # A tensor the spiking parts dequantized (``<name>.dq``) has its float tensor's range.
            source = name[: -len(".dq")] if name.endswith(".dq") else name
            self._params[name] = ActivationParams.of_range(*self.ranges(source))
        return self._params[name]

    def _fake_quantized(self, tensor: gs.Tensor, params: ActivationParams, name: str) -> gs.Variable:
        """``tensor`` through QuantizeLinear → DequantizeLinear, registered as standing for ``name``."""
        if name in self._qdq:
            return self._qdq[name]
        self._params[name] = params
        scale = gs.Constant(f"{name}.qdq_scale", np.array(params.scale, np.float32))
        zero = gs.Constant(f"{name}.qdq_zero", np.array(params.zero_point, np.uint8))
        quantized = gs.Variable(f"{name}.qdq_q", dtype=np.uint8)
        restored = gs.Variable(f"{name}.qdq", dtype=np.float32)
        self.graph.nodes.append(gs.Node("QuantizeLinear", name=f"{name}.quantize",
                                        inputs=[tensor, scale, zero], outputs=[quantized]))
        self.graph.nodes.append(gs.Node("DequantizeLinear", name=f"{name}.dequantize",
                                        inputs=[quantized, scale, zero], outputs=[restored]))
        self._qdq[name] = restored
        return restored

    def _dequantize(self, name: str, values: np.ndarray, scale: np.ndarray, axis: int | None) -> gs.Variable:
        attrs: dict[str, Any] = {} if axis is None else {"axis": axis}
        scale_values = np.asarray(scale, np.float32).reshape(-1) if axis is not None else np.float32(np.max(scale))
        zero = np.zeros(np.shape(scale_values), values.dtype) if axis is not None else np.array(0, values.dtype)
        out = gs.Variable(f"{name}.dq", dtype=np.float32)
        self.graph.nodes.append(gs.Node("DequantizeLinear", name=f"{name}.dequantize", attrs=attrs,
                                        inputs=[gs.Constant(f"{name}.q", values),
                                                gs.Constant(f"{name}.scale", np.asarray(scale_values, np.float32)),
                                                gs.Constant(f"{name}.zero", zero)],
                                        outputs=[out]))
        return out


class QdqTarget(QuantizationTarget):
    """The ``qdq`` target: standard INT8 QDQ for ANN layers; the spiking parts quantized as
    ``tianjicx`` first (``spiking="tianjicx"``) or left in float (``spiking="float"``)."""

    name = "qdq"
    formats = ("fakequant",)

    def rewrite(self, graph: gs.Graph, stats: Statistics) -> Rewrite:
        options = self.options
        done = Rewrite()
        if options.spiking == "tianjicx":
            done = TianjicxQuantizer(graph, stats.absmax, options.bit_shift_unit, options.excluded_names,
                                     spiking_only=True, membrane_ranges=dict(stats.membrane_ranges)).run()
        ann = QdqQuantizer(graph, stats.range, per_channel=options.per_channel is not False,
                           excluded_names=options.excluded_names, spiking_float=options.spiking == "float",
                           reduce_range=options.reduce_range).run()
        return done.merge(ann)


def _computes_in_float(node: gs.Node) -> bool:
    """Whether the node works on float tensors (not on the integers of a spiking part)."""
    return all(t.dtype in (np.float32, None) for t in [*node.inputs, *node.outputs] if isinstance(t, gs.Variable))


def _rewire(tensor: gs.Tensor, replacement: gs.Tensor, skip: str = "") -> None:
    """Every consumer of ``tensor`` (but node ``skip``) reads ``replacement`` instead."""
    for consumer in list(tensor.outputs):
        if consumer.name == skip:
            continue
        for index, given in enumerate(consumer.inputs):
            if given is tensor:
                consumer.inputs[index] = replacement


def _weight_scales(w: np.ndarray, axis: int | None, levels: int = 127) -> np.ndarray:
    """Symmetric int8 scales ``absmax/levels``: one per slice along ``axis``, or one."""
    if axis is None:
        return np.array([max(float(np.abs(w).max()), 1e-12) / levels])
    moved = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1)
    return np.maximum(moved.max(axis=1), 1e-12) / levels


def default_reduce_range(cpuinfo: str | None = None) -> bool:
    """Whether QDQ weights default to 7 bits on this machine: on an x86 CPU without VNNI.

    onnxruntime's integer kernels there multiply uint8 activations by int8 weights with
    ``vpmaddubsw``, which sums pairs of products in int16: full-range weights (255·127·2 > 32767)
    saturate, and the model loses accuracy after onnxruntime's optimisations only (1.4–5.9 dB
    of output SQNR on the ImageNet-size benchmark graphs; 7-bit weights cost 0.4–1.6 dB where
    nothing saturates). With VNNI (``avx512_vnni``, ``avx_vnni``) or on another architecture the
    products are summed in int32: full range. ``cpuinfo``: the text of ``/proc/cpuinfo``
    (read when None; where it cannot be read, full range).
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return False
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)
