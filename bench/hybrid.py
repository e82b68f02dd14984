"""Benchmark: the bundled hybrid models end to end with native Hybrid Units against their function bodies.

What is measured
----------------
Every bundled model with ``hnnx.A2S``/``hnnx.S2A`` nodes (the hybrid ANN/SNN models and the
SNNs, whose input coding and output decoding are HUs) runs over the digits test split in batches
of ``--batch-size`` (default 128) as ``hnnx simulate`` runs it (``hnnx.Simulator`` with its
firing-rate taps, ``event_driven="auto"``: its integer layers as exact float layers), in (1)–(3)
with a firing rate of 1 given for every spike source, so that no layer is event-driven and no
rate tap is added (without rates, ``"auto"`` would measure the rate of a rate-coding A2S — in the
native model only, where the A2S is a spike node rather than inlined ops), in float and as the
``tianjicx`` integer model
``hnnx.quantize`` writes (calibrated on 256 training images). Three ways, with the same ``--threads``:

1. ``function bodies`` — no native kernel: LIF, A2S and S2A run their ONNX function bodies.
2. ``native LIF, HU bodies`` — the fused LIF kernel, the A2S/S2A nodes inlined into their
   function bodies (how the models ran before the native HUs), after the rewrite a simulation makes
   before the HUs could be inlined (a direct-coding A2S codes one step, ``hoist_repeated``).
3. ``all native`` — LIF, A2S and S2A on the native kernels.
4. ``all native, event-driven`` — and the spike-input layers on the event-driven kernels
   (``event_driven="on"``: float layers opted in, their sums in the op's order).

Time: median of ``--repeats`` (default 7) runs of ``--passes`` (default 5) passes over the split,
after one warm-up. The target — the bundled hybrid model ≥ 1.5× faster end to end with native
A2S/S2A than on function bodies — is (1) / (3); (2) / (3) is what the native HUs add to the native
LIF alone (bounded by the share of a run the HU bodies took), (2) / (4) what event-driven layers
add on these small layers. Outputs are compared with (1): bit for bit, or (float event-driven layers) as the
share of samples whose class differs and the largest difference.

Run: ``python bench/hybrid.py``. Needs the native kernels (``hnnx doctor --build``).
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Callable

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort

import hnnx
from hnnx import models, ops
from hnnx.datasets import load_digits
from hnnx.passes import run_passes
from hnnx.passes.events import for_simulation
from hnnx.passes.time import hoist_repeated
from tables import format_table, median_seconds, require_native_kernels

SPEEDUP_TARGET = 1.5
"""Issue target: the bundled hybrid model ≥ 1.5× faster end to end with native A2S/S2A."""
HYBRID_UNITS = ("A2S", "S2A")
BODIES = "function bodies"
NATIVE_LIF = "native LIF, HU bodies"
NATIVE = "all native"
EVENT = "all native, event-driven"


def with_hu_bodies(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as the simulation rewrites it first (a direct-coding A2S codes one step and the layer
    after it runs once per frame: ``hoist_repeated``), then with its A2S and S2A nodes replaced by their
    function bodies — so that (2) differs from (3) only in how the HUs run."""
    model = ops.attach_functions(run_passes(model, [hoist_repeated()]))
    return onnx.inliner.inline_selected_functions(model, [(ops.DOMAIN, op) for op in HYBRID_UNITS])


def dense_rates(model: onnx.ModelProto) -> dict[str, float]:
    """A firing rate of 1 for every spike source of ``model``'s spike-input layers: with these rates
    ``event_driven="auto"`` keeps every layer dense and measures no rate."""
    _, decisions = for_simulation(model, "auto")
    return {source: 1.0 for layer in decisions for source in layer.sources}


def passes(model: onnx.ModelProto, batches: list[np.ndarray], threads: int, kernels: bool, count: int,
           event_driven: str = "auto") -> Callable[[], list[np.ndarray]]:
    """``count`` passes over ``batches`` on a Simulator of ``model``: the first output of every batch;
    with ``event_driven="auto"`` every layer dense (rates of 1), with ``"on"`` every spike-input layer
    event-driven."""
    rates = dense_rates(model) if event_driven == "auto" else {}
    simulator = hnnx.Simulator(model, threads=threads, native=kernels, event_driven=event_driven, event_rates=rates)
    name = simulator.inputs[0].name

    def run() -> list[np.ndarray]:
        for _ in range(count - 1):
            for batch in batches:
                simulator.run({name: batch})
        return [next(iter(simulator.run({name: batch})[0].values())) for batch in batches]

    return run


def agreement(got: list[np.ndarray], reference: list[np.ndarray]) -> str:
    a, b = np.concatenate(got), np.concatenate(reference)
    if np.array_equal(a, b):
        return "bit-identical"
    classes = float(np.mean(a.argmax(-1) != b.argmax(-1)))
    return f"{100 * classes:.2f} % classes differ, max |Δ| {float(np.abs(a - b).max()):.1e}"


def measure(name: str, model: onnx.ModelProto, batches: list[np.ndarray], threads: int, repeats: int,
            count: int) -> list[str]:
    contenders = {BODIES: passes(model, batches, threads, False, count),
                  NATIVE_LIF: passes(with_hu_bodies(model), batches, threads, True, count),
                  NATIVE: passes(model, batches, threads, True, count),
                  EVENT: passes(model, batches, threads, True, count, event_driven="on")}
    reference = contenders[BODIES]()
    seconds, same = {}, {}
    for label, run in contenders.items():
        same[label] = agreement(run(), reference)
        seconds[label] = median_seconds(run, repeats)
    checks = {same[label] for label in (NATIVE_LIF, NATIVE)}
    return [name, *[f"{1000 * seconds[label]:.1f}" for label in contenders],
            f"{seconds[BODIES] / seconds[NATIVE]:.2f}×", f"{seconds[NATIVE_LIF] / seconds[NATIVE]:.2f}×",
            f"{seconds[NATIVE_LIF] / seconds[EVENT]:.2f}×",
            " / ".join(sorted(checks)), same[EVENT]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per contender, after one warm-up (7)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (2)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per batch (128)")
    parser.add_argument("--passes", type=int, default=5, help="passes over the split per timed run (5)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_native_kernels()
    digits = load_digits()
    print(f"hnnx hybrid units — onnxruntime {ort.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads; the digits test split ({len(digits.y_test)} samples) in "
          f"batches of {args.batch_size}; median of {args.repeats} runs of {args.passes} passes, after 1 warm-up")
    rows, hybrid_speedups = [], []
    for name in models.available():
        model = hnnx.load(models.path(name))
        if not any(n.domain == ops.DOMAIN and n.op_type in HYBRID_UNITS for n in model.graph.node):
            continue
        layout = models.input_layout(name)
        x = digits.x_test.reshape(-1, *layout).astype(np.float32)
        batches = [x[i:i + args.batch_size] for i in range(0, len(x), args.batch_size)]
        quantized, _ = hnnx.quantize(model, {"pixels": digits.x_train[:256].reshape(-1, *layout)}, target="tianjicx")
        for label, variant in ((f"{name} (float)", model), (f"{name} (tianjicx int)", quantized)):
            row = measure(label, variant, batches, args.threads, args.repeats, args.passes)
            rows.append(row)
            if name.startswith("hybrid"):
                hybrid_speedups.append((label, float(row[5].rstrip("×")), float(row[6].rstrip("×"))))
            print(" | ".join(row), flush=True)
    print()
    print(format_table(["model", f"(1) {BODIES} ms", f"(2) {NATIVE_LIF} ms", f"(3) {NATIVE} ms", f"(4) {EVENT} ms",
                        "(1) / (3)", "(2) / (3)", "(2) / (4)", "outputs (2), (3) vs (1)", "outputs (4) vs (1)"],
                       rows))
    print()
    for label, speedup, hus in hybrid_speedups:
        print(f"target: {label} ≥ {SPEEDUP_TARGET}× faster all native than on function bodies: {speedup:.2f}× — "
              f"{'met' if speedup >= SPEEDUP_TARGET else 'NOT met'} (the native HUs alone, over the native LIF: "
              f"{hus:.2f}×)")


if __name__ == "__main__":
    main()
