"""Quantization-aware fine-tuning from the graph: recover the `tianjicx int` drop of the digits ANNs.

For each case, with the hnnx command line:

    hnnx quantize MODEL --format fakequant ...        # the QAT-ready graph (scales fixed)
    hnnx quantize MODEL --format int ...              # post-training integer graph: the drop
    hnnx finetune FAKE --data train.npz --epochs E    # train the fake-quant graph in torch
    hnnx quantize TUNED --format int ...              # re-quantize the fine-tuned weight sources
    hnnx simulate ...                                 # test accuracy of each

Cases: ``ann_residual`` as the quantization table of the README quantizes it (MinMax), and
``ann_cnn`` quantized deliberately coarsely: activation ranges at the 70th, and at the 62nd,
percentile of ``|x|`` (shifts in steps of 2 bits; the second fine-tuned by distillation from
the float model). Prints every command and a table of test accuracies.
Run: python examples/finetune_qat.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import hnnx.models
from hnnx.datasets import load_digits
from hnnx.model import write_atomic
from hnnx.runtime.simulate import npz_bytes

CASES = {  # case: (bundled model, quantization options, fine-tuning options)
    "ann_residual": ("ann_residual", ["--observer", "minmax"], ["--epochs", "5", "--lr", "1e-3"]),
    "ann_cnn_p70": ("ann_cnn", ["--observer", "percentile", "--percentile", "70"], ["--epochs", "10", "--lr", "3e-3"]),
    "ann_cnn_p62": ("ann_cnn", ["--observer", "percentile", "--percentile", "62"],
                    ["--epochs", "30", "--lr", "3e-3", "--loss", "distill", "--teacher", "FLOAT"]),
}


def hnnx_cli(*args: str) -> str:
    """Run one `hnnx` command, echo it, and return its standard output."""
    print("$ hnnx", " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "hnnx.cli", *args], check=True, capture_output=True,
                          text=True).stdout


def test_accuracy(model: Path, test: Path) -> float:
    report = hnnx_cli("simulate", str(model), "--input", str(test), "--no-progress")
    return float(next(line for line in report.splitlines() if line.startswith("accuracy:")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description="hnnx example: QAT recovery of the tianjicx int drop")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    train, test = args.out / "digits_train_images.npz", args.out / "digits_test_images.npz"
    write_atomic(train, npz_bytes({"pixels": digits.x_train.reshape(-1, 1, 8, 8), "labels": digits.y_train}))
    write_atomic(test, npz_bytes({"pixels": digits.x_test.reshape(-1, 1, 8, 8), "labels": digits.y_test}))
    rows = []
    for name in args.cases:
        source, quantize_options, finetune_options = CASES[name]
        model = hnnx.models.path(source)
        finetune_options = [str(model) if option == "FLOAT" else option for option in finetune_options]
        fake, integer = args.out / f"{name}_fakequant.onnx", args.out / f"{name}_int.onnx"
        tuned, tuned_int = args.out / f"{name}_qat.onnx", args.out / f"{name}_qat_int.onnx"
        common = ["--calib", str(train), "--num-samples", "256", "--bit-shift-unit", "2", "--no-progress",
                  *quantize_options]
        hnnx_cli("quantize", str(model), "--format", "fakequant", "-o", str(fake), *common)
        hnnx_cli("quantize", str(model), "--format", "int", "-o", str(integer), *common)
        print(hnnx_cli("finetune", str(fake), "--data", str(train), "-o", str(tuned), "--no-progress",
                       *finetune_options), end="")
        hnnx_cli("quantize", str(tuned), "--format", "int", "--calib", str(train), "-o", str(tuned_int),
                 "--no-progress")
        rows.append((source, " ".join(quantize_options), test_accuracy(model, test), test_accuracy(integer, test),
                     test_accuracy(tuned_int, test)))
    print("\n| model | quantization | float | tianjicx int (PTQ) | after finetune (int) | drop left |")
    print("|---|---|---|---|---|---|")
    for name, setting, float_acc, ptq, qat in rows:
        print(f"| {name} | `{setting} --bit-shift-unit 2` | {float_acc:.2f} % | {ptq:.2f} % | {qat:.2f} % | "
              f"{qat - float_acc:+.2f} pp |")


if __name__ == "__main__":
    main()
