"""Benchmark: lowering the bundled digits models onto chips, and the chip simulator's speed.

For each bundled SNN/hybrid model and the residual ANN ``ann_residual`` (residual Add,
Concat, average pooling as window sums; quantized with ``hnnx.quantize``, target tianjicx, on
256 training samples) and each built-in chip (``tianjicx``, ``tianjic``), measured in one
run (a pair the chip cannot run is listed under the table with the mapper's error):

* **map** — wall time of ``hnnx.lower`` on the integer graph (parse, tile, place, route,
  schedule), median of ``--repeats``;
* **chip sim** — wall time of ``hnnx.chip.simulate`` over the digits test split (359 samples),
  one batch, median of ``--repeats`` after one warm-up;
* **ORT int** — wall time of ``hnnx.simulate`` of the same integer graph in onnxruntime (its
  default batches of 64), median of ``--repeats`` after one warm-up; **× ORT** is the ratio.
  Target: ≤ 10× on the bundled hybrid model (``hybrid_a2s``, the demo's network) on tianjicx;
* **bit-exact** — the chip simulator's outputs equal onnxruntime's bit for bit;
* the report's estimates (``hnnx.chip.chip_report``; spike rates measured on the calibration
  samples): cores used, SynOps and packets per inference, latency per inference (sequential
  and pipelined) and energy per inference. Timing and energy figures marked ``assumed`` in
  the specs are listed under the table.

Run: ``python bench/chip.py`` (``--quick``: hybrid_a2s and ann_residual on tianjicx, one timed run).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import format_table, median_seconds  # noqa: E402

import hnnx  # noqa: E402
from hnnx import chip, models  # noqa: E402
from hnnx.datasets import load_digits  # noqa: E402

MODELS = ("snn_mlp", "snn_conv", "hybrid_a2s", "hybrid_s2a", "ann_residual")
TARGET_MODEL, TARGET_CHIP, TARGET_RATIO = "hybrid_a2s", "tianjicx", 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="hybrid_a2s and ann_residual on tianjicx, one timed run")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    quick = [(TARGET_MODEL, TARGET_CHIP), ("ann_residual", TARGET_CHIP)]
    pairs = quick if args.quick else [(m, c) for m in MODELS for c in chip.BUILTIN]
    digits = load_digits()
    print(f"# Chip lowering and simulation — {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, {len(digits.x_test)} test samples\n")
    rows, assumed, ratios, refused = [], set(), {}, []
    integer: dict[str, Any] = {}
    for name, target in pairs:
        layout = models.input_layout(name)
        calibration = {"pixels": digits.x_train[:256].reshape(-1, *layout)}
        if name not in integer:
            integer[name], _ = hnnx.quantize(models.path(name), calibration, target="tianjicx")
        model = integer[name]
        data = {"pixels": digits.x_test.reshape(-1, *layout)}
        try:
            program = chip.lower(model, target, calibration=calibration)
        except chip.MappingError as error:
            refused.append(f"{name} on {target}: {error}")
            continue
        map_seconds = median_seconds(lambda: chip.lower(model, target), repeats, warm_up=False)
        chip_seconds = median_seconds(lambda: chip.simulate(program, data), repeats)
        ort_seconds = median_seconds(lambda: hnnx.simulate(model, data), repeats)
        expected = hnnx.simulate(model, data).outputs
        got = chip.simulate(program, data).outputs
        exact = all(np.array_equal(expected[k], got[k]) and expected[k].dtype == got[k].dtype for k in expected)
        report = chip.chip_report(program).data
        assumed.update(report["assumed"])
        ratios[(name, target)] = chip_seconds / ort_seconds
        rows.append([name, target, f"{report['cores_used']}/{report['cores_available']}", f"{map_seconds:.3f}",
                     f"{chip_seconds:.3f}", f"{ort_seconds:.3f}", f"{chip_seconds / ort_seconds:.1f}",
                     "yes" if exact else "NO", f"{report['traffic']['synops']:,.0f}",
                     f"{report['traffic']['packets']:,.0f}", f"{1e6 * report['latency']['inference_seconds']:.1f}",
                     f"{1e6 * report['latency']['pipelined_inference_seconds']:.1f}",
                     f"{1e6 * report['energy']['total_joules']:.3f}"])
    print(format_table(["model", "chip", "cores", "map (s)", "chip sim (s)", "ORT int (s)", "× ORT", "bit-exact",
                        "SynOps/inf", "packets/inf", "µs/inf", "µs/inf pipelined", "µJ/inf"], rows))
    for line in refused:
        print(f"\nnot mapped: {line}")
    print(f"\nassumed figures in the estimates (no published source): {', '.join(sorted(assumed))}")
    ratio = ratios[(TARGET_MODEL, TARGET_CHIP)]
    met = ratio <= TARGET_RATIO
    print(f"target: chip simulator ≤ {TARGET_RATIO:g}× onnxruntime on {TARGET_MODEL}/{TARGET_CHIP}: "
          f"{ratio:.1f}× — {'met' if met else 'NOT met'}")
    if not all(row[7] == "yes" for row in rows):
        print("failed: the chip simulator differs from onnxruntime")
        sys.exit(1)


if __name__ == "__main__":
    main()
