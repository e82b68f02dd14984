"""A spiking MLP on the digits, direct coding: every step sees the same pixels.

    pixels [N, 64] → A2S direct (T=8) → Linear 64→128 → LIF → Linear 128→10 → LIF
                   → S2A global (firing rate per class) → scores [N, 10]

Run: python examples/snn_mlp.py   (trains in a few seconds, exports, runs `hnnx simulate`)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import hnnx.frontends.torch as hnn
from common import run

STEPS = 8


class SpikingMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = hnn.A2S(steps=STEPS, coding="direct")
        self.hidden = hnn.TimeFold(nn.Linear(64, 128))
        self.hidden_lif = hnn.LIF(threshold=1.0, alpha=0.875, surrogate="atan")
        self.out = hnn.TimeFold(nn.Linear(128, 10))
        self.out_lif = hnn.LIF(threshold=1.0, alpha=0.875, surrogate="atan")
        self.rate = hnn.S2A(decoding="global")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        spikes = self.hidden_lif(self.hidden(self.encode(pixels)))
        # Rates lie in [0, 1]; a fixed gain makes them usable as logits for cross-entropy.
        return 10.0 * self.rate(self.out_lif(self.out(spikes)))


def pixels(x: np.ndarray) -> np.ndarray:
    return x


if __name__ == "__main__":
    run("snn_mlp", SpikingMLP, pixels, epochs=30)
