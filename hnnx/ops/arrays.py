"""Array namespaces that op equations are written against.

A recurrent op writes its per-step equations once as a function of an ``xp`` object
(``xp.add``, ``xp.greater``, ``xp.where``, ...). Three namespaces implement it:

* :class:`NumpyOps` — eager numpy, the reference kernel;
* :class:`OnnxOps` — records standard ONNX nodes, the FunctionProto body;
* ``TorchOps`` (:mod:`hnnx.ops.torch_ops`) — torch tensors with surrogate gradients.

Each operation is one IEEE operation (or an exact integer operation) in every namespace,
in the order the step function states, so float results agree bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from hnnx.ops.declare import DOMAIN, ONNX_OPSET, NodeView, OpDeclaration, slug

FLOAT = TensorProto.FLOAT
INT32 = TensorProto.INT32
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL
DOUBLE = TensorProto.DOUBLE

StepFunction = Callable[[Any, list[Any], list[Any]], "tuple[list[Any], list[Any]]"]
"""``step(xp, states, inputs_t) -> (new_states, outputs_t)`` — one time step of an op."""


class EagerOps:
    """Operations written once for eager arrays that index like numpy (numpy, torch); a
    subclass supplies ``stack`` and ``zeros``."""

    def sum_axis1(self, x: Any, width: int) -> Any:
        """Sum over axis 1 (of size ``width``), in index order, keeping the axis."""
        total = x[:, 0:1]
        for k in range(1, width):
            total = total + x[:, k:k + 1]
        return total

    def slice_axis1(self, x: Any, start: int, stop: int) -> Any:
        return x[:, start:stop]

    def column3(self, w: Any, k: int) -> Any:
        """Column ``k`` of a ``[R, K]`` matrix as ``[R, 1, 1]``."""
        return w[:, k:k + 1, None]

    def rows3(self, b: Any) -> Any:
        """A ``[R]`` vector as ``[R, 1, 1]``."""
        return b.reshape(-1, 1, 1)

    def time_loop(self, step: StepFunction, states: list[Any], xs: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """Run ``step`` over axis 0 of ``xs``; final states and outputs stacked on axis 0."""
        columns: list[list[Any]] = []
        for t in range(xs[0].shape[0]):
            states, y_t = step(self, states, [x[t] for x in xs])
            columns = columns or [[] for _ in y_t]
            for column, y in zip(columns, y_t):
                column.append(y)
        if not columns:  # T = 0: outputs shaped like the (empty) first input
            return states, [self.zeros(tuple(xs[0].shape))]
        return states, [self.stack(column) for column in columns]


class NumpyOps(EagerOps):
    """The numpy array namespace. ``params`` maps attribute names to their values."""

    def __init__(self, integer: bool, params: dict[str, Any]) -> None:
        self.integer = integer
        self.dtype = np.int32 if integer else np.float32
        self._params = params

    # constants
    def param(self, name: str) -> np.ndarray:
        return np.asarray(self._params[name], dtype=np.float32).astype(self.dtype)

    def param_int(self, name: str) -> np.ndarray:
        return np.int32(self._params[name])

    def param_q8(self, name: str) -> np.ndarray:
        return np.int64(np.round(np.float32(self._params[name]) * np.float32(256.0)))

    def literal(self, value: float | int) -> np.ndarray:
        return self.dtype(value)

    def literal_int(self, value: int) -> np.ndarray:
        return np.int32(value)

    # arithmetic (integer overflow is excluded by the callers' clamps)
    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.add(a, b)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.subtract(a, b)

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.multiply(a, b)

    def maximum(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(a, b)

    def minimum(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.minimum(a, b)

    def clamp(self, x: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return np.minimum(np.maximum(x, x.dtype.type(lo)), x.dtype.type(hi))

    def greater(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.greater(a, b)

    def equal(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.equal(a, b)

    def where(self, cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.where(cond, a, b)
        return out.astype(np.result_type(a, b), copy=False)

    def spike(self, v: np.ndarray, theta: np.ndarray, fired: np.ndarray) -> np.ndarray:
        return fired.astype(self.dtype)

    def mul_q8_floor(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``floor(x·a / 256)`` for int32 ``x`` and int64 ``a``, exact (int64 product)."""
        return ((x.astype(np.int64) * a) >> 8).astype(np.int32)

    def product_floor(self, a: np.ndarray, b: np.ndarray, shift: int, lo: int, hi: int) -> np.ndarray:
        """``clamp(floor(a·b / 2^shift), lo, hi)`` for int32 ``a``, ``b``, exact (int64 product), int32."""
        return np.clip((a.astype(np.int64) * b.astype(np.int64)) >> shift, lo, hi).astype(np.int32)

    def recurrent_input(self, spikes: np.ndarray, weight: np.ndarray, rows: int, lo: int, hi: int) -> np.ndarray:
        """The recurrent current of flat spikes ``[rows·F]`` through ``weight [F, F]``, flat:
        ``r[n, i] = Σ_j s[n, j]·W[j, i]``. Float: the float32 products summed in float64 in the
        order of j from +0, rounded once to float32; integer: summed in int64, saturated to
        ``[lo, hi]``, int32. Neither depends on how an executor splits the work. Shaped like ``spikes``."""
        shape, features = spikes.shape, weight.shape[0]
        spikes = spikes.reshape(rows, features)
        if self.integer:
            total = spikes.astype(np.int64) @ weight.astype(np.int64)
            return np.clip(total, lo, hi).astype(np.int32).reshape(shape)
        terms = (spikes[:, :, None] * weight[None, :, :]).astype(np.float64)
        return (np.cumsum(terms, axis=1)[:, -1, :] + 0.0).astype(np.float32).reshape(shape)


    # hybrid-unit operations (float)
    def div(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b)

    def less(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.less(a, b)

    def relu(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, x.dtype.type(0))  # any numeric type

    def sign(self, x: np.ndarray) -> np.ndarray:
        return np.sign(x)

    def round_clamp(self, x: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Round half to even, then clamp to ``[lo, hi]``."""
        return self.clamp(np.round(x), lo, hi)

    def bernoulli(self, p: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``1[u < p]`` in the compute type."""
        return np.less(u, p).astype(self.dtype)

    def min_axis1(self, x: np.ndarray) -> np.ndarray:
        # An empty axis has no minimum; its (empty) rows never use it.
        return x.min(axis=1, keepdims=True) if x.shape[1] else np.zeros((x.shape[0], 1), x.dtype)

    def max_axis1(self, x: np.ndarray) -> np.ndarray:
        return x.max(axis=1, keepdims=True) if x.shape[1] else np.zeros((x.shape[0], 1), x.dtype)

    def concat_axis1(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts, axis=1)

    def unsqueeze(self, x: np.ndarray, axis: int) -> np.ndarray:
        return np.expand_dims(x, axis)

    def expand_time(self, x1: np.ndarray, steps: int) -> np.ndarray:
        """``[1, ...]`` repeated to ``[steps, ...]``."""
        return np.repeat(x1, steps, axis=0)

    # uint32 arithmetic (wrapping) for the counter-based generator
    def u32(self, value: int) -> np.ndarray:
        return np.uint32(value)

    def u32_mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.multiply(a, b, dtype=np.uint32)

    def u32_add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.add(a, b, dtype=np.uint32)

    def u32_xor(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.bitwise_xor(a, b)

    def u32_shr(self, a: np.ndarray, bits: int) -> np.ndarray:
        return np.right_shift(a, np.uint32(bits))

    def u32_to_unit(self, r: np.ndarray) -> np.ndarray:
        """The top 24 bits of ``r`` as a float32 in [0, 1)."""
        return np.right_shift(r, np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)

    def u32_top24(self, r: np.ndarray) -> np.ndarray:
        """The top 24 bits of ``r`` as int64."""
        return np.right_shift(r, np.uint32(8)).astype(np.int64)

    # integer helpers (typed like their operands)
    def to_int64(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64)

    def int64(self, value: int) -> np.ndarray:
        return np.int64(value)

    def cast_like(self, x: np.ndarray, like: np.ndarray) -> np.ndarray:
        return x.astype(like.dtype)

    def clamp_like(self, x: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return self.clamp(x, lo, hi)

    # eager multi-step plumbing
    def initial_state(self, given: np.ndarray | None, fill: np.ndarray, neuron_shape: tuple[int, ...]) -> np.ndarray:
        """A flat ``[M]`` state: ``given`` broadcast to ``neuron_shape``, else ``fill``."""
        size = int(np.prod(neuron_shape, dtype=np.int64))
        if given is None:
            return np.full(size, fill, fill.dtype)
        given = np.asarray(given, fill.dtype)
        # Broadcast both ways, as ONNX Expand does; the element count must then match.
        return np.broadcast_to(given, np.broadcast_shapes(given.shape, neuron_shape)).reshape(size).copy()

    def stack(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(arrays)

    def broadcast(self, x: Any, shape: tuple[int, ...]) -> np.ndarray:
        """``x`` (an array or a scalar) broadcast to ``shape`` in the compute type, values unchanged."""
        return np.broadcast_to(np.asarray(x, self.dtype), shape)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, self.dtype)


class Scope:
    """A list of nodes being recorded (a function body or a subgraph)."""

    def __init__(self, body: "FunctionBody", prefix: str) -> None:
        self.body = body
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs: Any) -> Any:
        outputs = [self.body.fresh(f"{self.prefix}{op_type}") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, **attrs))
        return outputs[0] if n_out == 1 else tuple(outputs)


class FunctionBody:
    """Builds the FunctionProto of one node variant.

    Formal inputs/outputs are the declaration's port names, cut to what the node
    connects. Constants live in the top scope so subgraphs reference them from outside.
    """

    def __init__(self, decl: type[OpDeclaration], view: NodeView, opset: int = ONNX_OPSET) -> None:
        self.decl = decl
        self.view = view
        self.opset = opset
        self._count = 0
        self.top = Scope(self, "")
        self._constants: dict[tuple[Any, ...], str] = {}
        self.input_names = [p.name for p in decl.inputs[: len(view.inputs)]]
        self.output_names = [p.name for p in decl.outputs[: view.n_outputs]]
        self._outputs_set: set[int] = set()

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{slug(hint)}_{self._count}"

    def input(self, index: int) -> str:
        return self.input_names[index]

    def set_output(self, index: int, value: str) -> None:
        if index < self.view.n_outputs:
            self.top.nodes.append(helper.make_node("Identity", [value], [self.output_names[index]]))
            self._outputs_set.add(index)

    def literal(self, value: float | int, elem_type: int) -> str:
        key = ("lit", float(value), elem_type)
        if key not in self._constants:
            name = self.fresh(f"c_{str(value).replace('-', 'm').replace('.', 'p')}")
            tensor = helper.make_tensor(name, elem_type, [], [value])
            self.top.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
            self._constants[key] = name
        return self._constants[key]

    def literal_1d(self, values: Sequence[int]) -> str:
        key = ("ints", tuple(values))
        if key not in self._constants:
            name = self.fresh("c_ints")
            self.top.nodes.append(helper.make_node("Constant", [], [name], value_ints=list(values)))
            self._constants[key] = name
        return self._constants[key]

    def attr_value(self, attr: str, attr_type: str) -> str:
        """A Constant reading attribute ``attr`` of the calling node (``value_float``/``value_int``)."""
        key = ("attr", attr, attr_type)
        if key not in self._constants:
            name = self.fresh(f"attr_{attr}")
            node = helper.make_node("Constant", [], [name])
            ref = onnx.AttributeProto()
            ref.name = attr_type
            ref.ref_attr_name = attr
            ref.type = onnx.AttributeProto.FLOAT if attr_type == "value_float" else onnx.AttributeProto.INT
            node.attribute.append(ref)
            self.top.nodes.append(node)
            self._constants[key] = name
        return self._constants[key]

    def subgraph(
        self,
        name: str,
        inputs: list[tuple[str, int]],
        build: Callable[[Scope, list[str]], list[tuple[str, int]]],
    ) -> onnx.GraphProto:
        """Record a rank-1 subgraph (Scan body): ``build(scope, input_names)`` returns
        its outputs as ``(name, elem_type)``."""
        scope = Scope(self, f"{name}_")
        input_names = [self.fresh(f"{name}_{hint}") for hint, _ in inputs]
        outputs = build(scope, input_names)
        # Graph outputs must be produced inside the graph; Identity also keeps them distinct.
        out_infos = []
        for index, (value, elem_type) in enumerate(outputs):
            out_name = self.fresh(f"{name}_out{index}")
            scope.nodes.append(helper.make_node("Identity", [value], [out_name]))
            out_infos.append(helper.make_tensor_value_info(out_name, elem_type, [None]))
        in_infos = [helper.make_tensor_value_info(n, t, [None]) for n, (_, t) in zip(input_names, inputs)]
        return helper.make_graph(scope.nodes, name, in_infos, out_infos)

    def branch(self, name: str, build: Callable[[Scope], list[str]], types: Sequence[int],
               ranks: Sequence[int]) -> onnx.GraphProto:
        """Record an input-less subgraph (an ``If`` branch) whose outputs have the given
        element types and ranks."""
        scope = Scope(self, f"{name}_")
        values = build(scope)
        out_infos = []
        for index, (value, elem_type, rank) in enumerate(zip(values, types, ranks)):
            out_name = self.fresh(f"{name}_out{index}")
            scope.nodes.append(helper.make_node("Identity", [value], [out_name]))
            out_infos.append(helper.make_tensor_value_info(out_name, elem_type, [None] * rank))
        return helper.make_graph(scope.nodes, name, [], out_infos)

    def to_function(self, overload: str) -> onnx.FunctionProto:
        missing = set(range(self.view.n_outputs)) - self._outputs_set
        if missing:
            raise AssertionError(f"{self.decl.name} body left outputs {sorted(missing)} unset")
        defaults = [
            helper.make_attribute(a.name, a.default) for a in self.decl.attributes if a.default is not None
        ]
        no_default = [a.name for a in self.decl.attributes if a.default is None]
        function = helper.make_function(
            DOMAIN,
            self.decl.name,
            self.input_names,
            self.output_names,
            self.top.nodes,
            [helper.make_opsetid("", self.opset)],
            attributes=no_default,
            attribute_protos=defaults,
            doc_string=self.decl.summary(),
        )
        function.overload = overload
        return function


class OnnxOps:
    """The ONNX array namespace: every call records nodes into ``scope``."""

    def __init__(self, scope: Scope, integer: bool) -> None:
        self.scope = scope
        self.body = scope.body
        self.integer = integer
        self.elem = INT32 if integer else FLOAT

    def param(self, name: str) -> str:
        value = self.body.attr_value(name, "value_float")
        if self.integer:
            return self._top_cast(value, INT32, f"{name}_i32")
        return value

    def param_int(self, name: str) -> str:
        return self._top_cast(self.body.attr_value(name, "value_int"), INT32, f"{name}_i32")

    def param_q8(self, name: str) -> str:
        key = ("q8", name)
        consts = self.body._constants
        if key not in consts:
            top = self.body.top
            scaled = top.op("Mul", self.body.attr_value(name, "value_float"), self.body.literal(256.0, FLOAT))
            consts[key] = top.op("Cast", top.op("Round", scaled), to=INT64)
        return consts[key]

    def _top_cast(self, value: str, to: int, hint: str) -> str:
        key = ("cast", value, to)
        consts = self.body._constants
        if key not in consts:
            consts[key] = self.body.top.op("Cast", value, to=to)
        return consts[key]

    def literal(self, value: float | int) -> str:
        return self.body.literal(value, self.elem)

    def literal_int(self, value: int) -> str:
        return self.body.literal(value, INT32)

    def add(self, a: str, b: str) -> str:
        return self.scope.op("Add", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.scope.op("Sub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.scope.op("Mul", a, b)

    def maximum(self, a: str, b: str) -> str:
        return self.scope.op("Max", a, b)

    def minimum(self, a: str, b: str) -> str:
        return self.scope.op("Min", a, b)

    def clamp(self, x: str, lo: int, hi: int) -> str:
        # Operands of a clamp are always in the compute type (int32 in integer mode).
        return self.scope.op("Clip", x, self.literal(lo), self.literal(hi))

    def greater(self, a: str, b: str) -> str:
        return self.scope.op("Greater", a, b)

    def equal(self, a: str, b: str) -> str:
        return self.scope.op("Equal", a, b)

    def where(self, cond: str, a: str, b: str) -> str:
        return self.scope.op("Where", cond, a, b)

    def spike(self, v: str, theta: str, fired: str) -> str:
        return self.scope.op("Cast", fired, to=self.elem)

    def mul_q8_floor(self, x: str, a: str) -> str:
        wide = self.scope.op("Mul", self.scope.op("Cast", x, to=INT64), a)
        # floor division by 256: Mod with fmod=0 takes the divisor's sign, so this is exact.
        c256 = self.body.literal(256, INT64)
        floor_div = self.scope.op("Div", self.scope.op("Sub", wide, self.scope.op("Mod", wide, c256)), c256)
        return self.scope.op("Cast", floor_div, to=INT32)

    def product_floor(self, a: str, b: str, shift: int, lo: int, hi: int) -> str:
        wide = self.scope.op("Mul", self.scope.op("Cast", a, to=INT64), self.scope.op("Cast", b, to=INT64))
        if shift:
            divisor = self.body.literal(1 << shift, INT64)
            wide = self.scope.op("Div", self.scope.op("Sub", wide, self.scope.op("Mod", wide, divisor)), divisor)
        low, high = self.body.literal(lo, INT64), self.body.literal(hi, INT64)
        return self.scope.op("Cast", self.scope.op("Min", self.scope.op("Max", wide, low), high), to=INT32)

    def recurrent_input(self, spikes: str, weight: str, rows: str, lo: int, hi: int) -> str:
        """See :meth:`NumpyOps.recurrent_input`; ``rows`` is a 1-D int64 tensor ``[N]``. Float sums
        run through ``CumSum`` (sequential along the axis) in double; a reshape to ``[N, F]``
        fails unless the spikes hold ``N·F`` values."""
        top = self.body.top
        key = ("rec_shape", weight, rows)
        consts = self.body._constants
        if key not in consts:
            features = top.op("Slice", top.op("Shape", weight), self.body.literal_1d([0]), self.body.literal_1d([1]))
            consts[key] = top.op("Concat", rows, features, axis=0)
        spikes = self.scope.op("Reshape", spikes, consts[key])
        flat = self.body.literal_1d([-1])
        if self.integer:
            total = self.scope.op("MatMul", self.scope.op("Cast", spikes, to=INT64), self._top_cast(weight, INT64, "w"))
            low, high = self.body.literal(lo, INT64), self.body.literal(hi, INT64)
            total = self.scope.op("Min", self.scope.op("Max", total, low), high)
            return self.scope.op("Reshape", self.scope.op("Cast", total, to=INT32), flat)
        terms = self.scope.op("Mul", self.scope.op("Unsqueeze", spikes, self.body.literal_1d([2])), weight)
        running = self.scope.op("CumSum", self.scope.op("Cast", terms, to=DOUBLE), self.body.literal(1, INT64))
        last = self.scope.op("Slice", running, self.body.literal_1d([-1]), self.body.literal_1d([2**62]),
                             self.body.literal_1d([1]))
        total = self.scope.op("Add", last, self.body.literal(0.0, DOUBLE))
        return self.scope.op("Reshape", self.scope.op("Cast", total, to=FLOAT), flat)

    # hybrid-unit operations (float)
    def div(self, a: str, b: str) -> str:
        return self.scope.op("Div", a, b)

    def less(self, a: str, b: str) -> str:
        return self.scope.op("Less", a, b)

    def relu(self, x: str) -> str:
        return self.scope.op("Relu", x)

    def sign(self, x: str) -> str:
        return self.scope.op("Sign", x)

    def round_clamp(self, x: str, lo: int, hi: int) -> str:
        return self.clamp(self.scope.op("Round", x), lo, hi)

    def bernoulli(self, p: str, u: str) -> str:
        return self.scope.op("Cast", self.scope.op("Less", u, p), to=self.elem)

    def min_axis1(self, x: str) -> str:
        return self.scope.op("ReduceMin", x, self.body.literal_1d([1]), keepdims=1)

    def max_axis1(self, x: str) -> str:
        return self.scope.op("ReduceMax", x, self.body.literal_1d([1]), keepdims=1)

    def sum_axis1(self, x: str, width: int) -> str:
        total = self.slice_axis1(x, 0, 1)
        for k in range(1, width):
            total = self.add(total, self.slice_axis1(x, k, k + 1))
        return total

    def slice_axis1(self, x: str, start: int, stop: int) -> str:
        return self.scope.op("Slice", x, self.body.literal_1d([start]), self.body.literal_1d([stop]),
                             self.body.literal_1d([1]))

    def concat_axis1(self, parts: Sequence[str]) -> str:
        return parts[0] if len(parts) == 1 else self.scope.op("Concat", *parts, axis=1)

    def unsqueeze(self, x: str, axis: int) -> str:
        return self.scope.op("Unsqueeze", x, self.body.literal_1d([axis]))

    def column3(self, w: str, k: int) -> str:
        return self.scope.op("Unsqueeze", self.slice_axis1(w, k, k + 1), self.body.literal_1d([2]))

    def rows3(self, b: str) -> str:
        return self.scope.op("Unsqueeze", b, self.body.literal_1d([1, 2]))

    def u32(self, value: int) -> str:
        return self.body.literal(value, TensorProto.UINT32)

    def u32_mul(self, a: str, b: str) -> str:
        return self.scope.op("Mul", a, b)

    def u32_add(self, a: str, b: str) -> str:
        return self.scope.op("Add", a, b)

    def u32_xor(self, a: str, b: str) -> str:
        return self.scope.op("BitwiseXor", a, b)

    def u32_shr(self, a: str, bits: int) -> str:
        return self.scope.op("BitShift", a, self.u32(bits), direction="RIGHT")

    def u32_to_unit(self, r: str) -> str:
        top = self.scope.op("Cast", self.u32_shr(r, 8), to=FLOAT)
        return self.scope.op("Mul", top, self.body.literal(2.0**-24, FLOAT))

    def u32_top24(self, r: str) -> str:
        return self.scope.op("Cast", self.u32_shr(r, 8), to=INT64)

    def to_int64(self, x: str) -> str:
        return self.scope.op("Cast", x, to=INT64)

    def int64(self, value: int) -> str:
        return self.body.literal(value, INT64)

    def cast_like(self, x: str, like: str) -> str:
        return self.scope.op("CastLike", x, like)

    def clamp_like(self, x: str, lo: int, hi: int) -> str:
        """Clamp in the type of ``x`` (int8 or int32)."""
        low, high = (self.scope.op("CastLike", self.body.literal(v, INT32), x) for v in (lo, hi))
        # Max/Min, not Clip: onnxruntime's Relu+Clip fusion rejects int8 bounds.
        return self.scope.op("Min", self.scope.op("Max", x, low), high)


def onnx_time_scan(
    body: FunctionBody,
    step: StepFunction,
    integer: bool,
    states: list[tuple[str, int]],
    xs: list[tuple[str, int]],
    y_types: list[int],
) -> tuple[list[str], list[str]]:
    """Emit a ``Scan`` over axis 0 that runs ``step`` per time step.

    ``states``: initial values ``[M]`` with element types; ``xs``: time-major ``[T, M]``
    inputs. Returns the final states ``[M]`` and the stacked per-step outputs ``[T, M]``.
    """

    def build(scope: Scope, names: list[str]) -> list[tuple[str, int]]:
        xp = OnnxOps(scope, integer)
        new_states, ys = step(xp, names[: len(states)], names[len(states):])
        return [(s, t) for s, (_, t) in zip(new_states, states)] + list(zip(ys, y_types))

    graph = body.subgraph("step", [("state", t) for _, t in states] + [("x", t) for _, t in xs], build)
    n_out = len(states) + len(y_types)
    ranks = [1] * len(states) + [2] * len(y_types)
    types = [t for _, t in states] + y_types

    def run_scan(scope: Scope) -> list[str]:
        outputs = scope.op("Scan", *[s for s, _ in states], *[x for x, _ in xs],
                           n_out=n_out, body=graph, num_scan_inputs=len(xs))
        return list(outputs) if isinstance(outputs, tuple) else [outputs]

    def no_steps(scope: Scope) -> list[str]:
        # onnxruntime's Scan rejects zero iterations: keep the states, return empty outputs.
        return [scope.op("Identity", s) for s, _ in states] + [scope.op("Cast", xs[0][0], to=t) for t in y_types]

    steps = body.top.op("Gather", body.top.op("Shape", xs[0][0]), body.literal(0, INT64), axis=0)
    outputs = body.top.op(
        "If", body.top.op("Equal", steps, body.literal(0, INT64)), n_out=n_out,
        then_branch=body.branch("no_steps", no_steps, types, ranks),
        else_branch=body.branch("steps", run_scan, types, ranks),
    )
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    return outputs[: len(states)], outputs[len(states):]
