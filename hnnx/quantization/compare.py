"""The quantization report's comparison of the float and quantized models on calibration samples.

The quantized model runs first and returns its quantized tensors (mostly int8: a quarter of the
float bytes); the float model then takes them as extra inputs and reduces, inside its own graph,
each tensor's signal ``Σ f²`` and noise ``Σ (q·unit − f)²`` to two scalars. No float
activation is ever copied out, so the comparison holds one batch of quantized tensors, not every
float tensor of the network.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from hnnx import ops
from hnnx.runtime.session import append_side_branches

COMPARISON_SAMPLES = 128
COMPARISON_VALUES = 1 << 25
"""The report compares float and quantized tensors on samples up to about this many float values
(every compared tensor of a sample counts): 128 samples of a digits model, the floor of
:data:`MIN_COMPARISON_SAMPLES` on an ImageNet-size CNN, whose millions of activation values
per tensor and sample give each tensor's SQNR without running both models over many samples."""
MIN_COMPARISON_SAMPLES = 4
"""The fewest calibration samples the report's float-vs-quantized comparison runs on."""
COMPARE_PREFIX = "hnnx.compare."


def compare(float_model: onnx.ModelProto, quantized: onnx.ModelProto, tensors: Mapping[str, tuple[str, float]],
            calibration: Any, report: Any, float_rates: Mapping[str, float], batch_size: int) -> None:
    """Fill ``report``'s comparison fields from (up to :data:`COMPARISON_SAMPLES` of, and about
    :data:`COMPARISON_VALUES` float values of) the calibration samples it counts: SQNR of every
    output and of every quantized tensor (``tensors``: float name → quantized name and real value
    per unit), saturated values, firing-rate drift and SynOps per sample.

    ``float_model`` becomes the error graph (the comparison's inputs and reductions are added to it
    in place: the caller's float model is spent); ``float_rates``: the firing rates calibration
    measured on the float model.
    """
    from hnnx.calibrate import batches
    from hnnx.calibrate.collect import PROBE_MEMORY_BUDGET
    from hnnx.quantization.api import output_scales
    from hnnx.runtime.session import Simulator

    requantized = [n.output[0] for n in quantized.graph.node if n.domain == ops.DOMAIN and n.op_type == "Requantize"]
    fan_outs = _spike_fan_outs(quantized)
    float_names = _tensor_names(float_model)
    quantized_names = _tensor_names(quantized)
    scales = output_scales(quantized)
    pairs = {name: pair for name, pair in tensors.items() if name in float_names and pair[0] in quantized_names}
    outputs = {o.name: (o.name, scales.get(o.name, 1.0)) for o in float_model.graph.output}
    compared = {**pairs, **outputs}
    candidate = Simulator(quantized, probes=[*requantized, *fan_outs, *(q for q, _ in pairs.values())])
    reference = None  # built on the first batch: its extra inputs take the quantized tensors' actual types
    errors = {name: [0.0, 0.0, 0, 0] for name in compared}  # signal, noise, saturated, elements
    spikes: dict[str, list[float]] = {}
    saturated = dict.fromkeys(requantized, 0)
    synops = 0.0
    samples = 0
    # One batch of the quantized probes is held, and the float side computes q·unit and the error
    # of every tensor in float32 (each freed in turn, but onnxruntime's arena keeps its high-water
    # mark): batches hold a quarter of the probe budget at float size.
    per_sample = candidate.values_per_sample()  # 0 if no shape is known: then counted on the first batch
    batch = max(1, min(batch_size, PROBE_MEMORY_BUDGET // 4 // (4 * max(1, per_sample))))
    # Only samples calibration used (a source is read no further than ``num_samples`` asked), and
    # no more than the value budget allows.
    wanted = min(COMPARISON_SAMPLES, report.calibration_samples,
                 max(MIN_COMPARISON_SAMPLES, COMPARISON_VALUES // max(1, per_sample)))
    for feeds in batches(calibration, candidate.inputs, batch, num_samples=wanted):
        if samples >= wanted:
            break
        got, counts = candidate.run(feeds)
        size = next(iter(feeds.values())).shape[candidate.inputs[0].batch_axis]
        if not per_sample:
            per_sample = max(1, sum(got[q].size for q, _ in compared.values()) // max(size, 1))
            wanted = min(wanted, max(MIN_COMPARISON_SAMPLES, COMPARISON_VALUES // per_sample))
        if reference is None:
            sums = _add_error_sums(float_model, {name: (q, unit, got[q].dtype) for name, (q, unit) in compared.items()})
            reference = Simulator(float_model, firing_rates=False)
        samples += size
        sums_of_batch, _ = reference.run({**feeds, **{feed: got[q] for feed, q in sums.feeds.items()}})
        for name, (quantized_name, _) in compared.items():
            real = got[quantized_name]
            entry = errors[name]
            entry[0] += float(sums_of_batch[sums.signal[name]])
            entry[1] += float(sums_of_batch[sums.noise[name]])
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
        del got, feeds
    report.compared_samples = samples
    report.sqnr_db = {name: sqnr(*errors[name][:2]) for name in outputs}
    report.tensor_errors = sorted(({"tensor": name, "quantized_tensor": pairs[name][0], "unit": pairs[name][1],
                                    "sqnr_db": sqnr(signal, noise), "saturated": sat, "elements": size}
                                   for name, (signal, noise, sat, size) in errors.items() if name in pairs),
                                  key=lambda e: e["sqnr_db"])
    report.firing_rates = {name: {"float": float(float_rates.get(name, float("nan"))),
                                  "quantized": total / count if count else 0.0}
                           for name, (total, count) in spikes.items()}
    report.saturated = {name.rsplit(".", 1)[0]: count for name, count in saturated.items()}
    report.synops_per_sample = synops / max(samples, 1)


class _ErrorSums:
    """Names in the error graph: the quantized tensor each extra input takes, and each compared
    float tensor's signal and noise outputs."""

    def __init__(self) -> None:
        self.feeds: dict[str, str] = {}
        self.signal: dict[str, str] = {}
        self.noise: dict[str, str] = {}


def _add_error_sums(model: onnx.ModelProto, compared: Mapping[str, tuple[str, float, np.dtype]]) -> _ErrorSums:
    """Add to the float ``model``, for each compared float tensor (→ its quantized tensor, the
    real value per unit, the quantized tensor's dtype), an input taking the quantized tensor and
    two scalar outputs: ``Σ f²`` and ``Σ (q·unit − f)²``, in float32 (a sum's relative error stays
    near 1e-5 on a million values: hundredths of a dB would take a thousand times that)."""
    from hnnx.passes.intake import standard_opset

    opset = standard_opset(model)
    sums = _ErrorSums()
    branches = []
    for index, (name, (quantized_name, unit, dtype)) in enumerate(compared.items()):
        prefix = f"{COMPARE_PREFIX}{index}."
        fed, scale, real, reference, difference, signal, noise = (
            prefix + s for s in ("quantized", "unit", "real", "float", "difference", "signal", "noise"))
        model.graph.input.append(helper.make_tensor_value_info(fed, helper.np_dtype_to_tensor_dtype(dtype), None))
        unit_value = helper.make_tensor(scale, TensorProto.FLOAT, [], [unit])
        branch = [helper.make_node("Constant", [], [scale], value=unit_value)]
        if dtype in (np.int8, np.uint8, np.int32) and opset >= 10:
            branch.append(helper.make_node("DequantizeLinear", [fed, scale], [real]))  # q·unit in one pass
        else:
            branch += [helper.make_node("Cast", [fed], [prefix + "as_float"], to=TensorProto.FLOAT),
                       helper.make_node("Mul", [prefix + "as_float", scale], [real])]
        branches.append([
            *branch,
            helper.make_node("Cast", [name], [reference], to=TensorProto.FLOAT),  # removed where f is float already
            helper.make_node("Sub", [real, reference], [difference]),
            helper.make_node("ReduceSumSquare", [reference], [signal], keepdims=0),
            helper.make_node("ReduceSumSquare", [difference], [noise], keepdims=0),
        ])
        model.graph.output.extend([helper.make_tensor_value_info(signal, TensorProto.FLOAT, []),
                                   helper.make_tensor_value_info(noise, TensorProto.FLOAT, [])])
        sums.feeds[fed], sums.signal[name], sums.noise[name] = quantized_name, signal, noise
    append_side_branches(model.graph, branches)  # each float tensor is freed once its sums are taken
    return sums


def sqnr(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB; infinite where the quantized tensor is exact."""
    if noise == 0.0:
        return math.inf
    return float(10 * np.log10(max(signal, 1e-30) / noise))


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
