"""Benchmark: one ``hnnx.LIF`` layer — native kernel, function body, numpy, SpikingJelly, snnTorch, memory floor.

What is measured
----------------
One LIF layer (hard reset to 0, ``alpha = 0.9`` multiplicative leak, ``threshold = 1``)
driven by an input current ``x[T, N, C]`` (float32, N(0.3, 0.6²), fixed seed). Per step::

    v1 = v + x[t];  s = v1 > θ;  v2 = where(s, 0, v1);  v = alpha · v2

Contenders, all measured in the same process and run, with the same thread count
(``--threads``, default 2) wherever the contender can use threads:

1. ``hnnx native`` — a one-node ONNX model (input ``x [T, N, C]``, output ``spikes``, hnnx
   function bodies attached) in a stock ``onnxruntime.InferenceSession`` with the hnnx
   custom-op library registered (:mod:`hnnx.runtime.native`): the fused C++ kernel.
2. ``hnnx function body`` — the same model and session options without the library:
   onnxruntime inlines the node's function body (a ``Scan`` of standard ops).
3. ``numpy loop`` — the equations above as a plain numpy loop over T into a preallocated
   spike array (numpy elementwise kernels are single-threaded).
4. ``SpikingJelly LIFNode`` — ``spikingjelly.activation_based.neuron.LIFNode(tau=10,
   decay_input=False, v_reset=0, step_mode="m")`` (``H = V − V/τ + X``: the same neuron,
   with ``V − V/τ`` rounded differently from ``0.9·V``, and firing at ``H ≥ θ``), multi-step,
   CPU, under ``torch.no_grad()``.
5. ``snnTorch Leaky`` — ``snntorch.Leaky(beta=0.9, reset_mechanism="zero")`` stepped over T
   as its documentation does (``spk, mem = lif(x[t], mem)``), spikes written into a
   preallocated tensor, under ``torch.no_grad()``. Its zero-reset recurrence is the same as
   hnnx's operation by operation, so its spikes are identical.
6. ``memory floor`` — the least the layer must move (read the current once, write the spikes
   once: ``2 · T·N·C · 4`` bytes): the fastest copy of the input into a same-size buffer
   (``np.copyto``, one thread, or ``torch.Tensor.copy_`` with the same threads).

Each contender runs once as a warm-up, then ``--repeats`` (default 7) timed runs; the table
shows the median in milliseconds and, in brackets, the ratio to hnnx native. A missing
peer (not installed) is reported as such. Spikes are compared with hnnx native element by
element.

Run: ``python bench/lif.py`` (``--quick`` for a small smoke run). Peers: ``pip install -e '.[bench]'``
(snnTorch) and ``pip install --no-deps spikingjelly==2.0.0 loguru`` (see README).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from hnnx import ops
from hnnx.runtime import native
from tables import format_table, median_seconds

SEED = 20240611
CURRENT_MEAN = 0.3
CURRENT_STD = 0.6
THRESHOLD = 1.0
ALPHA = 0.9
TAU = 10.0
"""SpikingJelly's time constant for the same leak: ``V − V/τ = (1 − 1/τ)·V = 0.9·V``."""
FLOOR_SHARE_TARGET = 0.5
"""Issue target: on the first workload hnnx native reaches ≥ 50 % of the memory floor."""
SMALL_LAYER_TARGET_S = 0.003
SMALL_LAYER_SPEEDUP_TARGET = 15.0
"""Issue targets on the batch 16, T = 500, 512-neuron layer: ≤ 3 ms and ≥ 15× SpikingJelly."""

NATIVE = "hnnx native (onnxruntime + fused kernel)"
BODY = "hnnx function body (onnxruntime Scan)"
NUMPY = "numpy loop (1 thread)"
SPIKINGJELLY = "SpikingJelly 2 LIFNode, multi-step"
SNNTORCH = "snnTorch Leaky, stepped"
FLOOR = "memory floor (copy in → out)"
CONTENDERS = (NATIVE, BODY, NUMPY, SPIKINGJELLY, SNNTORCH, FLOOR)


@dataclass(frozen=True)
class Workload:
    """One LIF layer shape: ``steps`` time steps of a ``[batch, neurons]`` current."""

    steps: int
    batch: int
    neurons: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.steps, self.batch, self.neurons)

    @property
    def title(self) -> str:
        return f"T={self.steps}, {self.batch}×{self.neurons:,}"

    @property
    def nbytes(self) -> int:
        return self.steps * self.batch * self.neurons * 4


@dataclass
class Cell:
    """One contender on one workload: median seconds, or why there is none."""

    seconds: float | None = None
    missing: str = ""
    spikes: np.ndarray | None = None


Runner = Callable[[], object]


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
    node = ops.make_node("LIF", ["x"], ["spikes"], name="lif", threshold=THRESHOLD, reset_mode="hard",
                         v_reset=0.0, alpha=ALPHA)
    graph = helper.make_graph(
        [node], "lif_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(workload.shape))],
        [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, list(workload.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)])
    return ops.attach_functions(model)


def onnxruntime_runner(model: onnx.ModelProto, current: np.ndarray, threads: int, library: str | None) -> Runner:
    """Run ``model`` on ``current`` in a CPU session with ``threads`` intra-op threads, with
    the native library registered when ``library`` is given."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if library:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"x": current}
    return lambda: session.run(["spikes"], feeds)[0]


def numpy_lif(current: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """The LIF equations as a plain numpy loop over T, writing into ``spikes`` (preallocated)."""
    threshold, alpha, zero = np.float32(THRESHOLD), np.float32(ALPHA), np.float32(0.0)
    v = np.zeros(current.shape[1:], dtype=np.float32)
    for t in range(current.shape[0]):
        v1 = v + current[t]
        fired = v1 > threshold
        v = alpha * np.where(fired, zero, v1)
        spikes[t] = fired
    return spikes


def numpy_runner(current: np.ndarray) -> Runner:
    spikes = np.empty_like(current)
    return lambda: numpy_lif(current, spikes)


def spikingjelly_runner(current: np.ndarray) -> Runner:
    """SpikingJelly's multi-step LIFNode on ``current`` (raises ImportError when absent)."""
    import torch
    from spikingjelly.activation_based import functional, neuron

    node = neuron.LIFNode(tau=TAU, decay_input=False, v_threshold=THRESHOLD, v_reset=0.0, step_mode="m")
    x = torch.from_numpy(current)

    def run() -> np.ndarray:
        functional.reset_net(node)
        with torch.no_grad():
            return node(x).numpy()

    return run


def snntorch_runner(current: np.ndarray) -> Runner:
    """snnTorch's Leaky stepped over T (raises ImportError when absent)."""
    import snntorch
    import torch

    lif = snntorch.Leaky(beta=ALPHA, threshold=THRESHOLD, reset_mechanism="zero")
    x = torch.from_numpy(current)
    out = torch.empty_like(x)

    def run() -> np.ndarray:
        with torch.no_grad():
            mem = lif.reset_mem()
            for t in range(x.shape[0]):
                spk, mem = lif(x[t], mem)
                out[t] = spk
        return out.numpy()

    return run


def copy_runners(nbytes: int) -> list[Runner]:
    """Copies of ``nbytes`` into a same-size buffer: numpy (one thread) and torch (its threads)."""
    count = nbytes // 4
    source, target = np.ones(count, dtype=np.float32), np.zeros(count, dtype=np.float32)
    runners: list[Runner] = [lambda: np.copyto(target, source)]
    try:
        import torch

        torch_source, torch_target = torch.from_numpy(source), torch.from_numpy(target)
        runners.append(lambda: torch_target.copy_(torch_source))
    except ImportError:
        pass
    return runners


# ---------------------------------------------------------------------------- timing

def measure(make: Callable[[], Runner], repeats: int) -> Cell:
    """Build a contender and time it; a missing package becomes a 'not installed' cell."""
    try:
        run = make()
    except ImportError as exc:
        return Cell(missing=f"not installed ({exc.name})")
    spikes = np.array(run(), copy=True)
    return Cell(median_seconds(run, repeats), spikes=spikes)


def bench_workload(workload: Workload, repeats: int, threads: int, library: str | None) -> dict[str, Cell]:
    """Every contender on ``workload``."""
    current = make_current(workload)
    model = build_lif_model(workload)
    cells = {
        NATIVE: measure(lambda: onnxruntime_runner(model, current, threads, library), repeats) if library
        else Cell(missing="unavailable (see hnnx doctor)"),
        BODY: measure(lambda: onnxruntime_runner(model, current, threads, None), repeats),
        NUMPY: measure(lambda: numpy_runner(current), repeats),
        SPIKINGJELLY: measure(lambda: spikingjelly_runner(current), repeats),
        SNNTORCH: measure(lambda: snntorch_runner(current), repeats),
    }
    cells[FLOOR] = Cell(min(median_seconds(run, repeats) for run in copy_runners(workload.nbytes)))
    return cells


# ---------------------------------------------------------------------------- report
def cell_text(cell: Cell, reference: Cell) -> str:
    if cell.seconds is None:
        return cell.missing
    ms = cell.seconds * 1e3
    decimals = 0 if ms >= 100 else 1 if ms >= 10 else 2 if ms >= 1 else 3  # three significant digits
    text = f"{ms:.{decimals}f} ms"
    if reference.seconds:
        text += f" ({cell.seconds / reference.seconds:.2f}×)"
    return text


def differing(cell: Cell, reference: Cell) -> int | None:
    """How many of the contender's spikes differ from hnnx native's (None: nothing to compare)."""
    if cell.spikes is None or reference.spikes is None:
        return None
    if cell.spikes.shape != reference.spikes.shape:
        return cell.spikes.size
    return int(np.count_nonzero(cell.spikes != reference.spikes))


def agreement(cells: list[Cell], references: list[Cell]) -> str:
    """``identical``, or the number of differing spikes per workload."""
    counts = [differing(cell, reference) for cell, reference in zip(cells, references)]
    if all(count is None for count in counts):
        return "—"
    if all(count in (0, None) for count in counts):
        return "identical"
    return " / ".join("—" if count is None else f"{count:,}" for count in counts) + " differ"


def report(results: dict[Workload, dict[str, Cell]]) -> str:
    """The one table (contenders × workloads) and the target lines."""
    workloads = list(results)
    headers = ["contender (median of runs; × hnnx native)", *(w.title for w in workloads), "spikes vs hnnx native"]
    rows = []
    for name in CONTENDERS:
        same = agreement([results[w][name] for w in workloads], [results[w][NATIVE] for w in workloads])
        rows.append([name, *(cell_text(results[w][name], results[w][NATIVE]) for w in workloads), same])
    lines = [format_table(headers, rows), ""]
    first, small = workloads[0], workloads[1] if len(workloads) > 1 else None
    native_first, floor_first = results[first][NATIVE].seconds, results[first][FLOOR].seconds
    if native_first and floor_first:
        share = floor_first / native_first
        lines.append(f"target: hnnx native at ≥ {FLOOR_SHARE_TARGET:.0%} of the memory floor's speed on "
                     f"{first.title}: floor time / native time = {share:.0%} — "
                     f"{'met' if share >= FLOOR_SHARE_TARGET else 'NOT met'}")
    if small is not None and results[small][NATIVE].seconds:
        seconds = results[small][NATIVE].seconds
        line = (f"target: hnnx native ≤ {SMALL_LAYER_TARGET_S * 1e3:.0f} ms on {small.title}: "
                f"{seconds * 1e3:.2f} ms — {'met' if seconds <= SMALL_LAYER_TARGET_S else 'NOT met'}")
        jelly = results[small][SPIKINGJELLY].seconds
        if jelly:
            speedup = jelly / seconds
            line += (f"; ≥ {SMALL_LAYER_SPEEDUP_TARGET:.0f}× SpikingJelly: {speedup:.1f}× — "
                     f"{'met' if speedup >= SMALL_LAYER_SPEEDUP_TARGET else 'NOT met'}")
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per contender, after one warm-up (7)")
    parser.add_argument("--threads", type=int, default=2, help="threads of onnxruntime and torch (2)")
    parser.add_argument("--quick", action="store_true", help="small shapes for a smoke run")
    return parser.parse_args(argv)


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [Workload(4, 2, 1000), Workload(20, 2, 64)]
    return [Workload(16, 32, 25088), Workload(500, 16, 512), Workload(500, 16, 4096)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.repeats < 5 and not args.quick:
        raise SystemExit("--repeats must be ≥ 5 (the table reports medians of at least 5 runs)")
    try:
        import torch

        torch.set_num_threads(args.threads)
        logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # "Triton not available" on CPU
    except ImportError:
        pass
    current = native.status()
    library = str(current.library) if current.active and current.library else None
    print(f"hnnx LIF benchmark — onnxruntime {ort.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, {args.threads} threads; "
          f"median of {args.repeats} runs after 1 warm-up")
    print(f"LIF: hard reset to 0, alpha={ALPHA}, threshold={THRESHOLD}; input N({CURRENT_MEAN}, {CURRENT_STD}²), "
          f"seed {SEED}; native kernel: {'active' if library else 'unavailable — ' + current.reason}")
    print()
    results = {w: bench_workload(w, args.repeats, args.threads, library) for w in workloads(args.quick)}
    print(report(results), flush=True)


if __name__ == "__main__":
    main()
