"""Spike-input layers: ``hnnx.SpikeMatMul`` and ``hnnx.SpikeConv``.

A dense or convolutional layer whose input holds spikes (0/1) does work proportional to the
spikes when it only adds the weight rows of the active inputs. These ops are such layers: their
function bodies are the dense form (``MatMul``/``Conv``, or ``MatMulInteger``/``ConvInteger`` and
an ``Add`` in integer mode), so a file runs in any onnxruntime; the native kernels
(``custom_ops/spike_layers.h``) gather the active inputs of every row and accumulate only their
weights. :mod:`hnnx.passes.events` rewrites the layers of a graph that spikes feed into them.

Integer mode (int8 weights, int8 input — or int32 input, taken as the int8 a ``Cast`` gives, so
that int32 spikes need no cast — int32 bias and output) is exact: every executor gives the
results of the dense integer layer. Float mode fixes the summation order (see each op's
docstring), which the numpy reference and the native kernel follow bit for bit; the dense form
of the function body sums in its own order, so its results differ from the reference by rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from hnnx.errors import NodeError
from hnnx.ops.arrays import FunctionBody
from hnnx.ops.declare import (NO_TIME, TIME_MAJOR, Attribute, NodeView, OpDeclaration, Port, TypeConstraint,
                              port_key)

_MODE = Attribute("mode", str, "float", "numeric mode: `float` (float32) or `integer` (int8 weights, int8 or int32 "
                                        "input, int32 bias and output)", choices=("float", "integer"))
_TYPES = (TypeConstraint("X", ("tensor(float)", "tensor(int8)", "tensor(int32)"),
                         "float32 in float mode; int8 in integer mode, or int32 taken as int8 (as Cast gives)"),
          TypeConstraint("T", ("tensor(float)", "tensor(int8)"), "float32 in float mode, int8 in integer mode"),
          TypeConstraint("B", ("tensor(float)", "tensor(int32)"), "float32 in float mode, int32 in integer mode"))
_NUMPY_TYPES = {  # per mode: (x's allowed dtypes, weight's, bias and y's)
    "float": ((np.dtype(np.float32),), np.dtype(np.float32), np.dtype(np.float32)),
    "integer": ((np.dtype(np.int8), np.dtype(np.int32)), np.dtype(np.int8), np.dtype(np.int32)),
}


def _check_elem_types(view: NodeView, elem_types: list[int | None], op: str) -> None:
    mode = view.attrs["mode"]
    inputs, weight, bias = _NUMPY_TYPES[mode]
    wanted = ([onnx.helper.np_dtype_to_tensor_dtype(d) for d in inputs], [onnx.helper.np_dtype_to_tensor_dtype(weight)],
              [onnx.helper.np_dtype_to_tensor_dtype(bias)])
    for index, (port, elem) in enumerate(zip(("x", "weight", "bias"), elem_types)):
        if elem and elem not in wanted[index]:
            names = " or ".join(onnx.TensorProto.DataType.Name(e).lower() for e in wanted[index])
            raise NodeError(view.name, f"{port} of a {mode}-mode {op} must be {names}, got "
                                       f"{onnx.TensorProto.DataType.Name(elem).lower()}")


def _check_arrays(view: NodeView, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> None:
    mode = view.attrs["mode"]
    inputs, weight_type, bias_type = _NUMPY_TYPES[mode]
    for port, array, wanted in (("x", x, inputs), ("weight", weight, (weight_type,)), ("bias", bias, (bias_type,))):
        if array is not None and array.dtype not in wanted:
            raise NodeError(view.name, f"{port} of a {mode}-mode layer must be "
                                       f"{' or '.join(str(d) for d in wanted)}, got {array.dtype}")


def _as_int8(x: np.ndarray) -> np.ndarray:
    """An integer layer's input as int8: int32 keeps its low 8 bits (two's complement), as ``Cast`` does."""
    return x.astype(np.int8) if x.dtype != np.int8 else x


def _wrap_int32(total: np.ndarray) -> np.ndarray:
    """An int64 sum as int32 with two's-complement wrap-around (what int32 accumulation gives)."""
    return total.astype(np.int64).astype(np.int32)


def _add_bias(view: NodeView, acc: np.ndarray, bias: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """``acc + bias`` (bias broadcast with ``shape``): float32 rounding, or int32 wrap-around."""
    if bias is None:
        return acc
    if view.attrs["mode"] == "integer":
        return _wrap_int32(acc.astype(np.int64) + bias.reshape(shape).astype(np.int64))
    return np.add(acc, bias.reshape(shape))


class _SpikeLayer(OpDeclaration):
    """What the spike-input layers share: ports ``x``, ``weight``, ``bias`` typed by the mode
    (float32, or int8 in and int32 out), and a torch form for float graphs only."""

    type_constraints = _TYPES

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        _check_elem_types(view, elem_types, cls.name)

    @classmethod
    def output_elem_types(cls, view: NodeView, elem_types: list[Any]) -> list[Any]:
        return ["tensor(int32)" if view.attrs["mode"] == "integer" else "tensor(float)"]

    @classmethod
    def check_float_for_torch(cls, view: NodeView) -> None:
        if view.attrs["mode"] != "float":
            raise NodeError(view.name, "integer mode runs in ONNX and numpy; torch trains float graphs")


class SpikeMatMul(_SpikeLayer):
    """Spike-input dense layer: ``y = x @ weight + bias`` over the last axis of ``x``.

    ``x [..., K]`` (spikes, 0/1, but any value is computed exactly as defined), ``weight [K, M]``,
    ``bias [M]`` (optional) → ``y [..., M]``. The leading axes are rows (``[T·N, K]`` or
    ``[T, N, K]``), each computed on its own.

    Float mode fixes the summation order: ``y[r, m] = (…((+0 + x[r, 0]·W[0, m]) + x[r, 1]·W[1, m])
    … + x[r, K−1]·W[K−1, m]) + bias[m]``, inputs in ascending order, every product and sum rounded
    to float32 (no fused multiply-add). A term with ``x = 0`` adds ±0, which leaves the running sum
    unchanged (it is never −0), so an event-driven executor that adds only the weight rows of the
    active inputs gives these results bit for bit — with finite weights; with an infinite or NaN
    weight every term counts. The dense function body (``MatMul`` + ``Add``) sums in another order:
    its results differ by rounding (for dyadic inputs whose sums are exact, not at all).

    Integer mode (int8 ``weight``, int8 ``x`` — or int32 ``x``, taken as ``Cast(x, int8)``: its low
    8 bits — int32 ``bias`` and ``y``): the exact sum, wrapping around in int32, plus the bias — bit
    for bit what ``MatMulInteger`` + ``Add`` give.
    """

    name = "SpikeMatMul"
    inputs = (
        Port("x", "spikes, [..., K]", type="X", time=TIME_MAJOR),
        Port("weight", "weights, [K, M]", type="T", time=NO_TIME),
        Port("bias", "per-output offset, [M]", type="B", optional=True, time=NO_TIME),
    )
    outputs = (Port("y", "[..., M]", type="B"),)
    attributes = (_MODE,)

    @classmethod
    def structure(cls, view: NodeView) -> str:
        return ("int-" if view.attrs["mode"] == "integer" else "") + port_key(view)

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        x, weight = shapes[0], shapes[1]
        if x is None or weight is None:
            return [None]
        return [[*x[:-1], weight[-1]]]

    @classmethod
    def reference(cls, view: NodeView, x: np.ndarray, weight: np.ndarray,
                  bias: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        _check_arrays(view, x, weight, bias)
        if x.ndim < 1 or weight.ndim != 2 or x.shape[-1] != weight.shape[0]:
            raise NodeError(view.name, f"SpikeMatMul needs x [..., K] and weight [K, M], got {list(x.shape)} and "
                                       f"{list(weight.shape)}")
        inputs, outputs = weight.shape
        if bias is not None and bias.shape != (outputs,):
            raise NodeError(view.name, f"SpikeMatMul bias must have shape [{outputs}], got {list(bias.shape)}")
        rows = x.reshape(-1, inputs)
        if view.attrs["mode"] == "integer":
            acc = _wrap_int32(_as_int8(rows).astype(np.int64) @ weight.astype(np.int64))
        else:
            acc = np.zeros((rows.shape[0], outputs), np.float32)
            for i in range(inputs):  # the defined order: ascending input index, float32 each step
                acc = np.add(acc, np.multiply(rows[:, i:i + 1], weight[i]))
        return (_add_bias(view, acc, bias, (outputs,)).reshape(*x.shape[:-1], outputs),)

    @classmethod
    def torch_forward(cls, view: NodeView, x: Any, weight: Any, bias: Any = None) -> tuple[Any, ...]:
        import torch

        cls.check_float_for_torch(view)
        y = torch.matmul(x, weight)
        return (y + bias if bias is not None else y,)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        top = body.top
        integer = view.attrs["mode"] == "integer"
        x = top.op("Cast", body.input(0), to=onnx.TensorProto.INT8) if integer else body.input(0)
        y = top.op("MatMulInteger" if integer else "MatMul", x, body.input(1))
        body.set_output(0, top.op("Add", y, body.input(2)) if view.has_input(2) else y)


# ---------------------------------------------------------------------------- SpikeConv
_GEOMETRY = (
    Attribute("stride_h", int, 1, "vertical stride (≥ 1)"),
    Attribute("stride_w", int, 1, "horizontal stride (≥ 1)"),
    Attribute("pad_top", int, 0, "zero rows above the input (≥ 0)"),
    Attribute("pad_left", int, 0, "zero columns left of the input (≥ 0)"),
    Attribute("pad_bottom", int, 0, "zero rows below the input (≥ 0)"),
    Attribute("pad_right", int, 0, "zero columns right of the input (≥ 0)"),
    Attribute("dilation_h", int, 1, "vertical dilation (≥ 1)"),
    Attribute("dilation_w", int, 1, "horizontal dilation (≥ 1)"),
    Attribute("group", int, 1, "groups: input channels C and outputs M are both split into `group` parts"),
)


class SpikeConv(_SpikeLayer):
    """Spike-input 2-D convolution: ``y = conv(x, weight) + bias``, ONNX ``Conv`` semantics.

    ``x [B, C, H, W]`` (spikes, 0/1, but any value is computed exactly as defined; ``B`` is every
    sample and step, ``[T·N]``), ``weight [M, C / group, kh, kw]``, ``bias [M]`` (optional) →
    ``y [B, M, OH, OW]`` with ``OH = ⌊(H + pad_top + pad_bottom − dilation_h·(kh − 1) − 1) /
    stride_h⌋ + 1`` (``OW`` alike). Output ``(b, m, oy, ox)`` of group ``g`` reads input pixels
    ``iy = oy·stride_h − pad_top + ky·dilation_h``, ``ix = ox·stride_w − pad_left + kx·dilation_w``;
    pixels outside the input are zero padding and add nothing.

    Float mode fixes the summation order: from +0, for ``ky`` ascending, ``kx`` ascending (pixels
    inside the input), input channel ``c`` of the group ascending, add ``x[b, c, iy, ix]·weight[m,
    c − g·C/group, ky, kx]``; then add ``bias[m]``; every product and sum rounded to float32. Terms
    with ``x = 0`` leave the sum unchanged (with finite weights), so an event-driven executor that
    visits only the active channels of each pixel gives these results bit for bit. The dense
    function body (``Conv``) sums in another order: its results differ by rounding.

    Integer mode (int8 ``weight``, int8 ``x`` — or int32 ``x``, taken as ``Cast(x, int8)``: its low
    8 bits — int32 ``bias`` and ``y``): the exact sum, wrapping around in int32, plus the bias — bit
    for bit what ``ConvInteger`` + ``Add`` give.
    """

    name = "SpikeConv"
    inputs = (
        Port("x", "spikes, [B, C, H, W]", type="X", time=TIME_MAJOR),
        Port("weight", "kernels, [M, C / group, kh, kw]", type="T", time=NO_TIME),
        Port("bias", "per-output-channel offset, [M]", type="B", optional=True, time=NO_TIME),
    )
    outputs = (Port("y", "[B, M, OH, OW]", type="B"),)
    attributes = (_MODE, *_GEOMETRY)

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        for name in ("stride_h", "stride_w", "dilation_h", "dilation_w", "group"):
            if attrs[name] < 1:
                raise NodeError(node, f"SpikeConv attribute {name!r} must be ≥ 1, got {attrs[name]}")
        for name in ("pad_top", "pad_left", "pad_bottom", "pad_right"):
            if attrs[name] < 0:
                raise NodeError(node, f"SpikeConv attribute {name!r} must be ≥ 0, got {attrs[name]}")

    @classmethod
    def structure(cls, view: NodeView) -> str:
        a = view.attrs
        geometry = (f"s{a['stride_h']}x{a['stride_w']}-p{a['pad_top']}x{a['pad_left']}x{a['pad_bottom']}x"
                    f"{a['pad_right']}-d{a['dilation_h']}x{a['dilation_w']}-g{a['group']}")
        return ("int-" if a["mode"] == "integer" else "") + geometry + "-" + port_key(view)

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        x, weight = shapes[0], shapes[1]
        if x is None or weight is None:
            return [None]
        a = view.attrs
        height = (x[2] + a["pad_top"] + a["pad_bottom"] - a["dilation_h"] * (weight[2] - 1) - 1) // a["stride_h"] + 1
        width = (x[3] + a["pad_left"] + a["pad_right"] - a["dilation_w"] * (weight[3] - 1) - 1) // a["stride_w"] + 1
        return [[x[0], weight[0], height, width]]

    @classmethod
    def geometry(cls, view: NodeView, x_shape: tuple[int, ...], weight_shape: tuple[int, ...]
                 ) -> tuple[int, int, int, int]:
        """``(channels per group, outputs per group, OH, OW)``; NodeError if the shapes do not fit."""
        a = view.attrs
        if len(x_shape) != 4 or len(weight_shape) != 4:
            raise NodeError(view.name, f"SpikeConv needs x [B, C, H, W] and weight [M, C/group, kh, kw], got "
                                       f"{list(x_shape)} and {list(weight_shape)}")
        groups = a["group"]
        channels, outputs = x_shape[1], weight_shape[0]
        if channels % groups or outputs % groups or weight_shape[1] != channels // groups:
            raise NodeError(view.name, f"SpikeConv with group {groups}: x has {channels} channels, weight "
                                       f"{list(weight_shape)} (C and M must be multiples of group, weight "
                                       f"[M, C/group, kh, kw])")
        height = (x_shape[2] + a["pad_top"] + a["pad_bottom"] - a["dilation_h"] * (weight_shape[2] - 1) - 1
                  ) // a["stride_h"] + 1
        width = (x_shape[3] + a["pad_left"] + a["pad_right"] - a["dilation_w"] * (weight_shape[3] - 1) - 1
                 ) // a["stride_w"] + 1
        if height < 1 or width < 1:
            raise NodeError(view.name, f"SpikeConv kernel {list(weight_shape[2:])} does not fit the padded input "
                                       f"{list(x_shape[2:])}")
        return channels // groups, outputs // groups, height, width

    @classmethod
    def reference(cls, view: NodeView, x: np.ndarray, weight: np.ndarray,
                  bias: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        _check_arrays(view, x, weight, bias)
        per_group, out_per_group, height, width = cls.geometry(view, x.shape, weight.shape)
        a = view.attrs
        outputs, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
        if bias is not None and bias.shape != (outputs,):
            raise NodeError(view.name, f"SpikeConv bias must have shape [{outputs}], got {list(bias.shape)}")
        integer = a["mode"] == "integer"
        if integer:
            x = _as_int8(x)
        acc = np.zeros((x.shape[0], outputs, height, width), np.int64 if integer else np.float32)
        rows = np.arange(height) * a["stride_h"] - a["pad_top"]
        columns = np.arange(width) * a["stride_w"] - a["pad_left"]
        for g in range(a["group"]):
            out = slice(g * out_per_group, (g + 1) * out_per_group)
            for ky in range(kh):
                iy = rows + ky * a["dilation_h"]
                for kx in range(kw):
                    ix = columns + kx * a["dilation_w"]
                    inside = (((iy >= 0) & (iy < x.shape[2]))[:, None] & ((ix >= 0) & (ix < x.shape[3]))[None, :])
                    pixels = np.ix_(np.clip(iy, 0, x.shape[2] - 1), np.clip(ix, 0, x.shape[3] - 1))
                    for c in range(per_group):  # the defined order: ky, kx, then channels ascending
                        values = x[:, g * per_group + c][:, pixels[0], pixels[1]]  # [B, OH, OW]
                        w = weight[out, c, ky, kx]
                        if integer:
                            acc[:, out] += np.where(inside, values.astype(np.int64)[:, None] * w[None, :, None, None]
                                                    .astype(np.int64), 0)
                        else:
                            term = np.multiply(values[:, None], w[None, :, None, None])
                            acc[:, out] = np.where(inside, np.add(acc[:, out], term), acc[:, out])
        if integer:
            acc = _wrap_int32(acc)
        return (_add_bias(view, acc, bias, (1, outputs, 1, 1)),)

    @classmethod
    def torch_forward(cls, view: NodeView, x: Any, weight: Any, bias: Any = None) -> tuple[Any, ...]:
        import torch.nn.functional as F

        a = view.attrs
        cls.check_float_for_torch(view)
        padded = F.pad(x, (a["pad_left"], a["pad_right"], a["pad_top"], a["pad_bottom"]))
        return (F.conv2d(padded, weight, bias, stride=(a["stride_h"], a["stride_w"]),
                         dilation=(a["dilation_h"], a["dilation_w"]), groups=a["group"]),)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        a = view.attrs
        top = body.top
        conv = {"strides": [a["stride_h"], a["stride_w"]], "dilations": [a["dilation_h"], a["dilation_w"]],
                "pads": [a["pad_top"], a["pad_left"], a["pad_bottom"], a["pad_right"]], "group": a["group"]}
        if a["mode"] == "float":
            inputs = [body.input(0), body.input(1)] + ([body.input(2)] if view.has_input(2) else [])
            body.set_output(0, top.op("Conv", *inputs, **conv))
            return
        acc = top.op("ConvInteger", top.op("Cast", body.input(0), to=onnx.TensorProto.INT8), body.input(1), **conv)
        if view.has_input(2):
            acc = top.op("Add", acc, top.op("Unsqueeze", body.input(2), body.literal_1d([0, 2, 3])))
        body.set_output(0, acc)
