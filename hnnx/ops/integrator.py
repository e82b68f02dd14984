"""``hnnx.LI`` and ``hnnx.Integrator`` — neurons without spikes (NIR ``LI`` and ``I``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from hnnx.ops.arrays import FunctionBody, NumpyOps, OnnxOps
from hnnx.ops.cuba import check_array_type, check_current_type, neuron_body, run_time_loop
from hnnx.ops.declare import NO_TIME, TIME_MAJOR, NodeView, OpDeclaration, Port, StateSpec, TypeConstraint
from hnnx.ops import primitives as P
from hnnx.ops.lif import LIF, integer_neuron_attributes, neuron_flags, neuron_structure, validate_neuron
from hnnx.ops.primitives import clamp_state


class LI(OpDeclaration):
    """Leaky integrator over time axis 0: current ``[T, N, ...]`` → membrane potential ``[T, N, ...]`` (no spikes).

    Per time step t, for every neuron: integrate ``v1 = v + u[t]`` — the output of the step,
    ``y[t] = v1`` — then leak ``v' = alpha·v1 + beta`` for the next step (integer mode:
    ``floor(round(256·alpha)·v1 / 256) + beta``). The first step starts from ``v0`` (input) or
    ``v_init``, un-leaked, as in LIF: these are LIF's steps 2 and 5 without firing. NIR's
    ``LI`` (``τ dv/dt = v_leak − v + R·I``) in forward Euler at step ``dt`` is ``alpha = 1 − dt/τ``,
    ``beta = v_leak·dt/τ`` and the input scaled by ``R·dt/τ``.

    ``mode = "integer"``: int32; the input, ``v1`` and ``v'`` saturate to signed
    ``state_bits``-bit integers; ``beta`` and ``v_init`` are integers of magnitude ≤ 2^24 and
    ``alpha`` a multiple of 1/256.
    """

    name = "LI"
    neuron = True
    inputs = (
        Port("current", "input current per step, [T, N, ...]", time=TIME_MAJOR),
        Port("v0", "initial membrane potential, broadcastable to [N, ...]", optional=True, time=NO_TIME),
    )
    outputs = (
        Port("y", "membrane potential after integration at every step, [T, N, ...]", time=TIME_MAJOR),
        Port("v", "membrane potential after the last step (leaked: where the next step starts), [N, ...]",
             optional=True, time=NO_TIME),
    )
    type_constraints = (
        TypeConstraint("T", ("tensor(float)", "tensor(int32)"), "float32 in float mode, int32 in integer mode"),
    )
    attributes = tuple(LIF.attribute(name) for name in ("mode", "alpha", "beta", "v_init", "state_bits"))
    membrane_constants: tuple[str, ...] = ("beta", "v_init")
    q8_factors: tuple[str, ...] = ("alpha",)

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        validate_neuron(cls.name, attrs, node, cls.membrane_constants, cls.q8_factors)

    @classmethod
    def structure(cls, view: NodeView) -> str:
        return neuron_structure(view, _flags(view), ("leak", "beta"))

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        check_current_type(view, cls.name, elem_types[0])

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        current = shapes[0]
        return [current, None if current is None else list(current[1:])][: view.n_outputs]

    # ------------------------------------------------------------------ state and steps
    @classmethod
    def state_names(cls, view: NodeView) -> tuple[str, ...]:
        """``v``: input port 1 before the first step, output port 1 after the last."""
        return ("v",)

    @classmethod
    def state_spec(cls, view: NodeView) -> tuple[StateSpec, ...]:
        compute = np.dtype(np.int32 if view.attrs["mode"] == "integer" else np.float32)
        return (StateSpec("v", 1, 1, compute, view.attrs["v_init"], doc="membrane potential"),)

    @classmethod
    def initial_state(cls, view: NodeView, neuron_shape: tuple[int, ...], v0: np.ndarray | None = None) -> np.ndarray:
        """The membrane before step 0, ``neuron_shape``: ``v0`` broadcast (else ``v_init``), saturated."""
        flags = _flags(view)
        xp = NumpyOps(flags.integer, view.attrs)
        v = clamp_state(xp, flags, xp.initial_state(v0, xp.param("v_init"), tuple(neuron_shape)))
        return v.reshape(neuron_shape)

    @classmethod
    def step(cls, view: NodeView, v: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One time step (numpy): ``(y [N, ...], next v)`` from ``v`` and ``current [N, ...]``."""
        check_array_type(view, cls.name, current)
        flags = _flags(view)
        (v_next,), (y,) = _step_for(flags)(NumpyOps(flags.integer, view.attrs), [v], [current])
        return y, v_next

    @classmethod
    def integer_attributes(cls, view: NodeView, scale: float) -> dict[str, Any]:
        """The integer-mode attributes for an input ``scale`` times the float input: see
        :meth:`hnnx.ops.LIF.integer_attributes` (the output is then ``scale`` times the float one)."""
        return integer_neuron_attributes(cls, view, scale, cls.membrane_constants, cls.q8_factors)

    # ------------------------------------------------------------------ numerics
    @classmethod
    def reference(cls, view: NodeView, current: np.ndarray, v0: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        check_array_type(view, cls.name, current)
        return _run_eager(view, NumpyOps(view.attrs["mode"] == "integer", view.attrs), current, v0)

    @classmethod
    def torch_forward(cls, view: NodeView, current: Any, v0: Any = None) -> tuple[Any, ...]:
        from hnnx.ops.torch_ops import TorchOps

        return _run_eager(view, TorchOps(view.attrs["mode"] == "integer", view.attrs, current.device), current, v0)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        flags = _flags(view)
        xp = OnnxOps(body.top, flags.integer)

        def step_for(_: Any) -> Callable:
            return _step_for(flags)

        neuron_body(body, xp, [1], [xp.param("v_init")], lambda states: [clamp_state(xp, flags, states[0])],
                    step_for, recurrent=False)


class Integrator(LI):
    """Integrator over time axis 0: current ``[T, N, ...]`` → accumulated input ``[T, N, ...]`` (no spikes, no leak).

    Per time step t: ``v1 = v + u[t]``, the output ``y[t] = v1`` and the next step's state (LI
    with ``alpha = 1``, ``beta = 0``). The first step starts from ``v0`` or ``v_init``. NIR's
    ``I`` (``dv/dt = R·I``) in forward Euler at step ``dt`` is this node on the input scaled by
    ``R·dt``. ``mode = "integer"``: int32, the input and ``v1`` saturate to signed
    ``state_bits``-bit integers; ``v_init`` is an integer of magnitude ≤ 2^24.
    """

    name = "Integrator"
    attributes = tuple(LIF.attribute(name) for name in ("mode", "v_init", "state_bits"))
    membrane_constants = ("v_init",)
    q8_factors = ()


def _flags(view: NodeView) -> SimpleNamespace:
    return neuron_flags(view.attrs)


def _run_eager(view: NodeView, xp: Any, current: Any, v0: Any) -> tuple[Any, ...]:
    flags = _flags(view)
    state = clamp_state(xp, flags, xp.initial_state(v0, xp.param("v_init"), tuple(current.shape[1:])))
    return run_time_loop(xp, _step_for(flags), [state], current, view.n_outputs)


def _step_for(flags: SimpleNamespace) -> Callable:
    """The per-step equations (see the LI docstring) for the state ``[v]``."""

    def step(xp: Any, states: list[Any], xs: list[Any]) -> tuple[list[Any], list[Any]]:
        (v,), (u,) = states, xs
        v1 = P.accumulate(xp, flags, v, clamp_state(xp, flags, u))
        return [P.leak(xp, flags, v1)], [v1]

    return step
