"""Data-parallel calibration: the samples sharded over workers (:mod:`hnnx.runtime.parallel`), each
running :func:`hnnx.calibrate.calibrate` on its shard, the results merged exactly.

Every statistic calibration keeps merges without loss: observers through :meth:`Observer.merge`
(min/max, and histograms whose binning depends on the maximum alone), input-current and membrane
ranges as min/max, firing rates as whole-number spike and element counts. The merged result — and
so the model :func:`hnnx.quantize` writes from it — equals one process's on the same samples.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import onnx

from hnnx.calibrate.collect import CalibrationResult, _neuron_currents, calibrate
from hnnx.calibrate.observers import make_observer
from hnnx.calibrate.readers import (_fixed_batch_message, fixed_batch, in_memory_arrays, is_indexed, range_batches,
                                    sample_total)
from hnnx.errors import DataError
from hnnx.runtime.data import graph_inputs
from hnnx.runtime.parallel import Shard, plan_workers, run_shards, shard_payloads, shard_ranges
from hnnx.runtime.session import Simulator


def calibrate_in_parallel(model: onnx.ModelProto, data: Any, tensors: Sequence[str], *, observer: str,
                          per_channel: Mapping[str, int], batch_size: int, num_samples: int | None, progress: bool,
                          observer_options: Mapping[str, Any] | None, threads: int | None, workers: int | None,
                          ray: bool | str | None, memory_budget: int) -> CalibrationResult:
    """:func:`hnnx.calibrate.calibrate` with ``workers`` local processes or on Ray (``ray``); arguments
    as there. ``data`` must be indexed (a path, a mapping of arrays or an array): each worker reads
    its own samples. The coordinator's session (``result.simulator``, which quantization reuses to
    compare the float and quantized models) is built here first, so a bad tensor name fails before
    any worker starts."""
    if not is_indexed(data):
        raise DataError(f"calibration on workers reads each shard's samples from its index on: give the data as a "
                        f".npz/.npy path or a dict of arrays, not {type(data).__name__} (an iterable is read in one "
                        f"process: drop workers/ray)")
    if batch_size < 1:
        raise DataError(f"batch size must be ≥ 1, got {batch_size}")
    if num_samples is not None and num_samples < 1:
        raise DataError(f"number of calibration samples must be ≥ 1, got {num_samples}")
    started = time.perf_counter()
    names = list(dict.fromkeys(tensors))
    make_observer(observer, None, **dict(observer_options or {}))  # a bad observer or option fails here
    simulator = Simulator(model, probes=[*names, *_neuron_currents(model).values()], threads=threads)
    inputs = graph_inputs(model)
    fixed = fixed_batch(inputs)
    batch_size = fixed or batch_size  # as batches() does: such a model takes exactly this many per run
    arrays = in_memory_arrays(data, inputs)
    source = data if arrays is None else arrays
    total = sample_total(source, inputs, num_samples)
    if fixed is not None and total % fixed:
        raise DataError(_fixed_batch_message(inputs, fixed, total))
    plan = plan_workers(workers, ray, threads)
    shards = shard_ranges(total, batch_size, plan.count)
    options = {"observer": observer, "per_channel": dict(per_channel), "batch_size": batch_size,
               "observer_options": dict(observer_options or {}), "threads": plan.threads,
               "memory_budget": memory_budget}
    parts = run_shards(_calibrate_shard, (model.SerializeToString(), names, options),
                       shard_payloads(source, inputs, shards), shards, plan, progress)
    merged = merge_results(parts)
    merged.simulator = simulator
    merged.seconds = time.perf_counter() - started
    return merged


def merge_results(parts: Sequence[CalibrationResult]) -> CalibrationResult:
    """One :class:`CalibrationResult` of calibrations of the same model and tensors on disjoint samples,
    equal to one calibration on all of them (``parts[0]``'s observers absorb the others')."""
    first = parts[0]
    merged = CalibrationResult(observers=dict(first.observers), currents=dict(first.currents),
                               current_ranges=dict(first.current_ranges), membrane_ranges=dict(first.membrane_ranges),
                               spike_counts=dict(first.spike_counts), samples=first.samples)
    for part in parts[1:]:
        for name, observer in merged.observers.items():
            observer.merge(part.observers[name])
        for ranges, theirs in ((merged.current_ranges, part.current_ranges),
                               (merged.membrane_ranges, part.membrane_ranges)):
            for layer, (low, high) in theirs.items():
                mine = ranges.get(layer, (low, high))
                ranges[layer] = (min(mine[0], low), max(mine[1], high))
        for layer, (total, count) in part.spike_counts.items():
            mine = merged.spike_counts.get(layer, (0.0, 0))
            # Spike sums are whole numbers (exact in float64): these sums are one pass's sums.
            merged.spike_counts[layer] = (mine[0] + total, mine[1] + count)
        merged.samples += part.samples
    merged.firing_rates = {layer: (total / count if count else 0.0)
                           for layer, (total, count) in merged.spike_counts.items()}
    return merged


def _calibrate_shard(common: tuple[bytes, list[str], dict[str, Any]], payload: Any, shard: Shard
                     ) -> CalibrationResult:
    """A worker's part of :func:`calibrate_in_parallel`: calibrate on samples ``shard.start:shard.stop``
    (``payload``: the data's path, or the shard's arrays)."""
    model_bytes, names, options = common
    model = onnx.load_from_string(model_bytes)
    start, stop = (shard.start, shard.stop) if isinstance(payload, str) else (0, shard.stop - shard.start)
    stream = range_batches(payload, graph_inputs(model), options["batch_size"], start, stop)
    result = calibrate(model, stream, names, **options)
    result.simulator = None  # a session stays in its process; the coordinator has its own
    return result


__all__ = ["calibrate_in_parallel", "merge_results"]
