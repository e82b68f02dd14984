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
from hnnx.model import copy_except, load
from hnnx.passes import export_graph, import_graph, preprocess_graph
from hnnx.quantization.compare import (COMPARISON_SAMPLES, COMPARISON_VALUES,  # noqa: F401
                                       MIN_COMPARISON_SAMPLES, compare)
from hnnx.quantization.common import QuantizationTarget, Statistics, TargetOptions
from hnnx.quantization.qdq import QdqTarget
from hnnx.quantization.tianjicx import TianjicxTarget
from hnnx.runtime.session import release_freed_memory

TARGET_CLASSES: dict[str, type[QuantizationTarget]] = {t.name: t for t in (TianjicxTarget, QdqTarget)}
"""Every quantization target by name."""
TARGETS = tuple(TARGET_CLASSES)
FORMATS = {name: target.formats for name, target in TARGET_CLASSES.items()}
"""The output formats of each target; the first is the default."""
OUTPUT_SCALE_KEY = "hnnx.output_scale."
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
    weight_bits: int | None = None
    """``qdq``: 8, or 7 with ``reduce_range``."""
    note: str = ""

    def to_json(self) -> str:
        """The report as JSON (an exact tensor's SQNR, infinite, is written as null)."""
        return json.dumps(_finite(asdict(self)), indent=2, sort_keys=False, default=float)

    def markdown(self) -> str:
        """A readable summary (Markdown tables)."""
        lines = [f"# Quantization report — target {self.target}, format {self.format}",
                 self.note or f"observer {self.observer}, {self.calibration_samples} calibration samples", ""]
        if self.weight_bits == 7:
            lines += ["weights: 7-bit (reduce_range: onnxruntime's int8 kernels on x86 without VNNI saturate "
                      "full-range weights)", ""]
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
    reduce_range: bool | None = None,
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
    ``reduce_range``: ``qdq`` only — 7-bit weights, which onnxruntime's integer kernels on x86 CPUs
    without VNNI sum without int16 saturation (None: on such a CPU,
    :func:`hnnx.quantization.qdq.default_reduce_range`; the report's ``weight_bits`` says which).
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
    if reduce_range and target != "qdq":
        raise HnnxError("reduce_range (7-bit weights) is an option of --target qdq")
    if spiking not in ("tianjicx", "float"):
        raise HnnxError(f"spiking parts are quantized as 'tianjicx' or left 'float', got {spiking!r}")
    loaded_here = not isinstance(model, onnx.ModelProto)
    if loaded_here:
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
    # A model loaded here is nobody else's: the graph takes it over instead of a copy, and only its
    # header (IR version, opsets, metadata) is kept apart from it.
    graph = preprocess_graph(model, min_opset=MIN_OPSETS[target], changes=changes, notes=notes, in_place=loaded_here)
    header = copy_except(model, "graph")
    del model
    float_model = export_graph(graph, header)
    float_bytes = _parameter_bytes(float_model)
    release_freed_memory(float_bytes)  # pre-processing's garbage, before calibration's sessions and batches
    if target == "qdq" and reduce_range is None:
        from hnnx.quantization.qdq import default_reduce_range

        reduce_range = default_reduce_range()
    options = TargetOptions(format, frozenset(_excluded_names(graph, exclude)), bit_shift_unit, per_channel, spiking,
                            bool(reduce_range))
    quantizer = TARGET_CLASSES[target](options)
    stats = calibrate(float_model, calibration, quantizer.calibration_tensors(graph), observer=observer,
                      observer_options=observer_options, batch_size=batch_size, num_samples=num_samples,
                      progress=progress, workers=workers, ray=ray)
    stats.simulator = None  # calibration's session is done with: free it before the comparison's
    rewrite = quantizer.rewrite(graph, Statistics.of(stats))
    quantized = _quantized_model(graph, header, f"{target}/{format}", rewrite.output_scales)
    del graph

    report = QuantizationReport(target, format, observer, stats.samples,
                                layers=[asdict(record) for record in rewrite.records],
                                excluded=dict(rewrite.excluded), output_scales=dict(rewrite.output_scales),
                                size_bytes={"float": float_bytes, "quantized": _parameter_bytes(quantized)})
    report.preprocessing = [{"pass": name, "changed": flag, "detail": notes.get(name, "")}
                            for name, flag in changes.items()]
    if target == "qdq":
        report.weight_bits = 7 if reduce_range else 8
    release_freed_memory(float_bytes)  # calibration's session and the rewrite's garbage, before the comparison's sessions
    compare(float_model, quantized, rewrite.tensors, calibration, report, stats.firing_rates, batch_size)
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
    """Bytes of the model's initializers and constant tensors (from their shapes: nothing is decoded)."""
    tensors = [*model.graph.initializer,
               *(attr.t for node in model.graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR)]
    return sum(int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in tensors)


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


def _short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
