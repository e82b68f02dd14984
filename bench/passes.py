"""Benchmark: the pre-processing pipeline on a 4,000-node graph.

The graph is a chain of blocks ``Conv → BatchNormalization → Relu → Identity → Dropout``
(4 channels, 8×8 frames), 800 blocks = 4,000 nodes. Measured in the same run:

* ``hnnx.passes.preprocess`` — shape inference, identity/dropout removal, constant folding,
  BatchNorm folding, time folding (one graphsurgeon import/export);
* each hnnx pass alone (with shape inference first);
* ``onnxruntime.quantization.shape_inference.quant_pre_process`` — onnxruntime's own
  pre-processing (symbolic shape inference + graph optimisation), when available.

Median of ``--repeats`` runs. Target (issue): about one second for the hnnx pipeline.
Run: python bench/passes.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from hnnx import passes
from hnnx.ops import ONNX_OPSET
from tables import median_seconds


def chain_model(blocks: int, channels: int = 4, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """``blocks`` × (Conv, BatchNormalization, Relu, Identity, Dropout) on ``[N, C, size, size]``."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for b in range(blocks):
        # He-scaled weights and near-identity BN keep activations O(1) through 800 layers.
        he = np.sqrt(2.0 / (9 * channels))
        inits += [numpy_helper.from_array(rng.normal(0, he, (channels, channels, 3, 3)).astype(np.float32), f"w{b}"),
                  numpy_helper.from_array(rng.uniform(0.9, 1.1, channels).astype(np.float32), f"g{b}"),
                  numpy_helper.from_array(rng.normal(0, 0.05, channels).astype(np.float32), f"be{b}"),
                  numpy_helper.from_array(rng.normal(0, 0.05, channels).astype(np.float32), f"m{b}"),
                  numpy_helper.from_array(rng.uniform(0.9, 1.1, channels).astype(np.float32), f"v{b}")]
        nodes += [helper.make_node("Conv", [x, f"w{b}"], [f"c{b}"], pads=[1, 1, 1, 1], name=f"conv{b}"),
                  helper.make_node("BatchNormalization", [f"c{b}", f"g{b}", f"be{b}", f"m{b}", f"v{b}"], [f"n{b}"],
                                   name=f"bn{b}"),
                  helper.make_node("Relu", [f"n{b}"], [f"r{b}"], name=f"relu{b}"),
                  helper.make_node("Identity", [f"r{b}"], [f"i{b}"], name=f"id{b}"),
                  helper.make_node("Dropout", [f"i{b}"], [f"d{b}"], name=f"drop{b}")]
        x = f"d{b}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, size, size])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=10)


def ort_pre_process(model: onnx.ModelProto, folder: Path) -> Callable[[], object]:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = folder / "in.onnx"
    onnx.save(model, source)
    return lambda: quant_pre_process(str(source), str(folder / "out.onnx"), skip_symbolic_shape=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=800, help="5 nodes per block")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = chain_model(args.blocks)
    processed = passes.preprocess(model)
    x = np.random.default_rng(1).normal(0, 1, (2, 4, 8, 8)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    after = ort.InferenceSession(processed.SerializeToString()).run(None, {"x": x})[0]
    rows: list[tuple[str, float]] = [
        ("hnnx preprocess (all passes)", median_seconds(lambda: passes.preprocess(model), args.repeats, warm_up=False))]
    for single in (passes.remove_identities, passes.fold_constants, passes.fold_batchnorm, passes.fold_time):
        rows.append((f"hnnx infer_shapes + {single.name}",
                     median_seconds(lambda: passes.run_passes(model, [passes.infer_shapes, single]), args.repeats,
                                    warm_up=False)))
    with tempfile.TemporaryDirectory() as folder:
        try:
            pre_process = ort_pre_process(model, Path(folder))
            rows.append(("onnxruntime quant_pre_process", median_seconds(pre_process, args.repeats, warm_up=False)))
        except Exception as exc:  # a missing or failing peer is reported, not faked
            rows.append((f"onnxruntime quant_pre_process (failed: {type(exc).__name__})", float("nan")))
    print(f"pre-processing benchmark — {len(model.graph.node):,} nodes in, {len(processed.graph.node):,} nodes out; "
          f"onnxruntime {ort.__version__}, onnx {onnx.__version__}; median of {args.repeats}")
    scale = max(float(np.abs(before).max()), 1e-30)
    print(f"outputs after preprocess: max |Δ| / max |y| = {np.abs(before - after).max() / scale:.2e}")
    width = max(len(name) for name, _ in rows)
    print(f"| {'contender':<{width}} | seconds |")
    print(f"|{'-' * (width + 2)}|--------:|")
    for name, seconds in rows:
        print(f"| {name:<{width}} | {seconds:7.3f} |")
    print(f"target (issue): the hnnx pipeline in about 1 s — {rows[0][1]:.2f} s")


if __name__ == "__main__":
    main()
