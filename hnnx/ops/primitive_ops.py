"""HNN's neuron primitives as single-step ``hnnx`` ops, for step graphs of custom neurons.

Each op runs one function of :mod:`hnnx.ops.primitives` element-wise (inputs broadcast), in float32
or exact integer arithmetic (``mode``), and is therefore the very operation the ``hnnx.LIF`` step
performs at that stage: a step graph ``Threshold → Accumulate → Fire → Reset → Leak → Saturate``
(with ``ThresholdDynamics`` and ``Refractory`` for the states) computes an ``hnnx.LIF`` bit for
bit. ``hnnx.Fire`` (:mod:`hnnx.ops.fire`) is the firing primitive; ``hnnx.Product`` is a
primitive HNN lacks — the product of two membrane values, for neurons whose dynamics are not
linear in the state — with an exact integer form.

Every op states the units of its ports (``port_units``: ``membrane`` — the units of the input
current, scaled with it by quantization; ``spikes`` — 0/1; ``count`` — int32 steps) and which
attributes are in membrane units (``membrane_constants``) or are factors applied as
``floor(round(256·f)·x / 256)`` in integer mode (``q8_factors``): what quantization of a step
graph asks.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import onnx

from hnnx.errors import NodeError
from hnnx.ops import primitives as P
from hnnx.ops.arrays import FLOAT, INT32, FunctionBody, NumpyOps, OnnxOps
from hnnx.ops.declare import Attribute, NodeView, OpDeclaration, Port, TypeConstraint
from hnnx.ops.lif import LIF, integer_neuron_attributes, neuron_flags, neuron_structure, validate_neuron
from hnnx.ops.primitives import COUNT, MEMBRANE, SPIKES

_COMPUTE = TypeConstraint("T", ("tensor(float)", "tensor(int32)"), "float32 in float mode, int32 in integer mode")


class Primitive(OpDeclaration):
    """Base of the single-step primitive ops: element-wise over broadcast inputs, one
    :mod:`hnnx.ops.primitives` function (:meth:`compute`) in three namespaces."""

    type_constraints = (_COMPUTE,)
    port_units: ClassVar[tuple[tuple[str, ...], tuple[str, ...]]]
    """(input units, output units) in port order."""
    membrane_constants: ClassVar[tuple[str, ...]] = ()
    q8_factors: ClassVar[tuple[str, ...]] = ()
    parts: ClassVar[tuple[str, ...]] = ()
    """The parts of the neuron structure (see ``neuron_flags``) that select body variants."""

    @classmethod
    def flags(cls, view: NodeView) -> SimpleNamespace:
        """The structure of the node (numeric mode, width, reset mode, parts used)."""
        return neuron_flags(view.attrs)

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, *inputs: Any) -> Any:
        """The output from the (present) inputs in namespace ``xp``."""
        raise NotImplementedError

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        validate_neuron(cls.name, attrs, node, cls.membrane_constants, cls.q8_factors)

    @classmethod
    def structure(cls, view: NodeView) -> str:
        return neuron_structure(view, cls.flags(view), cls.parts)

    @classmethod
    def integer_attributes(cls, view: NodeView, scale: float) -> dict[str, Any]:
        """The attributes of the integer-mode node for inputs ``scale`` times the float ones:
        membrane constants times ``scale`` rounded half to even, factors snapped to 1/256."""
        return integer_neuron_attributes(cls, view, scale, cls.membrane_constants, cls.q8_factors)

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        expected = INT32 if view.attrs["mode"] == "integer" else FLOAT
        for port, elem in zip(cls.inputs, elem_types):
            want = INT32 if port.type == "tensor(int32)" else expected
            if elem not in (want, None, 0):
                name = onnx.TensorProto.DataType.Name
                raise NodeError(view.name, f"{cls.name} in {view.attrs['mode']} mode needs {name(want).lower()} "
                                           f"{port.name!r}, got {name(elem).lower()}")

    @classmethod
    def shaping_inputs(cls, view: NodeView) -> tuple[int, ...]:
        """The inputs the output broadcasts over (default: every connected input)."""
        return tuple(i for i in range(len(cls.inputs)) if view.has_input(i))

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        return [broadcast_shape([shapes[i] for i in cls.shaping_inputs(view)])] * view.n_outputs

    @classmethod
    def reference(cls, view: NodeView, *inputs: np.ndarray | None) -> tuple[np.ndarray, ...]:
        integer = view.attrs["mode"] == "integer"
        for port, x in zip(cls.inputs, inputs):
            want = np.int32 if integer or port.type == "tensor(int32)" else np.float32
            if x is not None and x.dtype != want:
                raise NodeError(view.name, f"{cls.name} in {view.attrs['mode']} mode needs {np.dtype(want).name} "
                                           f"{port.name!r}, got {x.dtype}")
        out = cls.compute(NumpyOps(integer, view.attrs), cls.flags(view), view, *inputs)
        return (np.array(out, copy=True),)  # never the caller's own array

    @classmethod
    def torch_forward(cls, view: NodeView, *inputs: Any) -> tuple[Any, ...]:
        from hnnx.ops.torch_ops import TorchOps

        xp = TorchOps(view.attrs["mode"] == "integer", view.attrs, inputs[0].device)
        return (cls.compute(xp, cls.flags(view), view, *inputs),)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        xp = OnnxOps(body.top, view.attrs["mode"] == "integer")
        names = [body.input(i) if view.has_input(i) else None for i in range(len(cls.inputs))]
        body.set_output(0, cls.compute(xp, cls.flags(view), view, *names))


def broadcast_shape(shapes: list[list[Any] | None]) -> list[Any] | None:
    """The numpy broadcast of ONNX shapes (dims: ints or :class:`~hnnx.ops.declare.UnknownDim`)."""
    if any(shape is None for shape in shapes):
        return None
    rank = max(len(shape) for shape in shapes)
    padded = [[1] * (rank - len(shape)) + list(shape) for shape in shapes]
    out = []
    for dims in zip(*padded):
        known = [d for d in dims if not (isinstance(d, int) and d == 1)]
        out.append(known[0] if known else 1)
    return out


def _fired(xp: Any, spikes: Any) -> Any:
    """The boolean spikes of 0/1 spikes (a reset or an update after a spike carries no gradient)."""
    return xp.greater(spikes, xp.literal(0))


def _attrs(*names: str) -> tuple[Attribute, ...]:
    return tuple(LIF.attribute(name) for name in names)


class Accumulate(Primitive):
    """Accumulate with refractory gating, one step: ``v1 = v + current`` where ``refractory = 0``, else ``v``.

    HNN's AccumulateWithRefractory (LIF step 2). Integer mode saturates the current to the state
    range first, then the sum (``state_bits``-bit signed). Without ``refractory`` every element
    accumulates.
    """

    name = "Accumulate"
    inputs = (
        Port("v", "membrane before the step"),
        Port("current", "input of the step, broadcastable to `v`"),
        Port("refractory", "refractory counter (input ignored where > 0)", type="tensor(int32)", optional=True),
    )
    outputs = (Port("v1", "membrane after integration"),)
    attributes = _attrs("mode", "state_bits")
    port_units = ((MEMBRANE, MEMBRANE, COUNT), (MEMBRANE,))

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, v: Any, current: Any,
                refractory: Any = None) -> Any:
        return P.accumulate(xp, flags, v, P.clamp_state(xp, flags, current), refractory)


class Leak(Primitive):
    """Leak, one step: ``y = alpha·v + beta`` (integer: ``floor(round(256·alpha)·v / 256) + beta``).

    HNN's Leaky (LIF step 5, before the lower saturation). ``alpha = 1`` is no multiplicative
    leak; integer mode saturates the sum with ``beta``.
    """

    name = "Leak"
    inputs = (Port("v", "membrane"),)
    outputs = (Port("y", "leaked membrane"),)
    attributes = _attrs("mode", "alpha", "beta", "state_bits")
    port_units = ((MEMBRANE,), (MEMBRANE,))
    membrane_constants = ("beta",)
    q8_factors = ("alpha",)
    parts = ("leak", "beta")

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, v: Any) -> Any:
        return P.leak(xp, flags, v)


class Saturate(Primitive):
    """Saturate, one step: ``y = max(x, v_lower)`` (lower bound), in integer mode after saturating ``x``
    to the state range.

    HNN's Saturate (the end of LIF step 5); without ``v_lower`` only the integer state width.
    """

    name = "Saturate"
    inputs = (Port("x", "membrane"),)
    outputs = (Port("y", "saturated membrane"),)
    attributes = _attrs("mode", "v_lower", "state_bits")
    port_units = ((MEMBRANE,), (MEMBRANE,))
    membrane_constants = ("v_lower",)
    parts = ("sat",)

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, x: Any) -> Any:
        return P.saturate_lower(xp, flags, P.clamp_state(xp, flags, x))


class Reset(Primitive):
    """Reset after a spike, one step: where ``spikes = 1``, ``hard`` → ``v_reset``, ``soft`` →
    ``v − threshold``, ``soft_constant`` → ``v − reset_decrement``, ``none`` → ``v``.

    HNN's ResetAfterSpike (LIF step 4); integer mode saturates the subtractions. Input
    ``threshold`` (the firing threshold, broadcastable) is needed by the ``soft`` mode only. The
    spikes select without a gradient (a detached reset, as in ``hnnx.LIF``).
    """

    name = "Reset"
    inputs = (
        Port("v", "membrane after integration"),
        Port("spikes", "0/1 spikes of the step"),
        Port("threshold", "the threshold the spikes fired at (`soft` mode)", optional=True),
    )
    outputs = (Port("y", "membrane after the reset"),)
    attributes = _attrs("mode", "reset_mode", "v_reset", "reset_decrement", "state_bits")
    port_units = ((MEMBRANE, SPIKES, MEMBRANE), (MEMBRANE,))
    membrane_constants = ("v_reset", "reset_decrement")

    @classmethod
    def shaping_inputs(cls, view: NodeView) -> tuple[int, ...]:
        return (0,) if view.attrs["reset_mode"] == "none" else super().shaping_inputs(view)

    @classmethod
    def check_ports(cls, view: NodeView) -> None:
        if view.attrs["reset_mode"] == "soft" and not view.has_input(2):
            raise NodeError(view.name, "Reset in soft mode needs input 2 (the threshold it subtracts)")

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, v: Any, spikes: Any,
                threshold: Any = None) -> Any:
        return P.reset(xp, flags, v, _fired(xp, spikes), threshold)


class Threshold(Primitive):
    """Threshold accumulate, one step: ``θ = max(threshold + theta_a, v_lower)`` (the base threshold
    plus its adaptive component).

    HNN's ThresholdAccumulateWithSaturate (LIF step 1); the lower bound only when ``v_lower`` is
    set; integer mode saturates the sum.
    """

    name = "Threshold"
    inputs = (Port("theta_a", "adaptive threshold component θa"),)
    outputs = (Port("theta", "firing threshold of the step"),)
    attributes = _attrs("mode", "threshold", "v_lower", "state_bits")
    port_units = ((MEMBRANE,), (MEMBRANE,))
    membrane_constants = ("threshold", "v_lower")
    parts = ("sat",)

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, theta_a: Any) -> Any:
        return P.threshold(xp, flags, theta_a)


class ThresholdDynamics(Primitive):
    """Threshold dynamics, one step: ``θa' = theta_alpha·θa + theta_beta + spikes·theta_increment``.

    HNN's ThresholdDynamics (LIF step 6): integer ``floor(round(256·theta_alpha)·θa / 256) + …``,
    saturated; the spikes select without a gradient.
    """

    name = "ThresholdDynamics"
    inputs = (Port("theta_a", "adaptive threshold component θa"), Port("spikes", "0/1 spikes of the step"))
    outputs = (Port("theta_a_next", "θa of the next step"),)
    attributes = _attrs("mode", "theta_alpha", "theta_beta", "theta_increment", "state_bits")
    port_units = ((MEMBRANE, SPIKES), (MEMBRANE,))
    membrane_constants = ("theta_beta", "theta_increment")
    q8_factors = ("theta_alpha",)
    parts = ("theta_leak",)

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, theta_a: Any, spikes: Any) -> Any:
        return P.threshold_dynamics(xp, flags, theta_a, _fired(xp, spikes))


class Refractory(Primitive):
    """Refractory counting, one step: ``r' = refractory`` where ``spikes = 1``, else ``max(r − 1, 0)``.

    HNN's Refractory (LIF step 7); the counter is int32 in both modes, the spikes in the compute
    type.
    """

    name = "Refractory"
    inputs = (Port("counter", "refractory counter (steps)", type="tensor(int32)"),
              Port("spikes", "0/1 spikes of the step"))
    outputs = (Port("counter_next", "counter of the next step", type="tensor(int32)"),)
    attributes = _attrs("mode", "refractory", "state_bits")
    port_units = ((COUNT, SPIKES), (COUNT,))

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        if attrs["refractory"] < 0:
            raise NodeError(node, f"Refractory attribute 'refractory' must be ≥ 0, got {attrs['refractory']}")
        super().validate(attrs, node)

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, counter: Any, spikes: Any) -> Any:
        return P.refractory_count(xp, counter, _fired(xp, spikes))

    @classmethod
    def reference(cls, view: NodeView, *inputs: np.ndarray | None) -> tuple[np.ndarray, ...]:
        return tuple(out.astype(np.int32, copy=False) for out in super().reference(view, *inputs))


class Product(Primitive):
    """Product of two membrane values, one step: ``y = gain·(a·b)`` (integer:
    ``floor(round(256·gain)·clamp(floor(a·b / 2^shift)) / 256)``).

    Not one of HNN's primitives: the non-linear term of neurons such as the quadratic
    integrate-and-fire (``gain·(v − v_rest)·(v − v_crit)``). In membrane units the product has
    units², so an integer node on currents ``σ`` times the float ones stands for the float gain
    ``gain·2^−shift / σ`` per unit; its gain must be a multiple of 1/256 in [0, 1] (as ``alpha``)
    and ``shift ≥ 0``; the products are exact (int64) and ``floor(a·b / 2^shift)`` saturates to
    the state range. Float mode takes ``shift = 0``.
    """

    name = "Product"
    inputs = (Port("a", "membrane"), Port("b", "membrane, broadcastable to `a`"))
    outputs = (Port("y", "gain·a·b"),)
    attributes = (LIF.attribute("mode"),
                  Attribute("gain", float, 1.0, "factor of the product (integer mode: a multiple of 1/256 in [0, 1])"),
                  Attribute("shift", int, 0, "integer mode: right shift of the product before the gain"),
                  LIF.attribute("state_bits"))
    port_units = ((MEMBRANE, MEMBRANE), (MEMBRANE,))

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        validate_neuron(cls.name, attrs, node, (), ("gain",) if attrs["mode"] == "integer" else ())
        if not 0 <= attrs["shift"] <= 62 or (attrs["shift"] and attrs["mode"] != "integer"):
            raise NodeError(node, f"Product attribute 'shift' must lie in [0, 62] (0 in float mode), "
                                  f"got {attrs['shift']}")

    @classmethod
    def structure(cls, view: NodeView) -> str:
        return f"{neuron_structure(view, cls.flags(view), ())}-shift{view.attrs['shift']}"

    @classmethod
    def compute(cls, xp: Any, flags: SimpleNamespace, view: NodeView, a: Any, b: Any) -> Any:
        return P.product(xp, flags, a, b, view.attrs["shift"])

    @classmethod
    def integer_attributes(cls, view: NodeView, scale: float) -> dict[str, Any]:
        """The integer node for inputs ``scale`` times the float ones: the float gain per unit
        ``g = gain / scale`` as ``round(256·f)/256 · 2^−shift`` with ``f`` in (1/2, 1] (8 bits, as
        the leak factors). NodeError when ``g`` is negative or above 1."""
        attrs = dict(view.attrs)
        if attrs["mode"] == "integer":
            raise NodeError(view.name, "already an integer-mode Product")
        per_unit = attrs["gain"] / scale
        if not 0.0 <= per_unit <= 1.0:
            raise NodeError(view.name, f"Product gain {attrs['gain']} / weight scale {scale:.6g} = {per_unit:.6g} "
                                       f"has no integer form (it must lie in [0, 1])")
        shift = 0
        while per_unit and per_unit * 2 ** (shift + 1) <= 1.0 and shift < 62:
            shift += 1
        attrs.update(mode="integer", gain=float(np.round(per_unit * 2**shift * 256) / 256), shift=shift)
        cls.validate(attrs, view.name)
        return attrs


PRIMITIVES: tuple[type[Primitive], ...] = (Accumulate, Leak, Saturate, Reset, Threshold, ThresholdDynamics,
                                           Refractory, Product)
"""The single-step primitive ops (``hnnx.Fire`` is declared in :mod:`hnnx.ops.fire`)."""
