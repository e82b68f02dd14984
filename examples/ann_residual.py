"""A residual, branching ANN on the 8×8 digits: the ops of ImageNet CNNs in integer form.

    pixels [N, 1, 8, 8] → Conv 1→16 3×3 → BatchNorm → ReLU
      → residual block: (Conv 16→16 → BatchNorm → ReLU → Conv 16→16 → BatchNorm) + skip → ReLU
      → two branches joined by Concat: Conv 1×1 16→8, and AvgPool 3×3 → Conv 1×1 16→8
      → ReLU → AvgPool 2×2 → Flatten → Linear 256→10 → scores [N, 10]

Quantized to ``tianjicx int`` it exercises the residual ``Add`` (operands aligned by shifts),
``Concat`` (inputs on a common scale), average pooling as an integer window sum (the 3×3
window's 1/9 carried into the next layer's weights) — see ``tests/test_quantize.py``.
Run: python examples/ann_residual.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common import run


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + x)


class Branches(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.direct = nn.Conv2d(channels, channels // 2, 1)
        self.pooled = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(channels, channels // 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.cat([self.direct(x), self.pooled(x)], dim=1))


class AnnResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            ResidualBlock(16), Branches(16), nn.AvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


def pixels(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


if __name__ == "__main__":
    run("ann_residual", AnnResidual, pixels, epochs=15)
