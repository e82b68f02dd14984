"""The quantization entry point and its report."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.errors import HnnxError
from hnnx.model import load
from hnnx.passes import export_graph, import_graph, preprocess_graph
from hnnx.quantization.common import QuantizationTarget, Statistics, TargetOptions
from hnnx.quantization.qdq import QdqTarget
from hnnx.quantization.tianjicx import TianjicxTarget

TARGET_CLASSES: dict[str, type[QuantizationTarget]] = {t.name: t for t in (TianjicxTarget, QdqTarget)}
"""Every quantization target by name."""
TARGETS = tuple(TARGET_CLASSES)
FORMATS = {name: target.formats for name, target in TARGET_CLASSES.items()}
"""The output formats of each target; the first is the default."""
OUTPUT_SCALE_KEY = "hnnx.output_scale."
COMPARISON_SAMPLES = 128
COMPARISON_VALUES = 1 << 26
"""The report compares float and quantized tensors on samples up to about this many float values
(every compared tensor of a sample counts): 128 samples of a digits model, the floor of
:data:`MIN_COMPARISON_SAMPLES` on an ImageNet-size CNN, whose tens of millions of activation values
per sample give each tensor's SQNR without running both models over many samples."""
MIN_COMPARISON_SAMPLES = 8
"""Calibration samples the report's float-vs-quantized comparison runs on."""
QUANTIZED_KEY = "hnnx.quantized"
QDQ_MIN_OPSET = 13
"""QuantizeLinear/DequantizeLinear take a per-channel ``axis`` from ai.onnx opset 13 on."""
MIN_OPSETS = {"tianjicx": ops.MIN_ONNX_OPSET, "qdq": QDQ_MIN_OPSET}
"""The standard opset each target's graphs need; older models are converted up to it (hnnx
nodes' function bodies need :data:`hnnx.ops.MIN_ONNX_OPSET`)."""


@dataclass
class QuantizationReport:
    """What quantization did: per-layer scales and shifts, exclusions, sizes, and the
    float-vs-quantized comparison on the calibration samples (SQNR per output in dB,
    firing rates, saturated values per requantized activation, SynOps per sample, and
    ``tensor_errors``: the SQNR of every quantized tensor against its float counterpart with
    its saturated values, worst first — where to look when accuracy drops)."""

    target: str
    format: str
    observer: str
    calibration_samples: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    output_scales: dict[str, float] = field(default_factory=dict)
    size_bytes: dict[str, int] = field(default_factory=dict)
    sqnr_db: dict[str, float] = field(default_factory=dict)
    firing_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    saturated: dict[str, int] = field(default_factory=dict)
    synops_per_sample: float = 0.0
    tensor_errors: list[dict[str, Any]] = field(default_factory=list)
    preprocessing: list[dict[str, Any]] = field(default_factory=list)
    compared_samples: int = 0
    """How many of the calibration samples the float-vs-quantized comparison ran on."""
    note: str = ""

    def to_json(self) -> str:
        """The report as JSON (an exact tensor's SQNR, infinite, is written as null)."""
        return json.dumps(_finite(asdict(self)), indent=2, sort_keys=False, default=float)

    def markdown(self) -> str:
        """A readable summary (Markdown tables)."""
        lines = [f"# Quantization report — target {self.target}, format {self.format}",
                 self.note or f"observer {self.observer}, {self.calibration_samples} calibration samples", ""]
        if "float" in self.size_bytes:
            lines += [f"model size: {self.size_bytes['float']:,} → {self.size_bytes.get('quantized', 0):,} bytes "
                      f"of parameters", ""]
        if self.layers:
            lines += ["| layer | op | role | details |", "|---|---|---|---|"]
        for layer in self.layers:
            details = ", ".join(f"{k}={_short(v)}" for k, v in layer["details"].items())
            lines.append(f"| {layer['name']} | {layer['op']} | {layer['role']} | {details} |")
        if self.sqnr_db:
            lines += ["", f"float against quantized on {self.compared_samples:,} of the calibration samples:", "",
                      "| output | scale | SQNR (dB) |", "|---|---|---|"]
            lines += [f"| {name} | {self.output_scales.get(name, float('nan')):.6g} | {_db(db)} |"
                      for name, db in self.sqnr_db.items()]
        if self.firing_rates:
            lines += ["", "| spiking layer | float rate | quantized rate | drift |", "|---|---|---|---|"]
            for name, rates in self.firing_rates.items():
                lines.append(f"| {name} | {rates['float']:.4f} | {rates['quantized']:.4f} | "
                             f"{rates['quantized'] - rates['float']:+.4f} |")
        if self.saturated:
            lines += ["", "| requantized activation | saturated values |", "|---|---|"]
            lines += [f"| {name} | {count:,} |" for name, count in self.saturated.items()]
        if self.synops_per_sample:
            lines += ["", f"SynOps per sample (spike-driven synaptic operations): {self.synops_per_sample:,.0f}"]
        if self.tensor_errors:
            lines += ["", "| quantized tensor (worst first) | SQNR (dB) | saturated values |", "|---|---|---|"]
            lines += [f"| {e['tensor']} | {_db(e['sqnr_db'])} | {e['saturated']:,} of {e['elements']:,} |"
                      for e in self.tensor_errors]
        changed = [step for step in self.preprocessing if step["changed"] or step["detail"]]
        if changed:
            lines += ["", "| pre-processing pass | changed | what |", "|---|---|---|"]
            lines += [f"| {step['pass']} | {'yes' if step['changed'] else 'no'} | {step['detail']} |"
                      for step in changed]
        if self.excluded:
            lines += ["", "| excluded node | reason |", "|---|---|"]
            lines += [f"| {name} | {reason} |" for name, reason in self.excluded.items()]
        return "\n".join(lines) + "\n"


def quantize(
    model: onnx.ModelProto | str | os.PathLike,
    calibration: Any,
    *,
    target: str = "tianjicx",
    format: str | None = None,
    observer: str = "minmax",
    observer_options: Mapping[str, Any] | None = None,
    per_channel: bool | None = None,
    spiking: str = "tianjicx",
    num_samples: int | None = None,
    batch_size: int = 64,
    exclude: Sequence[str] = (),
    bit_shift_unit: int = 2,
    progress: bool = False,
    workers: int | None = None,
    ray: bool | str | None = None,
) -> tuple[onnx.ModelProto, QuantizationReport]:
    """Quantize ``model`` with statistics from ``calibration`` data.

    ``calibration``: anything :func:`hnnx.calibrate.batches` reads (a .npz/.npy/directory path,
    a dict of arrays, an iterable, a DataLoader); it is validated before any work.
    ``observer_options``: options of the ``observer`` (e.g. ``{"percentile": 99.9}``).
    ``exclude``: node names, op types or regular expressions (``re.fullmatch`` on the node
    name) to keep in float. ``format``: see :data:`FORMATS` (default: the target's first);
    ``per_channel``: per-output-channel weight scales (``qdq`` only; its default);
    ``spiking``: ``qdq`` target only — quantize the spiking parts as ``tianjicx`` or leave them ``float``.
    ``workers``/``ray``: calibrate on that many local processes or on a Ray cluster (see
    :func:`hnnx.calibrate.calibrate`): the same quantized model, bit for bit, as one process.
    Returns the quantized model (with function bodies; checked in full when saved) and a
    :class:`QuantizationReport`.

    The model is held as one graph from pre-processing to the rewrite, and serialised only for
    the onnxruntime sessions that calibrate and compare (``bench/conversions.py`` counts this).
    """
    from hnnx.calibrate import calibrate

    if target not in TARGETS:
        raise HnnxError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    format = format or FORMATS[target][0]
    if format not in FORMATS[target]:
        raise HnnxError(f"format {format!r} is not available for target {target} "
                        f"(available: {', '.join(FORMATS[target])})")
    if per_channel and target == "tianjicx":
        raise HnnxError("the tianjicx target has per-tensor shift-only weights; per-channel scales need --target qdq")
    if bit_shift_unit not in (1, 2):
        raise HnnxError(f"bit_shift_unit must be 1 or 2, got {bit_shift_unit}")
    if spiking not in ("tianjicx", "float"):
        raise HnnxError(f"spiking parts are quantized as 'tianjicx' or left 'float', got {spiking!r}")
    if not isinstance(model, onnx.ModelProto):
        model = load(model)
    done = quantized_as(model)
    if done == f"{target}/{format}":  # idempotent: nothing is left to quantize
        again = onnx.ModelProto()
        again.CopyFrom(model)
        return again, QuantizationReport(target, format, observer, 0, output_scales=output_scales(model),
                                         note="already quantized in this form: returned unchanged")
    if done == "tianjicx/fakequant" and (target, format) == ("tianjicx", "int"):
        return _integerize(model, observer)
    if done is not None:
        raise HnnxError(f"the model is already quantized ({done}); re-quantizing it as {target}/{format} "
                        f"needs the float model")
    changes: dict[str, bool] = {}
    notes: dict[str, str] = {}
    graph = preprocess_graph(model, min_opset=MIN_OPSETS[target], changes=changes, notes=notes)
    float_model = export_graph(graph, model)
    options = TargetOptions(format, frozenset(_excluded_names(graph, exclude)), bit_shift_unit, per_channel, spiking)
    quantizer = TARGET_CLASSES[target](options)
    stats = calibrate(float_model, calibration, quantizer.calibration_tensors(graph), observer=observer,
                      observer_options=observer_options, batch_size=batch_size, num_samples=num_samples,
                      progress=progress, workers=workers, ray=ray)
    rewrite = quantizer.rewrite(graph, Statistics.of(stats))
    quantized = _quantized_model(graph, float_model, f"{target}/{format}", rewrite.output_scales)

    report = QuantizationReport(target, format, observer, stats.samples,
                                layers=[asdict(record) for record in rewrite.records],
                                excluded=dict(rewrite.excluded), output_scales=dict(rewrite.output_scales),
                                size_bytes={"float": _parameter_bytes(float_model),
                                            "quantized": _parameter_bytes(quantized)})
    report.preprocessing = [{"pass": name, "changed": flag, "detail": notes.get(name, "")}
                            for name, flag in changes.items()]
    _compare(stats.simulator, quantized, rewrite.tensors, calibration, report, stats.firing_rates, batch_size)
    return quantized, report


def _quantized_model(graph: gs.Graph, source: onnx.ModelProto, form: str, scales: Mapping[str, float]
                     ) -> onnx.ModelProto:
    """The rewritten ``graph`` as a model, marked with its form and output scales."""
    model = export_graph(graph, source)
    model.producer_name = "hnnx"
    onnx.helper.set_model_props(model, {QUANTIZED_KEY: form, **{OUTPUT_SCALE_KEY + k: repr(v) for k, v in scales.items()}})
    return model


def quantized_as(model: onnx.ModelProto) -> str | None:
    """``"target/format"`` of a model hnnx quantized, else None."""
    return next((p.value for p in model.metadata_props if p.key == QUANTIZED_KEY), None)


def is_fakequant(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is a tianjicx fake-quant model (hnnx's Simulator runs those with basic
    onnxruntime optimisations only, which keep their arithmetic exact)."""
    return any(p.key == QUANTIZED_KEY and p.value == "tianjicx/fakequant" for p in model.metadata_props)


def _integerize(fake: onnx.ModelProto, observer: str) -> tuple[onnx.ModelProto, QuantizationReport]:
    """The integer graph of a tianjicx fake-quant model, weights re-quantized from its sources."""
    from hnnx.quantization.integerize import FakeQuantIntegerizer

    graph = import_graph(fake)
    integerizer = FakeQuantIntegerizer(graph)
    integerizer.run()
    fake_scales = output_scales(fake)
    scales = {name: fake_scales.get(name, 1.0) * factor for name, factor in integerizer.output_fakes.items()}
    model = _quantized_model(graph, fake, "tianjicx/int", scales)
    return model, QuantizationReport("tianjicx", "int", observer, 0, output_scales=scales,
                                     size_bytes={"fakequant": _parameter_bytes(fake), "quantized": _parameter_bytes(model)},
                                     note="re-quantized from the fake-quant form: weights from their float sources")


def output_scales(model: onnx.ModelProto) -> dict[str, float]:
    """The real value per unit of each integer graph output of a quantized model."""
    return {prop.key[len(OUTPUT_SCALE_KEY):]: float(prop.value) for prop in model.metadata_props
            if prop.key.startswith(OUTPUT_SCALE_KEY)}


def _excluded_names(graph: gs.Graph, patterns: Sequence[str]) -> set[str]:
    names = set()
    for pattern in patterns:
        matched = {(n.name or n.outputs[0].name) for n in graph.nodes
                   if pattern in (n.name, n.op) or (n.name and re.fullmatch(pattern, n.name))}
        if not matched:
            raise HnnxError(f"--exclude {pattern!r} matches no node name, op type or name pattern")
        names |= matched
    return names


def _parameter_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for init in model.graph.initializer:
        total += onnx.numpy_helper.to_array(init).nbytes
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                total += onnx.numpy_helper.to_array(attr.t).nbytes
    return total


def _compare(reference: Any, quantized: onnx.ModelProto, tensors: Mapping[str, tuple[str, float]],
             calibration: Any, report: QuantizationReport, float_rates: Mapping[str, float], batch_size: int) -> None:
    """On (up to :data:`COMPARISON_SAMPLES` of, and about :data:`COMPARISON_VALUES` float values of)
    the calibration samples, the float model (``reference``:
    the calibration's session, which probes every float tensor) and the quantized model side by side:
    SQNR of every output and of every quantized tensor (``tensors``: float name → quantized name and
    real value per unit), saturated values, firing-rate drift and SynOps per sample."""
    from hnnx.calibrate import batches
    from hnnx.calibrate.collect import PROBE_MEMORY_BUDGET
    from hnnx.runtime.session import Simulator

    requantized = [n.output[0] for n in quantized.graph.node if n.domain == ops.DOMAIN and n.op_type == "Requantize"]
    fan_outs = _spike_fan_outs(quantized)
    float_names = {spec.name for spec in [*reference.outputs, *reference.probes]}
    quantized_names = _tensor_names(quantized)
    pairs = {name: pair for name, pair in tensors.items() if name in float_names and pair[0] in quantized_names}
    candidate = Simulator(quantized, probes=[*requantized, *fan_outs, *(q for q, _ in pairs.values())])
    scales = output_scales(quantized)
    outputs = {name: (name, scales.get(name, 1.0)) for name in (o.name for o in reference.outputs)}
    errors = {name: [0.0, 0.0, 0, 0] for name in {**pairs, **outputs}}  # signal, noise, saturated, elements
    spikes: dict[str, list[float]] = {}
    saturated = dict.fromkeys(requantized, 0)
    synops = 0.0
    samples = 0
    # Both models' probes of a batch are held at once: cut batches to the calibration's budget.
    batch = min(reference.batch_within(PROBE_MEMORY_BUDGET // 2, batch_size),
                candidate.batch_within(PROBE_MEMORY_BUDGET // 2, batch_size))
    # Only samples calibration used: a source is read no further than ``num_samples`` asked.
    per_sample = max(1, reference.bytes_per_sample() // 4)
    compared = min(COMPARISON_SAMPLES, report.calibration_samples,
                   max(MIN_COMPARISON_SAMPLES, COMPARISON_VALUES // per_sample))
    for feeds in batches(calibration, candidate.inputs, batch, num_samples=compared):
        expected, _ = reference.run(feeds)
        got, counts = candidate.run(feeds)
        samples += next(iter(feeds.values())).shape[candidate.inputs[0].batch_axis]
        for name, (quantized_name, unit) in {**pairs, **outputs}.items():
            value, real = expected[name].astype(np.float64), got[quantized_name]
            entry = errors[name]
            entry[0] += float(np.sum(value**2))
            entry[1] += float(np.sum((real.astype(np.float64) * unit - value) ** 2))
            if real.dtype == np.int8:
                entry[2] += int(np.count_nonzero((real == 127) | (real == -128)))
            entry[3] += int(real.size)
        for name, (total, count) in counts.items():
            spikes.setdefault(name, [0.0, 0.0])
            spikes[name][0] += total
            spikes[name][1] += count
        for name in requantized:
            saturated[name] += int(np.sum((got[name] == 127) | (got[name] == -128)))
        for name, fan_out in fan_outs.items():
            synops += float(np.count_nonzero(got[name])) * fan_out
    report.compared_samples = samples
    report.sqnr_db = {name: _sqnr(*errors[name][:2]) for name in outputs}
    report.tensor_errors = sorted(({"tensor": name, "quantized_tensor": pairs[name][0], "unit": pairs[name][1],
                                    "sqnr_db": _sqnr(signal, noise), "saturated": sat, "elements": size}
                                   for name, (signal, noise, sat, size) in errors.items() if name in pairs),
                                  key=lambda e: e["sqnr_db"])
    report.firing_rates = {name: {"float": float(float_rates.get(name, float("nan"))),
                                  "quantized": total / count if count else 0.0}
                           for name, (total, count) in spikes.items()}
    report.saturated = {name.rsplit(".", 1)[0]: count for name, count in saturated.items()}
    report.synops_per_sample = synops / max(samples, 1)


def _sqnr(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB; infinite where the quantized tensor is exact."""
    if noise == 0.0:
        return math.inf
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def _db(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "exact"


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    return {name for node in model.graph.node for name in node.output} | {i.name for i in model.graph.input}


def _spike_fan_outs(model: onnx.ModelProto) -> dict[str, int]:
    """Spike tensors that feed a synaptic layer, with the synapses each spike drives.

    A spike into a MatMul drives its output features; into a Conv, ``C_out · kh · kw``
    (interior positions). Spike tensors are the outputs of LIF and rate-coding A2S nodes,
    followed through reshapes and casts.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name: init for init in model.graph.initializer}

    def is_spikes(tensor: str) -> bool:
        node = producers.get(tensor)
        while node is not None and node.op_type in ("Reshape", "Cast", "Flatten", "Transpose", "Squeeze", "Unsqueeze"):
            tensor = node.input[0]
            node = producers.get(tensor)
        if node is None or node.domain != ops.DOMAIN:
            return False
        declaration = ops.declaration(node.op_type)
        return declaration.emits_spikes(declaration.view(node))

    fan_outs = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulInteger", "ConvInteger", "MatMul", "Conv") and node.input[1] in initializers:
            dims = list(initializers[node.input[1]].dims)
            fan_out = dims[-1] if node.op_type.startswith("MatMul") else dims[0] * int(np.prod(dims[2:]))
            if is_spikes(node.input[0]):
                fan_outs[node.input[0]] = fan_out
    return fan_outs


def _short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
