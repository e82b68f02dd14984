"""``hnnx.Requantize`` — the shift-only requantization of an integer accumulator."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from hnnx.errors import NodeError
from hnnx.ops.arrays import INT32, FunctionBody
from hnnx.ops.declare import Attribute, NodeView, OpDeclaration, Port

INT8_RANGE = (-128, 127)


class Requantize(OpDeclaration):
    """Shift-only requantization: int32 accumulator → int8, ``y = clamp(floor(x / 2^shift), −128, 127)``.

    The floor is an arithmetic right shift (rounding towards −∞), as the chip's shifter
    does; ``shift = 0`` only saturates. Element-wise; the output has the input's shape.
    """

    name = "Requantize"
    inputs = (Port("x", "int32 accumulator, any shape", type="tensor(int32)"),)
    outputs = (Port("y", "int8 activation, the shape of `x`", type="tensor(int8)"),)
    type_constraints = ()
    attributes = (
        Attribute("shift", int, 0, "right shift in bits, 0–30"),
    )

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        if not 0 <= attrs["shift"] <= 30:
            raise NodeError(node, f"Requantize attribute 'shift' must lie in [0, 30], got {attrs['shift']}")

    @classmethod
    def structure(cls, view: NodeView) -> str:
        return f"s{view.attrs['shift']}"

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        if elem_types[0] and elem_types[0] != onnx.TensorProto.INT32:
            raise NodeError(view.name, "Requantize needs an int32 input")

    @classmethod
    def output_elem_types(cls, view: NodeView, elem_types: list[Any]) -> list[Any]:
        return ["tensor(int8)"]

    @classmethod
    def reference(cls, view: NodeView, x: np.ndarray) -> tuple[np.ndarray, ...]:
        if x.dtype != np.int32:
            raise NodeError(view.name, f"Requantize needs an int32 input, got {x.dtype}")
        return (np.clip(x >> view.attrs["shift"], *INT8_RANGE).astype(np.int8),)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        top = body.top
        x = body.input(0)
        shift = view.attrs["shift"]
        if shift:
            divisor = body.literal(1 << shift, INT32)
            # Mod with fmod=0 takes the divisor's sign, so x − mod is an exact multiple: a floor division.
            x = top.op("Div", top.op("Sub", x, top.op("Mod", x, divisor)), divisor)
        low, high = (body.literal(v, INT32) for v in INT8_RANGE)
        body.set_output(0, top.op("Cast", top.op("Min", top.op("Max", x, low), high), to=onnx.TensorProto.INT8))
