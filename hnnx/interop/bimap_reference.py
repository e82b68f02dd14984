"""A numpy interpreter of BiMap's ONNX dialect, one time step at a time, and the host loop.

It stands in for BiMap's functional simulator when checking an export. Standard ops keep their
ONNX meaning, computed on whole numbers in float64 (exact below 2^53, far above the 32-bit
values of the dialect). Each neuron span ``Clip → snn::LIFRecorder → Add(·, v) → … →
snn::RectangleFire`` runs as BiMap fuses it: one LIF whose dynamics come from the recorder's
attributes alone (the TianjicX P08 soma, hard reset), the membrane ``v`` kept between steps::

    v1 = clamp28(u + v)              u: the input of the span's first Clip, which BiMap drops
    s  = v1 > v_th                   strict, on the pre-leak value
    v2 = v_reset where s, else v1
    v3 = clamp28(floor(round(256·v_leaky_alpha)·v2 / 256) + v_leaky_beta)   if v_leaky_adpt_en
         clamp28(v2 + v_leaky_beta)                                          otherwise

These equations are written here from BiMap's definition of its LIF task, not taken from
``hnnx.ops.LIF``: the interpreter is an independent judge of whether an export keeps the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from hnnx import ops
from hnnx.errors import DataError, ModelError

if TYPE_CHECKING:
    from hnnx.interop.bimap import BimapReport

STATE_LOW, STATE_HIGH = -(1 << 27), (1 << 27) - 1
"""The 28-bit membrane range of BiMap's LIF task."""


@dataclass
class _Neuron:
    """One fused neuron span."""

    current: str  # the tensor entering the span (before its input Clip)
    membrane: str  # the graph input that carries v
    spikes: str  # the RectangleFire output
    nodes: frozenset[str]  # names of the span's nodes
    v_th: float
    alpha_q8: int  # round(256·v_leaky_alpha), as BiMap writes VLEAKY_ALPHA
    beta: float
    v_reset: float
    adaptive_leak: bool
    v_init: float


class BimapInterpreter:
    """Runs a model in BiMap's dialect one time step at a time (batch 1), keeping the membranes.

    ``step(feeds)`` takes the per-step graph inputs (whole numbers, ``[1, ...]``; membrane
    inputs are fed by the interpreter itself) and returns every graph output and the ``probes``
    asked for, as int64 arrays; ``reset()`` sets every membrane back to its ``v_init``.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.constants = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in graph.initializer}
        self.nodes = list(graph.node)
        self.outputs = [vi.name for vi in graph.output]
        self.neurons = _neuron_spans(graph)
        membranes = {neuron.membrane for neuron in self.neurons}
        self.input_shapes = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
                             for vi in graph.input if vi.name not in self.constants}
        self.inputs = [name for name in self.input_shapes if name not in membranes]
        self.membranes: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Every membrane at its ``v_init`` (the start of a window)."""
        self.membranes = {n.membrane: np.full(self.input_shapes[n.membrane], n.v_init) for n in self.neurons}

    def step(self, feeds: Mapping[str, np.ndarray], probes: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """One execution of the graph: graph outputs and ``probes`` (int64), membranes updated."""
        values = dict(self.constants)
        for name in self.inputs:
            if name not in feeds:
                raise DataError(f"input {name!r} is missing")
            array = np.asarray(feeds[name], np.float64)
            if array.shape != self.input_shapes[name]:
                raise DataError(f"input {name!r}: shape {list(array.shape)}, expected {list(self.input_shapes[name])}")
            if not np.array_equal(array, np.floor(array)):
                raise DataError(f"input {name!r} holds fractions; the dialect carries whole numbers")
            values[name] = array
        values.update(self.membranes)
        in_span = {name: neuron for neuron in self.neurons for name in neuron.nodes}
        for node in self.nodes:
            neuron = in_span.get(node.name)
            if neuron is None:
                values[node.output[0]] = _run_node(node, [values[name] for name in node.input if name])
            elif node.output[0] == neuron.spikes:  # the span's last node: run the fused neuron
                values[neuron.spikes], self.membranes[neuron.membrane] = _lif(neuron, values[neuron.current],
                                                                              values[neuron.membrane])
        missing = [name for name in probes if name not in values]
        if missing:
            raise ModelError(f"probe {missing[0]!r}: no such tensor in the exported graph")
        return {name: values[name].astype(np.int64) for name in [*self.outputs, *probes]}


def run_host_loop(model: onnx.ModelProto, report: BimapReport, samples: Mapping[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """Run one sample through an exported model as the host does around BiMap's program.

    ``samples``: for each input of ``report``, the int8 values of one sample (``[1, ...]``) — the
    output of the source graph's ``QuantizeLinear`` (the entry's ``source_tensor``). The host
    feeds them at every step (direct coding), once (an ANN), or codes the spikes of step t with
    the source's A2S (rate coding; ``hnnx.ops.A2S.step``). Returns each source graph output as
    the host decodes it: as is, stacked over the steps, or through the source's S2A
    (``hnnx.ops.S2A.step``/``finish``) over the per-step outputs — integers, in the source
    graph's units (times the entry's ``scale`` for real values).
    """
    interpreter = BimapInterpreter(model)
    coders: dict[str, Callable[[int], np.ndarray]] = {}
    for entry in report.inputs:
        if entry["name"] not in samples:
            raise DataError(f"input {entry['name']!r} is missing")
        x = np.asarray(samples[entry["name"]])
        if entry["coding"] == "rate":
            view = ops.view_of("A2S", entry["coder"]["attrs"], [True], 1, entry["coder"]["node"])
            coders[entry["name"]] = lambda t, view=view, x=x: ops.A2S.step(view, x.astype(np.int8), t)
        else:
            coders[entry["name"]] = lambda t, x=x: x
    per_step: dict[str, list[np.ndarray]] = {entry["name"]: [] for entry in report.outputs}
    for t in range(report.steps):
        outputs = interpreter.step({name: code(t) for name, code in coders.items()})
        for name, collected in per_step.items():
            collected.append(outputs[name])
    decoded = {}
    for entry in report.outputs:
        steps = per_step[entry["name"]]
        if entry["decoder"] is not None:
            decoded[entry["source"]] = _decode(entry["decoder"], steps)
        else:
            decoded[entry["source"]] = np.stack(steps) if entry["stacked"] else steps[0]
    return decoded


def _decode(decoder: Mapping[str, Any], steps: Sequence[np.ndarray]) -> np.ndarray:
    """The source's S2A over the per-step outputs: one array, or the windows' outputs stacked."""
    view = ops.view_of("S2A", decoder["attrs"], [True], 1, decoder["node"])
    state = ops.S2A.initial_state(view, steps[0].shape, np.int32)
    emitted: list[np.ndarray] = []
    for y in steps:
        outputs, state = ops.S2A.step(view, state, y.astype(np.int32))
        emitted += outputs
    emitted += ops.S2A.finish(view, state)
    return emitted[0] if view.attrs["decoding"] == "global" else np.stack(emitted)


# ---------------------------------------------------------------------------- neurons
def _neuron_spans(graph: onnx.GraphProto) -> list[_Neuron]:
    """Each ``Clip → LIFRecorder → Add(·, v) → … → RectangleFire`` span, as BiMap's front end finds it."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inputs = {vi.name for vi in graph.input}
    neurons = []
    for recorder in (n for n in graph.node if n.op_type == "LIFRecorder"):
        clip = producer.get(recorder.input[0])
        if clip is None or clip.op_type != "Clip":
            raise ModelError(f"LIFRecorder {recorder.name!r}: its input must come from a Clip")
        (add,) = consumers.get(recorder.output[0], [None])
        if add is None or add.op_type != "Add":
            raise ModelError(f"LIFRecorder {recorder.name!r}: its output must feed one Add (the accumulation)")
        membrane = [name for name in add.input if name != recorder.output[0]]
        if len(membrane) != 1 or membrane[0] not in inputs:
            raise ModelError(f"LIFRecorder {recorder.name!r}: the membrane added to it must be a graph input")
        span, node = [clip, recorder, add], add
        while node.op_type != "RectangleFire":
            following = consumers.get(node.output[0], [])
            if len(following) != 1:
                raise ModelError(f"LIFRecorder {recorder.name!r}: no RectangleFire ends its span")
            node = following[0]
            span.append(node)
        attrs = {a.name: helper.get_attribute_value(a) for a in recorder.attribute}
        neurons.append(_Neuron(current=clip.input[0], membrane=membrane[0], spikes=node.output[0],
                               nodes=frozenset(n.name for n in span), v_th=attrs["v_th"],
                               alpha_q8=round(attrs["v_leaky_alpha"] * 256), beta=attrs["v_leaky_beta"],
                               v_reset=attrs["v_reset"], adaptive_leak=bool(attrs["v_leaky_adpt_en"]),
                               v_init=attrs["v_init"]))
    return neurons


def _lif(neuron: _Neuron, current: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of BiMap's LIF task: ``(spikes, next membrane)``."""
    v1 = np.clip(current + v, STATE_LOW, STATE_HIGH)
    fired = v1 > neuron.v_th
    v2 = np.where(fired, neuron.v_reset, v1)
    v3 = np.floor(neuron.alpha_q8 * v2 / 256) if neuron.adaptive_leak else v2
    return fired.astype(np.float64), np.clip(v3 + neuron.beta, STATE_LOW, STATE_HIGH)


# ---------------------------------------------------------------------------- standard ops
def _run_node(node: onnx.NodeProto, inputs: list[np.ndarray]) -> np.ndarray:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "Conv":
        return _conv(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None, attrs)
    if op == "Gemm":
        a, b = inputs[0], inputs[1]
        a = a.T if attrs.get("transA", 0) else a
        b = b.T if attrs.get("transB", 0) else b
        y = attrs.get("alpha", 1.0) * (a @ b)
        return y + attrs.get("beta", 1.0) * inputs[2] if len(inputs) > 2 else y
    if op == "MaxPool":
        return _maxpool(inputs[0], attrs)
    if op == "Relu":
        return np.maximum(inputs[0], 0.0)
    if op == "Clip":
        return np.clip(inputs[0], attrs.get("min", -np.inf), attrs.get("max", np.inf))
    if op == "Div":
        return inputs[0] / inputs[1]
    if op == "Floor":
        return np.floor(inputs[0])
    if op == "Add":
        return inputs[0] + inputs[1]
    if op == "Transpose":
        return np.transpose(inputs[0], attrs["perm"])
    if op == "Flatten":
        axis = attrs.get("axis", 1)
        return inputs[0].reshape(int(np.prod(inputs[0].shape[:axis])), -1)
    if op == "Reshape":
        shape = [d if d != 0 else inputs[0].shape[i] for i, d in enumerate(inputs[1].astype(np.int64))]
        return inputs[0].reshape(shape)
    raise ModelError(f"node {node.name!r}: {op} is not part of BiMap's dialect")


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: dict[str, Any]) -> np.ndarray:
    """2-D convolution of one sample ``[1, C, H, W]`` (group 1)."""
    if attrs.get("group", 1) != 1:
        raise ModelError("Conv with groups is not part of BiMap's dialect")
    kh, kw = w.shape[2:]
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    padded = np.pad(x[0], ((0, 0), (top, bottom), (left, right)))
    windows = sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    windows = windows[:, ::sh, ::sw, ::dh, ::dw]  # [C, out_h, out_w, kh, kw]
    y = np.einsum("chwij,mcij->mhw", windows, w)
    return (y if b is None else y + b[:, None, None])[None]


def _maxpool(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    kh, kw = attrs["kernel_shape"]
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    sh, sw = attrs.get("strides", [1, 1])
    padded = np.pad(x[0], ((0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    windows = sliding_window_view(padded, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
    return windows.max(axis=(3, 4))[None]
