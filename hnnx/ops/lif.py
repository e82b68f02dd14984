"""``hnnx.LIF`` — the full leaky integrate-and-fire neuron (ExtendedLIF / TianjicX P08)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx

from hnnx.errors import NodeError
from hnnx.ops.arrays import FLOAT, INT32, FunctionBody, NumpyOps, OnnxOps, onnx_time_scan
from hnnx.ops.declare import (NO_TIME, TIME_MAJOR, Attribute, NodeView, OpDeclaration, Port, StateSpec,
                              TypeConstraint, port_key)
from hnnx.ops import primitives as P
from hnnx.ops.primitives import clamp_state, state_range

__all__ = ["LIF", "LIFState", "state_range"]

EXACT_ATTRIBUTE_LIMIT = 2**24
"""Integer-mode constants travel in float32 attributes, exact up to this magnitude."""

RESET_MODES = ("hard", "soft", "soft_constant", "none")
SURROGATES = ("rectangle", "sigmoid", "atan")

MEMBRANE_CONSTANTS = ("threshold", "v_reset", "reset_decrement", "v_init", "beta", "v_lower",
                      "theta_beta", "theta_increment")
"""Attributes in the membrane's units: integers in integer mode, scaled with the input current."""
Q8_FACTORS = ("alpha", "theta_alpha")
"""Multiplicative factors that integer mode applies as ``floor(round(256·factor)·x / 256)``."""


@dataclass
class LIFState:
    """What LIF neurons carry from one time step to the next, each array ``[*neuron_shape]``.

    ``v``: membrane potential (float32, or int32 in integer mode); ``theta``: the adaptive
    threshold component θa (same type; None when the node has no threshold adaptation);
    ``refractory``: remaining refractory steps (int32; None when the node has no refractory
    period); ``last_spikes``: the spikes of the step before (recurrent nodes only; None
    otherwise). Which of them a node carries is :meth:`LIF.state_names`.
    """

    v: np.ndarray
    theta: np.ndarray | None = None
    refractory: np.ndarray | None = None
    last_spikes: np.ndarray | None = None

    def arrays(self) -> list[np.ndarray]:
        """The carried arrays in port order (v, then theta, refractory and last_spikes when carried)."""
        return [a for a in (self.v, self.theta, self.refractory, self.last_spikes) if a is not None]


class LIF(OpDeclaration):
    """Leaky integrate-and-fire neuron over time axis 0: current ``[T, N, ...]`` → spikes ``[T, N, ...]``.

    Per time step t, for every neuron, in this order (the ExtendedLIF neuron of the HNN
    framework and the TianjicX soma primitive P08, without threshold noise):

    1. threshold: ``θ = θ0 + θa`` (``θa`` = adaptive component from the previous step,
       only when threshold adaptation is on), then ``θ = max(θ, v_lower)`` if ``v_lower`` is set;
    2. integrate: ``v1 = v + u[t]`` while the refractory counter is 0, else ``v1 = v``;
    3. fire: ``s = 1 if v1 > θ else 0`` (strict);
    4. reset where ``s = 1``: ``hard``: ``v2 = v_reset``; ``soft``: ``v2 = v1 − θ``;
       ``soft_constant``: ``v2 = v1 − reset_decrement``; ``none``: ``v2 = v1``;
    5. leak: ``v3 = alpha·v2 + beta`` (``alpha = 1`` is no multiplicative leak; integer mode:
       ``floor(A·v2 / 256) + beta`` with ``A = round(256·alpha)``), then
       ``v3 = max(v3, v_lower)`` if set; ``v3`` is the state of the next step;
    6. threshold adaptation: ``θa' = theta_alpha·θa + theta_beta + s·theta_increment``
       (integer: ``floor(round(256·theta_alpha)·θa / 256) + …``);
    7. refractory: ``r' = refractory`` if ``s`` else ``max(r − 1, 0)``.

    The first step starts from ``v0`` (input) or ``v_init`` (attribute), un-leaked (HNN
    defaults ``v_init`` to ``v_reset``; hnnx takes it as given, 0 by default). Initial states
    are admitted as the neuron holds them: in integer mode ``v0`` and ``theta0`` saturate to
    the state range, and a negative ``refractory0`` counts as 0. IF is LIF with
    ``alpha = 1, beta = 0``.

    Recurrence (input ``recurrent_weight`` ``W [F, F]``, F = the neurons of one sample, i.e. the
    product of the dims after N): step t integrates ``u[t] + r[t]`` instead of ``u[t]``, with
    ``r[t, n, i] = Σ_j s[t−1, n, j]·W[j, i]`` — the layer's own spikes of the step before
    (``last_spikes0``, default 0, before step 0) through ``W`` (rows: presynaptic neurons). Float
    mode sums the products in float64 in the order of j and rounds once to float32 (so every
    executor gives the same bits); integer mode sums in int64 and saturates ``r`` and
    ``u + r`` to the state range. The weight is an input of the neuron, not a separate node,
    because an ONNX graph has no cycles: the one-step delay and the spikes it carries are the
    neuron's state (``last_spikes``), continued like ``v`` across calls. A recurrent bias is a
    constant added to ``u``.

    ``mode = "integer"``: int32 tensors; the input current, every membrane stage and the
    adaptive threshold saturate to signed ``state_bits``-bit integers (28 as on TianjicX);
    all constants must be integers of magnitude ≤ 2^24; ``256·alpha`` and
    ``256·theta_alpha`` must be integers. Integer arithmetic is exact (the leak product
    is formed in int64).

    ``steps > 0``: the current is the same at every step — ``current [1, N, ...]`` is applied
    at each of ``steps`` steps (spikes ``[steps, N, ...]``), as for a frame coded directly and
    passed through layers once rather than once per step; the neuron then reads one step's
    current instead of ``steps`` copies of it. ``steps = 0`` (default): the current holds every
    step.

    ``surrogate``/``surrogate_width`` do not change the forward pass; they choose the
    pseudo-derivative ``∂s/∂v`` used when training (rectangle: ``1/w`` inside
    ``|v − θ| < w/2``).
    """

    name = "LIF"
    neuron = True
    constant_current = "steps"
    inputs = (
        Port("current", "input current per step, [T, N, ...] ([1, N, ...] with `steps` > 0)", time=TIME_MAJOR),
        Port("v0", "initial membrane potential, broadcastable to [N, ...]", optional=True, time=NO_TIME),
        Port("theta0", "initial adaptive-threshold component θa, broadcastable to [N, ...]", optional=True,
             time=NO_TIME),
        Port("refractory0", "initial refractory counter (steps), broadcastable to [N, ...]",
             type="tensor(int32)", optional=True, time=NO_TIME),
        Port("last_spikes0", "recurrent nodes: spikes of the step before step 0, broadcastable to [N, ...] "
             "(default 0)", optional=True, time=NO_TIME),
        Port("recurrent_weight", "recurrent weight W [F, F] (F = neurons per sample; rows presynaptic): "
             "step t adds s[t−1] @ W to the current", optional=True, time=NO_TIME),
    )
    outputs = (
        Port("spikes", "0/1 spikes, [T, N, ...], in the type of `current`", time=TIME_MAJOR),
        Port("v", "membrane potential after the last step, [N, ...]", optional=True, time=NO_TIME),
        Port("theta", "adaptive-threshold component after the last step, [N, ...]", optional=True, time=NO_TIME),
        Port("refractory", "refractory counter after the last step, [N, ...]",
             type="tensor(int32)", optional=True, time=NO_TIME),
        Port("last_spikes", "recurrent nodes: spikes of the last step, [N, ...]", optional=True, time=NO_TIME),
    )
    type_constraints = (
        TypeConstraint("T", ("tensor(float)", "tensor(int32)"), "float32 in float mode, int32 in integer mode"),
    )
    attributes = (
        Attribute("mode", str, "float", "numeric mode: `float` (float32) or `integer` (int32, chip-exact)",
                  choices=("float", "integer")),
        Attribute("threshold", float, 1.0, "base firing threshold θ0"),
        Attribute("reset_mode", str, "hard", "`hard` (to v_reset), `soft` (subtract θ), "
                  "`soft_constant` (subtract reset_decrement) or `none`", choices=RESET_MODES),
        Attribute("v_reset", float, 0.0, "membrane value after a spike in `hard` reset mode"),
        Attribute("reset_decrement", float, 0.0, "amount subtracted after a spike in `soft_constant` mode"),
        Attribute("v_init", float, 0.0, "initial membrane when input `v0` is absent"),
        Attribute("alpha", float, 1.0, "multiplicative membrane leak in [0, 1]; 1 = no multiplicative leak"),
        Attribute("beta", float, 0.0, "additive membrane leak per step"),
        Attribute("v_lower", float, None, "lower saturation of membrane and threshold; absent = none"),
        Attribute("refractory", int, 0, "refractory period in steps after a spike (input ignored)"),
        Attribute("theta_alpha", float, 1.0, "multiplicative decay of the adaptive threshold θa, in [0, 1]"),
        Attribute("theta_beta", float, 0.0, "additive change of θa per step"),
        Attribute("theta_increment", float, 0.0, "increase of θa per spike"),
        Attribute("state_bits", int, 28, "integer mode: width of the signed saturating state"),
        Attribute("surrogate", str, "rectangle", "training pseudo-derivative: rectangle, sigmoid or atan",
                  choices=SURROGATES),
        Attribute("surrogate_width", float, 1.0, "width of the surrogate window (> 0)"),
        Attribute("steps", int, 0, "> 0: `current` [1, N, ...] is the current of each of `steps` steps "
                  "(a constant current); 0: `current` holds every step"),
    )

    # ------------------------------------------------------------------ validation
    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        if attrs["refractory"] < 0:
            raise NodeError(node, f"LIF attribute 'refractory' must be ≥ 0, got {attrs['refractory']}")
        if attrs["steps"] < 0:
            raise NodeError(node, f"LIF attribute 'steps' must be ≥ 0, got {attrs['steps']}")
        validate_neuron(cls.name, attrs, node, MEMBRANE_CONSTANTS, Q8_FACTORS)

    @classmethod
    def check_ports(cls, view: NodeView) -> None:
        check_recurrent_ports(cls, view, state_port=4, weight_port=5)

    @classmethod
    def structure(cls, view: NodeView) -> str:
        return neuron_structure(view, _flags(view), ("leak", "beta", "sat", "adapt", "theta_leak", "refr", "rec",
                                                     "constant"))

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        expected = INT32 if view.attrs["mode"] == "integer" else FLOAT
        if elem_types[0] not in (expected, None, 0):
            name = onnx.TensorProto.DataType.Name
            raise NodeError(view.name, f"LIF in {view.attrs['mode']} mode needs {name(expected).lower()} "
                                       f"current, got {name(elem_types[0]).lower()}")

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        current = shapes[0]
        neurons = None if current is None else list(current[1:])
        spikes = current if current is None or not view.attrs["steps"] else [view.attrs["steps"], *neurons]
        return [spikes, neurons, neurons, neurons, neurons][: view.n_outputs]

    @classmethod
    def emits_spikes(cls, view: NodeView) -> bool:
        return True

    # ------------------------------------------------------------------ state and steps
    @classmethod
    def state_names(cls, view: NodeView) -> tuple[str, ...]:
        """The state a node carries between steps, in port order: ``v``, then ``theta`` when
        its threshold adapts, ``refractory`` when it has a refractory period (or those ports are
        connected) and ``last_spikes`` when it is recurrent. Output port ``k`` (k ≥ 1) and input
        port ``k`` hold the state named like the output port."""
        flags = _flags(view)
        return (("v",) + (("theta",) if flags.adapt else ()) + (("refractory",) if flags.refr else ())
                + (("last_spikes",) if flags.rec else ()))

    @classmethod
    def state_spec(cls, view: NodeView) -> tuple[StateSpec, ...]:
        """The states of :meth:`state_names`, each shaped like one step of the current (``[N, ...]``):
        ``v`` (before step 0: ``v_init``), ``theta`` (0) and ``refractory`` (0, int32); state
        ``k`` enters at input port ``k + 1`` and leaves at output port ``k + 1``."""
        compute = np.dtype(np.int32 if view.attrs["mode"] == "integer" else np.float32)
        specs = {"v": StateSpec("v", 1, 1, compute, view.attrs["v_init"], doc="membrane potential"),
                 "theta": StateSpec("theta", 2, 2, compute, 0, doc="adaptive-threshold component"),
                 "refractory": StateSpec("refractory", 3, 3, np.dtype(np.int32), 0,
                                         doc="remaining refractory steps"),
                 "last_spikes": StateSpec("last_spikes", 4, 4, compute, 0,
                                          doc="spikes of the last step (the recurrent input of the next)")}
        return tuple(specs[name] for name in cls.state_names(view))

    @classmethod
    def initial_state(cls, view: NodeView, neuron_shape: tuple[int, ...], v0: np.ndarray | None = None,
                      theta0: np.ndarray | None = None, refractory0: np.ndarray | None = None,
                      last_spikes0: np.ndarray | None = None) -> LIFState:
        """The state before step 0 for neurons of shape ``neuron_shape`` (``[N, ...]``): the given
        initial values broadcast to it (else ``v_init``, 0, 0, 0), admitted as the neuron holds them
        (integer membrane and threshold saturated to ``state_bits``, refractory ≥ 0)."""
        flags = _flags(view)
        xp = NumpyOps(flags.integer, view.attrs)
        shape = tuple(neuron_shape)
        flat = _initial_states(xp, flags, shape, v0, theta0, refractory0, last_spikes0)
        return _state_of(flags, [a.reshape(shape) for a in flat])

    @classmethod
    def step(cls, view: NodeView, state: LIFState, current: np.ndarray,
             recurrent_weight: np.ndarray | None = None) -> tuple[np.ndarray, LIFState]:
        """One time step of the neurons (numpy): ``current [N, ...]`` (float32, or int32 in integer
        mode; the shape of the state) → ``(spikes [N, ...] in the current's type, next state)``.
        A recurrent node also takes its ``recurrent_weight [F, F]``.

        These are the equations of the LIF docstring, the very function the numpy reference,
        the ONNX body and the torch forward run at each step — bit-exact in both modes.
        """
        flags = _flags(view)
        xp = NumpyOps(flags.integer, view.attrs)
        if current.dtype != xp.dtype:
            raise NodeError(view.name, f"LIF in {view.attrs['mode']} mode needs {np.dtype(xp.dtype).name} "
                                       f"current, got {current.dtype}")
        rows = check_recurrence(view, flags.rec, (1, *current.shape), recurrent_weight)
        step = _step_for(flags, weight=recurrent_weight, rows=rows)
        new_states, (spikes,) = step(xp, state.arrays(), [current])
        return spikes, _state_of(flags, new_states)

    @classmethod
    def integer_attributes(cls, view: NodeView, scale: float) -> dict[str, Any]:
        """The attributes of the integer-mode neuron that runs this float neuron on an integer
        current equal to the float current times ``scale``: every membrane constant times ``scale``,
        rounded half to even; ``alpha``/``theta_alpha`` snapped to multiples of 1/256. Raises
        NodeError when a scaled constant exceeds what an integer attribute holds exactly (2^24)."""
        return integer_neuron_attributes(cls, view, scale, MEMBRANE_CONSTANTS, Q8_FACTORS)

    @classmethod
    def integer_state_range(cls, view: NodeView) -> tuple[int, int]:
        """The saturation range of the node's integer state (``state_bits`` wide)."""
        return state_range(view.attrs["state_bits"])

    # ------------------------------------------------------------------ numerics
    @classmethod
    def reference(cls, view: NodeView, current: np.ndarray, v0: np.ndarray | None = None,
                  theta0: np.ndarray | None = None, refractory0: np.ndarray | None = None,
                  last_spikes0: np.ndarray | None = None, recurrent_weight: np.ndarray | None = None
                  ) -> tuple[np.ndarray, ...]:
        integer = view.attrs["mode"] == "integer"
        dtype = np.int32 if integer else np.float32
        if current.dtype != dtype:
            raise NodeError(view.name, f"LIF in {view.attrs['mode']} mode needs {np.dtype(dtype).name} "
                                       f"current, got {current.dtype}")
        return _run_eager(view, NumpyOps(integer, view.attrs), current, v0, theta0, refractory0, last_spikes0,
                          recurrent_weight)

    @classmethod
    def membrane_trace(cls, view: NodeView, current: np.ndarray, v0: np.ndarray | None = None,
                       theta0: np.ndarray | None = None, refractory0: np.ndarray | None = None,
                       last_spikes0: np.ndarray | None = None, recurrent_weight: np.ndarray | None = None
                       ) -> np.ndarray:
        """The membrane after integration (step 2, before firing) at every step, ``[T, N, ...]``
        (numpy reference; calibration records its range)."""
        integer = view.attrs["mode"] == "integer"
        xp = NumpyOps(integer, view.attrs)
        flags = _flags(view)
        current = every_step(view, xp, current)
        rows = check_recurrence(view, flags.rec, current.shape, recurrent_weight)
        neuron_shape = tuple(current.shape[1:])
        states = _initial_states(xp, flags, neuron_shape, v0, theta0, refractory0, last_spikes0)
        flat = current.reshape(current.shape[0], math.prod(neuron_shape))
        if flat.shape[0] == 0:
            return np.zeros(current.shape, xp.dtype)
        step = _step_for(flags, trace=True, weight=recurrent_weight, rows=rows)
        _, (_, membrane) = xp.time_loop(step, states, [flat])
        return membrane.reshape(current.shape)

    @classmethod
    def torch_forward(cls, view: NodeView, current: Any, v0: Any = None, theta0: Any = None,
                      refractory0: Any = None, last_spikes0: Any = None, recurrent_weight: Any = None
                      ) -> tuple[Any, ...]:
        from hnnx.ops.torch_ops import TorchOps

        integer = view.attrs["mode"] == "integer"
        return _run_eager(view, TorchOps(integer, view.attrs, current.device), current, v0, theta0, refractory0,
                          last_spikes0, recurrent_weight)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        flags = _flags(view)
        top = body.top
        xp = OnnxOps(top, flags.integer)
        elem = xp.elem
        current = body.input(0)
        if flags.constant:  # [1, N, ...] → [steps, N, ...]
            steps = top.op("Reshape", body.attr_value("steps", "value_int"), body.literal_1d([1]))
            one_shape = top.op("Shape", current)
            current = top.op("Expand", current, top.op("Concat", steps, top.op("Slice", one_shape, body.literal_1d([1]),
                                                                                  body.literal_1d([2**62])), axis=0))
        shape = top.op("Shape", current)
        neuron_shape = top.op("Slice", shape, body.literal_1d([1]), body.literal_1d([2**62]))
        size = top.op("ReduceProd", neuron_shape, keepdims=1)
        flat = top.op("Reshape", current, top.op("Concat", top.op("Slice", shape, body.literal_1d([0]),
                                                                  body.literal_1d([1])), size, axis=0),
                      allowzero=1)

        def initial(index: int, fill: str) -> str:
            if view.has_input(index):
                return top.op("Reshape", top.op("Expand", body.input(index), neuron_shape), size, allowzero=1)
            return top.op("Expand", fill, size)

        states = [(initial(1, xp.param("v_init")), elem)]
        if flags.adapt:
            states.append((initial(2, xp.literal(0)), elem))
        if flags.refr:
            states.append((initial(3, xp.literal_int(0)), INT32))
        states = [(value, elem_type) for value, (_, elem_type) in
                  zip(_admitted(xp, flags, [s for s, _ in states]), states)]
        step = _step_for(flags)
        if flags.rec:
            states.append((initial(4, xp.literal(0)), elem))
            rows = top.op("Slice", shape, body.literal_1d([1]), body.literal_1d([2]))
            step = _step_for(flags, weight=body.input(5), rows=rows)
        finals, (spikes,) = onnx_time_scan(body, step, flags.integer, states, [(flat, elem)], [elem])
        body.set_output(0, top.op("Reshape", spikes, shape, allowzero=1))
        for index, final in enumerate(finals[: view.n_outputs - 1], 1):
            body.set_output(index, top.op("Reshape", final, neuron_shape, allowzero=1))


def every_step(view: NodeView, xp: Any, current: Any) -> Any:
    """The current of every step, ``[T, N, ...]``: ``current`` itself, or for a node with
    ``steps > 0`` its single step ``[1, N, ...]`` repeated ``steps`` times (NodeError when
    ``current`` holds more than one step)."""
    steps = view.attrs[LIF.constant_current]
    if not steps:
        return current
    if len(current.shape) < 1 or current.shape[0] != 1:
        raise NodeError(view.name, f"LIF with steps = {steps} takes the current of one step, [1, N, ...], "
                                   f"got {list(current.shape)}")
    return xp.expand_time(current, steps)


def _state_of(flags: SimpleNamespace, arrays: list[Any]) -> LIFState:
    """A :class:`LIFState` from the carried arrays in port order."""
    arrays = list(arrays)
    v = arrays.pop(0)
    theta = arrays.pop(0) if flags.adapt else None
    refractory = arrays.pop(0) if flags.refr else None
    last_spikes = arrays.pop(0) if flags.rec else None
    return LIFState(v, theta, refractory, last_spikes)


def _run_eager(view: NodeView, xp: Any, current: Any, v0: Any, theta0: Any, refractory0: Any,
               last_spikes0: Any = None, recurrent_weight: Any = None) -> tuple[Any, ...]:
    """Multi-step LIF in an eager namespace (numpy or torch)."""
    flags = _flags(view)
    current = every_step(view, xp, current)
    rows = check_recurrence(view, flags.rec, tuple(current.shape), recurrent_weight)
    neuron_shape = tuple(current.shape[1:])
    states = _initial_states(xp, flags, neuron_shape, v0, theta0, refractory0, last_spikes0)
    steps = current.shape[0]
    flat = current.reshape(steps, math.prod(neuron_shape))
    finals, (spikes,) = xp.time_loop(_step_for(flags, weight=recurrent_weight, rows=rows), states, [flat])
    outputs = [spikes.reshape(current.shape)] + [final.reshape(neuron_shape) for final in finals]
    # Outputs 2 to 4 are only requested when their state is carried (see _flags, check_ports).
    return tuple(outputs[: view.n_outputs])


def _initial_states(xp: Any, flags: SimpleNamespace, neuron_shape: tuple[int, ...], v0: Any, theta0: Any,
                    refractory0: Any, last_spikes0: Any = None) -> list[Any]:
    """Flat initial states ``[M]`` of the carried paths, admitted (see :func:`_admitted`)."""
    states = [xp.initial_state(v0, xp.param("v_init"), neuron_shape)]
    if flags.adapt:
        states.append(xp.initial_state(theta0, xp.literal(0), neuron_shape))
    if flags.refr:
        states.append(xp.initial_state(refractory0, xp.literal_int(0), neuron_shape))
    states = _admitted(xp, flags, states)
    if flags.rec:
        states.append(xp.initial_state(last_spikes0, xp.literal(0), neuron_shape))
    return states


def _admitted(xp: Any, flags: SimpleNamespace, states: list[Any]) -> list[Any]:
    """Initial states as the neuron holds them: integer membrane and threshold saturated to
    the state range, refractory counter at least 0."""
    states = list(states)
    if flags.integer:
        lo, hi = state_range(flags.bits)
        count = 2 if flags.adapt else 1
        states[:count] = [xp.clamp(state, lo, hi) for state in states[:count]]
    if flags.refr:
        states[-1] = xp.maximum(states[-1], xp.literal_int(0))
    return states


def _flags(view: NodeView) -> SimpleNamespace:
    """Which parts of the equations a node uses (its structure)."""
    a = view.attrs
    flags = neuron_flags(
        a,
        adapt=(a["theta_alpha"] != 1.0 or a["theta_beta"] != 0.0 or a["theta_increment"] != 0.0
               or view.has_input(2) or view.has_output(2)),
        refr=a["refractory"] > 0 or view.has_input(3) or view.has_output(3),
        rec=view.has_input(5),
    )
    flags.constant = a["steps"] > 0  # one step's current, repeated
    return flags


# ---------------------------------------------------------------------------- shared by the neuron ops
def neuron_flags(attrs: dict[str, Any], *, adapt: bool = False, refr: bool = False, rec: bool = False
                 ) -> SimpleNamespace:
    """The structure of a neuron from its attributes (absent ones take their neutral value) and
    the parts its ports switch on: threshold adaptation, refractory counter, recurrence."""
    return SimpleNamespace(
        integer=attrs["mode"] == "integer",
        bits=attrs.get("state_bits", 28),
        reset=attrs.get("reset_mode", "none"),
        leak=attrs.get("alpha", 1.0) != 1.0,
        beta=attrs.get("beta", 0.0) != 0.0,
        sat=attrs.get("v_lower") is not None,
        adapt=adapt,
        theta_leak=attrs.get("theta_alpha", 1.0) != 1.0,
        refr=refr,
        rec=rec,
    )


def integer_neuron_attributes(decl: type[OpDeclaration], view: NodeView, scale: float,
                              membrane_constants: tuple[str, ...], q8_factors: tuple[str, ...]) -> dict[str, Any]:
    """The attributes of the integer-mode neuron that runs the float neuron ``view`` on its input
    times ``scale``: ``membrane_constants`` times ``scale``, rounded half to even; ``q8_factors``
    snapped to multiples of 1/256; the surrogate window (training only) times ``scale``, so it
    spans the same membrane range in integer units. NodeError when a scaled constant exceeds 2^24."""
    if view.attrs["mode"] == "integer":
        raise NodeError(view.name, f"already an integer-mode {decl.name}")
    attrs = dict(view.attrs)
    for name in membrane_constants:
        if attrs[name] is None:
            continue
        scaled = float(np.round(attrs[name] * scale))
        if abs(scaled) > EXACT_ATTRIBUTE_LIMIT:
            raise NodeError(view.name, f"{name} × weight scale = {scaled:.0f} exceeds 2^24; the layer's "
                                       f"weights are too small for its constants")
        attrs[name] = scaled
    for name in q8_factors:
        attrs[name] = float(np.round(attrs[name] * 256) / 256)
    if "surrogate_width" in attrs:
        attrs["surrogate_width"] = float(np.float32(attrs["surrogate_width"] * scale))
    attrs["mode"] = "integer"
    decl.validate(attrs, view.name)
    return attrs


def neuron_structure(view: NodeView, flags: SimpleNamespace, parts: tuple[str, ...]) -> str:
    """A neuron's overload key: its numeric mode, its reset mode (if it fires), the ``parts`` of its
    equations it uses and its connected ports."""
    keys = [f"int{flags.bits}" if flags.integer else "float"]
    keys += [view.attrs["reset_mode"]] if "reset_mode" in view.attrs else []
    keys += [name for name in parts if getattr(flags, name)]
    return "-".join(keys) + "-" + port_key(view)


def validate_neuron(op: str, attrs: dict[str, Any], node: str, membrane_constants: tuple[str, ...],
                    q8_factors: tuple[str, ...]) -> None:
    """The checks every neuron op makes: factors in [0, 1], a positive surrogate width and, in
    integer mode, a state width in [2, 31], integer constants inside the state and exact in an
    attribute, factors in steps of 1/256. NodeError naming ``node``."""
    for name in q8_factors:
        if not 0.0 <= attrs[name] <= 1.0:
            raise NodeError(node, f"{op} attribute {name!r} must lie in [0, 1], got {attrs[name]}")
    if attrs.get("surrogate_width", 1.0) <= 0:
        raise NodeError(node, f"{op} attribute 'surrogate_width' must be > 0, got {attrs['surrogate_width']}")
    if attrs["mode"] != "integer":
        return
    bits = attrs["state_bits"]
    if not 2 <= bits <= 31:
        raise NodeError(node, f"{op} attribute 'state_bits' must lie in [2, 31], got {bits}")
    lo, hi = state_range(bits)
    for name in membrane_constants:
        value = attrs[name]
        if value is None:
            continue
        if value != int(value) or abs(value) > EXACT_ATTRIBUTE_LIMIT:
            raise NodeError(node, f"integer-mode {op} attribute {name!r} must be an integer of magnitude "
                                  f"≤ 2^24, got {value}")
        if not lo <= value <= hi:
            raise NodeError(node, f"integer-mode {op} attribute {name!r} = {int(value)} does not fit "
                                  f"{bits}-bit state")
    for name in q8_factors:
        if attrs[name] * 256 != int(attrs[name] * 256):
            raise NodeError(node, f"integer-mode {op} attribute {name!r} must be a multiple of 1/256, "
                                  f"got {attrs[name]}")


def check_recurrent_ports(decl: type[OpDeclaration], view: NodeView, state_port: int, weight_port: int) -> None:
    """The last-spikes state input/output (``state_port``) only exist for recurrent nodes."""
    if (view.has_input(state_port) or view.has_output(state_port)) and not view.has_input(weight_port):
        raise NodeError(view.name, f"{decl.name} port {state_port} ({decl.inputs[state_port].name!r} / "
                                   f"{decl.outputs[state_port].name!r}) needs the recurrent_weight input "
                                   f"(port {weight_port})")


def check_recurrence(view: NodeView, recurrent: bool, current_shape: tuple[int, ...], weight: Any) -> int | None:
    """For a recurrent node, the number of samples N of a current ``[T, N, ...]``, after checking that
    ``weight`` is ``[F, F]`` with F the neurons of one sample; None for other nodes."""
    if not recurrent:
        return None
    if weight is None:
        raise NodeError(view.name, "the node is recurrent but no recurrent_weight was given")
    features = math.prod(current_shape[2:])
    shape = tuple(weight.shape)
    if len(current_shape) < 2 or shape != (features, features):
        raise NodeError(view.name, f"recurrent_weight of shape {list(shape)} does not match the current "
                                   f"{list(current_shape)}: it must be [F, F] with F = {features} neurons per sample")
    if features == 0:
        raise NodeError(view.name, "recurrent_weight has no neurons")
    return int(current_shape[1])


def add_recurrence(xp: Any, flags: SimpleNamespace, u: Any, last_spikes: Any, weight: Any, rows: Any) -> Any:
    """``u + last_spikes @ weight`` (see the LIF docstring; integer: ``u`` and the recurrent
    current saturated, then their sum)."""
    lo, hi = state_range(flags.bits)
    recurrent = xp.recurrent_input(last_spikes, weight, rows, lo, hi)
    if flags.integer:
        return xp.clamp(xp.add(xp.clamp(u, lo, hi), recurrent), lo, hi)
    return xp.add(u, recurrent)


def _step_for(flags: SimpleNamespace, trace: bool = False, weight: Any = None, rows: Any = None):
    """The per-step equations of a LIF node for any array namespace ``xp``: :func:`membrane_step`,
    after :func:`add_recurrence` for a recurrent node (``weight``/``rows`` in the namespace's form),
    whose spikes become its ``last_spikes`` state."""
    membrane = membrane_step(flags, trace)
    if not flags.rec:
        return membrane

    def step(xp: Any, states: list[Any], xs: list[Any]) -> tuple[list[Any], list[Any]]:
        states = list(states)
        last_spikes = states.pop()
        (u,) = xs
        new_states, outputs = membrane(xp, states, [add_recurrence(xp, flags, u, last_spikes, weight, rows)])
        return new_states + [outputs[0]], outputs

    return step


def membrane_step(flags: SimpleNamespace, trace: bool = False):
    """The LIF docstring's steps 1–7 for the states ``[v, theta?, refractory?]`` and the input
    current of the step, for any array namespace ``xp``.

    ``trace``: also output the membrane after integration (``v1``) of every step.
    """

    def step(xp: Any, states: list[Any], xs: list[Any]) -> tuple[list[Any], list[Any]]:
        states = list(states)
        v = states.pop(0)
        theta_a = states.pop(0) if flags.adapt else None
        refractory = states.pop(0) if flags.refr else None
        (u,) = xs
        u = clamp_state(xp, flags, u)
        theta = P.threshold(xp, flags, theta_a)                   # 1. threshold
        v1 = P.accumulate(xp, flags, v, u, refractory)            # 2. integrate, gated by the refractory counter
        fired, spikes = P.fire(xp, v1, theta)                      # 3. fire
        v2 = P.reset(xp, flags, v1, fired, theta)                  # 4. reset
        new_states = [P.saturate_lower(xp, flags, P.leak(xp, flags, v2))]  # 5. leak and lower saturation
        if flags.adapt:
            new_states.append(P.threshold_dynamics(xp, flags, theta_a, fired))  # 6. threshold adaptation
        if flags.refr:
            new_states.append(P.refractory_count(xp, refractory, fired))  # 7. refractory counter
        return new_states, [spikes, v1] if trace else [spikes]

    return step
