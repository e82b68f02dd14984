"""Benchmark: hnnx quantization against onnxruntime's, on the bundled digits models and on
ImageNet-size CNN graphs.

Models: the bundled ``ann_cnn`` (a plain ANN), ``snn_mlp``, ``snn_conv`` (SNNs),
``hybrid_a2s`` and ``hybrid_s2a`` (hybrid ANN/SNN). Calibration data: the first 512 (and
32) samples of the digits train split; accuracy on the digits test split (359 samples).
Measured in the same run:

1. **Accuracy** — the float model against ``hnnx.quantize`` for every target and
   each of its formats (``hnnx.quantization.api.TARGETS``, ``FORMATS``; one the model cannot
   take is reported as ``n/a: reason``), and, for the ANN,
   ``onnxruntime.quantization.quantize_static`` (QDQ, MinMax, per-channel, int8 activations
   and weights, the same calibration samples through a ``CalibrationDataReader`` in
   batches of 32 (``--batch-size``), as hnnx reads them).
2. **Wall time** of quantization, file to file (load the float ONNX file, calibrate,
   rewrite, write the quantized file), 512 calibration samples: ``hnnx quantize`` for each
   target in its default format (pre-processing passes and the float-vs-quantized report
   included, as the API runs them), ``quantize_static`` alone, and onnxruntime's documented
   flow ``quant_pre_process`` + ``quantize_static``. *Warm*: one warm-up run, then the
   median of ``--repeats`` (default 9; one quantization of these models takes 0.02–0.2 s,
   so more than the 3 a slow quantization would need) back-to-back runs per contender.
   *First*: the first quantization in a fresh process with the libraries imported — what
   one ``hnnx quantize`` call costs, less interpreter start-up (timed in the memory
   subprocesses below, median of ``--memory-repeats``).
3. **Peak memory** with 32 against 512 calibration samples, each measurement in a fresh
   subprocess: the resident set before quantizing (interpreter, libraries, model and data
   loaded, quantizer modules imported), then the high-water mark (``VmHWM``, reset to the
   current RSS just before quantizing) after; the difference Δ is what quantization itself
   needs, C++ allocations of onnxruntime included. Calibration runs in batches of 32
   (``--batch-size``), the same in both runs. (``ru_maxrss`` is not used: on Linux a
   child inherits its parent's high-water mark across fork/exec.) tracemalloc's peak
   (Python allocations only — it does not see onnxruntime's C++ allocations, so it
   understates both tools) in a separate subprocess. Median of ``--memory-repeats``
   (default 3) subprocesses.

Targets on the digits models: ANN int8 accuracy drop ≤ 0.5 pp and never below onnxruntime on
the same model; SNN and hybrid integer drop ≤ 1 pp; hnnx wall time ≤ 1.5× onnxruntime's
``quantize_static``; quantization memory with 512 samples ≤ 1.2× that with 32.

**ImageNet-size graphs** (``bench/imagenet_graphs.py``: ResNet-50-, Inception-v1- and
DenseNet-121-like, built with torch, random weights, 224×224×3, exported with the batch fixed
to 1 at opset 13, as many tools export them; graphs and generated samples cached under
``--cache``). In one run, each quantization in its own subprocess (file to file; the
address space capped by ``--memory-cap-gb`` so a runaway contender fails instead of taking the
machine): ``quantize_static`` (QDQ, MinMax, per-channel, S8S8, the same samples fed one per
run), ``hnnx quantize --target qdq`` (report on), ``qdq --per-tensor`` and ``tianjicx``; on the
ResNet-50-like graph also the percentile and entropy observers on 512 samples, and MinMax on
512 against 32 of the same 512 files and against a folder of 32 (the last two timed as medians
of three interleaved runs). Then each model in an
onnxruntime CPU session (2 threads, default optimisations): batch-1 latency and output SQNR
against the float model on 16 held-out samples. Targets: hnnx qdq wall time ≤ 1.0× and peak
RSS ≤ 1.2× ``quantize_static``'s; its QDQ model's latency ≤ 1.0× onnxruntime's QDQ model's;
its SQNR ≥ onnxruntime's; tianjicx int within 6 dB of qdq --per-tensor; percentile/entropy on
512 samples ≤ 2 GiB peak; peak with 512 samples ≤ 1.1× with 32. One table gives every ratio.

Run: ``python bench/quantize.py`` (everything), in parts with ``--graphs digits,resnet50,...``
and ``--samples N``; ``--quick``: a smoke run of the digits part with one timed run, one
subprocess per memory cell, and memory and first-call time of ann_cnn only; ``--profile
resnet50``: cProfile of ``hnnx.quantize`` on that graph, top costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

import imagenet_graphs  # noqa: E402
from tables import median_seconds  # noqa: E402

import hnnx  # noqa: E402
from hnnx import models  # noqa: E402
from hnnx.datasets import DigitsSplit, load_digits  # noqa: E402
from hnnx.errors import HnnxError  # noqa: E402
from hnnx.quantization import api  # noqa: E402

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationDataReader

MODELS = ("ann_cnn", "snn_mlp", "snn_conv", "hybrid_a2s", "hybrid_s2a")
ANN_MODELS = ("ann_cnn",)
"""Models without spiking ops: the ones onnxruntime's quantizer is compared on."""
CALIBRATION_SIZES = (32, 512)
BATCH_SIZE = 32  # equal batches in the 32- and 512-sample runs: memory compares like with like
ANN_DROP_TARGET_PP = 0.5
SPIKING_DROP_TARGET_PP = 1.0
TIME_RATIO_TARGET = 1.5
MEMORY_RATIO_TARGET = 1.2

HNNX = "hnnx "  # contender names "hnnx <target>" (the target's default format)
ORT = "onnxruntime quantize_static"
ORT_PRE = "onnxruntime quant_pre_process + quantize_static"


# ---------------------------------------------------------------------- data and quantizers
def calibration(data: DigitsSplit, name: str, samples: int) -> np.ndarray:
    """The first ``samples`` training digits in the layout of bundled model ``name``."""
    return np.ascontiguousarray(data.x_train[:samples].reshape(-1, *models.input_layout(name)))


def held_out_pixels(data: DigitsSplit, name: str) -> np.ndarray:
    """The digits test split in the layout of bundled model ``name``."""
    return np.ascontiguousarray(data.x_test.reshape(-1, *models.input_layout(name)))


def combinations() -> list[tuple[str, str]]:
    """Every (target, format) pair hnnx offers: ``FORMATS`` lists formats per target (or, in
    older versions, one tuple for all targets)."""
    formats = api.FORMATS
    return [(target, format) for target in api.TARGETS
            for format in (formats[target] if isinstance(formats, Mapping) else formats)]


def hnnx_contenders() -> list[str]:
    return [HNNX + target for target in api.TARGETS]


def hnnx_quantize(source: Path, destination: Path, pixels: np.ndarray, target: str = api.TARGETS[0],
                  format: str | None = None) -> None:
    """``hnnx quantize`` file to file, as the CLI does it (load, quantize, save)."""
    options = {"format": format} if format else {}  # None: the target's default format
    quantized, _ = api.quantize(source, {"pixels": pixels}, target=target, observer="minmax",
                                batch_size=BATCH_SIZE, **options)
    hnnx.save(quantized, destination)


def ort_reader(pixels: np.ndarray, batch_size: int | None = None) -> CalibrationDataReader:
    """A ``CalibrationDataReader`` over ``pixels`` in batches of ``batch_size`` (default
    ``BATCH_SIZE``, as hnnx reads them)."""
    from onnxruntime.quantization import CalibrationDataReader

    size = batch_size or BATCH_SIZE

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixels": pixels[i:i + size]} for i in range(0, len(pixels), size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Reader()


def ort_quantize(source: Path, destination: Path, pixels: np.ndarray, pre_process: bool = False) -> None:
    """onnxruntime static QDQ quantization: MinMax, per-channel, int8 activations and weights."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if pre_process:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        processed = destination.with_suffix(".pre.onnx")
        quant_pre_process(str(source), str(processed))
        source = processed
    quantize_static(str(source), str(destination), ort_reader(pixels), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def quantizer(tool: str) -> Callable[[Path, Path, np.ndarray], None]:
    """``run(source, destination, calibration pixels)`` of contender ``tool``."""
    if tool.startswith(HNNX):
        target = tool[len(HNNX):]
        return lambda source, destination, pixels: hnnx_quantize(source, destination, pixels, target)
    if tool == ORT:
        return ort_quantize
    if tool == ORT_PRE:
        return lambda source, destination, pixels: ort_quantize(source, destination, pixels, pre_process=True)
    raise ValueError(tool)


def accuracy(path: Path, pixels: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy of an ONNX file (float, hnnx integer or QDQ) in onnxruntime.

    Integer outputs of hnnx graphs are ``value · scale`` with a positive scale, so their
    argmax is the argmax of the real scores.
    """
    result = hnnx.simulate(path, {"pixels": pixels}, labels=labels, batch_size=128)
    assert result.accuracy is not None
    return result.accuracy


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------- measurements
@dataclass
class AccuracyRow:
    model: str
    quantizer: str
    float_accuracy: float
    quantized: dict[int, float | str]  # calibration samples → accuracy, or "n/a: reason"


def measure_accuracy(data: DigitsSplit, folder: Path) -> list[AccuracyRow]:
    rows = []
    for name in MODELS:
        source = models.path(name)
        pixels, labels = held_out_pixels(data, name), data.y_test
        float_accuracy = accuracy(source, pixels, labels)
        contenders: list[tuple[str, Callable[[Path, Path, np.ndarray], None]]] = [
            (f"hnnx {target}/{format}",
             lambda s, d, p, target=target, format=format: hnnx_quantize(s, d, p, target, format))
            for target, format in combinations()]
        if name in ANN_MODELS:
            contenders.append((ORT + " (QDQ int8, per-channel)", quantizer(ORT)))
        for label, run in contenders:
            results: dict[int, float | str] = {}
            for samples in CALIBRATION_SIZES:
                destination = folder / f"{name}.{len(rows)}.{samples}.onnx"
                try:
                    run(source, destination, calibration(data, name, samples))
                    results[samples] = accuracy(destination, pixels, labels)
                except HnnxError as exc:  # a combination the model or target cannot take
                    results[samples] = f"n/a: {first_line(exc)}"
                except Exception as exc:  # a failing peer is reported, not faked
                    results[samples] = f"failed: {type(exc).__name__}: {first_line(exc)}"
            rows.append(AccuracyRow(name, label, float_accuracy, results))
    return rows


def time_contenders(name: str) -> list[str]:
    return hnnx_contenders() + ([ORT, ORT_PRE] if name in ANN_MODELS else [])


def measure_time(data: DigitsSplit, folder: Path, repeats: int) -> dict[tuple[str, str], float | str]:
    """Warm median wall time (s) per (model, contender), 512 calibration samples.

    Each contender runs back to back, as in the other benches. (Interleaving the contenders
    run by run was tried: each then runs with its caches evicted by the other, which costs
    hnnx ≈ 15 ms and onnxruntime nothing measurable — not a neutral arrangement either.)
    """
    times: dict[tuple[str, str], float | str] = {}
    for name in MODELS:
        source, pixels = models.path(name), calibration(data, name, max(CALIBRATION_SIZES))
        for tool in time_contenders(name):
            run = quantizer(tool)
            destination = folder / f"{name}.time.onnx"
            try:
                times[name, tool] = median_seconds(lambda: run(source, destination, pixels), repeats)
            except HnnxError as exc:
                times[name, tool] = f"n/a: {first_line(exc)}"
            except Exception as exc:  # a failing peer is reported, not faked
                times[name, tool] = f"failed: {type(exc).__name__}"
    return times


def memory_child(tool: str, name: str, samples: int, method: str) -> None:
    """Run in a fresh subprocess: quantize once; print the memory it took (and its time) as JSON.

    Libraries are imported first, so the time is that of the first quantization in a
    process — what ``hnnx quantize`` on the command line costs, less interpreter start-up.
    """
    import gc
    import importlib
    import pkgutil
    import tracemalloc

    # Imports are neither the quantization's memory nor its time: the tools' own modules
    # (hnnx imports its quantizers lazily) and their libraries are loaded first.
    import hnnx.calibrate  # noqa: F401
    import hnnx.quantization
    import hnnx.runtime.native  # noqa: F401  (a session of a model with hnnx ops asks it which ops it runs)
    import onnx_graphsurgeon  # noqa: F401
    import onnxruntime.quantization  # noqa: F401
    from onnxruntime.quantization import shape_inference  # noqa: F401

    for module in pkgutil.iter_modules(hnnx.quantization.__path__):
        importlib.import_module(f"hnnx.quantization.{module.name}")
    data = load_digits()
    pixels = calibration(data, name, samples)
    source = models.path(name)
    onnx.load(source)  # the float model read once, as both tools do
    run = quantizer(tool)
    gc.collect()
    with tempfile.TemporaryDirectory() as folder:
        destination = Path(folder) / "out.onnx"
        if method == "tracemalloc":
            tracemalloc.start()
            run(source, destination, pixels)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(json.dumps({"peak": peak}))
            return
        before = process_memory("VmRSS")
        # Reset the high-water mark to the current RSS, so that VmHWM afterwards is the peak
        # during quantization, not a transient peak of the setup above.
        reset = reset_peak()
        started = time.perf_counter()
        run(source, destination, pixels)
        seconds = time.perf_counter() - started
        print(json.dumps({"baseline": before, "peak": process_memory("VmHWM"), "reset": reset, "seconds": seconds}))


def process_memory(field_name: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident memory of this process in bytes.

    Not ``resource.getrusage().ru_maxrss``: on Linux it keeps the high-water mark across
    fork/exec, so a subprocess of a large parent reports the parent's peak (measured: a
    fresh child of a 514 MiB parent reads 514 MiB). ``VmHWM`` belongs to the process's own
    address space and starts afresh at exec.
    """
    import resource

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0: write 5 to ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def memory_sample(tool: str, name: str, samples: int, method: str) -> dict[str, float]:
    """One measurement by :func:`memory_child` in a fresh interpreter."""
    command = [sys.executable, str(Path(__file__).resolve()), "--batch-size", str(BATCH_SIZE),
               "--memory-child", tool, name, str(samples), method]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class MemoryRow:
    model: str
    quantizer: str
    rss_peak: dict[int, int] = field(default_factory=dict)  # calibration samples → peak RSS (bytes)
    rss_delta: dict[int, int] = field(default_factory=dict)  # … → peak RSS minus the RSS before quantizing
    traced: dict[int, int] = field(default_factory=dict)  # … → tracemalloc peak
    seconds: dict[int, float] = field(default_factory=dict)  # … → wall time, first quantization in a process
    error: str = ""
    peak_reset: bool = True  # False: the peak may include a transient of the child's setup


def measure_memory(names: tuple[str, ...], repeats: int) -> list[MemoryRow]:
    rows = []
    for name in names:
        for tool in hnnx_contenders() + ([ORT] if name in ANN_MODELS else []):
            row = MemoryRow(name, tool)
            try:
                for samples in CALIBRATION_SIZES:
                    rss = [memory_sample(tool, name, samples, "rss") for _ in range(repeats)]
                    row.rss_peak[samples] = int(statistics.median(r["peak"] for r in rss))
                    row.rss_delta[samples] = int(statistics.median(r["peak"] - r["baseline"] for r in rss))
                    row.peak_reset &= all(r["reset"] for r in rss)
                    row.seconds[samples] = statistics.median(r["seconds"] for r in rss)
                    row.traced[samples] = int(statistics.median(
                        memory_sample(tool, name, samples, "tracemalloc")["peak"] for _ in range(repeats)))
            except Exception as exc:  # a failing contender is reported, not faked
                row.error = f"failed: {exc}"
            rows.append(row)
    return rows


# ---------------------------------------------------------------------- tables
def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> None:
    """Print a Markdown table; columns in ``right`` are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    cell = lambda text, i: f"{text:>{widths[i]}}" if i in right else f"{text:<{widths[i]}}"  # noqa: E731
    print("| " + " | ".join(cell(h, i) for i, h in enumerate(headers)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|")
    for row in rows:
        print("| " + " | ".join(cell(text, i) for i, text in enumerate(row)) + " |")
    print()


def percent(value: float | str) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, float) else value


def mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def seconds(value: float | str) -> str:
    return f"{value:.3f} s" if isinstance(value, float) else value


def yes_no(met: bool) -> str:
    return "yes" if met else "NO"


def accuracy_table(rows: list[AccuracyRow], test_samples: int, unmet: list[str]) -> None:
    big = max(CALIBRATION_SIZES)
    ort_accuracy = {r.model: r.quantized[big] for r in rows if r.quantizer.startswith(ORT)}
    lines = []
    for row in rows:
        cells = [row.model, row.quantizer, percent(row.float_accuracy)]
        for samples in CALIBRATION_SIZES:
            value = row.quantized[samples]
            cells += [percent(value), f"{100 * (value - row.float_accuracy):+.2f}" if isinstance(value, float) else "—"]
        value = row.quantized[big]
        if row.quantizer.startswith(ORT):
            target, met = "(reference)", "—"
        elif not isinstance(value, float):
            target, met = "—", "—"
        else:
            drop = 100 * (row.float_accuracy - value)
            if row.model in ANN_MODELS:
                peer = ort_accuracy.get(row.model)
                target = f"drop ≤ {ANN_DROP_TARGET_PP} pp, ≥ ORT"
                ok = drop <= ANN_DROP_TARGET_PP and (not isinstance(peer, float) or value >= peer)
                met = yes_no(ok) + ("" if isinstance(peer, float) else " (no ORT result)")
            else:
                target = f"drop ≤ {SPIKING_DROP_TARGET_PP:g} pp"
                ok = drop <= SPIKING_DROP_TARGET_PP
                met = yes_no(ok)
            if not ok:
                unmet.append(f"accuracy: {row.model} {row.quantizer} drops {drop:.2f} pp")
        lines.append(cells + [target, met])
    headers = ["model", "quantizer", "float"]
    for samples in CALIBRATION_SIZES:
        headers += [f"quantized ({samples} calib)", "Δ pp"]
    print(f"Accuracy on the digits test split ({test_samples} samples); targets apply to "
          f"{big} calibration samples")
    table(headers + ["target", "met"], lines, right={2, 3, 4, 5, 6})


def time_table(warm: dict[tuple[str, str], float | str], cold: list[MemoryRow], repeats: int, cold_repeats: int,
               unmet: list[str]) -> None:
    big = max(CALIBRATION_SIZES)
    first: dict[tuple[str, str], float | str] = {
        (row.model, row.quantizer): row.error or row.seconds[big] for row in cold}
    lines = []
    for name in MODELS:
        for tool in time_contenders(name):
            cells = [name, tool]
            for regime, measured in (("warm", warm), ("first in a process", first)):
                ours, peer = measured.get((name, tool), "—"), measured.get((name, ORT), "—")
                cells.append(seconds(ours))
                if tool.startswith(HNNX) and isinstance(ours, float) and isinstance(peer, float):
                    ratio = ours / peer
                    cells.append(f"{ratio:.2f}× {yes_no(ratio <= TIME_RATIO_TARGET)}")
                    if ratio > TIME_RATIO_TARGET:
                        unmet.append(f"wall time ({regime}): {name} {tool} takes {ratio:.2f}× quantize_static")
                elif isinstance(ours, float) and isinstance(peer, float):
                    cells.append(f"{ours / peer:.2f}×")
                else:
                    cells.append("—")
            lines.append(cells)
    print(f"Quantization wall time, file to file, {big} calibration samples. Warm: median of {repeats} back-to-back "
          f"runs after one warm-up. First: one quantization in a fresh process with the libraries imported "
          f"(median of {cold_repeats} processes). Target: hnnx ≤ {TIME_RATIO_TARGET}× quantize_static (met?)")
    table(["model", "quantizer", "warm", "× ORT (met?)", "first", "× ORT (met?)"], lines, right={2, 3, 4, 5})


def memory_table(rows: list[MemoryRow], repeats: int, unmet: list[str]) -> None:
    small, big = CALIBRATION_SIZES
    lines = []
    for row in rows:
        if row.error:
            lines.append([row.model, row.quantizer, row.error] + ["—"] * 8)
            continue
        ratio = row.rss_delta[big] / max(row.rss_delta[small], 1)
        traced_ratio = row.traced[big] / max(row.traced[small], 1)
        lines.append([row.model, row.quantizer, mib(row.rss_peak[small]), mib(row.rss_peak[big]),
                      mib(row.rss_delta[small]), mib(row.rss_delta[big]), f"{ratio:.2f}×",
                      mib(row.traced[small]), mib(row.traced[big]), f"{traced_ratio:.2f}×",
                      yes_no(ratio <= MEMORY_RATIO_TARGET)])
        if ratio > MEMORY_RATIO_TARGET:
            unmet.append(f"memory: {row.model} {row.quantizer} needs {ratio:.2f}× with {big} samples")
    reset = all(row.peak_reset for row in rows if not row.error)
    print(f"Peak memory of one quantization in a fresh process, {small} vs {big} calibration samples "
          f"(median of {repeats} subprocesses; peak RSS = VmHWM{' reset just before quantizing' if reset else ''}, "
          f"Δ = peak RSS − RSS before quantizing; tracemalloc sees Python allocations only; batches of "
          f"{BATCH_SIZE}{'' if small % BATCH_SIZE == 0 else f', so the {small}-sample run has a smaller batch'}; "
          f"target Δ({big}) ≤ {MEMORY_RATIO_TARGET}× Δ({small}))")
    table(["model", "quantizer", f"peak RSS {small}", f"peak RSS {big}", f"Δ RSS {small}", f"Δ RSS {big}",
           "Δ ratio", f"tracemalloc {small}", f"tracemalloc {big}", "ratio", "met"], lines,
          right=set(range(2, 10)))


# ---------------------------------------------------------------------- ImageNet-size graphs
IMAGENET_TIME_TARGET = 1.0  # hnnx qdq wall time (report on) ≤ this × quantize_static
IMAGENET_MEMORY_TARGET = 1.2  # hnnx qdq peak RSS ≤ this × quantize_static's
INFERENCE_TARGET = 1.0  # hnnx's QDQ model latency ≤ this × onnxruntime's QDQ model
TIANJICX_GAP_DB = 6.0  # tianjicx int SQNR ≥ qdq --per-tensor SQNR − this
OBSERVER_PEAK_TARGET = 2 * 2**30  # percentile/entropy, 512 samples, ResNet-50-like
SAMPLES_MEMORY_TARGET = 1.1  # peak with 512 samples ≤ this × peak with 32
OBSERVER_SAMPLES = 512
FILE_READING_ROUNDS = 3  # "32 of 512 files" against "a folder of 32": medians of interleaved runs
INFERENCE_THREADS = 2


@dataclass(frozen=True)
class Job:
    """One quantization in a fresh subprocess: ``tool`` is ``ort`` or ``hnnx``; ``calibration`` a
    ``.npz`` file or a directory of them."""

    label: str
    tool: str
    graph: str
    calibration: str
    output: str
    target: str = "qdq"
    per_channel: bool = True
    observer: str = "minmax"
    num_samples: int | None = None
    batch_size: int | None = None  # hnnx only (None: hnnx's default); onnxruntime is fed the graph's batch of 1


@dataclass
class JobResult:
    job: Job
    seconds: float = 0.0
    peak: int = 0  # peak RSS while quantizing (VmHWM reset just before)
    baseline: int = 0  # RSS before quantizing (libraries imported)
    report_sqnr: float | None = None  # the hnnx report's own output SQNR (calibration samples)
    preprocessing: list[str] = field(default_factory=list)
    error: str = ""


def imagenet_child(job: Job, cap_bytes: int) -> None:
    """Run in a fresh subprocess: one quantization, file to file; print its time and memory as JSON.

    The address space is capped at ``cap_bytes`` so that a contender that would take the
    machine's memory fails (reported) instead of stalling everything else.
    """
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
    import hnnx.calibrate  # noqa: F401
    import onnx_graphsurgeon  # noqa: F401
    import onnxruntime.quantization  # noqa: F401
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    import hnnx.quantization  # noqa: F401

    baseline = process_memory("VmRSS")
    reset_peak()
    started = time.perf_counter()
    result: dict[str, object] = {}
    if job.tool == "ort":
        with np.load(job.calibration) as archive:
            pixels = archive[imagenet_graphs.INPUT][:job.num_samples]
        # The exported graph takes one sample per run: onnxruntime is fed one at a time.
        quantize_static(job.graph, job.output, ort_reader(pixels, batch_size=1), quant_format=QuantFormat.QDQ,
                        per_channel=job.per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    else:
        options = {"batch_size": job.batch_size} if job.batch_size else {}
        quantized, report = api.quantize(job.graph, job.calibration, target=job.target, observer=job.observer,
                                         per_channel=job.per_channel if job.target == "qdq" else None,
                                         num_samples=job.num_samples, **options)
        hnnx.save(quantized, job.output)
        result["report_sqnr"] = next(iter(report.sqnr_db.values()), None)
        result["preprocessing"] = [f"{step['pass']}: {step['detail'] or 'changed'}" for step in report.preprocessing
                                   if step["changed"] and step["pass"] != "infer_shapes"]
    result.update(seconds=time.perf_counter() - started, peak=process_memory("VmHWM"), baseline=baseline)
    print(json.dumps(result))


def run_job(job: Job, cap_bytes: int) -> JobResult:
    """``job`` in a fresh interpreter (its own peak RSS)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--imagenet-child", json.dumps(asdict(job)),
               "--memory-cap-gb", str(cap_bytes / 2**30)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        message = lines[-1] if lines else f"exit {done.returncode}"
        if any(sign in message for sign in ("allocate", "MemoryError", "bad_alloc")):
            message = f"needs more than the {cap_bytes / 2**30:.0f} GiB address-space cap"
        return JobResult(job, error=f"failed: {message[:100]}")
    values = json.loads(done.stdout.strip().splitlines()[-1])
    return JobResult(job, **values)


def imagenet_jobs(graph: str, root: Path, folder: Path, samples: int, batch_size: int | None) -> list[Job]:
    """The quantizations measured on ``graph``: onnxruntime's and hnnx's on the same samples, and
    on the ResNet-50-like graph the observers and sample counts of the memory targets."""
    path = str(imagenet_graphs.graph_path(root, graph))
    calibration = str(imagenet_graphs.calibration_file(root, samples))

    def out(name: str) -> str:
        return str(folder / f"{graph}.{name}.onnx")

    jobs = [Job(ORT, "ort", path, calibration, out("ort"), num_samples=samples),
            Job("hnnx qdq", "hnnx", path, calibration, out("qdq"), num_samples=samples, batch_size=batch_size),
            Job("hnnx qdq --per-tensor", "hnnx", path, calibration, out("qdq_tensor"), per_channel=False,
                num_samples=samples, batch_size=batch_size),
            Job("hnnx tianjicx", "hnnx", path, calibration, out("tianjicx"), target="tianjicx", per_channel=False,
                num_samples=samples, batch_size=batch_size)]
    if graph == "resnet50":
        files = str(imagenet_graphs.calibration_folder(root, OBSERVER_SAMPLES))
        for observer in ("percentile", "entropy", "minmax"):
            jobs.append(Job(f"hnnx qdq {observer}, {OBSERVER_SAMPLES} files", "hnnx", path, files,
                            out(f"{observer}{OBSERVER_SAMPLES}"), observer=observer, batch_size=batch_size))
        jobs.append(Job(f"hnnx qdq minmax, {samples} of {OBSERVER_SAMPLES} files", "hnnx", path, files,
                        out(f"minmax{samples}of{OBSERVER_SAMPLES}"), num_samples=samples, batch_size=batch_size))
        jobs.append(Job(f"hnnx qdq minmax, {samples} files", "hnnx", path,
                        str(imagenet_graphs.calibration_folder(root, samples)), out(f"minmax{samples}files"),
                        batch_size=batch_size))
    return jobs


@dataclass
class Deployment:
    """A model file in an onnxruntime CPU session: batch-1 latency and output SQNR against float."""

    latency: float | str  # median seconds per batch-1 run, or an error
    sqnr: float | str  # dB on the evaluation samples, onnxruntime's default optimisations
    sqnr_basic: float | str = "—"  # the same with basic optimisations only (no integer kernel fusion)


def cpu_session(path: Path, basic: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session with ``INFERENCE_THREADS`` intra-op threads (default optimisations,
    or basic ones only)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = INFERENCE_THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if basic:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def outputs_of(session: ort.InferenceSession, evaluation: np.ndarray, scale: float) -> list[np.ndarray]:
    """Real outputs, one batch-1 run per evaluation sample (integer outputs times ``scale``)."""
    name = session.get_inputs()[0].name
    return [session.run(None, {name: evaluation[i:i + 1]})[0].astype(np.float64) * scale
            for i in range(len(evaluation))]


def sqnr_db(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    signal = sum(float(np.sum(r**2)) for r in reference)
    noise = sum(float(np.sum((o - r) ** 2)) for o, r in zip(outputs, reference))
    return float(10 * np.log10(signal / max(noise, 1e-30)))


def deploy(models: dict[str, tuple[Path, float]], evaluation: np.ndarray, runs: int) -> dict[str, Deployment]:
    """Every model (label → path and output scale; the first is the float reference) in a CPU
    session: SQNR against the reference, and batch-1 latency measured round-robin — one run of
    each model per round, ``runs`` rounds — so that load from elsewhere on the machine falls on all
    models alike."""
    sessions: dict[str, ort.InferenceSession] = {}
    results: dict[str, Deployment] = {}
    reference: list[np.ndarray] = []
    for label, (path, scale) in models.items():
        try:
            sessions[label] = cpu_session(path)
            outputs = outputs_of(sessions[label], evaluation, scale)
            basic = outputs_of(cpu_session(path, basic=True), evaluation, scale)
        except Exception as exc:  # a model onnxruntime refuses is reported, not faked
            results[label] = Deployment(f"failed: {first_line(exc)[:80]}", "—")
            continue
        if not reference:
            reference = outputs
        results[label] = Deployment(0.0, sqnr_db(outputs, reference), sqnr_db(basic, reference))
    latencies: dict[str, list[float]] = {label: [] for label in sessions}
    for round_ in range(runs + 3):
        for label, session in sessions.items():
            one = {session.get_inputs()[0].name: evaluation[:1]}
            started = time.perf_counter()
            session.run(None, one)
            if round_ >= 3:  # three warm-up rounds
                latencies[label].append(time.perf_counter() - started)
    for label, values in latencies.items():
        results[label].latency = statistics.median(values)
    return results


def _rerun_interleaved(results: list[JobResult], labels: tuple[str, ...], cap_bytes: int) -> None:
    """Run the jobs ``labels`` name again, alternating, until each ran ``FILE_READING_ROUNDS`` times;
    each keeps its median time and highest peak. Two nearly equal workloads are compared here, and
    one run each leaves their ratio to the machine's noise (±15 % between runs)."""
    rows = {result.job.label: result for result in results if result.job.label in labels}
    runs = {label: [row] for label, row in rows.items() if not row.error}
    for _ in range(FILE_READING_ROUNDS - 1):
        for label in runs:
            runs[label].append(run_job(rows[label].job, cap_bytes))
    for label, attempts in runs.items():
        good = [a for a in attempts if not a.error]
        rows[label].seconds = statistics.median(a.seconds for a in good)
        rows[label].peak = max(a.peak for a in good)


def measure_imagenet(graphs: list[str], root: Path, samples: int, batch_size: int | None, runs: int,
                     cap_bytes: int) -> tuple[dict[str, list[JobResult]], dict[tuple[str, str], Deployment]]:
    results: dict[str, list[JobResult]] = {}
    deployed: dict[tuple[str, str], Deployment] = {}
    evaluation = imagenet_graphs.evaluation_samples(root)
    with tempfile.TemporaryDirectory() as folder:
        for graph in graphs:
            results[graph] = [run_job(job, cap_bytes) for job in imagenet_jobs(graph, root, Path(folder), samples,
                                                                                 batch_size)]
            if graph == "resnet50":
                _rerun_interleaved(results[graph], (f"hnnx qdq minmax, {samples} of {OBSERVER_SAMPLES} files",
                                                    f"hnnx qdq minmax, {samples} files"), cap_bytes)
            models = {"float": (imagenet_graphs.graph_path(root, graph), 1.0)}
            for result in results[graph][:4]:  # the models compared in a session
                if result.error:
                    deployed[graph, result.job.label] = Deployment(result.error, "—")
                    continue
                scale = 1.0
                if result.job.target == "tianjicx":  # integer outputs: real = value · scale
                    stored = onnx.load(result.job.output, load_external_data=False)
                    scale = api.output_scales(stored)[imagenet_graphs.OUTPUT]
                models[result.job.label] = (Path(result.job.output), scale)
            for label, measured in deploy(models, evaluation, runs).items():
                deployed[graph, label] = measured
    return results, deployed


def ratio_cell(ours: float | str, theirs: float | str, target: float, unmet: list[str], what: str,
               higher_is_better: bool = False) -> str:
    """``ours / theirs`` against ``target`` (≤ target, or ≥ for ``higher_is_better``)."""
    if not isinstance(ours, float) or not isinstance(theirs, float):
        unmet.append(f"{what}: not measured")
        return "—"
    ratio = ours / theirs
    met = ratio >= target if higher_is_better else ratio <= target
    if not met:
        unmet.append(f"{what}: {ratio:.2f}×")
    return f"{ratio:.2f}× {yes_no(met)}"


def imagenet_tables(results: dict[str, list[JobResult]], deployed: dict[tuple[str, str], Deployment],
                    samples: int, runs: int, unmet: list[str]) -> None:
    lines = []
    for graph, rows in results.items():
        for row in rows:
            where = deployed.get((graph, row.job.label))
            cells = [graph, row.job.label]
            if row.error:
                lines.append(cells + [row.error] + ["—"] * 7)
                continue
            lines.append(cells + [seconds(row.seconds), mib(row.peak), mib(row.peak - row.baseline),
                                  f"{row.report_sqnr:.2f}" if row.report_sqnr is not None else "—",
                                  sqnr_text(where.sqnr) if where else "—",
                                  sqnr_text(where.sqnr_basic) if where else "—",
                                  milliseconds(where.latency) if where else "—",
                                  "; ".join(row.preprocessing) or "—"])
        lines.append([graph, "float model (onnxruntime)", "—", "—", "—", "—", "—", "—",
                      milliseconds(deployed[graph, "float"].latency), "—"])
    print(f"ImageNet-size graphs (torch, random weights, 224×224×3, exported with the batch fixed to 1, opset "
          f"{imagenet_graphs.OPSET}), {samples} calibration samples unless said otherwise. Each quantization runs in "
          f"its own subprocess, file to file: wall time (hnnx with its report), peak RSS (VmHWM from just before "
          f"quantizing) and Δ (peak − RSS before). onnxruntime's quantize_static: QDQ, MinMax, per-channel, S8S8, "
          f"fed one sample per run (the graph takes a batch of 1). Output SQNR against the float model on 16 "
          f"held-out samples, in an onnxruntime CPU session ({INFERENCE_THREADS} threads, default optimisations; "
          f"'basic opt.': basic optimisations only, no integer-kernel fusion); latency: median of {runs} batch-1 "
          f"runs in that session, the models of a graph run round-robin.")
    table(["graph", "quantizer", "wall time", "peak RSS", "Δ RSS", "SQNR (hnnx report)", "SQNR (ORT session)",
           "SQNR (basic opt.)", "latency", "hnnx pre-processing"], lines, right={2, 3, 4, 5, 6, 7, 8})

    targets = []
    for graph, rows in results.items():
        by = {row.job.label: row for row in rows}
        ours, theirs = by["hnnx qdq"], by[ORT]
        targets.append([graph, f"wall time hnnx qdq ≤ {IMAGENET_TIME_TARGET}× quantize_static",
                        ratio_cell(_ok(ours, "seconds"), _ok(theirs, "seconds"), IMAGENET_TIME_TARGET, unmet,
                                   f"{graph} wall time")])
        targets.append([graph, f"peak RSS hnnx qdq ≤ {IMAGENET_MEMORY_TARGET}× quantize_static",
                        ratio_cell(_ok(ours, "peak"), _ok(theirs, "peak"), IMAGENET_MEMORY_TARGET, unmet,
                                   f"{graph} peak memory")])
        latency = {label: deployed[graph, label].latency for label in ("hnnx qdq", ORT)}
        targets.append([graph, f"latency hnnx QDQ model ≤ {INFERENCE_TARGET}× onnxruntime's QDQ model",
                        ratio_cell(latency["hnnx qdq"], latency[ORT], INFERENCE_TARGET, unmet, f"{graph} latency")])
        sqnr = {label: deployed[graph, label].sqnr for label in ("hnnx qdq", ORT, "hnnx qdq --per-tensor",
                                                                 "hnnx tianjicx")}
        targets.append([graph, "SQNR hnnx qdq ≥ onnxruntime's (dB difference)",
                        difference_cell(sqnr["hnnx qdq"], sqnr[ORT], 0.0, unmet, f"{graph} qdq SQNR")])
        targets.append([graph, f"SQNR tianjicx int ≥ qdq --per-tensor − {TIANJICX_GAP_DB:g} dB",
                        difference_cell(sqnr["hnnx tianjicx"], sqnr["hnnx qdq --per-tensor"], -TIANJICX_GAP_DB,
                                        unmet, f"{graph} tianjicx SQNR")])
        if graph == "resnet50":
            for observer in ("percentile", "entropy"):
                row = by[f"hnnx qdq {observer}, {OBSERVER_SAMPLES} files"]
                cell = ratio_cell(_ok(row, "peak"), float(OBSERVER_PEAK_TARGET), 1.0, unmet,
                                  f"{graph} {observer} peak memory")
                targets.append([graph, f"peak RSS {observer}, {OBSERVER_SAMPLES} samples ≤ 2 GiB",
                                (mib(row.peak) + " = " + cell) if not row.error else "—"])
            many, few = by[f"hnnx qdq minmax, {OBSERVER_SAMPLES} files"], by[f"hnnx qdq minmax, {samples} of "
                                                                              f"{OBSERVER_SAMPLES} files"]
            targets.append([graph, f"peak RSS {OBSERVER_SAMPLES} ≤ {SAMPLES_MEMORY_TARGET}× {samples} samples",
                            ratio_cell(_ok(many, "peak"), _ok(few, "peak"), SAMPLES_MEMORY_TARGET, unmet,
                                       f"{graph} memory {OBSERVER_SAMPLES} vs {samples} samples")])
            own = by[f"hnnx qdq minmax, {samples} files"]
            targets.append([graph, f"{samples} of {OBSERVER_SAMPLES} files as fast as a folder of {samples} "
                                   f"(median of {FILE_READING_ROUNDS} interleaved runs, ≤ 1.1)",
                            ratio_cell(_ok(few, "seconds"), _ok(own, "seconds"), 1.1, unmet,
                                       f"{graph} reading {samples} of {OBSERVER_SAMPLES} files")])
    print("Targets on the ImageNet-size graphs (ratio, met?)")
    table(["graph", "target", "measured"], targets)


def _ok(row: JobResult, name: str) -> float | str:
    return row.error or float(getattr(row, name))


def difference_cell(ours: float | str, theirs: float | str, least: float, unmet: list[str], what: str) -> str:
    """``ours − theirs`` in dB against the least difference allowed."""
    if not isinstance(ours, float) or not isinstance(theirs, float):
        unmet.append(f"{what}: not measured")
        return "—"
    difference = ours - theirs
    if difference < least:
        unmet.append(f"{what}: {difference:+.2f} dB")
    return f"{ours:.2f} vs {theirs:.2f} dB: {difference:+.2f} dB {yes_no(difference >= least)}"


def sqnr_text(value: float | str) -> str:
    return f"{value:.2f}" if isinstance(value, float) else value


def milliseconds(value: float | str) -> str:
    return f"{1000 * value:.1f} ms" if isinstance(value, float) else value


def profile_quantize(graph: str, root: Path, samples: int, top: int) -> None:
    """cProfile of ``hnnx.quantize`` (qdq, report on) on ``graph``: the top costs by cumulative and
    by own time."""
    import cProfile
    import pstats

    path = imagenet_graphs.graph_path(root, graph)
    calibration = imagenet_graphs.calibration_file(root, samples)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    quantized, _ = api.quantize(path, calibration, target="qdq", num_samples=samples)
    with tempfile.TemporaryDirectory() as folder:
        hnnx.save(quantized, Path(folder) / "out.onnx")
    profiler.disable()
    print(f"cProfile of hnnx.quantize(target='qdq', {samples} samples) + hnnx.save on {graph}: "
          f"{time.perf_counter() - started:.1f} s")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


# ---------------------------------------------------------------------- main
DIGITS = "digits"
PARTS = (DIGITS, *imagenet_graphs.GRAPHS)


def main() -> None:
    global BATCH_SIZE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graphs", default=",".join(PARTS),
                        help=f"comma-separated parts to run: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--samples", type=int, default=32,
                        help="calibration samples of the ImageNet-size graphs (default 32)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hnnx-bench-cache",
                        help="where exported graphs and generated samples are kept between runs")
    parser.add_argument("--imagenet-batch-size", type=int, default=None,
                        help="hnnx's calibration batch size on the ImageNet-size graphs (default: hnnx's default)")
    parser.add_argument("--inference-runs", type=int, default=20, help="batch-1 runs per latency (median)")
    parser.add_argument("--memory-cap-gb", type=float, default=16.0,
                        help="address-space cap of each ImageNet quantization subprocess (GiB)")
    parser.add_argument("--profile", metavar="GRAPH",
                        help="only profile hnnx.quantize (qdq) on this ImageNet-size graph with cProfile")
    parser.add_argument("--repeats", type=int, default=9, help="warm timed runs per contender (median)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="subprocesses per memory cell (median)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run of the digits part: 1 timed run, 1 memory subprocess, memory and first-call "
                             "time of ann_cnn only (ImageNet-size graphs only when --graphs names them)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="calibration batch size of both tools on the digits models")
    parser.add_argument("--memory-child", nargs=4, metavar=("TOOL", "MODEL", "SAMPLES", "METHOD"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--imagenet-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    BATCH_SIZE = args.batch_size
    cap_bytes = int(args.memory_cap_gb * 2**30)
    # onnxruntime's quantizer logs advice (pre-processing, opset) through the root logger.
    logging.getLogger().setLevel(logging.ERROR)
    if args.memory_child:
        tool, name, samples, method = args.memory_child
        memory_child(tool, name, int(samples), method)
        return
    if args.imagenet_child:
        imagenet_child(Job(**json.loads(args.imagenet_child)), cap_bytes)
        return
    if args.profile:
        profile_quantize(args.profile, args.cache, args.samples, top=30)
        return
    given = [part.strip() for part in args.graphs.split(",") if part.strip()]
    unknown = [part for part in given if part not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r} (known: {', '.join(PARTS)})")
    if args.quick and "--graphs" not in sys.argv:
        given = [DIGITS]
    repeats, memory_repeats = (1, 1) if args.quick else (args.repeats, args.memory_repeats)
    memory_models = ANN_MODELS if args.quick else MODELS

    started = time.perf_counter()
    unmet: list[str] = []
    print(f"quantization benchmark — {', '.join(given)}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, onnxruntime {ort.__version__}, onnx {onnx.__version__}, hnnx {hnnx.__version__}"
          + (" (--quick smoke run)" if args.quick else ""))
    print()
    if DIGITS in given:
        data = load_digits()
        with tempfile.TemporaryDirectory() as folder:
            accuracy_table(measure_accuracy(data, Path(folder)), len(data.y_test), unmet)
            warm = measure_time(data, Path(folder), repeats)
        memory = measure_memory(memory_models, memory_repeats)
        time_table(warm, memory, repeats, memory_repeats, unmet)
        memory_table(memory, memory_repeats, unmet)
    graphs = [part for part in given if part != DIGITS]
    if graphs:
        results, deployed = measure_imagenet(graphs, args.cache, args.samples, args.imagenet_batch_size,
                                             args.inference_runs, cap_bytes)
        imagenet_tables(results, deployed, args.samples, args.inference_runs, unmet)
    print("targets not met: " + ("none" if not unmet else "; ".join(unmet)))
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
