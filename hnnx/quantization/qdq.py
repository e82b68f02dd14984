"""The ``qdq`` target: standard ONNX INT8 QuantizeLinear/DequantizeLinear graphs.

ANN layers (Conv, Gemm, MatMul with constant weights that do not feed a spiking neuron)
get symmetric int8 weights — per output channel with ``per_channel``, else per tensor —
an int32 bias with scale ``s_x·s_w``, and symmetric int8 activations with scale
``absmax/127`` from calibration on their input and output tensors. This is the format
every onnxruntime execution provider fuses into integer kernels (QLinearConv,
QLinearMatMul, …). The spiking parts (LIF, A2S, S2A and their synaptic layers) are
quantized as in the ``tianjicx`` target (:mod:`hnnx.quantization.tianjicx`, run first with
``spiking_only``), or stay in float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.quantization.common import (INT8, LAYER_OPS, LayerRecord, QuantizationTarget, Rewrite, feeding_lif,
                                      label)
from hnnx.quantization.tianjicx import TianjicxQuantizer

FUSED_ACTIVATIONS = ("Relu", "Clip")


@dataclass
class QdqQuantizer:
    """Inserts QDQ pairs around the ANN layers of a preprocessed float graph."""

    graph: gs.Graph
    absmax: Callable[[str], float]
    per_channel: bool = True
    excluded_names: frozenset[str] = frozenset()
    spiking_float: bool = True
    records: list[LayerRecord] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    output_scales: dict[str, float] = field(default_factory=dict)
    _qdq: dict[str, gs.Variable] = field(default_factory=dict)

    def run(self) -> Rewrite:
        """Rewrite the graph in place; returns what was done."""
        self.graph.toposort()
        for node in list(self.graph.nodes):
            name = label(node)
            if node.op not in LAYER_OPS or node.domain not in (None, "", "ai.onnx"):
                if node.domain == ops.DOMAIN and self.spiking_float:
                    self.excluded[name] = f"hnnx.{node.op} stays in float (spiking parts: float)"
                continue
            if name in self.excluded_names:
                self.excluded[name] = "excluded by the user"
                continue
            reason = self._quantize_layer(node)
            if reason:
                self.excluded[name] = reason
        self.graph.cleanup().toposort()
        return Rewrite(self.records, self.excluded, self.output_scales,
                       {name: (restored.name, 1.0) for name, restored in self._qdq.items()})

    def _quantize_layer(self, node: gs.Node) -> str | None:
        weight = node.inputs[1]
        if node.domain == "" and node.op in ("MatMulInteger", "ConvInteger"):
            return ""
        if not isinstance(weight, gs.Constant):
            return "weight is not a constant"
        if feeding_lif(node.outputs[0]) is not None:
            return "synaptic layer of a spiking neuron (spiking parts: float)" if self.spiking_float else ""
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            return "Gemm with transA"
        x = node.inputs[0]
        source = next((name for name, qdq in self._qdq.items() if qdq is x), None)
        if source is None:  # not yet fake-quantized by the layer before
            source = x.name
            node.inputs[0] = self._fake_quantized(x, self._activation_scale(source))
        x_scale = self._activation_scale(source)
        w = weight.values.astype(np.float64)
        axis = {"Conv": 0, "Gemm": 0 if node.attrs.get("transB", 0) else 1, "MatMul": 1}[node.op]
        if node.op == "MatMul" and w.ndim != 2:
            return "MatMul weight is not a matrix"
        w_scale = _weight_scales(w, axis if self.per_channel else None)
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
        self._quantize_output(node)
        self.records.append(LayerRecord(base, node.op, "ann", {"input_scale": x_scale,
                                                               "weight_scale_max": float(w_scale.max())}))
        return None

    def _quantize_output(self, node: gs.Node) -> None:
        """QDQ after the layer (after a fused activation), so runtimes fuse the whole layer."""
        tensor = node.outputs[0]
        consumers = tensor.outputs
        if len(consumers) == 1 and consumers[0].op in FUSED_ACTIVATIONS and tensor not in self.graph.outputs:
            tensor = consumers[0].outputs[0]
        if tensor in self.graph.outputs:
            return
        scale = self._activation_scale(tensor.name)
        replacement = self._fake_quantized(tensor, scale)
        for consumer in list(tensor.outputs):
            if consumer.name == f"{tensor.name}.quantize":
                continue  # the pair's own QuantizeLinear
            for index, given in enumerate(consumer.inputs):
                if given is tensor:
                    consumer.inputs[index] = replacement

    def _activation_scale(self, name: str) -> float:
        # A tensor the spiking parts dequantized (``<name>.dq``) has its float tensor's range.
        source = name[: -len(".dq")] if name.endswith(".dq") else name
        return max(self.absmax(source), 1e-12) / 127.0

    def _fake_quantized(self, tensor: gs.Tensor, scale: float) -> gs.Variable:
        """``tensor`` through QuantizeLinear → DequantizeLinear (one pair per tensor)."""
        if tensor.name in self._qdq:
            return self._qdq[tensor.name]
        scale_const = gs.Constant(f"{tensor.name}.qdq_scale", np.array(scale, np.float32))
        zero = gs.Constant(f"{tensor.name}.qdq_zero", np.array(0, np.int8))
        quantized = gs.Variable(f"{tensor.name}.qdq_q", dtype=np.int8)
        restored = gs.Variable(f"{tensor.name}.qdq", dtype=np.float32)
        self.graph.nodes.append(gs.Node("QuantizeLinear", name=f"{tensor.name}.quantize",
                                        inputs=[tensor, scale_const, zero], outputs=[quantized]))
        self.graph.nodes.append(gs.Node("DequantizeLinear", name=f"{tensor.name}.dequantize",
                                        inputs=[quantized, scale_const, zero], outputs=[restored]))
        self._qdq[tensor.name] = restored
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

    def rewrite(self, graph: gs.Graph, absmax: Callable[[str], float],
                membrane_ranges: dict[str, tuple[float, float]]) -> Rewrite:
        options = self.options
        done = Rewrite()
        if options.spiking == "tianjicx":
            done = TianjicxQuantizer(graph, absmax, options.bit_shift_unit, options.excluded_names,
                                     spiking_only=True, membrane_ranges=dict(membrane_ranges)).run()
        ann = QdqQuantizer(graph, absmax, per_channel=options.per_channel is not False,
                           excluded_names=options.excluded_names, spiking_float=options.spiking == "float").run()
        return done.merge(ann)


def _weight_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 scales ``absmax/127``: one per slice along ``axis``, or one."""
    if axis is None:
        return np.array([max(float(np.abs(w).max()), 1e-12) / 127.0])
    moved = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1)
    return np.maximum(moved.max(axis=1), 1e-12) / 127.0
