"""Re-quantization: a ``tianjicx`` fake-quant graph → the matching integer graph.

The fake-quant form holds every quantized tensor as ``value · fake`` (``fake`` a power of
two) in float, with its weights as float sources behind ``QuantizeLinear`` /
``DequantizeLinear`` pairs — the sources QAT fine-tunes. This pass reads that structure
back: weights are quantized again from their (possibly fine-tuned) sources with the same
scales, biases divided back into integers, floor fake-quantization becomes
``hnnx.Requantize`` with the same shift, and the integer neurons and hybrid units lose the
casts around them. The result equals what ``quantize(..., format="int")`` writes for the
same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.errors import ModelError
from hnnx.quantization.common import INT8, INT32, hnnx_node

INTEGER_TYPES = (np.int8, np.int32)


@dataclass
class _Int:
    """The integer tensor behind a fake tensor, and the power of two the fake tensor holds it times."""

    tensor: gs.Tensor
    fake: float


@dataclass
class FakeQuantIntegerizer:
    """Rewrites a tianjicx fake-quant graph (in place) into its integer graph."""

    graph: gs.Graph
    ints: dict[str, _Int] = field(default_factory=dict)
    output_fakes: dict[str, float] = field(default_factory=dict)
    _done: set[int] = field(default_factory=set)

    def run(self) -> None:
        self.graph.toposort()
        for node in list(self.graph.nodes):
            if id(node) in self._done:
                continue
            self._rewrite(node)
        for index, output in enumerate(list(self.graph.outputs)):
            value = self.ints.get(output.name)
            if value is None:
                continue
            name, shape = output.name, output.shape
            output.name = f"{name}.fake"
            value.tensor.name, value.tensor.shape = name, shape
            self.graph.outputs[index] = value.tensor
            self.output_fakes[name] = value.fake
        self.graph.cleanup().toposort()

    # ------------------------------------------------------------------ dispatch
    def _rewrite(self, node: gs.Node) -> None:
        op = node.op if node.domain in (None, "", "ai.onnx") else None
        if op == "QuantizeLinear":
            self._quantize(node)
        elif op in ("Conv", "MatMul") and self._weight_pair(node.inputs[1]) is not None:
            self._layer(node)
        elif op == "Add" and self._known(node.inputs[0]) and isinstance(node.inputs[1], gs.Constant):
            self._bias(node)
        elif op in ("Add", "Concat") and all(self._known(t) for t in node.inputs):
            self._aligned_op(node)
        elif op == "Conv" and self._known(node.inputs[0]) and _all_ones(node.inputs[1]):
            self._window_sum(node)
        elif op == "ReduceSum" and self._known(node.inputs[0]):
            self._reduce_sum(node)
        elif op == "Clip" and self._known(node.inputs[0]) and all(isinstance(t, gs.Constant) for t in node.inputs[1:]):
            self._clip(node)
        elif op == "Mul" and self._known(node.inputs[0]) and isinstance(node.inputs[1], gs.Constant):
            self._mul(node)
        elif op == "Cast" and self._known(node.inputs[0]):
            self._cast_to_integer(node)
        elif op == "Cast" and node.inputs[0].dtype in INTEGER_TYPES and node.attrs["to"] == onnx.TensorProto.FLOAT:
            self._cast_from_integer(node)
        elif op in ("Relu", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity") \
                and self._known(node.inputs[0]):
            self._same_op(node)
        elif node.domain == ops.DOMAIN:
            return  # integer hnnx ops already take the integer tensors (see _cast_to_integer)
        else:
            self._float(node)

    def _known(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self.ints

    # ------------------------------------------------------------------ patterns
    def _quantize(self, node: gs.Node) -> None:
        """Q(x) → DQ at an input: keep the Q, its DQ's output stands for the int8 tensor."""
        if isinstance(node.inputs[0], gs.Constant):
            return  # a weight pair, read by _layer
        scale = float(node.inputs[1].values)
        for consumer in list(node.outputs[0].outputs):
            if consumer.op == "DequantizeLinear":
                self.ints[consumer.outputs[0].name] = _Int(node.outputs[0], scale)
                self._done.add(id(consumer))

    def _weight_pair(self, tensor: gs.Tensor) -> tuple[np.ndarray, float] | None:
        """``DequantizeLinear(QuantizeLinear(source, q))`` → (int8 weights, q)."""
        if len(tensor.inputs) != 1 or tensor.inputs[0].op != "DequantizeLinear":
            return None
        dq = tensor.inputs[0]
        q_node = dq.inputs[0].inputs[0] if dq.inputs[0].inputs else None
        if q_node is None or q_node.op != "QuantizeLinear" or not isinstance(q_node.inputs[0], gs.Constant):
            return None
        source = q_node.inputs[0].values.astype(np.float32)
        q = np.float32(q_node.inputs[1].values)
        return np.clip(np.round(source / q), *INT8).astype(np.int8), float(q)

    def _layer(self, node: gs.Node) -> None:
        x = self.ints.get(node.inputs[0].name)
        if x is None:
            raise ModelError(f"node {node.name!r}: a fake-quantized weight on a float input is not a tianjicx layer")
        weights, q = self._weight_pair(node.inputs[1])  # type: ignore[misc]
        x8 = self._cast(x.tensor, np.int8, f"{node.name}.x_i8")
        acc = gs.Variable(f"{node.name}.acc", dtype=np.int32)
        integer_op = "ConvInteger" if node.op == "Conv" else "MatMulInteger"
        attrs = dict(node.attrs) if node.op == "Conv" else {}
        self.graph.nodes.append(gs.Node(integer_op, name=f"{node.name}.integer", attrs=attrs,
                                        inputs=[x8, gs.Constant(f"{node.name}.weight_q", weights)], outputs=[acc]))
        self.ints[node.outputs[0].name] = _Int(acc, q * x.fake)

    def _bias(self, node: gs.Node) -> None:
        acc = self.ints[node.inputs[0].name]
        # Exact for the emitted bias; a fine-tuned bias off the integer grid rounds back onto it.
        bias = np.round(node.inputs[1].values.astype(np.float64) / acc.fake)
        out = gs.Variable(f"{node.outputs[0].name}.int", dtype=np.int32)
        self.graph.nodes.append(gs.Node("Add", name=f"{node.outputs[0].name}.integer",
                                        inputs=[acc.tensor, gs.Constant(f"{node.outputs[0].name}.bias_q",
                                                                        np.array(np.clip(bias, *INT32), np.int32))],
                                        outputs=[out]))
        self.ints[node.outputs[0].name] = _Int(out, acc.fake)

    def _mul(self, node: gs.Node) -> None:
        """Floor fake-quantization (Mul → Floor → Clip → Mul) or the scaling before a Cast."""
        value = self.ints[node.inputs[0].name]
        factor = float(np.asarray(node.inputs[1].values).reshape(-1)[0])
        consumers = node.outputs[0].outputs
        if len(consumers) == 1 and consumers[0].op == "Floor":
            clip = consumers[0].outputs[0].outputs[0]
            down = clip.outputs[0].outputs[0]
            shift = round(-math.log2(value.fake * factor))
            out = gs.Variable(f"{down.outputs[0].name}.int", dtype=np.int8)
            self.graph.nodes.append(hnnx_node("Requantize", [value.tensor], [out], f"{down.outputs[0].name}.requantize",
                                             shift=shift))
            self.ints[down.outputs[0].name] = _Int(out, float(np.asarray(down.inputs[1].values).reshape(-1)[0]))
            self._done.update({id(consumers[0]), id(clip), id(down)})
        elif factor > 0 and math.log2(factor).is_integer():
            # value · fake · 2^k: the same integer held times another power of two (the scaling
            # before a Cast back to the integer, or the alignment of a sum's operand).
            self.ints[node.outputs[0].name] = _Int(value.tensor, value.fake * factor)
        else:
            self._float(node)

    def _aligned_op(self, node: gs.Node) -> None:
        """A sum or join of integers held times different powers of two: each brought to the finest
        in int32 by a left shift (a Concat of equal holdings joins the integers as they are)."""
        values = [self.ints[t.name] for t in node.inputs]
        finest = min(v.fake for v in values)
        name = node.outputs[0].name
        if node.op == "Concat" and all(v.fake == finest and v.tensor.dtype == values[0].tensor.dtype for v in values):
            parts = [v.tensor for v in values]
        else:
            parts = []
            for index, value in enumerate(values):
                wide = self._cast(value.tensor, np.int32, f"{name}.in{index}_i32")
                shift = round(math.log2(value.fake / finest))
                if shift:
                    aligned = gs.Variable(f"{name}.in{index}_aligned", dtype=np.int32)
                    self.graph.nodes.append(gs.Node("Mul", name=f"{name}.in{index}_align",
                                                    inputs=[wide, gs.Constant(f"{name}.in{index}_shift",
                                                                              np.array(1 << shift, np.int32))],
                                                    outputs=[aligned]))
                    wide = aligned
                parts.append(wide)
        out = gs.Variable(f"{name}.int", dtype=parts[0].dtype)
        self.graph.nodes.append(gs.Node(node.op, name=f"{name}.integer", attrs=dict(node.attrs), inputs=parts,
                                        outputs=[out]))
        self.ints[name] = _Int(out, finest)

    def _window_sum(self, node: gs.Node) -> None:
        """An all-ones depthwise Conv (average pooling's window sum) → the same ConvInteger."""
        value = self.ints[node.inputs[0].name]
        out = gs.Variable(f"{node.outputs[0].name}.int", dtype=np.int32)
        ones = gs.Constant(f"{node.outputs[0].name}.ones_i8", node.inputs[1].values.astype(np.int8))
        self.graph.nodes.append(gs.Node("ConvInteger", name=f"{node.outputs[0].name}.integer", attrs=dict(node.attrs),
                                        inputs=[self._cast(value.tensor, np.int8, f"{node.outputs[0].name}.x_i8"),
                                                ones], outputs=[out]))
        self.ints[node.outputs[0].name] = _Int(out, value.fake)

    def _reduce_sum(self, node: gs.Node) -> None:
        value = self.ints[node.inputs[0].name]
        out = gs.Variable(f"{node.outputs[0].name}.int", dtype=np.int32)
        self.graph.nodes.append(gs.Node("ReduceSum", name=f"{node.outputs[0].name}.integer", attrs=dict(node.attrs),
                                        inputs=[self._cast(value.tensor, np.int32, f"{node.outputs[0].name}.x_i32"),
                                                *node.inputs[1:]], outputs=[out]))
        self.ints[node.outputs[0].name] = _Int(out, value.fake)

    def _clip(self, node: gs.Node) -> None:
        value = self.ints[node.inputs[0].name]
        dtype = value.tensor.dtype
        bounds = [gs.Constant(f"{node.outputs[0].name}.{side}_int",
                              np.asarray(np.round(float(t.values) / value.fake), dtype))
                  for side, t in zip(("lo", "hi"), node.inputs[1:])]
        out = gs.Variable(f"{node.outputs[0].name}.int", dtype=dtype)
        self.graph.nodes.append(gs.Node("Clip", name=f"{node.outputs[0].name}.integer",
                                        inputs=[value.tensor, *bounds], outputs=[out]))
        self.ints[node.outputs[0].name] = _Int(out, value.fake)

    def _cast_to_integer(self, node: gs.Node) -> None:
        value = self.ints[node.inputs[0].name]
        if abs(value.fake - 1.0) > 0:
            raise ModelError(f"node {node.name!r}: cast of a fake tensor holding value × {value.fake}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"])
        integer = self._cast(value.tensor, dtype, f"{node.outputs[0].name}.int")
        # Consumers (integer hnnx ops) read the integer tensor directly.
        for consumer in list(node.outputs[0].outputs):
            for index, given in enumerate(consumer.inputs):
                if given is node.outputs[0]:
                    consumer.inputs[index] = integer

    def _cast_from_integer(self, node: gs.Node) -> None:
        out = node.outputs[0]
        consumers = out.outputs
        if len(consumers) == 1 and consumers[0].op == "Mul" and isinstance(consumers[0].inputs[1], gs.Constant) \
                and out not in self.graph.outputs:
            scale = float(np.asarray(consumers[0].inputs[1].values).reshape(-1)[0])
            self.ints[consumers[0].outputs[0].name] = _Int(node.inputs[0], scale)
            self._done.add(id(consumers[0]))
        self.ints[out.name] = _Int(node.inputs[0], 1.0)

    def _same_op(self, node: gs.Node) -> None:
        value = self.ints[node.inputs[0].name]
        out = gs.Variable(f"{node.outputs[0].name}.int", dtype=value.tensor.dtype)
        self.graph.nodes.append(gs.Node(node.op, name=f"{node.outputs[0].name}.integer", attrs=dict(node.attrs),
                                        inputs=[value.tensor, *node.inputs[1:]], outputs=[out]))
        self.ints[node.outputs[0].name] = _Int(out, value.fake)

    def _float(self, node: gs.Node) -> None:
        """A float node: its inputs that stand for integers become ``value · fake`` again."""
        for index, tensor in enumerate(node.inputs):
            value = self.ints.get(tensor.name)
            if value is None:
                continue
            real = gs.Variable(f"{tensor.name}.float", dtype=np.float32)
            scaled = gs.Variable(f"{tensor.name}.scaled", dtype=np.float32)
            self.graph.nodes.append(gs.Node("Cast", name=f"{tensor.name}.cast", attrs={"to": onnx.TensorProto.FLOAT},
                                            inputs=[value.tensor], outputs=[real]))
            self.graph.nodes.append(gs.Node("Mul", name=f"{tensor.name}.scale",
                                            inputs=[real, gs.Constant(f"{tensor.name}.fake",
                                                                      np.array(value.fake, np.float32))],
                                            outputs=[scaled]))
            node.inputs[index] = scaled

    def _cast(self, tensor: gs.Tensor, dtype: Any, name: str) -> gs.Tensor:
        if tensor.dtype == np.dtype(dtype):
            return tensor
        out = gs.Variable(name, dtype=np.dtype(dtype))
        self.graph.nodes.append(gs.Node("Cast", name=f"{name}.cast",
                                        attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))},
                                        inputs=[tensor], outputs=[out]))
        return out


def _all_ones(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) and tensor.values.size > 0 and bool(np.all(tensor.values == 1))
