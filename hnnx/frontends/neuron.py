"""Custom neurons in torch: HNN's primitives as functions, and a module whose step you write.

Each primitive runs its hnnx op (:mod:`hnnx.ops.primitive_ops`, ``hnnx.Fire``) — the very
equations of the ``hnnx.LIF`` stage it names, in float32 with surrogate gradients or in exact
integer arithmetic (the mode follows the tensor: int32 is integer mode) — and becomes one node of
the step graph when the neuron is exported. A :class:`Neuron` subclass writes
``step(x, state) -> (y, state)`` from them and torch arithmetic; it trains like any module (its
forward loops over time) and exports as one ``hnnx.Neuron`` node whose ``step`` attribute is the
exported step graph (``hnnx.frontends.torch.export`` attaches it).

    >>> import hnnx.frontends.torch as hnn
    >>> class AdaptiveLIF(hnn.Neuron):
    ...     def __init__(self):
    ...         super().__init__({"v": 0.0, "a": 0.0})
    ...     def step(self, x, state):
    ...         theta = hnn.threshold(state["a"], 1.0)
    ...         v1 = hnn.accumulate(state["v"], x)
    ...         s = hnn.fire(v1, theta, surrogate="atan")
    ...         v = hnn.leak(hnn.reset(v1, s, theta, mode="soft"), alpha=0.9)
    ...         a = hnn.threshold_dynamics(state["a"], s, alpha=0.95, increment=0.2) + hnn.leak(v1.relu(), alpha=0.05)
    ...         return s, {"v": v, "a": a}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import onnx
import torch
import torch.fx
from onnx import helper

from hnnx import ops
from hnnx.errors import HnnxError
from hnnx.frontends.step_trace import NotTraceable, record_primitive, trace_step, tracing_mode
from hnnx.frontends.torch import NAME_KEY, HnnxModule, _quiet_exporter, call_op

DEFAULT_STATE_BITS = 28


def _mode(x: torch.Tensor) -> str:
    """The numeric mode a tensor computes in: int32 → integer, float32 → float."""
    if isinstance(x, torch.fx.Proxy):
        return tracing_mode() or "float"
    if x.dtype == torch.int32:
        return "integer"
    if x.dtype == torch.float32:
        return "float"
    raise HnnxError(f"hnnx primitives compute on float32 or int32 tensors, got {x.dtype}")


def _value(x: torch.Tensor | float | int, like: torch.Tensor) -> torch.Tensor:
    """A number as a tensor of ``like``'s type (a constant of the step graph when exported)."""
    if isinstance(x, (torch.Tensor, torch.fx.Proxy)) or isinstance(like, torch.fx.Proxy):
        return x
    return torch.tensor(x, dtype=like.dtype, device=like.device)


def _one(decl: type[ops.OpDeclaration], inputs: list[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    if any(isinstance(x, torch.fx.Proxy) for x in inputs):  # tracing the step: one node
        return record_primitive(decl.name, attrs, inputs)
    return call_op(decl, inputs, attrs)[0]


def accumulate(v: torch.Tensor, current: torch.Tensor, refractory: torch.Tensor | None = None, *,
               state_bits: int = DEFAULT_STATE_BITS) -> torch.Tensor:
    """``v + current`` where ``refractory`` (int32 steps) is 0, else ``v`` (``hnnx.Accumulate``;
    integer mode saturates the current and the sum to ``state_bits``)."""
    return _one(ops.Accumulate, [v, current, refractory], {"mode": _mode(v), "state_bits": state_bits})


def leak(v: torch.Tensor, alpha: float = 1.0, beta: float = 0.0, *, state_bits: int = DEFAULT_STATE_BITS
         ) -> torch.Tensor:
    """``alpha·v + beta`` (``hnnx.Leak``; integer: ``floor(round(256·alpha)·v / 256) + beta``)."""
    return _one(ops.Leak, [v], {"mode": _mode(v), "alpha": alpha, "beta": beta, "state_bits": state_bits})


def saturate(x: torch.Tensor, lower: float | None = None, *, state_bits: int = DEFAULT_STATE_BITS) -> torch.Tensor:
    """``max(x, lower)`` (``hnnx.Saturate``; integer mode also saturates to ``state_bits``)."""
    return _one(ops.Saturate, [x], {"mode": _mode(x), "v_lower": lower, "state_bits": state_bits})


def fire(v: torch.Tensor, threshold: torch.Tensor | float, *, surrogate: str = "rectangle", width: float = 1.0
         ) -> torch.Tensor:
    """Spikes ``1[v > threshold]`` (strict) with the surrogate gradient ``surrogate`` of window
    ``width`` (``hnnx.Fire``)."""
    return _one(ops.Fire, [v, _value(threshold, v)], {"surrogate": surrogate, "surrogate_width": width})


def reset(v: torch.Tensor, spikes: torch.Tensor, threshold: torch.Tensor | float | None = None, *,
          mode: str = "hard", v_reset: float = 0.0, decrement: float = 0.0,
          state_bits: int = DEFAULT_STATE_BITS) -> torch.Tensor:
    """Where ``spikes``: ``hard`` → ``v_reset``, ``soft`` → ``v − threshold``, ``soft_constant`` →
    ``v − decrement``, ``none`` → ``v`` (``hnnx.Reset``; the spikes select without a gradient)."""
    limit = None if threshold is None else _value(threshold, v)
    return _one(ops.Reset, [v, spikes, limit], {"mode": _mode(v), "reset_mode": mode, "v_reset": v_reset,
                                                "reset_decrement": decrement, "state_bits": state_bits})


def threshold(theta_a: torch.Tensor, base: float, *, lower: float | None = None,
              state_bits: int = DEFAULT_STATE_BITS) -> torch.Tensor:
    """The firing threshold ``max(base + theta_a, lower)`` (``hnnx.Threshold``)."""
    return _one(ops.Threshold, [theta_a], {"mode": _mode(theta_a), "threshold": base, "v_lower": lower,
                                           "state_bits": state_bits})


def threshold_dynamics(theta_a: torch.Tensor, spikes: torch.Tensor, *, alpha: float = 1.0, beta: float = 0.0,
                       increment: float = 0.0, state_bits: int = DEFAULT_STATE_BITS) -> torch.Tensor:
    """``alpha·theta_a + beta + spikes·increment`` (``hnnx.ThresholdDynamics``; integer:
    ``floor(round(256·alpha)·θa / 256) + …``)."""
    return _one(ops.ThresholdDynamics, [theta_a, spikes], {"mode": _mode(theta_a), "theta_alpha": alpha,
                                                           "theta_beta": beta, "theta_increment": increment,
                                                           "state_bits": state_bits})


def refractory(counter: torch.Tensor, spikes: torch.Tensor, length: int) -> torch.Tensor:
    """The int32 refractory counter of the next step: ``length`` where ``spikes``, else
    ``max(counter − 1, 0)`` (``hnnx.Refractory``)."""
    return _one(ops.Refractory, [counter, spikes], {"mode": _mode(spikes), "refractory": length})


def product(a: torch.Tensor, b: torch.Tensor, gain: float = 1.0, *, shift: int = 0,
            state_bits: int = DEFAULT_STATE_BITS) -> torch.Tensor:
    """``gain·a·b`` of two membrane values (``hnnx.Product``). Integer mode:
    ``floor(round(256·gain)·floor(a·b / 2^shift) / 256)`` — what quantization makes of a float
    product (the gain per membrane unit)."""
    return _one(ops.Product, [a, b], {"mode": _mode(a), "gain": gain, "shift": shift, "state_bits": state_bits})


@dataclass(frozen=True)
class State:
    """A state of a custom neuron: its value before step 0 and whether it counts steps (an int32
    counter in both modes, e.g. a refractory counter) rather than holding membrane-like values."""

    initial: float = 0.0
    counter: bool = False


class Neuron(HnnxModule):
    """A custom neuron over time axis 0: current ``[T, N, ...]`` → ``y [T, N, ...]``, one call of
    :meth:`step` per time step.

    Subclasses pass their states to ``__init__`` (name → initial value or :class:`State`) and
    write ``step(x, state) -> (y, state)`` from the primitives of this module and torch
    arithmetic: ``x`` is the input of the step ``[N, ...]``, ``state`` a dict of the states
    (``[N, ...]``), ``y`` the step's output (spikes of :func:`fire` for a spiking neuron). A float32
    current runs the float step, an int32 current the integer step (write integer constants then).
    ``outputs``: 1 returns ``y``; ``1 + k`` also the final values of the first ``k`` states.
    Exported, the module is one ``hnnx.Neuron`` node whose step graph is :meth:`step` exported.
    """

    op = ops.Neuron

    def __init__(self, states: Mapping[str, float | State], *, outputs: int = 1,
                 state_bits: int = DEFAULT_STATE_BITS) -> None:
        torch.nn.Module.__init__(self)
        self.states = {name: spec if isinstance(spec, State) else State(float(spec)) for name, spec in states.items()}
        if not 1 <= len(self.states) <= ops.neuron.MAX_STATES:
            raise HnnxError(f"{type(self).__name__}: a neuron has 1 to {ops.neuron.MAX_STATES} states, "
                            f"got {len(self.states)}")
        bad = [name for name in self.states if not name.isidentifier()]
        if bad:
            raise HnnxError(f"{type(self).__name__}: state name {bad[0]!r} is not an identifier")
        if not 1 <= outputs <= 1 + len(self.states):
            raise HnnxError(f"{type(self).__name__}: outputs must be 1 to {1 + len(self.states)}, got {outputs}")
        self.outputs = outputs
        self.state_bits = state_bits
        self.attrs = {"states": dict(self.states), "state_bits": state_bits}
        self.node_name = ""
        self._example: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One time step: ``x [N, ...]`` and the states → ``(y [N, ...], the next states)``."""
        raise NotImplementedError(f"{type(self).__name__} must define step(x, state)")

    def initial_state(self, x: torch.Tensor, given: Mapping[str, torch.Tensor] | None = None
                      ) -> dict[str, torch.Tensor]:
        """The states before step 0 for steps shaped like ``x`` (``[N, ...]``): ``given[name]``
        broadcast, else the state's initial value; counters int32, others in ``x``'s type."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.states))
        if unknown:
            raise HnnxError(f"{type(self).__name__} has no state {unknown[0]!r}")
        state = {}
        for name, spec in self.states.items():
            dtype = torch.int32 if spec.counter else x.dtype
            value = given.get(name, torch.tensor(spec.initial, dtype=dtype, device=x.device))
            state[name] = torch.broadcast_to(torch.as_tensor(value, dtype=dtype, device=x.device), x.shape)
        return state

    def forward(self, current: torch.Tensor, initial: Mapping[str, torch.Tensor] | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if torch.onnx.is_in_onnx_export():
            return self._symbolic(current, initial)
        state = self.initial_state(current[0] if current.shape[0] else current.new_zeros(current.shape[1:]), initial)
        if current.shape[0]:
            self._example = (current[0].detach().clone(), {k: v.detach().clone() for k, v in state.items()})
        ys = []
        for x in current:
            y, state = self.step(x, state)
            if set(state) != set(self.states):
                raise HnnxError(f"{type(self).__name__}.step must return the states {sorted(self.states)}, "
                                f"got {sorted(state)}")
            ys.append(y)
        y_all = torch.stack(ys) if ys else torch.zeros_like(current)
        if self.outputs == 1:
            return y_all
        return (y_all, *[state[name] for name in list(self.states)[: self.outputs - 1]])

    def _attributes(self, mode: str) -> dict[str, Any]:
        return {"mode": mode, "state_names": list(self.states),
                "state_init": [float(spec.initial) for spec in self.states.values()],
                "state_bits": self.state_bits, STEP_PLACEHOLDER: self.node_name}

    def _symbolic(self, current: torch.Tensor, initial: Mapping[str, torch.Tensor] | None
                  ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        given = dict(initial or {})
        inputs = [current] + [given.get(name) for name in self.states]
        while inputs and inputs[-1] is None:
            inputs.pop()
        neurons = list(current.shape[1:])
        dtypes = [current.dtype] + [torch.int32 if spec.counter else current.dtype for spec in self.states.values()]
        outputs = torch.onnx.ops.symbolic_multi_out(
            f"{ops.DOMAIN}::Neuron", inputs, self._attributes(_mode(current)), dtypes=dtypes[: self.outputs],
            shapes=[list(current.shape)] + [neurons] * (self.outputs - 1), version=ops.OPSET_VERSION,
            metadata_props={NAME_KEY: self.node_name} if self.node_name else None)
        return outputs[0] if self.outputs == 1 else tuple(outputs)

    def step_graph(self) -> onnx.GraphProto:
        """:meth:`step` exported to an ONNX graph: inputs ``(states…, x)``, outputs ``(states'…, y)``,
        the samples dim symbolic. Needs one forward first (it takes its shapes from it). Traced
        (primitives and element-wise arithmetic, :mod:`hnnx.frontends.step_trace`), else exported by
        ``torch.onnx.export``."""
        if self._example is None:
            raise HnnxError(f"{type(self).__name__}: run the module once before exporting its step")
        x, state = self._example
        names = list(self.states)
        try:
            return trace_step(self.step, names, state, x)
        except NotTraceable:
            pass  # something the tracer does not translate: the torch exporter takes it
        wrapper = _StepModule(self)
        if x.dim() == 0 or x.shape[0] < 2:
            raise HnnxError(f"{type(self).__name__}: export with at least 2 samples (the step's sample dim is "
                            f"symbolic)")
        batch = torch.export.Dim("N")
        example = (*[state[name] for name in names], x)
        try:
            with _quiet_exporter():
                program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=ops.ONNX_OPSET,
                                            input_names=[*names, "x"],
                                            output_names=[*[f"{n}_next" for n in names], "y"],
                                            dynamic_shapes=(tuple({0: batch} for _ in example),), verbose=False)
        except Exception as exc:
            raise HnnxError(f"{type(self).__name__}: exporting the step failed: "
                            f"{str(exc).strip().splitlines()[0]}") from exc
        graph = onnx.GraphProto()
        graph.CopyFrom(program.model_proto.graph)
        for index, node in enumerate(graph.node):
            del node.metadata_props[:]
            if node.domain == ops.DOMAIN:  # the exporter names them all "_symbolic"
                node.name = f"{node.op_type}_{index}"
        del graph.value_info[:]
        return graph


STEP_PLACEHOLDER = "hnnx_step_of"
"""Attribute the exporter writes on a Neuron node while the step graph is exported separately."""


class _StepModule(torch.nn.Module):
    """One step of a neuron as a module ``(states…, x) → (states'…, y)``, for exporting the step."""

    def __init__(self, neuron: Neuron) -> None:
        super().__init__()
        self.neuron = neuron

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = list(self.neuron.states)
        y, state = self.neuron.step(args[-1], dict(zip(names, args[:-1])))
        return (*[state[name] for name in names], y)


def attach_steps(model: onnx.ModelProto, root: torch.nn.Module) -> None:
    """Give every exported ``hnnx.Neuron`` node of ``model`` its step graph (exported from the
    module it came from, its tensors prefixed by the node's name so they cannot collide with the
    graph's) and name its state outputs ``<node>.<state>``."""
    graph_outputs = {value.name for value in model.graph.output}
    neurons = {module.node_name: module for module in root.modules() if isinstance(module, Neuron)}
    renames: dict[str, str] = {}
    for node in model.graph.node:
        if node.domain != ops.DOMAIN or node.op_type != "Neuron":
            continue
        placeholder = next((a for a in node.attribute if a.name == STEP_PLACEHOLDER), None)
        if placeholder is None:
            continue
        module = neurons.get(placeholder.s.decode())
        if module is None:
            raise HnnxError(f"hnnx.Neuron node {node.name!r}: no Neuron module named {placeholder.s.decode()!r}")
        node.attribute.remove(placeholder)
        node.attribute.append(helper.make_attribute("step", _prefixed(module.step_graph(), f"{node.name}.step.")))
        for index, name in enumerate(module.states, 1):
            if index < len(node.output) and node.output[index] and node.output[index] not in graph_outputs:
                renames[node.output[index]] = f"{node.name}.{name}"
    if renames:
        for node in model.graph.node:
            node.input[:] = [renames.get(name, name) for name in node.input]
            node.output[:] = [renames.get(name, name) for name in node.output]
        for info in model.graph.value_info:
            info.name = renames.get(info.name, info.name)


def _prefixed(graph: onnx.GraphProto, prefix: str) -> onnx.GraphProto:
    """``graph`` with every value and node name prefixed."""
    out = onnx.GraphProto()
    out.CopyFrom(graph)
    out.name = prefix.rstrip(".")

    def name(value: str) -> str:
        return f"{prefix}{value}" if value else value

    for value in list(out.input) + list(out.output):
        value.name = name(value.name)
    for init in out.initializer:
        init.name = name(init.name)
    for node in out.node:
        node.name = name(node.name)
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
    return out
