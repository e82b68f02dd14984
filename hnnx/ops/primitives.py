"""HNN's neuron primitives, written once against an array namespace ``xp``.

The HNN framework builds its neurons from small operations (accumulate with refractory gating,
fire, reset, leak, saturate, threshold accumulation and dynamics, refractory counting); the
extended LIF — and the TianjicX soma primitive P08 — is their composition in a fixed order.
Each function below is one such operation, in float32 and in exact integer arithmetic, for any
array namespace of :mod:`hnnx.ops.arrays` (numpy reference, ONNX body, torch forward):

* :func:`hnnx.ops.LIF`'s step is the composition ``threshold → accumulate → fire → reset →
  leak → saturate_lower → threshold_dynamics → refractory_count`` (see ``membrane_step``);
  ``CubaLIF``, ``LI`` and ``Integrator`` compose the same functions;
* the single-step ops of :mod:`hnnx.ops.primitive_ops` (``hnnx.Accumulate``, ``hnnx.Leak``, …)
  run one function each, so a step graph written from those ops computes what the LIF computes.

``flags`` is a neuron's structure (:func:`hnnx.ops.lif.neuron_flags`): ``integer`` (numeric
mode), ``bits`` (state width), ``reset`` (reset mode) and which parts are used (``leak``, ``beta``,
``sat``, ``theta_leak``). Constants are read by attribute name through ``xp.param``: a node's
attribute in the ONNX body, a Python value in numpy and torch. Integer mode saturates every
stage that can leave the state range to signed ``bits``-bit integers (:func:`clamp_state`); the
multiplicative factors are ``floor(round(256·factor)·x / 256)`` with an int64 product.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

MEMBRANE = "membrane"
"""Unit of a primitive's port: the units of the neuron's input current (quantization scales
membrane values and constants with the current's σ)."""
SPIKES = "spikes"
"""Unit of a primitive's port: 0/1 spikes in the compute type."""
COUNT = "count"
"""Unit of a primitive's port: an int32 number of steps (a refractory counter)."""


def state_range(bits: int) -> tuple[int, int]:
    """The signed saturation range of a ``bits``-bit state: ``(−2^(bits−1), 2^(bits−1) − 1)``."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def clamp_state(xp: Any, flags: SimpleNamespace, x: Any) -> Any:
    """Integer mode: ``x`` saturated to the ``bits``-bit state range; float mode: ``x``."""
    if not flags.integer:
        return x
    lo, hi = state_range(flags.bits)
    return xp.clamp(x, lo, hi)


def scaled(xp: Any, flags: SimpleNamespace, x: Any, factor: str) -> Any:
    """``factor·x`` (float) or ``floor(round(256·factor)·x / 256)`` (integer) for attribute ``factor``."""
    if flags.integer:
        return xp.mul_q8_floor(x, xp.param_q8(factor))
    return xp.mul(x, xp.param(factor))


def threshold(xp: Any, flags: SimpleNamespace, theta_a: Any = None) -> Any:
    """Threshold accumulate (LIF step 1): ``θ = θ0 + θa`` (saturated; ``θ0`` alone without an
    adaptive component ``theta_a``), then ``max(θ, v_lower)`` when the node saturates.
    Attributes ``threshold`` (θ0) and ``v_lower``."""
    if theta_a is not None:
        theta = clamp_state(xp, flags, xp.add(xp.param("threshold"), theta_a))
    else:
        theta = xp.param("threshold")
    if flags.sat:
        theta = xp.maximum(theta, xp.param("v_lower"))
    return theta


def accumulate(xp: Any, flags: SimpleNamespace, v: Any, u: Any, refractory: Any = None) -> Any:
    """Accumulate with refractory gating (LIF step 2): ``v1 = v + u`` (saturated) where the
    refractory counter is 0 (or without a counter), else ``v1 = v``. ``u`` is an admitted
    input (inside the state range: see :func:`clamp_state`)."""
    v1 = clamp_state(xp, flags, xp.add(v, u))
    if refractory is not None:
        v1 = xp.where(xp.equal(refractory, xp.literal_int(0)), v1, v)
    return v1


def fire(xp: Any, v: Any, theta: Any) -> tuple[Any, Any]:
    """Fire (LIF step 3): ``fired = v > θ`` (strict) and the spikes ``1[fired]`` in the compute type,
    which carry the surrogate gradient ``∂s/∂v = −∂s/∂θ`` in torch. Returns ``(fired, spikes)``."""
    fired = xp.greater(v, theta)
    return fired, xp.spike(v, theta, fired)


def reset(xp: Any, flags: SimpleNamespace, v1: Any, fired: Any, theta: Any = None) -> Any:
    """Reset after a spike (LIF step 4), where ``fired``: ``hard`` → ``v_reset``; ``soft`` →
    ``v1 − θ``; ``soft_constant`` → ``v1 − reset_decrement``; ``none`` → ``v1`` (saturated in
    integer mode). The reset takes the boolean spikes, so no gradient flows through it."""
    if flags.reset == "hard":
        return xp.where(fired, xp.param("v_reset"), v1)
    if flags.reset == "soft":
        return clamp_state(xp, flags, xp.where(fired, xp.sub(v1, theta), v1))
    if flags.reset == "soft_constant":
        return clamp_state(xp, flags, xp.where(fired, xp.sub(v1, xp.param("reset_decrement")), v1))
    return v1


def leak(xp: Any, flags: SimpleNamespace, v: Any) -> Any:
    """Leak (LIF step 5): ``alpha·v + beta`` — each part only when the node uses it; integer
    ``floor(round(256·alpha)·v / 256) + beta``, saturated."""
    if flags.leak:
        v = scaled(xp, flags, v, "alpha")
    if flags.beta:
        v = clamp_state(xp, flags, xp.add(v, xp.param("beta")))
    return v


def saturate_lower(xp: Any, flags: SimpleNamespace, v: Any) -> Any:
    """Lower saturation (end of LIF step 5): ``max(v, v_lower)`` when the node saturates."""
    if flags.sat:
        v = xp.maximum(v, xp.param("v_lower"))
    return v


def threshold_dynamics(xp: Any, flags: SimpleNamespace, theta_a: Any, fired: Any) -> Any:
    """Threshold dynamics (LIF step 6): ``θa' = theta_alpha·θa + theta_beta``, plus
    ``theta_increment`` where ``fired`` (integer: ``floor(round(256·theta_alpha)·θa / 256) + …``,
    saturated)."""
    decayed = scaled(xp, flags, theta_a, "theta_alpha") if flags.theta_leak else theta_a
    decayed = xp.add(decayed, xp.param("theta_beta"))
    increased = xp.add(decayed, xp.param("theta_increment"))
    return clamp_state(xp, flags, xp.where(fired, increased, decayed))


def refractory_count(xp: Any, counter: Any, fired: Any) -> Any:
    """Refractory counting (LIF step 7): ``r' = refractory`` where ``fired``, else ``max(r − 1, 0)``
    (int32 in both modes)."""
    counted_down = xp.maximum(xp.sub(counter, xp.literal_int(1)), xp.literal_int(0))
    return xp.where(fired, xp.param_int("refractory"), counted_down)


def product(xp: Any, flags: SimpleNamespace, a: Any, b: Any, shift: int = 0) -> Any:
    """Product of two membrane-unit values with a gain, for neurons whose dynamics are not
    linear in the state (e.g. the quadratic term of a quadratic integrate-and-fire neuron):
    float ``gain·(a·b)``; integer ``floor(round(256·gain)·P / 256)`` with
    ``P = floor(a·b / 2^shift)`` saturated — the gain a multiple of 1/256 in [0, 1] applied as the
    leak applies ``alpha``, every product exact in int64. Attribute ``gain``; ``shift`` is
    structural (it selects the body)."""
    if flags.integer:
        lo, hi = state_range(flags.bits)
        return xp.mul_q8_floor(xp.product_floor(a, b, shift, lo, hi), xp.param_q8("gain"))
    return xp.mul(xp.mul(a, b), xp.param("gain"))
