"""hnnx → NIR: a float hnnx model as a NIR graph, or an error naming what NIR cannot express.

    graph = export_nir("net.onnx", "net.nir", dt=1e-4)   # or: hnnx nir export net.onnx -o net.nir --dt 1e-4

The model is read as a spiking network over time-major tensors ``[T, N, ...]`` (folded to
``[T·N, ...]`` around convolutions, as the torch front end and the NIR importer write it):

==============================================  ====================================================
hnnx / ONNX                                      NIR
==============================================  ====================================================
graph input ``[T, N, *shape]`` / output          Input / Output (``shape``)
``MatMul`` by a constant (+ ``Add`` of a bias),   Linear (Affine)
``Gemm``
``Mul`` by a constant                            Scale
``Add`` of two tensors                           two edges into the consumer (NIR sums them)
``Conv`` (1-D, 2-D)                              Conv1d / Conv2d; a depthwise ``Conv`` with ones
                                                 and no bias is SumPool2d
``AveragePool``                                  AvgPool2d
``Reshape``/``Flatten`` merging sample dims      Flatten (reshapes that only fold time vanish)
``hnnx.Fire`` with a constant threshold          Threshold
``hnnx.LIF`` (hard reset)                        LIF: ``τ = dt/(1 − alpha)``, ``r = τ/dt``,
                                                 ``v_leak = beta/(1 − alpha)``; IF (``r = 1/dt``)
                                                 when ``alpha = 1`` and ``beta = 0``
``hnnx.CubaLIF`` (hard reset)                    CubaLIF (``τ_syn`` from ``alpha_syn``, ``w_in =
                                                 τ_syn/dt``)
``hnnx.LI`` / ``hnnx.Integrator``                LI / I
recurrent_weight ``W``                           a Linear ``Wᵀ`` from the neuron back to itself
==============================================  ====================================================

(the formulas for ``--scheme euler``; ``exp`` inverts ``exp(−dt/τ)``; the importer's
:class:`~hnnx.interop.nir_file.Discretisation` read backwards). What NIR cannot express stops the
export with a :class:`~hnnx.errors.NodeError` naming the node: hybrid units, refractory periods,
adaptive thresholds, lower saturation, subtractive or no reset, integer mode, initial-state inputs
and used state outputs, a first step that does not start from rest, any other op.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hnnx import ops
from hnnx.errors import ModelError, NodeError
from hnnx.passes.time import refuse_constant_currents
from hnnx.interop.nir_file import GAIN_DOC, Discretisation, NirGraph, NirNode, write_nir

NEURON_PORTS = {"LIF": ((1, 2, 3, 4), 5), "CubaLIF": ((1, 2, 3), 4), "LI": ((1,), None), "Integrator": ((1,), None)}
"""The hnnx neurons NIR has, by their initial-state input ports and recurrent-weight port."""

PROBE_STEPS, PROBE_SAMPLES = 7, 11
"""Concrete T and N that shape inference runs with to tell ``[T, N, ...]`` from ``[T·N, ...]``."""


@dataclass
class NirExport:
    """The exported graph and, per ONNX node, the NIR node it became."""

    graph: NirGraph
    mapping: list[tuple[str, str]] = field(default_factory=list)
    dt: float = 1e-4
    scheme: str = "euler"

    def markdown(self) -> str:
        lines = [f"NIR graph of {len(self.graph.nodes)} nodes and {len(self.graph.edges)} edges; time constants for "
                 f"{Discretisation(self.dt, self.scheme).describe()}.", "", "| hnnx / ONNX node | NIR node |",
                 "|---|---|"]
        lines += [f"| {onnx_node} | {nir_node} |" for onnx_node, nir_node in self.mapping]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        import json

        return json.dumps({"dt": self.dt, "scheme": self.scheme, "nodes": sorted(self.graph.nodes),
                           "edges": self.graph.edges, "mapping": self.mapping}, indent=2) + "\n"


def to_nir(model: onnx.ModelProto | str | os.PathLike, dt: float = 1e-4, scheme: str = "euler") -> NirExport:
    """The NIR graph of a float hnnx model (see the module docstring), NIR's time constants in
    the unit of ``dt``. Raises NodeError naming the first node NIR cannot express."""
    from hnnx.model import load

    if not isinstance(model, onnx.ModelProto):
        model = load(model)
    refuse_constant_currents(model, "NIR export")
    return _Exporter(model, Discretisation(float(dt), scheme)).run()


def export_nir(model: onnx.ModelProto | str | os.PathLike, path: str | os.PathLike, dt: float = 1e-4,
               scheme: str = "euler") -> NirExport:
    """:func:`to_nir`, written to ``path`` (atomically)."""
    exported = to_nir(model, dt, scheme)
    write_nir(exported.graph, path)
    return exported


@dataclass
class _Value:
    """A tensor of the model as NIR sees it: the NIR nodes whose outputs sum to it, and its
    per-sample shape."""

    sources: list[str]
    shape: tuple[int, ...]


class _Exporter:
    def __init__(self, model: onnx.ModelProto, disc: Discretisation) -> None:
        self.model = model
        self.disc = disc
        self.graph = model.graph
        self.consts = {init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and not node.domain:
                self.consts[node.output[0]] = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
        self.values: dict[str, _Value] = {}
        self.nodes: dict[str, NirNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.fused: set[str] = set()  # nodes already exported as part of another (Add of an Affine)
        self.meta: set[str] = set()  # tensors computed from shapes and constants only (e.g. reshape targets)
        self.gains: dict[str, tuple[np.ndarray, _Value]] = {}  # a Mul feeding one neuron: its r carries the factor
        self.export = NirExport(NirGraph(), dt=disc.dt, scheme=disc.scheme)
        for node in ops.hnnx_nodes(self.graph):  # what NIR cannot hold anywhere, named before anything else
            if node.op_type in ("A2S", "S2A"):
                getattr(self, f"on_{node.op_type}")(node)
            if node.op_type in NEURON_PORTS:
                self.neuron_params(node)
            self.view(node)
        self.layouts = self._layouts()

    def fail(self, node: onnx.NodeProto, message: str) -> NodeError:
        return NodeError(node.name or f"{node.op_type}({', '.join(node.output)})", message)

    # ------------------------------------------------------------------ shapes
    def _layouts(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Tensor → ``("time", sample shape)`` for ``[T, N, ...]`` or ``("folded", sample shape)`` for
        ``[T·N, ...]``, from shape inference at a concrete T and N."""
        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        steps = samples = None
        for value in probe.graph.input:
            if value.name in self.consts:
                continue
            dims = value.type.tensor_type.shape.dim
            if len(dims) < 2:
                raise ModelError(f"graph input {value.name!r}: NIR graphs take time-major inputs [T, N, ...]; "
                                 f"this one has rank {len(dims)}")
            for index, dim in enumerate(dims[2:], 2):
                if not dim.HasField("dim_value"):
                    raise ModelError(f"graph input {value.name!r}: dim {index} must be fixed for NIR (a sample shape)")
            steps = dims[0].dim_value if dims[0].HasField("dim_value") else steps or PROBE_STEPS
            samples = dims[1].dim_value if dims[1].HasField("dim_value") else samples or PROBE_SAMPLES
            dims[0].Clear()
            dims[0].dim_value = steps
            dims[1].Clear()
            dims[1].dim_value = samples
        if steps is None:
            raise ModelError("the model has no graph input")
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True).graph
        except Exception as exc:  # noqa: BLE001  (onnx raises several kinds)
            raise ModelError(f"shape inference failed: {str(exc).splitlines()[0]}") from None
        layouts = {}
        for value in [*inferred.input, *inferred.value_info, *inferred.output]:
            shape = value.type.tensor_type.shape
            dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
            if len(dims) >= 2 and dims[0] == steps and dims[1] == samples and None not in dims[2:]:
                layouts[value.name] = ("time", tuple(dims[2:]))
            elif dims and dims[0] == steps * samples and None not in dims[1:]:  # (T = 1 or N = 1: ambiguous)
                layouts[value.name] = ("folded", tuple(dims[1:]))
        return layouts

    def value(self, node: onnx.NodeProto, name: str) -> _Value:
        if name not in self.values:
            raise self.fail(node, f"input {name!r} is not a time-major spiking tensor NIR can carry "
                                  f"({'a constant' if name in self.consts else 'unknown layout'})")
        return self.values[name]

    def shape_of(self, node: onnx.NodeProto, name: str) -> tuple[int, ...]:
        if name not in self.layouts:
            raise self.fail(node, f"tensor {name!r}: shape inference gave no fixed sample shape")
        return self.layouts[name][1]

    def const(self, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.fail(node, f"{what} {name!r} must be a constant (an initializer) for NIR")
        return self.consts[name]

    # ------------------------------------------------------------------ assembly
    def add(self, name: str, node: NirNode, sources: Sequence[str]) -> str:
        unique = re.sub(r"[/]+", "_", name) or "node"
        candidate, index = unique, 1
        while candidate in self.nodes:
            index += 1
            candidate = f"{unique}_{index}"
        self.nodes[candidate] = node
        self.edges.extend((source, candidate) for source in sources)
        return candidate

    def run(self) -> NirExport:
        for value in self.graph.input:
            if value.name in self.consts:
                continue
            shape = self.layouts[value.name][1]
            name = self.add(value.name, NirNode("Input", {"shape": np.array(shape, np.int64)}), [])
            self.values[value.name] = _Value([name], shape)
        for node in self.graph.node:
            if node.name in self.fused or (node.op_type == "Constant" and not node.domain):
                continue
            if not node.domain and (node.op_type == "Shape" or all(
                    name in self.consts or name in self.meta for name in node.input if name)):
                self.meta.update(node.output)  # shape arithmetic or constant folding: no spikes flow here
                continue
            handler = getattr(self, f"on_{node.op_type}", None) if node.domain in ("", ops.DOMAIN) else None
            if handler is None:
                domain = f"{node.domain}." if node.domain else ""
                raise self.fail(node, f"{domain}{node.op_type} has no NIR equivalent")
            handler(node)
        for out in self.graph.output:
            value = self.values.get(out.name)
            if value is None:
                raise ModelError(f"graph output {out.name!r} is not a time-major tensor NIR can carry")
            self.add(out.name, NirNode("Output", {"shape": np.array(value.shape, np.int64)}), value.sources)
        self.export.graph = NirGraph(nodes=self.nodes, edges=self.edges,
                                     metadata={"hnnx.dt": self.disc.dt, "hnnx.scheme": self.disc.scheme})
        return self.export

    def produce(self, node: onnx.NodeProto, nir: NirNode, sources: Sequence[str], shape: tuple[int, ...],
                output: str | None = None) -> str:
        name = self.add(node.name or node.output[0], nir, sources)
        self.values[output or node.output[0]] = _Value([name], tuple(shape))
        self.export.mapping.append((node.name or node.output[0], f"{name} ({nir.type})"))
        return name

    def check_state_outputs_unused(self, node: onnx.NodeProto, first: int = 1) -> None:
        for index, name in enumerate(node.output[first:], first):
            if name and (name in self.outputs or self.consumers.get(name)):
                raise self.fail(node, f"state output {index} ({name!r}) is used: NIR has no state outputs")

    # ------------------------------------------------------------------ data movement
    def on_Identity(self, node: onnx.NodeProto) -> None:
        self.values[node.output[0]] = self.value(node, node.input[0])

    def on_Dropout(self, node: onnx.NodeProto) -> None:
        self.check_state_outputs_unused(node)
        self.on_Identity(node)

    def on_Reshape(self, node: onnx.NodeProto) -> None:
        match = self.neuron_groups(node)
        if match is not None:
            self.grouped_neuron(node, match)
            return
        x = self.value(node, node.input[0])
        out = self.shape_of(node, node.output[0])
        if out == x.shape:  # folding or unfolding time only
            self.values[node.output[0]] = x
            return
        for start in range(len(out)):  # out = x[:start] + [prod(x[start:end + 1])] + x[end + 1:]
            end = len(x.shape) - len(out) + start
            if (end >= start and x.shape[:start] == out[:start] and x.shape[end + 1:] == out[start + 1:]
                    and int(np.prod(x.shape[start:end + 1])) == out[start]):
                break
        else:
            raise self.fail(node, f"reshape of the sample shape {list(x.shape)} to {list(out)} is not a flatten of "
                                  f"adjacent dims (NIR Flatten)")
        nir = NirNode("Flatten", {"start_dim": np.int64(start), "end_dim": np.int64(end),
                                  "input_type": np.array(x.shape, np.int64)})
        self.produce(node, nir, x.sources, out)

    on_Flatten = on_Squeeze = on_Unsqueeze = on_Reshape

    # ------------------------------------------------------------------ weights
    def on_MatMul(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        weight = self.const(node, node.input[1], "weight").astype(np.float32)
        if weight.ndim != 2:
            raise self.fail(node, f"weight must be 2-D for NIR, got shape {list(weight.shape)}")
        self._dense(node, x, weight.T, None, node.output[0])

    def on_Gemm(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise self.fail(node, "Gemm with transA, alpha or beta: not a NIR Affine")
        x = self.value(node, node.input[0])
        b = self.const(node, node.input[1], "weight").astype(np.float32)
        weight = b if attrs.get("transB", 0) else b.T
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = np.broadcast_to(self.const(node, node.input[2], "bias"), (weight.shape[0],)).astype(np.float32)
        self._dense(node, x, weight, bias, node.output[0], fuse=False)

    def _dense(self, node: onnx.NodeProto, x: _Value, weight: np.ndarray, bias: np.ndarray | None, output: str,
               fuse: bool = True) -> None:
        """``y = x Wᵀ (+ b)`` with the NIR weight ``W (out, in)``; a following ``Add`` of a constant
        bias (the only consumer) makes it an Affine."""
        if not x.shape or x.shape[-1] != weight.shape[1]:
            raise self.fail(node, f"weight {list(weight.shape)} does not fit the sample shape {list(x.shape)}")
        consumers = self.consumers.get(output, [])
        if fuse and bias is None and len(consumers) == 1 and output not in self.outputs:
            add = consumers[0]
            other = [n for n in add.input if n != output]
            if add.op_type == "Add" and not add.domain and len(other) == 1 and other[0] in self.consts:
                constant = self.consts[other[0]].astype(np.float32)
                if constant.size in (1, weight.shape[0]) and constant.ndim <= 1:
                    bias = np.broadcast_to(constant.reshape(-1), (weight.shape[0],)).copy()
                    self.fused.add(add.name)
                    output = add.output[0]
        shape = (*x.shape[:-1], weight.shape[0])
        if bias is None:
            self.produce(node, NirNode("Linear", {"weight": weight.copy()}), x.sources, shape, output)
        else:
            self.produce(node, NirNode("Affine", {"weight": weight.copy(), "bias": bias}), x.sources, shape, output)

    def on_Add(self, node: onnx.NodeProto) -> None:
        a, b = node.input
        if a in self.consts or b in self.consts:
            x = self.value(node, b if a in self.consts else a)
            constant = self.consts[a if a in self.consts else b].astype(np.float32)
            if len(x.shape) != 1:
                raise self.fail(node, "adding a constant to a multi-dim sample has no NIR node")
            bias = np.broadcast_to(constant, x.shape).astype(np.float32).copy()
            self.produce(node, NirNode("Affine", {"weight": np.eye(x.shape[0], dtype=np.float32), "bias": bias}),
                         x.sources, x.shape)
            return
        first, second = self.value(node, a), self.value(node, b)
        if first.shape != second.shape:
            raise self.fail(node, f"adds shapes {list(first.shape)} and {list(second.shape)}: NIR sums equal shapes")
        self.values[node.output[0]] = _Value(first.sources + second.sources, first.shape)

    def on_Mul(self, node: onnx.NodeProto) -> None:
        a, b = node.input
        if a not in self.consts and b not in self.consts:
            raise self.fail(node, "a product of two tensors has no NIR node")
        x = self.value(node, b if a in self.consts else a)
        scale = self.consts[a if a in self.consts else b].astype(np.float32)
        try:
            scale = np.broadcast_to(scale, x.shape).copy()
        except ValueError:
            raise self.fail(node, f"scale of shape {list(scale.shape)} does not fit {list(x.shape)}") from None
        consumers = self.consumers.get(node.output[0], [])
        user = consumers[0] if len(consumers) == 1 and node.output[0] not in self.outputs else None
        takes_gain = user is not None and (
            (user.domain == ops.DOMAIN and user.op_type in NEURON_PORTS and len([i for i in user.input if i]) == 1)
            or (user.op_type == "Reshape" and self.neuron_groups(user) is not None))
        if node.doc_string == GAIN_DOC and takes_gain:
            self.gains[node.output[0]] = (scale.astype(np.float64), x)  # NIR's r (w_in) scales the input
            return
        self.produce(node, NirNode("Scale", {"scale": scale}), x.sources, x.shape)

    def on_Conv(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        weight = self.const(node, node.input[1], "weight").astype(np.float32)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dims = weight.ndim - 2
        if dims not in (1, 2):
            raise self.fail(node, f"{dims}-D convolution: NIR has Conv1d and Conv2d")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise self.fail(node, "auto_pad SAME_*: give explicit pads")
        pads = list(attrs.get("pads", [0] * 2 * dims))
        if pads[:dims] != pads[dims:]:
            raise self.fail(node, f"asymmetric pads {pads}: NIR pads both sides equally")
        stride = list(attrs.get("strides", [1] * dims))
        dilation = list(attrs.get("dilations", [1] * dims))
        groups = int(attrs.get("group", 1))
        bias = self.const(node, node.input[2], "bias").astype(np.float32) if len(node.input) > 2 and node.input[2] \
            else np.zeros(weight.shape[0], np.float32)
        out = self.shape_of(node, node.output[0])
        summing = (dims == 2 and groups == x.shape[0] == weight.shape[0] and weight.shape[1] == 1
                   and np.all(weight == 1) and not np.any(bias) and dilation == [1, 1])
        if summing:
            nir = NirNode("SumPool2d", {"kernel_size": np.array(weight.shape[2:], np.int64),
                                        "stride": np.array(stride, np.int64),
                                        "padding": np.array(pads[:dims], np.int64)})
        else:
            def ints(values: Sequence[int]) -> np.ndarray:  # Conv1d: scalars, as the nir package reads them
                return np.int64(values[0]) if dims == 1 else np.array(values, np.int64)

            nir = NirNode(f"Conv{dims}d", {"weight": weight, "bias": bias, "stride": ints(stride),
                                           "padding": ints(pads[:dims]), "dilation": ints(dilation),
                                           "groups": np.int64(groups), "input_shape": ints(x.shape[1:])})
        self.produce(node, nir, x.sources, out)

    def on_AveragePool(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs["kernel_shape"])
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        if len(kernel) != 2 or attrs.get("ceil_mode", 0) or pads[:2] != pads[2:] or \
                (any(pads) and not attrs.get("count_include_pad", 0)) or list(attrs.get("dilations", [1, 1])) != [1, 1]:
            raise self.fail(node, "only 2-D average pooling with symmetric pads counted in the mean (count_include_pad) "
                                  "and no ceil mode or dilation is NIR's AvgPool2d")
        nir = NirNode("AvgPool2d", {"kernel_size": np.array(kernel, np.int64),
                                    "stride": np.array(attrs.get("strides", kernel), np.int64),
                                    "padding": np.array(pads[:2], np.int64)})
        self.produce(node, nir, x.sources, self.shape_of(node, node.output[0]))

    # ------------------------------------------------------------------ hnnx ops
    def view(self, node: onnx.NodeProto) -> ops.NodeView:
        view = ops.declaration(node.op_type).view(node)
        if view.attrs.get("mode", "float") != "float":
            raise self.fail(node, f"integer-mode {node.op_type}: NIR holds float parameters; export the float model")
        return view

    def on_Fire(self, node: onnx.NodeProto) -> None:
        self.view(node)
        x = self.value(node, node.input[0])
        threshold = self.const(node, node.input[1], "threshold").astype(np.float32)
        self.produce(node, NirNode("Threshold", {"threshold": np.broadcast_to(threshold, x.shape).copy()}),
                     x.sources, x.shape)

    def spiking_checks(self, node: onnx.NodeProto, view: ops.NodeView) -> None:
        a = view.attrs
        if a["reset_mode"] != "hard":
            raise self.fail(node, f"reset_mode {a['reset_mode']!r}: NIR neurons reset to v_reset only")
        if a["v_lower"] is not None:
            raise self.fail(node, f"v_lower {a['v_lower']:g}: NIR has no lower saturation")
        if a.get("refractory", 0):
            raise self.fail(node, f"refractory period of {a['refractory']} steps: NIR has none")
        if a.get("theta_alpha", 1.0) != 1.0 or a.get("theta_beta", 0.0) or a.get("theta_increment", 0.0):
            raise self.fail(node, "adaptive threshold (theta_alpha/theta_beta/theta_increment): NIR has none")

    def leak(self, node: onnx.NodeProto, alpha: float, beta: float, v_init: float, what: str = "alpha"
             ) -> dict[str, np.ndarray]:
        """NIR ``tau``, the resistance that gives unit gain, and ``v_leak`` of a leaky state."""
        if alpha <= 0.0 and self.disc.scheme == "exp":
            raise self.fail(node, f"{what} = {alpha:g}: exponential Euler has no time constant for decay 0")
        if np.float32(v_init) != np.float32(beta):
            raise self.fail(node, f"v_init = {v_init:g} ≠ beta = {beta:g}: NIR neurons start at rest, so the first "
                                  f"step must be the step from v = 0 (v_init = beta)")
        tau = float(self.disc.tau(alpha))
        gain = float(self.disc.gain(np.float64(tau)))
        return {"tau": tau, "r": 1.0 / gain, "v_leak": float(beta) / gain}

    def neuron_params(self, node: onnx.NodeProto) -> tuple[str, dict[str, float]]:
        """The NIR type and (scalar) parameters of a float neuron node, or NodeError for what NIR
        cannot express."""
        view = self.view(node)
        self.check_state_outputs_unused(node)
        state_ports, weight_port = NEURON_PORTS[node.op_type]
        for port in state_ports:
            if view.has_input(port):
                raise self.fail(node, f"initial-state input {port} ({node.input[port]!r}): NIR neurons start at rest")
        a = view.attrs
        if node.op_type in ("LIF", "CubaLIF"):
            self.spiking_checks(node, view)
            spike = {"v_threshold": a["threshold"], "v_reset": a["v_reset"]}
        alpha, beta = a.get("alpha", 1.0), a.get("beta", 0.0)
        if node.op_type == "CubaLIF":
            if a["alpha_syn"] == 1.0:
                raise self.fail(node, "alpha_syn = 1 (a synaptic current that never decays): NIR's CubaLIF needs τ_syn")
            if alpha == 1.0:
                raise self.fail(node, "alpha = 1 (a membrane that never leaks): NIR's CubaLIF needs τ_mem")
            if a["i_init"] != 0.0:
                raise self.fail(node, f"i_init = {a['i_init']:g}: NIR neurons start at rest (0)")
            membrane = self.leak(node, alpha, beta, a["v_init"])
            synapse = self.leak(node, a["alpha_syn"], 0.0, 0.0, "alpha_syn")
            return "CubaLIF", {"tau_mem": membrane["tau"], "r": membrane["r"], "v_leak": membrane["v_leak"],
                               "tau_syn": synapse["tau"], "w_in": synapse["r"], **spike}
        if alpha == 1.0:
            if beta != 0.0:
                raise self.fail(node, f"beta = {beta:g} without leak (alpha = 1): NIR's IF and I have no constant drive")
            if a["v_init"] != 0.0:
                raise self.fail(node, f"v_init = {a['v_init']:g}: NIR neurons start at rest (0)")
            return ("IF", {"r": 1.0 / self.disc.dt, **spike}) if node.op_type == "LIF" else ("I", {"r": 1.0 / self.disc.dt})
        leaky = self.leak(node, alpha, beta, a["v_init"])
        return ("LIF", {**leaky, **spike}) if node.op_type == "LIF" else ("LI", leaky)

    def gained(self, tensor: str, node: onnx.NodeProto) -> tuple[_Value, np.ndarray | None]:
        """The value feeding a neuron and the factor of the importer's gain ``Mul`` before it (None if
        there is none)."""
        gain = self.gains.get(tensor)
        return (gain[1], gain[0]) if gain is not None else (self.value(node, tensor), None)

    def neuron(self, node: onnx.NodeProto, name: str, nir_type: str, arrays: dict[str, np.ndarray], x: _Value,
               gain: np.ndarray | None, weight: np.ndarray | None) -> None:
        if gain is not None:  # the input Mul's factor: NIR scales a neuron's input by r (CubaLIF: w_in)
            key = "w_in" if nir_type == "CubaLIF" else "r"
            arrays[key] = arrays[key] * gain
        nir_name = self.add(name, NirNode(nir_type, arrays), x.sources)
        self.values[node.output[0]] = _Value([nir_name], x.shape)
        self.export.mapping.append((name, f"{nir_name} ({nir_type})"))
        if weight is not None:
            rec = self.add(f"{nir_name}.w_rec", NirNode("Linear", {"weight": weight.T.copy()}), [nir_name])
            self.edges.append((rec, nir_name))
            self.export.mapping.append((f"{name} recurrent_weight", f"{rec} (Linear, looping back)"))

    def on_neuron(self, node: onnx.NodeProto) -> None:
        nir_type, params = self.neuron_params(node)
        x, gain = self.gained(node.input[0], node)
        weight_port = NEURON_PORTS[node.op_type][1]
        weight = None
        if weight_port is not None and len(node.input) > weight_port and node.input[weight_port]:
            weight = self.const(node, node.input[weight_port], "recurrent weight").astype(np.float32)
        arrays = {key: np.full(x.shape, value, np.float64) for key, value in params.items()}
        self.neuron(node, node.name or node.output[0], nir_type, arrays, x, gain, weight)

    on_LIF = on_CubaLIF = on_LI = on_Integrator = on_neuron

    def neuron_groups(self, flat: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[tuple[onnx.NodeProto, np.ndarray]],
                                                           onnx.NodeProto] | None:
        """The importer's form of one NIR neuron whose parameters differ between neurons, starting at
        ``flat`` (the sample flattened): ``Gather`` per group → one neuron node per group →
        ``Concat`` → ``Gather`` (each neuron back in place) → ``Reshape``. Returns the nodes, the
        (neuron node, flat indices) per group and the final ``Reshape``; None if it is not that."""

        def only(tensor: str, op_type: str) -> onnx.NodeProto | None:
            users = self.consumers.get(tensor, [])
            if len(users) == 1 and users[0].op_type == op_type and tensor not in self.outputs:
                return users[0]
            return None

        def axis2(node: onnx.NodeProto) -> bool:
            return any(a.name == "axis" and a.i == 2 for a in node.attribute)

        gathers = self.consumers.get(flat.output[0], [])
        if not gathers or not all(g.op_type == "Gather" and axis2(g) and g.input[1] in self.consts for g in gathers):
            return None
        groups = []
        for gather in gathers:
            users = self.consumers.get(gather.output[0], [])
            if len(users) != 1 or users[0].domain != ops.DOMAIN or users[0].op_type not in NEURON_PORTS:
                return None
            groups.append((users[0], self.consts[gather.input[1]].astype(np.int64)))
        concat = only(groups[0][0].output[0], "Concat")
        if concat is None or list(concat.input) != [n.output[0] for n, _ in groups]:
            return None
        placed = only(concat.output[0], "Gather")
        final = only(placed.output[0], "Reshape") if placed is not None else None
        if final is None or not axis2(placed) or placed.input[1] not in self.consts:
            return None
        order = np.concatenate([indices for _, indices in groups])
        if not np.array_equal(self.consts[placed.input[1]], np.argsort(order)):
            return None
        return [*gathers, *(n for n, _ in groups), concat, placed, final], groups, final

    def grouped_neuron(self, flat: onnx.NodeProto, match: tuple) -> None:
        nodes, groups, final = match
        x, gain = self.gained(flat.input[0], flat)
        arrays: dict[str, np.ndarray] = {}
        kinds = set()
        for neuron, indices in groups:
            if len([name for name in neuron.input if name]) > 1:
                raise self.fail(neuron, "a neuron group with more than the current as input")
            nir_type, params = self.neuron_params(neuron)
            kinds.add(nir_type)
            for key, value in params.items():
                arrays.setdefault(key, np.zeros(int(np.prod(x.shape)), np.float64))[indices] = value
        if len(kinds) > 1:
            raise self.fail(final, f"neuron groups of different NIR types {sorted(kinds)} cannot form one NIR node")
        self.fused.update(node.name for node in nodes)
        arrays = {key: value.reshape(x.shape) for key, value in arrays.items()}
        self.neuron(final, final.output[0], kinds.pop(), arrays, x, gain, None)

    def on_A2S(self, node: onnx.NodeProto) -> None:
        raise self.fail(node, "hnnx.A2S (a hybrid unit, ANN→SNN coding) has no NIR equivalent")

    def on_S2A(self, node: onnx.NodeProto) -> None:
        raise self.fail(node, "hnnx.S2A (a hybrid unit, SNN→ANN decoding) has no NIR equivalent")
