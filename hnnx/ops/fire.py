"""``hnnx.Fire`` — the one-step Heaviside spike primitive for composing custom neurons."""

from __future__ import annotations

from typing import Any

import numpy as np

from hnnx.errors import NodeError
from hnnx.ops.arrays import FunctionBody
from hnnx.ops.declare import Attribute, NodeView, OpDeclaration, Port, TypeConstraint
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
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        if attrs["surrogate_width"] <= 0:
            raise NodeError(node, f"Fire attribute 'surrogate_width' must be > 0, got {attrs['surrogate_width']}")

    @classmethod
    def emits_spikes(cls, view: NodeView) -> bool:
        return True

    @classmethod
    def reference(cls, view: NodeView, v: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.greater(v, threshold).astype(v.dtype),)

    @classmethod
    def torch_forward(cls, view: NodeView, v: Any, threshold: Any) -> tuple[Any, ...]:
        from hnnx.ops.torch_ops import TorchOps

        xp = TorchOps(not v.dtype.is_floating_point, view.attrs, v.device)
        return (xp.spike(v, threshold, xp.greater(v, threshold)),)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        fired = body.top.op("Greater", body.input(0), body.input(1))
        body.set_output(0, body.top.op("CastLike", fired, body.input(0)))

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
