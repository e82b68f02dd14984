"""``hnnx.Neuron`` — a custom neuron: a stateful loop over time whose step is a graph.

The step graph is an ONNX graph of HNN's primitives (:mod:`hnnx.ops.primitive_ops`, ``hnnx.Fire``)
and standard arithmetic. The op runs it once per time step (its function body: an ONNX ``Scan``
with the step as body), names the states it carries (``state_spec``: streaming and lowering see
them), has an integer form when every operation of the step has one (:meth:`Neuron.integer_attributes`,
the constants scaled by their units as the LIF's are), and is an ``hnnx.LIF`` when its step is one
(:meth:`Neuron.as_lif`, what the ``fold_neurons`` pass and the chip mapper ask).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, helper, numpy_helper

from hnnx.errors import NodeError
from hnnx.ops.arrays import FLOAT, INT32, FunctionBody, Scope
from hnnx.ops.declare import (DOMAIN, NO_TIME, ONNX_OPSET, OPSET_VERSION, TIME_MAJOR, Attribute, Floats, NodeView,
                              OpDeclaration, Port, StateSpec, Strings, TypeConstraint, port_key)
from hnnx.ops.fire import Fire
from hnnx.ops.lif import EXACT_ATTRIBUTE_LIMIT, LIF, state_range
from hnnx.ops.primitive_ops import PRIMITIVES
from hnnx.ops.primitives import COUNT, MEMBRANE, SPIKES

MAX_STATES = 8
"""The most states a custom neuron carries (each has an initial-value input and a final output)."""

STEP_OPS: dict[str, type[OpDeclaration]] = {decl.name: decl for decl in (*PRIMITIVES, Fire)}
"""The hnnx ops a step graph may hold: the single-step primitives."""

BOOL = "bool"
"""Unit of a boolean tensor (a comparison)."""
FACTOR = "factor"
"""Unit of a dimensionless constant factor (kept as it is)."""
SHAPE = "shape"
"""Unit of a shape tensor (kept as it is)."""


class Neuron(OpDeclaration):
    """Custom neuron over time axis 0: current ``[T, N, ...]`` → ``y [T, N, ...]``, each step computed by
    the graph `step`.

    ``step`` is a graph with inputs ``(state_0, …, state_{K−1}, x)`` and outputs ``(state_0', …,
    state_{K−1}', y)``: the K states before the step, the input of the step ``x = current[t]``
    (``[N, ...]``), the states after it and the output of the step (spikes, for a spiking neuron:
    the output of an ``hnnx.Fire``). It may hold the single-step primitives (``hnnx.Accumulate``,
    ``Leak``, ``Saturate``, ``Fire``, ``Reset``, ``Threshold``, ``ThresholdDynamics``,
    ``Refractory``, ``Product``) and standard ONNX ops; every tensor is ``[N, ...]`` or
    broadcastable to it. Per time step t: ``(states, y[t]) = step(states, current[t])``, starting
    from the inputs ``initial_k`` or the values ``state_init[k]`` (broadcast to ``[N, ...]``).

    ``state_names`` names the states (they are the node's stateful ports: input ``initial_k``,
    output ``final_k``). ``mode`` is the numeric mode of the step: ``integer`` steps take int32
    current and compute exactly (their state width is ``state_bits``). A step that is an
    ``hnnx.LIF`` configuration (its primitives in the LIF's order) computes that LIF bit for bit;
    the ``fold_neurons`` pass replaces it by the LIF node. The function body is a ``Scan`` over
    time with the step graph as its body.
    """

    name = "Neuron"
    neuron = True
    inputs = (Port("current", "input per step, [T, N, ...]", time=TIME_MAJOR),) + tuple(
        Port(f"initial_{k}", f"initial value of state {k}, broadcastable to [N, ...] (default: state_init[{k}])",
             type=f"S{k}", optional=True, time=NO_TIME) for k in range(MAX_STATES))
    outputs = (Port("y", "output of every step, [T, N, ...], in the type of `current`", time=TIME_MAJOR),) + tuple(
        Port(f"final_{k}", f"state {k} after the last step, [N, ...]", type=f"S{k}", optional=True, time=NO_TIME)
        for k in range(MAX_STATES))
    type_constraints = (
        TypeConstraint("T", ("tensor(float)", "tensor(int32)"), "float32 in float mode, int32 in integer mode"),
    ) + tuple(TypeConstraint(f"S{k}", ("tensor(float)", "tensor(int32)"), f"type of state {k} (the step's input {k})")
              for k in range(MAX_STATES))
    attributes = (
        LIF.attribute("mode"),
        Attribute("step", onnx.GraphProto, None, "the step graph: inputs (states…, x), outputs (states'…, y)",
                  required=True),
        Attribute("state_names", Strings, None, "names of the states, in the step's order", required=True),
        Attribute("state_init", Floats, None, "value of each state before step 0 when `initial_k` is absent",
                  required=True),
        LIF.attribute("state_bits"),
    )

    # ------------------------------------------------------------------ validation
    @classmethod
    def resolve(cls, given: dict[str, Any], node: str) -> dict[str, Any]:
        """The attributes, the step graph without nodes its outputs do not need (a pass may leave
        them disconnected until its pipeline cleans up)."""
        given = dict(given)
        if given.get("step") is not None:
            given["step"] = live_step(cls.attribute("step").check(given["step"], node))
        return super().resolve(given, node)

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        step, names, init = attrs["step"], attrs["state_names"], attrs["state_init"]
        count = len(names)
        if not 1 <= count <= MAX_STATES:
            raise NodeError(node, f"Neuron needs 1 to {MAX_STATES} states, got {count}")
        if len(set(names)) != count or not all(name.isidentifier() for name in names):
            raise NodeError(node, f"Neuron state_names must be distinct identifiers, got {list(names)}")
        if len(init) != count:
            raise NodeError(node, f"Neuron has {count} state_names but {len(init)} state_init values")
        if len(step.input) != count + 1 or len(step.output) != count + 1:
            raise NodeError(node, f"Neuron step graph must take {count} states and the input and give {count} "
                                  f"states and the output; it has {len(step.input)} inputs and "
                                  f"{len(step.output)} outputs")
        compute = INT32 if attrs["mode"] == "integer" else FLOAT
        if attrs["mode"] == "integer" and not 2 <= attrs["state_bits"] <= 31:
            raise NodeError(node, f"Neuron attribute 'state_bits' must lie in [2, 31], got {attrs['state_bits']}")
        for index, value in enumerate(step.input):
            elem = value.type.tensor_type.elem_type
            allowed = (compute,) if index == count else (FLOAT, INT32) if compute == FLOAT else (INT32,)
            if elem not in allowed:
                what = "input x" if index == count else f"state {names[index]!r}"
                raise NodeError(node, f"Neuron step graph: {what} is {_type_name(elem)}, a {attrs['mode']}-mode "
                                      f"step takes {' or '.join(_type_name(a) for a in allowed)}")
            if index < count:
                out = step.output[index].type.tensor_type.elem_type
                if out not in (elem, 0):  # 0: unknown (a pass renamed it); the state keeps its type
                    raise NodeError(node, f"Neuron step graph: state {names[index]!r} enters as {_type_name(elem)} "
                                          f"and leaves as {_type_name(out)}")
                if elem == INT32 and init[index] != int(init[index]):
                    raise NodeError(node, f"Neuron state {names[index]!r} is int32: state_init must be an integer, "
                                          f"got {init[index]}")
        if step.output[count].type.tensor_type.elem_type not in (compute, 0):
            raise NodeError(node, f"Neuron step graph: output y must be {_type_name(compute)} in {attrs['mode']} mode")
        for step_node in _all_nodes(step):
            if step_node.domain == DOMAIN and step_node.op_type not in STEP_OPS:
                raise NodeError(node, f"Neuron step graph: hnnx.{step_node.op_type} is not a single-step "
                                      f"primitive (allowed: {', '.join(sorted(STEP_OPS))})")
            if step_node.domain not in ("", "ai.onnx", DOMAIN):
                raise NodeError(node, f"Neuron step graph: op {step_node.domain}.{step_node.op_type} is not an "
                                      f"ONNX or hnnx op")

    @classmethod
    def check_ports(cls, view: NodeView) -> None:
        count = len(view.attrs["state_names"])
        for index in range(count + 1, len(cls.inputs)):
            if view.has_input(index):
                raise NodeError(view.name, f"Neuron input {index} ({cls.inputs[index].name!r}) given, but the node "
                                           f"has {count} states")
        if view.n_outputs > count + 1:
            raise NodeError(view.name, f"Neuron has {view.n_outputs} outputs, but {count} states")

    @classmethod
    def structure(cls, view: NodeView) -> str:
        digest = hashlib.sha1(canonical_step(view.attrs["step"]).SerializeToString(deterministic=True)).hexdigest()
        return f"{view.attrs['mode']}-{digest[:16]}-{port_key(view)}"

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        expected = INT32 if view.attrs["mode"] == "integer" else FLOAT
        if elem_types[0] not in (expected, None, 0):
            raise NodeError(view.name, f"Neuron in {view.attrs['mode']} mode needs {_type_name(expected)} current, "
                                       f"got {_type_name(elem_types[0])}")

    @classmethod
    def output_elem_types(cls, view: NodeView, elem_types: list[Any]) -> list[Any]:
        states = [_TYPE_STRINGS[value.type.tensor_type.elem_type] for value in view.attrs["step"].input[:-1]]
        return [elem_types[0], *states][: view.n_outputs]

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        current = shapes[0]
        neurons = None if current is None else list(current[1:])
        return [current] + [neurons] * (view.n_outputs - 1)

    @classmethod
    def emits_spikes(cls, view: NodeView) -> bool:
        step = view.attrs["step"]
        producer = _producer_through_identity(step, step.output[-1].name)
        return producer is not None and producer.domain == DOMAIN and producer.op_type == "Fire"

    # ------------------------------------------------------------------ state
    @classmethod
    def state_names(cls, view: NodeView) -> tuple[str, ...]:
        """The states in port order: state ``k`` enters at input ``k + 1`` and leaves at output ``k + 1``."""
        return tuple(view.attrs["state_names"])

    @classmethod
    def state_spec(cls, view: NodeView) -> tuple[StateSpec, ...]:
        """Every state, shaped like one step of the current; before step 0 it holds ``state_init[k]``."""
        step = view.attrs["step"]
        specs = []
        for index, (name, fill) in enumerate(zip(view.attrs["state_names"], view.attrs["state_init"])):
            dtype = np.dtype(np.int32 if step.input[index].type.tensor_type.elem_type == INT32 else np.float32)
            value = int(fill) if dtype == np.int32 else fill
            specs.append(StateSpec(name, index + 1, index + 1, dtype, value, doc=f"custom neuron state {name!r}"))
        return tuple(specs)

    @classmethod
    def initial_state(cls, view: NodeView, neuron_shape: tuple[int, ...],
                      initial: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The states before step 0 for neurons of shape ``neuron_shape`` (``[N, ...]``), by name:
        ``initial[name]`` broadcast, else ``state_init``."""
        given = dict(initial or {})
        unknown = sorted(set(given) - set(view.attrs["state_names"]))
        if unknown:
            raise NodeError(view.name, f"Neuron has no state {unknown[0]!r} (states: "
                                       f"{', '.join(view.attrs['state_names'])})")
        states = {}
        for spec in cls.state_spec(view):
            value = given.get(spec.name, spec.initial())
            states[spec.name] = np.broadcast_to(np.asarray(value, spec.dtype), tuple(neuron_shape)).copy()
        return states

    @classmethod
    def step(cls, view: NodeView, state: dict[str, np.ndarray], current: np.ndarray
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One time step (numpy): ``current [N, ...]`` → ``(y [N, ...], next state)`` (``onnx.reference``
        running the step graph, the hnnx primitives on their numpy references)."""
        runner = _StepRunner(view)
        y, states = runner.run([state[name] for name in view.attrs["state_names"]], current)
        return y, dict(zip(view.attrs["state_names"], states))

    # ------------------------------------------------------------------ numerics
    @classmethod
    def reference(cls, view: NodeView, current: np.ndarray, *initial: np.ndarray | None) -> tuple[np.ndarray, ...]:
        expected = np.int32 if view.attrs["mode"] == "integer" else np.float32
        if current.dtype != expected:
            raise NodeError(view.name, f"Neuron in {view.attrs['mode']} mode needs {np.dtype(expected).name} current, "
                                       f"got {current.dtype}")
        names = view.attrs["state_names"]
        given = {name: value for name, value in zip(names, initial) if value is not None}
        state = cls.initial_state(view, tuple(current.shape[1:]), given)
        runner = _StepRunner(view)
        states = [state[name] for name in names]
        ys = []
        for x in current:
            y, states = runner.run(states, x)
            ys.append(np.asarray(y, expected))
        y_all = np.stack(ys) if ys else np.zeros(current.shape, expected)
        return tuple([y_all, *states][: view.n_outputs])

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        top = body.top
        step = _inlined(canonical_step(view.attrs["step"]), body.opset)
        count = len(view.attrs["state_names"])
        current = body.input(0)
        neuron_shape = top.op("Slice", top.op("Shape", current), body.literal_1d([1]), body.literal_1d([2**62]))
        states, types = [], []
        for spec in cls.state_spec(view):
            elem = INT32 if spec.dtype == np.int32 else FLOAT
            source = body.input(spec.input) if view.has_input(spec.input) else body.literal(spec.fill, elem)
            states.append(top.op("Expand", source, neuron_shape))
            types.append(elem)
        y_type = step.input[count].type.tensor_type.elem_type

        def run_scan(scope: Scope) -> list[str]:
            return list(scope.op("Scan", *states, current, n_out=count + 1, body=step, num_scan_inputs=1))

        def no_steps(scope: Scope) -> list[str]:
            # onnxruntime's Scan rejects zero iterations: keep the states, return an empty output.
            return [scope.op("Identity", s) for s in states] + [scope.op("Cast", current, to=y_type)]

        steps = top.op("Gather", top.op("Shape", current), body.literal(0, TensorProto.INT64), axis=0)
        outputs = top.op("If", top.op("Equal", steps, body.literal(0, TensorProto.INT64)), n_out=count + 1,
                         then_branch=_branch(body, "no_steps", no_steps, types + [y_type]),
                         else_branch=_branch(body, "steps", run_scan, types + [y_type]))
        outputs = list(outputs)
        body.set_output(0, outputs[count])
        for index in range(1, view.n_outputs):
            body.set_output(index, outputs[index - 1])

    # ------------------------------------------------------------------ integer form
    @classmethod
    def integer_problem(cls, view: NodeView) -> str | None:
        """Why the step has no integer form (the first operation that has none), or None."""
        if view.attrs["mode"] == "integer":
            return "already an integer-mode Neuron"
        try:
            _Units(view.attrs["step"], view.name).solve()
        except NodeError as exc:
            return exc.args[0].split(": ", 1)[-1] if exc.args else str(exc)
        return None

    @classmethod
    def integer_attributes(cls, view: NodeView, scale: float) -> dict[str, Any]:
        """The attributes of the integer-mode neuron that runs this float one on an integer current
        equal to the float current times ``scale``: the step graph in int32, each primitive's own
        integer form (its membrane constants times ``scale``, rounded half to even; factors snapped
        to 1/256; a Product's gain per unit), constants and initial values in membrane units times
        ``scale`` (rounded half to even), spike and count values as they are. NodeError naming the
        operation that has no integer form (a float factor on the membrane, a division, …)."""
        if view.attrs["mode"] == "integer":
            raise NodeError(view.name, "already an integer-mode Neuron")
        units = _Units(view.attrs["step"], view.name)
        graph, state_units = units.solve()
        step = _integer_step(graph, units, scale, view.name)
        init = []
        for name, unit, fill in zip(view.attrs["state_names"], state_units, view.attrs["state_init"]):
            value = float(np.round(fill * scale)) if unit == MEMBRANE else float(fill)
            if value != int(value) or abs(value) > EXACT_ATTRIBUTE_LIMIT:
                raise NodeError(view.name, f"state {name!r} starts at {fill} ({unit}): {value} is not an integer "
                                           f"of magnitude ≤ 2^24")
            init.append(value)
        attrs = dict(view.attrs, mode="integer", step=step, state_init=Floats(init))
        cls.validate(attrs, view.name)
        return attrs

    # ------------------------------------------------------------------ recognition
    @classmethod
    def as_lif(cls, view: NodeView, initial: dict[int, np.ndarray | None] | None = None) -> "LIFMatch | str":
        """The ``hnnx.LIF`` this neuron is, when its step is one (see :func:`match_lif`); else the
        reason it is not, naming the first operation the LIF does not have. ``initial``: the
        connected initial-state inputs by state index, their values when constant (None when
        computed): the LIF admits initial states (integer ones saturated, counters at least 0),
        so only values it leaves unchanged fold."""
        match = match_lif(view)
        if isinstance(match, str):
            return match
        lo, hi = state_range(view.attrs["state_bits"])
        for k, value in (initial or {}).items():
            port, name = match.ports[k], view.attrs["state_names"][k]
            if port == 3 or view.attrs["mode"] == "integer":
                if value is None:
                    return f"its initial {name!r} is computed; the LIF would admit it (saturate it) first"
                low, high = (0, None) if port == 3 else (lo, hi)
                if np.any(value < low) or (high is not None and np.any(value > high)):
                    return f"its initial {name!r} lies outside what the LIF admits unchanged"
        return match


# ---------------------------------------------------------------------------- step graphs
_TYPE_STRINGS = {FLOAT: "tensor(float)", INT32: "tensor(int32)"}


def _type_name(elem: int | None) -> str:
    return TensorProto.DataType.Name(elem).lower() if elem else "unknown"


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_all_nodes(attr.g))
    return nodes


def live_step(step: onnx.GraphProto) -> onnx.GraphProto:
    """``step`` with only the nodes and initializers its outputs depend on."""
    needed = {value.name for value in step.output}
    live = []
    for node in reversed(step.node):
        if any(name in needed for name in node.output if name):
            live.append(node)
            needed.update(name for name in node.input if name)
            needed.update(name for sub in _all_nodes_of_attributes(node) for name in sub.input if name)
    if len(live) == len(step.node) and all(init.name in needed for init in step.initializer):
        return step
    out = onnx.GraphProto()
    out.CopyFrom(step)
    del out.node[:]
    out.node.extend(reversed(live))
    kept = [init for init in step.initializer if init.name in needed]
    del out.initializer[:]
    out.initializer.extend(kept)
    return out


def _all_nodes_of_attributes(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    return [sub for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH for sub in _all_nodes(attr.g)]


def canonical_step(step: onnx.GraphProto) -> onnx.GraphProto:
    """``step`` with its values and nodes renamed in order (``v0``, ``v1``, …; ``n0``, …), shapes,
    value infos and doc strings dropped: equal steps give equal bytes (one function for both),
    and the names cannot collide with the enclosing graph's."""
    renames: dict[str, str] = {}

    def name(old: str) -> str:
        if old and old not in renames:
            renames[old] = f"step_v{len(renames)}"
        return renames.get(old, old)

    out = onnx.GraphProto(name="step")
    for value in step.input:
        elem = value.type.tensor_type.elem_type
        out.input.add().CopyFrom(helper.make_tensor_value_info(name(value.name), elem, None))
    for init in step.initializer:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(init)
        tensor.name = name(init.name)
        tensor.ClearField("doc_string")
        out.initializer.append(tensor)
    for index, node in enumerate(step.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"step_n{index}"
        copy.ClearField("doc_string")
        copy.ClearField("metadata_props")
        copy.input[:] = [name(n) for n in node.input]
        copy.output[:] = [name(n) for n in node.output]
        out.node.append(copy)
    # Each state leaves in the type it enters, the output in the type of the input.
    types = [value.type.tensor_type.elem_type for value in step.input]
    for value, elem in zip(step.output, types[:-1] + types[-1:]):
        out.output.add().CopyFrom(helper.make_tensor_value_info(name(value.name), elem, None))
    return out


def _inlined(step: onnx.GraphProto, opset: int) -> onnx.GraphProto:
    """``step`` with every hnnx primitive replaced by its function body: the neuron's body then
    holds standard ops only (a runtime need not resolve functions inside a ``Scan`` body)."""
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    for node in _all_nodes(step):
        if node.domain == DOMAIN:
            decl = STEP_OPS[node.op_type]
            view = decl.view(node)
            node.overload = decl.structure(view)
            if (node.op_type, node.overload) not in functions:
                functions[(node.op_type, node.overload)] = decl.function(view, opset)
    if not functions:
        return step
    model = helper.make_model(step, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)],
                              functions=list(functions.values()), ir_version=10)
    graph = onnx.inliner.inline_local_functions(model).graph
    used = {name for node in _all_nodes(graph) for name in node.input} | {value.name for value in graph.output}
    kept = [init for init in graph.initializer if init.name in used]  # e.g. a hard reset's unread threshold
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return graph


def _branch(body: FunctionBody, name: str, build: Callable[[Scope], list[str]], types: list[int]) -> onnx.GraphProto:
    """An input-less ``If`` branch whose outputs have the element types ``types`` (shapes unknown)."""
    scope = Scope(body, f"{name}_")
    values = build(scope)
    infos = []
    for value, elem in zip(values, types):
        out = body.fresh(f"{name}_out")
        scope.nodes.append(helper.make_node("Identity", [value], [out]))
        infos.append(helper.make_tensor_value_info(out, elem, None))
    return helper.make_graph(scope.nodes, name, [], infos)


def _producer_through_identity(graph: onnx.GraphProto, tensor: str) -> onnx.NodeProto | None:
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(tensor)
    while node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
        node = producers.get(node.input[0])
    return node


class _StepRunner:
    """The step graph of a node run by ``onnx.reference`` (hnnx primitives on their numpy references)."""

    def __init__(self, view: NodeView) -> None:
        from onnx.reference import ReferenceEvaluator

        from hnnx.ops import reference_ops

        step = view.attrs["step"]
        model = helper.make_model(step, opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                       helper.make_opsetid(DOMAIN, OPSET_VERSION)])
        self.view = view
        self.inputs = [value.name for value in step.input]
        self.evaluator = ReferenceEvaluator(model, new_ops=reference_ops())

    def run(self, states: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        try:
            outputs = self.evaluator.run(None, dict(zip(self.inputs, [*states, x])))
        except NodeError:
            raise
        except Exception as exc:
            raise NodeError(self.view.name, f"the step graph failed: {type(exc).__name__}: {exc}") from None
        count = len(states)
        shape = np.shape(x)
        new_states = [np.broadcast_to(np.asarray(s, old.dtype), shape).copy()
                      for s, old in zip(outputs[:count], states)]
        return np.asarray(outputs[count]), new_states


# ---------------------------------------------------------------------------- units and the integer form
_SAME_UNIT = {"Add", "Sub", "Max", "Min", "Sum", "Identity", "Neg", "Relu", "Abs", "Clip"}
"""Standard ops whose (data) operands and result share a unit and which integers compute exactly."""
_COMPARE = {"Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual"}
_LOGIC = {"Not", "And", "Or", "Xor"}
_SHAPING = {"Reshape", "Expand", "Unsqueeze", "Squeeze"}


@dataclass
class _Use:
    """A constant and the unit its one consumer gives it."""

    tensor: str
    unit: str | None = None


class _Units:
    """The unit of every tensor of a float step graph (membrane, spikes, count, bool, factor, shape),
    derived from the step's input (membrane) and the primitives' port units, with every constant
    given its own copy so each has the unit of its one use. ``solve`` raises NodeError naming the
    first operation without an exact integer form."""

    def __init__(self, step: onnx.GraphProto, node: str) -> None:
        self.node = node
        self.graph = onnx.GraphProto()
        self.graph.CopyFrom(step)
        self.units: dict[str, str] = {}
        self.constants: dict[str, np.ndarray] = {}

    def fail(self, op: onnx.NodeProto, why: str) -> NodeError:
        label = f"{op.op_type} ({op.name})" if op.name else op.op_type
        if op.domain == DOMAIN:
            label = f"hnnx.{label}"
        return NodeError(self.node, f"step operation {label} {why}")

    def _unshare_constants(self) -> None:
        """One constant per use: initializers and Constant nodes copied for every consumer input."""
        graph = self.graph
        values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        kept = []
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                values[node.output[0]] = _constant_value(node)
            else:
                kept.append(node)
        outputs = {value.name for value in graph.output}
        if any(name in outputs for name in values):
            raise NodeError(self.node, "the step graph outputs a constant: a state or the output must be computed")
        del graph.node[:]
        graph.node.extend(kept)
        del graph.initializer[:]
        count = 0
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name in values:
                    copy = f"{name}__use{count}"
                    count += 1
                    self.constants[copy] = np.asarray(values[name])
                    node.input[index] = copy

    def solve(self) -> tuple[onnx.GraphProto, list[str]]:
        """The graph with constants unshared, and the unit of every state (in order)."""
        self._unshare_constants()
        graph = self.graph
        count = len(graph.input) - 1
        self.units[graph.input[count].name] = MEMBRANE
        for rounds in range(2 * count + 4):  # states take the unit their step output has; rounds settle it
            before = dict(self.units)
            for node in graph.node:
                self._node(node)
            for value, out in zip(graph.input[:count], graph.output[:count]):
                unit = self.units.get(out.name)
                if unit is not None:
                    self._assign(value.name, unit, None)
            if self.units == before:
                # A state nothing else determines holds membrane values (what a neuron's states hold).
                unknown = next((v.name for v in graph.input[:count] if v.name not in self.units), None)
                if unknown is None:
                    break
                self.units[unknown] = MEMBRANE
        states = []
        for value, out in zip(graph.input[:count], graph.output[:count]):
            unit = self.units.get(out.name) or self.units.get(value.name)
            if unit not in (MEMBRANE, SPIKES, COUNT):
                raise NodeError(self.node, f"state {value.name!r} holds no membrane, spike or count value")
            states.append(unit)
        y = self.units.get(graph.output[count].name)
        if y not in (MEMBRANE, SPIKES):
            raise NodeError(self.node, "the step's output is neither spikes nor a membrane value")
        for name in self.constants:
            self.units.setdefault(name, FACTOR)
        return graph, states

    def _assign(self, name: str, unit: str, op: onnx.NodeProto | None) -> None:
        known = self.units.get(name)
        if known is None:
            self.units[name] = unit
        elif known != unit and op is not None:
            raise self.fail(op, f"mixes {known} and {unit} values")

    def _node(self, op: onnx.NodeProto) -> None:
        ins = [name for name in op.input]
        if op.domain == DOMAIN:
            decl = STEP_OPS[op.op_type]
            in_units, out_units = decl.port_units
            for name, unit in zip(ins, in_units):
                if name:
                    self._assign(name, unit, op)
            for name, unit in zip(op.output, out_units):
                self._assign(name, unit, op)
            return
        kind = op.op_type
        data = [name for name in ins if name]
        if kind in _SAME_UNIT or kind == "Where":
            operands = data[1:] if kind == "Where" else data
            if kind == "Where":
                self._assign(data[0], BOOL, op)
            unit = next((self.units[n] for n in operands if n in self.units and n not in self.constants), None)
            unit = unit or next((self.units[n] for n in operands if n in self.units), None)
            if unit is None:
                return
            if unit in (BOOL, SHAPE, FACTOR):
                raise self.fail(op, f"computes on {unit} values, which have no place in a neuron's state")
            for name in operands:
                self._assign(name, unit, op)
            self._assign(op.output[0], unit, op)
        elif kind in _COMPARE:
            unit = next((self.units[n] for n in data if n in self.units and n not in self.constants), None)
            if unit is not None:
                for name in data:
                    self._assign(name, unit, op)
            self._assign(op.output[0], BOOL, op)
        elif kind in _LOGIC:
            for name in data:
                self._assign(name, BOOL, op)
            self._assign(op.output[0], BOOL, op)
        elif kind == "Cast":
            to = next(a.i for a in op.attribute if a.name == "to")
            source = self.units.get(data[0])
            if to == TensorProto.BOOL:
                self._assign(op.output[0], BOOL, op)
            elif source == BOOL:
                self._assign(op.output[0], SPIKES, op)
            elif source is not None:
                if to not in (FLOAT, INT32):
                    raise self.fail(op, f"casts to {_type_name(to)}")
                self._assign(op.output[0], source, op)
        elif kind in _SHAPING:
            for name in data[1:]:
                self._assign(name, SHAPE, op)
            if data[0] in self.units:
                self._assign(op.output[0], self.units[data[0]], op)
        elif kind == "Mul":
            self._mul(op, data)
        else:
            raise self.fail(op, "has no exact integer form in a neuron's step (integer steps add, subtract, compare, "
                                "select and use the hnnx primitives)")

    def _mul(self, op: onnx.NodeProto, data: list[str]) -> None:
        a, b = data
        if a in self.constants and b not in self.constants:
            a, b = b, a
        unit_a, unit_b = self.units.get(a), self.units.get(b)
        if unit_a is None:
            return
        if b in self.constants:
            if unit_a == SPIKES:  # a spike times a constant: an amount added on a spike, in membrane units
                self._assign(b, MEMBRANE, op)
                self._assign(op.output[0], MEMBRANE, op)
                return
            value = self.constants[b]
            if not np.all(value == np.round(value)):
                raise self.fail(op, f"multiplies by {_show(value)}: a float factor has no exact integer form; "
                                    f"use hnnx.Leak (alpha: floor(round(256·α)·v / 256)) or hnnx.Product")
            self._assign(b, FACTOR, op)
            self._assign(op.output[0], unit_a, op)
            return
        if unit_b is None:
            return
        units = {unit_a, unit_b}
        if units == {SPIKES}:
            self._assign(op.output[0], SPIKES, op)
        elif units in ({SPIKES, MEMBRANE}, {SPIKES, COUNT}):
            self._assign(op.output[0], (units - {SPIKES}).pop(), op)
        elif units == {MEMBRANE}:
            raise self.fail(op, "multiplies two membrane values: use hnnx.Product (an exact integer product "
                                "with a gain per unit)")
        else:
            raise self.fail(op, f"multiplies {unit_a} by {unit_b} values")


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_floats":
            return np.array(attr.floats, np.float32)
        if attr.name == "value_ints":
            return np.array(attr.ints, np.int64)
    raise NodeError(node.name or "Constant", "unsupported Constant form in a step graph")


def _show(value: np.ndarray) -> str:
    flat = np.asarray(value).reshape(-1)
    return f"{flat[0]:g}" if flat.size == 1 else f"a tensor ({flat.size} values)"


def _integer_step(graph: onnx.GraphProto, units: _Units, scale: float, node: str) -> onnx.GraphProto:
    """The integer form of a float step graph with solved ``units``: every float value int32, the
    primitives in integer mode with scaled constants, constants by their units."""
    out = onnx.GraphProto()
    out.CopyFrom(graph)
    del out.value_info[:]
    lo, hi = -(1 << 31), (1 << 31) - 1
    for name, value in units.constants.items():
        unit = units.units[name]
        if value.dtype.kind not in "fc" or unit in (SHAPE, BOOL):
            out.initializer.append(numpy_helper.from_array(value, name))
            continue
        scaled = np.round(value.astype(np.float64) * scale) if unit == MEMBRANE else value.astype(np.float64)
        if not np.all(scaled == np.round(scaled)) or scaled.min(initial=0) < lo or scaled.max(initial=0) > hi:
            raise NodeError(node, f"the step's constant {_show(value)} ({unit}) has no int32 form "
                                  f"({_show(scaled)} in integer units)")
        out.initializer.append(numpy_helper.from_array(scaled.astype(np.int32), name))
    for value in list(out.input) + list(out.output):
        if value.type.tensor_type.elem_type == FLOAT:
            value.type.tensor_type.elem_type = INT32
    for op in out.node:
        if op.op_type == "Cast" and op.domain in ("", "ai.onnx"):
            for attr in op.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = INT32
        if op.domain != DOMAIN:
            continue
        decl = STEP_OPS[op.op_type]
        view = decl.view(op)
        if decl is Fire:
            attrs = dict(view.attrs, surrogate_width=float(np.float32(view.attrs["surrogate_width"] * scale)))
        else:
            attrs = decl.integer_attributes(view, scale)
        del op.attribute[:]
        op.attribute.extend(helper.make_attribute(key, value) for key, value in attrs.items() if value is not None)
        op.ClearField("overload")
    return out


# ---------------------------------------------------------------------------- recognition of a LIF
@dataclass
class LIFMatch:
    """An ``hnnx.LIF`` a custom neuron's step computes: its attributes and, for each state of the
    neuron (in order), the LIF port (1 ``v``, 2 ``theta``, 3 ``refractory``) that carries it."""

    attrs: dict[str, Any]
    ports: list[int]


_LIF_STAGES = ("Threshold", "Accumulate", "Fire", "Reset", "Leak", "Saturate", "ThresholdDynamics", "Refractory")
"""The primitives the LIF step is made of (``hnnx.Product`` is not one)."""


def _label(node: onnx.NodeProto) -> str:
    label = f"hnnx.{node.op_type}" if node.domain == DOMAIN else node.op_type
    return f"{label} ({node.name})" if node.name else label


def match_lif(view: NodeView) -> LIFMatch | str:
    """Read the step graph as the ``hnnx.LIF`` step — ``Threshold`` (or a constant threshold) →
    ``Accumulate`` (gated by a refractory state) → ``Fire`` → ``Reset`` → ``Leak`` → ``Saturate``,
    ``ThresholdDynamics`` and ``Refractory`` for the other states, each optional where the LIF's
    part is — and return the LIF it is, or the reason it is not (naming the first operation the
    LIF does not compute). Only a step made of exactly these operations, wired as the LIF wires
    them, matches: then the LIF computes the same bits."""
    step = view.attrs["step"]
    names = list(view.attrs["state_names"])
    count = len(names)
    producers = {out: node for node in step.node for out in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in step.initializer}
    for node in step.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            constants[node.output[0]] = _constant_value(node)
    used: set[int] = set()
    state_of = {value.name: index for index, value in enumerate(step.input[:count])}
    x_name = step.input[count].name

    def source(tensor: str) -> str:
        node = producers.get(tensor)
        while node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
            used.add(id(node))
            tensor = node.input[0]
            node = producers.get(tensor)
        return tensor

    def producer(tensor: str, op: str) -> onnx.NodeProto | None:
        node = producers.get(source(tensor))
        if node is None or node.domain != DOMAIN or node.op_type != op:
            return None
        used.add(id(node))
        return node

    def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
        return STEP_OPS[node.op_type].view(node).attrs

    def scalar(tensor: str) -> float | None:
        value = constants.get(source(tensor))
        if value is None or value.size != 1:
            return None
        used.add(id(producers.get(source(tensor))))
        return float(value.reshape(-1)[0])

    def first_unused() -> str | None:
        for node in step.node:
            if id(node) not in used and not (node.op_type == "Constant" and node.domain in ("", "ai.onnx")):
                return _label(node)
        return None

    def unlike(what: str) -> str:
        foreign = [_label(node) for node in step.node
                   if not (node.domain == DOMAIN and node.op_type in _LIF_STAGES)
                   and not (node.domain in ("", "ai.onnx") and node.op_type in ("Constant", "Identity"))]
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            return (f"its step is not an hnnx.LIF: it computes {', '.join(foreign[:3])}{more}, which the LIF has "
                    f"no stage for")
        return f"its step is not an hnnx.LIF: {what}"

    fire = producer(step.output[count].name, "Fire")
    if fire is None:
        return unlike("the output is not the spikes of an hnnx.Fire")
    spikes = fire.output[0]
    acc = producer(fire.input[0], "Accumulate")
    if acc is None:
        return unlike("the membrane that fires is not an hnnx.Accumulate of a state and the input")
    v_state = state_of.get(source(acc.input[0]))
    if v_state is None or source(acc.input[1]) != x_name:
        return unlike("hnnx.Accumulate does not add the input to a state")
    mode, bits = attrs_of(acc)["mode"], attrs_of(acc)["state_bits"]
    refr_state = None
    if len(acc.input) > 2 and acc.input[2]:
        refr_state = state_of.get(source(acc.input[2]))
        if refr_state is None:
            return unlike("the refractory gate is not a state")
    theta_source = source(fire.input[1])
    theta_node = producer(fire.input[1], "Threshold")
    theta_state, threshold, theta_lower = None, None, None
    if theta_node is not None:
        theta_state = state_of.get(source(theta_node.input[0]))
        if theta_state is None:
            return unlike("hnnx.Threshold does not read a state")
        threshold, theta_lower = attrs_of(theta_node)["threshold"], attrs_of(theta_node)["v_lower"]
    else:
        threshold = scalar(fire.input[1])
        if threshold is None:
            return unlike("the threshold is neither a scalar constant nor an hnnx.Threshold")

    def spikes_of(node: onnx.NodeProto, index: int) -> bool:
        return source(node.input[index]) == spikes

    # the membrane: Saturate? ∘ Leak? ∘ Reset? ∘ v1
    lif: dict[str, Any] = {"mode": mode, "threshold": threshold, "reset_mode": "none", "state_bits": bits,
                           "surrogate": attrs_of(fire)["surrogate"],
                           "surrogate_width": attrs_of(fire)["surrogate_width"]}
    tensor = step.output[v_state].name
    saturate = producer(tensor, "Saturate")
    if saturate is not None:
        lif["v_lower"] = attrs_of(saturate)["v_lower"]
        tensor = saturate.input[0]
    leak = producer(tensor, "Leak")
    if leak is not None:
        lif.update(alpha=attrs_of(leak)["alpha"], beta=attrs_of(leak)["beta"])
        tensor = leak.input[0]
    reset = producer(tensor, "Reset")
    if reset is not None:
        if not spikes_of(reset, 1):
            return unlike("hnnx.Reset does not take the spikes of the hnnx.Fire")
        reset_attrs = attrs_of(reset)
        lif.update(reset_mode=reset_attrs["reset_mode"], v_reset=reset_attrs["v_reset"],
                   reset_decrement=reset_attrs["reset_decrement"])
        if reset_attrs["reset_mode"] == "soft":
            # The very threshold tensor the spikes fired at, or (a constant threshold) the same value.
            same = source(reset.input[2]) == theta_source or (theta_node is None
                                                              and scalar(reset.input[2]) == threshold)
            if not same:
                return unlike("hnnx.Reset subtracts another threshold than the one the spikes fired at")
        tensor = reset.input[0]
    if source(tensor) != source(fire.input[0]):
        return unlike(f"the next {names[v_state]!r} is not the fired membrane reset, leaked and saturated")
    lower = lif.get("v_lower")
    if theta_node is not None and theta_lower != lower:
        return unlike(f"the threshold's lower bound ({theta_lower}) differs from the membrane's ({lower})")
    if theta_node is None and lower is not None and threshold < lower:
        return unlike(f"the constant threshold {threshold} lies below the lower bound {lower}")
    roles = [k for k in (v_state, theta_state, refr_state) if k is not None]
    if len(set(roles)) != len(roles):
        return unlike("one state plays two parts (membrane, adaptive threshold, refractory counter)")
    ports = {v_state: 1}
    if theta_state is not None:
        dynamics = producer(step.output[theta_state].name, "ThresholdDynamics")
        if dynamics is None or state_of.get(source(dynamics.input[0])) != theta_state or not spikes_of(dynamics, 1):
            return unlike(f"the next {names[theta_state]!r} is not hnnx.ThresholdDynamics of it and the spikes")
        dyn = attrs_of(dynamics)
        lif.update(theta_alpha=dyn["theta_alpha"], theta_beta=dyn["theta_beta"],
                   theta_increment=dyn["theta_increment"])
        ports[theta_state] = 2
    if refr_state is not None:
        counter = producer(step.output[refr_state].name, "Refractory")
        if counter is None or state_of.get(source(counter.input[0])) != refr_state or not spikes_of(counter, 1):
            return unlike(f"the next {names[refr_state]!r} is not hnnx.Refractory of it and the spikes")
        lif["refractory"] = attrs_of(counter)["refractory"]
        ports[refr_state] = 3
    if len(ports) != count:
        extra = next(names[k] for k in range(count) if k not in ports)
        return unlike(f"state {extra!r} has no place in the LIF")
    primitives = [node for node in step.node if node.domain == DOMAIN and node.op_type != "Fire"]
    if any(attrs_of(node)["mode"] != mode or attrs_of(node)["state_bits"] != bits for node in primitives):
        return unlike("its primitives differ in numeric mode or state width")
    extra = first_unused()
    if extra is not None:
        return unlike(f"it also computes {extra}, outside the LIF's stages")
    init = view.attrs["state_init"]
    for k, port in ports.items():
        if port != 1 and init[k] != 0:
            return unlike(f"state {names[k]!r} starts at {init[k]}, the LIF's at 0")
    lif["v_init"] = init[v_state]
    order = [ports[k] for k in range(count)]
    try:
        LIF.resolve(lif, view.name)
    except NodeError as exc:
        return unlike(f"no valid LIF has these constants ({exc.args[0] if exc.args else exc})")
    return LIFMatch(lif, order)
