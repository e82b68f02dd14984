"""A plain ANN convolutional network on the 8×8 digits (no spiking ops).

    pixels [N, 1, 8, 8] → Conv 1→16 3×3 → BatchNorm → ReLU
                        → Conv 16→32 3×3 stride 2 → BatchNorm → ReLU
                        → Flatten → Linear 512→64 → ReLU → Linear 64→10 → scores [N, 10]

The reference ANN of the quantization benchmark (``bench/quantize.py``). The BatchNorms
are in eval mode at export, and torch's ONNX exporter (dynamo, with its graph optimizer)
already folds them into the convolutions; a graph that still carries
``BatchNormalization`` nodes would have them folded by hnnx's ``fold_batchnorm`` pass.
Run: python examples/ann_cnn.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common import run


class AnnCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


def pixels(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


if __name__ == "__main__":
    run("ann_cnn", AnnCnn, pixels, epochs=15)
