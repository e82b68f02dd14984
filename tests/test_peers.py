"""hnnx float-mode ``LIF`` against its peers: snnTorch ``Leaky`` and SpikingJelly ``LIFNode``.

hnnx steps ``v1 = v + u; s = v1 > θ; reset → v2; v ← alpha·v2``: the leak ends the step (step 0
integrates the un-leaked ``v_init = 0``). The peers leak at the start of the next step, which
is the same sequence of float32 operations. Peers run in float32 on CPU from a zero membrane;
θ and β act as float32 values everywhere. Mapped as below, hnnx's spikes (and membranes) equal
the peer's bit for bit (``np.array_equal``) on ``run_reference``, onnxruntime and the torch module:

| peer | integrate | fires | reset | hnnx ``LIF`` attributes | bit-exact |
|---|---|---|---|---|---|
| snnTorch `Leaky(beta=β, threshold=θ, reset_mechanism="zero")`, `reset_delay` False or True | `U = β·U + I` | `U − θ > 0` (≡ `U > θ`) | `U = 0` after the spike (delay: before the next leak, same value) | `alpha=β, threshold=θ, reset_mode="hard", v_reset=0` | yes |
| snnTorch `reset_mechanism="subtract", reset_delay=False` | `U = β·U + I` | `U > θ` | `U −= θ` after the spike | `alpha=β, threshold=θ, reset_mode="soft"` | yes while the post-spike `U ≤ θ` (holds if every `I ≤ θ`) |
| snnTorch `reset_mechanism="subtract", reset_delay=True` (default) | `U = β·U + I − θ·S[t−1]` | `U > θ` | θ subtracted next step, after the leak | `alpha=β, threshold=θ, reset_mode="soft_constant", reset_decrement=θ/β` | no (spikes agree, membranes differ by rounding) |
| SpikingJelly `LIFNode(tau=τ, decay_input=False, v_threshold=θ, v_reset=0.0)` | `H = V − V/τ + X` | `H ≥ θ` | `V = 0` after the spike | `alpha=1−1/τ, threshold=nextafter(θ, −∞), reset_mode="hard", v_reset=0` | yes, τ = 2, 4, 8, … |
| SpikingJelly `LIFNode(..., v_reset=None)` | `H = V − V/τ + X` | `H ≥ θ` | `V = H − θ` after the spike | `alpha=1−1/τ, threshold=nextafter(θ, −∞), reset_mode="soft_constant", reset_decrement=θ` | yes, τ = 2, 4, 8, … |
| SpikingJelly `LIFNode(..., decay_input=True)` | `H = V + (X − V)/τ` | `H ≥ θ` | as above | as above, on the current `X/τ` | no (spikes agree, membranes differ by rounding) |

Notes:

* Membranes: hnnx's state after step t is ``alpha·U`` (the same float32 product) where ``U``
  is the peer's membrane after step t's reset (snnTorch ``reset_delay=False`` returns it;
  with ``reset_delay=True`` it returns the membrane before the pending reset).
* ``H ≥ θ`` is ``H > nextafter(θ, −∞)`` in float32: no float32 lies between the two. hnnx's
  ``soft`` reset would subtract that lowered threshold, hence ``soft_constant`` with
  ``reset_decrement = θ`` for SpikingJelly's soft reset.
* ``alpha = 1 − 1/τ`` is exact when ``V/τ`` is (τ a power of two): ``V − V/τ`` and ``alpha·V``
  are then the same real number rounded once. Other τ differ in the last bit.
* snnTorch ``subtract``, ``reset_delay=False`` computes the next step's reset from the post-spike
  ``U``: if that still exceeds θ (an input above ``(2 − β)·θ``), the next step subtracts θ
  again before firing (and adds it back if the neuron stays silent); hnnx does not.
* snnTorch ``subtract``, ``reset_delay=True`` subtracts θ after the leak and the input sum,
  hnnx before its leak (θ/β, then leaked): equal in real arithmetic, not in rounding; exact
  only where the arithmetic is (β = 1 on dyadic inputs). SpikingJelly ``decay_input=True``
  rounds ``X − V`` first; ``v_reset ≠ 0`` leaks towards ``v_reset`` with its own rounding.
  None of these is bit-exact; the tests check ≥ 99.9 % spike agreement (100 % observed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from onnx import TensorProto

import hnnx.ops
from conftest import assert_same_array, run_onnxruntime, single_node_model
from hnnx.frontends.torch import LIF

STEPS, BATCH, FEATURES = 50, 8, 64
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def snntorch() -> Any:
    return pytest.importorskip("snntorch")


@pytest.fixture(scope="module")
def sj_neuron() -> Any:
    return pytest.importorskip("spikingjelly.activation_based.neuron")


# ---------------------------------------------------------------------------------------------
# Parameter mappings (the module docstring's table)
# ---------------------------------------------------------------------------------------------
def below(value: float) -> float:
    """The largest float32 below ``value`` (as float32): ``x ≥ value`` ⇔ ``x > below(value)``."""
    return float(np.nextafter(np.float32(value), np.float32(-np.inf)))


def attrs_for_snntorch(beta: float, threshold: float, reset_mechanism: str, reset_delay: bool) -> dict[str, Any]:
    """hnnx LIF attributes for snnTorch ``Leaky(beta, threshold, reset_mechanism, reset_delay)``."""
    attrs: dict[str, Any] = {"alpha": beta, "threshold": threshold}
    if reset_mechanism == "zero":
        return {**attrs, "reset_mode": "hard", "v_reset": 0.0}
    if not reset_delay:
        return {**attrs, "reset_mode": "soft"}
    # reset_delay=True subtracts θ after the next leak: θ/β before it (same reals, other rounding).
    return {**attrs, "reset_mode": "soft_constant",
            "reset_decrement": float(np.float32(threshold) / np.float32(beta))}


def attrs_for_spikingjelly(tau: float, v_threshold: float, v_reset: float | None) -> dict[str, Any]:
    """hnnx LIF attributes for SpikingJelly ``LIFNode(tau, decay_input=False, v_threshold, v_reset)``."""
    assert v_reset in (0.0, None), "only v_reset = 0 (hard) and None (soft) map exactly"
    attrs: dict[str, Any] = {"alpha": 1.0 - 1.0 / tau, "threshold": below(v_threshold)}
    if v_reset is None:
        return {**attrs, "reset_mode": "soft_constant", "reset_decrement": v_threshold}
    return {**attrs, "reset_mode": "hard", "v_reset": 0.0}


# ---------------------------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------------------------
def run_hnnx(current: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Spikes and final membrane of one hnnx LIF on run_reference, onnxruntime (function
    body) and the torch module, asserted bit-identical across the three paths."""
    node = hnnx.ops.make_node("LIF", ["current"], ["spikes", "v"], name="lif", **attrs)
    spikes, v = hnnx.ops.run_reference(node, current)
    model = single_node_model(node, {"current": current},
                              {"spikes": (TensorProto.FLOAT, current.shape),
                               "v": (TensorProto.FLOAT, current.shape[1:])})
    ort_spikes, ort_v = run_onnxruntime(model, {"current": current})
    with torch.no_grad():
        torch_spikes, torch_v = LIF(outputs=2, **attrs)(torch.from_numpy(current))
    for name, a, b in (("spikes", ort_spikes, spikes), ("v", ort_v, v),
                       ("spikes", torch_spikes.numpy(), spikes), ("v", torch_v.numpy(), v)):
        assert_same_array(a, b, f"hnnx paths disagree on {name!r} ({attrs})")
    return spikes, v


def hnnx_membrane_trace(current: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Spikes and the membrane state after every step, streaming one step at a time through
    ``run_reference`` with ``v0`` (hnnx's state after step t is ``alpha`` × the peer's)."""
    node = hnnx.ops.make_node("LIF", ["current", "v0"], ["spikes", "v"], name="lif", **attrs)
    v = np.zeros(current.shape[1:], np.float32)
    spikes, trace = [], []
    for t in range(current.shape[0]):
        s, v = hnnx.ops.run_reference(node, current[t:t + 1], v)
        spikes.append(s[0])
        trace.append(v)
    return np.stack(spikes), np.stack(trace)


def run_snntorch(snntorch: Any, current: np.ndarray, beta: float, threshold: float, reset_mechanism: str,
                 reset_delay: bool) -> tuple[np.ndarray, np.ndarray]:
    """snnTorch ``Leaky``, one step per call from a zero membrane: spikes and the returned
    membrane of every step, ``[T, ...]``."""
    lif = snntorch.Leaky(beta=beta, threshold=threshold, reset_mechanism=reset_mechanism, reset_delay=reset_delay)
    x = torch.from_numpy(current)
    mem = torch.zeros_like(x[0])
    spikes, mems = [], []
    with torch.no_grad():
        for t in range(x.shape[0]):
            spk, mem = lif(x[t], mem)
            spikes.append(spk)
            mems.append(mem)
    return torch.stack(spikes).numpy(), torch.stack(mems).numpy()


def run_spikingjelly(sj_neuron: Any, current: np.ndarray, tau: float, v_threshold: float, v_reset: float | None,
                     decay_input: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """SpikingJelly ``LIFNode`` in multi-step mode: spikes and the membrane after every step."""
    node = sj_neuron.LIFNode(tau=tau, decay_input=decay_input, v_threshold=v_threshold, v_reset=v_reset,
                             step_mode="m", store_v_seq=True)
    with torch.no_grad():
        spikes = node(torch.from_numpy(current))
    return spikes.numpy(), node.v_seq.numpy()


def leak(v: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha·v`` in float32, as hnnx leaks."""
    return np.float32(alpha) * v


def sj_leak(v: np.ndarray, tau: float) -> np.ndarray:
    """SpikingJelly's leak ``V − V/τ`` (v_reset 0 or soft), in torch float32."""
    t = torch.from_numpy(v)
    return (t - t / tau).numpy()


def random_current(seed: int, shape: tuple[int, ...] = (STEPS, BATCH, FEATURES), scale: float = 1.0,
                   offset: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + offset).astype(np.float32)


def assert_spiking_is_not_trivial(spikes: np.ndarray) -> None:
    rate = float(spikes.mean())
    assert 0.02 < rate < 0.9, f"spike rate {rate:.3f}: the comparison would prove little"


# ---------------------------------------------------------------------------------------------
# snnTorch Leaky
# ---------------------------------------------------------------------------------------------
SNN_CASES = [  # (beta, threshold)
    (0.9, 1.0), (0.5, 0.75), (0.73, 0.6), (1.0, 1.0),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta,threshold", SNN_CASES)
@pytest.mark.parametrize("reset_delay", [False, True])
def test_snntorch_zero_reset_is_bit_exact(snntorch: Any, seed: int, beta: float, threshold: float,
                                          reset_delay: bool) -> None:
    """Reset to zero: exact with or without reset_delay (the zeroed membrane leaks to 0 either
    way), on any input. snnTorch returns the post-reset membrane without the delay, the
    pre-reset one with it."""
    current = random_current(seed, scale=1.5)
    peer_spikes, peer_mem = run_snntorch(snntorch, current, beta, threshold, "zero", reset_delay)
    spikes, v = run_hnnx(current, attrs_for_snntorch(beta, threshold, "zero", reset_delay))
    assert_same_array(spikes, peer_spikes, "spikes vs snnTorch")
    assert_spiking_is_not_trivial(spikes)
    post_reset = peer_mem[-1] if not reset_delay else np.where(peer_spikes[-1] > 0, np.float32(0), peer_mem[-1])
    assert_same_array(v, leak(post_reset, beta), "final membrane vs snnTorch")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta,threshold", SNN_CASES)
def test_snntorch_subtract_reset_is_bit_exact(snntorch: Any, seed: int, beta: float, threshold: float) -> None:
    """Reset by subtraction, reset_delay=False: exact while the post-spike membrane stays ≤ θ,
    which inputs ≤ θ guarantee (β·U ≤ θ and I ≤ θ ⇒ U − θ ≤ θ, also after rounding)."""
    rng = np.random.default_rng(seed)
    current = (rng.uniform(-0.6, 1.0, (STEPS, BATCH, FEATURES)) * np.float32(threshold)).astype(np.float32)
    peer_spikes, peer_mem = run_snntorch(snntorch, current, beta, threshold, "subtract", False)
    assert (peer_mem <= np.float32(threshold)).all(), "test inputs left the exactly-mapped regime"
    spikes, v = run_hnnx(current, attrs_for_snntorch(beta, threshold, "subtract", False))
    assert_same_array(spikes, peer_spikes, "spikes vs snnTorch")
    assert_spiking_is_not_trivial(spikes)
    assert_same_array(v, leak(peer_mem[-1], beta), "final membrane vs snnTorch")


@pytest.mark.parametrize("reset_mechanism", ["subtract", "zero"])
def test_snntorch_membrane_trace_is_bit_exact(snntorch: Any, reset_mechanism: str) -> None:
    """Every step's membrane, streamed through hnnx with v0: hnnx state = β × snnTorch's."""
    beta, threshold = 0.8, 1.0
    rng = np.random.default_rng(7)
    current = rng.uniform(-0.5, 1.0, (STEPS, 4, 16)).astype(np.float32)
    peer_spikes, peer_mem = run_snntorch(snntorch, current, beta, threshold, reset_mechanism, False)
    attrs = attrs_for_snntorch(beta, threshold, reset_mechanism, False)
    spikes, trace = hnnx_membrane_trace(current, attrs)
    assert_same_array(spikes, peer_spikes, "streamed spikes vs snnTorch")
    assert_same_array(trace, leak(peer_mem, beta), "membrane trace vs snnTorch")
    assert_same_array(spikes, run_hnnx(current, attrs)[0], "streamed vs one-shot hnnx")


def test_snntorch_fires_strictly_above_threshold(snntorch: Any) -> None:
    """snnTorch's forward is ``(U − θ) > 0``: a membrane equal to θ does not fire, as in hnnx.
    Inputs on a 1/8 grid with β = 1/2 hit θ exactly many times."""
    beta, threshold = 0.5, 1.0
    rng = np.random.default_rng(3)
    current = (rng.integers(-4, 9, (STEPS, BATCH, FEATURES)) / 8).astype(np.float32)
    for mechanism in ("subtract", "zero"):
        peer_spikes, peer_mem = run_snntorch(snntorch, current, beta, threshold, mechanism, False)
        previous = np.concatenate([np.zeros_like(peer_mem[:1]), peer_mem[:-1]])
        charged = np.float32(beta) * previous + current  # snnTorch's pre-reset membrane
        ties = charged == np.float32(threshold)
        assert ties.sum() >= 20 and not peer_spikes[ties].any()
        spikes, _ = run_hnnx(current, attrs_for_snntorch(beta, threshold, mechanism, False))
        assert_same_array(spikes, peer_spikes, f"spikes vs snnTorch at ties ({mechanism})")


def test_snntorch_subtract_diverges_only_after_post_spike_membrane_exceeds_threshold(snntorch: Any) -> None:
    """Outside the mapped regime (inputs > θ): the spike trains agree on every neuron up to the
    first step whose post-spike membrane exceeds θ (snnTorch then subtracts θ again in the next
    step, hnnx does not), and do differ somewhere after it."""
    beta, threshold = 0.9, 1.0
    current = random_current(11, scale=1.5)
    peer_spikes, peer_mem = run_snntorch(snntorch, current, beta, threshold, "subtract", False)
    spikes, _ = run_hnnx(current, attrs_for_snntorch(beta, threshold, "subtract", False))
    over = peer_mem > np.float32(threshold)
    first_over = np.where(over.any(axis=0), over.argmax(axis=0), STEPS)  # per neuron
    steps = np.arange(STEPS).reshape(STEPS, 1, 1)
    agree_until = steps <= first_over
    assert np.array_equal(spikes[agree_until], peer_spikes[agree_until])
    assert not np.array_equal(spikes, peer_spikes)


@pytest.mark.parametrize("beta", [0.9, 0.73, 0.5])
def test_snntorch_subtract_with_reset_delay_agrees_on_spikes_not_bits(snntorch: Any, beta: float) -> None:
    """reset_delay=True (snnTorch's default) with subtraction: U = β·U + I − θ·S[t−1]. hnnx
    subtracts before its leak, so the mapping is reset_decrement = θ/β: equal in real
    arithmetic, not in float32 rounding. Spikes agree at ≥ 99.9 % (here: all of them);
    membranes do not."""
    threshold = 1.0
    disagreements, total = 0, 0
    for seed in SEEDS:
        current = random_current(seed, scale=1.0)
        peer_spikes, _ = run_snntorch(snntorch, current, beta, threshold, "subtract", True)
        spikes, v = run_hnnx(current, attrs_for_snntorch(beta, threshold, "subtract", True))
        disagreements += int((spikes != peer_spikes).sum())
        total += spikes.size
    assert disagreements <= 1e-3 * total, f"{disagreements} of {total} spikes differ"
    # The membranes themselves are not bit-identical (the reason the mapping is not exact).
    peer_spikes, peer_mem = run_snntorch(snntorch, current, beta, threshold, "subtract", True)
    pending = np.where(peer_spikes[-1] > 0, np.float32(threshold), np.float32(0))
    assert not np.array_equal(v, np.float32(beta) * peer_mem[-1] - pending)


def test_snntorch_subtract_with_reset_delay_is_exact_where_arithmetic_is(snntorch: Any) -> None:
    """β = 1 on a dyadic grid (every sum exact): reset_delay=True subtraction is then hnnx
    ``soft`` exactly, spikes and membrane (snnTorch's pending reset applied by hand)."""
    threshold = 1.0
    rng = np.random.default_rng(5)
    current = (rng.integers(-32, 64, (STEPS, BATCH, FEATURES)) / 64).astype(np.float32)
    peer_spikes, peer_mem = run_snntorch(snntorch, current, 1.0, threshold, "subtract", True)
    attrs = attrs_for_snntorch(1.0, threshold, "subtract", True)
    assert attrs["reset_decrement"] == threshold
    spikes, v = run_hnnx(current, attrs)
    assert_same_array(spikes, peer_spikes, "spikes vs snnTorch (β = 1, dyadic inputs)")
    assert_spiking_is_not_trivial(spikes)
    assert_same_array(v, peer_mem[-1] - peer_spikes[-1] * np.float32(threshold), "final membrane")


# ---------------------------------------------------------------------------------------------
# SpikingJelly LIFNode
# ---------------------------------------------------------------------------------------------
SJ_SHAPES = [(STEPS, BATCH, FEATURES), (STEPS, BATCH, FEATURES), (STEPS, 4, 2, 16)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tau", [2.0, 4.0, 8.0])
@pytest.mark.parametrize("v_threshold", [1.0, 0.6])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
def test_spikingjelly_lif_is_bit_exact(sj_neuron: Any, seed: int, tau: float, v_threshold: float,
                                       v_reset: float | None) -> None:
    """decay_input=False, τ a power of two: spikes and membrane bit-exact."""
    current = random_current(seed, SJ_SHAPES[seed], scale=1.0)
    peer_spikes, peer_v = run_spikingjelly(sj_neuron, current, tau, v_threshold, v_reset)
    spikes, v = run_hnnx(current, attrs_for_spikingjelly(tau, v_threshold, v_reset))
    assert_same_array(spikes, peer_spikes, "spikes vs SpikingJelly")
    assert_spiking_is_not_trivial(spikes)
    assert_same_array(v, sj_leak(peer_v[-1], tau), "final membrane vs SpikingJelly")


@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
def test_spikingjelly_membrane_trace_is_bit_exact(sj_neuron: Any, v_reset: float | None) -> None:
    """Every step's membrane, streamed through hnnx with v0: hnnx state = V − V/τ of SpikingJelly's."""
    tau, v_threshold = 4.0, 1.0
    current = random_current(8, (STEPS, 4, 16))
    peer_spikes, peer_v = run_spikingjelly(sj_neuron, current, tau, v_threshold, v_reset)
    attrs = attrs_for_spikingjelly(tau, v_threshold, v_reset)
    spikes, trace = hnnx_membrane_trace(current, attrs)
    assert_same_array(spikes, peer_spikes, "streamed spikes vs SpikingJelly")
    assert_same_array(trace, sj_leak(peer_v, tau), "membrane trace vs SpikingJelly")
    assert_same_array(trace, leak(peer_v, attrs["alpha"]), "alpha·V is V − V/τ for τ = 4")


@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
def test_spikingjelly_fires_at_threshold(sj_neuron: Any, v_reset: float | None) -> None:
    """SpikingJelly fires on ``H ≥ θ``: a membrane equal to θ fires; hnnx with threshold
    nextafter(θ, −∞) does too. Inputs on a 1/8 grid with τ = 2 hit θ exactly many times."""
    tau, v_threshold = 2.0, 1.0
    rng = np.random.default_rng(4)
    current = (rng.integers(-4, 9, (STEPS, BATCH, FEATURES)) / 8).astype(np.float32)
    peer_spikes, peer_v = run_spikingjelly(sj_neuron, current, tau, v_threshold, v_reset)
    previous = np.concatenate([np.zeros_like(peer_v[:1]), peer_v[:-1]])
    charged = sj_leak(previous, tau) + current  # SpikingJelly's H
    ties = charged == np.float32(v_threshold)
    assert ties.sum() >= 20 and peer_spikes[ties].all()
    spikes, v = run_hnnx(current, attrs_for_spikingjelly(tau, v_threshold, v_reset))
    assert_same_array(spikes, peer_spikes, "spikes vs SpikingJelly at ties")
    assert_same_array(v, sj_leak(peer_v[-1], tau), "final membrane vs SpikingJelly")


def test_spikingjelly_and_snntorch_differ_exactly_at_ties(snntorch: Any, sj_neuron: Any) -> None:
    """One current equal to θ at step 0: SpikingJelly (≥) fires, snnTorch (>) does not, and
    each hnnx mapping follows its peer."""
    current = np.array([[[1.0, 0.5, 1.5]]], np.float32)  # [T=1, N=1, 3]
    sj_spikes, _ = run_spikingjelly(sj_neuron, current, 2.0, 1.0, 0.0)
    snn_spikes, _ = run_snntorch(snntorch, current, 0.5, 1.0, "zero", False)
    assert sj_spikes.ravel().tolist() == [1, 0, 1] and snn_spikes.ravel().tolist() == [0, 0, 1]
    assert_same_array(run_hnnx(current, attrs_for_spikingjelly(2.0, 1.0, 0.0))[0], sj_spikes, "SpikingJelly mapping")
    assert_same_array(run_hnnx(current, attrs_for_snntorch(0.5, 1.0, "zero", False))[0], snn_spikes,
                      "snnTorch mapping")


@pytest.mark.parametrize("tau", [2.0, 4.0, 8.0])
def test_spikingjelly_decay_input_agrees_on_spikes_not_bits(sj_neuron: Any, tau: float) -> None:
    """decay_input=True: H = V + (X − V)/τ rounds ``X − V`` before scaling; hnnx on the current
    X/τ (exact for τ a power of two) computes alpha·V + X/τ. Equal reals, other rounding:
    spikes agree at ≥ 99.9 % (here: all of them), membranes do not."""
    disagreements, total, membranes_equal = 0, 0, True
    for seed in SEEDS:
        current = random_current(seed, scale=2.0, offset=1.0)
        peer_spikes, peer_v = run_spikingjelly(sj_neuron, current, tau, 1.0, 0.0, decay_input=True)
        scaled = current / np.float32(tau)
        assert np.array_equal(scaled * np.float32(tau), current)
        spikes, v = run_hnnx(scaled, attrs_for_spikingjelly(tau, 1.0, 0.0))
        assert spikes.sum() > 0
        disagreements += int((spikes != peer_spikes).sum())
        total += spikes.size
        membranes_equal &= np.array_equal(v, sj_leak(peer_v[-1], tau))
    assert disagreements <= 1e-3 * total, f"{disagreements} of {total} spikes differ"
    assert not membranes_equal
