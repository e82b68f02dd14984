"""Benchmark: an end-to-end convolutional SNN in hnnx (onnxruntime), SpikingJelly and snnTorch.

The network (the same layers, weights and neuron in every framework)::

    images [N=32, 3, 32, 32] → repeated over T = 8 steps (direct coding)
      → Conv 3→16 3×3 pad 1 → LIF → Conv 16→32 3×3 stride 2 pad 1 → LIF
      → Flatten → Linear 8192→10 → mean over time → scores [N, 10]

LIF: hard reset to 0, leak 0.5 (hnnx ``alpha = 0.5``; SpikingJelly ``LIFNode(tau=2,
decay_input=False, v_reset=0)``: ``V − V/2 + X``; snnTorch ``Leaky(beta=0.5,
reset_mechanism="zero")``), threshold ``1 + 2⁻²⁰``.

Bit-exact by construction: inputs are multiples of 1/16 in [0, 1], weights and biases
multiples of 1/64 of magnitude ≤ 1/4. Every product, sum and leak is then exact in float32
whatever the summation order of a framework's convolution, and the threshold lies off the
grid of reachable membrane values, so ``≥`` (SpikingJelly) and ``>`` (hnnx, snnTorch) agree.
The three must therefore produce bit-identical spikes and scores — the table checks it.

Contenders, measured in the same run with the same thread count (``--threads``, default 2:
onnxruntime intra-op threads and ``torch.set_num_threads``), inference only:

1. ``hnnx native`` — the network built from ``hnnx.frontends.torch`` modules (``LIF``,
   ``TimeFold``), exported to ONNX (one ``hnnx.LIF`` node per layer, function bodies
   attached; the repetition over T and the mean over T as standard ops), run by
   ``hnnx.Simulator(native=True, firing_rates=False)``: onnxruntime with the fused kernel.
2. ``hnnx function body`` — the same model, ``native=False``: the LIF bodies are Scans.
2b. ``hnnx native, event-driven`` — the same model with the spike-input layers (Conv 16→32 and
   the Linear) on the event-driven kernels (``Simulator(event_driven="on")``: float layers opted
   in; the dyadic weights make every summation order exact, so spikes and scores stay identical).
3. ``SpikingJelly`` — ``spikingjelly.activation_based`` ``layer.Conv2d``/``layer.Linear``/
   ``neuron.LIFNode`` in multi-step mode (``step_mode="m"``), CPU, ``torch.no_grad()``.
4. ``snnTorch`` — ``nn.Conv2d``/``nn.Linear``/``snntorch.Leaky`` stepped over T as in its
   tutorials, ``torch.no_grad()``.

Integer mode (second table): the network quantized by ``hnnx.quantize`` (``tianjicx`` int,
calibrated on 64 other images) and run three ways — onnxruntime's integer ops
(``event_driven="off"``), the integer layers as exact float layers (``integer_as_float``) and
with the spike-input layers event-driven (``"on"``); their outputs must be bit-identical, and
the float model's native time gives the integer-to-float ratio.

Time: median of ``--repeats`` (default 7) runs of one batch after a warm-up. Peak memory:
each contender runs once more in a fresh child process, which reports how far its resident
set rose above the size it had just before the run (Linux ``VmHWM`` after resetting it
through ``/proc/self/clear_refs``; ``ru_maxrss`` elsewhere).

Run: ``python bench/snn.py``. Peers: ``pip install -e '.[bench]'`` (snnTorch) and
``pip install --no-deps spikingjelly==2.0.0 loguru`` (see README).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tables import format_table, median_seconds

SEED = 7
STEPS = 8
BATCH = 32
CHANNELS = (3, 16, 32)
SIZE = 32
CLASSES = 10
ALPHA = 0.5
THRESHOLD = 1.0 + 2.0**-20
"""Off the grid of reachable membrane values (multiples of 2⁻¹⁸ at the finest)."""
SPEEDUP_TARGET = 3.0
"""Issue target: hnnx native ≥ 3× SpikingJelly on CPU."""
EVENT_TARGET = 6.0
"""Issue target: hnnx with event-driven layers ≥ 6× SpikingJelly on CPU."""

NATIVE = "hnnx native (onnxruntime + fused LIF)"
BODY = "hnnx function body (onnxruntime Scan)"
EVENT = "hnnx native, event-driven layers"
SPIKINGJELLY = "SpikingJelly 2, multi-step"
SNNTORCH = "snnTorch, stepped"
CONTENDERS = (NATIVE, BODY, EVENT, SPIKINGJELLY, SNNTORCH)
INTEGER_DENSE = "tianjicx int, onnxruntime integer ops"
INTEGER_FLOAT = "tianjicx int, exact float layers"
INTEGER_EVENT = "tianjicx int, event-driven layers"
INTEGER_MODES = {INTEGER_DENSE: "off", INTEGER_FLOAT: "auto", INTEGER_EVENT: "on"}
"""``event_driven`` of each integer contender ("auto" without firing rates: the exact float layers only)."""
NATIVE_SIMULATION = "hnnx native with firing-rate taps"
"""Memory only: the Simulator as ``hnnx.simulate`` runs it (spike counts reduced in the graph)."""

Forward = Callable[[], "tuple[np.ndarray, np.ndarray, np.ndarray]"]
"""One batch: ``(scores [N, 10], spikes of LIF 1, spikes of LIF 2)`` as numpy arrays."""


# ---------------------------------------------------------------------------- data and weights
@dataclass(frozen=True)
class Weights:
    """Dyadic parameters (see the module docstring), shared by every framework."""

    conv1_w: np.ndarray
    conv1_b: np.ndarray
    conv2_w: np.ndarray
    conv2_b: np.ndarray
    fc_w: np.ndarray
    fc_b: np.ndarray


def dyadic(rng: np.random.Generator, shape: tuple[int, ...], limit: int, denominator: int) -> np.ndarray:
    """Integers in [−limit, limit] over ``denominator``, float32."""
    return (rng.integers(-limit, limit + 1, shape) / denominator).astype(np.float32)


def make_weights(seed: int = SEED) -> Weights:
    rng = np.random.default_rng(seed)
    c0, c1, c2 = CHANNELS
    features = c2 * (SIZE // 2) ** 2
    return Weights(conv1_w=dyadic(rng, (c1, c0, 3, 3), 16, 64), conv1_b=dyadic(rng, (c1,), 8, 64) + np.float32(0.125),
                   conv2_w=dyadic(rng, (c2, c1, 3, 3), 16, 64), conv2_b=dyadic(rng, (c2,), 8, 64),
                   fc_w=dyadic(rng, (CLASSES, features), 16, 64), fc_b=dyadic(rng, (CLASSES,), 8, 64))


def make_images(seed: int = SEED + 1, batch: int = BATCH) -> np.ndarray:
    """``[N, 3, 32, 32]`` float32, multiples of 1/16 in [0, 1]."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 17, (batch, CHANNELS[0], SIZE, SIZE)) / 16).astype(np.float32)


def load_into(conv1: nn.Conv2d, conv2: nn.Conv2d, fc: nn.Linear, weights: Weights) -> None:
    with torch.no_grad():
        for module, w, b in ((conv1, weights.conv1_w, weights.conv1_b), (conv2, weights.conv2_w, weights.conv2_b),
                             (fc, weights.fc_w, weights.fc_b)):
            module.weight.copy_(torch.from_numpy(w))
            module.bias.copy_(torch.from_numpy(b))


def torch_layers() -> tuple[nn.Conv2d, nn.Conv2d, nn.Linear]:
    c0, c1, c2 = CHANNELS
    return (nn.Conv2d(c0, c1, 3, padding=1), nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.Linear(c2 * (SIZE // 2) ** 2, CLASSES))


# ---------------------------------------------------------------------------- hnnx
def export_hnnx(weights: Weights, path: Path) -> onnx.ModelProto:
    """The network from hnnx.frontends.torch modules, exported to ONNX (LIF nodes named lif1, lif2)."""
    import hnnx.frontends.torch as hnn

    class SpikingConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            conv1, conv2, fc = torch_layers()
            load_into(conv1, conv2, fc, weights)
            self.conv1 = hnn.TimeFold(conv1)
            self.lif1 = hnn.LIF(threshold=THRESHOLD, alpha=ALPHA)
            self.conv2 = hnn.TimeFold(conv2)
            self.lif2 = hnn.LIF(threshold=THRESHOLD, alpha=ALPHA)
            self.readout = hnn.TimeFold(nn.Sequential(nn.Flatten(), fc))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            repeated = images.unsqueeze(0).expand(STEPS, *images.shape)  # direct coding
            spikes = self.lif1(self.conv1(repeated))
            return self.readout(self.lif2(self.conv2(spikes))).mean(0)

    example = torch.from_numpy(make_images(batch=2))
    return hnn.export(SpikingConvNet(), (example,), path, input_names=["images"], output_names=["scores"])


def hnnx_forward(model_path: Path, images: np.ndarray, threads: int, native: bool, probes: bool = False,
                 firing_rates: bool = False, event_driven: str = "off") -> Forward:
    """``hnnx.Simulator`` over the exported model; with ``probes`` also the spikes of both LIF layers."""
    import hnnx

    model = hnnx.load(model_path)
    names = [node.output[0] for node in model.graph.node if node.op_type == "LIF"] if probes else []
    simulator = hnnx.Simulator(model, probes=names, firing_rates=firing_rates, threads=threads,
                               native=native, event_driven=event_driven, event_rates={})
    if event_driven == "on" and not any(layer.rewritten for layer in simulator.event_layers):
        raise RuntimeError("no layer became event-driven")

    def run() -> tuple[np.ndarray, ...]:
        tensors, _ = simulator.run({"images": images})
        return (tensors["scores"], *(tensors[name] for name in names))

    return run


# ---------------------------------------------------------------------------- peers
def spikingjelly_forward(weights: Weights, images: np.ndarray) -> Forward:
    from spikingjelly.activation_based import functional, layer, neuron

    c0, c1, c2 = CHANNELS
    conv1 = layer.Conv2d(c0, c1, 3, padding=1, step_mode="m")
    conv2 = layer.Conv2d(c1, c2, 3, stride=2, padding=1, step_mode="m")
    fc = layer.Linear(c2 * (SIZE // 2) ** 2, CLASSES, step_mode="m")
    load_into(conv1, conv2, fc, weights)

    def lif() -> nn.Module:
        return neuron.LIFNode(tau=1 / (1 - ALPHA), decay_input=False, v_threshold=THRESHOLD, v_reset=0.0,
                              step_mode="m")

    lif1, lif2, flatten = lif(), lif(), layer.Flatten(step_mode="m")
    x = torch.from_numpy(images)

    def run() -> tuple[np.ndarray, ...]:
        functional.reset_net(lif1)
        functional.reset_net(lif2)
        with torch.no_grad():
            spikes1 = lif1(conv1(x.unsqueeze(0).repeat(STEPS, 1, 1, 1, 1)))
            spikes2 = lif2(conv2(spikes1))
            scores = fc(flatten(spikes2)).mean(0)
        return scores.numpy(), spikes1.numpy(), spikes2.numpy()

    return run


def snntorch_forward(weights: Weights, images: np.ndarray, probes: bool) -> Forward:
    import snntorch

    conv1, conv2, fc = torch_layers()
    load_into(conv1, conv2, fc, weights)
    lif1 = snntorch.Leaky(beta=ALPHA, threshold=THRESHOLD, reset_mechanism="zero")
    lif2 = snntorch.Leaky(beta=ALPHA, threshold=THRESHOLD, reset_mechanism="zero")
    x = torch.from_numpy(images)

    def run() -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            mem1, mem2 = lif1.reset_mem(), lif2.reset_mem()
            spikes1, spikes2, scores = [], [], []
            for _ in range(STEPS):
                spk1, mem1 = lif1(conv1(x), mem1)
                spk2, mem2 = lif2(conv2(spk1), mem2)
                scores.append(fc(spk2.flatten(1)))
                if probes:  # kept only for the equality check, not while timing
                    spikes1.append(spk1)
                    spikes2.append(spk2)
            mean = torch.stack(scores).mean(0).numpy()
            return (mean, torch.stack(spikes1).numpy(), torch.stack(spikes2).numpy()) if probes else (mean,)

    return run


def make_forward(name: str, weights: Weights, images: np.ndarray, model_path: Path, threads: int,
                 probes: bool) -> Forward:
    """A contender's forward pass (ImportError: its package is not installed)."""
    if name == NATIVE:
        return hnnx_forward(model_path, images, threads, native=True, probes=probes)
    if name == BODY:
        return hnnx_forward(model_path, images, threads, native=False, probes=probes)
    if name == EVENT:
        return hnnx_forward(model_path, images, threads, native=True, probes=probes, event_driven="on")
    if name in INTEGER_MODES:
        return hnnx_forward(model_path.with_name("snn_int.onnx"), images, threads, native=True, probes=probes,
                            event_driven=INTEGER_MODES[name])
    if name == NATIVE_SIMULATION:
        return hnnx_forward(model_path, images, threads, native=True, firing_rates=True)
    if name == SPIKINGJELLY:
        return spikingjelly_forward(weights, images)
    return snntorch_forward(weights, images, probes)


# ---------------------------------------------------------------------------- measuring
@dataclass
class Row:
    name: str
    seconds: float | None = None
    missing: str = ""
    peak_mib: float | None = None
    outputs: tuple[np.ndarray, ...] = field(default_factory=tuple)


def _resident_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rise_mib(run: Callable[[], object]) -> float:
    """How far the resident set rises above its current size while ``run`` runs once (MiB)."""
    before = _resident_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    run()
    if before is not None and reset:
        return (_resident_kib("VmHWM") - before) / 1024
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - (before or 0)) / 1024


def child_peak(name: str, model_path: Path, threads: int) -> float | None:
    """Peak memory of one forward pass of ``name`` in a fresh process (None if it failed)."""
    done = subprocess.run([sys.executable, __file__, "--memory-child", name, "--model", str(model_path),
                           "--threads", str(threads)], capture_output=True, text=True, timeout=600)
    try:
        return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])
    except (IndexError, ValueError, KeyError):
        return None


def memory_child(name: str, model_path: Path, threads: int) -> None:
    """(Child process) build ``name``, then measure one forward pass; print JSON."""
    torch.set_num_threads(threads)
    run = make_forward(name, make_weights(), make_images(), model_path, threads, probes=False)
    print(json.dumps({"peak_mib": peak_rise_mib(run)}))


# ---------------------------------------------------------------------------- report
def compare(row: Row, reference: Row, index: int) -> str:
    if not row.outputs or not reference.outputs:
        return "—"
    a, b = row.outputs[index], reference.outputs[index]
    if a.shape != b.shape:
        return f"shape {list(a.shape)}"
    differ = int(np.count_nonzero(a != b))
    return "bit-identical" if differ == 0 else f"{differ:,} of {a.size:,} differ"


def report(rows: dict[str, Row], simulation_peak: float | None) -> str:
    native, jelly, event = rows[NATIVE], rows[SPIKINGJELLY], rows[EVENT]
    headers = ["contender", "median s", "× hnnx native", "peak memory", "scores vs hnnx native",
               "spikes vs hnnx native"]
    table = []
    for row in rows.values():
        if row.seconds is None:
            table.append([row.name, row.missing, "", "", "", ""])
            continue
        ratio = f"{row.seconds / native.seconds:.2f}×" if native.seconds else ""
        peak = f"{row.peak_mib:.0f} MiB" if row.peak_mib is not None else "?"
        spikes = {compare(row, native, 1), compare(row, native, 2)}
        table.append([row.name, f"{row.seconds:.4f}", ratio, peak, compare(row, native, 0), " / ".join(sorted(spikes))])
    lines = [format_table(headers, table), ""]
    if native.seconds and jelly.seconds:
        speedup = jelly.seconds / native.seconds
        lines.append(f"target: hnnx native ≥ {SPEEDUP_TARGET:.0f}× SpikingJelly (CPU): {speedup:.2f}× — "
                     f"{'met' if speedup >= SPEEDUP_TARGET else 'NOT met'}")
    if event.seconds and jelly.seconds:
        speedup = jelly.seconds / event.seconds
        lines.append(f"target: hnnx with event-driven layers ≥ {EVENT_TARGET:.0f}× SpikingJelly (CPU): {speedup:.2f}× — "
                     f"{'met' if speedup >= EVENT_TARGET else 'NOT met'}")
    if native.outputs:
        rates = [float(s.mean()) for s in native.outputs[1:]]
        lines.append(f"firing rates (hnnx native): lif1 {rates[0]:.3f}, lif2 {rates[1]:.3f}")
    activation = BATCH * STEPS * CHANNELS[1] * SIZE * SIZE * 4 / 2**20
    lines.append(f"peak memory = rise of the resident set during one batch in a fresh process; for scale, one "
                 f"[T, N, 16, 32, 32] float32 activation is {activation:.0f} MiB")
    if simulation_peak is not None:
        lines.append(f"peak memory of hnnx native with the firing-rate taps of hnnx.simulate: "
                     f"{simulation_peak:.0f} MiB")
    return "\n".join(lines)


def integer_report(rows: dict[str, Row], float_native: Row, jelly: Row) -> str:
    """The quantized network three ways: time, × the float model on the native kernel, equality."""
    dense = rows[INTEGER_DENSE]
    headers = ["contender", "median s", "× float hnnx native", "× SpikingJelly speed", "outputs vs integer ops"]
    table = []
    for row in rows.values():
        if row.seconds is None:
            table.append([row.name, row.missing, "", "", ""])
            continue
        versus = f"{row.seconds / float_native.seconds:.2f}×" if float_native.seconds else ""
        jelly_ratio = f"{jelly.seconds / row.seconds:.2f}×" if jelly.seconds else ""
        same = {compare(row, dense, index) for index in range(3)}
        table.append([row.name, f"{row.seconds:.4f}", versus, jelly_ratio, " / ".join(sorted(same))])
    lines = [format_table(headers, table)]
    event = rows[INTEGER_EVENT]
    if event.seconds and jelly.seconds:
        speedup = jelly.seconds / event.seconds
        lines.append(f"target: integer mode with event-driven layers ≥ {EVENT_TARGET:.0f}× SpikingJelly: {speedup:.2f}× — "
                     f"{'met' if speedup >= EVENT_TARGET else 'NOT met'} (outputs identical to the integer ops: "
                     f"{'yes' if compare(event, dense, 0) == 'bit-identical' else 'NO'})")
    if event.outputs:
        rates = [float(s.mean()) for s in event.outputs[1:]]
        lines.append(f"firing rates (integer): lif1 {rates[0]:.3f}, lif2 {rates[1]:.3f}")
    return "\n".join(lines)


def quantize_model(model_path: Path) -> None:
    """The tianjicx integer model, written next to the float one as ``snn_int.onnx``."""
    import hnnx

    calibration = {"images": make_images(seed=SEED + 2, batch=64)}
    quantized, _ = hnnx.quantize(hnnx.load(model_path), calibration, target="tianjicx", progress=False)
    hnnx.save(quantized, model_path.with_name("snn_int.onnx"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per contender after one warm-up (7)")
    parser.add_argument("--threads", type=int, default=2, help="threads of onnxruntime and torch (2)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--memory-child", metavar="CONTENDER", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # "Triton not available" on CPU
    if args.memory_child:
        memory_child(args.memory_child, args.model, args.threads)
        return
    if args.repeats < 5:
        raise SystemExit("--repeats must be ≥ 5 (the table reports medians of at least 5 runs)")
    from hnnx.runtime import native

    status = native.status()
    weights, images = make_weights(), make_images()
    print(f"hnnx conv-SNN benchmark — onnxruntime {ort.__version__}, torch {torch.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, {args.threads} threads; "
          f"median of {args.repeats} runs after 1 warm-up")
    kernel = "active" if status.active else "unavailable — " + status.reason
    print(f"network: images [{BATCH}, 3, {SIZE}, {SIZE}], T={STEPS}, Conv 3→16 → LIF → Conv 16→32 /2 → LIF "
          f"→ Linear 8192→10 → mean over T; native kernel: {kernel}")
    print()
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory(prefix="hnnx-bench-") as tmp:
        model_path = Path(tmp) / "snn.onnx"
        export_hnnx(weights, model_path)
        for name in CONTENDERS:
            if name in (NATIVE, EVENT) and not status.active:
                rows[name] = Row(name, missing="unavailable (see hnnx doctor)")
                continue
            try:
                checked = make_forward(name, weights, images, model_path, args.threads, probes=True)
                timed = make_forward(name, weights, images, model_path, args.threads, probes=False)
            except ImportError as exc:
                rows[name] = Row(name, missing=f"not installed ({exc.name})")
                continue
            outputs = tuple(np.array(a, copy=True) for a in checked())
            del checked
            rows[name] = Row(name, median_seconds(timed, args.repeats), outputs=outputs)
        quantize_model(model_path)
        integer_rows: dict[str, Row] = {}
        for name in INTEGER_MODES:
            if not status.active:
                integer_rows[name] = Row(name, missing="unavailable (see hnnx doctor)")
                continue
            outputs = tuple(np.array(a, copy=True) for a in
                            make_forward(name, weights, images, model_path, args.threads, probes=True)())
            timed = make_forward(name, weights, images, model_path, args.threads, probes=False)
            integer_rows[name] = Row(name, median_seconds(timed, args.repeats), outputs=outputs)
        simulation_peak = None
        if not args.no_memory:
            for row in rows.values():
                if row.seconds is not None:
                    row.peak_mib = child_peak(row.name, model_path, args.threads)
            if rows[NATIVE].seconds is not None:
                simulation_peak = child_peak(NATIVE_SIMULATION, model_path, args.threads)
    print(report(rows, simulation_peak), flush=True)
    print()
    print("Integer mode (the same network quantized, tianjicx int):")
    print()
    print(integer_report(integer_rows, rows[NATIVE], rows[SPIKINGJELLY]), flush=True)


if __name__ == "__main__":
    main()
