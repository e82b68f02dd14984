"""The torch array namespace: op equations on torch tensors, with surrogate gradients.

Imported lazily (torch is only needed for training). The forward pass of every
operation is the same IEEE operation as in :class:`hnnx.ops.arrays.NumpyOps`, so torch,
numpy and onnxruntime give identical float32 spikes. The spike function
``s = 1[v > θ]`` gets the pseudo-derivative ``∂s/∂v = −∂s/∂θ = g(v − θ)`` chosen by the
node's ``surrogate`` attribute; each has peak ``1/w`` at ``v = θ`` and unit area
(``w = surrogate_width``):

* ``rectangle``: ``g(x) = 1/w`` where ``|x| < w/2``, else 0;
* ``sigmoid``:   ``g(x) = (4/w)·σ(4x/w)·(1 − σ(4x/w))``;
* ``atan``:      ``g(x) = (1/w) / (1 + (πx/w)²)``.

The reset uses the boolean spike without gradient (a detached reset).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from hnnx.ops.arrays import EagerOps


class SurrogateSpike(torch.autograd.Function):
    """Heaviside forward, surrogate backward. Inputs: ``v − θ`` and the boolean spikes."""

    @staticmethod
    def forward(ctx: Any, excess: torch.Tensor, fired: torch.Tensor, kind: str, width: float) -> torch.Tensor:
        ctx.save_for_backward(excess)
        ctx.kind, ctx.width = kind, width
        return fired.to(excess.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (excess,) = ctx.saved_tensors
        return grad * surrogate_derivative(excess, ctx.kind, ctx.width), None, None, None


class StraightThrough(torch.autograd.Function):
    """Forward: ``value`` exactly. Backward: the gradient goes to ``x`` (times ``mask``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(mask if mask is not None else torch.ones((), dtype=x.dtype))
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def surrogate_derivative(x: torch.Tensor, kind: str, width: float) -> torch.Tensor:
    """The pseudo-derivative ``g(x)`` of the spike function at ``x = v − θ``."""
    if kind == "rectangle":
        return (x.abs() < width / 2).to(x.dtype) / width
    if kind == "sigmoid":
        sig = torch.sigmoid(4.0 * x / width)
        return (4.0 / width) * sig * (1.0 - sig)
    if kind == "atan":
        return (1.0 / width) / (1.0 + (math.pi * x / width) ** 2)
    raise ValueError(f"unknown surrogate {kind!r}")


class TorchOps(EagerOps):
    """Array namespace over torch tensors (see :mod:`hnnx.ops.arrays`)."""

    def __init__(self, integer: bool, params: dict[str, Any], device: torch.device | None = None) -> None:
        self.integer = integer
        self.dtype = torch.int32 if integer else torch.float32
        self._params = params
        self._device = device
        self._surrogate = (params.get("surrogate", "rectangle"), float(params.get("surrogate_width", 1.0)))

    def _scalar(self, value: float | int, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(value, dtype=dtype, device=self._device)

    def param(self, name: str) -> torch.Tensor:
        value = float(self._params[name])
        return self._scalar(int(value) if self.integer else value, self.dtype)

    def param_int(self, name: str) -> torch.Tensor:
        return self._scalar(int(self._params[name]), torch.int32)

    def param_q8(self, name: str) -> torch.Tensor:
        return self._scalar(int(round(float(self._params[name]) * 256)), torch.int64)

    def literal(self, value: float | int) -> torch.Tensor:
        return self._scalar(value, self.dtype)

    def literal_int(self, value: int) -> torch.Tensor:
        return self._scalar(value, torch.int32)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def maximum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.maximum(a, b)

    def minimum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.minimum(a, b)

    def clamp(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return torch.clamp(x, lo, hi)

    def greater(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a > b

    def equal(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a == b

    def where(self, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(cond, a, b)

    def spike(self, v: torch.Tensor, theta: torch.Tensor, fired: torch.Tensor) -> torch.Tensor:
        if self.integer:
            return fired.to(self.dtype)
        return SurrogateSpike.apply(v - theta, fired, *self._surrogate)

    def mul_q8_floor(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.div(x.to(torch.int64) * a, 256, rounding_mode="floor").to(torch.int32)

    def product_floor(self, a: torch.Tensor, b: torch.Tensor, shift: int, lo: int, hi: int) -> torch.Tensor:
        wide = torch.div(a.to(torch.int64) * b.to(torch.int64), 1 << shift, rounding_mode="floor")
        return torch.clamp(wide, lo, hi).to(torch.int32)

    def recurrent_input(self, spikes: torch.Tensor, weight: torch.Tensor, rows: int, lo: int, hi: int
                        ) -> torch.Tensor:
        """See :meth:`hnnx.ops.arrays.NumpyOps.recurrent_input` (``torch.cumsum`` runs in order)."""
        shape, features = spikes.shape, weight.shape[0]
        spikes = spikes.reshape(rows, features)
        if self.integer:
            total = torch.matmul(spikes.to(torch.int64), weight.to(torch.int64))
            return torch.clamp(total, lo, hi).to(torch.int32).reshape(shape)
        terms = (spikes.unsqueeze(2) * weight.unsqueeze(0)).to(torch.float64)
        return (torch.cumsum(terms, dim=1)[:, -1, :] + 0.0).to(torch.float32).reshape(shape)

    # hybrid-unit operations (float); discrete ones pass gradients straight through
    def div(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a / b

    def less(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a < b

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def sign(self, x: torch.Tensor) -> torch.Tensor:
        return StraightThrough.apply(x, torch.sign(x).detach(), None)

    def round_clamp(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        inside = ((x >= lo) & (x <= hi)).to(x.dtype)
        return StraightThrough.apply(x, torch.clamp(torch.round(x), lo, hi).detach(), inside)

    def bernoulli(self, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return StraightThrough.apply(p, (u < p).to(p.dtype), None)

    def min_axis1(self, x: torch.Tensor) -> torch.Tensor:
        return x.amin(dim=1, keepdim=True) if x.shape[1] else x.new_zeros((x.shape[0], 1))

    def max_axis1(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=1, keepdim=True) if x.shape[1] else x.new_zeros((x.shape[0], 1))

    def concat_axis1(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts), dim=1)

    def unsqueeze(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        return x.unsqueeze(axis)

    def expand_time(self, x1: torch.Tensor, steps: int) -> torch.Tensor:
        return x1.expand(steps, *x1.shape[1:])

    def u32_to_unit(self, r: torch.Tensor) -> torch.Tensor:
        """The top 24 bits of 32-bit words (held in int64) as float32 in [0, 1)."""
        return torch.bitwise_right_shift(r, 8).to(torch.float32) * (2.0**-24)

    # eager multi-step plumbing
    def initial_state(self, given: torch.Tensor | None, fill: torch.Tensor, neuron_shape: tuple[int, ...]
                      ) -> torch.Tensor:
        """A flat ``[M]`` state: ``given`` broadcast to ``neuron_shape``, else ``fill``."""
        size = math.prod(neuron_shape)
        if given is None:
            return fill.expand(size).clone()
        given = torch.as_tensor(given, dtype=fill.dtype)
        return torch.broadcast_to(given, torch.broadcast_shapes(given.shape, neuron_shape)).reshape(size)

    def stack(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(tensors))

    def broadcast(self, x: Any, shape: tuple[int, ...]) -> torch.Tensor:
        """``x`` (a tensor or a scalar) broadcast to ``shape`` in the compute type, values unchanged."""
        return torch.broadcast_to(torch.as_tensor(x, dtype=self.dtype, device=self._device), shape)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.dtype, device=self._device)
