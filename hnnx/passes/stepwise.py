"""The stepwise (stateful) form of a graph: a sequence run a few steps per call, state carried.

A spiking graph computes all T steps of every layer at once. Its stepwise form runs K steps per
call and continues exactly where the last call stopped: every stateful hnnx node gets the input
and output ports its declaration names in ``state_spec`` (LIF membrane, threshold, refractory
counter; A2S position; S2A partial window and running counts) connected to graph inputs and
outputs, and the time-major tensors of the graph carry the K steps of the call.

:func:`stepwise_parts` splits a model into three graphs:

* the **prefix**: what does not depend on time (an ANN front before an A2S), run once;
* the **chunk** graph: the stateful form of the time-local part, run once per K steps;
* the **suffix**: what needs the whole sequence (after an S2A ``global`` readout, or an op that
  mixes time steps), run once on the chunks' outputs put together.

Which tensors are time-local is derived, not assumed: a tensor's *time layout* says that its
axis 0 holds the steps in order, ``rows`` rows per step (``[T, N, ...]``: 1 row; a folded
``[T·N, ...]``: N rows), and rules per op say when an op keeps that (element-wise ops with
operands that do not span time, Conv/Gemm/MatMul/pooling on rows, reshapes that keep steps
apart, ...). hnnx nodes answer from their declarations (port time layouts, ``state_spec``,
``output_shapes``). Whatever is not shown to be time-local goes to the suffix, which sees the
whole sequence, so every split computes exactly what the whole graph computes. A reshape whose
target holds the sequence length as a constant (exporters bake ``T``) gets the call's length.

:data:`stepwise` is the pass form (``@model_pass``): the model becomes its prefix and chunk
graphs in one self-contained stateful graph, the roles of its inputs and outputs recorded in
the metadata entry ``hnnx.stepwise`` (JSON).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops
from hnnx.errors import ModelError
from hnnx.passes.manager import model_pass
from hnnx.passes.time import repeated_currents

STEPS_INPUT = "hnnx.steps"
"""Graph input of a chunk graph without time-major inputs: the number of steps of the call (int64 scalar)."""
METADATA_KEY = "hnnx.stepwise"
"""The metadata entry in which :data:`stepwise` records the roles of the stateful graph's inputs and outputs."""

SEQUENCE = "sequence"
"""A chunk output holding the call's steps on axis 0: a run's value is the chunks' concatenation."""
LAST = "last"
"""A chunk output holding a value so far (a running readout, a final state): a run's value is the last call's."""
STATIC = "static"
"""A tensor that does not depend on time: computed once by the prefix."""


# ---------------------------------------------------------------------------- symbolic sizes
@dataclass(frozen=True)
class Size:
    """A positive integer ``coef · Π symbols`` (symbols: named dims such as the batch ``N``)."""

    coef: int
    symbols: tuple[str, ...] = ()

    @staticmethod
    def of(dim: Any) -> "Size | None":
        if isinstance(dim, Size):
            return dim
        if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0:
            return Size(int(dim))
        if isinstance(dim, str) and dim:
            return Size(1, (dim,))
        return None

    def __mul__(self, other: "Size") -> "Size":
        return Size(self.coef * other.coef, tuple(sorted(self.symbols + other.symbols)))

    def divide(self, other: "Size") -> "Size | None":
        """``self / other`` if it is a whole product, else None."""
        if other.coef == 0 or self.coef % other.coef:
            return None
        left = Counter(self.symbols)
        left.subtract(Counter(other.symbols))
        if any(count < 0 for count in left.values()):
            return None
        return Size(self.coef // other.coef, tuple(sorted(left.elements())))

    def value(self, symbols: dict[str, int]) -> int | None:
        """The integer for given symbol values (None if one is missing)."""
        total = self.coef
        for name in self.symbols:
            if name not in symbols:
                return None
            total *= symbols[name]
        return total


def product(sizes: Iterable[Size | None]) -> Size | None:
    total = Size(1)
    for size in sizes:
        if size is None:
            return None
        total = total * size
    return total


@dataclass(frozen=True)
class Entry:
    """One element of a shape value: ``size · T^time`` (``time`` 1: it counts the call's steps)."""

    size: Size | None
    time: int = 0


# ---------------------------------------------------------------------------- what a tensor is
@dataclass(frozen=True)
class TimeLayout:
    """A time-local tensor: axis 0 holds the steps in order, ``rows`` rows per step, each row of
    shape ``dims`` (None: unknown); ``clock`` names the sequence its steps count (A2S steps and
    time-major inputs share one; an S2A window output starts another)."""

    rows: Size
    dims: tuple[Size | None, ...]
    clock: str

    @property
    def per_step(self) -> Size | None:
        """Elements per step."""
        return product((self.rows, *self.dims))

    @property
    def rank(self) -> int:
        return 1 + len(self.dims)


BASE_CLOCK = "t"


@dataclass
class Fact:
    """What the analysis knows of a tensor: ``kind`` is :data:`STATIC`, ``"time"`` (with
    ``layout``), ``"value"`` (computed per call, not time-sliced: states, running readouts,
    shapes; ``shape`` holds a shape value's entries when known) or ``"suffix"``."""

    kind: str
    layout: TimeLayout | None = None
    shape: tuple[Entry, ...] | None = None

    @property
    def depends_on_steps(self) -> bool:
        """A per-call shape value that changes with the call's length (e.g. ``Shape(x)[0]``)."""
        return self.kind == "value" and self.shape is not None and any(e.time > 0 for e in self.shape)


# ---------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class CarriedState:
    """One state tensor of the chunk graph: fed at graph input ``input``, returned at graph
    output ``output``; ``initial`` is its value before step 0 (a scalar the node broadcasts), or
    ``initial_from`` names the tensor the original node took it from (a graph input or a prefix
    output)."""

    node: str
    name: str
    input: str
    output: str
    dtype: np.dtype
    initial: np.ndarray
    initial_from: str | None = None
    spec: ops.StateSpec | None = None
    shape: tuple[Size | None, ...] | None = None
    """Its shape over the graph inputs' named dims (None: rank unknown; a None dim: size unknown)."""

    def shape_for(self, symbols: dict[str, int]) -> tuple[int, ...] | None:
        """The shape for given values of the named dims (None if a dim is unknown)."""
        if self.shape is None:
            return None
        dims = [None if d is None else d.value(symbols) for d in self.shape]
        return None if None in dims else tuple(dims)  # type: ignore[return-value]


@dataclass
class StepwiseParts:
    """A model split for runs a few steps at a time (see the module docstring).

    ``prefix``/``chunk``/``suffix``: the three graphs (None when empty); ``states``: the chunk
    graph's carried tensors; ``time_inputs``: graph inputs ``[T, N, ...]`` fed K steps per call;
    ``steps_input``: :data:`STEPS_INPUT` when the chunk graph has no time-major input;
    ``steps``: the sequence length when the graph fixes it (A2S ``steps``, a fixed input dim);
    ``kinds``: every named tensor's role (:data:`STATIC`, :data:`SEQUENCE`, :data:`LAST` or
    ``"suffix"``); ``whole_sequence``: stateful nodes left to the suffix, with the reason;
    ``per_step``: elements per step of each time-major tensor of the chunk graph other than
    reshaped views, with its numpy type (for memory estimates).
    """

    prefix: onnx.ModelProto | None
    chunk: onnx.ModelProto | None
    suffix: onnx.ModelProto | None
    states: list[CarriedState]
    time_inputs: list[str]
    static_inputs: list[str]
    steps_input: str | None
    steps: int | None
    kinds: dict[str, str]
    outputs: list[str]
    whole_sequence: dict[str, str] = field(default_factory=dict)
    per_step: dict[str, tuple[Size, np.dtype]] = field(default_factory=dict)
    prefix_outputs: list[str] = field(default_factory=list)
    suffix_inputs: list[str] = field(default_factory=list)
    symbol_axes: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Where each named dim of the sizes is found: ``(graph input, axis)``."""

    def symbols(self, arrays: dict[str, np.ndarray]) -> dict[str, int]:
        """The named dims' values in given graph input arrays."""
        return {symbol: int(arrays[name].shape[axis]) for symbol, (name, axis) in self.symbol_axes.items()
                if name in arrays and axis < arrays[name].ndim}

    def chunk_outputs(self) -> list[str]:
        """The chunk graph's outputs other than states."""
        if self.chunk is None:
            return []
        carried = {s.output for s in self.states}
        return [o.name for o in self.chunk.graph.output if o.name not in carried]


# ---------------------------------------------------------------------------- the pass
@model_pass
def stepwise(model: onnx.ModelProto) -> bool:
    """Turn the model into its stateful form: the prefix and the chunk graph in one graph whose
    time-major inputs carry a call's steps, every stateful hnnx node's state a graph input and
    output pair; graph outputs that need the whole sequence are dropped (they are the suffix's).
    The roles of inputs and outputs go to the metadata entry ``hnnx.stepwise``."""
    parts = stepwise_parts(model)
    if parts.chunk is None:
        return False
    combined = _combined(parts, repeated_currents(model))
    model.graph.CopyFrom(combined.graph)
    del model.functions[:]
    model.functions.extend(combined.functions)
    del model.metadata_props[:]
    model.metadata_props.extend(combined.metadata_props)
    return True


def time_role_of_input(model: onnx.ModelProto, name: str) -> tuple[str, str] | None:
    """How graph input ``name``, read as time-major (``[T, N, ...]``, steps on axis 0), reaches the
    hnnx nodes: ``(TIME_MAJOR, node)`` when a node takes it (through time-local ops) at a
    time-major port, ``(NO_TIME, node)`` when a node takes it at a port for ``[N, ...]`` values,
    None when neither (first found; time-major ports first)."""
    splitter = _Splitter(model)
    splitter.analyse(read_as_time=name)
    for kind in (ops.TIME_MAJOR, ops.NO_TIME):
        if kind in splitter.ports_reached:
            return kind, splitter.ports_reached[kind]
    return None


def stepwise_parts(model: onnx.ModelProto) -> StepwiseParts:
    """Split ``model`` into prefix, chunk and suffix graphs (see the module docstring).

    ModelError/NodeError on an invalid model; a model without anything to run step by step
    gives ``chunk = None``.
    """
    return _Splitter(model).split()


# ---------------------------------------------------------------------------- analysis
_UNARY = {"Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Cast", "Identity", "Exp", "Log", "Sqrt", "Reciprocal", "Floor",
          "Ceil", "Round", "Sign", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus",
          "Softsign", "Erf", "Gelu", "Mish", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Sin", "Cos",
          "BitwiseNot", "Clip", "CastLike", "Dropout", "QuantizeLinear", "DequantizeLinear", "Shrink"}
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater",
                 "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift", "BitwiseAnd",
                 "BitwiseOr", "BitwiseXor", "PRelu"}
_ROWS = {"Conv", "ConvInteger", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
         "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN", "QLinearConv",
         "DepthToSpace", "SpaceToDepth"}
"""Ops that treat axis 0 as independent samples; their other inputs must not depend on time."""
_MATMUL = {"MatMul", "MatMulInteger", "Gemm"}
_SINGLE_AXIS = {"Softmax": -1, "LogSoftmax": -1, "Hardmax": -1, "ArgMax": 0, "ArgMin": 0, "CumSum": None,
                "LayerNormalization": -1}
_SHAPE_OPS = {"Gather", "Slice", "Concat", "Squeeze", "Unsqueeze", "Cast", "Identity", "Mul", "Div"}
_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
"""Ops whose output onnxruntime may keep in its input's buffer (not counted in memory estimates)."""
_INT_TYPES = {TensorProto.INT64, TensorProto.INT32}


class _Local(Exception):
    """Raised inside a rule: the node is not time-local (it goes to the suffix); the message says why."""


_SYMBOL_PRIMES = (100003, 100019, 100043, 100049, 100057, 100069, 100103, 100109, 100129, 100151)
"""Stand-ins for named dims during shape inference: a size is then a number whose factors among
these primes say which named dims it multiplies (ONNX inference keeps ``N·256`` only as a number)."""


def _infer(model: onnx.ModelProto) -> onnx.GraphProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception:  # best effort: unknown shapes only make fewer ops provably local
        return model.graph


class _Splitter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = _copy(repeated_currents(model))
        ops.attach_functions(self.model)  # validates every hnnx node
        inferred = _infer(self.model)
        graph = self.model.graph
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.types: dict[str, onnx.TypeProto] = {}
        for vi in [*inferred.value_info, *inferred.input, *inferred.output, *graph.value_info, *graph.input,
                   *graph.output]:
            if vi.type.tensor_type.elem_type and vi.name not in self.types:
                self.types[vi.name] = vi.type
        for init in graph.initializer:
            self.types.setdefault(init.name, helper.make_tensor_type_proto(init.data_type, list(init.dims)))
        self.constants: dict[str, np.ndarray] = {name: numpy_helper.to_array(init)
                                                 for name, init in self.initializers.items()}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_value(node)
                if value is not None:
                    self.constants[node.output[0]] = value
        self.symbols: dict[int, str] = {}
        self.sizes = self.symbolic_sizes()
        self.facts: dict[str, Fact] = {}
        self.reasons: dict[str, str] = {}  # suffix node label → why
        self.rewrites: dict[int, np.ndarray] = {}  # Reshape node index → its constant target (T to replace)
        self.steps: int | None = None
        self.base_inputs: list[str] = []
        self.ports_reached: dict[str, str] = {}  # time layout of an hnnx port a step sequence reached → node

    # -------------------------------------------------------------- helpers
    def symbolic_sizes(self) -> dict[str, tuple[Size | None, ...]]:
        """The dims of every tensor, each a :class:`Size` over the named dims of the graph inputs
        (from one shape inference with a distinct prime standing in for each named dim)."""
        probe = _copy(self.model)
        del probe.graph.value_info[:]
        for vi in probe.graph.output:
            vi.type.tensor_type.ClearField("shape")
        initializer_names = set(self.initializers)
        names: dict[str, int] = {}
        self.symbol_axes: dict[str, tuple[str, int]] = {}
        for vi in probe.graph.input:
            if vi.name in initializer_names or not vi.type.tensor_type.HasField("shape"):
                continue
            for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
                if dim.HasField("dim_value"):
                    continue
                symbol = dim.dim_param or f"{vi.name}[{axis}]"
                if symbol not in names:
                    if len(names) == len(_SYMBOL_PRIMES):
                        return {}
                    names[symbol] = _SYMBOL_PRIMES[len(names)]
                    self.symbol_axes[symbol] = (vi.name, axis)
                dim.Clear()
                dim.dim_value = names[symbol]
        self.symbols = {prime: symbol for symbol, prime in names.items()}
        inferred = _infer(probe)
        sizes = {}
        for vi in [*inferred.value_info, *inferred.input, *inferred.output]:
            tensor = vi.type.tensor_type
            if tensor.HasField("shape") and vi.name not in sizes:
                sizes[vi.name] = tuple(self.size_of(d.dim_value) if d.HasField("dim_value") else None
                                       for d in tensor.shape.dim)
        return sizes

    def size_of(self, value: int) -> Size | None:
        """A number from the prime-substituted inference as a product of named dims."""
        if value < 0:
            return None
        found: list[str] = []
        for prime, symbol in self.symbols.items():
            while value and value % prime == 0:
                value //= prime
                found.append(symbol)
        return Size(value, tuple(sorted(found)))

    def dims(self, name: str) -> tuple[Size | None, ...] | None:
        if name in self.constants:
            return tuple(Size(d) for d in self.constants[name].shape)
        return self.sizes.get(name)

    def rank(self, name: str) -> int | None:
        if name in self.facts and self.facts[name].layout is not None:
            return self.facts[name].layout.rank
        if name in self.constants:
            return self.constants[name].ndim
        dims = self.dims(name)
        return None if dims is None else len(dims)

    def elem_type(self, name: str) -> int:
        type_proto = self.types.get(name)
        return type_proto.tensor_type.elem_type if type_proto is not None else 0

    def fact(self, name: str) -> Fact:
        return self.facts.get(name, Fact(STATIC)) if name else Fact(STATIC)

    def static_shape_value(self, name: str) -> tuple[Entry, ...] | None:
        """The entries of a static int tensor (a constant, or a shape value computed statically)."""
        if name in self.constants:
            value = self.constants[name]
            if value.dtype.kind in "iu" and value.ndim <= 1:  # −1 (a reshape's "the rest") is time −1
                return tuple(Entry(Size(int(v))) if v >= 0 else Entry(None, -1) for v in value.reshape(-1))
            return None
        fact = self.facts.get(name)
        return fact.shape if fact is not None else None

    # -------------------------------------------------------------- the split
    def split(self) -> StepwiseParts:
        roles, inputs = self.analyse()
        return self.assemble(roles, inputs)

    def analyse(self, read_as_time: str | None = None) -> tuple[dict[int, str], list[onnx.ValueInfoProto]]:
        """Classify every node (prefix, chunk or suffix); ``read_as_time``: take that graph input
        (and no other) as time-major, whatever its dims are named."""
        graph = self.graph
        initializer_names = set(self.initializers)
        inputs = [vi for vi in graph.input if vi.name not in initializer_names]
        base_steps: set[int] = set()
        for vi in inputs:
            declared = _declared_dims(vi)
            if (declared and _time_major_dims(declared) and read_as_time is None) or vi.name == read_as_time:
                self.base_inputs.append(vi.name)
                dims = self.dims(vi.name) or tuple([None] * len(declared))
                self.facts[vi.name] = Fact("time", TimeLayout(Size(1), tuple(dims[1:]), BASE_CLOCK))
                if isinstance(declared[0], int) and declared[0] > 0:
                    base_steps.add(declared[0])
        for node in _first_coders(graph):
            base_steps.add(ops.A2S.view(node).attrs["steps"])
        if len(base_steps) > 1:
            raise ModelError(f"the graph's time-major inputs and A2S nodes disagree on the number of steps "
                             f"({', '.join(map(str, sorted(base_steps)))}): they cannot run step by step together")
        self.steps = next(iter(base_steps)) if base_steps else None

        roles: dict[int, str] = {}  # node index → "prefix" | "chunk" | "suffix"
        for index, node in enumerate(graph.node):
            roles[index] = self.classify(index, node)
        return roles, inputs

    def classify(self, index: int, node: onnx.NodeProto) -> str:
        facts = [self.fact(name) for name in node.input]
        label = node.name or node.output[0]
        if any(f.kind == "suffix" for f in facts):
            return self.to_suffix(node, label, None)
        hnnx_node = node.domain == ops.DOMAIN
        if hnnx_node:
            decl = ops.declaration(node.op_type)
            view = decl.view(node)
            generator = (any(p.time == ops.TIME_MAJOR for p in decl.outputs[: view.n_outputs])
                         and not any(p.time == ops.TIME_MAJOR for p in decl.inputs))
            if all(f.kind == STATIC for f in facts) and not generator:
                return self.to_static(node)
            try:
                self.hnnx_rule(node, decl, view, facts)
            except _Local as why:
                return self.to_suffix(node, label, str(why))
            return "chunk"
        if all(f.kind == STATIC for f in facts):
            return self.to_static(node)
        if any(f.kind == "value" and f.shape is None for f in facts):
            return self.to_suffix(node, label, "it reads a per-call value (a state or running readout)")
        try:
            self.standard_rule(index, node, facts)
        except _Local as why:
            return self.to_suffix(node, label, str(why))
        return "chunk"

    def to_static(self, node: onnx.NodeProto) -> str:
        for name in node.output:
            if name:
                self.facts[name] = Fact(STATIC, shape=self.static_shape_op(node, name))
        return "prefix"

    def to_suffix(self, node: onnx.NodeProto, label: str, reason: str | None) -> str:
        for name in node.output:
            if name:
                self.facts[name] = Fact("suffix")
        if reason is not None:
            self.reasons[label] = reason
        return "suffix"

    # -------------------------------------------------------------- rules: hnnx nodes
    def hnnx_rule(self, node: onnx.NodeProto, decl: type[ops.OpDeclaration], view: ops.NodeView,
                  facts: list[Fact]) -> None:
        layouts: list[TimeLayout] = []
        label = node.name or node.output[0]
        for port, name, fact in zip(decl.inputs, node.input, facts):
            if not name:
                continue
            if fact.kind == "time" and fact.layout.rows == Size(1) and port.time != ops.SAME_TIME:
                self.ports_reached.setdefault(port.time, f"{node.op_type} {label!r}")
            if port.time == ops.TIME_MAJOR:
                if fact.kind != "time":
                    raise _Local(f"its time-major input {name!r} is not a sequence of this graph's steps")
                if fact.layout.rows != Size(1):
                    raise _Local(f"its input {name!r} folds time with other axes")
                layouts.append(fact.layout)
            elif port.time == ops.NO_TIME and fact.kind != STATIC:
                raise _Local(f"its input {name!r} ({port.name}) changes during the sequence")
            elif port.time == ops.SAME_TIME and fact.kind == "value":
                raise _Local(f"it reads a per-call value {name!r}")
        same = [f.layout for f, p in zip(facts, decl.inputs) if p.time == ops.SAME_TIME and f.kind == "time"]
        if same:  # an element-wise hnnx op (Fire, Requantize): the standard broadcasting rule
            layout = self.broadcast_layout(node, facts)
            for name in node.output:
                if name:
                    self.facts[name] = Fact("time", layout)
            return
        clocks = {layout.clock for layout in layouts}
        if len(clocks) > 1:
            raise _Local("it combines sequences of different clocks")
        state_ports = {spec.input for spec in decl.state_spec(view)}
        for port_index, name in enumerate(node.input):
            if name and port_index in state_ports and not self.initial_value_ok(name):
                raise _Local(f"its initial state {name!r} is computed, not given")
        if not decl.state_spec(view):  # without declared state, only the whole sequence is known to be right
            raise _Local("it declares no state to carry between calls (state_spec)")
        clock = layouts[0].clock if layouts else BASE_CLOCK
        if decl is ops.S2A and view.attrs["decoding"] != "global":
            window, kernel, stride, _, per_window = ops.S2A.geometry(view.attrs)
            if not window == kernel == stride == per_window == 1:
                clock = f"{clock}/{node.name or node.output[0]}"
        # The declaration's output_shapes on markers standing for the known input dims.
        markers: dict[int, Size | None] = {}

        def marked(sizes: Sequence[Size | None]) -> list[Any]:
            dims = []
            for size in sizes:
                if size is not None and not size.symbols:
                    dims.append(size.coef)
                    continue
                marker = ops.declare.UnknownDim(f"hnnx_dim{len(markers)}")
                markers[id(marker)] = size
                dims.append(marker)
            return dims

        shapes: list[list[Any] | None] = []
        for name, fact in zip(node.input, facts):
            dims = None if not name else (None, *fact.layout.dims) if fact.kind == "time" else self.dims(name)
            shapes.append(None if dims is None else marked(dims))
        shapes += [None] * (len(decl.inputs) - len(shapes))
        out_shapes = decl.output_shapes(view, shapes)
        for name, kind, shape in zip(node.output, decl.output_time(view), out_shapes):
            if not name:
                continue
            if kind == ops.TIME_MAJOR:
                dims = tuple(markers.get(id(d)) if id(d) in markers else Size.of(d) for d in (shape or [None])[1:])
                self.facts[name] = Fact("time", TimeLayout(Size(1), dims, clock))
            else:
                self.facts[name] = Fact("value")

    def initial_value_ok(self, name: str) -> bool:
        """A state input the original graph connects must be known before the first step."""
        return self.fact(name).kind == STATIC

    # -------------------------------------------------------------- rules: standard ops
    def standard_rule(self, index: int, node: onnx.NodeProto, facts: list[Fact]) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise _Local(f"{node.domain}.{op} is not known to keep time steps apart")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise _Local(f"{op} runs a subgraph")
        times = [f for f in facts if f.kind == "time"]
        if not times:  # only per-call shape values (and static tensors)
            self.shape_rule(node, facts)
            return
        shape_inputs = {"Reshape": 1, "Expand": 1}
        if any(f.kind == "value" and i != shape_inputs.get(op) for i, f in enumerate(facts)):
            raise _Local(f"{op} mixes a sequence with a per-call value")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        first = facts[0]
        if op in _UNARY:
            if first.kind != "time" or any(f.kind == "time" for f in facts[1:]):
                raise _Local(f"{op} takes the sequence at an unexpected input")
            if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1:
                scale_rank = self.rank(node.input[1])
                if scale_rank not in (0, None) and _axis(attrs.get("axis", 1), first.layout.rank) == 0:
                    raise _Local(f"{op} quantizes per slice of the time axis")
            self.set_time(node.output[0], first.layout)
            return
        if op in _BROADCASTING:
            self.set_time(node.output[0], self.broadcast_layout(node, facts))
            return
        if op == "Reshape":
            self.set_time(node.output[0], self.reshape_layout(index, node, facts, attrs))
            return
        if first.kind != "time" or any(f.kind == "time" for f in facts[1:]):
            if op == "Concat" and all(f.kind == "time" for f in facts):
                self.set_time(node.output[0], self.concat_layout(node, facts, attrs))
                return
            raise _Local(f"{op} takes the sequence at an unexpected input")
        layout = first.layout
        if op in _ROWS:
            self.set_time(node.output[0], TimeLayout(layout.rows, self.out_dims(node.output[0], layout), layout.clock))
            return
        if op in _MATMUL:
            self.set_time(node.output[0], self.matmul_layout(node, layout, attrs))
            return
        if op in _SINGLE_AXIS:
            default = _SINGLE_AXIS[op]
            if op == "CumSum":
                axis = self.static_ints(node.input[1])
                axis = axis[0] if axis else None
            else:
                axis = attrs.get("axis", default)
            if axis is None or _axis(axis, layout.rank) == 0:
                raise _Local(f"{op} runs along the time axis")
            keep = op != "ArgMax" and op != "ArgMin" or attrs.get("keepdims", 1)
            dims = layout.dims if keep else self.out_dims(node.output[0], layout)
            self.set_time(node.output[0], TimeLayout(layout.rows, dims, layout.clock))
            return
        if op == "Transpose":
            perm = list(attrs.get("perm", reversed(range(layout.rank))))
            if perm[0] != 0:
                raise _Local("Transpose moves the time axis")
            self.set_time(node.output[0], TimeLayout(layout.rows, tuple(layout.dims[p - 1] for p in perm[1:]),
                                                     layout.clock))
            return
        if op == "Flatten":
            axis = _axis(attrs.get("axis", 1), layout.rank)
            if axis == 0:
                raise _Local("Flatten at axis 0 merges the steps")
            rows = product((layout.rows, *layout.dims[: axis - 1]))
            if rows is None:
                raise _Local("Flatten of rows of unknown size")
            self.set_time(node.output[0], TimeLayout(rows, (product(layout.dims[axis - 1:]),), layout.clock))
            return
        if op.startswith("Reduce"):
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = self.static_ints(node.input[1])
            if not axes:
                raise _Local(f"{op} reduces over every axis, time included")
            axes = sorted(_axis(a, layout.rank) for a in axes)
            if 0 in axes:
                raise _Local(f"{op} reduces over the time axis")
            if attrs.get("keepdims", 1):
                dims = tuple(Size(1) if i + 1 in axes else d for i, d in enumerate(layout.dims))
            else:
                dims = tuple(d for i, d in enumerate(layout.dims) if i + 1 not in axes)
            self.set_time(node.output[0], TimeLayout(layout.rows, dims, layout.clock))
            return
        if op in ("Squeeze", "Unsqueeze"):
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = self.static_ints(node.input[1])
            if not axes:
                raise _Local(f"{op} without axes")
            out_rank = layout.rank + (len(axes) if op == "Unsqueeze" else -len(axes))
            axes = sorted(_axis(a, out_rank if op == "Unsqueeze" else layout.rank) for a in axes)
            if 0 in axes:
                raise _Local(f"{op} at the time axis")
            dims = list(layout.dims)
            if op == "Squeeze":
                dims = [d for i, d in enumerate(dims) if i + 1 not in axes]
            else:
                for a in axes:
                    dims.insert(a - 1, Size(1))
            self.set_time(node.output[0], TimeLayout(layout.rows, tuple(dims), layout.clock))
            return
        if op == "Shape":
            start = _axis(attrs.get("start", 0), layout.rank)
            end = attrs.get("end", layout.rank)
            end = _axis(end, layout.rank) if end < layout.rank else layout.rank
            entries = (Entry(layout.rows, 1), *(Entry(d) for d in layout.dims))
            self.facts[node.output[0]] = Fact("value", shape=entries[start:end])
            return
        if op in ("Split", "Gather", "Pad", "Slice", "Tile"):
            self.set_outputs_local(node, layout, attrs)
            return
        raise _Local(f"{op} is not known to keep time steps apart")

    def set_time(self, name: str, layout: TimeLayout) -> None:
        self.facts[name] = Fact("time", layout)

    def out_dims(self, name: str, layout: TimeLayout) -> tuple[Size | None, ...]:
        dims = self.dims(name)
        if dims is None or len(dims) < 1:
            return tuple([None] * len(layout.dims))
        return dims[1:]

    def static_ints(self, name: str) -> list[int] | None:
        value = self.constants.get(name)
        return None if value is None else [int(v) for v in value.reshape(-1)]

    def broadcast_layout(self, node: onnx.NodeProto, facts: list[Fact]) -> TimeLayout:
        times = [f.layout for f in facts if f.kind == "time"]
        rank = max((self.rank(n) or 0) for n in node.input if n)
        base = times[0]
        for layout in times:
            if layout.rank != rank:
                raise _Local(f"{node.op_type} broadcasts a sequence across time")
            if layout.rows != base.rows or layout.clock != base.clock:
                raise _Local(f"{node.op_type} combines sequences of different layouts")
        dims = list(base.dims)
        for name, fact in zip(node.input, facts):
            if not name or fact.kind == "time":
                continue
            shape = self.dims(name)
            if shape is None:
                raise _Local(f"{node.op_type} operand {name!r} of unknown shape")
            if len(shape) == rank and shape[0] != Size(1):
                raise _Local(f"{node.op_type} operand {name!r} spans the time axis")
            aligned = [None] * (rank - len(shape)) + list(shape)
            for axis in range(1, rank):
                if dims[axis - 1] == Size(1) and aligned[axis] not in (None, Size(1)):
                    dims[axis - 1] = aligned[axis]
        for other in times[1:]:
            dims = [o if d == Size(1) else d for d, o in zip(dims, other.dims)]
        return TimeLayout(base.rows, tuple(dims), base.clock)

    def concat_layout(self, node: onnx.NodeProto, facts: list[Fact], attrs: dict[str, Any]) -> TimeLayout:
        layouts = [f.layout for f in facts]
        base = layouts[0]
        axis = _axis(attrs["axis"], base.rank)
        if axis == 0 or any(l.rows != base.rows or l.clock != base.clock or l.rank != base.rank for l in layouts):
            raise _Local("Concat joins along time or joins different layouts")
        sizes = [l.dims[axis - 1] for l in layouts]
        joined = Size(sum(s.coef for s in sizes)) if all(s is not None and not s.symbols for s in sizes) else None
        dims = list(base.dims)
        dims[axis - 1] = joined
        return TimeLayout(base.rows, tuple(dims), base.clock)

    def matmul_layout(self, node: onnx.NodeProto, layout: TimeLayout, attrs: dict[str, Any]) -> TimeLayout:
        b = self.dims(node.input[1])
        if b is None:
            raise _Local(f"{node.op_type} weight of unknown shape")
        if node.op_type == "Gemm":
            if attrs.get("transA", 0) or layout.rank != 2:
                raise _Local("Gemm with transA mixes the rows")
            return TimeLayout(layout.rows, (b[0] if attrs.get("transB", 0) else b[1],), layout.clock)
        if layout.rank < 2 or len(b) > layout.rank or (len(b) == layout.rank and len(b) > 2 and b[0] != Size(1)):
            raise _Local(f"{node.op_type} broadcasts its weight across time")
        return TimeLayout(layout.rows, (*layout.dims[:-1], b[-1]), layout.clock)

    def set_outputs_local(self, node: onnx.NodeProto, layout: TimeLayout, attrs: dict[str, Any]) -> None:
        op = node.op_type
        rank = layout.rank
        if op == "Split":
            if _axis(attrs.get("axis", 0), rank) == 0:
                raise _Local("Split along time")
        elif op == "Gather":
            if _axis(attrs.get("axis", 0), rank) == 0:
                raise _Local("Gather along time")
        elif op == "Slice":
            axes = self.static_ints(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            if axes is None:
                starts = self.static_ints(node.input[1])
                axes = list(range(len(starts))) if starts is not None else [0]
            if 0 in [_axis(a, rank) for a in axes]:
                raise _Local("Slice along time")
        elif op == "Pad":
            pads = self.static_ints(node.input[1]) if len(node.input) > 1 else None
            axes = self.static_ints(node.input[3]) if len(node.input) > 3 and node.input[3] else list(range(rank))
            if pads is None or axes is None:
                raise _Local("Pad with computed pads")
            count = len(axes)
            for position, axis in enumerate(axes):
                if _axis(axis, rank) == 0 and (pads[position] or pads[position + count]):
                    raise _Local("Pad along time")
        elif op == "Tile":
            repeats = self.static_ints(node.input[1])
            if repeats is None or repeats[0] != 1:
                raise _Local("Tile along time")
        for name in node.output:
            if name:
                self.set_time(name, TimeLayout(layout.rows, self.out_dims(name, layout), layout.clock))

    def reshape_layout(self, index: int, node: onnx.NodeProto, facts: list[Fact],
                       attrs: dict[str, Any]) -> TimeLayout:
        data, target = facts[0], node.input[1]
        if data.kind != "time":
            raise _Local("Reshape to a computed shape that counts the call's steps")
        layout = data.layout
        entries = self.static_shape_value(target) if facts[1].kind == STATIC else facts[1].shape
        if entries is None:
            raise _Local("Reshape to a computed shape")
        entries = list(entries)
        constant = target in self.constants
        if not attrs.get("allowzero", 0):  # 0 copies the input dim
            full = [Entry(layout.rows, 1), *(Entry(d) for d in layout.dims)]
            entries = [full[i] if e.size == Size(0) and e.time == 0 and i < len(full) else e
                       for i, e in enumerate(entries)]
        per_step = layout.per_step
        if per_step is None:
            raise _Local("Reshape of steps of unknown size")
        head, rest = entries[0], entries[1:]
        if any(e.time > 0 for e in rest):
            raise _Local("Reshape moves the time axis")
        if head.time == -1:  # -1 at axis 0: the rows absorb what the other dims leave
            sizes = [e.size for e in rest]
            if None in sizes or any(e.time == -1 for e in rest):
                raise _Local("Reshape of unknown row size")
            rows = per_step.divide(product(sizes))
            if rows is None:
                raise _Local("Reshape rows that straddle steps")
            return TimeLayout(rows, tuple(sizes), layout.clock)
        baked = False
        if head.time == 1:
            rows = head.size
        elif constant and self.steps is not None and head.size == Size(self.steps) and layout.clock == BASE_CLOCK:
            rows, baked = Size(1), True
        else:
            raise _Local("Reshape to a fixed number of rows")
        if rows is None:
            raise _Local("Reshape of unknown row size")
        per_row = per_step.divide(rows)
        if per_row is None:
            raise _Local("Reshape rows that straddle steps")
        unknown = [i for i, e in enumerate(rest) if e.time == -1]
        known = product(e.size for e in rest if e.time != -1)
        if known is None or len(unknown) > 1:
            raise _Local("Reshape of unknown row size")
        dims = [e.size for e in rest]
        if unknown:
            fill = per_row.divide(known)
            if fill is None:
                raise _Local("Reshape rows that straddle steps")
            dims[unknown[0]] = fill
        elif known != per_row:
            raise _Local("Reshape rows that straddle steps")
        if baked:  # the exporter wrote the sequence length: the call's length replaces it
            self.rewrites[index] = self.constants[target]
        return TimeLayout(rows, tuple(dims), layout.clock)

    # -------------------------------------------------------------- shape values
    def shape_rule(self, node: onnx.NodeProto, facts: list[Fact]) -> None:
        """An op on per-call shape values and static tensors: a shape value again (or the suffix)."""
        if node.op_type not in _SHAPE_OPS:
            raise _Local(f"{node.op_type} of a per-call shape value")
        name = node.output[0]
        entries = self.static_shape_op(node, name, facts)
        if entries is None:
            raise _Local(f"{node.op_type} of a per-call shape value that cannot be followed")
        self.facts[name] = Fact("value", shape=entries)

    def static_shape_op(self, node: onnx.NodeProto, name: str, facts: list[Fact] | None = None
                        ) -> tuple[Entry, ...] | None:
        """Follow a shape value through Gather/Slice/Concat/... (None when it cannot be followed)."""
        if node.domain not in ("", "ai.onnx") or name != node.output[0]:
            return None
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        values = [self.static_shape_value(n) if n and (facts is None or facts[i].kind == STATIC)
                  else (facts[i].shape if facts is not None and n else None)
                  for i, n in enumerate(node.input)]
        if op == "Constant":
            return self.static_shape_value(name)
        if op == "Shape":
            dims = self.dims(node.input[0])
            if dims is None:
                return None
            rank = len(dims)
            start = _axis(attrs.get("start", 0), rank)
            end = attrs.get("end", rank)
            end = _axis(end, rank) if end < rank else rank
            return tuple(Entry(d) for d in dims[start:end])
        if not values or values[0] is None:
            return None
        first = values[0]
        if op in ("Identity", "Cast", "Squeeze", "Unsqueeze"):
            return first
        if op == "Concat":
            if any(v is None for v in values):
                return None
            return tuple(e for v in values for e in v)
        if op == "Gather":
            indices = self.static_ints(node.input[1])
            if indices is None:
                return None
            try:
                return tuple(first[i] for i in indices)
            except IndexError:
                return None
        if op == "Slice":
            bounds = [self.static_ints(n) if n else None for n in node.input[1:5]]
            if bounds[0] is None or bounds[1] is None:
                return None
            step = bounds[3][0] if len(bounds) > 3 and bounds[3] else 1
            return tuple(first[slice(bounds[0][0], bounds[1][0], step)])
        if op in ("Mul", "Div") and len(values) == 2 and values[1] is not None:
            a, b = first, values[1]
            if len(b) == 1 and len(a) > 1:
                b = b * len(a)
            if len(a) == 1 and len(b) > 1:
                a = a * len(b)
            if len(a) != len(b):
                return None
            out = []
            for x, y in zip(a, b):
                if x.size is None or y.size is None or x.time < 0 or y.time < 0:
                    return None
                if op == "Mul":
                    out.append(Entry(x.size * y.size, x.time + y.time))
                else:
                    if y.time:
                        return None
                    out.append(Entry(x.size.divide(y.size), x.time))
            return tuple(out)
        return None

    # -------------------------------------------------------------- assembly
    def assemble(self, roles: dict[int, str], inputs: list[onnx.ValueInfoProto]) -> StepwiseParts:
        graph = self.graph
        nodes = list(graph.node)
        producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
        chunk = {i for i, role in roles.items() if role == "chunk"}
        suffix = {i for i, role in roles.items() if role == "suffix"}
        prefix = {i for i, role in roles.items() if role == "prefix"}
        graph_outputs = [o.name for o in graph.output]
        # The suffix takes sequences and last values from the chunk graph; a shape value that
        # counts the call's steps is recomputed in the suffix from the sequence it measures.
        pending = [n for i in suffix for n in nodes[i].input] + graph_outputs
        while pending:
            name = pending.pop()
            if name and self.fact(name).depends_on_steps and producer.get(name) not in suffix:
                suffix.add(producer[name])
                pending += list(nodes[producer[name]].input)
        taken = ({name for node in nodes for name in [*node.input, *node.output]}
                 | {vi.name for vi in [*graph.input, *graph.output]} | set(self.initializers))
        states: list[CarriedState] = []
        chunk_nodes = [self.stateful_copy(nodes[i], states, taken) if nodes[i].domain == ops.DOMAIN
                       else _clone(nodes[i]) for i in sorted(chunk)]

        def made_by(group: set[int]) -> set[str]:
            return {n for i in group for n in nodes[i].output if n}

        made_in_prefix, made_in_chunk, made_in_suffix = made_by(prefix), made_by(chunk), made_by(suffix)
        made_in_chunk |= {s.output for s in states}
        chunk_reads = {n for node in chunk_nodes for n in _all_inputs(node)}
        suffix_reads = {n for i in suffix for n in _all_inputs(nodes[i])}
        static_inputs = [vi.name for vi in inputs if vi.name not in self.base_inputs]
        suffix_inputs = sorted(n for n in suffix_reads - made_in_suffix if n not in self.initializers)
        initial_sources = {s.initial_from for s in states if s.initial_from}
        prefix_outputs = sorted(n for n in made_in_prefix
                                if n in chunk_reads or n in suffix_inputs or n in graph_outputs
                                or n in initial_sources)

        whole_sequence = {}
        for i in sorted(suffix):
            if nodes[i].domain == ops.DOMAIN and ops.declaration(nodes[i].op_type).state_spec(
                    ops.declaration(nodes[i].op_type).view(nodes[i])):
                label = nodes[i].name or nodes[i].output[0]
                whole_sequence[label] = self.reasons.get(label, "it reads what the whole sequence gives")

        chunk_model = None
        steps_input = None
        per_step: dict[str, tuple[Size, np.dtype]] = {}
        if chunk_nodes:
            time_inputs = [n for n in self.base_inputs if n in chunk_reads]
            count, count_nodes = self.count_tensors(chunk_nodes, time_inputs, taken)
            steps_input = STEPS_INPUT if count is not None and not time_inputs else None
            chunk_nodes = count_nodes + self.rewritten(chunk_nodes, sorted(chunk), count, taken)
            outputs = [s.output for s in states]
            for name in [*suffix_inputs, *graph_outputs]:
                if name in made_in_chunk and name not in outputs:
                    outputs.append(name)
            graph_inputs = (time_inputs + [n for n in static_inputs if n in chunk_reads]
                            + [n for n in prefix_outputs if n in chunk_reads]
                            + [s.input for s in states] + ([STEPS_INPUT] if steps_input else []))
            chunk_model = self.sub_model("chunk", chunk_nodes, graph_inputs, outputs, states)
            views = {n for i in chunk for n in nodes[i].output if nodes[i].op_type in _VIEWS}
            for name in (made_in_chunk | set(time_inputs)) - views:
                layout = self.fact(name).layout
                if layout is not None and layout.per_step is not None and self.elem_type(name):
                    per_step[name] = (layout.per_step, np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type(name))))

        prefix_model = None
        if prefix_outputs:
            prefix_model = self.sub_model("prefix", [_clone(nodes[i]) for i in sorted(prefix)],
                                          [n for n in static_inputs if n in {r for i in prefix for r in
                                                                             _all_inputs(nodes[i])}],
                                          prefix_outputs, [])
        suffix_model = None
        if suffix:
            suffix_model = self.sub_model("suffix", [_clone(nodes[i]) for i in sorted(suffix)], suffix_inputs,
                                          [n for n in graph_outputs if n in made_in_suffix], [])
        kinds = {name: {STATIC: STATIC, "time": SEQUENCE, "value": LAST, "suffix": "suffix"}[fact.kind]
                 for name, fact in self.facts.items()}
        kinds.update({name: "suffix" for name in made_in_suffix})
        kinds.update({name: STATIC for name in static_inputs})
        kinds.update({s.output: LAST for s in states})
        return StepwiseParts(
            prefix=prefix_model, chunk=chunk_model, suffix=suffix_model, states=states,
            time_inputs=list(self.base_inputs), static_inputs=static_inputs, steps_input=steps_input,
            steps=self.steps, kinds=kinds, outputs=graph_outputs, whole_sequence=whole_sequence,
            per_step=per_step, prefix_outputs=prefix_outputs, suffix_inputs=suffix_inputs,
            symbol_axes=dict(self.symbol_axes))

    def stateful_copy(self, node: onnx.NodeProto, states: list[CarriedState], taken: set[str]) -> onnx.NodeProto:
        """The node with each declared state's input and output port wired to graph tensors."""
        decl = ops.declaration(node.op_type)
        specs = decl.state_spec(decl.view(node))
        copy = _clone(node)
        if not specs:
            return copy
        label = node.name or node.output[0]
        width_in = max([len(copy.input)] + [spec.input + 1 for spec in specs])
        width_out = max([len(copy.output)] + [spec.output + 1 for spec in specs])
        copy.input.extend([""] * (width_in - len(copy.input)))
        copy.output.extend([""] * (width_out - len(copy.output)))
        for spec in specs:
            given = copy.input[spec.input]
            in_name = _fresh(f"{label}.{decl.inputs[spec.input].name}", taken)
            out_name = copy.output[spec.output] or _fresh(f"{label}.{decl.outputs[spec.output].name}", taken)
            copy.input[spec.input] = in_name
            copy.output[spec.output] = out_name
            self.facts[out_name] = Fact("value")
            initial, source = spec.initial(), None
            if given in self.constants:  # the graph's own initial value, a constant
                initial = self.constants[given].astype(spec.dtype)
            elif given:
                source = given
            layout = self.fact(node.input[0]).layout
            shape = (spec.shape(layout.dims) if layout is not None else None) if spec.per_step else spec.leading
            states.append(CarriedState(label, spec.name, in_name, out_name, spec.dtype, initial, source, spec,
                                       None if shape is None else tuple(map(Size.of, shape))))
        return copy

    def count_tensors(self, chunk_nodes: list[onnx.NodeProto], time_inputs: list[str], taken: set[str]
                      ) -> tuple[str | None, list[onnx.NodeProto]]:
        """The call's number of steps as a ``[1]`` int64 tensor of the chunk graph — from a time-major
        input, else from the :data:`STEPS_INPUT` graph input — with the nodes computing it, when
        A2S nodes or reshape rewrites need it; every A2S gets it (as a scalar) at its ``count``."""
        a2s = [n for n in chunk_nodes if n.domain == ops.DOMAIN and n.op_type == "A2S"]
        if not a2s and not self.rewrites:
            return None, []
        vector, scalar = _fresh("hnnx.steps.1d", taken), _fresh("hnnx.steps.scalar", taken)
        if time_inputs:
            nodes = [helper.make_node("Shape", [time_inputs[0]], [vector], start=0, end=1),
                     helper.make_node("Squeeze", [vector], [scalar])]
        else:
            shape = _fresh("hnnx.steps.shape", taken)
            nodes = [helper.make_node("Constant", [], [shape], value_ints=[1]),
                     helper.make_node("Reshape", [STEPS_INPUT, shape], [vector]),
                     helper.make_node("Identity", [STEPS_INPUT], [scalar])]
        for node in a2s:
            node.input.extend([""] * (5 - len(node.input)))
            node.input[4] = scalar
        return vector, nodes

    def rewritten(self, chunk_nodes: list[onnx.NodeProto], indices: list[int], count: str | None,
                  taken: set[str]) -> list[onnx.NodeProto]:
        """The chunk nodes with every reshape to a constant target holding the sequence length
        reading the call's length instead."""
        out: list[onnx.NodeProto] = []
        for node, index in zip(chunk_nodes, indices):
            if index in self.rewrites and count is not None:
                label = node.name or node.output[0]
                tail, target = _fresh(f"{label}.shape_tail", taken), _fresh(f"{label}.shape", taken)
                out += [helper.make_node("Constant", [], [tail], value=numpy_helper.from_array(
                            self.rewrites[index].reshape(-1)[1:].astype(np.int64))),
                        helper.make_node("Concat", [count, tail], [target], axis=0)]
                node.input[1] = target
            out.append(node)
        return out

    def sub_model(self, name: str, nodes: list[onnx.NodeProto], inputs: Sequence[str], outputs: Sequence[str],
                  states: list[CarriedState]) -> onnx.ModelProto:
        """A model of ``nodes`` with the given graph inputs/outputs and the initializers they read."""
        state_inputs = {s.input: s for s in states}
        state_outputs = {s.output: s for s in states}
        read = {n for node in nodes for n in _all_inputs(node)}
        produced = {n for node in nodes for n in node.output}
        graph_inputs = []
        def state_info(tensor: str, state: CarriedState) -> onnx.ValueInfoProto:
            dims = None if state.shape is None or None in state.shape else [_dim(d) for d in state.shape]
            return helper.make_tensor_value_info(tensor, helper.np_dtype_to_tensor_dtype(state.dtype), dims)

        graph_inputs = []
        for tensor in inputs:
            if tensor == STEPS_INPUT:
                graph_inputs.append(helper.make_tensor_value_info(tensor, TensorProto.INT64, []))
            elif tensor in state_inputs:
                graph_inputs.append(state_info(tensor, state_inputs[tensor]))
            else:
                graph_inputs.append(self.value_info(tensor))
        graph_outputs = [state_info(tensor, state_outputs[tensor]) if tensor in state_outputs
                         else self.value_info(tensor) for tensor in outputs]
        initializers = [init for n, init in self.initializers.items() if n in read and n not in produced]
        graph = helper.make_graph(nodes, f"{self.graph.name or 'graph'}_{name}", graph_inputs, graph_outputs,
                                  initializer=initializers)
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                  ir_version=self.model.ir_version)
        model.functions.extend(f for f in self.model.functions if f.domain != ops.DOMAIN)
        model.metadata_props.extend(self.model.metadata_props)
        return ops.attach_functions(model)

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        """A graph input/output declaration: the tensor's type, its shape from its time layout
        (dim 0: ``T``, any number of steps, or unnamed for rows of several per step) or as inferred."""
        type_proto = self.types.get(name)
        elem = type_proto.tensor_type.elem_type if type_proto is not None else TensorProto.FLOAT
        layout = self.fact(name).layout
        if layout is not None:
            return helper.make_tensor_value_info(name, elem, ["T" if layout.rows == Size(1) else None,
                                                              *map(_dim, layout.dims)])
        info = onnx.ValueInfoProto()
        info.name = name
        if type_proto is None:
            info.type.tensor_type.elem_type = elem
        else:
            info.type.CopyFrom(type_proto)
        return info


# ---------------------------------------------------------------------------- the combined form
def _combined(parts: StepwiseParts, source: onnx.ModelProto) -> onnx.ModelProto:
    """Prefix and chunk graphs as one stateful model (the suffix's outputs dropped)."""
    chunk = parts.chunk
    assert chunk is not None
    nodes: list[onnx.NodeProto] = []
    initializers: dict[str, onnx.TensorProto] = {}
    inputs: dict[str, onnx.ValueInfoProto] = {}
    if parts.prefix is not None:
        nodes += list(parts.prefix.graph.node)
        initializers.update({i.name: i for i in parts.prefix.graph.initializer})
        inputs.update({vi.name: vi for vi in parts.prefix.graph.input})
    nodes += list(chunk.graph.node)
    initializers.update({i.name: i for i in chunk.graph.initializer})
    prefix_made = set(parts.prefix_outputs)
    for vi in chunk.graph.input:
        if vi.name not in prefix_made:
            inputs.setdefault(vi.name, vi)
    outputs = list(chunk.graph.output)
    if parts.prefix is not None:
        outputs += [vi for vi in parts.prefix.graph.output if vi.name in parts.outputs]
    running = parts.suffix is not None and all(parts.kinds.get(n) != SEQUENCE for n in parts.suffix_inputs)
    if running:  # a suffix of running values (a readout after a global S2A) runs on every call's values
        nodes += list(parts.suffix.graph.node)
        initializers.update({i.name: i for i in parts.suffix.graph.initializer})
        outputs += list(parts.suffix.graph.output)
    graph = helper.make_graph(nodes, source.graph.name or "graph", list(inputs.values()), outputs,
                              initializer=list(initializers.values()))
    model = helper.make_model(graph, opset_imports=list(chunk.opset_import), ir_version=chunk.ir_version)
    model.functions.extend(f for f in source.functions if f.domain != ops.DOMAIN)
    model.metadata_props.extend(p for p in source.metadata_props if p.key != METADATA_KEY)
    kept = {o.name for o in outputs}
    roles = {
        "time_inputs": parts.time_inputs,
        "steps_input": parts.steps_input,
        "steps": parts.steps,
        "states": [{"node": s.node, "state": s.name, "input": s.input, "output": s.output,
                    "dtype": s.dtype.name, "initial": s.initial.item(), "initial_from": s.initial_from}
                   for s in parts.states],
        "outputs": {name: LAST if parts.kinds.get(name) == "suffix" else parts.kinds.get(name, STATIC)
                    for name in kept},
        "dropped_outputs": [name for name in parts.outputs if name not in kept],
        "whole_sequence": parts.whole_sequence,
    }
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(roles)))
    return ops.attach_functions(model)


# ---------------------------------------------------------------------------- small helpers
def _first_coders(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The A2S nodes that no temporal hnnx node feeds (directly or through other ops): those that
    code the graph's first sequence (a later A2S, behind a readout, starts a sequence of its own,
    which runs in the suffix)."""
    producer = {name: node for node in graph.node for name in node.output if name}
    first = []
    for node in graph.node:
        if node.domain != ops.DOMAIN or node.op_type != "A2S":
            continue
        pending, seen, behind_hnnx = [n for n in node.input if n], set(), False
        while pending and not behind_hnnx:
            source = producer.get(pending.pop())
            if source is None or id(source) in seen:
                continue
            seen.add(id(source))
            if source.domain == ops.DOMAIN:  # a temporal op (not Requantize, Fire) starts the first sequence
                decl = ops.declaration(source.op_type)
                behind_hnnx = any(p.time == ops.TIME_MAJOR for p in (*decl.inputs, *decl.outputs))
            pending += [n for n in source.input if n]
        if not behind_hnnx:
            first.append(node)
    return first


def _dim(size: Size | None) -> int | str | None:
    """An ONNX dim for a size: its value, the name of a single named dim, else unnamed."""
    if size is None:
        return None
    if not size.symbols:
        return size.coef
    return size.symbols[0] if size.coef == 1 and len(size.symbols) == 1 else None


def _declared_dims(info: onnx.ValueInfoProto) -> tuple[Any, ...] | None:
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)


def _time_major_dims(dims: Sequence[Any]) -> bool:
    from hnnx.runtime.data import is_time_major  # the one rule for what a time-major input is

    return is_time_major(tuple(dims))


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), np.int64)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), np.float32)
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
    return None


def _clone(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _fresh(name: str, taken: set[str]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    taken.add(candidate)
    return candidate


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads, including those its subgraphs read from the outer scope."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                    list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {
                i.name for i in sub.initializer}
            names += [n for sub_node in sub.node for n in _all_inputs(sub_node) if n not in inner]
    return names


__all__ = ["CarriedState", "LAST", "METADATA_KEY", "SEQUENCE", "STATIC", "STEPS_INPUT", "Size", "StepwiseParts",
           "stepwise", "stepwise_parts", "time_role_of_input"]
