"""A hybrid network: spiking convolutional front → S2A windowed rates → ANN head.

    pixels [N, 1, 8, 8] → A2S direct (T=8) → Conv 1→16 3×3 stride 2 → LIF          (SNN)
                        → S2A rate (windows of 4 steps → 2 rate frames)
                        → frames side by side [N, 2·16·4·4] → Linear 512→64 → ReLU → Linear 64→10  (ANN)

Run: python examples/hybrid_s2a.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import hnnx.frontends.torch as hnn
from common import run

STEPS = 8
WINDOW = 4


class HybridS2A(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = hnn.A2S(steps=STEPS, coding="direct")
        self.conv = hnn.TimeFold(nn.Conv2d(1, 16, 3, stride=2, padding=1))
        self.lif = hnn.LIF(threshold=1.0, alpha=0.875, surrogate="atan")
        self.s2a = hnn.S2A(decoding="rate", window=WINDOW)
        self.ann = nn.Sequential(nn.Linear(STEPS // WINDOW * 16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        rates = self.s2a(self.lif(self.conv(self.encode(pixels))))  # [T / window, N, 16, 4, 4]
        frames = rates.permute(1, 0, 2, 3, 4).flatten(1)
        return self.ann(frames)


def pixels(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


if __name__ == "__main__":
    run("hybrid_s2a", HybridS2A, pixels, epochs=20)
