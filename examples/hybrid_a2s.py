"""A hybrid network: ANN convolutional front → A2S rate coding → spiking MLP → rate readout.

    pixels [N, 1, 8, 8] → Conv 1→8 3×3 → ReLU → Conv 8→16 3×3 stride 2 → ReLU   (ANN)
                        → A2S rate coding (T=16, Bernoulli spikes, per-sample min–max)
                        → Linear 256→64 → LIF → Linear 64→10 → LIF                 (SNN)
                        → S2A global (firing rate per class) → scores [N, 10]

The A2S spikes come from hnnx's counter-based generator, identical in torch, numpy and
onnxruntime; gradients pass straight through the sampling to the ANN front.
Run: python examples/hybrid_a2s.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import hnnx.frontends.torch as hnn
from common import run

STEPS = 16


class HybridA2S(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ann = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.a2s = hnn.A2S(steps=STEPS, coding="rate", normalize="minmax", seed=2024)
        self.hidden = hnn.TimeFold(nn.Linear(256, 64))
        self.hidden_lif = hnn.LIF(threshold=1.0, alpha=0.875, surrogate="atan")
        self.out = hnn.TimeFold(nn.Linear(64, 10))
        self.out_lif = hnn.LIF(threshold=1.0, alpha=0.875, surrogate="atan")
        self.rate = hnn.S2A(decoding="global")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        spikes = self.hidden_lif(self.hidden(self.a2s(self.ann(pixels))))
        return 10.0 * self.rate(self.out_lif(self.out(spikes)))


def pixels(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


if __name__ == "__main__":
    run("hybrid_a2s", HybridA2S, pixels, epochs=25)
