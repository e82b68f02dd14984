"""ANN → SNN conversion of the digits CNN, its integer form on the chip, and a hybrid cut.

With the hnnx command line:

    hnnx convert ann_cnn.onnx --to snn --calib train.npz --steps 32 --eval test.npz   # accuracy vs T
    hnnx quantize ann_cnn_snn.onnx --calib train.npz                                 # tianjicx int
    hnnx lower ann_cnn_snn_int.onnx --chip tianjicx --verify some_test.npz           # the chip program
    hnnx convert ann_cnn.onnx --hybridize --cut node_linear --steps 16 --eval test.npz

Prints every command and its report (the accuracy-vs-T table; ``--plot`` draws it when
matplotlib is installed). Run: python examples/convert_snn.py
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import hnnx.models
from hnnx.datasets import load_digits
from hnnx.model import write_atomic
from hnnx.runtime.simulate import npz_bytes


def hnnx_cli(*args: str) -> str:
    """Run one `hnnx` command, echo it and its output, and return the output."""
    print("$ hnnx", " ".join(args), flush=True)
    result = subprocess.run([sys.executable, "-m", "hnnx.cli", *args], check=True, capture_output=True, text=True)
    print(result.stdout, end="", flush=True)
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description="hnnx example: ANN → SNN conversion of ann_cnn")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    train, test = args.out / "digits_train_images.npz", args.out / "digits_test_images.npz"
    few = args.out / "digits_test_images_32.npz"
    images = digits.x_test.reshape(-1, 1, 8, 8)
    write_atomic(train, npz_bytes({"pixels": digits.x_train.reshape(-1, 1, 8, 8), "labels": digits.y_train}))
    write_atomic(test, npz_bytes({"pixels": images, "labels": digits.y_test}))
    write_atomic(few, npz_bytes({"pixels": images[:32], "labels": digits.y_test[:32]}))
    ann = hnnx.models.path("ann_cnn")
    snn, snn_int = args.out / "ann_cnn_snn.onnx", args.out / "ann_cnn_snn_int.onnx"
    plot = ["--plot", str(args.out / "ann_cnn_snn_curve.png")] if importlib.util.find_spec("matplotlib") else []
    hnnx_cli("convert", str(ann), "--to", "snn", "--calib", str(train), "--num-samples", "256", "--steps",
             str(args.steps), "--eval", str(test), "-o", str(snn), "--report", str(args.out / "ann_cnn_snn.json"),
             "--no-progress", *plot)
    hnnx_cli("quantize", str(snn), "--calib", str(train), "--num-samples", "256", "-o", str(snn_int), "--no-progress")
    hnnx_cli("simulate", str(snn_int), "--input", str(test), "--no-progress")
    hnnx_cli("lower", str(snn_int), "--chip", "tianjicx", "-o", str(args.out / "ann_cnn_snn_program"),
             "--verify", str(few))
    hnnx_cli("convert", str(ann), "--hybridize", "--cut", "node_linear", "--calib", str(train), "--num-samples",
             "256", "--steps", "16", "--eval", str(test), "-o", str(args.out / "ann_cnn_hybrid.onnx"), "--no-progress")


if __name__ == "__main__":
    main()
