"""A spiking convolutional network on the 8×8 digits, direct coding.

    pixels [N, 1, 8, 8] → A2S direct (T=6) → Conv 1→8 3×3 → LIF → Conv 8→16 3×3 stride 2 → LIF
                        → Linear 256→10 → S2A global (mean over time) → scores [N, 10]

Convolutions run on all steps at once (TimeFold: [T, N, ...] as [T·N, ...]).
Run: python examples/snn_conv.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import hnnx.frontends.torch as hnn
from common import run

STEPS = 6


class SpikingConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = hnn.A2S(steps=STEPS, coding="direct")
        self.conv1 = hnn.TimeFold(nn.Conv2d(1, 8, 3, padding=1))
        self.lif1 = hnn.LIF(threshold=1.0, alpha=0.875, surrogate="atan")
        self.conv2 = hnn.TimeFold(nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.lif2 = hnn.LIF(threshold=1.0, alpha=0.875, surrogate="atan")
        self.readout = hnn.TimeFold(nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10)))
        self.mean = hnn.S2A(decoding="global")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        spikes = self.lif1(self.conv1(self.encode(pixels)))
        spikes = self.lif2(self.conv2(spikes))
        return self.mean(self.readout(spikes))


def pixels(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


if __name__ == "__main__":
    run("snn_conv", SpikingConvNet, pixels, epochs=15)
