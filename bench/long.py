"""Benchmark: long sequences — whole-sequence against chunked simulation, and ``hnnx.Stream`` latency.

The network, an event-camera-like convolutional SNN built with ``hnnx.frontends.torch`` and
exported with ``hnnx.frontends.torch.export`` (which finds the time-major input itself)::

    events [T, N=16, 2, 64, 64] (5 % of them 1)
      → Conv 2→16 3×3 stride 2 → LIF → Conv 16→32 3×3 stride 2 → LIF
      → Flatten → Linear 8192→10 → S2A global (mean over time) → scores [N, 10]

For T = 100, 1,000 and 5,000 the events are written to an ``.npy`` file (uint8; the model casts
them to float32 as it reads them), and each run — ``hnnx.simulate(model, file, batch_size=16)``
over the whole sequence at once (``--chunk 0``) or ``K`` steps at a time with the state carried
(``--chunk K``) — happens in a fresh child process that reports its wall time (the simulation,
sessions included; "run": the steps alone, ``SimulationResult.seconds``) and its peak resident
memory (Linux ``VmHWM``, absolute, and its rise over the resident set just before the run):
the median time and the highest peak of ``--repeats`` (default 3) such children.
A chunked run's scores are compared bit for bit with the whole run's where the whole run was
made. Whole runs are made up to ``--whole-max`` steps (default 1,000; the 5,000-step whole run
would need about 18 GiB, 3.6 GiB per 1,000 steps).

``hnnx.Stream`` latency: the bundled hybrid model (``hybrid_a2s``: an ANN front, A2S rate coding
over 16 steps, two LIF layers, a global S2A readout), one sample, one step per call; the median
over ``--sequences`` sequences of the 15 calls after the first (the first also runs the ANN front).

Run: ``python bench/long.py`` (``--threads``, default 2: onnxruntime intra-op threads).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import format_table  # noqa: E402

BATCH = 16
EVENT_RATE = 0.05
STEPS = (100, 1000, 5000)


def build_model(path: Path) -> None:
    """Export the event network (fixed seed) to ``path``."""
    import torch
    from torch import nn

    import hnnx.frontends.torch as hnn

    torch.manual_seed(0)

    class EventNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = hnn.TimeFold(nn.Conv2d(2, 16, 3, stride=2, padding=1))
            self.lif1 = hnn.LIF(threshold=0.5, alpha=0.9)
            self.conv2 = hnn.TimeFold(nn.Conv2d(16, 32, 3, stride=2, padding=1))
            self.lif2 = hnn.LIF(threshold=0.5, alpha=0.9)
            self.readout = hnn.TimeFold(nn.Sequential(nn.Flatten(), nn.Linear(32 * 16 * 16, 10)))
            self.mean = hnn.S2A(decoding="global")

        def forward(self, events: torch.Tensor) -> torch.Tensor:
            return self.mean(self.readout(self.lif2(self.conv2(self.lif1(self.conv1(events))))))

    net = EventNet()
    with torch.no_grad():  # stronger first layer so that both layers fire on sparse events
        net.conv1.module.weight.mul_(4.0)
    example = (torch.rand(3, 2, 2, 64, 64) < EVENT_RATE).float()
    hnn.export(net, (example,), path, input_names=["events"], output_names=["scores"])


def write_events(path: Path, steps: int, seed: int = 0) -> None:
    """Events ``[steps, 16, 2, 64, 64]`` as uint8 0/1, written a block of steps at a time."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(steps, BATCH, 2, 64, 64))
    rng = np.random.default_rng(seed)
    for first in range(0, steps, 100):
        stop = min(first + 100, steps)
        array[first:stop] = rng.random((stop - first, BATCH, 2, 64, 64)) < EVENT_RATE
    array.flush()
    del array


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child_run(model: str, data: str, chunk: int, threads: int, native: bool) -> dict:
    """One simulation in this (fresh) process: time, peak memory, scores digest, firing rates."""
    import hnnx

    proto = hnnx.load(model)
    before = _resident_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    started = time.perf_counter()
    result = hnnx.simulate(proto, data, batch_size=BATCH, chunk_steps=chunk, threads=threads, native=native)
    seconds = time.perf_counter() - started
    peak = _resident_kib("VmHWM")
    scores = result.outputs["scores"]
    return {"seconds": seconds, "run_seconds": result.seconds, "peak_mib": peak / 1024,
            "rise_mib": (peak - before) / 1024, "digest": hashlib.sha256(scores.tobytes()).hexdigest(),
            "rates": result.firing_rates, "chunk": result.chunk_steps}


def run_child(model: Path, data: Path, chunk: int, threads: int, native: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(model), str(data), str(chunk), "--threads", str(threads)]
    if not native:
        command.append("--bodies")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stream_latency(threads: int, native: bool, sequences: int) -> float:
    """Median seconds of one ``Stream.step()`` on hybrid_a2s, one sample."""
    import hnnx
    from hnnx import models
    from hnnx.datasets import load_digits

    pixels = load_digits().x_test[:1].reshape(1, 1, 8, 8)
    stream = hnnx.Stream(models.path("hybrid_a2s"), threads=threads, native=native)
    times = []
    for _ in range(sequences):
        stream.reset()
        stream.step({"pixels": pixels})
        for _ in range(15):
            started = time.perf_counter()
            stream.step()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=50, help="steps per call of the chunked runs")
    parser.add_argument("--whole-max", type=int, default=1000, help="longest sequence run whole")
    parser.add_argument("--sequences", type=int, default=40, help="Stream latency: sequences of 16 steps")
    parser.add_argument("--repeats", type=int, default=3, help="child runs per configuration")
    parser.add_argument("--steps", type=int, nargs="*", default=list(STEPS))
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "DATA", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument("--bodies", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, data, chunk = args.child
        print(json.dumps(child_run(model, data, int(chunk), args.threads, not args.bodies)))
        return

    from hnnx.runtime import native as native_kernels

    native = native_kernels.status().active
    print(f"# hnnx long sequences — {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"LIF on the {'native kernel' if native else 'function bodies'}; batch {BATCH}, "
          f"events {EVENT_RATE:.0%}")
    rows = []
    summary: dict[tuple[int, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="hnnx-long-") as tmp:
        model = Path(tmp) / "events.onnx"
        build_model(model)
        for steps in args.steps:
            data = Path(tmp) / f"events_{steps}.npy"
            write_events(data, steps)
            runs = ([("whole", 0)] if steps <= args.whole_max else []) + [(f"chunks of {args.chunk}", args.chunk)]
            for label, chunk in runs:
                repeats = [run_child(model, data, chunk, args.threads, native) for _ in range(args.repeats)]
                got = dict(repeats[0])  # times: the median run; memory: the highest peak
                for key in ("seconds", "run_seconds"):
                    got[key] = statistics.median(r[key] for r in repeats)
                for key in ("peak_mib", "rise_mib"):
                    got[key] = max(r[key] for r in repeats)
                assert len({r["digest"] for r in repeats}) == 1, "runs of one configuration differ"
                summary[steps, "whole" if chunk == 0 else "chunked"] = got
                whole = summary.get((steps, "whole"))
                same = "—" if chunk == 0 or whole is None else (
                    "bit-identical" if got["digest"] == whole["digest"] else "DIFFERENT")
                rows.append([f"T = {steps:,}", label, f"{got['seconds']:.2f}",
                             f"{1000 * got['seconds'] / steps:.2f}", f"{1000 * got['run_seconds'] / steps:.2f}",
                             f"{got['peak_mib']:,.0f}", f"{got['rise_mib']:,.0f}", same])
            data.unlink()
            if steps > args.whole_max:
                rows.append([f"T = {steps:,}", "whole", "not run", "", "", "", "", ""])
    print()
    print(format_table(["sequence", "run", "seconds", "ms / step", "run ms / step", "peak RSS MiB", "rise MiB",
                        "scores vs whole"], rows))
    rates = next(iter(summary.values()))["rates"]
    print(f"\nfiring rates (T = {args.steps[0]}): " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    first, last = args.steps[0], args.steps[-1]
    if (first, "chunked") in summary and (last, "chunked") in summary:
        ratio = summary[last, "chunked"]["peak_mib"] / summary[first, "chunked"]["peak_mib"]
        print(f"chunked peak at T = {last:,} / at T = {first:,}: {ratio:.2f}× (target ≤ 1.2×)")
    if (first, "whole") in summary and (first, "chunked") in summary:
        ratio = summary[first, "chunked"]["seconds"] / summary[first, "whole"]["seconds"]
        print(f"chunked time per step / whole time per step at T = {first:,}: {ratio:.2f}× (target ≤ 1.1×)")
    latencies = [["hnnx.Stream, native LIF" if kernel else "hnnx.Stream, function bodies",
                  f"{1000 * stream_latency(args.threads, kernel, args.sequences):.3f}"]
                 for kernel in ([True] if native else []) + [False]]
    print()
    print(format_table(["one step of hybrid_a2s, 1 sample", "median ms"], latencies))


if __name__ == "__main__":
    main()
