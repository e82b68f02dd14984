"""``hnnx.CubaLIF`` — the current-based leaky integrate-and-fire neuron (NIR ``CubaLIF``)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from hnnx.errors import NodeError
from hnnx.ops.arrays import FLOAT, INT32, FunctionBody, NumpyOps, OnnxOps, onnx_time_scan
from hnnx.ops.declare import NO_TIME, TIME_MAJOR, Attribute, NodeView, OpDeclaration, Port, StateSpec, TypeConstraint
from hnnx.ops import primitives as P
from hnnx.ops.lif import (LIF, add_recurrence, check_recurrence, check_recurrent_ports, integer_neuron_attributes,
                          membrane_step, neuron_flags, neuron_structure, validate_neuron)
from hnnx.ops.primitives import clamp_state

MEMBRANE_CONSTANTS = ("threshold", "v_reset", "reset_decrement", "v_init", "beta", "v_lower", "i_init")
"""Attributes in the units of the current and the membrane: integers in integer mode."""
Q8_FACTORS = ("alpha", "alpha_syn")
"""Decay factors that integer mode applies as ``floor(round(256·factor)·x / 256)``."""


class CubaLIF(OpDeclaration):
    """Current-based leaky integrate-and-fire neuron over time axis 0: current ``[T, N, ...]`` → spikes ``[T, N, ...]``.

    A synaptic current ``i`` with its own decay sits between the input and the membrane (NIR's
    ``CubaLIF``, snnTorch's ``Synaptic``). Per time step t, for every neuron, in this order:

    1. synapse: ``i1 = i + x[t]`` (``x[t] = u[t] + r[t]`` for a recurrent node, see below);
    2. integrate: ``v1 = v + i1``;
    3. fire: ``s = 1 if v1 > threshold else 0`` (strict);
    4. reset where ``s = 1``: ``hard``: ``v2 = v_reset``; ``soft``: ``v2 = v1 − threshold``;
       ``soft_constant``: ``v2 = v1 − reset_decrement``; ``none``: ``v2 = v1`` (the synaptic
       current is not reset);
    5. membrane leak: ``v' = alpha·v2 + beta``, then ``max(v', v_lower)`` if set;
    6. synaptic leak: ``i' = alpha_syn·i1``.

    Steps 2–5 are :class:`~hnnx.ops.LIF`'s equations with ``i1`` as its input current. The first
    step starts from ``v0``/``i0`` (inputs) or ``v_init``/``i_init`` (attributes), un-leaked, as
    in LIF. ``alpha_syn = 0`` makes it a LIF neuron on the same input. A forward-Euler
    discretisation of NIR's ``τ_syn dI/dt = −I + w_in·S``, ``τ_mem dv/dt = v_leak − v + R·I`` at
    step ``dt`` is ``alpha_syn = 1 − dt/τ_syn``, ``alpha = 1 − dt/τ_mem``, ``beta = v_leak·dt/τ_mem``
    and the input scaled by ``w_in·R·dt²/(τ_syn·τ_mem)`` before the node (the membrane gain
    carried into the synaptic current, which is linear).

    Recurrence (input ``recurrent_weight`` ``W [F, F]``): the input of step t is ``u[t]`` plus
    ``s[t−1] @ W`` summed as in LIF (float64 in the order of the presynaptic index, rounded once;
    integer: int64, saturated), the spikes of the step before kept as state ``last_spikes``.

    ``mode = "integer"``: int32 tensors; the input, ``i1``, every membrane stage and the
    synaptic current saturate to signed ``state_bits``-bit integers; constants are integers of
    magnitude ≤ 2^24; ``alpha`` and ``alpha_syn`` are multiples of 1/256 applied as
    ``floor(round(256·a)·x / 256)`` (exact, int64 products).

    ``surrogate``/``surrogate_width`` choose the pseudo-derivative used when training, as in LIF.
    """

    name = "CubaLIF"
    neuron = True
    inputs = (
        Port("current", "input per step, [T, N, ...]", time=TIME_MAJOR),
        Port("v0", "initial membrane potential, broadcastable to [N, ...]", optional=True, time=NO_TIME),
        Port("i0", "initial synaptic current, broadcastable to [N, ...]", optional=True, time=NO_TIME),
        Port("last_spikes0", "recurrent nodes: spikes of the step before step 0, broadcastable to [N, ...] "
             "(default 0)", optional=True, time=NO_TIME),
        Port("recurrent_weight", "recurrent weight W [F, F] (F = neurons per sample; rows presynaptic): "
             "step t adds s[t−1] @ W to the input", optional=True, time=NO_TIME),
    )
    outputs = (
        Port("spikes", "0/1 spikes, [T, N, ...], in the type of `current`", time=TIME_MAJOR),
        Port("v", "membrane potential after the last step, [N, ...]", optional=True, time=NO_TIME),
        Port("i", "synaptic current after the last step, [N, ...]", optional=True, time=NO_TIME),
        Port("last_spikes", "recurrent nodes: spikes of the last step, [N, ...]", optional=True, time=NO_TIME),
    )
    type_constraints = (
        TypeConstraint("T", ("tensor(float)", "tensor(int32)"), "float32 in float mode, int32 in integer mode"),
    )
    attributes = tuple(LIF.attribute(name) for name in ("mode", "threshold", "reset_mode", "v_reset",
                                                         "reset_decrement", "v_init", "alpha", "beta", "v_lower")) + (
        Attribute("alpha_syn", float, 1.0, "multiplicative decay of the synaptic current in [0, 1]"),
        Attribute("i_init", float, 0.0, "initial synaptic current when input `i0` is absent"),
    ) + tuple(LIF.attribute(name) for name in ("state_bits", "surrogate", "surrogate_width"))

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        validate_neuron(cls.name, attrs, node, MEMBRANE_CONSTANTS, Q8_FACTORS)

    @classmethod
    def check_ports(cls, view: NodeView) -> None:
        check_recurrent_ports(cls, view, state_port=3, weight_port=4)

    @classmethod
    def structure(cls, view: NodeView) -> str:
        return neuron_structure(view, _flags(view), ("leak", "beta", "sat", "syn_leak", "rec"))

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        check_current_type(view, cls.name, elem_types[0])

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        current = shapes[0]
        neurons = None if current is None else list(current[1:])
        return [current, neurons, neurons, neurons][: view.n_outputs]

    @classmethod
    def emits_spikes(cls, view: NodeView) -> bool:
        return True

    # ------------------------------------------------------------------ state and steps
    @classmethod
    def state_names(cls, view: NodeView) -> tuple[str, ...]:
        """``v``, ``i`` and, for a recurrent node, ``last_spikes``; input and output port ``k``
        (k ≥ 1) hold state ``k − 1``."""
        return ("v", "i") + (("last_spikes",) if _flags(view).rec else ())

    @classmethod
    def state_spec(cls, view: NodeView) -> tuple[StateSpec, ...]:
        """The states of :meth:`state_names`, each shaped like one step of the current (``[N, ...]``)."""
        compute = np.dtype(np.int32 if view.attrs["mode"] == "integer" else np.float32)
        specs = (StateSpec("v", 1, 1, compute, view.attrs["v_init"], doc="membrane potential"),
                 StateSpec("i", 2, 2, compute, view.attrs["i_init"], doc="synaptic current"),
                 StateSpec("last_spikes", 3, 3, compute, 0, doc="spikes of the last step"))
        return specs[: len(cls.state_names(view))]

    @classmethod
    def initial_state(cls, view: NodeView, neuron_shape: tuple[int, ...], v0: np.ndarray | None = None,
                      i0: np.ndarray | None = None, last_spikes0: np.ndarray | None = None) -> list[np.ndarray]:
        """The states of :meth:`state_names` before step 0, each ``neuron_shape`` (``[N, ...]``): the
        given values broadcast (else ``v_init``, ``i_init``, 0), integer ones saturated."""
        flags = _flags(view)
        xp = NumpyOps(flags.integer, view.attrs)
        states = _initial_states(xp, flags, tuple(neuron_shape), v0, i0, last_spikes0)
        return [state.reshape(neuron_shape) for state in states]

    @classmethod
    def step(cls, view: NodeView, state: Sequence[np.ndarray], current: np.ndarray,
             recurrent_weight: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One time step (numpy): ``current [N, ...]`` and the states of :meth:`state_names` →
        ``(spikes [N, ...], next states)``; the equations of the reference, bit for bit."""
        flags = _flags(view)
        xp = NumpyOps(flags.integer, view.attrs)
        check_array_type(view, cls.name, current)
        rows = check_recurrence(view, flags.rec, (1, *current.shape), recurrent_weight)
        new_states, (spikes,) = _step_for(flags, weight=recurrent_weight, rows=rows)(xp, list(state), [current])
        return spikes, new_states

    @classmethod
    def integer_attributes(cls, view: NodeView, scale: float) -> dict[str, Any]:
        """The integer-mode attributes for an input ``scale`` times the float input (the synaptic
        current and the membrane carry that scale): see :meth:`hnnx.ops.LIF.integer_attributes`."""
        return integer_neuron_attributes(cls, view, scale, MEMBRANE_CONSTANTS, Q8_FACTORS)

    # ------------------------------------------------------------------ numerics
    @classmethod
    def reference(cls, view: NodeView, current: np.ndarray, v0: np.ndarray | None = None, i0: np.ndarray | None = None,
                  last_spikes0: np.ndarray | None = None, recurrent_weight: np.ndarray | None = None
                  ) -> tuple[np.ndarray, ...]:
        check_array_type(view, cls.name, current)
        xp = NumpyOps(view.attrs["mode"] == "integer", view.attrs)
        return _run_eager(view, xp, current, v0, i0, last_spikes0, recurrent_weight)

    @classmethod
    def torch_forward(cls, view: NodeView, current: Any, v0: Any = None, i0: Any = None, last_spikes0: Any = None,
                      recurrent_weight: Any = None) -> tuple[Any, ...]:
        from hnnx.ops.torch_ops import TorchOps

        xp = TorchOps(view.attrs["mode"] == "integer", view.attrs, current.device)
        return _run_eager(view, xp, current, v0, i0, last_spikes0, recurrent_weight)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        flags = _flags(view)
        xp = OnnxOps(body.top, flags.integer)
        fills = [xp.param("v_init"), xp.param("i_init")] + ([xp.literal(0)] if flags.rec else [])
        ports = [1, 2, 3][: len(fills)]

        def step_for(rows: str | None) -> Callable:
            return _step_for(flags, weight=body.input(4) if flags.rec else None, rows=rows)

        neuron_body(body, xp, ports, fills, lambda states: [clamp_state(xp, flags, s) for s in states[:2]] + states[2:],
                    step_for, flags.rec)


# ---------------------------------------------------------------------------- shared by CubaLIF, LI, Integrator
def check_current_type(view: NodeView, op: str, elem: int | None) -> None:
    """Integer mode takes int32, float mode float32 (ONNX element type ``elem``; None = unknown)."""
    expected = INT32 if view.attrs["mode"] == "integer" else FLOAT
    if elem not in (expected, None, 0):
        name = onnx.TensorProto.DataType.Name
        raise NodeError(view.name, f"{op} in {view.attrs['mode']} mode needs {name(expected).lower()} "
                                   f"current, got {name(elem).lower()}")


def check_array_type(view: NodeView, op: str, current: Any) -> None:
    """The numpy form of :func:`check_current_type`."""
    dtype = np.int32 if view.attrs["mode"] == "integer" else np.float32
    if current.dtype != dtype:
        raise NodeError(view.name, f"{op} in {view.attrs['mode']} mode needs {np.dtype(dtype).name} current, "
                                   f"got {current.dtype}")


def run_time_loop(xp: Any, step: Callable, states: list[Any], current: Any, n_outputs: int,
                  time_outputs: int = 1) -> tuple[Any, ...]:
    """Run ``step`` over the flat current ``[T, M]`` from flat states ``[M]``; returns the first
    ``time_outputs`` per-step outputs (``[T, N, ...]``) and then the final states (``[N, ...]``),
    ``n_outputs`` arrays in all."""
    neuron_shape = tuple(current.shape[1:])
    flat = current.reshape(current.shape[0], math.prod(neuron_shape))
    finals, ys = xp.time_loop(step, states, [flat])
    outputs = [y.reshape(current.shape) for y in ys[:time_outputs]] + [f.reshape(neuron_shape) for f in finals]
    return tuple(outputs[:n_outputs])


def neuron_body(body: FunctionBody, xp: OnnxOps, ports: list[int], fills: list[str],
                admit: Callable[[list[str]], list[str]], step_for: Callable[[str | None], Callable],
                recurrent: bool, time_outputs: int = 1) -> None:
    """The function body of a neuron op: flatten the current ``[T, N, ...]`` to ``[T, M]``, take
    each state from its input port (broadcast) or its fill, ``admit`` them, scan the step function
    (``step_for(rows)``; ``rows`` is ``[N]`` for a recurrent node), restore the shapes, and set
    the per-step outputs then the final states as the node's outputs."""
    top = body.top
    current = body.input(0)
    shape = top.op("Shape", current)
    neuron_shape = top.op("Slice", shape, body.literal_1d([1]), body.literal_1d([2**62]))
    size = top.op("ReduceProd", neuron_shape, keepdims=1)
    steps = top.op("Slice", shape, body.literal_1d([0]), body.literal_1d([1]))
    flat = top.op("Reshape", current, top.op("Concat", steps, size, axis=0), allowzero=1)

    def initial(port: int, fill: str) -> str:
        if body.view.has_input(port):
            return top.op("Reshape", top.op("Expand", body.input(port), neuron_shape), size, allowzero=1)
        return top.op("Expand", fill, size)

    states = admit([initial(port, fill) for port, fill in zip(ports, fills)])
    rows = top.op("Slice", shape, body.literal_1d([1]), body.literal_1d([2])) if recurrent else None
    finals, ys = onnx_time_scan(body, step_for(rows), xp.integer, [(s, xp.elem) for s in states],
                                [(flat, xp.elem)], [xp.elem] * time_outputs)
    for index, y in enumerate(ys):
        body.set_output(index, top.op("Reshape", y, shape, allowzero=1))
    for index, final in enumerate(finals, time_outputs):
        body.set_output(index, top.op("Reshape", final, neuron_shape, allowzero=1))


def _flags(view: NodeView) -> SimpleNamespace:
    flags = neuron_flags(view.attrs, rec=view.has_input(4))
    flags.syn_leak = view.attrs["alpha_syn"] != 1.0
    return flags


def _initial_states(xp: Any, flags: SimpleNamespace, neuron_shape: tuple[int, ...], v0: Any, i0: Any,
                    last_spikes0: Any) -> list[Any]:
    states = [clamp_state(xp, flags, xp.initial_state(v0, xp.param("v_init"), neuron_shape)),
              clamp_state(xp, flags, xp.initial_state(i0, xp.param("i_init"), neuron_shape))]
    if flags.rec:
        states.append(xp.initial_state(last_spikes0, xp.literal(0), neuron_shape))
    return states


def _run_eager(view: NodeView, xp: Any, current: Any, v0: Any, i0: Any, last_spikes0: Any,
               recurrent_weight: Any) -> tuple[Any, ...]:
    flags = _flags(view)
    rows = check_recurrence(view, flags.rec, tuple(current.shape), recurrent_weight)
    states = _initial_states(xp, flags, tuple(current.shape[1:]), v0, i0, last_spikes0)
    return run_time_loop(xp, _step_for(flags, weight=recurrent_weight, rows=rows), states, current, view.n_outputs)


def _step_for(flags: SimpleNamespace, weight: Any = None, rows: Any = None) -> Callable:
    """The per-step equations (see the CubaLIF docstring) for states ``[v, i, last_spikes?]``."""
    membrane = membrane_step(flags)

    def step(xp: Any, states: list[Any], xs: list[Any]) -> tuple[list[Any], list[Any]]:
        v, i = states[0], states[1]
        (x,) = xs
        if flags.rec:
            x = add_recurrence(xp, flags, x, states[2], weight, rows)
        else:
            x = clamp_state(xp, flags, x)
        i1 = P.accumulate(xp, flags, i, x)  # the synaptic current accumulates (never gated)
        (v_next,), outputs = membrane(xp, [v], [i1])
        i_next = P.scaled(xp, flags, i1, "alpha_syn") if flags.syn_leak else i1
        return [v_next, i_next] + ([outputs[0]] if flags.rec else []), outputs

    return step
