"""Benchmark: event-driven spike-input layers against dense layers, over a firing-rate sweep.

What is measured
----------------
Two spike-input layers, each fed Bernoulli spikes at a firing rate of 1, 2, 5, 10, 20 and 50 %
(fixed seed), the time axis folded into the rows as a simulation runs them:

* **Linear** 4,096 → 4,096, T = 16, batch 32: ``x [16, 32, 4096]`` (512 rows);
* **Conv** 64 → 64, 3×3, pad 1, 32×32: ``x [16·32, 64, 32, 32]`` (512 images).

Each in float (float32 weights and bias, 0/1 spikes) and in integer mode (int8 weights, int32
bias and output, int8 spikes, as ``hnnx quantize --target tianjicx`` writes a layer).

Contenders, in the same process and run, every onnxruntime session with ``--threads`` intra-op
threads (default 2), torch with as many:

1. ``onnxruntime dense`` — the standard layer: ``MatMul`` + ``Add`` / ``Conv`` (float), or
   ``MatMulInteger`` / ``ConvInteger`` + ``Add`` (integer).
2. ``dense as exact float`` (integer only) — the integer layer as ``hnnx simulate`` runs it when
   no spike-input kernel is used: ``Cast`` → float ``MatMul``/``Conv`` → ``Cast``, exact because
   every partial sum stays below 2^24 (:func:`hnnx.passes.events.integer_as_float`).
3. ``torch dense`` (float only) — ``torch.nn.functional.linear`` / ``conv2d`` on CPU.
4. ``hnnx event-driven`` — ``hnnx.SpikeMatMul`` / ``hnnx.SpikeConv`` on the native kernels:
   the active inputs of every row gathered, only their weight rows added.

Time: median of ``--repeats`` (default 5) runs after one warm-up. The speed-up column divides
the fastest dense contender of the mode (onnxruntime's layers, and for integer also the exact
float form) by the event-driven time; the crossover is the firing rate at which they meet
(interpolated between the sweep's points). Integer results are checked bit for bit against
``MatMulInteger``/``ConvInteger``; float results against onnxruntime's dense layer (the sums run
in another order: the largest difference is reported).

Run: ``python bench/sparse.py`` (``--quick``: small shapes, a smoke run). Needs the native
kernels (``hnnx doctor --build``).
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops
from hnnx.passes.events import integer_as_float
from hnnx.passes.manager import run_passes
from hnnx.runtime import native
from tables import format_table, median_seconds, require_native_kernels

SEED = 11
RATES = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50)
SPEEDUP_TARGET = 3.0
"""Issue target: event-driven ≥ 3× dense at firing rates ≤ 10 %."""
TARGET_RATE = 0.10


@dataclass(frozen=True)
class Layer:
    """One benchmarked layer: ``kind`` ("linear" or "conv"), the shape of its spike input, its weight."""

    kind: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]  # linear: [K, M]; conv: [M, C, kh, kw]

    @property
    def title(self) -> str:
        if self.kind == "linear":
            steps, batch, k = self.input_shape
            return f"Linear {k:,} → {self.weight_shape[1]:,}, T={steps}, batch {batch}"
        images, c, h, w = self.input_shape
        m, _, kh, kw = self.weight_shape
        return f"Conv {c} → {m}, {kh}×{kw} pad {kh // 2}, {h}×{w}, {images} images (T·N)"

    @property
    def outputs(self) -> int:
        return self.weight_shape[1] if self.kind == "linear" else self.weight_shape[0]


def layers(quick: bool) -> list[Layer]:
    if quick:
        return [Layer("linear", (4, 8, 512), (512, 512)), Layer("conv", (32, 16, 16, 16), (16, 16, 3, 3))]
    return [Layer("linear", (16, 32, 4096), (4096, 4096)), Layer("conv", (512, 64, 32, 32), (64, 64, 3, 3))]


# ---------------------------------------------------------------------------- models
def _weights(layer: Layer, integer: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias: float32 N(0, 1/fan-in), or int8 of spread 24 (|w| ≤ 127) and int32 bias."""
    fan_in = int(np.prod(layer.weight_shape)) // layer.outputs
    if integer:
        weight = np.clip(np.round(rng.normal(0, 24, layer.weight_shape)), -127, 127).astype(np.int8)
        return weight, rng.integers(-2000, 2000, layer.outputs).astype(np.int32)
    weight = (rng.normal(0, 1, layer.weight_shape) / np.sqrt(fan_in)).astype(np.float32)
    return weight, rng.normal(0, 0.1, layer.outputs).astype(np.float32)


def _model(nodes: list[onnx.NodeProto], layer: Layer, integer: bool, initializers: list[onnx.TensorProto]
           ) -> onnx.ModelProto:
    elem_in = TensorProto.INT8 if integer else TensorProto.FLOAT
    elem_out = TensorProto.INT32 if integer else TensorProto.FLOAT
    graph = helper.make_graph(nodes, layer.kind, [helper.make_tensor_value_info("x", elem_in, list(layer.input_shape))],
                              [helper.make_tensor_value_info("y", elem_out, None)], initializer=initializers)
    opsets = [helper.make_opsetid("", ops.ONNX_OPSET), helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)]
    return ops.attach_functions(helper.make_model(graph, opset_imports=opsets))


def dense_model(layer: Layer, weight: np.ndarray, bias: np.ndarray, integer: bool) -> onnx.ModelProto:
    """The standard-op layer: (Integer) MatMul/Conv, then the bias Add."""
    op = ("ConvInteger" if integer else "Conv") if layer.kind == "conv" else ("MatMulInteger" if integer else "MatMul")
    conv = layer.kind == "conv"
    attrs = {"pads": [weight.shape[2] // 2] * 4} if conv else {}
    bias_shape = (1, layer.outputs, 1, 1) if conv else (layer.outputs,)
    nodes = [helper.make_node(op, ["x", "w"], ["acc"], name="layer", **attrs), helper.make_node("Add", ["acc", "b"], ["y"])]
    return _model(nodes, layer, integer, [numpy_helper.from_array(weight, "w"),
                                          numpy_helper.from_array(bias.reshape(bias_shape), "b")])


def event_model(layer: Layer, weight: np.ndarray, bias: np.ndarray, integer: bool) -> onnx.ModelProto:
    """The same layer as one hnnx.SpikeMatMul / hnnx.SpikeConv node."""
    attrs: dict[str, object] = {"mode": "integer" if integer else "float"}
    if layer.kind == "conv":
        pad = weight.shape[2] // 2
        attrs.update(pad_top=pad, pad_left=pad, pad_bottom=pad, pad_right=pad)
    op = "SpikeConv" if layer.kind == "conv" else "SpikeMatMul"
    node = helper.make_node(op, ["x", "w", "b"], ["y"], name="layer", domain=ops.DOMAIN, **attrs)
    return _model([node], layer, integer, [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])


def session(model: onnx.ModelProto, threads: int, kernels: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if kernels:
        native.register(options, required=True)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def spikes(layer: Layer, rate: float, integer: bool, rng: np.random.Generator) -> np.ndarray:
    return (rng.random(layer.input_shape) < rate).astype(np.int8 if integer else np.float32)


# ---------------------------------------------------------------------------- measuring
@dataclass
class Point:
    """One firing rate of one layer and mode: the contenders' median seconds, the check."""

    rate: float
    seconds: dict[str, float]
    check: str


def torch_dense(layer: Layer, weight: np.ndarray, bias: np.ndarray) -> Callable[[np.ndarray], object]:
    w, b = torch.from_numpy(weight), torch.from_numpy(bias)
    if layer.kind == "conv":
        pad = weight.shape[2] // 2
        return lambda x: torch.nn.functional.conv2d(torch.from_numpy(x), w, b, padding=pad)
    wt = w.T.contiguous()
    return lambda x: torch.nn.functional.linear(torch.from_numpy(x), wt, b)


def sweep(layer: Layer, integer: bool, threads: int, repeats: int) -> tuple[list[Point], list[str]]:
    """Time every contender of ``layer`` in one mode over the firing rates."""
    rng = np.random.default_rng(SEED)
    weight, bias = _weights(layer, integer, rng)
    dense = dense_model(layer, weight, bias, integer)
    contenders: dict[str, ort.InferenceSession | Callable[[np.ndarray], object]] = {
        "onnxruntime dense": session(dense, threads, kernels=False)}
    if integer:
        as_float = run_passes(dense, [integer_as_float()])
        if not any(n.op_type in ("Conv", "MatMul") for n in as_float.graph.node):
            raise SystemExit(f"{layer.title}: the integer layer is not exact in float32 (weights too large)")
        contenders["dense as exact float"] = session(as_float, threads, kernels=False)
    else:
        contenders["torch dense"] = torch_dense(layer, weight, bias)
    contenders["hnnx event-driven"] = session(event_model(layer, weight, bias, integer), threads, kernels=True)
    points = []
    with torch.no_grad():
        for rate in RATES:
            x = spikes(layer, rate, integer, rng)
            runs = {name: (lambda c=c: c.run(None, {"x": x})[0]) if isinstance(c, ort.InferenceSession)
                    else (lambda c=c: c(x)) for name, c in contenders.items()}
            seconds = {name: median_seconds(run, repeats) for name, run in runs.items()}
            expected, got = runs["onnxruntime dense"](), runs["hnnx event-driven"]()
            if integer:
                differ = int(np.count_nonzero(expected != got))
                check = "bit-identical" if differ == 0 else f"{differ:,} of {got.size:,} differ"
            else:
                check = f"max |Δ| {float(np.abs(expected - got).max()):.1e}"
            points.append(Point(rate, seconds, check))
    return points, list(contenders)


def crossover(points: list[Point], dense: Callable[[Point], float]) -> str:
    """The firing rate at which event-driven stops being faster than ``dense`` (log-interpolated)."""
    ratios = [(p.rate, dense(p) / p.seconds["hnnx event-driven"]) for p in points]
    for (r0, s0), (r1, s1) in zip(ratios, ratios[1:]):
        if s0 >= 1.0 > s1:
            fraction = np.log(s0) / (np.log(s0) - np.log(s1))
            return f"{100 * np.exp(np.log(r0) + fraction * (np.log(r1) - np.log(r0))):.0f} %"
    return f"above {100 * ratios[-1][0]:.0f} %" if ratios[-1][1] >= 1.0 else f"below {100 * ratios[0][0]:.0f} %"


def table(layer: Layer, integer: bool, points: list[Point], names: list[str]) -> str:
    exact = ["onnxruntime dense", "dense as exact float"] if integer else ["onnxruntime dense"]

    def fastest_dense(point: Point) -> float:
        return min(point.seconds[n] for n in exact)

    headers = ["firing rate", *[f"{n} ms" for n in names], "speed-up vs dense", "event-driven vs dense"]
    rows = []
    for p in points:
        speedup = fastest_dense(p) / p.seconds["hnnx event-driven"]
        rows.append([f"{100 * p.rate:g} %", *[f"{1000 * p.seconds[n]:.2f}" for n in names], f"{speedup:.2f}×",
                     p.check])
    at_target = [fastest_dense(p) / p.seconds["hnnx event-driven"] for p in points if p.rate <= TARGET_RATE]
    worst = min(at_target)
    mode = "integer" if integer else "float"
    verdict = (f"{layer.title}, {mode}: crossover at {crossover(points, fastest_dense)}; at ≤ {100 * TARGET_RATE:g} % "
               f"firing ≥ {worst:.2f}× the fastest dense layer (target ≥ {SPEEDUP_TARGET:g}×: "
               f"{'met' if worst >= SPEEDUP_TARGET else 'NOT met'})")
    return "\n".join([f"### {layer.title} — {mode}", "", format_table(headers, rows), "", verdict])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender, after one warm-up (5)")
    parser.add_argument("--threads", type=int, default=2, help="threads of onnxruntime and torch (2)")
    parser.add_argument("--quick", action="store_true", help="small shapes for a smoke run")
    parser.add_argument("--only", choices=["linear", "conv"], help="one layer only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_native_kernels()
    torch.set_num_threads(args.threads)
    print(f"hnnx event-driven layers — onnxruntime {ort.__version__}, torch {torch.__version__}, python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, {args.threads} threads; median of {args.repeats} "
          f"runs after 1 warm-up")
    verdicts = []
    for layer in layers(args.quick):
        if args.only and layer.kind != args.only:
            continue
        for integer in (False, True):
            points, names = sweep(layer, integer, args.threads, args.repeats)
            text = table(layer, integer, points, names)
            verdicts.append(text.rsplit("\n", 1)[1])
            print()
            print(text, flush=True)
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
