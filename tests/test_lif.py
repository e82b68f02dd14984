"""Tests of ``hnnx.LIF``: an independent scalar reference, hand-computed traces, every
equation path, attribute validation and ONNX tooling (checker, shape inference,
onnxruntime function bodies, onnx.reference)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import hnnx.ops
from conftest import (OutputTypes, assert_same_array, build_model, elem_of, run_model_both_ways,
                      single_node_model)
from hnnx.errors import NodeError

INT32_MIN, INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)
OUTPUT_NAMES = ("spikes", "v", "theta", "refractory")
INITIAL_NAMES = ("v0", "theta0", "refractory0")
RESET_MODES = ("hard", "soft", "soft_constant", "none")

# Attribute defaults as documented in the LIF attribute table (written out, not read from hnnx).
LIF_DEFAULTS: dict[str, Any] = {
    "mode": "float", "threshold": 1.0, "reset_mode": "hard", "v_reset": 0.0, "reset_decrement": 0.0,
    "v_init": 0.0, "alpha": 1.0, "beta": 0.0, "v_lower": None, "refractory": 0, "theta_alpha": 1.0,
    "theta_beta": 0.0, "theta_increment": 0.0, "state_bits": 28, "steps": 0,
}


# ---------------------------------------------------------------------------------------------
# The independent scalar reference (docstring steps 1–7, one neuron and one step at a time)
# ---------------------------------------------------------------------------------------------
def scalar_lif(attrs: dict[str, Any], current: np.ndarray, v0: np.ndarray | None = None,
               theta0: np.ndarray | None = None, refractory0: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """LIF by the docstring equations with Python ints (integer mode, unbounded then
    saturated explicitly) or np.float32 scalars (float mode, same operation order)."""
    a = {**LIF_DEFAULTS, **{k: v for k, v in attrs.items() if v is not None}}
    integer = a["mode"] == "integer"
    bits = a["state_bits"]
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def number(x: Any) -> Any:
        return int(x) if integer else np.float32(x)

    def saturate(x: Any) -> Any:
        return min(max(x, lo), hi) if integer else x

    def scale(x: Any, factor: float) -> Any:
        if integer:
            return (round(256 * factor) * x) // 256  # Python // is floor division
        return np.float32(factor) * x

    threshold, v_reset, decrement = number(a["threshold"]), number(a["v_reset"]), number(a["reset_decrement"])
    beta, theta_beta, increment = number(a["beta"]), number(a["theta_beta"]), number(a["theta_increment"])
    v_lower = None if a["v_lower"] is None else number(a["v_lower"])
    refractory_steps = int(a["refractory"])

    steps, neuron_shape = current.shape[0], current.shape[1:]

    def per_neuron(given: np.ndarray | None, fill: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(fill if given is None else given), neuron_shape)

    v_start, theta_start = per_neuron(v0, a["v_init"]), per_neuron(theta0, 0)
    refractory_start = per_neuron(refractory0, 0)
    dtype = np.int32 if integer else np.float32
    spikes = np.zeros(current.shape, dtype)
    v_out, theta_out = np.zeros(neuron_shape, dtype), np.zeros(neuron_shape, dtype)
    refractory_out = np.zeros(neuron_shape, np.int32)
    for index in np.ndindex(*neuron_shape):
        # Initial states are admitted saturated (integer mode), the counter at least 0.
        v, theta_a = saturate(number(v_start[index])), saturate(number(theta_start[index]))
        counter = max(int(refractory_start[index]), 0)
        for t in range(steps):
            u = saturate(number(current[(t, *index)]))
            theta = saturate(threshold + theta_a)
            if v_lower is not None:
                theta = max(theta, v_lower)
            v1 = saturate(v + u) if counter == 0 else v
            fired = bool(v1 > theta)
            v2 = v1
            if fired and a["reset_mode"] == "hard":
                v2 = v_reset
            elif fired and a["reset_mode"] == "soft":
                v2 = saturate(v1 - theta)
            elif fired and a["reset_mode"] == "soft_constant":
                v2 = saturate(v1 - decrement)
            v3 = saturate(scale(v2, a["alpha"]) + beta)
            if v_lower is not None:
                v3 = max(v3, v_lower)
            next_theta_a = scale(theta_a, a["theta_alpha"]) + theta_beta
            if fired:
                next_theta_a = next_theta_a + increment
            theta_a = saturate(next_theta_a)
            counter = refractory_steps if fired else max(counter - 1, 0)
            v = v3
            spikes[(t, *index)] = 1 if fired else 0
        v_out[index], theta_out[index], refractory_out[index] = v, theta_a, counter
    return {"spikes": spikes, "v": v_out, "theta": theta_out, "refractory": refractory_out}


# ---------------------------------------------------------------------------------------------
# Running one LIF node on every path
# ---------------------------------------------------------------------------------------------
def lif_output_types(outputs: list[str], current: np.ndarray) -> OutputTypes:
    """Declared (and expected inferred) types of the connected LIF outputs."""
    elem, neuron_dims = elem_of(current), current.shape[1:]
    kinds = [(elem, current.shape), (elem, neuron_dims), (elem, neuron_dims), (TensorProto.INT32, neuron_dims)]
    return {name: kind for name, kind in zip(outputs, kinds) if name}


def run_lif(attrs: dict[str, Any], current: np.ndarray, *, v0: np.ndarray | None = None,
            theta0: np.ndarray | None = None, refractory0: np.ndarray | None = None,
            n_outputs: int = 4, skip_theta: bool = False, name: str = "lif") -> dict[str, np.ndarray]:
    """Run one LIF node through (a) :func:`scalar_lif`, (b) ``run_reference``, (c) onnxruntime
    on the function body and ``onnx.reference``; assert they agree bit for bit and return
    the outputs by name."""
    initial = {"v0": v0, "theta0": theta0, "refractory0": refractory0}
    inputs = ["current"] + [key if initial[key] is not None else "" for key in INITIAL_NAMES]
    while inputs[-1] == "":
        inputs.pop()
    outputs = list(OUTPUT_NAMES[:n_outputs])
    if skip_theta:
        outputs[2] = ""
    node = hnnx.ops.make_node("LIF", inputs, outputs, name=name, **attrs)
    feeds = {"current": current, **{key: value for key, value in initial.items() if value is not None}}
    from_reference = hnnx.ops.run_reference(node, current, v0, theta0, refractory0)
    assert len(from_reference) == len(outputs)
    from_scalar = scalar_lif(attrs, current, v0, theta0, refractory0)
    for out_name, reference_value in zip(outputs, from_reference):
        if out_name:
            assert_same_array(reference_value, from_scalar[out_name], f"run_reference vs scalar reference, {out_name!r}")

    model = single_node_model(node, feeds, lif_output_types(outputs, current))
    from_model = dict(zip([o.name for o in model.graph.output], run_model_both_ways(model, feeds)))
    for out_name, reference_value in zip(outputs, from_reference):
        if out_name:
            assert_same_array(from_model[out_name], reference_value, f"onnxruntime vs run_reference, {out_name!r}")
    return from_model


def membrane_trace(attrs: dict[str, Any], current: np.ndarray, **initial: np.ndarray) -> np.ndarray:
    """The membrane after each step (the final ``v`` of every prefix of ``current``)."""
    return np.stack([run_lif(attrs, current[: t + 1], **initial)["v"] for t in range(current.shape[0])])


def as_current(values: Any, integer: bool) -> np.ndarray:
    return np.asarray(values, np.int32 if integer else np.float32)


# ---------------------------------------------------------------------------------------------
# 1. Random configurations: scalar reference == run_reference == onnxruntime == onnx.reference
# ---------------------------------------------------------------------------------------------
NEURON_SHAPES = ((3,), (2, 3), (2, 1, 2, 2))


@dataclass
class LifCase:
    attrs: dict[str, Any]
    current: np.ndarray
    initial: dict[str, np.ndarray] = field(default_factory=dict)
    n_outputs: int = 2
    skip_theta: bool = False


def random_case(seed: int, integer: bool) -> LifCase:
    """A random LIF configuration touching every attribute, input and output combination."""
    rng = np.random.default_rng(seed)
    neuron_shape = NEURON_SHAPES[rng.integers(len(NEURON_SHAPES))]
    steps = int(rng.integers(1, 7))

    def maybe(p: float) -> bool:
        return bool(rng.random() < p)

    if integer:
        bits = int(rng.choice([8, 12, 16, 28, 31]))
        hi = 2 ** (bits - 1) - 1
        unit = max(min(hi, 2 ** 20) // 64, 1)  # typical constant magnitude; 8 units still fit the state

        def const(low: float, high: float) -> int:
            return int(rng.integers(int(low * unit), int(high * unit) + 1))

        def fraction() -> float:
            return int(rng.integers(0, 257)) / 256

        attrs: dict[str, Any] = {"mode": "integer", "state_bits": bits}
        current = rng.integers(-6 * unit, 10 * unit, size=(steps, *neuron_shape), dtype=np.int64)
        if maybe(0.4):  # currents beyond the state range exercise input saturation
            beyond = rng.random(current.shape) < 0.3
            current[beyond] = rng.choice([INT32_MIN, INT32_MAX, 2 * hi + 1, -2 * hi], size=int(beyond.sum()))
        current = current.astype(np.int32)
    else:
        def const(low: float, high: float) -> float:
            return float(rng.uniform(low, high))

        def fraction() -> float:
            return float(rng.uniform(0.0, 1.0))

        attrs = {"mode": "float"} if maybe(0.5) else {}
        current = rng.normal(0.4, 0.8, size=(steps, *neuron_shape)).astype(np.float32)
        if maybe(0.3):
            attrs["surrogate"] = str(rng.choice(["rectangle", "sigmoid", "atan"]))
            attrs["surrogate_width"] = float(rng.uniform(0.1, 3.0))

    attrs["threshold"] = const(1, 8) if integer else const(0.2, 2.0)
    attrs["reset_mode"] = str(rng.choice(RESET_MODES))
    optional = {
        "v_reset": lambda: const(-1, 1), "reset_decrement": lambda: const(0, 4), "v_init": lambda: const(-2, 2),
        "alpha": fraction, "beta": lambda: const(-1, 1), "v_lower": lambda: const(-4, 0),
        "refractory": lambda: int(rng.integers(0, 4)), "theta_alpha": fraction,
        "theta_beta": lambda: const(-0.5, 0.5), "theta_increment": lambda: const(0, 3),
    }
    for attr_name, draw in optional.items():
        if maybe(0.45):
            attrs[attr_name] = draw()

    initial: dict[str, np.ndarray] = {}
    shapes = [(), (1,) * len(neuron_shape), neuron_shape[-1:], neuron_shape]
    dtype = np.int32 if integer else np.float32
    draws = {"v0": lambda s: [const(-4, 8) for _ in range(int(np.prod(s)))],
             "theta0": lambda s: [const(-2, 2) for _ in range(int(np.prod(s)))],
             "refractory0": lambda s: rng.integers(0, 4, size=int(np.prod(s)))}
    for key in INITIAL_NAMES:
        if maybe(0.4):
            shape = shapes[rng.integers(len(shapes))]
            as_type = np.int32 if key == "refractory0" else dtype
            initial[key] = np.asarray(draws[key](shape), as_type).reshape(shape)
    n_outputs = int(rng.integers(1, 5))
    return LifCase(attrs, current, initial, n_outputs, skip_theta=n_outputs == 4 and maybe(0.3))


RANDOM_SEEDS = range(32)


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_configurations_agree_on_all_paths(seed: int, integer: bool) -> None:
    case = random_case(seed, integer)
    run_lif(case.attrs, case.current, **case.initial, n_outputs=case.n_outputs, skip_theta=case.skip_theta)


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_random_configurations_are_not_trivial(integer: bool) -> None:
    """Most random cases both fire and stay silent somewhere, so agreement means something."""
    cases = [random_case(seed, integer) for seed in RANDOM_SEEDS]
    mixed = 0
    for case in cases:
        spikes = scalar_lif(case.attrs, case.current, **case.initial)["spikes"]
        mixed += bool(spikes.any() and not spikes.all())
    assert mixed >= 0.6 * len(cases)
    assert {case.attrs["reset_mode"] for case in cases} == set(RESET_MODES)
    assert any(case.attrs.get("refractory", 0) > 0 for case in cases)
    assert any("v_lower" in case.attrs for case in cases)
    assert any("theta0" in case.initial for case in cases)
    if integer:
        assert any(np.abs(case.current).max() > 2 ** (case.attrs["state_bits"] - 1) for case in cases)


# ---------------------------------------------------------------------------------------------
# 2. Hand-computed traces
# ---------------------------------------------------------------------------------------------
def test_spec_lif_trace_step_zero() -> None:
    """hnn_spec §1.11: v_th=1, alpha=0.5, beta=0.1, v_reset=0, v_init=0."""
    attrs = {"threshold": 1.0, "alpha": 0.5, "beta": 0.1, "v_reset": 0.0, "v_init": 0.0}
    out = run_lif(attrs, as_current([[0.6, 1.2, 0.3, 1.0]], integer=False))
    assert_same_array(out["spikes"], np.array([[0, 1, 0, 0]], np.float32), "spikes")
    # 0.5·0.6+0.1, 0.5·0+0.1 (reset), 0.5·0.3+0.1, 0.5·1.0+0.1 (1.0 > 1 is false)
    np.testing.assert_allclose(out["v"], [0.4, 0.1, 0.25, 0.6], rtol=0, atol=1e-6)


def test_spec_integer_constants_trace() -> None:
    """hnn_spec §2.5: weight scale 513.27 gives v_th 513, v_reset 51, beta 26, alpha 230/256."""
    scale = 513.27
    threshold, v_reset, beta, alpha_q8 = round(1 * scale), round(0.1 * scale), round(0.05 * scale), round(0.9 * 256)
    assert (threshold, v_reset, beta, alpha_q8) == (513, 51, 26, 230)
    attrs = {"mode": "integer", "threshold": threshold, "v_reset": v_reset, "beta": beta, "alpha": alpha_q8 / 256}
    current = as_current([[300, 513], [300, 28], [-1000, 0], [200, 0], [600, 0]], integer=True)
    # neuron 0:
    #   t0: v1 = 0+300 = 300 ≤ 513;          v = floor(230·300/256)+26 = floor(269.53)+26 = 295
    #   t1: v1 = 295+300 = 595 > 513, spike; v = floor(230·51/256)+26 = floor(45.82)+26 = 71
    #   t2: v1 = 71−1000 = −929;             v = floor(−213670/256)+26 = floor(−834.65)+26 = −835+26 = −809
    #   t3: v1 = −809+200 = −609;            v = floor(−140070/256)+26 = floor(−547.15)+26 = −548+26 = −522
    #   t4: v1 = −522+600 = 78;              v = floor(17940/256)+26 = 70+26 = 96
    # neuron 1:
    #   t0: v1 = 513, not > 513;             v = floor(117990/256)+26 = 460+26 = 486
    #   t1: v1 = 486+28 = 514 > 513, spike;  v = floor(230·51/256)+26 = 71
    #   t2..t4: v1 = 71, 89, 105;            v = 63+26 = 89, 79+26 = 105, 94+26 = 120
    expected_v = np.array([[295, 486], [71, 71], [-809, 89], [-522, 105], [96, 120]], np.int32)
    expected_spikes = np.array([[0, 0], [1, 1], [0, 0], [0, 0], [0, 0]], np.int32)
    assert_same_array(membrane_trace(attrs, current), expected_v, "membrane trace")
    assert_same_array(run_lif(attrs, current)["spikes"], expected_spikes, "spikes")


def test_if_trace_spikes_at_third_step() -> None:
    """hnn_spec §1.11: IF (alpha=1, beta=0) with u=0.4: membrane 0.4, 0.8, spike at step index 2."""
    attrs = {"threshold": 1.0, "alpha": 1.0, "beta": 0.0}
    current = as_current([[0.4]] * 4, integer=False)
    np.testing.assert_allclose(membrane_trace(attrs, current)[:, 0], [0.4, 0.8, 0.0, 0.4], rtol=0, atol=1e-6)
    assert_same_array(run_lif(attrs, current)["spikes"][:, 0], np.array([0, 0, 1, 0], np.float32), "spikes")


def test_first_step_is_unleaked_and_leak_follows_each_step() -> None:
    attrs = {"threshold": 2.0, "v_init": 1.0, "alpha": 0.5, "beta": 0.25}
    # t0: v1 = 1.0 (v_init, not leaked first) → 0.5·1.0+0.25 = 0.75; t1: 0.5·0.75+0.25 = 0.625
    trace = membrane_trace(attrs, as_current([[0.0], [0.0]], integer=False))
    assert_same_array(trace[:, 0], np.array([0.75, 0.625], np.float32), "membrane trace")


# ---------------------------------------------------------------------------------------------
# 3. Every path of the equations
# ---------------------------------------------------------------------------------------------
# threshold 1, v_reset 0.25, reset_decrement 0.5, u = [1.5, 0] (float; integer: everything ×4)
RESET_EXPECTATIONS = {
    "hard": ([1, 0], [0.25, 0.25]),
    "soft": ([1, 0], [0.5, 0.5]),  # 1.5 − θ
    "soft_constant": ([1, 0], [1.0, 1.0]),  # 1.5 − 0.5, then 1.0 > 1 is false
    "none": ([1, 1], [1.5, 1.5]),  # no reset: 1.5 > 1 fires again without input
}


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("reset_mode", RESET_MODES)
def test_reset_modes(reset_mode: str, integer: bool) -> None:
    k = 4 if integer else 1
    attrs = {"mode": "integer" if integer else "float", "threshold": 1 * k, "reset_mode": reset_mode,
             "v_reset": 0.25 * k, "reset_decrement": 0.5 * k}
    current = as_current([[1.5 * k], [0]], integer)
    spikes, trace = RESET_EXPECTATIONS[reset_mode]
    assert_same_array(membrane_trace(attrs, current)[:, 0], as_current(np.array(trace) * k, integer), "trace")
    assert_same_array(run_lif(attrs, current)["spikes"][:, 0], as_current(spikes, integer), "spikes")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_soft_reset_subtracts_the_adaptive_threshold(integer: bool) -> None:
    k = 4 if integer else 1
    attrs = {"mode": "integer" if integer else "float", "threshold": 1 * k, "reset_mode": "soft"}
    # θ = 1 + θa0 = 1.5; v1 = 2 > 1.5 → v = 2 − 1.5 = 0.5
    out = run_lif(attrs, as_current([[2 * k]], integer), theta0=as_current([0.5 * k], integer))
    assert_same_array(out["v"], as_current([0.5 * k], integer), "v")
    assert_same_array(out["spikes"], as_current([[1]], integer), "spikes")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("refractory", [0, 1, 2, 3])
def test_refractory_ignores_input_for_exactly_refractory_steps(refractory: int, integer: bool) -> None:
    attrs = {"mode": "integer" if integer else "float", "threshold": 1, "refractory": refractory}
    current = as_current([[5]] * 8, integer)
    out = run_lif(attrs, current)
    # a spike every refractory+1 steps: the steps in between ignore the input (v stays 0)
    expected_spikes = [1 if t % (refractory + 1) == 0 else 0 for t in range(8)]
    assert_same_array(out["spikes"][:, 0], as_current(expected_spikes, integer), "spikes")
    # counter after step 7: k=2 last spiked at 6 → 2−1 = 1; otherwise counted down to 0
    assert_same_array(out["refractory"], np.array([{0: 0, 1: 0, 2: 1, 3: 0}[refractory]], np.int32), "counter")
    assert_same_array(membrane_trace(attrs, current)[:, 0], as_current([0] * 8, integer), "membrane")


def test_initial_refractory_counter_gates_first_steps() -> None:
    attrs = {"threshold": 1.0}  # refractory attribute 0: a spike sets the counter to 0
    out = run_lif(attrs, as_current([[5.0]] * 4, False), refractory0=np.array([2], np.int32))
    assert_same_array(out["spikes"][:, 0], np.array([0, 0, 1, 1], np.float32), "spikes")
    assert_same_array(out["refractory"], np.array([0], np.int32), "counter")


def test_refractory_gates_only_the_input_not_firing() -> None:
    # v_reset 2 > θ 1: the frozen membrane keeps firing while the counter is non-zero
    attrs = {"threshold": 1.0, "v_reset": 2.0, "refractory": 2}
    out = run_lif(attrs, as_current([[5.0], [-9.0], [-9.0]], False))
    assert_same_array(out["spikes"][:, 0], np.array([1, 1, 1], np.float32), "spikes")
    assert_same_array(out["v"], np.array([2.0], np.float32), "v")


def test_adaptive_threshold_float_trace() -> None:
    attrs = {"threshold": 1.0, "theta_alpha": 0.5, "theta_increment": 1.0}
    # t0: θ=1,    v1=1.5 spike, θa' = 0.5·0+1      = 1
    # t1: θ=2,    v1=1.5,       θa' = 0.5·1        = 0.5
    # t2: θ=1.5,  v1=3.0 spike, θa' = 0.5·0.5+1    = 1.25
    # t3: θ=2.25, v1=1.5,       θa' = 0.5·1.25     = 0.625
    out = run_lif(attrs, as_current([[1.5]] * 4, False))
    assert_same_array(out["spikes"][:, 0], np.array([1, 0, 1, 0], np.float32), "spikes")
    assert_same_array(out["v"], np.array([1.5], np.float32), "v")
    assert_same_array(out["theta"], np.array([0.625], np.float32), "theta")


def test_adaptive_threshold_integer_trace_floors() -> None:
    attrs = {"mode": "integer", "threshold": 10, "theta_alpha": 128 / 256, "theta_beta": -1, "theta_increment": 8}
    # t0: θ = 10−3 = 7,  v1 = 12 spike; θa' = floor(128·(−3)/256) − 1 + 8 = −2 − 1 + 8 = 5
    # t1: θ = 15,        v1 = 12;       θa' = floor(640/256) − 1 = 1
    # t2: θ = 11,        v1 = 24 spike; θa' = floor(128/256) − 1 + 8 = 7
    # t3: θ = 17,        v1 = 12;       θa' = floor(896/256) − 1 = 2
    out = run_lif(attrs, as_current([[12]] * 4, True), theta0=np.array(-3, np.int32))
    assert_same_array(out["spikes"][:, 0], np.array([1, 0, 1, 0], np.int32), "spikes")
    assert_same_array(out["v"], np.array([12], np.int32), "v")
    assert_same_array(out["theta"], np.array([2], np.int32), "theta")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_lower_saturation_of_membrane(integer: bool) -> None:
    k = 10 if integer else 1
    attrs = {"mode": "integer" if integer else "float", "threshold": -2 * k, "v_lower": -1 * k}
    # θ = max(−2, −1) = −1; t0: v1 = −1.5 ≤ −1 (no spike), v = max(−1.5, −1) = −1; t1: v1 = −0.5 > −1 spike
    current = as_current([[-1.5 * k], [0.5 * k]], integer)
    assert_same_array(membrane_trace(attrs, current)[:, 0], as_current([-1 * k, 0], integer), "trace")
    assert_same_array(run_lif(attrs, current)["spikes"][:, 0], as_current([0, 1], integer), "spikes")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_lower_saturation_of_adaptive_threshold(integer: bool) -> None:
    k = 10 if integer else 1
    attrs = {"mode": "integer" if integer else "float", "threshold": 1 * k, "v_lower": -1 * k}
    # θ = max(1 − 5, −1) = −1, so v1 = −2 does not fire (it would against −4); θa itself is not clamped
    out = run_lif(attrs, as_current([[-2 * k]], integer), theta0=as_current([-5 * k], integer))
    assert_same_array(out["spikes"], as_current([[0]], integer), "spikes")
    assert_same_array(out["v"], as_current([-1 * k], integer), "v")
    assert_same_array(out["theta"], as_current([-5 * k], integer), "theta")


def test_integer_saturation_of_input_and_membrane() -> None:
    attrs = {"mode": "integer", "state_bits": 8, "threshold": 100, "reset_mode": "none"}
    # 8-bit state: [−128, 127]
    # t0: u→127, v1 = 127 spike; t1: u→127, v1 = clamp(254) = 127 spike;
    # t2: u→−128, v1 = −1; t3: u→−128, v1 = clamp(−129) = −128; t4: u→127, v1 = −1
    current = as_current([[1000], [1000], [-100000], [INT32_MIN], [INT32_MAX]], True)
    assert_same_array(membrane_trace(attrs, current)[:, 0], np.array([127, 127, -1, -128, -1], np.int32), "trace")
    assert_same_array(run_lif(attrs, current)["spikes"][:, 0], np.array([1, 1, 0, 0, 0], np.int32), "spikes")


@pytest.mark.parametrize("reset_attrs", [
    {"threshold": -100, "reset_mode": "soft"},  # v2 = clamp(127 − (−100)) = 127
    {"threshold": 100, "reset_mode": "soft_constant", "reset_decrement": -50},  # v2 = clamp(127 + 50) = 127
    {"threshold": -100, "reset_mode": "soft", "beta": 100},  # v2 = 127, v3 = clamp(127 + 100) = 127
], ids=["soft", "soft_constant", "beta"])
def test_integer_membrane_saturates_after_reset_and_beta(reset_attrs: dict[str, Any]) -> None:
    attrs = {"mode": "integer", "state_bits": 8, **reset_attrs}
    out = run_lif(attrs, as_current([[127]], True))
    assert_same_array(out["spikes"], np.array([[1]], np.int32), "spikes")
    assert_same_array(out["v"], np.array([127], np.int32), "v")


@pytest.mark.parametrize("theta_attrs, current, spikes, theta", [
    # t0: θ=0, v1=127 spike, θa'=100; t1: θ=100, v1=127 spike, θa'=clamp(200)=127; t2: θ=127, no spike
    ({"threshold": 0, "theta_increment": 100}, 127, [1, 1, 0], 127),
    # t0: θ=100, θa'=−100; t1: θ=0, v1=0 ≤ 0, θa'=clamp(−200)=−128; t2: θ=100−128=−28 < 0 = v1 → spike
    ({"threshold": 100, "theta_beta": -100}, 0, [0, 0, 1], -128),
])
def test_integer_saturation_of_adaptive_threshold(theta_attrs: dict[str, int], current: int, spikes: list[int],
                                                  theta: int) -> None:
    attrs = {"mode": "integer", "state_bits": 8, **theta_attrs}
    out = run_lif(attrs, as_current([[current]] * 3, True))
    assert_same_array(out["spikes"][:, 0], np.array(spikes, np.int32), "spikes")
    assert_same_array(out["theta"], np.array([theta], np.int32), "theta")


def test_integer_threshold_saturates() -> None:
    attrs = {"mode": "integer", "state_bits": 8, "threshold": -100}
    # θ = clamp(−100 + (−100)) = −128; v1 = clamp(0 − 5000) = −128 is not > −128 (it would be > −200)
    out = run_lif(attrs, as_current([[-5000]], True), theta0=np.array([-100], np.int32))
    assert_same_array(out["spikes"], np.array([[0]], np.int32), "spikes")
    assert_same_array(out["v"], np.array([-128], np.int32), "v")


def test_integer_31_bit_state_never_wraps() -> None:
    hi = 2 ** 30 - 1
    attrs = {"mode": "integer", "state_bits": 31, "threshold": -(2 ** 24), "reset_mode": "soft", "beta": 2 ** 24}
    # t0: u→hi, v1 = hi spike; v2 = clamp(hi + 2^24) = hi; v3 = clamp(hi + 2^24) = hi
    # t1: u→−2^30, v1 = hi − 2^30 = −1 > −2^24 spike; v2 = −1 + 2^24; v3 = 2^25 − 1
    current = as_current([[INT32_MAX], [INT32_MIN]], True)
    assert_same_array(membrane_trace(attrs, current)[:, 0], np.array([hi, 2 ** 25 - 1], np.int32), "trace")
    assert_same_array(run_lif(attrs, current)["spikes"][:, 0], np.array([1, 1], np.int32), "spikes")


def test_integer_initial_membrane_beyond_state_does_not_wrap() -> None:
    attrs = {"mode": "integer", "threshold": 1000}
    # v1 = clamp28(2^31 − 1 + 1) = 2^27 − 1 > 1000 → spike, hard reset to 0
    out = run_lif(attrs, as_current([[1]], True), v0=np.array([INT32_MAX], np.int32))
    assert_same_array(out["spikes"], np.array([[1]], np.int32), "spikes")
    assert_same_array(out["v"], np.array([0], np.int32), "v")


def test_integer_initial_threshold_beyond_state_does_not_wrap() -> None:
    attrs = {"mode": "integer", "threshold": 1000}
    # θ = clamp28(1000 + 2^31 − 1) = 2^27 − 1, so v1 = 5 does not fire
    out = run_lif(attrs, as_current([[5]], True), theta0=np.array([INT32_MAX], np.int32))
    assert_same_array(out["spikes"], np.array([[0]], np.int32), "spikes")


def test_refractory_counter_does_not_wrap() -> None:
    # A negative initial counter is admitted as 0: the input is integrated (5 > 1 fires) and
    # the counter restarts at refractory = 0 instead of wrapping from INT32_MIN − 1.
    out = run_lif({"threshold": 1.0}, as_current([[5.0]], False), refractory0=np.array([INT32_MIN], np.int32))
    assert_same_array(out["refractory"], np.array([0], np.int32), "counter")
    assert_same_array(out["spikes"], np.array([[1]], np.float32), "spikes")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["constant_threshold", "adaptive_threshold"])
def test_membrane_equal_to_threshold_does_not_fire(integer: bool, adaptive: bool) -> None:
    k = 8 if integer else 1
    attrs = {"mode": "integer" if integer else "float", "threshold": 0.5 * k if adaptive else 0.75 * k}
    theta0 = as_current([0.25 * k], integer) if adaptive else None
    # θ = 0.75 in both cases; v1 = 0.75 then 0.75 + 0.125
    out = run_lif(attrs, as_current([[0.75 * k], [0.125 * k]], integer), theta0=theta0)
    assert_same_array(out["spikes"][:, 0], as_current([0, 1], integer), "spikes")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("initial_shape", [(), (1,), (1, 1), (1, 3), (2, 1), (2, 3)])
def test_initial_states_broadcast_to_neurons(initial_shape: tuple[int, ...], integer: bool) -> None:
    steps, neuron_shape = 2, (2, 3)
    rng = np.random.default_rng(7)
    dtype = np.int32 if integer else np.float32
    v0 = rng.integers(-50, 50, size=initial_shape).astype(dtype)
    theta0 = rng.integers(-5, 5, size=initial_shape).astype(dtype)
    refractory0 = rng.integers(0, 5, size=initial_shape).astype(np.int32)
    attrs = {"mode": "integer" if integer else "float", "threshold": 1000}
    out = run_lif(attrs, np.zeros((steps, *neuron_shape), dtype), v0=v0, theta0=theta0, refractory0=refractory0)
    # no input, no leak, nothing fires: v and θa are kept, the counter counts down per step
    assert_same_array(out["v"], np.broadcast_to(v0, neuron_shape), "v")
    assert_same_array(out["theta"], np.broadcast_to(theta0, neuron_shape), "theta")
    assert_same_array(out["refractory"], np.maximum(np.broadcast_to(refractory0, neuron_shape) - steps, 0), "counter")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("with_initial", [False, True], ids=["defaults", "initial_inputs"])
def test_zero_time_steps_return_the_initial_state(integer: bool, with_initial: bool) -> None:
    dtype = np.int32 if integer else np.float32
    attrs = {"mode": "integer" if integer else "float", "v_init": 3, "refractory": 2}
    initial = {"v0": np.array([1, 2, 3], dtype), "theta0": np.array(4, dtype),
               "refractory0": np.array([5], np.int32)} if with_initial else {}
    out = run_lif(attrs, np.zeros((0, 3), dtype), **initial)
    assert_same_array(out["spikes"], np.zeros((0, 3), dtype), "spikes")
    assert_same_array(out["v"], np.array([1, 2, 3] if with_initial else [3, 3, 3], dtype), "v")
    assert_same_array(out["theta"], np.full(3, 4 if with_initial else 0, dtype), "theta")
    assert_same_array(out["refractory"], np.full(3, 5 if with_initial else 0, np.int32), "counter")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_single_time_step(integer: bool) -> None:
    attrs = {"mode": "integer" if integer else "float", "threshold": 2, "refractory": 3}
    out = run_lif(attrs, as_current([[1, 2, 3]], integer))
    assert_same_array(out["spikes"], as_current([[0, 0, 1]], integer), "spikes")
    assert_same_array(out["v"], as_current([1, 2, 0], integer), "v")
    assert_same_array(out["refractory"], np.array([0, 0, 3], np.int32), "counter")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_multidimensional_neurons_are_independent(integer: bool) -> None:
    rng = np.random.default_rng(11)
    steps, neuron_shape = 4, (2, 3, 2, 2)  # [T, N, C, H, W]
    if integer:
        attrs = {"mode": "integer", "threshold": 40, "alpha": 200 / 256, "beta": -3, "refractory": 1,
                 "theta_increment": 7, "reset_mode": "soft"}
        current = rng.integers(-30, 60, size=(steps, *neuron_shape)).astype(np.int32)
        v0 = rng.integers(-20, 20, size=neuron_shape[1:]).astype(np.int32)
    else:
        attrs = {"threshold": 0.9, "alpha": 0.8, "beta": -0.05, "refractory": 1, "theta_increment": 0.3,
                 "reset_mode": "soft"}
        current = rng.normal(0.5, 0.6, size=(steps, *neuron_shape)).astype(np.float32)
        v0 = rng.normal(0.0, 0.3, size=neuron_shape[1:]).astype(np.float32)
    shaped = run_lif(attrs, current, v0=v0)
    flat = run_lif(attrs, current.reshape(steps, -1), v0=np.broadcast_to(v0, neuron_shape).reshape(-1))
    for name in OUTPUT_NAMES:
        assert_same_array(shaped[name].reshape(flat[name].shape), flat[name], name)
    assert 0 < shaped["spikes"].mean() < 1


@pytest.mark.parametrize("shape", [(2, 0), (2, 0, 3), (2, 3, 0)])
def test_empty_neuron_dimension(shape: tuple[int, ...]) -> None:
    out = run_lif({"alpha": 0.5}, np.zeros(shape, np.float32))
    assert out["spikes"].shape == shape and out["v"].shape == shape[1:]


# ---------------------------------------------------------------------------------------------
# 4. Validation
# ---------------------------------------------------------------------------------------------
INTEGER = {"mode": "integer"}
BAD_ATTRIBUTES = [
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"theta_alpha": 1.01}, "theta_alpha"),
    ({"reset_mode": "soft_hard"}, "reset_mode"),
    ({"mode": "fixed"}, "mode"),
    ({"surrogate": "relu"}, "surrogate"),
    ({"surrogate_width": 0.0}, "surrogate_width"),
    ({"tau": 2.0}, "tau"),
    ({"refractory": -1}, "refractory"),
    ({"refractory": 1.5}, "refractory"),
    ({"steps": -1}, "steps"),
    ({"threshold": "1"}, "threshold"),
    ({"threshold": float("inf")}, "threshold"),
    ({**INTEGER, "threshold": 0.5}, "threshold"),
    ({**INTEGER, "alpha": 0.3}, "alpha"),
    ({**INTEGER, "theta_alpha": 0.3}, "theta_alpha"),
    ({**INTEGER, "beta": 0.25}, "beta"),
    ({**INTEGER, "v_lower": -0.5}, "v_lower"),
    ({**INTEGER, "threshold": 2.0 ** 25}, "threshold"),
    ({**INTEGER, "state_bits": 8, "threshold": 200}, "threshold"),
    ({**INTEGER, "state_bits": 8, "v_reset": -129}, "v_reset"),
    ({**INTEGER, "state_bits": 1}, "state_bits"),
    ({**INTEGER, "state_bits": 32}, "state_bits"),
]


@pytest.mark.parametrize("attrs, attribute", BAD_ATTRIBUTES, ids=[str(a) for a, _ in BAD_ATTRIBUTES])
def test_bad_attributes_raise_node_error_naming_the_node(attrs: dict[str, Any], attribute: str) -> None:
    with pytest.raises(NodeError) as error:
        hnnx.ops.make_node("LIF", ["current"], ["spikes"], name="bad_lif", **attrs)
    assert error.value.node == "bad_lif"
    assert "'bad_lif'" in str(error.value) and attribute in str(error.value)


def test_unnamed_node_error_names_its_outputs() -> None:
    with pytest.raises(NodeError, match=r"LIF\(out_spikes\)"):
        hnnx.ops.make_node("LIF", ["current"], ["out_spikes"], alpha=2.0)


def test_bad_raw_node_is_rejected_by_attach_functions_and_run_reference() -> None:
    node = helper.make_node("LIF", ["current"], ["spikes"], name="raw_lif", domain="hnnx", alpha=1.5)
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("current", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, [1, 1])]))
    with pytest.raises(NodeError, match="raw_lif.*alpha"):
        hnnx.ops.attach_functions(model)
    with pytest.raises(NodeError, match="raw_lif.*alpha"):
        hnnx.ops.run_reference(node, np.zeros((1, 1), np.float32))


@pytest.mark.parametrize("mode, dtype", [("integer", np.float32), ("float", np.int32), ("integer", np.int64)])
def test_run_reference_rejects_current_of_the_wrong_type(mode: str, dtype: type) -> None:
    node = hnnx.ops.make_node("LIF", ["current"], ["spikes"], name="typed_lif", mode=mode)
    with pytest.raises(NodeError, match="typed_lif"):
        hnnx.ops.run_reference(node, np.zeros((2, 3), dtype))


def test_shape_inference_rejects_current_of_the_wrong_type() -> None:
    node = hnnx.ops.make_node("LIF", ["current"], ["spikes"], name="typed_lif", mode="integer")
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("current", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, [2, 3])]),
        opset_imports=[helper.make_opsetid("", 21)])
    hnnx.ops.attach_functions(model)
    with pytest.raises(Exception, match="typed_lif"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)


@pytest.mark.parametrize("inputs, outputs", [
    (["current", "v0", "theta0", "refractory0", "extra"], ["spikes"]),
    (["current"], ["spikes", "v", "theta", "refractory", "extra"]),
    ([""], ["spikes"]),
    (["current"], [""]),
])
def test_bad_port_counts_raise_node_error(inputs: list[str], outputs: list[str]) -> None:
    with pytest.raises(NodeError, match="ports_lif"):
        hnnx.ops.make_node("LIF", inputs, outputs, name="ports_lif")


# ---------------------------------------------------------------------------------------------
# 5. ONNX tooling: symbolic shape inference, overloads, attach_functions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.INT32], ids=["float", "integer"])
def test_symbolic_shape_inference(elem: int) -> None:
    mode = "integer" if elem == TensorProto.INT32 else "float"
    node = hnnx.ops.make_node("LIF", ["current", "v0", "", "refractory0"], ["spikes", "v", "theta", "refractory"],
                              name="lif", mode=mode)
    build_model(
        [node],
        {"current": (elem, ("T", "N", 3, 5)), "v0": (elem, (5,)), "refractory0": (TensorProto.INT32, ())},
        {"spikes": (elem, ("T", "N", 3, 5)), "v": (elem, ("N", 3, 5)), "theta": (elem, ("N", 3, 5)),
         "refractory": (TensorProto.INT32, ("N", 3, 5))},
    )


def chained_model() -> tuple[onnx.ModelProto, dict[str, dict[str, Any]], list[onnx.NodeProto]]:
    """Three LIF nodes: ``leaky`` → ``refr`` (another structure), and ``leaky_twin`` (same
    structure as ``leaky``, other attribute values)."""
    attrs = {
        "leaky": {"threshold": 0.8, "alpha": 0.75, "beta": 0.125},
        "refr": {"threshold": 0.5, "reset_mode": "soft", "refractory": 1, "theta_increment": 0.5},
        "leaky_twin": {"threshold": 0.4, "alpha": 0.5, "beta": -0.125},
    }
    nodes = [
        hnnx.ops.make_node("LIF", ["current"], ["hidden", "v_a"], name="leaky", **attrs["leaky"]),
        hnnx.ops.make_node("LIF", ["hidden", "v0"], ["spikes", "v_b", "theta_b", "refractory_b"], name="refr",
                           **attrs["refr"]),
        hnnx.ops.make_node("LIF", ["current"], ["twin_spikes", "v_c"], name="leaky_twin", **attrs["leaky_twin"]),
    ]
    f, i = TensorProto.FLOAT, TensorProto.INT32
    model = build_model(
        nodes, {"current": (f, (6, 4)), "v0": (f, (4,))},
        {"hidden": (f, (6, 4)), "v_a": (f, (4,)), "spikes": (f, (6, 4)), "v_b": (f, (4,)), "theta_b": (f, (4,)),
         "refractory_b": (i, (4,)), "twin_spikes": (f, (6, 4)), "v_c": (f, (4,))},
    )
    return model, attrs, nodes


def test_distinct_structures_get_distinct_overloads_and_run() -> None:
    model, attrs, nodes = chained_model()
    leaky, refr, twin = nodes
    assert leaky.overload != refr.overload and leaky.overload == twin.overload
    assert sorted(f.overload for f in model.functions) == sorted({leaky.overload, refr.overload})
    assert all(f.domain == "hnnx" and f.name == "LIF" for f in model.functions)
    assert ("hnnx", 1) in {(op.domain, op.version) for op in model.opset_import}

    rng = np.random.default_rng(3)
    feeds = {"current": rng.normal(0.4, 0.6, (6, 4)).astype(np.float32),
             "v0": rng.normal(0, 0.3, 4).astype(np.float32)}
    got = dict(zip([o.name for o in model.graph.output], run_model_both_ways(model, feeds)))
    first = scalar_lif(attrs["leaky"], feeds["current"])
    second = scalar_lif(attrs["refr"], first["spikes"], feeds["v0"])
    twin_out = scalar_lif(attrs["leaky_twin"], feeds["current"])
    expected = {"hidden": first["spikes"], "v_a": first["v"], "spikes": second["spikes"], "v_b": second["v"],
                "theta_b": second["theta"], "refractory_b": second["refractory"],
                "twin_spikes": twin_out["spikes"], "v_c": twin_out["v"]}
    for name, value in expected.items():
        assert_same_array(got[name], value, name)
    assert not np.array_equal(got["hidden"], got["twin_spikes"])  # attribute values reach the shared body


STRUCTURE_PAIRS = {
    "state_bits": ({"mode": "integer", "state_bits": 8}, {"mode": "integer", "state_bits": 16}),
    "reset_mode": ({"reset_mode": "hard"}, {"reset_mode": "soft"}),
    "leak": ({}, {"alpha": 0.5}),
    "beta": ({}, {"beta": 0.25}),
    "v_lower": ({}, {"v_lower": -0.5}),
    "adaptation": ({}, {"theta_increment": 0.5}),
    "theta_leak": ({"theta_increment": 0.5}, {"theta_increment": 0.5, "theta_alpha": 0.5}),
    "refractory": ({}, {"refractory": 2}),
}


@pytest.mark.parametrize("first, second", STRUCTURE_PAIRS.values(), ids=STRUCTURE_PAIRS.keys())
def test_nodes_differing_in_one_structural_attribute_run_in_one_model(first: dict[str, Any],
                                                                      second: dict[str, Any]) -> None:
    rng = np.random.default_rng(17)
    if first.get("mode") == "integer":
        current = rng.integers(-400, 400, size=(6, 5)).astype(np.int32)
    else:
        current = rng.normal(0.2, 0.9, size=(6, 5)).astype(np.float32)
    elem, names = elem_of(current), ("first", "second")
    nodes = [hnnx.ops.make_node("LIF", ["current"], [f"{n}_spikes", f"{n}_v"], name=n, **attrs)
             for n, attrs in zip(names, (first, second))]
    outputs: OutputTypes = {}
    for n in names:
        outputs.update({f"{n}_spikes": (elem, current.shape), f"{n}_v": (elem, current.shape[1:])})
    model = build_model(nodes, {"current": (elem, current.shape)}, outputs)
    assert nodes[0].overload != nodes[1].overload
    assert sorted(f.overload for f in model.functions) == sorted(node.overload for node in nodes)
    got = dict(zip(outputs, run_model_both_ways(model, {"current": current})))
    for n, attrs in zip(names, (first, second)):
        expected = scalar_lif(attrs, current)
        assert_same_array(got[f"{n}_spikes"], expected["spikes"], f"{n} spikes")
        assert_same_array(got[f"{n}_v"], expected["v"], f"{n} v")


def test_attach_functions_is_idempotent() -> None:
    model, _, _ = chained_model()
    before = model.SerializeToString(deterministic=True)
    again = hnnx.ops.attach_functions(model)
    assert again is model
    assert model.SerializeToString(deterministic=True) == before


def test_attach_functions_replaces_stale_functions_and_keeps_foreign_ones() -> None:
    model, attrs, _ = chained_model()
    foreign = helper.make_function("custom", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
                                   [helper.make_opsetid("", 21)])
    model.functions.append(foreign)
    refr = next(node for node in model.graph.node if node.name == "refr")
    stale = refr.overload
    for attribute in refr.attribute:
        if attribute.name == "reset_mode":
            attribute.s = b"none"
    hnnx.ops.attach_functions(model)
    overloads = {f.overload for f in model.functions if f.domain == "hnnx"}
    assert stale not in overloads and refr.overload in overloads and refr.overload != stale
    assert [f.name for f in model.functions if f.domain == "custom"] == ["Twice"]
    del model.functions[[f.domain for f in model.functions].index("custom")]
    onnx.checker.check_model(model, full_check=True)

    current = np.linspace(-0.5, 1.5, 24, dtype=np.float32).reshape(6, 4)
    feeds = {"current": current, "v0": np.zeros(4, np.float32)}
    got = dict(zip([o.name for o in model.graph.output], run_model_both_ways(model, feeds)))
    hidden = scalar_lif(attrs["leaky"], current)["spikes"]
    expected = scalar_lif({**attrs["refr"], "reset_mode": "none"}, hidden, feeds["v0"])
    assert_same_array(got["spikes"], expected["spikes"], "spikes")
    assert_same_array(got["v_b"], expected["v"], "v")
