"""hnnx nodes in a trainable graph module: each runs its declaration's own torch forward.

* **Float-mode nodes** run ``decl.torch_forward(view, *inputs)`` — the op's equations with
  surrogate gradients, bit-exact with onnxruntime and numpy.
* **Integer-mode nodes** (the neurons and hybrid units of a ``tianjicx`` fake-quant graph,
  between ``Cast`` nodes) have no gradient of their own. Their forward value is the
  declaration's integer reference (``decl.reference``: exactly what onnxruntime computes); their
  gradient is that of a *float stand-in*: the same declaration in float mode, with the same
  (integer) attributes, on the same integer-valued inputs held as float. The output takes the
  exact value and passes its gradient to the stand-in (straight through). Where the integer
  equations equal float arithmetic on integers — IF neurons (``alpha = 1``) and any neuron
  whose membrane stays below 2^24 without a multiplicative leak, direct coding, rate and
  global decoding — the stand-in also has the exact value; elsewhere (a leak
  ``floor(A·v/256)``, saturation at ``state_bits``) it differs by those roundings. Two scalings
  keep the stand-in in the integer node's units: an S2A in integer mode outputs spike counts,
  so its stand-in's rates are multiplied by ``S2A.integer_divisor``; and a neuron's surrogate
  window is already in the integer node's units (the quantizer scales it with the constants).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
import torch

from hnnx import ops
from hnnx.errors import ModelError, NodeError
from hnnx.ops.declare import NodeView, OpDeclaration
from hnnx.qat.kernels import HELD_AS_FLOAT, Kernel, as_torch, straight_through

_STAND_IN_TYPES = {"tensor(int32)": torch.int32, "tensor(int64)": torch.int64}
"""Ports of a fixed integer type keep it in the stand-in; every other port takes float32."""
_NUMPY_OF_ELEM = {onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT32: np.int32,
                  onnx.TensorProto.INT64: np.int64, onnx.TensorProto.FLOAT: np.float32}


def hnnx_kernel(node: onnx.NodeProto, input_types: tuple[int, ...]) -> Kernel:
    """The kernel of hnnx ``node``; ``input_types``: the ONNX element types of its inputs (0 if
    unknown). ModelError naming the node when its op has no torch forward."""
    decl = ops.declaration(node.op_type)
    view = decl.view(node)
    if decl.torch_forward.__func__ is OpDeclaration.torch_forward.__func__:  # type: ignore[attr-defined]
        raise ModelError(f"node {view.name!r}: hnnx.{decl.name} has no torch forward to train through")
    if view.attrs.get("mode", "float") != "integer":
        return lambda inputs: list(_outputs(decl.torch_forward(view, *_trimmed(inputs))))
    return _integer_kernel(decl, view, input_types)


def float_stand_in(decl: type[OpDeclaration], view: NodeView) -> NodeView:
    """The float-mode view whose torch forward gives an integer-mode node its gradient (see the
    module docstring): the same attributes in float mode."""
    attrs = {key: value for key, value in view.attrs.items() if value is not None}
    attrs["mode"] = "float"
    return decl.view_for(attrs, view.inputs, view.n_outputs, view.name)


def _integer_kernel(decl: type[OpDeclaration], view: NodeView, input_types: tuple[int, ...]) -> Kernel:
    stand_in = float_stand_in(decl, view)
    divisor: Callable[[Any], float] = (lambda x: float(decl.integer_divisor(view, int(x.shape[0])))) \
        if hasattr(decl, "integer_divisor") else (lambda x: 1.0)
    typed = [(t if t else onnx.TensorProto.INT32) for t in input_types]

    def run(inputs: list[Any]) -> list[Any]:
        arrays = [None if x is None else _as_numpy(x, elem, port.type, view)
                  for x, elem, port in zip(inputs, typed, decl.inputs)]
        try:
            exact = decl.reference(view, *_trimmed(arrays))
        except NodeError:
            raise
        except Exception as exc:
            raise NodeError(view.name, f"integer reference failed: {type(exc).__name__}: {exc}") from None
        floats = [None if x is None else x.to(_STAND_IN_TYPES.get(port.type, torch.float32))
                  for x, port in zip(inputs, decl.inputs)]
        surrogate = _outputs(decl.torch_forward(stand_in, *_trimmed(floats)))
        scale = divisor(inputs[0])
        outputs = []
        for index, value in enumerate(exact):
            held = as_torch(value)
            if index < len(surrogate) and surrogate[index].is_floating_point() and held.is_floating_point() \
                    and tuple(surrogate[index].shape) == tuple(held.shape):
                approx = surrogate[index] * scale if index == 0 and scale != 1.0 else surrogate[index]
                outputs.append(straight_through(approx, held))
            else:
                outputs.append(held)
        return outputs

    return run


def _as_numpy(x: torch.Tensor, elem: int, port_type: str, view: NodeView) -> np.ndarray:
    """A held tensor as the integer array the integer reference takes."""
    array = x.detach().cpu().numpy()
    if elem in HELD_AS_FLOAT or elem == onnx.TensorProto.INT64:
        dtype = _NUMPY_OF_ELEM.get(elem, np.int32)
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise NodeError(view.name, "integer-mode input holds fractional values")
        return array.astype(dtype)
    return array


def _trimmed(inputs: list[Any]) -> list[Any]:
    """Inputs without trailing absent ones."""
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs


def _outputs(result: Any) -> tuple[Any, ...]:
    return result if isinstance(result, tuple) else (result,)
