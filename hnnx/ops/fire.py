"""``hnnx.Fire`` — the one-step Heaviside spike primitive for composing custom neurons."""

from __future__ import annotations

from typing import Any

import numpy as np

from hnnx.errors import NodeError
from hnnx.ops import primitives as P
from hnnx.ops.arrays import FunctionBody, NumpyOps, OnnxOps
from hnnx.ops.declare import Attribute, NodeView, OpDeclaration, Port, TypeConstraint
from hnnx.ops.lif import SURROGATES
from hnnx.ops.primitives import MEMBRANE, SPIKES


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
    port_units = ((MEMBRANE, MEMBRANE), (SPIKES,))
    """Units of the ports in a custom neuron's step graph (see :mod:`hnnx.ops.primitive_ops`)."""
    type_constraints = (TypeConstraint("T", ("tensor(float)", "tensor(int32)"), "membrane type"),)
    attributes = (
        Attribute("surrogate", str, "rectangle", "training pseudo-derivative: rectangle, sigmoid or atan",
                  choices=SURROGATES),
        Attribute("surrogate_width", float, 1.0, "width of the surrogate window (> 0)"),
    )

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        if attrs["surrogate_width"] <= 0:
            raise NodeError(node, f"Fire attribute 'surrogate_width' must be > 0, got {attrs['surrogate_width']}")

    @classmethod
    def emits_spikes(cls, view: NodeView) -> bool:
        return True

    @classmethod
    def reference(cls, view: NodeView, v: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, ...]:
        spikes = P.fire(NumpyOps(not np.issubdtype(v.dtype, np.floating), view.attrs), v, threshold)[1]
        return (spikes.astype(v.dtype, copy=False),)

    @classmethod
    def torch_forward(cls, view: NodeView, v: Any, threshold: Any) -> tuple[Any, ...]:
        from hnnx.ops.torch_ops import TorchOps

        return (P.fire(TorchOps(not v.dtype.is_floating_point, view.attrs, v.device), v, threshold)[1],)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        body.set_output(0, P.fire(_AnyTypeOnnxOps(body.top, False), body.input(0), body.input(1))[1])

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        v, threshold = shapes
        if v is None or threshold is None:
            return [None]
        rank = max(len(v), len(threshold))
        v = [1] * (rank - len(v)) + list(v)
        threshold = [1] * (rank - len(threshold)) + list(threshold)
        # A dim of 1 broadcasts; otherwise the dims agree (by ONNX/numpy rules) and v's is kept.
        return [[t if isinstance(d, int) and d == 1 else d for d, t in zip(v, threshold)]]


class _AnyTypeOnnxOps(OnnxOps):
    """One Fire body serves float and int32 nodes: spikes take the type of ``v``."""

    def spike(self, v: str, theta: str, fired: str) -> str:
        return self.scope.op("CastLike", fired, v)
