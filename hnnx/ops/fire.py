"""``hnnx.Fire`` — the one-step Heaviside spike primitive for composing custom neurons."""

from __future__ import annotations

import numpy as np
import onnx

from hnnx.ops.arrays import FunctionBody
from hnnx.ops.declare import (Attribute, NodeView, OpDeclaration, Port, TypeConstraint, broadcast_shape,
                               dims_of, tensor_type)
from hnnx.ops.lif import SURROGATES


class Fire(OpDeclaration):
    """Heaviside spike function: ``s = 1 if v > threshold else 0`` (strict), element-wise.

    ``threshold`` broadcasts against ``v`` (a scalar, or per-neuron thresholds). The
    output has the shape of the broadcast and the type of ``v``. ``surrogate`` and
    ``surrogate_width`` choose the pseudo-derivative ``∂s/∂v`` used when training;
    they do not change the forward pass.
    """

    name = "Fire"
    inputs = (
        Port("v", "membrane potential, any shape"),
        Port("threshold", "firing threshold, broadcastable to `v`"),
    )
    outputs = (Port("spikes", "0/1 spikes in the type of `v`"),)
    type_constraints = (TypeConstraint("T", ("tensor(float)", "tensor(int32)"), "membrane type"),)
    attributes = (
        Attribute("surrogate", str, "rectangle", "training pseudo-derivative: rectangle, sigmoid or atan",
                  choices=SURROGATES),
        Attribute("surrogate_width", float, 1.0, "width of the surrogate window (> 0)"),
    )

    @classmethod
    def reference(cls, view: NodeView, v: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.greater(v, threshold).astype(v.dtype),)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        fired = body.top.op("Greater", body.input(0), body.input(1))
        body.set_output(0, body.top.op("CastLike", fired, body.input(0)))

    @classmethod
    def infer_types(cls, view: NodeView, input_types: list[onnx.TypeProto | None]) -> list[onnx.TypeProto]:
        v, threshold = input_types
        shape = broadcast_shape(dims_of(v), dims_of(threshold))
        return [tensor_type(v.tensor_type.elem_type, shape)]
