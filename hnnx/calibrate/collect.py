"""Run a model over calibration data and stream the statistics of chosen tensors into observers."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from tqdm.auto import tqdm

from hnnx import ops
from hnnx.calibrate.observers import MinMaxObserver, Observer, Threshold, make_observer
from hnnx.calibrate.readers import batches, sample_count
from hnnx.errors import DataError, HnnxError
from hnnx.runtime.session import Simulator, spiking_neurons


PROBE_MEMORY_BUDGET = 128 << 20
"""Bytes the probed and range-reduced tensors of one calibration batch may take by default (a
reduced tensor is not copied out, but onnxruntime's working memory grows with the batch)."""


@dataclass
class CalibrationResult:
    """Statistics gathered by :func:`calibrate`.

    ``observers``: one observer per calibrated tensor, by tensor name; ``currents``: the
    input-current tensor of every top-level spiking neuron (LIF, CubaLIF), by layer name (the node name, else its
    first output); ``current_ranges``: ``(min, max)`` of that current over all samples and
    time steps; ``membrane_ranges``: ``(min, max)`` of the layer's membrane after integration
    over all samples and time steps (replayed by the numpy reference on the probed current; LIF
    layers whose current alone determines it); ``firing_rates``: mean spikes per neuron per time
    step of every spiking layer;
    ``samples``: number of calibration samples run; ``seconds``: wall time; ``simulator``: the
    onnxruntime session that ran the model (it probes every calibrated tensor; a caller that runs
    the same model again, e.g. to compare it with its quantized form, reuses it).
    """

    observers: dict[str, Observer]
    currents: dict[str, str] = field(default_factory=dict)
    current_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    membrane_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    firing_rates: dict[str, float] = field(default_factory=dict)
    spike_counts: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Per spiking layer ``(spikes, neuron-steps)`` over all samples: its firing rate's whole-number parts."""
    samples: int = 0
    seconds: float = 0.0
    simulator: Simulator | None = field(default=None, repr=False)

    def absmax(self, name: str) -> Threshold:
        """Clip threshold ``T > 0`` of tensor ``name`` (an array ``[channels]`` if per channel)."""
        return self._observer(name).absmax()

    def range(self, name: str) -> tuple[Threshold, Threshold]:
        """``(min, max)`` of tensor ``name`` over all calibration samples."""
        return self._observer(name).range()

    def summary(self) -> str:
        """A short human-readable report: thresholds, ranges and firing rates."""
        lines = [f"calibration samples: {self.samples}   time: {self.seconds:.3f} s"]
        for name, observer in self.observers.items():
            low, high = observer.range()
            threshold = observer.absmax()
            if observer.per_channel:
                lines.append(f"  {name}: {observer.name}, {observer.channels} channels (axis {observer.axis}), "
                             f"threshold {np.min(threshold):.6g} … {np.max(threshold):.6g}")
            else:
                lines.append(f"  {name}: {observer.name} threshold {threshold:.6g}, range [{low:.6g}, {high:.6g}]")
        for layer, rate in self.firing_rates.items():
            low, high = self.current_ranges[layer]
            lines.append(f"  neuron {layer}: firing rate {rate:.4f}, input current {self.currents[layer]!r} "
                         f"in [{low:.6g}, {high:.6g}]")
            if layer in self.membrane_ranges:
                v_low, v_high = self.membrane_ranges[layer]
                lines.append(f"    membrane in [{v_low:.6g}, {v_high:.6g}]")
        return "\n".join(lines)

    def _observer(self, name: str) -> Observer:
        try:
            return self.observers[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self.observers) or "none"
            raise HnnxError(f"tensor {name!r} was not calibrated (calibrated: {known})") from None


def calibrate(
    model: onnx.ModelProto | str | os.PathLike,
    data: Any,
    tensors: Sequence[str],
    observer: str = "minmax",
    per_channel: Mapping[str, int] | None = None,
    batch_size: int = 64,
    num_samples: int | None = None,
    progress: bool = False,
    *,
    observer_options: Mapping[str, Any] | None = None,
    threads: int | None = None,
    workers: int | None = None,
    ray: bool | str | None = None,
    memory_budget: int = PROBE_MEMORY_BUDGET,
) -> CalibrationResult:
    """Run ``model`` in onnxruntime over ``data`` and observe ``tensors``; also neuron currents and rates.

    ``data``: any source :func:`hnnx.calibrate.readers.batches` reads (path, dict of arrays,
    iterable of batches, torch DataLoader); ``tensors``: names of the tensors to observe
    (graph inputs, intermediate tensors or outputs); ``observer``: a name in
    :data:`~hnnx.calibrate.observers.OBSERVERS`, built with ``observer_options`` (e.g.
    ``{"percentile": 99.9}``); ``per_channel``: tensor name → channel axis for per-channel
    statistics; ``num_samples``: use at most this many samples; ``threads``: onnxruntime
    intra-op threads; ``memory_budget``: bytes the probed tensors of one batch may take — batches
    are cut smaller than ``batch_size`` to fit (an ImageNet-size CNN probes tens of MB per sample).

    ``workers``: shard the samples over this many local processes; ``ray``: over a Ray cluster (True:
    the running one, else a local one; a string: its address). Each worker calibrates its shard and
    the results merge exactly (:mod:`hnnx.calibrate.parallel`): the same result as one process. The
    data must then be a path, a mapping of arrays or an array (each worker reads its own samples).

    Every top-level spiking neuron (``hnnx.LIF``, ``hnnx.CubaLIF``) additionally gets the range of
    its input current (input 0, probed) and its firing rate over all time steps. Memory does not
    grow with the number of samples: each batch's probed tensors update the observers and are
    dropped.
    """
    from hnnx.model import load

    if not isinstance(model, onnx.ModelProto):
        model = load(model)
    names = list(dict.fromkeys(tensors))
    per_channel = dict(per_channel or {})
    stray = [name for name in per_channel if name not in names]
    if stray:
        raise HnnxError(f"per-channel axis given for tensor {stray[0]!r}, which is not among the calibrated tensors")
    if workers is not None or ray:
        from hnnx.calibrate.parallel import calibrate_in_parallel

        return calibrate_in_parallel(model, data, names, observer=observer, per_channel=per_channel,
                                     batch_size=batch_size, num_samples=num_samples, progress=progress,
                                     observer_options=observer_options, threads=threads, workers=workers, ray=ray,
                                     memory_budget=memory_budget)
    observers = {name: make_observer(observer, per_channel.get(name), **dict(observer_options or {}))
                 for name in names}
    current_of_spikes = _neuron_currents(model)
    # A min/max statistic is reduced inside the graph: only histograms and neuron currents (whose
    # membrane is replayed) copy their tensors out.
    probed = [name for name in names if observers[name].needs_values or name in current_of_spikes.values()]
    ranged = {name: per_channel.get(name) for name in names if name not in probed}
    simulator = Simulator(model, probes=[*probed, *current_of_spikes.values()], threads=threads, ranges=ranged)
    # Layer names as the Simulator's firing-rate taps report them, so rates and ranges share keys.
    currents = {layer.name: current_of_spikes[layer.spikes] for layer in simulator.spiking_layers}
    current_observers = {layer: MinMaxObserver() for layer in currents}
    membrane_observers = {layer: MinMaxObserver() for layer in currents}
    membrane_views = {layer.name: _membrane_view(model, layer.spikes) for layer in simulator.spiking_layers}
    spikes = {layer.name: [0.0, 0] for layer in simulator.spiking_layers}
    # Every probed tensor of a batch is copied out at once: cut batches to the memory budget.
    stream = batches(data, simulator.inputs, simulator.batch_within(memory_budget, batch_size), num_samples)
    samples = 0
    started = time.perf_counter()
    # No bar object at all when progress is off: tqdm's first use costs milliseconds.
    with (tqdm(total=stream.total, unit="sample", leave=False) if progress else contextlib.nullcontext()) as bar:
        for feeds in stream:
            tensors_of_batch, counts = simulator.run(feeds)
            for name, obs in observers.items():
                if name in simulator.last_ranges:
                    _observe_range(obs, name, *simulator.last_ranges[name])
                else:  # probed: a histogram, a neuron current, or a tensor the graph cannot reduce
                    _observe(obs, name, tensors_of_batch[name])
            for layer, current in currents.items():
                _observe(current_observers[layer], current, tensors_of_batch[current])
                if membrane_views[layer] is not None:
                    membrane = ops.LIF.membrane_trace(membrane_views[layer], tensors_of_batch[current])
                    _observe(membrane_observers[layer], f"{layer} membrane", membrane)
            for layer, (total, count) in counts.items():
                spikes[layer][0] += total
                spikes[layer][1] += count
            size = sample_count(feeds, simulator.inputs)
            samples += size
            if bar is not None:
                bar.update(size)
            # Drop this batch's arrays before the next runs, so the peak holds one batch, not two.
            del feeds, tensors_of_batch, counts
    return CalibrationResult(
        observers=observers,
        currents=currents,
        current_ranges={layer: obs.range() for layer, obs in current_observers.items()},
        membrane_ranges={layer: obs.range() for layer, obs in membrane_observers.items() if obs.count},
        firing_rates={layer: (total / count if count else 0.0) for layer, (total, count) in spikes.items()},
        spike_counts={layer: (total, count) for layer, (total, count) in spikes.items()},
        samples=samples,
        seconds=time.perf_counter() - started,
        simulator=simulator,
    )


def _membrane_view(model: onnx.ModelProto, spikes: str) -> Any:
    """The resolved view of the LIF node producing ``spikes`` as a one-output node, for replaying
    its membrane from the probed current; None for a neuron the current alone does not determine
    (another neuron type, initial-state or recurrent inputs)."""
    node = next(n for n in model.graph.node if n.domain == ops.DOMAIN and n.output and n.output[0] == spikes)
    if node.op_type != "LIF" or any(node.input[1:]):
        return None
    view = ops.LIF.view(node)
    return ops.LIF.view_for(view.attrs, [True], 1, view.name)


def _neuron_currents(model: onnx.ModelProto) -> dict[str, str]:
    """Input-current tensor of every top-level spiking neuron, by its spike output."""
    return {node.output[0]: node.input[0] for node in spiking_neurons(model.graph)}


def _observe(observer: Observer, name: str, values: np.ndarray) -> None:
    """Update ``observer``; its errors name tensor ``name``."""
    try:
        observer.update(values)
    except DataError as exc:
        raise DataError(f"tensor {name!r}: {exc}") from None


def _observe_range(observer: Observer, name: str, low: np.ndarray, high: np.ndarray, count: int) -> None:
    """Update ``observer`` with a batch's range; its errors name tensor ``name``."""
    try:
        observer.update_range(low, high, count)
    except DataError as exc:
        raise DataError(f"tensor {name!r}: {exc}") from None
