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
from hnnx.runtime.data import TensorSpec, is_time_major, load_dataset
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

    def summary(self) -> str:
        """A short human-readable report."""
        lines = [f"samples: {self.samples}   time: {self.seconds:.3f} s "
                 f"({self.samples / max(self.seconds, 1e-9):,.0f} samples/s)"]
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
) -> SimulationResult:
    """Run ``model`` over every sample of ``data`` in batches of ``batch_size``.

    ``data``: a dataset path or dict of arrays (see :mod:`hnnx.runtime.data`);
    ``labels``: class indices ``[N]`` (default: the ``labels`` array of ``data``);
    ``probes``: names of intermediate tensors to record; ``progress``: show a progress bar;
    ``native``: use the native LIF kernel (None: when available; see :class:`Simulator`).
    """
    from hnnx.model import load

    if batch_size < 1:
        raise DataError(f"batch size must be ≥ 1, got {batch_size}")
    if not isinstance(model, onnx.ModelProto):
        model = load(model)
    simulator = Simulator(model, probes=probes, threads=threads, native=native)
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
            bar.update(stop - start)
    seconds = time.perf_counter() - started
    joined = {}
    for name, parts in collected.items():
        preferred = simulator.batch_axes.get(name, specs[name].batch_axis)
        joined[name] = _join(name, parts, preferred, batch_sizes)
    output_names = [spec.name for spec in simulator.outputs]
    result = SimulationResult(
        outputs={name: joined[name] for name in output_names},
        probes={spec.name: joined[spec.name] for spec in simulator.probes},
        firing_rates={name: (total / count if count else 0.0) for name, (total, count) in spike_sums.items()},
        samples=dataset.size,
        seconds=seconds,
    )
    if dataset.labels is not None:
        result.accuracy = accuracy(joined[output_names[0]], dataset.labels, simulator.outputs[0])
    return result


def accuracy(output: np.ndarray, labels: np.ndarray, spec: TensorSpec | None = None) -> float:
    """Fraction of samples whose arg-max over classes equals ``labels``.

    ``output``: ``[N, C]`` scores, or ``[T, N, C]`` for a time-major output (averaged over
    time, i.e. rate decoding).
    """
    scores = output.mean(axis=0) if spec is not None and is_time_major(spec.dims) else output
    if scores.shape[0] != labels.shape[0]:
        raise HnnxError(f"output {spec.name if spec else ''!r} has {scores.shape[0]} samples "
                        f"but there are {labels.shape[0]} labels")
    predicted = scores.reshape(scores.shape[0], -1).argmax(axis=1)
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
