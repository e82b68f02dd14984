"""Event-driven layers: spike-input layers rewritten into ``hnnx.SpikeMatMul`` / ``hnnx.SpikeConv``,
and integer layers run as exact float layers.

A dense or convolutional layer whose input holds spikes does work proportional to the spikes on
the native kernels of :mod:`hnnx.ops.spike_layers`. Which tensors hold spikes is known from the
graph: the outputs of the hnnx nodes whose declarations say so (``decl.emits_spikes(view)``: LIF,
CubaLIF, Fire, rate-coding A2S, …), followed through ops that only move or select values
(:data:`SPIKE_PRESERVING`). A spike-input layer is

* float: ``Gemm`` (``transA = 0``, ``alpha = beta = 1``), ``MatMul`` with a 2-D constant weight
  (and a following constant bias ``Add``), ``Conv`` 2-D (explicit or ``VALID`` padding);
* integer: ``MatMulInteger`` / ``ConvInteger`` with int8 operands and no zero points (and the
  following constant int32 bias ``Add``), as :mod:`hnnx.quantization.tianjicx` writes them.

:func:`event_driven` rewrites those whose firing rate says it pays (``mode="auto"``: the rate of
every spike source feeding the layer is known, from calibration or a measured run, and at most
:data:`PAYS_BELOW` for the layer kind — the crossover measured by ``bench/sparse.py``) or all
of them (``mode="on"``); ``auto`` leaves dense layers narrower than :data:`EVENT_MIN_OUTPUTS` alone. Integer layers are exact either way; float layers change the summation
order (see :class:`hnnx.ops.SpikeMatMul`), so they are rewritten only when ``float_layers`` is set.

:func:`integer_as_float` runs ``ConvInteger`` (and ``MatMulInteger`` of at least
:data:`FLOAT_GEMM_MIN_OUTPUTS` outputs) as ``Cast`` → float ``Conv``/``MatMul`` → ``Cast`` where
every partial sum of int8 products is an integer below 2^24 in magnitude (bounded per output by
the weights and the input range: 1 for spikes, 128 for int8), so float32 arithmetic in any order
gives the integer result exactly: onnxruntime's float kernels are several times faster than its
integer ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.errors import HnnxError
from hnnx.passes.manager import Pass, apply_passes, export_graph, graph_pass
from hnnx.passes.time import hoist_repeated

SPIKE_PRESERVING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Cast", "Slice",
                              "Gather", "Concat", "MaxPool", "Split"})
"""Standard ops whose outputs hold spikes when their data inputs do (they move, select or take
the maximum of values; a ``Cast`` to a number type keeps 0 and 1)."""

PAYS_BELOW = {"SpikeMatMul": 0.25, "SpikeConv": 0.2}
"""Firing rates up to which ``mode="auto"`` rewrites a layer: below the crossover with
onnxruntime's dense kernels that ``bench/sparse.py`` measures (above 50 % on its 4,096 → 4,096 and
64 → 64 3×3 layers), with a margin for small layers: integer layers of 64–1,024 inputs or 8–32
channels on 8×8–16×16 pixels measured 1.2–3.6× their exact float form at 20 % and 1.0–2.6× at
30 %, float ones 1.0–2.9× onnxruntime's at 20 %."""

EVENT_MIN_OUTPUTS = 32
"""``mode="auto"`` leaves dense spike-input layers narrower than this alone: reading the input costs
what a dense layer's few outputs do (8,192 → 10 at 7 % firing: 0.9 ms event-driven, 0.55 ms dense)."""

FLOAT_GEMM_MIN_OUTPUTS = 32
"""``integer_as_float`` leaves narrower ``MatMulInteger`` layers alone: onnxruntime's int8 GEMM
beats its float GEMM on them (8192 → 10: 14.5 ms against 22 ms; 1024 → 1024: 85 ms against 33 ms)."""

EXACT_LIMIT = 1 << 24
"""Integers of magnitude below this are exact in float32, and so is every sum that stays below it."""

MODES = ("auto", "on", "off")
RATE_UNKNOWN = "firing rate unknown"
FLOAT_NOT_OPTED_IN = "a float layer (its summation order would change: opt in with --event-float or on)"


@dataclass(frozen=True)
class EventLayer:
    """What :func:`event_driven` decided for one spike-input layer: ``name`` (the layer's node),
    ``op`` (the hnnx op it became or would become), ``sources`` (the spiking nodes feeding it),
    ``rate`` (their highest firing rate, None when unknown), ``rewritten`` and ``reason``."""

    name: str
    op: str
    sources: tuple[str, ...]
    rate: float | None
    rewritten: bool
    reason: str


# --------------------------------------------------------------------------------------------- spikes
def spike_sources(graph: gs.Graph) -> dict[str, tuple[str, ...]]:
    """The tensors of ``graph`` that hold spikes, each with the labels of the hnnx nodes whose
    spikes it carries (``node.name`` or its first output's name, as firing rates are keyed)."""
    graph.toposort()
    spikes: dict[str, tuple[str, ...]] = {}
    for node in graph.nodes:
        if node.domain == ops.DOMAIN and node.op in ops.REGISTRY:
            decl = ops.declaration(node.op)
            view = ops.view_of(node.op, node.attrs, [bool(t.name) for t in node.inputs], len(node.outputs), node.name)
            if decl.emits_spikes(view) and node.outputs:
                spikes[node.outputs[0].name] = (node.name or node.outputs[0].name,)
            continue
        if node.domain not in (None, "", "ai.onnx") or node.op not in SPIKE_PRESERVING:
            continue
        data = [t for t in node.inputs if not isinstance(t, gs.Constant)] if node.op == "Concat" else node.inputs[:1]
        if not data or not all(t.name in spikes for t in data):
            continue
        if node.op == "Cast" and node.attrs.get("to") in (onnx.TensorProto.BOOL, onnx.TensorProto.STRING):
            continue
        sources = tuple(dict.fromkeys(label for t in data for label in spikes[t.name]))
        for output in node.outputs[: 1 if node.op == "MaxPool" else len(node.outputs)]:
            spikes[output.name] = sources
    return spikes


# --------------------------------------------------------------------------------------------- layers
@dataclass
class _Layer:
    """A spike-input layer found in the graph, and what replaces it."""

    node: gs.Node
    op: str  # SpikeMatMul or SpikeConv
    integer: bool
    x: gs.Tensor
    weight: np.ndarray  # in the hnnx op's layout
    bias: np.ndarray | None
    output: gs.Variable  # the tensor the hnnx node produces (the bias Add's output when fused)
    removed: list[gs.Node]
    attrs: dict[str, int]


def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    return tensor.values if isinstance(tensor, gs.Constant) else None


def _int8_weight(node: gs.Node) -> np.ndarray | None:
    """The constant weight of a ``MatMulInteger``/``ConvInteger`` of int8 operands without zero
    points (as :mod:`hnnx.quantization.tianjicx` writes them), else None."""
    if node.op not in ("MatMulInteger", "ConvInteger") or node.domain not in (None, "", "ai.onnx"):
        return None
    weight = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype != np.int8 or node.inputs[0].dtype not in (None, np.int8):
        return None
    if not all(_constant(t) is not None and not np.any(_constant(t)) for t in node.inputs[2:] if t.name):
        return None  # a zero point
    return weight


def _bias_add(graph: gs.Graph, tensor: gs.Variable, outputs: int, dtype: type, kept: set[str],
              conv: bool) -> tuple[gs.Node | None, np.ndarray | None]:
    """The ``Add`` of a constant per-output bias that alone consumes ``tensor`` (if any), with the
    bias as ``[outputs]``: shape ``[M]`` or ``[1, M]`` after a dense layer, ``[1, M, 1, 1]`` or
    ``[M, 1, 1]`` after a convolution (shapes that broadcast without changing the layer's shape)."""
    if len(tensor.outputs) != 1 or tensor.name in kept or tensor in graph.outputs:
        return None, None
    add = tensor.outputs[0]
    if add.op != "Add" or add.domain not in (None, "", "ai.onnx") or len(add.inputs) != 2:
        return None, None
    values = _constant(add.inputs[1] if add.inputs[0] is tensor else add.inputs[0])
    shapes = {(1, outputs, 1, 1), (outputs, 1, 1)} if conv else {(outputs,), (1, outputs)}
    if values is None or values.dtype != dtype or tuple(values.shape) not in shapes:
        return None, None
    return add, values.reshape(outputs)


def _conv_attrs(node: gs.Node, weight: np.ndarray) -> dict[str, int] | None:
    """A 2-D ``Conv``/``ConvInteger``'s geometry as ``hnnx.SpikeConv`` attributes (None: not expressible)."""
    a = node.attrs
    pad = a.get("auto_pad", "NOTSET")
    pad = pad.decode() if isinstance(pad, bytes) else pad
    if weight.ndim != 4 or pad not in ("NOTSET", "VALID"):
        return None
    if "kernel_shape" in a and list(a["kernel_shape"]) != list(weight.shape[2:]):
        return None
    pads = [0, 0, 0, 0] if pad == "VALID" else list(a.get("pads", [0, 0, 0, 0]))
    strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    if len(pads) != 4 or len(strides) != 2 or len(dilations) != 2:
        return None
    return {"stride_h": int(strides[0]), "stride_w": int(strides[1]), "pad_top": int(pads[0]),
            "pad_left": int(pads[1]), "pad_bottom": int(pads[2]), "pad_right": int(pads[3]),
            "dilation_h": int(dilations[0]), "dilation_w": int(dilations[1]), "group": int(a.get("group", 1))}


def _uncast_int32(x: gs.Tensor) -> gs.Tensor:
    """The int32 tensor that ``x`` casts to int8, when it does: an integer spike-input op reads
    int32 input as that Cast would (its low 8 bits), so it takes the int32 spikes (of an integer
    LIF, say) directly and the Cast goes unless something else reads it."""
    producer = x.inputs[0] if len(x.inputs) == 1 else None
    if (producer is not None and producer.op == "Cast" and producer.domain in (None, "", "ai.onnx")
            and producer.attrs.get("to") == onnx.TensorProto.INT8 and producer.inputs
            and producer.inputs[0].dtype == np.int32):
        return producer.inputs[0]
    return x


def _find_layer(graph: gs.Graph, node: gs.Node, spikes: Mapping[str, tuple[str, ...]], kept: set[str]
                ) -> _Layer | None:
    """The spike-input layer that ``node`` starts, or None."""
    if (node.domain not in (None, "", "ai.onnx") or not node.inputs or not node.outputs
            or node.inputs[0].name not in spikes):
        return None
    x, out = node.inputs[0], node.outputs[0]
    weight = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return None
    if node.op in ("MatMulInteger", "ConvInteger"):
        weight = _int8_weight(node)
        if weight is None:
            return None
        conv = node.op == "ConvInteger"
        attrs = _conv_attrs(node, weight) if conv else {}
        if attrs is None or (not conv and weight.ndim != 2):
            return None
        outputs = weight.shape[0] if conv else weight.shape[1]
        add, bias = _bias_add(graph, out, outputs, np.int32, kept, conv)
        return _Layer(node, "SpikeConv" if conv else "SpikeMatMul", True, _uncast_int32(x), weight, bias,
                      add.outputs[0] if add is not None else out, [node] + ([add] if add is not None else []), attrs)
    if weight.dtype != np.float32 or x.dtype not in (None, np.float32):
        return None
    if node.op == "Gemm":
        a = node.attrs
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or weight.ndim != 2:
            return None
        matrix = weight.T if a.get("transB", 0) else weight
        bias = _constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        if len(node.inputs) > 2 and node.inputs[2].name:
            if bias is None or a.get("beta", 1.0) != 1.0 or bias.dtype != np.float32:
                return None
            if bias.size == 1:
                bias = np.full(matrix.shape[1], bias.reshape(()), np.float32)
            elif bias.size != matrix.shape[1] or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
                return None
        return _Layer(node, "SpikeMatMul", False, x, np.ascontiguousarray(matrix),
                      None if bias is None else bias.reshape(-1), out, [node], {})
    if node.op == "MatMul":
        if weight.ndim != 2:
            return None
        add, bias = _bias_add(graph, out, weight.shape[1], np.float32, kept, conv=False)
        return _Layer(node, "SpikeMatMul", False, x, weight, bias, add.outputs[0] if add is not None else out,
                      [node] + ([add] if add is not None else []), {})
    if node.op == "Conv":
        attrs = _conv_attrs(node, weight)
        bias = _constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        if attrs is None or (len(node.inputs) > 2 and node.inputs[2].name and bias is None):
            return None
        return _Layer(node, "SpikeConv", False, x, weight, bias, out, [node], attrs)
    return None


def _rewrite(graph: gs.Graph, layer: _Layer) -> None:
    """Replace the layer's nodes by one hnnx node producing the same tensor."""
    base = layer.node.name or layer.output.name
    inputs = [layer.x, gs.Constant(f"{base}.event_weight", np.ascontiguousarray(layer.weight))]
    if layer.bias is not None:
        inputs.append(gs.Constant(f"{base}.event_bias", np.ascontiguousarray(layer.bias)))
    for removed in layer.removed:
        removed.outputs.clear()
    attrs = {"mode": "integer" if layer.integer else "float", **layer.attrs}
    graph.nodes.append(gs.Node(layer.op, name=base, domain=ops.DOMAIN, attrs=attrs, inputs=inputs,
                               outputs=[layer.output]))


def _rate(sources: Iterable[str], rates: Mapping[str, float]) -> float | None:
    known = [rates.get(source) for source in sources]
    return None if not known or any(r is None for r in known) else float(max(known))  # type: ignore[type-var]


def event_driven(rates: Mapping[str, float] | None = None, mode: str = "auto", float_layers: bool = False,
                 keep: Iterable[str] = (), decisions: list[EventLayer] | None = None) -> Pass:
    """The graph pass that rewrites spike-input layers into ``hnnx.SpikeMatMul``/``hnnx.SpikeConv``.

    ``rates``: firing rates (spikes per neuron per step) by spiking node label — a calibration's
    or a simulation's ``firing_rates``; ``mode``: ``"auto"`` (layers whose sources' highest rate is
    known and at most :data:`PAYS_BELOW`), ``"on"`` (every spike-input layer) or ``"off"``;
    ``float_layers``: also rewrite float layers (their summation order changes); ``keep``: tensors
    that must stay (probes: a fused bias ``Add``'s input is not kept otherwise); ``decisions``:
    receives one :class:`EventLayer` per spike-input layer found.
    """
    if mode not in MODES:
        raise HnnxError(f"event-driven mode must be one of {', '.join(MODES)}, got {mode!r}")
    known = dict(rates or {})
    kept = set(keep)

    @graph_pass(subgraphs=False)
    def event_driven(graph: gs.Graph) -> bool:
        """Rewrite spike-input layers into hnnx.SpikeMatMul / hnnx.SpikeConv where it pays."""
        if mode == "off":
            return False
        spikes = spike_sources(graph)
        changed = False
        for node in list(graph.nodes):
            layer = _find_layer(graph, node, spikes, kept)
            if layer is None:
                continue
            sources = spikes[layer.x.name]
            rate = _rate(sources, known)
            limit = PAYS_BELOW[layer.op]
            if not layer.integer and not float_layers:
                rewrite, reason = False, FLOAT_NOT_OPTED_IN
            elif mode == "on":
                rewrite, reason = True, "event-driven: on"
            elif layer.op == "SpikeMatMul" and layer.weight.shape[1] < EVENT_MIN_OUTPUTS:
                rewrite, reason = False, (f"{layer.weight.shape[1]} outputs < {EVENT_MIN_OUTPUTS}: dense is as fast "
                                          f"for a layer bound by reading its input")
            elif rate is None:
                rewrite, reason = False, RATE_UNKNOWN
            elif rate <= limit:
                rewrite, reason = True, f"firing rate {rate:.3f} ≤ {limit}"
            else:
                rewrite, reason = False, f"firing rate {rate:.3f} > {limit}: dense is faster"
            if decisions is not None:
                decisions.append(EventLayer(layer.node.name or layer.output.name, layer.op, sources, rate, rewrite,
                                            reason))
            if rewrite:
                _rewrite(graph, layer)
                changed = True
        return changed

    return event_driven


# --------------------------------------------------------------------------------------------- integer as float
def _input_bound(tensor: gs.Tensor, spikes: Mapping[str, tuple[str, ...]]) -> int:
    """The largest magnitude an int8 input can hold: 1 for spikes, 128 otherwise."""
    return 1 if tensor.name in spikes else 128


def integer_as_float(keep: Iterable[str] = ()) -> Pass:
    """The graph pass that runs ConvInteger (and wide MatMulInteger) layers as exact float layers
    where every partial sum stays below 2^24 in magnitude; ``keep``: tensors that must stay
    (probes: a fused bias ``Add``'s input is not kept otherwise)."""
    kept = set(keep)

    @graph_pass(subgraphs=False)
    def integer_as_float(graph: gs.Graph) -> bool:
        """Run integer layers whose sums stay below 2^24 as exact float layers."""
        return _integer_layers_as_float(graph, kept)

    return integer_as_float


def _integer_layers_as_float(graph: gs.Graph, kept: set[str]) -> bool:
    spikes = spike_sources(graph)
    changed = False
    for node in list(graph.nodes):
        weight = _int8_weight(node)
        if weight is None or not node.outputs:  # (no outputs: replaced by an earlier pass, before the clean-up)
            continue
        x = node.inputs[0]
        conv = node.op == "ConvInteger"
        if not conv and (weight.ndim != 2 or weight.shape[1] < FLOAT_GEMM_MIN_OUTPUTS):
            continue
        # Σ|w|·max|x| over each output's weights bounds every partial sum, in any order.
        magnitude = np.abs(weight.astype(np.int64))
        per_output = (magnitude.reshape(weight.shape[0], -1).sum(axis=1) if conv else magnitude.sum(axis=0))
        per_output = per_output * _input_bound(x, spikes)
        if per_output.max(initial=0) >= EXACT_LIMIT:
            continue
        out = node.outputs[0]
        outputs = weight.shape[0] if conv else weight.shape[1]
        add, bias = _bias_add(graph, out, outputs, np.int32, kept, conv)
        if bias is not None and (per_output + np.abs(bias.astype(np.int64))).max() >= EXACT_LIMIT:
            add, bias = None, None  # the bias Add stays an int32 Add
        result = add.outputs[0] if add is not None else out
        base = node.name or out.name
        x_float = gs.Variable(f"{base}.x_float", dtype=np.float32)
        y_float = gs.Variable(f"{base}.y_float", dtype=np.float32)
        float_weight = gs.Constant(f"{base}.float_weight", weight.astype(np.float32))
        float_bias = None if bias is None else gs.Constant(f"{base}.float_bias", bias.astype(np.float32))
        for removed in [node] + ([add] if add is not None else []):
            removed.outputs.clear()
        layer = [gs.Node("Cast", name=f"{base}.to_float", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[x],
                         outputs=[x_float])]
        if conv:
            layer.append(gs.Node("Conv", name=f"{base}.float", attrs=dict(node.attrs),
                                 inputs=[x_float, float_weight] + ([float_bias] if float_bias is not None else []),
                                 outputs=[y_float]))
        elif float_bias is None:
            layer.append(gs.Node("MatMul", name=f"{base}.float", inputs=[x_float, float_weight], outputs=[y_float]))
        else:
            product = gs.Variable(f"{base}.product_float", dtype=np.float32)
            layer += [gs.Node("MatMul", name=f"{base}.float", inputs=[x_float, float_weight], outputs=[product]),
                      gs.Node("Add", name=f"{base}.float_bias_add", inputs=[product, float_bias], outputs=[y_float])]
        layer.append(gs.Node("Cast", name=f"{base}.to_int32", attrs={"to": onnx.TensorProto.INT32}, inputs=[y_float],
                             outputs=[result]))
        graph.nodes.extend(layer)
        changed = True
    return changed


# --------------------------------------------------------------------------------------------- sessions
def for_simulation(model: onnx.ModelProto, mode: str, rates: Mapping[str, float] | None = None,
                   keep: Iterable[str] = (), float_layers: bool | None = None, spike_layers: bool = True
                   ) -> tuple[onnx.ModelProto, list[EventLayer]]:
    """The model a simulation runs for ``mode`` (``auto``/``on``/``off``): spike-input layers
    rewritten by :func:`event_driven` (float ones with ``float_layers``, default: only when
    ``mode="on"``; none without ``spike_layers``, e.g. when the native kernels are off and the
    ops would run their dense bodies) and integer layers by :func:`integer_as_float`. Returns the
    model (``model`` itself when nothing changes) and the decisions, one per spike-input layer."""
    if mode not in MODES:
        raise HnnxError(f"event-driven mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return model, []
    if not any(node.op_type in _LAYER_OPS for node in model.graph.node):
        return model, []
    decisions: list[EventLayer] = []
    passes: list[Pass] = [hoist_repeated(keep), integer_as_float(keep)]
    if spike_layers:
        float_layers = mode == "on" if float_layers is None else float_layers
        passes.insert(0, event_driven(rates, mode, float_layers, keep, decisions))
    # The graph without the hnnx function bodies (derived data, attached again on export): the
    # import is most of the cost otherwise.
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    kept_functions = [f for f in bare.functions if f.domain != ops.DOMAIN]
    del bare.functions[:]
    bare.functions.extend(kept_functions)
    graph = gs.import_onnx(bare)
    if not any(apply_passes(graph, passes).values()):
        return model, decisions
    return export_graph(graph, model), decisions


_LAYER_OPS = frozenset({"Gemm", "MatMul", "Conv", "MatMulInteger", "ConvInteger"})


def rates_wanted(decisions: Iterable[EventLayer]) -> bool:
    """Whether a measured firing rate could still change a decision (``auto`` found a layer
    whose sources' rates were unknown)."""
    return any(not d.rewritten and d.rate is None and d.reason == RATE_UNKNOWN for d in decisions)


def decide_on_measured(decisions: Iterable[EventLayer], counts: Mapping[str, tuple[float, int]],
                       given: Mapping[str, float] | None = None
                       ) -> tuple[dict[str, float], list[EventLayer], bool]:
    """Decide again, with the ``given`` firing rates and those measured in a run's spike ``counts``
    (``{layer: (spikes, elements)}``), the layers whose rates were unknown. Returns the rates, the
    decisions as they now stand, and whether a layer is now to be rewritten (a new session)."""
    rates = {**measured_rates(counts), **(given or {})}
    updated, rewrite = [], False
    for decision in decisions:
        rate = _rate(decision.sources, rates) if decision.reason == RATE_UNKNOWN else None
        if rate is None:
            updated.append(decision)
            continue
        limit = PAYS_BELOW[decision.op]
        pays = rate <= limit
        rewrite = rewrite or pays
        updated.append(EventLayer(decision.name, decision.op, decision.sources, rate, pays,
                                  f"firing rate {rate:.3f} {'≤' if pays else '>'} {limit}"
                                  + ("" if pays else ": dense is faster")))
    return rates, updated, rewrite


def measured_rates(counts: Mapping[str, tuple[float, int]]) -> dict[str, float]:
    """Firing rates from a simulator run's spike counts ``{layer: (spikes, elements)}``."""
    return {name: total / count for name, (total, count) in counts.items() if count}


__all__ = ["EVENT_MIN_OUTPUTS", "EventLayer", "PAYS_BELOW", "SPIKE_PRESERVING", "event_driven", "for_simulation", "integer_as_float",
           "decide_on_measured", "measured_rates", "rates_wanted", "spike_sources"]
