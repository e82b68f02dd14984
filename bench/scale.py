"""Benchmark: data-parallel scaling — samples per second of one process, 1 and 2 local worker
processes and a local Ray cluster of 2 CPUs, every worker with one onnxruntime thread.

The workload, an event-camera-like convolutional SNN built with ``hnnx.frontends.torch``::

    events [T=16, N, 2, 32, 32] (5 % of them 1)
      → Conv 2→16 3×3 stride 2 → LIF → Conv 16→32 3×3 stride 2 → LIF
      → Flatten → Linear 2048→10 → S2A global (mean over time) → scores [N, 10]

over ``--samples`` samples (default 2,048) stored in an ``.npy`` file (uint8 events) that the
workers read themselves, in batches of 32:

* **simulate** — ``hnnx.simulate(model, file, ...)``;
* **calibrate** — ``hnnx.calibrate.calibrate(model, file, <both Conv outputs and the readout>,
  observer="percentile")`` (histogram observers, merged exactly across workers).

Every configuration runs ``--repeats`` times (default 5), the configurations taking turns so that a
change in the machine's load touches all of them alike; the table gives the median samples per second
of these warm runs (worker processes started and kept; for Ray, its workers too), the median 1-minute
load average around them, the first run's seconds (which start the worker processes), and whether
every run's result equals one process's (outputs and firing rates for simulate, thresholds, ranges and
firing rates for calibrate). Efficiency: samples per second of 2 workers over 1 worker (target ≥ 1.7
on 2 cores). The machine is shared: run it when ``uptime`` shows a low load.

Run: ``python bench/scale.py`` (``--no-ray`` without Ray; ``--quick``: 512 samples, 2 repeats).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import format_table  # noqa: E402

STEPS = 16
SIDE = 32
EVENT_RATE = 0.05
BATCH = 32


def build_model(path: Path) -> None:
    """Export the event network (fixed seed) to ``path``."""
    import torch
    from torch import nn

    import hnnx.frontends.torch as hnn

    torch.manual_seed(0)
    net = nn.Sequential(
        hnn.TimeFold(nn.Conv2d(2, 16, 3, stride=2, padding=1)), hnn.LIF(threshold=0.5, alpha=0.9),
        hnn.TimeFold(nn.Conv2d(16, 32, 3, stride=2, padding=1)), hnn.LIF(threshold=0.5, alpha=0.9),
        hnn.TimeFold(nn.Sequential(nn.Flatten(), nn.Linear(32 * (SIDE // 4) ** 2, 10))), hnn.S2A(decoding="global"))
    with torch.no_grad():  # a stronger first layer, so that both layers fire on sparse events
        net[0].module.weight.mul_(4.0)
    example = (torch.rand(STEPS, 2, 2, SIDE, SIDE) < EVENT_RATE).float()
    hnn.export(net, (example,), path, input_names=["events"], output_names=["scores"])


def write_events(path: Path, samples: int) -> None:
    """``[T, samples, 2, 32, 32]`` uint8 events, 5 % ones (fixed seed), as an ``.npy`` file."""
    rng = np.random.default_rng(0)
    events = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(STEPS, samples, 2, SIDE, SIDE))
    for start in range(0, samples, 256):
        stop = min(start + 256, samples)
        events[:, start:stop] = rng.random((STEPS, stop - start, 2, SIDE, SIDE)) < EVENT_RATE
    events.flush()
    del events


@dataclass
class Measured:
    """One configuration of one workload: warm samples per second, loads, first-run seconds, equality."""

    name: str
    rates: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    first_seconds: float = 0.0
    identical: bool = True


def simulate_workload(model: Path, data: Path) -> Callable[..., Any]:
    import hnnx

    def run(**options: Any) -> Any:
        return hnnx.simulate(model, data, batch_size=BATCH, chunk_steps=0, **options)

    return run


def calibrate_workload(model: Path, data: Path) -> Callable[..., Any]:
    import hnnx
    from hnnx.calibrate import calibrate

    proto = hnnx.load(model)
    tensors = [node.output[0] for node in proto.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]

    def run(**options: Any) -> Any:
        return calibrate(proto, data, tensors, observer="percentile", batch_size=BATCH, **options)

    return run


def same_result(kind: str, got: Any, expected: Any) -> bool:
    if kind == "simulate":
        return (all(np.array_equal(got.outputs[name], expected.outputs[name]) for name in expected.outputs)
                and got.firing_rates == expected.firing_rates)
    return (all(np.array_equal(got.absmax(name), expected.absmax(name)) for name in expected.observers)
            and got.current_ranges == expected.current_ranges and got.firing_rates == expected.firing_rates)


def measure(kind: str, run: Callable[..., Any], configurations: dict[str, dict[str, Any]], samples: int,
            repeats: int) -> list[Measured]:
    """First runs (worker processes started by them), then ``repeats`` rounds of every configuration."""
    from hnnx.runtime.parallel import stop_workers

    reference = run(threads=1)
    results = {name: Measured(name) for name in configurations}
    for name, options in configurations.items():
        stop_workers()  # each first run starts its own worker processes
        started = time.perf_counter()
        results[name].identical &= same_result(kind, run(**options), reference)
        results[name].first_seconds = time.perf_counter() - started
    for _ in range(repeats):
        for name, options in configurations.items():
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            outcome = run(**options)
            seconds = time.perf_counter() - started
            results[name].rates.append(samples / seconds)
            results[name].loads.append((load_before + os.getloadavg()[0]) / 2)
            results[name].identical &= same_result(kind, outcome, reference)
    return list(results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray configuration")
    parser.add_argument("--quick", action="store_true", help="512 samples, 2 repeats")
    args = parser.parse_args()
    samples, repeats = (512, 2) if args.quick else (args.samples, args.repeats)

    import hnnx
    from hnnx.runtime import native

    configurations: dict[str, dict[str, Any]] = {
        "one process": {"threads": 1},
        "1 worker process": {"workers": 1, "threads": 1},
        "2 worker processes": {"workers": 2, "threads": 1},
    }
    ray_note = "not measured (--no-ray)"
    if not args.no_ray:
        try:
            import ray
        except ImportError:
            ray_note = "not measured: ray is not installed (pip install 'hnnx[ray]')"
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            started = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            ray_note = f"a local cluster of 2 CPUs, started in {time.perf_counter() - started:.1f} s (not counted)"
            configurations["Ray, 2 workers"] = {"ray": True, "workers": 2, "threads": 1}

    with tempfile.TemporaryDirectory(prefix="hnnx-scale-") as tmp:
        model, data = Path(tmp) / "events.onnx", Path(tmp) / "events.npy"
        build_model(model)
        write_events(data, samples)
        print(f"hnnx {hnnx.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"LIF kernel: {'native' if native.status().active else 'function bodies'}; "
              f"{samples:,} samples [T={STEPS}, 2, {SIDE}, {SIDE}], batches of {BATCH}, {repeats} warm runs each; "
              f"Ray: {ray_note}")
        rows = []
        for kind, workload in (("simulate", simulate_workload), ("calibrate", calibrate_workload)):
            measured = measure(kind, workload(model, data), configurations, samples, repeats)
            base = statistics.median(measured[0].rates)
            single = statistics.median(measured[1].rates)
            for entry in measured:
                rate = statistics.median(entry.rates)
                rows.append([kind, entry.name, f"{rate:,.0f}", f"{rate / base:.2f}×",
                             "—" if entry is measured[0] else f"{rate / single:.2f}×",
                             f"{statistics.median(entry.loads):.2f}", f"{entry.first_seconds:.2f}",
                             "bit-identical" if entry.identical else "DIFFERENT"])
        print()
        print(format_table(["workload", "run on", "samples/s", "vs one process", "vs 1 worker", "load (1 min)",
                            "first run s", "result"], rows))
    if "Ray, 2 workers" in configurations:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
