"""Batched simulation of a model over a dataset: outputs, accuracy, firing rates, probes."""

from __future__ import annotations

import io
import os
import time
import zipfile
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx
from tqdm.auto import tqdm

from hnnx.errors import DataError, HnnxError
from hnnx.runtime.data import TensorSpec, graph_inputs, is_time_major, load_dataset, spec_of
from hnnx.runtime.session import Simulator


@dataclass
class SimulationResult:
    """What a simulation produced.

    ``outputs``/``probes``: arrays concatenated over batches on each tensor's batch axis;
    ``accuracy``: fraction of samples whose arg-max class equals the label (time-major
    outputs are averaged over time first), None without labels; ``firing_rates``: mean
    spikes per neuron per step of every LIF layer; ``seconds``: wall time of the runs.
    """

    outputs: dict[str, np.ndarray]
    probes: dict[str, np.ndarray] = field(default_factory=dict)
    accuracy: float | None = None
    firing_rates: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0
    chunk_steps: int | None = None
    """Steps per call when the sequence ran in chunks with the state carried; None: all at once."""
    whole_sequence: dict[str, str] = field(default_factory=dict)
    """Stateful nodes a chunked run still ran on the whole sequence, with the reason."""
    labels: np.ndarray | None = None
    """The class index of every sample ``[N]``, when labels were given."""
    predicted: np.ndarray | None = None
    """The arg-max class of every sample ``[N]`` (as :attr:`accuracy` counts it), when labels were given."""
    workers: str = ""
    """Where the samples ran when they were sharded over workers (e.g. ``2 worker processes``)."""
    event_layers: list = field(default_factory=list)
    """What the event-driven rewrite decided for each spike-input layer
    (:class:`hnnx.passes.events.EventLayer`)."""

    def summary(self) -> str:
        """A short human-readable report."""
        lines = [f"samples: {self.samples}   time: {self.seconds:.3f} s "
                 f"({self.samples / max(self.seconds, 1e-9):,.0f} samples/s)"
                 + (f"   in chunks of {self.chunk_steps} steps" if self.chunk_steps else "")
                 + (f"   on {self.workers}" if self.workers else "")]
        for node, reason in self.whole_sequence.items():
            lines.append(f"note: {node} ran on the whole sequence: {reason}")
        for layer in self.event_layers:
            lines.append(f"{'event-driven' if layer.rewritten else 'dense'}: {layer.name} "
                         f"({'hnnx.' + layer.op if layer.rewritten else layer.reason})")
        if self.accuracy is not None:
            lines.append(f"accuracy: {100 * self.accuracy:.2f} %")
        if self.firing_rates:
            width = max(len(name) for name in self.firing_rates)
            lines.append("firing rates (spikes per neuron per step):")
            lines += [f"  {name:<{width}}  {rate:.4f}" for name, rate in self.firing_rates.items()]
        for name, array in {**self.outputs, **self.probes}.items():
            kind = "probe" if name in self.probes and name not in self.outputs else "output"
            lines.append(f"{kind} {name}: {array.dtype} {list(array.shape)}")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> None:
        """Write outputs and probes (keyed by tensor name) to an ``.npz`` file, atomically."""
        from hnnx.model import write_atomic

        write_atomic(path, npz_bytes({**self.probes, **self.outputs}))


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` archive of ``arrays`` (any key, even ``file``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def simulate(
    model: onnx.ModelProto | str | os.PathLike,
    data: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    labels: str | os.PathLike | np.ndarray | None = None,
    batch_size: int = 64,
    probes: Sequence[str] = (),
    threads: int | None = None,
    progress: bool = False,
    native: bool | None = None,
    chunk_steps: int | None = None,
    memory_limit: int | None = None,
    workers: int | None = None,
    ray: bool | str | None = None,
    event_driven: str = "auto",
    event_rates: Mapping[str, float] | None = None,
    event_float: bool = False,
) -> SimulationResult:
    """Run ``model`` over every sample of ``data`` in batches of ``batch_size``.

    ``data``: a dataset path or dict of arrays (see :mod:`hnnx.runtime.data`);
    ``labels``: class indices ``[N]`` (default: the ``labels`` array of ``data``);
    ``probes``: names of intermediate tensors to record; ``progress``: show a progress bar;
    ``native``: use the native LIF kernel (None: when available; see :class:`Simulator`).
    ``chunk_steps``: run each batch's sequence K steps at a time with every layer's state
    carried (:mod:`hnnx.runtime.stream`; outputs, probes, firing rates and accuracy are
    bit-identical to the whole run); 0: the whole sequence at once; None: chunks only when the
    whole sequence would not fit ``memory_limit`` bytes (default: half the available memory).
    ``workers``: shard the samples over this many local processes, each with its own session;
    ``ray``: run the shards on a Ray cluster (True: the running one, else a local one; a string:
    its address). Either way the result equals one process's bit for bit
    (:mod:`hnnx.runtime.parallel`); ``threads`` is then per worker and ``memory_limit`` is shared.
    ``event_driven``: ``"auto"`` runs integer spike-input layers on the event-driven kernels when
    their firing rate pays (``event_rates`` by spiking node, else measured on the first batch) and
    integer layers as exact float layers; ``"on"`` every spike-input layer, float ones too (their
    summation order changes); ``"off"`` none (:mod:`hnnx.passes.events`). ``event_float``: with
    ``"auto"``, float spike-input layers are decided by their firing rate too (opting in to their
    changed summation order). Whole-sequence runs in one process only; chunked and sharded runs use
    the layers as they are.
    """
    from hnnx.model import load

    if batch_size < 1:
        raise DataError(f"batch size must be ≥ 1, got {batch_size}")
    if chunk_steps is not None and chunk_steps < 0:
        raise DataError(f"chunk steps must be ≥ 1 (0: the whole sequence at once), got {chunk_steps}")
    if not isinstance(model, onnx.ModelProto):
        model = load(model)
    if workers is not None or ray:
        from hnnx.runtime.parallel import simulate_parallel

        return simulate_parallel(model, data, labels=labels, batch_size=batch_size, probes=probes, threads=threads,
                                 progress=progress, native=native, chunk_steps=chunk_steps,
                                 memory_limit=memory_limit, workers=workers, ray=ray)
    return joined(collect_batches(model, data, labels=labels, batch_size=batch_size, probes=probes, threads=threads,
                                  progress=progress, native=native, chunk_steps=chunk_steps,
                                  memory_limit=memory_limit, event_driven=event_driven, event_rates=event_rates,
                                  event_float=event_float))


@dataclass
class Batches:
    """What a run over a dataset collected, batch by batch, before :func:`joined` puts it together:
    per tensor, its value in each batch; per spiking layer, ``[spike sum, element count]``; the batch
    sizes; the labels (``[N]``, or None); the tensors' specs and sample axes; the steps per call
    (None: whole sequences) and the stateful nodes a chunked run ran on the whole sequence."""

    tensors: dict[str, list[np.ndarray]]
    spike_sums: dict[str, list[float]]
    batch_sizes: list[int]
    labels: np.ndarray | None
    samples: int
    seconds: float
    outputs: list[TensorSpec]
    probes: list[TensorSpec]
    batch_axes: dict[str, int]
    chunk_steps: int | None = None
    whole_sequence: dict[str, str] = field(default_factory=dict)
    event_layers: list = field(default_factory=list)


def collect_batches(model: onnx.ModelProto, data: str | os.PathLike | Mapping[str, np.ndarray], *,
                    labels: str | os.PathLike | np.ndarray | None, batch_size: int, probes: Sequence[str],
                    threads: int | None, progress: bool, native: bool | None, chunk_steps: int | None,
                    memory_limit: int | None, event_driven: str = "off",
                    event_rates: Mapping[str, float] | None = None, event_float: bool = False) -> Batches:
    """Run ``model`` over ``data`` in one process (arguments as :func:`simulate`); the batches' results."""
    parts = None
    if chunk_steps is None:
        chunk_steps, parts = _auto_chunk(model, data, batch_size, memory_limit)
    if chunk_steps:
        from hnnx.runtime.stream import run_chunked

        from hnnx.runtime.session import _infer_types_and_batch_axes

        run = run_chunked(model, data, labels=labels, batch_size=batch_size, probes=probes, threads=threads,
                          progress=progress, native=native, chunk_steps=chunk_steps, memory_limit=memory_limit,
                          parts=parts)
        outputs = [spec_of(vi) for vi in model.graph.output]
        probe_specs = [TensorSpec(name, np.dtype("float32"), None) for name in dict.fromkeys(probes)]
        _, batch_axes = _infer_types_and_batch_axes(model, run.inputs)  # the whole run's sample axes
        return Batches(run.tensors, run.spike_sums, run.batch_sizes, run.labels, run.samples, run.seconds,
                       outputs, probe_specs, batch_axes, run.chunk_steps,
                       run.whole_sequence if run.chunk_steps else {})
    simulator = Simulator(model, probes=probes, threads=threads, native=native, event_driven=event_driven,
                          event_rates=event_rates, event_float=event_float)
    dataset = load_dataset(data, simulator.inputs, labels)
    collected: dict[str, list[np.ndarray]] = {}
    spike_sums = {layer.name: [0.0, 0] for layer in simulator.spiking_layers}
    specs = {spec.name: spec for spec in [*simulator.outputs, *simulator.probes]}
    batch_sizes: list[int] = []
    started = time.perf_counter()
    with tqdm(total=dataset.size, unit="sample", disable=not progress, leave=False) as bar:
        for start in range(0, dataset.size, batch_size):
            stop = min(start + batch_size, dataset.size)
            tensors, counts = simulator.run(dataset.batch(simulator.inputs, start, stop))
            batch_sizes.append(stop - start)
            for name, value in tensors.items():
                collected.setdefault(name, []).append(value)
            for name, (total, count) in counts.items():
                spike_sums[name][0] += total
                spike_sums[name][1] += count
            if simulator.event_rates_wanted and stop < dataset.size:  # decide on the rates just measured
                from hnnx.passes.events import decide_on_measured

                rates, layers, rewrite = decide_on_measured(simulator.event_layers,
                                                            {**counts, **simulator.last_event_counts}, event_rates)
                if rewrite:
                    simulator = Simulator(model, probes=probes, threads=threads, native=native,
                                          event_driven=event_driven, event_rates=rates, event_float=event_float)
                else:
                    simulator.event_layers, simulator.event_rates_wanted = layers, False
            bar.update(stop - start)
    seconds = time.perf_counter() - started
    return Batches(collected, spike_sums, batch_sizes, dataset.labels, dataset.size, seconds, simulator.outputs,
                   simulator.probes, simulator.batch_axes, event_layers=simulator.event_layers)


def joined(batches: Batches) -> SimulationResult:
    """Join the batches' tensors and count accuracy and firing rates."""
    tensors = {}
    for spec in [*batches.outputs, *batches.probes]:
        preferred = batches.batch_axes.get(spec.name, spec.batch_axis)
        tensors[spec.name] = _join(spec.name, batches.tensors[spec.name], preferred, batches.batch_sizes)
    result = SimulationResult(
        outputs={spec.name: tensors[spec.name] for spec in batches.outputs},
        probes={spec.name: tensors[spec.name] for spec in batches.probes},
        firing_rates={name: (total / count if count else 0.0) for name, (total, count) in batches.spike_sums.items()},
        samples=batches.samples,
        seconds=batches.seconds,
        chunk_steps=batches.chunk_steps,
        whole_sequence=dict(batches.whole_sequence),
        event_layers=list(batches.event_layers),
    )
    if batches.labels is not None:
        first = batches.outputs[0]
        result.labels = batches.labels
        result.predicted = predictions(tensors[first.name], first)
        result.accuracy = accuracy(tensors[first.name], batches.labels, first)
    return result


def _auto_chunk(model: onnx.ModelProto, data: str | os.PathLike | Mapping[str, np.ndarray], batch_size: int,
                memory_limit: int | None) -> tuple[int | None, object]:
    """Steps per call when the whole sequence of a batch would not fit the memory budget, with
    the model's stepwise parts; ``(None, None)`` to run the whole sequence at once (also when the
    model has no stateful node or the data cannot be read here — the whole run reports why)."""
    from hnnx.runtime.data import input_parts

    if not _stateful(model):
        return None, None
    try:
        specs = graph_inputs(model)
        _, arrays = input_parts(data, specs, mmap=True)
        samples = sum(int(np.shape(part[specs[0].name])[specs[0].batch_axis]) for part in arrays)
        shapes = {spec.name: tuple(np.shape(arrays[0][spec.name])) for spec in specs}
    except HnnxError:
        return None, None
    return chunk_for(model, shapes, samples, batch_size, memory_limit)


def chunk_for(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], samples: int, batch_size: int,
              memory_limit: int | None) -> tuple[int | None, object]:
    """Steps per call for data whose (first file's) arrays have ``shapes`` and ``samples`` samples in
    all (see :func:`_auto_chunk`), with the model's stepwise parts; ``(None, None)``: all at once."""
    from hnnx.runtime.stream import choose_chunk, symbols_of
    from hnnx.passes.stepwise import stepwise_parts

    if not _stateful(model):
        return None, None
    try:
        parts = stepwise_parts(model)
        specs = graph_inputs(model)
        steps = parts.steps
        for name in parts.time_inputs:
            steps = int(shapes[name][0])
        batch = min(batch_size, samples)
        chunk = choose_chunk(parts, steps, symbols_of(parts, shapes, specs, batch), memory_limit) if steps else None
    except HnnxError:
        return None, None
    return chunk, parts


def _stateful(model: onnx.ModelProto) -> bool:
    """Whether a node of ``model`` carries state from step to step (only those run in chunks)."""
    from hnnx import ops

    return any(ops.declaration(n.op_type).state_spec(ops.declaration(n.op_type).view(n))
               for n in ops.hnnx_nodes(model.graph) if n.op_type in ops.REGISTRY)


def predictions(output: np.ndarray, spec: TensorSpec | None = None) -> np.ndarray:
    """The arg-max class of every sample ``[N]``.

    ``output``: ``[N, C]`` scores, or ``[T, N, C]`` for a time-major output (averaged over
    time, i.e. rate decoding).
    """
    scores = output.mean(axis=0) if spec is not None and is_time_major(spec.dims) else output
    return scores.reshape(scores.shape[0], -1).argmax(axis=1)


def accuracy(output: np.ndarray, labels: np.ndarray, spec: TensorSpec | None = None) -> float:
    """Fraction of samples whose arg-max over classes (:func:`predictions`) equals ``labels``."""
    predicted = predictions(output, spec)
    if predicted.shape[0] != labels.shape[0]:
        raise HnnxError(f"output {spec.name if spec else ''!r} has {predicted.shape[0]} samples "
                        f"but there are {labels.shape[0]} labels")
    return float((predicted == labels).mean())


def _join(name: str, parts: list[np.ndarray], preferred: int, batch_sizes: list[int]) -> np.ndarray:
    """Concatenate per-batch arrays on their sample axis.

    The sample axis is ``preferred`` (from shape inference or a time-major dim name) when the
    batch sizes fit it, else the first axis that fits them; a tensor that does not depend on
    the batch (same shape in every batch, no axis fits) is returned from the first batch.
    """
    if parts[0].ndim == 0:
        return np.stack(parts)
    fits = [axis for axis in range(parts[0].ndim)
            if all(part.shape[axis] == size for part, size in zip(parts, batch_sizes))]
    if not fits:
        if all(part.shape == parts[0].shape for part in parts):
            return parts[0]
        raise HnnxError(f"tensor {name!r}: no axis of its shape {list(parts[0].shape)} holds the samples")
    axis = preferred if preferred in fits else fits[0]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
