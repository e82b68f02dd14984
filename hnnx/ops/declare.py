"""The declarative form of an ``hnnx`` op.

An op is declared once, as a subclass of :class:`OpDeclaration`: its docstring is its
specification, its ports and attributes are data, and two methods carry its numerics —
:meth:`OpDeclaration.reference` (numpy) and :meth:`OpDeclaration.build_body` (standard
ONNX ops). Everything else — the ``onnx.defs`` schema with shape inference, the
model-local ``FunctionProto``, the ``onnx.reference`` kernel, attribute validation and
the op reference table — is derived here from that declaration.

Ops whose numerics are a per-time-step recurrence write the step once against the
array namespace of :mod:`hnnx.ops.arrays`, so the numpy reference and the ONNX body
run literally the same equations.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import onnx
from onnx import helper

from hnnx.errors import NodeError

if TYPE_CHECKING:
    from hnnx.ops.arrays import FunctionBody

DOMAIN = "hnnx"
"""The ONNX domain of every hnnx op."""
OPSET_VERSION = 1
"""The version of the ``hnnx`` opset."""
ONNX_OPSET = 21
"""The standard ONNX opset hnnx writes new models in."""
MIN_ONNX_OPSET = 18
"""The oldest standard opset function bodies can be written in (axes-as-input reductions, bitwise ops)."""
IR_VERSION = 10
"""ONNX IR version of models hnnx writes (function overloads need IR 10)."""

class Floats(tuple):
    """The value type of a list-of-floats attribute (ONNX ``FLOATS``)."""


class Strings(tuple):
    """The value type of a list-of-strings attribute (ONNX ``STRINGS``)."""


_ATTR_TYPES = {
    float: onnx.defs.OpSchema.AttrType.FLOAT,
    int: onnx.defs.OpSchema.AttrType.INT,
    str: onnx.defs.OpSchema.AttrType.STRING,
    Floats: onnx.defs.OpSchema.AttrType.FLOATS,
    Strings: onnx.defs.OpSchema.AttrType.STRINGS,
    onnx.GraphProto: onnx.defs.OpSchema.AttrType.GRAPH,
}


@dataclass(frozen=True)
class Attribute:
    """One attribute of an op.

    ``default=None`` with ``required=False`` declares an attribute that may be absent
    (its absence has a meaning stated in ``doc``).
    """

    name: str
    type: type  # float, int, str, Floats, Strings or onnx.GraphProto
    default: float | int | str | None
    doc: str
    choices: tuple[str, ...] = ()
    required: bool = False

    def check(self, value: Any, node: str) -> float | int | str:
        """Return ``value`` converted to this attribute's type, or raise NodeError."""
        if self.type in (Floats, Strings, onnx.GraphProto):
            return _check_compound(self, value, node)
        if self.type is str:
            if not isinstance(value, str):
                raise NodeError(node, f"attribute {self.name!r} must be a string, got {value!r}")
            if self.choices and value not in self.choices:
                raise NodeError(
                    node, f"attribute {self.name!r} must be one of {', '.join(self.choices)}; got {value!r}"
                )
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise NodeError(node, f"attribute {self.name!r} must be an integer, got {value!r}")
            return int(value)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise NodeError(node, f"attribute {self.name!r} must be a number, got {value!r}")
        value = float(np.float32(value))  # what an ONNX FLOAT attribute can hold
        if not math.isfinite(value):
            raise NodeError(node, f"attribute {self.name!r} must be finite, got {value!r}")
        return value


def _check_compound(attr: Attribute, value: Any, node: str) -> Any:
    """A list or graph attribute value in its declared type: a graph may also be an
    onnx-graphsurgeon graph (what a pass holds), exported to its GraphProto."""
    if attr.type is onnx.GraphProto:
        if isinstance(value, onnx.GraphProto):
            return value
        if type(value).__module__.startswith("onnx_graphsurgeon"):
            import onnx_graphsurgeon as gs

            return gs.export_onnx(value, do_type_check=False).graph
        raise NodeError(node, f"attribute {attr.name!r} must be a graph, got {type(value).__name__}")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        raise NodeError(node, f"attribute {attr.name!r} must be a list, got {value!r}")
    if attr.type is Strings:
        items = [v.decode() if isinstance(v, bytes) else v for v in value]
        if not all(isinstance(v, str) for v in items):
            raise NodeError(node, f"attribute {attr.name!r} must be a list of strings, got {value!r}")
        return Strings(items)
    numbers = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise NodeError(node, f"attribute {attr.name!r} must be a list of finite numbers, got {value!r}")
        numbers.append(float(np.float32(v)))
    return Floats(numbers)


TIME_MAJOR = "major"
"""Port time layout: the tensor is time-major, ``[T, N, ...]``."""
NO_TIME = "none"
"""Port time layout: the tensor has no time axis (an ANN value ``[N, ...]`` or a neuron state)."""
SAME_TIME = "same"
"""Port time layout: as input 0 (element-wise ops)."""


@dataclass(frozen=True)
class Port:
    """One input or output of an op. ``type`` names a type constraint or is a fixed type;
    ``time`` is the port's time layout (:data:`TIME_MAJOR`, :data:`NO_TIME` or :data:`SAME_TIME`)."""

    name: str
    doc: str
    type: str = "T"
    optional: bool = False
    time: str = SAME_TIME


@dataclass(frozen=True)
class TypeConstraint:
    name: str
    allowed: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class StateSpec:
    """One tensor a node carries from one call to the next (its state), as an input/output pair.

    ``input``/``output``: the port indices that take its value before the first step of a call
    and give it after the last; ``dtype``: its numpy type; ``fill``: its value before step 0 of
    a sequence — an input given as this scalar is broadcast by the op, so a fresh state needs no
    shape; ``leading``: fixed leading dims, followed by the per-step dims of input 0
    (``[N, ...]``) when ``per_step``, else nothing (a scalar).
    """

    name: str
    input: int
    output: int
    dtype: np.dtype
    fill: float | int
    leading: tuple[int, ...] = ()
    per_step: bool = True
    doc: str = ""

    def shape(self, step_shape: Sequence[int]) -> tuple[int, ...]:
        """The full shape for steps of shape ``step_shape`` (input 0 without its time axis)."""
        return (*self.leading, *step_shape) if self.per_step else self.leading

    def initial(self) -> np.ndarray:
        """The state before step 0, as a scalar the op broadcasts."""
        return np.array(self.fill, self.dtype)


@dataclass
class NodeView:
    """What a declaration needs to know of one node: its resolved attributes and
    which of its inputs/outputs are connected (``""`` marks an absent optional one)."""

    name: str
    attrs: dict[str, Any]
    inputs: tuple[bool, ...]
    n_outputs: int
    extra: dict[str, Any] = field(default_factory=dict)

    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index]

    def has_output(self, index: int) -> bool:
        return index < self.n_outputs


class OpDeclaration:
    """Base class of every hnnx op declaration (see the module docstring).

    Subclasses set ``inputs``, ``outputs``, ``attributes``, ``type_constraints`` and
    implement :meth:`reference` and :meth:`build_body`; they may refine
    :meth:`validate`, :meth:`structure` and :meth:`infer_types`.
    """

    name: ClassVar[str]
    neuron: ClassVar[bool] = False
    """A neuron: integrates the current at input 0 into a membrane state, and has an integer
    form whose constants scale with that current (``integer_attributes(view, scale)``)."""
    constant_current: ClassVar[str | None] = None
    """The attribute that, set to T > 0, makes input 0 one step's current ``[1, N, ...]``
    applied at each of T steps; None when the op has no such form."""
    inputs: ClassVar[tuple[Port, ...]]
    outputs: ClassVar[tuple[Port, ...]]
    attributes: ClassVar[tuple[Attribute, ...]]
    type_constraints: ClassVar[tuple[TypeConstraint, ...]]

    @classmethod
    def repeated_step(cls, view: NodeView) -> tuple[int, dict[str, Any]] | None:
        """When every step of the node's time-major output 0 (``[T, N, ...]``, from an input 0
        ``[N, ...]``) is the same: ``(T, attributes)`` of the node that computes that one step,
        ``[1, N, ...]``, from the same inputs; None otherwise (the default)."""
        return None

    # ------------------------------------------------------------------ attributes
    @classmethod
    def attribute(cls, name: str) -> Attribute:
        for attr in cls.attributes:
            if attr.name == name:
                return attr
        raise KeyError(name)

    @classmethod
    def resolve(cls, given: dict[str, Any], node: str) -> dict[str, Any]:
        """Type-check ``given`` attributes, fill defaults and run :meth:`validate`.

        Returns a dict holding every attribute (absent optional ones map to None).
        """
        known = {a.name for a in cls.attributes}
        unknown = sorted(set(given) - known)
        if unknown:
            raise NodeError(node, f"{cls.name} has no attribute {unknown[0]!r} (known: {', '.join(sorted(known))})")
        attrs: dict[str, Any] = {}
        for attr in cls.attributes:
            if attr.name in given and given[attr.name] is not None:
                attrs[attr.name] = attr.check(given[attr.name], node)
            elif attr.required:
                raise NodeError(node, f"{cls.name} needs attribute {attr.name!r}")
            else:
                attrs[attr.name] = attr.default
        cls.validate(attrs, node)
        return attrs

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        """Semantic checks across attributes; raise NodeError naming ``node``."""

    # ------------------------------------------------------------------ structure
    @classmethod
    def structure(cls, view: NodeView) -> str:
        """The overload key: a short deterministic string naming the body variant.

        Nodes whose keys are equal share one FunctionProto. The default covers ops
        whose body depends only on which ports are connected.
        """
        return port_key(view)

    @classmethod
    def view(cls, node: onnx.NodeProto) -> NodeView:
        """Resolve a NodeProto of this op into a :class:`NodeView`."""
        label = node.name or f"{cls.name}({', '.join(node.output)})"
        given = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for key, value in list(given.items()):
            if isinstance(value, bytes):
                given[key] = value.decode()
        if len(node.input) > len(cls.inputs):
            raise NodeError(label, f"{cls.name} takes at most {len(cls.inputs)} inputs, got {len(node.input)}")
        if len(node.output) > len(cls.outputs):
            raise NodeError(label, f"{cls.name} has at most {len(cls.outputs)} outputs, got {len(node.output)}")
        for index, port in enumerate(cls.inputs):
            present = index < len(node.input) and node.input[index] != ""
            if not port.optional and not present:
                raise NodeError(label, f"{cls.name} input {index} ({port.name!r}) is required")
        if not node.output or node.output[0] == "":
            raise NodeError(label, f"{cls.name} output 0 ({cls.outputs[0].name!r}) is required")
        attrs = cls.resolve(given, label)
        view = NodeView(label, attrs, tuple(name != "" for name in node.input), len(node.output))
        cls.check_ports(view)
        return view

    @classmethod
    def check_ports(cls, view: NodeView) -> None:
        """Checks of which optional ports may or must be connected, given the attributes."""

    # ------------------------------------------------------------------ numerics
    @classmethod
    def reference(cls, view: NodeView, *inputs: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """numpy reference kernel; returns one array per node output."""
        raise NotImplementedError

    @classmethod
    def torch_forward(cls, view: NodeView, *inputs: Any) -> tuple[Any, ...]:
        """torch forward pass with surrogate gradients; one tensor per node output."""
        raise NotImplementedError(f"{cls.name} has no torch implementation")

    @classmethod
    def view_for(cls, attrs: dict[str, Any], inputs: Sequence[bool], n_outputs: int, name: str = "") -> NodeView:
        """A :class:`NodeView` from Python attributes (for running an op outside a graph)."""
        label = name or cls.name
        view = NodeView(label, cls.resolve(attrs, label), tuple(inputs), n_outputs)
        cls.check_ports(view)
        return view

    @classmethod
    def build_body(cls, view: NodeView, body: "FunctionBody") -> None:
        """Emit the standard-ONNX body of the variant ``view`` into ``body``."""
        raise NotImplementedError

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        """Output shapes from input shapes (None = unknown rank; absent inputs are None).

        Dims are ints, torch SymInts or :class:`UnknownDim`; write plain arithmetic on them
        (no comparisons), so one function serves ONNX shape inference and torch export.
        Default: every output shaped like input 0.
        """
        return [shapes[0]] * view.n_outputs

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        """Reject input element types (ONNX enums; None = absent) the node cannot take."""

    @classmethod
    def output_elem_types(cls, view: NodeView, elem_types: list[Any]) -> list[Any]:
        """Output element types: a port with a fixed type gets it (via ``fixed``), a port typed
        by the constraint gets input 0's type. Works for ONNX enums and torch dtypes alike."""
        return [elem_types[0] if port.type == cls.inputs[0].type else port.type
                for port in cls.outputs[: view.n_outputs]]

    @classmethod
    def infer_types(cls, view: NodeView, input_types: list[onnx.TypeProto | None]) -> list[onnx.TypeProto | None]:
        """ONNX output types, derived from :meth:`output_shapes` and the port types."""
        elems = [t.tensor_type.elem_type if t is not None else None for t in input_types]
        cls.check_types(view, elems)
        shapes = [None if t is None else _to_symbolic(dims_of(t)) for t in input_types]
        out_types = []
        for elem, shape in zip(cls.output_elem_types(view, elems), cls.output_shapes(view, shapes)):
            if isinstance(elem, str):
                elem = _FIXED_ELEM_TYPES[elem]
            if not elem:  # input type unknown (yet): leave the output to later inference
                out_types.append(None)
                continue
            out_types.append(tensor_type(elem, None if shape is None else [_from_symbolic(d) for d in shape]))
        return out_types

    # ------------------------------------------------------------------ what passes ask
    @classmethod
    def output_ranks(cls, view: NodeView, input_ranks: Sequence[int | None]) -> list[int | None]:
        """The rank of each output from the ranks of the inputs (None: unknown or absent),
        derived from :meth:`output_shapes` — a pass that meets a tensor without an inferred
        shape asks this instead of guessing."""
        shapes = [None if rank is None else [UnknownDim()] * rank for rank in input_ranks]
        shapes += [None] * (len(cls.inputs) - len(shapes))
        return [None if shape is None else len(shape) for shape in cls.output_shapes(view, shapes)]

    @classmethod
    def output_time(cls, view: NodeView) -> list[str]:
        """The time layout of each connected output: :data:`TIME_MAJOR`, :data:`NO_TIME`, or
        :data:`SAME_TIME` for an element-wise op (the layout of the tensor at input 0)."""
        return [cls.inputs[0].time if port.time == SAME_TIME else port.time for port in cls.outputs[: view.n_outputs]]

    @classmethod
    def state_spec(cls, view: NodeView) -> tuple[StateSpec, ...]:
        """What the node carries between calls (empty: the op is stateless). Connecting each
        state's input and output port lets a graph run a sequence a few steps per call and
        continue exactly where it stopped (:mod:`hnnx.passes.stepwise` asks this)."""
        return ()

    @classmethod
    def emits_spikes(cls, view: NodeView) -> bool:
        """Whether output 0 holds 0/1 spikes (an event-driven consumer touches only the ones)."""
        return False

    # ------------------------------------------------------------------ derived
    @classmethod
    def summary(cls) -> str:
        """The docstring's first paragraph on one line."""
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())

    @classmethod
    def schema(cls) -> onnx.defs.OpSchema:
        """The ``onnx.defs`` schema of this op, with Python shape inference."""
        OpSchema = onnx.defs.OpSchema
        opt = OpSchema.FormalParameterOption

        def formal(port: Port) -> OpSchema.FormalParameter:
            return OpSchema.FormalParameter(
                port.name, port.type, port.doc, param_option=opt.Optional if port.optional else opt.Single
            )

        attributes = []
        for attr in cls.attributes:
            if attr.default is not None:
                attributes.append(OpSchema.Attribute(attr.name, helper.make_attribute(attr.name, attr.default), attr.doc))
            else:
                attributes.append(OpSchema.Attribute(attr.name, _ATTR_TYPES[attr.type], attr.doc, required=attr.required))
        schema = OpSchema(
            cls.name,
            DOMAIN,
            OPSET_VERSION,
            doc=cls.__doc__ or "",
            inputs=[formal(p) for p in cls.inputs],
            outputs=[formal(p) for p in cls.outputs],
            type_constraints=[(tc.name, list(tc.allowed), tc.doc) for tc in cls.type_constraints],
            attributes=attributes,
        )

        def infer(ctx: onnx.shape_inference.InferenceContext) -> None:
            node = _node_from_context(cls, ctx)
            view = cls.view(node)
            types = [ctx.get_input_type(i) if view.has_input(i) else None for i in range(len(node.input))]
            for index, out_type in enumerate(cls.infer_types(view, types)):
                if out_type is not None and index < ctx.get_num_outputs():
                    ctx.set_output_type(index, out_type)

        schema.set_type_and_shape_inference_function(infer)
        return schema

    @classmethod
    def function(cls, view: NodeView, opset: int = ONNX_OPSET) -> onnx.FunctionProto:
        """The model-local FunctionProto (overload ``structure(view)``) for ``view``, in the
        model's standard ``opset`` (≥ MIN_ONNX_OPSET)."""
        from hnnx.ops.arrays import FunctionBody

        body = FunctionBody(cls, view, opset)
        cls.build_body(view, body)
        return body.to_function(cls.structure(view))


def port_key(view: NodeView) -> str:
    """The part of an overload key that says which optional ports are connected."""
    inputs = "".join("1" if present else "0" for present in view.inputs)
    return f"i{inputs}o{view.n_outputs}"


def _node_from_context(cls: type[OpDeclaration], ctx: Any) -> onnx.NodeProto:
    """Rebuild enough of a NodeProto from a shape-inference context to resolve it."""
    attrs = {}
    for attr in cls.attributes:
        proto = ctx.get_attribute(attr.name)
        if proto is not None:
            attrs[attr.name] = helper.get_attribute_value(proto)
    inputs = [f"in{i}" if ctx.has_input(i) else "" for i in range(ctx.get_num_inputs())]
    outputs = [f"out{i}" for i in range(ctx.get_num_outputs())]
    # The display name reads "node LIF[hnnx] (name)": keep the node's own name.
    display = ctx.get_display_name() or ""
    name = display[display.rfind("(") + 1:-1] if display.endswith(")") and "(" in display else cls.name
    return helper.make_node(cls.name, inputs, outputs, name=name, domain=DOMAIN, **attrs)


def slug(text: str) -> str:
    """A safe fragment for generated names."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"


def tensor_type(elem_type: int, shape: Sequence[int | str | None] | None) -> onnx.TypeProto:
    """A tensor TypeProto (``shape=None``: unknown rank)."""
    return helper.make_tensor_type_proto(elem_type, shape)


Dim = int | str | None


def dims_of(type_proto: onnx.TypeProto | None) -> list[Dim] | None:
    """The dims of a tensor type (``None`` entries are unknown); None for unknown rank."""
    if type_proto is None or not type_proto.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in type_proto.tensor_type.shape.dim]


class UnknownDim:
    """A dim of an ONNX shape in :meth:`OpDeclaration.output_shapes`: named or unknown.

    Arithmetic on it gives an unknown dim; passed through unchanged it keeps its name.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def _unknown(self, *_: Any) -> "UnknownDim":
        return UnknownDim()

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _unknown
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _unknown


_FIXED_ELEM_TYPES = {"tensor(int32)": onnx.TensorProto.INT32, "tensor(float)": onnx.TensorProto.FLOAT,
                     "tensor(int8)": onnx.TensorProto.INT8, "tensor(int64)": onnx.TensorProto.INT64}


def _to_symbolic(dims: list[Dim] | None) -> list[int | UnknownDim] | None:
    if dims is None:
        return None
    return [d if isinstance(d, int) else UnknownDim(d) for d in dims]


def _from_symbolic(dim: Any) -> Dim:
    if isinstance(dim, UnknownDim):
        return dim.name
    return int(dim)
