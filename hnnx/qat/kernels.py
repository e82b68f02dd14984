"""torch kernels of the standard ONNX ops a trainable graph module runs.

Each kernel is built once per node (attributes read at build time) and maps the node's input
tensors (None for an absent optional input) to its output tensors. Forward passes compute
what onnxruntime computes; the ops that have no useful derivative get straight-through
estimators, as HNN's fake-quant functions do (research: hnn_spec §2.7):

* ``Floor``, ``Round``, ``Ceil``: value rounded, gradient passed unchanged (``DifferentiableFloor``);
* ``QuantizeLinear``: ``clamp(round(x / s) + z, q_min, q_max)`` with gradient ``1/s`` inside the
  clamp range and 0 outside (so ``QuantizeLinear → DequantizeLinear`` is ``FakeQuantize``: gradient
  1 inside ``[(q_min − z)·s, (q_max − z)·s]``, 0 outside); no gradient reaches the scale;
* ``Clip``: ``torch.clamp`` — gradient 1 inside the bounds, 0 outside (the clipping mask);
* ``Cast`` to a small integer type: truncation, gradient passed unchanged.

Integer tensors of the value path (int8/int16/int32/uint8: quantized weights, the casts around
integer hnnx nodes) are held as float32 tensors of integers, so gradients flow through them;
int64 tensors (shapes, indices) are real int64 tensors. float32 holds every integer of
magnitude ≤ 2^24 exactly, and a tianjicx fake-quant graph computes those values in float32 too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper

from hnnx.errors import ModelError
from hnnx.ops.torch_ops import StraightThrough

Tensor = torch.Tensor
Kernel = Callable[[list[Any]], list[Any]]
"""A node's forward: its inputs (None for absent ones) → its outputs."""

HELD_AS_FLOAT = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                 onnx.TensorProto.INT32)
"""ONNX element types the module holds as float32 tensors of integers (see the module docstring)."""

_QUANT_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
                 onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535),
                 onnx.TensorProto.INT32: (-(2**31), 2**31 - 1)}


def straight_through(x: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
    """``value`` in the forward pass; the gradient of the output goes to ``x`` (times ``mask``)."""
    return StraightThrough.apply(x, value.detach(), mask)


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (strings decoded)."""
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


@dataclass(frozen=True)
class NodeContext:
    """What a kernel builder may need besides the attributes: the model's ai.onnx ``opset``, the
    ONNX element types of the node's inputs (0 where unknown or absent) and its output count."""

    opset: int
    input_types: tuple[int, ...] = ()
    n_outputs: int = 1

    def input_type(self, index: int) -> int:
        return self.input_types[index] if index < len(self.input_types) else 0


Builder = Callable[[dict[str, Any], NodeContext], Kernel]


def build_kernel(node: onnx.NodeProto, ctx: NodeContext) -> Kernel:
    """The kernel of standard-domain ``node``; ModelError naming the node when its op is not supported."""
    builder = _BUILDERS.get(node.op_type)
    label = node.name or node.output[0]
    if builder is None:
        raise ModelError(f"node {label!r}: op {node.op_type} has no trainable torch form in hnnx.qat "
                         f"(supported: {', '.join(sorted(_BUILDERS))})")
    try:
        return builder(attributes(node), ctx)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"node {label!r} ({node.op_type}): {exc}") from None


# --------------------------------------------------------------------------- helpers
def _ints(value: Tensor | None) -> list[int] | None:
    return None if value is None else [int(v) for v in value.reshape(-1).tolist()]


def _optional(inputs: list[Any], index: int) -> Any:
    """Input ``index``, or None when the node has no such input."""
    return inputs[index] if len(inputs) > index else None


def _one(fn: Callable[..., Tensor]) -> Kernel:
    return lambda inputs: [fn(*inputs)]


def _spatial_padding(x: Tensor, attrs: dict[str, Any], kernel: Sequence[int], strides: Sequence[int],
                     dilations: Sequence[int], fill: float = 0.0) -> tuple[Tensor, list[int]]:
    """``x`` padded as ``pads``/``auto_pad`` say: returns the tensor and the symmetric padding left
    for torch (asymmetric padding is applied here with ``fill``)."""
    rank = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for axis in range(rank):
            size = x.shape[2 + axis]
            out = math.ceil(size / strides[axis])
            total = max(0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size)
            small, large = total // 2, total - total // 2
            pads_begin.append(small if auto == "SAME_UPPER" else large)
            pads_end.append(large if auto == "SAME_UPPER" else small)
    elif auto == "VALID":
        pads_begin = pads_end = [0] * rank
    else:
        pads = list(attrs.get("pads", [0] * 2 * rank))
        pads_begin, pads_end = pads[:rank], pads[rank:]
    if pads_begin == pads_end:
        return x, pads_begin
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):
        torch_pads += [pads_begin[axis], pads_end[axis]]
    return F.pad(x, torch_pads, value=fill), [0] * rank


# --------------------------------------------------------------------------- layers
def _conv(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    def run(inputs: list[Any]) -> list[Any]:
        x, w, b = (inputs + [None])[:3]
        rank = w.dim() - 2
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        strides = list(attrs.get("strides", [1] * rank))
        dilations = list(attrs.get("dilations", [1] * rank))
        x, padding = _spatial_padding(x, attrs, kernel, strides, dilations)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
        return [conv(x, w, b, strides, padding, dilations, int(attrs.get("group", 1)))]

    return run


def _gemm(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))

    def run(inputs: list[Any]) -> list[Any]:
        a, b, c = (inputs + [None])[:3]
        a = a.t() if attrs.get("transA", 0) else a
        b = b.t() if attrs.get("transB", 0) else b
        y = a @ b
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c * beta if beta != 1.0 else c)
        return [y]

    return run


def _batchnorm(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    epsilon = float(attrs.get("epsilon", 1e-5))

    def run(inputs: list[Any]) -> list[Any]:
        x, scale, bias, mean, var = inputs[:5]
        shape = [1, -1] + [1] * (x.dim() - 2)  # inference form: the graph's running statistics
        return [(x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + epsilon) * scale.reshape(shape)
                + bias.reshape(shape)]

    return run


def _pool(kind: str) -> Builder:
    def build(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
        kernel = list(attrs["kernel_shape"])
        rank = len(kernel)
        strides = list(attrs.get("strides", [1] * rank))
        dilations = list(attrs.get("dilations", [1] * rank))
        ceil = bool(attrs.get("ceil_mode", 0))

        def run(inputs: list[Any]) -> list[Any]:
            x = inputs[0]
            if kind == "max":
                x, padding = _spatial_padding(x, attrs, kernel, strides, dilations, fill=-math.inf)
                pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
                return [pool(x, kernel, strides, padding, dilations, ceil_mode=ceil)]
            include = bool(attrs.get("count_include_pad", 0))
            padded, padding = _spatial_padding(x, attrs, kernel, strides, dilations)
            if padded is not x and not include:
                raise ModelError("AveragePool with asymmetric padding that excludes the padding from the count")
            pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
            return [pool(padded, kernel, strides, padding, ceil_mode=ceil, count_include_pad=include)]

        return run

    return build


def _global_pool(kind: str) -> Builder:
    def build(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
        def run(inputs: list[Any]) -> list[Any]:
            x = inputs[0]
            axes = tuple(range(2, x.dim()))
            return [x.mean(axes, keepdim=True) if kind == "avg" else x.amax(axes, keepdim=True)]

        return run

    return build


# --------------------------------------------------------------------------- element-wise
def _unary(fn: Callable[[Tensor], Tensor]) -> Builder:
    return lambda attrs, ctx: _one(fn)


def _rounding(fn: Callable[[Tensor], Tensor]) -> Builder:
    """Floor/Round/Ceil with the straight-through gradient (identity)."""
    return lambda attrs, ctx: _one(lambda x: straight_through(x, fn(x)))


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Builder:
    return lambda attrs, ctx: _one(fn)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Builder:
    def run(inputs: list[Any]) -> list[Any]:
        total = inputs[0]
        for x in inputs[1:]:
            total = fn(total, x)
        return [total]

    return lambda attrs, ctx: run


def _clip(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    def run(inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        low = inputs[1] if len(inputs) > 1 else attrs.get("min")
        high = inputs[2] if len(inputs) > 2 else attrs.get("max")
        if isinstance(low, Tensor):
            low = low.to(x.dtype)
        if isinstance(high, Tensor):
            high = high.to(x.dtype)
        if low is None and high is None:
            return [x]
        return [torch.clamp(x, low, high)]

    return run


def _leaky_relu(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    return _one(lambda x: F.leaky_relu(x, float(attrs.get("alpha", 0.01))))


def _softmax(log: bool) -> Builder:
    def build(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
        axis = int(attrs.get("axis", -1 if ctx.opset >= 13 else 1))

        def run(inputs: list[Any]) -> list[Any]:
            x = inputs[0]
            if ctx.opset < 13:  # coerced to 2-D at axis
                flat = x.reshape(math.prod(x.shape[:axis]), -1)
                y = F.log_softmax(flat, 1) if log else F.softmax(flat, 1)
                return [y.reshape(x.shape)]
            return [F.log_softmax(x, axis) if log else F.softmax(x, axis)]

        return run

    return build


# --------------------------------------------------------------------------- quantization and casts
def _quantize_linear(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    axis = int(attrs.get("axis", 1))

    def run(inputs: list[Any]) -> list[Any]:
        x, scale, zero = inputs[0], inputs[1], _optional(inputs, 2)
        elem = ctx.input_type(2) if zero is not None else int(attrs.get("output_dtype", 0) or onnx.TensorProto.UINT8)
        low, high = _QUANT_RANGES[elem]
        scale = _per_axis(scale, x, axis)
        units = x / scale
        if zero is not None:
            units = units + _per_axis(zero, x, axis)
        mask = ((units >= low) & (units <= high)).to(x.dtype)
        return [straight_through(units, torch.clamp(torch.round(units), low, high), mask)]

    return run


def _dequantize_linear(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    axis = int(attrs.get("axis", 1))

    def run(inputs: list[Any]) -> list[Any]:
        x, scale, zero = inputs[0], inputs[1], _optional(inputs, 2)
        if zero is not None:
            x = x - _per_axis(zero, x, axis).to(x.dtype)
        return [x * _per_axis(scale, x, axis)]

    return run


def _per_axis(value: Tensor, x: Tensor, axis: int) -> Tensor:
    """A per-axis (1-D) quantization parameter shaped to broadcast along ``axis`` of ``x``."""
    if value.dim() != 1 or value.numel() == 1:
        return value.reshape(()) if value.numel() == 1 else value
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return value.reshape(shape)


def _cast(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    to = int(attrs["to"])

    def run(inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        if to in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            return [x.to(torch.float32) if not x.is_floating_point() else x]
        if to in HELD_AS_FLOAT:
            if not x.is_floating_point():
                return [x.to(torch.float32)]
            return [straight_through(x, torch.trunc(x))]
        if to == onnx.TensorProto.INT64:
            return [torch.trunc(x).to(torch.int64) if x.is_floating_point() else x.to(torch.int64)]
        if to == onnx.TensorProto.BOOL:
            return [x != 0]
        raise ModelError(f"Cast to {onnx.TensorProto.DataType.Name(to)}")

    return run


# --------------------------------------------------------------------------- data movement
def _flatten(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    axis = int(attrs.get("axis", 1))

    def run(inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        cut = axis % x.dim() if x.dim() else 0
        return [x.reshape(math.prod(x.shape[:cut]), math.prod(x.shape[cut:]))]

    return run


def _reshape(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    allow_zero = bool(attrs.get("allowzero", 0))

    def run(inputs: list[Any]) -> list[Any]:
        x, shape = inputs[0], _ints(inputs[1])
        dims = [x.shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(shape)]
        return [x.reshape(dims)]

    return run


def _transpose(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    def run(inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        perm = attrs.get("perm", list(reversed(range(x.dim()))))
        return [x.permute(*perm)]

    return run


def _axes(attrs: dict[str, Any], inputs: list[Any], index: int) -> list[int] | None:
    given = inputs[index] if len(inputs) > index and inputs[index] is not None else None
    return _ints(given) if given is not None else (list(attrs["axes"]) if "axes" in attrs else None)


def _squeeze(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    def run(inputs: list[Any]) -> list[Any]:
        x, axes = inputs[0], _axes(attrs, inputs, 1)
        if axes is None:
            return [x.squeeze()]
        keep = [d for i, d in enumerate(x.shape) if i not in {a % x.dim() for a in axes}]
        return [x.reshape(keep)]

    return run


def _unsqueeze(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    def run(inputs: list[Any]) -> list[Any]:
        x, axes = inputs[0], _axes(attrs, inputs, 1)
        rank = x.dim() + len(axes)
        for axis in sorted(a % rank for a in axes):
            x = x.unsqueeze(axis)
        return [x]

    return run


def _concat(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    axis = int(attrs["axis"])

    def run(inputs: list[Any]) -> list[Any]:
        parts = [x for x in inputs if x is not None]
        if any(p.is_floating_point() for p in parts):
            parts = [p if p.is_floating_point() else p.to(torch.float32) for p in parts]
        return [torch.cat(parts, axis)]

    return run


def _split(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    axis = int(attrs.get("axis", 0))

    def run(inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        sizes = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else attrs.get("split")
        if sizes is None:
            parts = int(attrs.get("num_outputs", ctx.n_outputs))
            size = math.ceil(x.shape[axis] / parts)
            sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
        return list(torch.split(x, list(sizes), axis))

    return run


def _shape(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    def run(inputs: list[Any]) -> list[Any]:
        dims = list(inputs[0].shape)
        start, end = int(attrs.get("start", 0)), attrs.get("end")
        return [torch.tensor(dims[start:end if end is not None else None], dtype=torch.int64)]

    return run


def _gather(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    axis = int(attrs.get("axis", 0))

    def run(inputs: list[Any]) -> list[Any]:
        x, index = inputs[0], inputs[1].to(torch.int64)
        index = torch.where(index < 0, index + x.shape[axis], index)
        out = torch.index_select(x, axis, index.reshape(-1))
        return [out.reshape(*x.shape[:axis], *index.shape, *x.shape[axis + 1:])]

    return run


def _slice(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    def run(inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
        index: list[slice] = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step < 0:
                raise ModelError("Slice with a negative step")
            size = x.shape[axis]
            index[axis % x.dim()] = slice(max(-size, min(start, size)), max(-size, min(end, size)), step)
        return [x[tuple(index)]]

    return run


def _expand(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    def run(inputs: list[Any]) -> list[Any]:
        x, shape = inputs[0], _ints(inputs[1])
        target = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
        return [x.expand(target)]

    return run


def _constant(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    if "value" in attrs:
        array = onnx.numpy_helper.to_array(attrs["value"])
    elif "value_float" in attrs:
        array = np.array(attrs["value_float"], np.float32)
    elif "value_floats" in attrs:
        array = np.array(attrs["value_floats"], np.float32)
    elif "value_int" in attrs:
        array = np.array(attrs["value_int"], np.int64)
    elif "value_ints" in attrs:
        array = np.array(attrs["value_ints"], np.int64)
    else:
        raise ModelError("Constant without a numeric value")
    value = as_torch(array)
    return lambda inputs: [value]


def _constant_of_shape(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    fill = as_torch(onnx.numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32))

    def run(inputs: list[Any]) -> list[Any]:
        return [fill.reshape(()).expand(_ints(inputs[0])).clone()]

    return run


def _reduce(kind: str) -> Builder:
    def build(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
        keep = bool(attrs.get("keepdims", 1))
        noop = bool(attrs.get("noop_with_empty_axes", 0))

        def run(inputs: list[Any]) -> list[Any]:
            x, axes = inputs[0], _axes(attrs, inputs, 1)
            if not axes:
                if noop:
                    return [x]
                axes = list(range(x.dim()))
            dims = tuple(a % x.dim() for a in axes)
            if kind == "sum":
                return [x.sum(dims, keepdim=keep)]
            if kind == "mean":
                return [x.mean(dims, keepdim=keep)]
            return [x.amax(dims, keepdim=keep)]

        return run

    return build


def _pad(attrs: dict[str, Any], ctx: NodeContext) -> Kernel:
    mode = attrs.get("mode", "constant")

    def run(inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        pads = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else list(attrs["pads"])
        fill = float(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else float(attrs.get("value", 0.0))
        rank = x.dim()
        torch_pads: list[int] = []
        for axis in reversed(range(rank)):
            torch_pads += [pads[axis], pads[axis + rank]]
        if mode == "constant":
            return [F.pad(x, torch_pads, value=fill)]
        return [F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])]

    return run


def as_torch(array: np.ndarray) -> Tensor:
    """A numpy constant as the module holds it: floats as float32, small integers as float32
    (see :data:`HELD_AS_FLOAT`), int64 and bool as themselves."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        return torch.from_numpy(np.array(array, np.float32))
    if array.dtype == np.int64 or array.dtype == np.bool_:
        return torch.from_numpy(np.array(array))
    return torch.from_numpy(array.astype(np.float32))


_BUILDERS: dict[str, Builder] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _binary(torch.matmul), "BatchNormalization": _batchnorm,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"), "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(torch.div),
    "Pow": _binary(torch.pow), "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Relu": _unary(torch.relu), "LeakyRelu": _leaky_relu, "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal), "Softplus": _unary(F.softplus),
    "Clip": _clip, "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    "Floor": _rounding(torch.floor), "Ceil": _rounding(torch.ceil), "Round": _rounding(torch.round),
    "QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear, "Cast": _cast,
    "Identity": _unary(lambda x: x), "Dropout": lambda attrs, ctx: lambda inputs: [inputs[0]],
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Concat": _concat, "Split": _split, "Shape": _shape, "Gather": _gather,
    "Slice": _slice, "Expand": _expand, "Constant": _constant, "ConstantOfShape": _constant_of_shape,
    "ReduceSum": _reduce("sum"), "ReduceMean": _reduce("mean"), "ReduceMax": _reduce("max"), "Pad": _pad,
}
SUPPORTED_OPS = frozenset(_BUILDERS)
"""The standard ops a trainable graph module runs."""
