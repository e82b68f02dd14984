"""What the digits examples share: training, export, and re-simulation with `hnnx simulate`.

Every example builds a torch model from ``hnnx.frontends.torch`` modules whose forward
takes pixels ``[N, ...]`` and returns class scores ``[N, 10]``, trains it on the bundled
digits (train split), exports it to ONNX and runs ``hnnx simulate`` on the test split.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hnnx.datasets import DigitsSplit, load_digits
from hnnx.frontends.torch import export
from hnnx.model import write_atomic
from hnnx.runtime.simulate import npz_bytes

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "hnnx" / "models"


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3,
          batch_size: int = 64, seed: int = 0) -> None:
    """Adam on cross-entropy, shuffled mini-batches, cosine learning-rate decay."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
        schedule.step()
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).float().mean())


def run(name: str, build: Callable[[], torch.nn.Module], pixels: Callable[[np.ndarray], np.ndarray],
        epochs: int, lr: float = 3e-3) -> float:
    """Train, export and simulate one example; returns the accuracy `hnnx simulate` measured.

    ``pixels`` maps the flat digits ``[N, 64]`` to the model's input layout.
    """
    parser = argparse.ArgumentParser(description=f"hnnx example: {name}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="directory for the ONNX model and the test data")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--package", action="store_true", help="also store the model in hnnx/models/")
    args = parser.parse_args()
    data: DigitsSplit = load_digits()
    x_train, x_test = torch.from_numpy(pixels(data.x_train)), torch.from_numpy(pixels(data.x_test))
    y_train, y_test = torch.from_numpy(data.y_train), torch.from_numpy(data.y_test)

    torch.manual_seed(0)
    model = build()
    started = time.perf_counter()
    train(model, x_train, y_train, args.epochs, lr)
    print(f"{name}: trained {args.epochs} epochs in {time.perf_counter() - started:.1f} s, "
          f"torch test accuracy {100 * accuracy(model, x_test, y_test):.2f} %")

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / f"{name}.onnx"
    data_path = args.out / f"{name}_test.npz"
    export(model, (x_test[:4],), model_path, input_names=["pixels"], output_names=["scores"])
    write_atomic(data_path, npz_bytes({"pixels": pixels(data.x_test), "labels": data.y_test}))
    if args.package:
        PACKAGE_MODELS.mkdir(exist_ok=True)
        write_atomic(PACKAGE_MODELS / model_path.name, model_path.read_bytes())
    command = [sys.executable, "-m", "hnnx.cli", "simulate", str(model_path), "--input", str(data_path),
               "--no-progress"]
    print("$ hnnx simulate", model_path, "--input", data_path)
    report = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    print(report, end="")
    line = next(line for line in report.splitlines() if line.startswith("accuracy:"))
    return float(line.split()[1]) / 100
