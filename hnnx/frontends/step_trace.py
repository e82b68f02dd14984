"""A custom neuron's step as an ONNX graph, traced in milliseconds.

:func:`trace_step` runs ``step(x, state)`` once on ``torch.fx`` proxies: each primitive
(:mod:`hnnx.frontends.neuron`) is recorded as one node, and so is each element-wise torch
operation on the proxies. The recorded graph is then evaluated on the example tensors, and every
node becomes the ONNX node that computes the same IEEE operation on the same types — torch's type
promotion made explicit with ``Cast`` — and every primitive its ``hnnx`` node. A step that uses
anything else (other torch functions, control flow on values) raises :class:`NotTraceable`, and
the caller exports it with ``torch.onnx.export`` instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import torch
import torch.fx
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops

TRACING_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("hnnx_step_mode", default=None)
"""The numeric mode of the step being traced (proxies carry no dtype)."""


class NotTraceable(Exception):
    """The step uses an operation the tracer does not translate."""


def record_primitive(op: str, attrs: dict[str, Any], inputs: list[Any]) -> torch.fx.Proxy:
    """Record primitive ``op`` on proxy inputs as one node of the traced step."""
    proxy = next(x for x in inputs if isinstance(x, torch.fx.Proxy))
    return proxy.tracer.create_proxy("call_function", primitive, (op, dict(attrs), *inputs), {})


def primitive(op: str, attrs: dict[str, Any], *inputs: Any) -> torch.Tensor:
    """The eager value of a recorded primitive (the op's torch forward)."""
    from hnnx.frontends.torch import call_op

    decl = ops.declaration(op)
    compute = next(x.dtype for port, x in zip(decl.inputs, inputs)
                   if isinstance(x, torch.Tensor) and port.type != "tensor(int32)")
    given = [torch.tensor(x, dtype=compute) if isinstance(x, (int, float)) else x for x in inputs]
    return call_op(decl, given, attrs)[0]


def tracing_mode() -> str | None:
    """The mode of the step being traced, or None outside tracing."""
    return TRACING_MODE.get()


@contextlib.contextmanager
def _mode(mode: str) -> Iterator[None]:
    token = TRACING_MODE.set(mode)
    try:
        yield
    finally:
        TRACING_MODE.reset(token)


class _Tracer(torch.fx.proxy.GraphAppendingTracer):
    """Appends to a graph; tensors the step uses (parameters, buffers) become named constants."""

    def __init__(self, graph: torch.fx.Graph) -> None:
        super().__init__(graph)
        self.tensors: dict[str, torch.Tensor] = {}

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            name = f"constant_{len(self.tensors)}"
            self.tensors[name] = a.detach()
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)


def trace_step(step: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]], names: list[str],
               state: dict[str, torch.Tensor], x: torch.Tensor) -> onnx.GraphProto:
    """The ONNX graph of ``step``: inputs ``(states…, x)`` named ``names`` and ``x``, outputs
    ``(states'…, y)`` named ``<name>_next`` and ``y``. NotTraceable when it cannot be traced."""
    graph = torch.fx.Graph()
    tracer = _Tracer(graph)
    proxies = [torch.fx.Proxy(graph.placeholder(name), tracer) for name in [*names, "x"]]
    mode = "integer" if x.dtype == torch.int32 else "float"
    try:
        with _mode(mode):
            y, new_state = step(proxies[-1], dict(zip(names, proxies[:-1])))
    except NotTraceable:
        raise
    except Exception as exc:  # data-dependent control flow, unsupported calls on proxies, …
        raise NotTraceable(f"{type(exc).__name__}: {exc}") from None
    results = [new_state.get(name) for name in names] + [y]
    if not all(isinstance(r, torch.fx.Proxy) for r in results):
        raise NotTraceable("a state or the output does not depend on the step's inputs")
    graph.output(tuple(r.node for r in results))
    return _Converter(tracer.tensors, [*[state[n] for n in names], x], mode).convert(graph, names)


_BINARY = {operator.add: "Add", torch.add: "Add", "add": "Add", operator.sub: "Sub", torch.sub: "Sub", "sub": "Sub",
           operator.mul: "Mul", torch.mul: "Mul", "mul": "Mul", operator.truediv: "Div", torch.div: "Div",
           "div": "Div", torch.maximum: "Max", "maximum": "Max", torch.minimum: "Min", "minimum": "Min"}
_COMPARE = {operator.gt: "Greater", torch.gt: "Greater", "gt": "Greater", operator.lt: "Less", torch.lt: "Less",
            "lt": "Less", operator.ge: "GreaterOrEqual", torch.ge: "GreaterOrEqual", "ge": "GreaterOrEqual",
            operator.le: "LessOrEqual", torch.le: "LessOrEqual", "le": "LessOrEqual", operator.eq: "Equal",
            torch.eq: "Equal", "eq": "Equal"}
_UNARY = {operator.neg: "Neg", torch.neg: "Neg", "neg": "Neg", torch.relu: "Relu", torch.nn.functional.relu: "Relu",
          "relu": "Relu", torch.abs: "Abs", "abs": "Abs", operator.invert: "Not", torch.logical_not: "Not"}
_LOGIC = {operator.and_: "And", torch.logical_and: "And", operator.or_: "Or", torch.logical_or: "Or"}
_CASTS = {"float": torch.float32, "int": torch.int32, "bool": torch.bool}
_ELEM = {torch.float32: TensorProto.FLOAT, torch.int32: TensorProto.INT32, torch.bool: TensorProto.BOOL,
         torch.int64: TensorProto.INT64, torch.float64: TensorProto.DOUBLE}


class _Converter:
    """Evaluates a traced step on example tensors and writes the ONNX node of every FX node."""

    def __init__(self, tensors: dict[str, torch.Tensor], example: list[torch.Tensor], mode: str) -> None:
        self.tensors = tensors
        self.example = example
        self.mode = mode
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.values: dict[str, Any] = {}  # FX node name → eager value
        self.names: dict[str, str] = {}  # FX node name → ONNX tensor

    def convert(self, graph: torch.fx.Graph, names: list[str]) -> onnx.GraphProto:
        inputs, outputs = [], []
        placeholders = iter(self.example)
        for node in graph.nodes:
            if node.op == "placeholder":
                value = next(placeholders)
                self.values[node.name], self.names[node.name] = value, node.name
                inputs.append(helper.make_tensor_value_info(node.name, _elem(value.dtype), None))
            elif node.op == "get_attr":
                value = self.tensors[node.target]
                self.values[node.name] = value
                self.names[node.name] = node.name
                self.initializers.append(numpy_helper.from_array(value.cpu().numpy(), node.name))
            elif node.op in ("call_function", "call_method"):
                self._call(node)
            elif node.op == "output":
                for index, result in enumerate(node.args[0]):
                    name = f"{names[index]}_next" if index < len(names) else "y"
                    self.nodes.append(helper.make_node("Identity", [self.names[result.name]], [name]))
                    outputs.append(helper.make_tensor_value_info(name, _elem(self.values[result.name].dtype), None))
        return helper.make_graph(self.nodes, "step", inputs, outputs, initializer=self.initializers)

    # ------------------------------------------------------------------ nodes
    def _call(self, node: torch.fx.Node) -> None:
        target = node.target
        args = [self._eager(a) for a in node.args]
        kwargs = {k: self._eager(v) for k, v in node.kwargs.items()}
        if target is primitive:
            value = primitive(*args)
        elif node.op == "call_method":
            value = getattr(args[0], target)(*args[1:], **kwargs)
        else:
            value = target(*args, **kwargs)
        self.values[node.name] = value
        if not isinstance(value, torch.Tensor):
            raise NotTraceable(f"{node.format_node()} does not give a tensor")
        out = node.name
        self.names[node.name] = out
        key = target
        if target is primitive:
            self._primitive(node, out, value)
        elif key in _BINARY and not kwargs and len(args) == 2:
            self._emit(_BINARY[key], [self._input(a, r, value.dtype) for a, r in zip(node.args, args)], out)
        elif key in _COMPARE and not kwargs and len(args) == 2:
            common = torch.result_type(args[0], args[1])
            self._emit(_COMPARE[key], [self._input(a, r, common) for a, r in zip(node.args, args)], out)
        elif key in _UNARY and not kwargs and len(args) == 1:
            self._emit(_UNARY[key], [self._input(node.args[0], args[0], value.dtype)], out)
        elif key in _LOGIC and not kwargs and len(args) == 2:
            self._emit(_LOGIC[key], [self._input(a, r, torch.bool) for a, r in zip(node.args, args)], out)
        elif key in (torch.where, "where") and not kwargs and len(args) == 3:
            self._emit("Where", [self._input(node.args[0], args[0], torch.bool)]
                       + [self._input(a, r, value.dtype) for a, r in zip(node.args[1:], args[1:])], out)
        elif key in (torch.clamp, "clamp", "clip", torch.clip):
            self._clamp(node, args, kwargs, value, out)
        elif key in _CASTS and not args[1:] and not kwargs:
            self._emit("Cast", [self.names[node.args[0].name]], out, to=_elem(_CASTS[key]))
        elif key == "to" and len(args) == 2 and isinstance(args[1], torch.dtype) and not kwargs:
            self._emit("Cast", [self.names[node.args[0].name]], out, to=_elem(args[1]))
        else:
            raise NotTraceable(f"{node.format_node()}")

    def _primitive(self, node: torch.fx.Node, out: str, value: torch.Tensor) -> None:
        op, attrs, *inputs = node.args
        decl = ops.declaration(op)
        # The compute type: that of the first operand on a port typed by the op's mode (not a counter).
        compute = next(self.values[a.name].dtype for port, a in zip(decl.inputs, inputs)
                       if isinstance(a, torch.fx.Node) and port.type != "tensor(int32)")
        names = []
        for port, arg in zip(decl.inputs, inputs):
            if arg is None:
                names.append("")
                continue
            want = torch.int32 if port.type == "tensor(int32)" else compute
            value_in = self.values[arg.name] if isinstance(arg, torch.fx.Node) else arg
            names.append(self._input(arg, value_in, want))
        self.nodes.append(ops.make_node(op, names, [out], name=f"{op}_{len(self.nodes)}",
                                        **{k: v for k, v in attrs.items() if v is not None}))

    def _clamp(self, node: torch.fx.Node, args: list[Any], kwargs: dict[str, Any], value: torch.Tensor,
               out: str) -> None:
        low = kwargs.get("min", args[1] if len(args) > 1 else None)
        high = kwargs.get("max", args[2] if len(args) > 2 else None)
        source = {"min": node.kwargs.get("min"), "max": node.kwargs.get("max")}
        if len(node.args) > 1:
            source["min"] = node.args[1]
        if len(node.args) > 2:
            source["max"] = node.args[2]
        current = self._input(node.args[0], args[0], value.dtype)
        for bound, kind in ((low, "min"), (high, "max")):
            if bound is None:
                continue
            operand = self._input(source[kind], bound, value.dtype)
            name = f"{out}_{kind}" if (kind == "min" and high is not None) else out
            self._emit("Max" if kind == "min" else "Min", [current, operand], name)
            current = name
        if low is None and high is None:
            self._emit("Identity", [current], out)

    # ------------------------------------------------------------------ operands
    def _eager(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            return self.values[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._eager(a) for a in arg)
        return arg

    def _input(self, arg: Any, value: Any, dtype: torch.dtype) -> str:
        """The ONNX tensor of an operand in ``dtype``: a traced value (cast when torch promotes it)
        or a Python number (a constant of that type)."""
        if isinstance(arg, torch.fx.Node):
            name = self.names[arg.name]
            if self.values[arg.name].dtype == dtype:
                return name
            cast = f"{name}_as_{str(dtype).split('.')[-1]}"
            if cast not in {n.output[0] for n in self.nodes}:
                self._emit("Cast", [name], cast, to=_elem(dtype))
            return cast
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NotTraceable(f"operand {value!r}")
        name = f"const_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.array(value, _numpy(dtype)), name))
        return name

    def _emit(self, op: str, inputs: list[str], out: str, **attrs: Any) -> None:
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))


def _elem(dtype: torch.dtype) -> int:
    if dtype not in _ELEM:
        raise NotTraceable(f"tensor type {dtype}")
    return _ELEM[dtype]


def _numpy(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.int32: np.int32, torch.bool: np.bool_, torch.int64: np.int64,
            torch.float64: np.float64}[dtype]
