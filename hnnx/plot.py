"""Pictures of runs and quantizations, as PNG files (matplotlib's headless ``Agg`` backend).

* :func:`simulation_plots` — of a :class:`~hnnx.runtime.simulate.SimulationResult`: a spike raster
  (neurons × time steps, one panel per sample for the first few samples) of every spike train among
  its outputs and probes, the distribution of the neurons' firing rates in each of them next to
  every spiking layer's mean rate, and the confusion matrix when the run had labels;
* :func:`quantization_plots` — of a :class:`~hnnx.quantization.QuantizationReport`: the SQNR and the
  saturated share of every quantized tensor (worst first, as the report's ``tensor_errors``), and
  every spiking layer's firing rate in the float model against the quantized one;
* :func:`run_plots` — rasters and firing-rate distributions of the spike trains in a saved run
  (the ``.npz`` of ``hnnx simulate -o``).

A spike train is an array ``[T, N, ...]`` (time first, samples second, as hnnx's neurons emit them)
of zeros and ones. matplotlib is an optional dependency (``pip install 'hnnx[plot]'``); without it
every function raises :class:`~hnnx.errors.HnnxError` saying how to install it.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hnnx.errors import DataError, HnnxError

RASTER_SAMPLES = 3
"""Samples drawn in a raster, one panel each."""
RASTER_NEURONS = 512
"""Neurons drawn in a raster panel at most (the first ones of the flattened features)."""
RATE_BINS = 20
PANEL_COLUMNS = 3


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless ``Agg`` backend; HnnxError with the install hint without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from hnnx.chip.report import PLOT_HINT

        raise HnnxError(f"plots need matplotlib: {PLOT_HINT}") from None
    return plt


def write_png(figure: Any, path: str | os.PathLike) -> Path:
    """Write ``figure`` as a PNG file, atomically, and close it."""
    from hnnx.model import write_atomic

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(figure)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def is_spike_train(array: np.ndarray) -> bool:
    """Whether ``array`` is ``[T, N, ...]`` zeros and ones (a spike train of a layer)."""
    array = np.asarray(array)
    if array.ndim < 3 or array.size == 0 or array.dtype.kind not in "biuf":
        return False
    return bool(np.all((array == 0) | (array == 1)))


# --------------------------------------------------------------------------- figures
def raster_figure(name: str, spikes: np.ndarray, samples: int = RASTER_SAMPLES, neurons: int = RASTER_NEURONS) -> Any:
    """Spike rasters of ``spikes`` ``[T, N, ...]``: one panel per sample (the first ``samples``), a dot at
    (step, neuron) for every spike of the first ``neurons`` neurons (features flattened)."""
    plt = pyplot()
    steps, count = spikes.shape[0], spikes.shape[1]
    flat = spikes.reshape(steps, count, -1)
    shown = min(neurons, flat.shape[2])
    panels = min(samples, count)
    figure, axes = plt.subplots(panels, 1, figsize=(7, 1.2 + 2.0 * panels), sharex=True, squeeze=False)
    for sample, panel in zip(range(panels), axes[:, 0]):
        times, cells = np.nonzero(flat[:, sample, :shown])
        panel.scatter(times, cells, s=4, marker="|", color="black", linewidths=0.8)
        panel.set_xlim(-0.5, steps - 0.5)
        panel.set_ylim(-0.5, shown - 0.5)
        panel.set_ylabel("neuron")
        panel.set_title(f"sample {sample}: {len(times):,} spikes", fontsize="small")
    axes[-1, 0].set_xlabel("time step")
    which = f"neurons 0–{shown - 1} of {flat.shape[2]}" if shown < flat.shape[2] else f"{shown} neurons"
    figure.suptitle(f"{name}  ({which}, {steps} steps)")
    return figure


def firing_rate_figure(trains: Mapping[str, np.ndarray], layer_rates: Mapping[str, float] | None = None) -> Any:
    """One histogram per spike train of its neurons' firing rates (spikes per step, over all samples and
    steps), and one bar panel of every spiking layer's mean rate (``layer_rates``) when given."""
    plt = pyplot()
    panels = len(trains) + (1 if layer_rates else 0)
    if panels == 0:
        raise HnnxError("no spike train and no firing rate to plot")
    figure, axes = _panel_grid(plt, panels)
    for panel, (name, spikes) in zip(axes, trains.items()):
        rates = spikes.reshape(spikes.shape[0] * spikes.shape[1], -1).mean(axis=0, dtype=np.float64)
        panel.hist(rates, bins=np.linspace(0, 1, RATE_BINS + 1), color="tab:blue")
        panel.set_title(f"{name}\nmean {rates.mean():.4f}", fontsize="small")
        panel.set_xlabel("firing rate (spikes per step)")
        panel.set_ylabel("neurons")
    if layer_rates:
        panel = axes[len(trains)]
        names = list(layer_rates)
        panel.barh(range(len(names)), [layer_rates[n] for n in names], color="tab:orange")
        panel.set_yticks(range(len(names)), names, fontsize="small")
        panel.invert_yaxis()
        panel.set_xlabel("mean firing rate (spikes per neuron per step)")
        panel.set_title("every spiking layer", fontsize="small")
    return figure


def confusion_figure(labels: np.ndarray, predicted: np.ndarray) -> Any:
    """The confusion matrix of ``predicted`` against ``labels`` (class indices ``[N]``): true class in
    rows, predicted in columns, counts in the cells; the accuracy in the title."""
    plt = pyplot()
    classes = int(max(labels.max(initial=0), predicted.max(initial=0))) + 1
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    figure, panel = plt.subplots(figsize=(1.5 + 0.45 * classes, 1.2 + 0.45 * classes))
    panel.imshow(matrix, cmap="Blues")
    if classes <= 20:
        top = matrix.max() or 1
        for (row, column), value in np.ndenumerate(matrix):
            if value:
                panel.text(column, row, str(value), ha="center", va="center", fontsize="x-small",
                           color="white" if value > top / 2 else "black")
    panel.set_xticks(range(classes))
    panel.set_yticks(range(classes))
    panel.set_xlabel("predicted class")
    panel.set_ylabel("true class")
    panel.set_title(f"accuracy {100 * float(np.mean(labels == predicted)):.2f} % ({len(labels):,} samples)")
    return figure


def quantization_error_figure(tensor_errors: Sequence[Mapping[str, Any]]) -> Any:
    """Two bar panels over the quantized tensors (in the report's order, worst first): SQNR in dB
    (an exact tensor — SQNR infinite, or None in JSON — is drawn hatched past the largest finite bar)
    and the share of saturated values in %."""
    plt = pyplot()
    names = [str(entry["tensor"]) for entry in tensor_errors]
    sqnr = [entry.get("sqnr_db") for entry in tensor_errors]
    finite = [value for value in sqnr if value is not None and math.isfinite(value)]
    exact_at = (max(finite) if finite else 0.0) * 1.1 + 5.0
    saturated = [100.0 * entry["saturated"] / max(entry["elements"], 1) for entry in tensor_errors]
    height = 1.5 + 0.28 * len(names)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    rows = np.arange(len(names))
    exact = [value is None or not math.isfinite(value) for value in sqnr]
    bars = left.barh(rows, [exact_at if e else value for e, value in zip(exact, sqnr)], color="tab:blue")
    for bar, is_exact in zip(bars, exact):
        if is_exact:
            bar.set_hatch("//")
            bar.set_facecolor("white")
            bar.set_edgecolor("tab:blue")
            left.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " exact", va="center", fontsize="x-small")
    left.set_yticks(rows, names, fontsize="small")
    left.invert_yaxis()
    left.set_xlabel("SQNR (dB)")
    left.set_title("quantization error per tensor (worst first)", fontsize="small")
    right.barh(rows, saturated, color="tab:red")
    right.set_xlim(0, max(1.0, max(saturated, default=0.0) * 1.15))
    right.set_xlabel("saturated values (%)")
    right.set_title("saturation per tensor", fontsize="small")
    return figure


def rate_drift_figure(firing_rates: Mapping[str, Mapping[str, float]]) -> Any:
    """Every spiking layer's firing rate in the quantized model against the float model's, with the
    line of no change."""
    plt = pyplot()
    figure, panel = plt.subplots(figsize=(5, 5))
    floats = [rates["float"] for rates in firing_rates.values()]
    quantized = [rates["quantized"] for rates in firing_rates.values()]
    top = max([*floats, *quantized, 1e-3]) * 1.1
    panel.plot([0, top], [0, top], color="0.6", linestyle="--", linewidth=1)
    panel.scatter(floats, quantized, color="tab:purple", zorder=3)
    for name, x, y in zip(firing_rates, floats, quantized):
        panel.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    panel.set_xlim(0, top)
    panel.set_ylim(0, top)
    panel.set_xlabel("float firing rate (spikes per neuron per step)")
    panel.set_ylabel("quantized firing rate")
    panel.set_title("firing rates: float vs quantized", fontsize="small")
    return figure


def _panel_grid(plt: Any, panels: int) -> tuple[Any, list[Any]]:
    """A figure with ``panels`` axes in rows of :data:`PANEL_COLUMNS` (no empty axes left over)."""
    columns = min(PANEL_COLUMNS, panels)
    rows = math.ceil(panels / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    axes = list(grid.ravel())
    for extra in axes[panels:]:
        figure.delaxes(extra)
    figure.subplots_adjust(hspace=0.6, wspace=0.35)
    return figure, axes[:panels]


# --------------------------------------------------------------------------- files
def simulation_plots(result: Any, directory: str | os.PathLike) -> list[Path]:
    """Write the pictures of a simulation result into ``directory``: ``raster_<tensor>.png`` per spike
    train among its outputs and probes, ``firing_rates.png`` (per train and per layer) and, with
    labels, ``confusion.png``. Returns the files written."""
    out = _directory(directory)
    trains = spike_trains({**result.outputs, **result.probes})
    written = [write_png(raster_figure(name, spikes), out / f"raster_{_file_name(name)}.png")
               for name, spikes in trains.items()]
    if trains or result.firing_rates:
        written.append(write_png(firing_rate_figure(trains, result.firing_rates), out / "firing_rates.png"))
    if result.labels is not None and result.predicted is not None:
        written.append(write_png(confusion_figure(result.labels, result.predicted), out / "confusion.png"))
    return written


def quantization_plots(report: Any, directory: str | os.PathLike) -> list[Path]:
    """Write the pictures of a quantization report into ``directory``: ``quantization_errors.png``
    (SQNR and saturation per quantized tensor) and, for spiking models, ``firing_rate_drift.png``.
    Returns the files written (none for a report without comparisons, e.g. of an unchanged model)."""
    out = _directory(directory)
    written = []
    if report.tensor_errors:
        written.append(write_png(quantization_error_figure(report.tensor_errors), out / "quantization_errors.png"))
    if report.firing_rates:
        written.append(write_png(rate_drift_figure(report.firing_rates), out / "firing_rate_drift.png"))
    return written


def run_plots(path: str | os.PathLike, directory: str | os.PathLike) -> list[Path]:
    """Write the rasters and the firing-rate distributions of the spike trains saved in the ``.npz``
    file ``path`` (``hnnx simulate -o``) into ``directory``. DataError if it holds no spike train."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    trains = spike_trains(arrays)
    if not trains:
        described = ", ".join(f"{name} {list(np.shape(value))}" for name, value in arrays.items()) or "nothing"
        raise DataError(f"{path}: holds no spike train (an array [T, N, ...] of zeros and ones; it holds "
                        f"{described}): probe a spiking layer's spikes with hnnx simulate --probe")
    out = _directory(directory)
    written = [write_png(raster_figure(name, spikes), out / f"raster_{_file_name(name)}.png")
               for name, spikes in trains.items()]
    written.append(write_png(firing_rate_figure(trains), out / "firing_rates.png"))
    return written


def spike_trains(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of ``arrays`` that are spike trains (:func:`is_spike_train`), in order."""
    return {name: np.asarray(array) for name, array in arrays.items() if is_spike_train(array)}


def _directory(directory: str | os.PathLike) -> Path:
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise HnnxError(f"{out}: plots go into a directory, and this is a file")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _file_name(tensor: str) -> str:
    """A tensor name as a file-name part (characters other than letters, digits, ``.``, ``_``, ``-``
    become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", tensor) or "tensor"


__all__ = ["RASTER_NEURONS", "RASTER_SAMPLES", "confusion_figure", "firing_rate_figure", "is_spike_train", "pyplot",
           "quantization_error_figure", "quantization_plots", "raster_figure", "rate_drift_figure", "run_plots",
           "simulation_plots", "spike_trains", "write_png"]
