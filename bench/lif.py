"""Benchmark: one ``hnnx.LIF`` layer in onnxruntime against a plain numpy loop and the memory floor.

What is measured
----------------
One LIF layer (hard reset, ``alpha = 0.9`` multiplicative leak, ``beta = 0``,
``threshold = 1``, ``v_reset = 0``, ``v_init = 0``) driven by an input current
``x[T, N, C]`` (float32, drawn from N(0.3, 0.6²) with a fixed seed). Per step::

    v1 = v + x[t];  s = v1 > θ;  v2 = where(s, v_reset, v1);  v = alpha · v2

Contenders, all measured in the same process and run:

1. ``hnnx / onnxruntime`` — a one-node ONNX model (graph input ``x [T, N, C]``, output
   ``spikes``) with the hnnx function bodies attached (:func:`hnnx.ops.attach_functions`),
   run by a stock ``onnxruntime.InferenceSession`` on ``CPUExecutionProvider``
   (``intra_op_num_threads`` = threads, ``inter_op_num_threads = 1``).
2. ``numpy loop`` — a plain numpy loop over T writing the equations above as written,
   into a preallocated spike array. numpy elementwise kernels are single threaded.
3. ``memory floor`` — the least the layer must move (read the current once, write the
   spikes once: ``2 · T·N·C · 4`` bytes) divided by the measured copy bandwidth. The
   bandwidth is measured with ``np.copyto`` between two buffers of the input's size
   (a copy reads and writes, so bandwidth = ``2 · bytes / seconds``); the floor is
   therefore the time of a copy of the input into a same-size output.

Each contender runs once as a warm-up, then ``--repeats`` (default 7) timed runs
(``time.perf_counter``); the table reports the median and the ratio to the numpy loop.
The spikes of hnnx and of the numpy loop are compared element for element (both run the
same float32 operations in the same order, so they must be identical).

Two workloads are reported: the issue's layer (T=16, 32 × 25,088 neurons; set with
``--steps/--batch/--neurons``) and the open-neuromorphic shape (T=500, batch 16, 512
neurons), which is dominated by per-step overhead rather than memory traffic.

Run: ``PYTHONPATH=. python bench/lif.py`` (``--quick`` for a small smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from hnnx import ops

SEED = 20240611
CURRENT_MEAN = 0.3
CURRENT_STD = 0.6
THRESHOLD = 1.0
ALPHA = 0.9
V_RESET = 0.0
TARGET_RATIO = 1.5
"""The issue's target: hnnx in onnxruntime takes at most this many times the numpy loop."""


@dataclass(frozen=True)
class Workload:
    """One LIF layer shape: ``steps`` time steps of a ``[batch, neurons]`` current."""

    title: str
    steps: int
    batch: int
    neurons: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.steps, self.batch, self.neurons)

    @property
    def elements(self) -> int:
        return self.steps * self.batch * self.neurons

    @property
    def nbytes(self) -> int:
        return self.elements * np.dtype(np.float32).itemsize


@dataclass(frozen=True)
class Timing:
    """The median of the timed runs of one contender (seconds)."""

    name: str
    median: float
    note: str = ""


# ---------------------------------------------------------------------------- inputs
def make_current(workload: Workload, seed: int = SEED) -> np.ndarray:
    """The input current ``[T, N, C]`` float32, N(0.3, 0.6²), reproducible."""
    rng = np.random.default_rng(seed)
    current = rng.standard_normal(workload.shape, dtype=np.float32)
    current *= np.float32(CURRENT_STD)
    current += np.float32(CURRENT_MEAN)
    return current


# ---------------------------------------------------------------------------- contenders
def build_lif_model(workload: Workload) -> onnx.ModelProto:
    """A one-node ONNX model ``x [T, N, C] → spikes`` with the hnnx functions attached."""
    node = ops.make_node(
        "LIF", ["x"], ["spikes"], name="lif",
        threshold=THRESHOLD, reset_mode="hard", v_reset=V_RESET, alpha=ALPHA, beta=0.0,
    )
    graph = helper.make_graph(
        [node], "lif_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(workload.shape))],
        [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, list(workload.shape))],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET), helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)],
        ir_version=ops.IR_VERSION,
    )
    return ops.attach_functions(model)


def make_session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session with ``threads`` intra-op threads and one inter-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def hnnx_runner(workload: Workload, current: np.ndarray, threads: int) -> Callable[[], np.ndarray]:
    """A callable running the hnnx LIF model in onnxruntime on ``current``; returns the spikes."""
    session = make_session(build_lif_model(workload), threads)
    feeds = {"x": current}

    def run() -> np.ndarray:
        return session.run(["spikes"], feeds)[0]

    return run


def numpy_lif(current: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """The LIF equations as a plain numpy loop over T, writing into ``spikes`` (preallocated)."""
    threshold = np.float32(THRESHOLD)
    v_reset = np.float32(V_RESET)
    alpha = np.float32(ALPHA)
    v = np.zeros(current.shape[1:], dtype=np.float32)
    for t in range(current.shape[0]):
        v1 = v + current[t]
        fired = v1 > threshold
        v2 = np.where(fired, v_reset, v1)
        v = alpha * v2
        spikes[t] = fired
    return spikes


def numpy_runner(current: np.ndarray) -> Callable[[], np.ndarray]:
    """A callable running :func:`numpy_lif` into one preallocated spike array."""
    spikes = np.empty_like(current)
    return lambda: numpy_lif(current, spikes)


def copy_runner(nbytes: int) -> Callable[[], np.ndarray]:
    """A callable copying a buffer of ``nbytes`` into another of the same size (``np.copyto``)."""
    count = nbytes // np.dtype(np.float32).itemsize
    source = np.ones(count, dtype=np.float32)
    target = np.zeros(count, dtype=np.float32)

    def run() -> np.ndarray:
        np.copyto(target, source)
        return target

    return run


# ---------------------------------------------------------------------------- timing
def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``run`` after one warm-up call."""
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@dataclass(frozen=True)
class WorkloadResult:
    workload: Workload
    timings: list[Timing]
    bandwidth: float
    mismatches: int
    spike_rate: float

    def timing(self, name: str) -> Timing:
        return next(t for t in self.timings if t.name == name)


HNNX = "hnnx / onnxruntime"
NUMPY = "numpy loop"
FLOOR = "memory floor (copy)"


def bench_workload(workload: Workload, repeats: int, threads: int) -> WorkloadResult:
    """Measure every contender on ``workload`` and compare the hnnx and numpy spikes."""
    current = make_current(workload)
    run_hnnx = hnnx_runner(workload, current, threads)
    run_numpy = numpy_runner(current)
    run_copy = copy_runner(workload.nbytes)

    hnnx_spikes = np.array(run_hnnx(), copy=True)
    numpy_spikes = np.array(run_numpy(), copy=True)
    mismatches = int(np.count_nonzero(hnnx_spikes != numpy_spikes)) if hnnx_spikes.shape == numpy_spikes.shape \
        else workload.elements
    spike_rate = float(numpy_spikes.mean())
    del hnnx_spikes, numpy_spikes

    t_hnnx = median_seconds(run_hnnx, repeats)
    t_numpy = median_seconds(run_numpy, repeats)
    t_copy = median_seconds(run_copy, repeats)
    bandwidth = 2 * workload.nbytes / t_copy
    floor = 2 * workload.nbytes / bandwidth  # = t_copy: read the input once, write the spikes once
    return WorkloadResult(
        workload=workload,
        timings=[Timing(HNNX, t_hnnx), Timing(NUMPY, t_numpy), Timing(FLOOR, floor)],
        bandwidth=bandwidth,
        mismatches=mismatches,
        spike_rate=spike_rate,
    )


# ---------------------------------------------------------------------------- report
def format_table(headers: list[str], rows: list[list[str]], right_align: set[int]) -> str:
    """A Markdown pipe table whose columns are padded so it also reads aligned as plain text."""
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in right_align else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right_align else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def format_bytes(nbytes: int) -> str:
    """``nbytes`` in KiB or MiB, one decimal."""
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def report(result: WorkloadResult) -> str:
    """The section for one workload: header, table, correctness and target lines."""
    w = result.workload
    reference = result.timing(NUMPY).median
    rows = [[t.name, f"{t.median:.6f}", f"{t.median / reference:.2f}×"] for t in result.timings]
    table = format_table(["contender", "median s", "vs numpy loop"], rows, right_align={1, 2})
    ratio = result.timing(HNNX).median / reference
    met = ratio <= TARGET_RATIO
    lines = [
        f"## {w.title}: T={w.steps}, batch {w.batch} × {w.neurons:,} neurons "
        f"(input {format_bytes(w.nbytes)}, spike rate {result.spike_rate:.3f})",
        "",
        table,
        "",
        f"copy bandwidth (np.copyto, {format_bytes(w.nbytes)} → same size): {result.bandwidth / 1e9:.2f} GB/s",
        f"spikes identical: {result.mismatches == 0} ({result.mismatches} mismatches of {w.elements:,})",
        f"target (issue): hnnx ≤ {TARGET_RATIO} × numpy loop — hnnx is {ratio:.2f} × numpy loop: "
        f"{'met' if met else 'NOT met'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=16, help="time steps T of the main workload (16)")
    parser.add_argument("--batch", type=int, default=32, help="batch N of the main workload (32)")
    parser.add_argument("--neurons", type=int, default=25088, help="neurons per sample C of the main workload (25088)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per contender, after one warm-up (7)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (2)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (T=4, 2 × 1000; second workload T=20, 2 × 64)")
    return parser.parse_args(argv)


def workloads(args: argparse.Namespace) -> list[Workload]:
    if args.quick:
        return [Workload("LIF layer (quick)", 4, 2, 1000), Workload("open-neuromorphic shape (quick)", 20, 2, 64)]
    return [Workload("LIF layer", args.steps, args.batch, args.neurons),
            Workload("open-neuromorphic shape", 500, 16, 512)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        raise SystemExit("--repeats and --threads must be ≥ 1")
    print(f"hnnx LIF benchmark — onnxruntime {ort.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs; "
          f"threads: onnxruntime intra-op {args.threads}, inter-op 1, numpy 1")
    print(f"LIF: hard reset, alpha={ALPHA}, beta=0, threshold={THRESHOLD}, v_reset={V_RESET}; "
          f"input N({CURRENT_MEAN}, {CURRENT_STD}²), seed {SEED}; median of {args.repeats} runs after 1 warm-up")
    for workload in workloads(args):
        print()
        print(report(bench_workload(workload, args.repeats, args.threads)), flush=True)


if __name__ == "__main__":
    main()
