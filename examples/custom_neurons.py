"""Custom neurons written from HNN's primitives: trained on the digits, exported, quantized, lowered.

Three neurons, each a ``hnnx.frontends.torch.Neuron`` whose ``step`` composes the primitives:

* ``AdaptiveLIF`` — a LIF with threshold dynamics of its own: the threshold rises with every spike
  and with sustained depolarisation (accommodation: ``θa' = ρ·θa + Δ·s + κ·max(v1, 0)``), a soft
  reset subtracts the current threshold;
* ``QuadraticIF`` — a quadratic integrate-and-fire neuron, ``v1 = v + x + k·(v − v_rest)(v − v_crit)``,
  hard reset, lower saturation;
* ``PrimitiveLIF`` — the ``hnnx.LIF`` step written from the primitives: the ``fold_neurons`` pass
  turns it into that ``hnnx.LIF`` node, which computes the same bits.

For each of ``AdaptiveLIF`` and ``QuadraticIF`` the script trains the network

    pixels [N, 64] → A2S direct (T=8) → Linear 64→128 → neuron → Linear 128→10 → neuron
                   → S2A global (firing rate per class) → scores [N, 10]

exports it (one ``hnnx.Neuron`` node per neuron layer), compares onnxruntime with the torch forward,
simulates it with ``hnnx simulate``, quantizes it to ``tianjicx`` integers and simulates that, and
asks ``hnnx lower`` (which names the operation of the step the chip's soma cannot compute). It then
shows ``PrimitiveLIF`` folding into ``hnnx.LIF``.

Run: python examples/custom_neurons.py [--epochs 20] [--out examples/out]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import hnnx
import hnnx.frontends.torch as hnn
from hnnx.datasets import load_digits
from hnnx.errors import HnnxError

STEPS = 8


class AdaptiveLIF(hnn.Neuron):
    """A LIF neuron whose threshold ``θ = θ0 + θa`` adapts to spikes and to depolarisation.

    Per step: ``θ = θ0 + θa``; ``v1 = v + x``; ``s = 1[v1 > θ]``; ``v' = alpha·(v1 − s·θ)`` (soft
    reset); ``θa' = rho·θa + s·increment + kappa·max(v1, 0)``. The last term — the threshold
    following the membrane — is what ``hnnx.LIF`` (and the TianjicX soma) cannot compute.
    Integer mode: give ``threshold``/``increment`` in integer units and the factors as multiples of 1/256.
    """

    def __init__(self, threshold: float = 1.0, alpha: float = 0.875, rho: float = 0.9375, increment: float = 0.25,
                 kappa: float = 0.0625, surrogate: str = "atan") -> None:
        super().__init__({"v": 0.0, "theta_a": 0.0})
        self.threshold, self.alpha, self.rho, self.increment, self.kappa = threshold, alpha, rho, increment, kappa
        self.surrogate = surrogate

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        theta = hnn.threshold(state["theta_a"], self.threshold)
        v1 = hnn.accumulate(state["v"], x)
        spikes = hnn.fire(v1, theta, surrogate=self.surrogate)
        v = hnn.leak(hnn.reset(v1, spikes, theta, mode="soft"), alpha=self.alpha)
        theta_a = (hnn.threshold_dynamics(state["theta_a"], spikes, alpha=self.rho, increment=self.increment)
                   + hnn.leak(torch.relu(v1), alpha=self.kappa))
        return spikes, {"v": v, "theta_a": theta_a}


class QuadraticIF(hnn.Neuron):
    """A quadratic integrate-and-fire neuron (forward Euler of ``τ dv/dt = a(v − v_rest)(v − v_crit) + R·I``).

    Per step: ``v1 = v + x + gain·(v − v_rest)(v − v_crit)``; ``s = 1[v1 > threshold]``; hard reset
    to ``v_reset``; ``v' = max(v2, v_lower)``. Below ``v_crit`` the membrane relaxes to ``v_rest``,
    above it it runs away to a spike. Integer mode: membrane constants in integer units, ``gain``
    and ``shift`` those of an integer ``hnnx.Product`` (see :func:`hnnx.frontends.torch.product`).
    """

    def __init__(self, threshold: float = 1.0, gain: float = 0.5, v_rest: float = 0.0, v_crit: float = 0.5,
                 v_reset: float = 0.0, v_lower: float = -1.0, surrogate: str = "atan", shift: int = 0) -> None:
        super().__init__({"v": 0.0})
        self.threshold, self.gain, self.v_rest, self.v_crit = threshold, gain, v_rest, v_crit
        self.v_reset, self.v_lower, self.surrogate, self.shift = v_reset, v_lower, surrogate, shift

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        v = state["v"]
        drive = x + hnn.product(v - self.v_rest, v - self.v_crit, self.gain, shift=self.shift)
        v1 = hnn.accumulate(v, drive)
        spikes = hnn.fire(v1, self.threshold, surrogate=self.surrogate)
        v_next = hnn.saturate(hnn.reset(v1, spikes, mode="hard", v_reset=self.v_reset), lower=self.v_lower)
        return spikes, {"v": v_next}


class PrimitiveLIF(hnn.Neuron):
    """The ``hnnx.LIF`` step written from the primitives, for any LIF configuration given as
    ``hnnx.LIF`` attributes (threshold adaptation and refractory states only when used)."""

    def __init__(self, **lif: float | int | str) -> None:
        attrs = hnnx.ops.LIF.resolve(dict(lif), "PrimitiveLIF")
        self.adapt = attrs["theta_alpha"] != 1.0 or attrs["theta_beta"] != 0.0 or attrs["theta_increment"] != 0.0
        self.refr = attrs["refractory"] > 0
        states: dict[str, float | hnn.State] = {"v": attrs["v_init"]}
        if self.adapt:
            states["theta_a"] = 0.0
        if self.refr:
            states["refractory"] = hnn.State(0, counter=True)
        super().__init__(states, state_bits=attrs["state_bits"])
        self.lif = attrs

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a, bits = self.lif, self.lif["state_bits"]
        theta = (hnn.threshold(state["theta_a"], a["threshold"], lower=a["v_lower"], state_bits=bits) if self.adapt
                 else a["threshold"])
        v1 = hnn.accumulate(state["v"], x, state.get("refractory"), state_bits=bits)
        spikes = hnn.fire(v1, theta, surrogate=a["surrogate"], width=a["surrogate_width"])
        v = hnn.reset(v1, spikes, theta, mode=a["reset_mode"], v_reset=a["v_reset"], decrement=a["reset_decrement"],
                      state_bits=bits)
        v = hnn.leak(v, alpha=a["alpha"], beta=a["beta"], state_bits=bits)
        if a["v_lower"] is not None:
            v = hnn.saturate(v, lower=a["v_lower"], state_bits=bits)
        nxt = {"v": v}
        if self.adapt:
            nxt["theta_a"] = hnn.threshold_dynamics(state["theta_a"], spikes, alpha=a["theta_alpha"],
                                                    beta=a["theta_beta"], increment=a["theta_increment"],
                                                    state_bits=bits)
        if self.refr:
            nxt["refractory"] = hnn.refractory(state["refractory"], spikes, a["refractory"])
        return spikes, nxt


class NeuronMLP(nn.Module):
    """Direct coding → Linear 64→hidden → neuron → Linear hidden→10 → neuron → firing rates × 10."""

    def __init__(self, neuron: Callable[[], hnn.Neuron], hidden: int = 128, steps: int = STEPS) -> None:
        super().__init__()
        self.encode = hnn.A2S(steps=steps, coding="direct")
        self.hidden = hnn.TimeFold(nn.Linear(64, hidden))
        self.hidden_neuron = neuron()
        self.out = hnn.TimeFold(nn.Linear(hidden, 10))
        self.out_neuron = neuron()
        self.rate = hnn.S2A(decoding="global")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        spikes = self.hidden_neuron(self.hidden(self.encode(pixels)))
        return 10.0 * self.rate(self.out_neuron(self.out(spikes)))


NEURONS: dict[str, Callable[[], hnn.Neuron]] = {"alif": AdaptiveLIF, "qif": QuadraticIF}


def main() -> None:
    parser = argparse.ArgumentParser(description="hnnx example: custom neurons from primitives")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import accuracy, train

    digits = load_digits()
    x_train, y_train = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    x_test, y_test = torch.from_numpy(digits.x_test), torch.from_numpy(digits.y_test)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, neuron in NEURONS.items():
        torch.manual_seed(0)
        model = NeuronMLP(neuron)
        started = time.perf_counter()
        train(model, x_train, y_train, args.epochs)
        seconds = time.perf_counter() - started
        torch_accuracy = accuracy(model, x_test, y_test)
        path = args.out / f"custom_{name}.onnx"
        exported = hnn.export(model, (x_test[:4],), path, input_names=["pixels"], output_names=["scores"])
        with torch.no_grad():
            expected = model(x_test).numpy()
        (got,) = ort.InferenceSession(exported.SerializeToString()).run(None, {"pixels": digits.x_test})
        simulated = hnnx.simulate(path, {"pixels": digits.x_test}, labels=digits.y_test)
        quantized, _ = hnnx.quantize(path, {"pixels": digits.x_train[:256]}, target="tianjicx")
        hnnx.save(quantized, args.out / f"custom_{name}_int.onnx")
        integer = hnnx.simulate(quantized, {"pixels": digits.x_test}, labels=digits.y_test)
        try:
            hnnx.lower(quantized, chip="tianjicx")
            lowered = "mapped"
        except HnnxError as exc:
            lowered = str(exc)
        rows.append((name, seconds, torch_accuracy, float(np.abs(got - expected).max()),
                     float(np.mean(got.argmax(1) == expected.argmax(1))), simulated.accuracy, integer.accuracy,
                     lowered))
    print("| neuron | train s | torch | max abs(onnxruntime − torch) | same class | hnnx simulate | tianjicx int |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, seconds, acc, diff, same, sim, integer_acc, _ in rows:
        print(f"| {name} | {seconds:.0f} | {100 * acc:.2f} % | {diff:.2g} | {100 * same:.1f} % | {100 * sim:.2f} % "
              f"| {100 * integer_acc:.2f} % |")
    for name, *_, lowered in rows:
        print(f"hnnx lower {name}: {lowered}")

    # The LIF written from primitives is an hnnx.LIF: the pass folds it, the bits stay.
    lif = dict(threshold=1.0, alpha=0.875, reset_mode="soft", refractory=2, theta_alpha=0.9375, theta_increment=0.25)
    current = torch.from_numpy(np.random.default_rng(0).normal(0.4, 0.6, (16, 4, 32)).astype(np.float32))
    written = PrimitiveLIF(**lif)
    model = hnn.export(written, (current,), fold_neurons=False, input_names=["current"], output_names=["spikes"])
    folded = hnnx.passes.run_passes(model, [hnnx.passes.fold_neurons])
    reference = hnn.export(hnn.LIF(**lif), (current,), input_names=["current"], output_names=["spikes"])
    feeds = {"current": current.numpy()}
    runs = [ort.InferenceSession(m.SerializeToString()).run(None, feeds)[0] for m in (model, folded, reference)]
    print("PrimitiveLIF:", [n.op_type for n in model.graph.node], "→", [n.op_type for n in folded.graph.node],
          "; spikes equal to hnnx.LIF:", all(np.array_equal(run, runs[2]) for run in runs))


if __name__ == "__main__":
    main()
