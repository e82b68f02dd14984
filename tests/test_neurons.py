"""Tests of ``hnnx.CubaLIF``, ``hnnx.LI``, ``hnnx.Integrator`` and the recurrence of ``hnnx.LIF``
and ``hnnx.CubaLIF``: independent scalar references written from the docstrings, hand-computed
traces, every path (numpy reference, onnxruntime function bodies, onnx.reference, torch, the
public step functions, the native kernel for recurrent LIF), validation and surrogate gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import hnnx.ops
from conftest import assert_same_array, build_model, elem_of, run_model_both_ways, run_onnxruntime
from hnnx.errors import NodeError
import test_lif
from test_lif import scalar_lif
from test_native import library, run_native  # noqa: F401  (the native library fixture)

CUBA_OUTPUTS = ("spikes", "v", "i", "last_spikes")
LIF_OUTPUTS = ("spikes", "v", "theta", "refractory", "last_spikes")


# ---------------------------------------------------------------------------------------------
# Independent scalar references (the docstring equations, one neuron and one step at a time)
# ---------------------------------------------------------------------------------------------
class Scalars:
    """Python ints (integer mode: unbounded, saturated explicitly) or np.float32 scalars."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.integer = attrs.get("mode") == "integer"
        bits = attrs.get("state_bits", 28)
        self.lo, self.hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def number(self, x: Any) -> Any:
        return int(x) if self.integer else np.float32(x)

    def sat(self, x: Any) -> Any:
        return min(max(x, self.lo), self.hi) if self.integer else x

    def scale(self, x: Any, factor: float) -> Any:
        if self.integer:
            return (round(256 * factor) * x) // 256
        return x * np.float32(factor)

    def recurrent(self, last: np.ndarray, weight: np.ndarray, i: int) -> Any:
        """Σ_j last[j]·W[j, i]: float32 products summed in Python floats (float64) from 0, in the
        order of j, rounded once; integer: exact, saturated."""
        if self.integer:
            return self.sat(sum(int(last[j]) * int(weight[j, i]) for j in range(len(last))))
        total = 0.0
        for j in range(len(last)):
            total += float(np.float32(last[j]) * np.float32(weight[j, i]))
        return np.float32(total)

    def with_recurrence(self, x: Any, last: np.ndarray | None, weight: np.ndarray | None, i: int) -> Any:
        if weight is None:
            return self.sat(x)
        if self.integer:
            return self.sat(self.sat(x) + self.recurrent(last, weight, i))
        return x + self.recurrent(last, weight, i)


def per_sample(given: np.ndarray | None, fill: Any, neuron_shape: tuple[int, ...]) -> np.ndarray:
    """An initial state broadcast to the neurons, flat per sample: ``[N, F]``."""
    value = np.broadcast_to(np.asarray(fill if given is None else given), neuron_shape)
    return value.reshape(neuron_shape[0], -1)


def scalar_cuba(attrs: dict[str, Any], current: np.ndarray, v0: np.ndarray | None = None,
                i0: np.ndarray | None = None, last0: np.ndarray | None = None,
                weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """CubaLIF by its docstring, steps 1–6, with the recurrence of the LIF docstring."""
    a = {"threshold": 1.0, "reset_mode": "hard", "v_reset": 0.0, "reset_decrement": 0.0, "v_init": 0.0,
         "alpha": 1.0, "beta": 0.0, "v_lower": None, "alpha_syn": 1.0, "i_init": 0.0, **attrs}
    k = Scalars(a)
    threshold = k.number(a["threshold"])
    v_lower = None if a["v_lower"] is None else k.number(a["v_lower"])
    theta = threshold if v_lower is None else max(threshold, v_lower)
    steps, neuron_shape = current.shape[0], current.shape[1:]
    flat = current.reshape(steps, neuron_shape[0], -1)
    samples, features = flat.shape[1:]
    v = [[k.sat(k.number(x)) for x in row] for row in per_sample(v0, a["v_init"], neuron_shape)]
    i = [[k.sat(k.number(x)) for x in row] for row in per_sample(i0, a["i_init"], neuron_shape)]
    last = per_sample(last0, 0, neuron_shape).astype(current.dtype)
    spikes = np.zeros(flat.shape, current.dtype)
    for t in range(steps):
        fired_now = np.zeros((samples, features), current.dtype)
        for n in range(samples):
            for f in range(features):
                x = k.with_recurrence(k.number(flat[t, n, f]), last[n], weight, f)
                i1 = k.sat(i[n][f] + x)
                v1 = k.sat(v[n][f] + i1)
                fired = bool(v1 > theta)
                v2 = v1
                if fired and a["reset_mode"] == "hard":
                    v2 = k.number(a["v_reset"])
                elif fired and a["reset_mode"] == "soft":
                    v2 = k.sat(v1 - theta)
                elif fired and a["reset_mode"] == "soft_constant":
                    v2 = k.sat(v1 - k.number(a["reset_decrement"]))
                v3 = k.sat(k.scale(v2, a["alpha"]) + k.number(a["beta"]))
                v[n][f] = v3 if v_lower is None else max(v3, v_lower)
                i[n][f] = k.scale(i1, a["alpha_syn"])
                fired_now[n, f] = fired
        spikes[t] = fired_now
        last = fired_now
    dtype = current.dtype
    return {"spikes": spikes.reshape(current.shape), "v": np.array(v, dtype).reshape(neuron_shape),
            "i": np.array(i, dtype).reshape(neuron_shape), "last_spikes": last.reshape(neuron_shape)}


def scalar_li(attrs: dict[str, Any], current: np.ndarray, v0: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """LI (Integrator: alpha 1, beta 0) by its docstring."""
    a = {"alpha": 1.0, "beta": 0.0, "v_init": 0.0, **attrs}
    k = Scalars(a)
    neuron_shape = current.shape[1:]
    v = np.vectorize(lambda x: k.sat(k.number(x)), otypes=[object])(
        np.broadcast_to(np.asarray(a["v_init"] if v0 is None else v0), neuron_shape))
    y = np.zeros(current.shape, current.dtype)
    for t in range(current.shape[0]):
        for index in np.ndindex(*neuron_shape):
            v1 = k.sat(v[index] + k.sat(k.number(current[(t, *index)])))
            y[(t, *index)] = v1
            v[index] = k.sat(k.scale(v1, a["alpha"]) + k.number(a["beta"]))
    return {"y": y, "v": v.astype(current.dtype)}


def scalar_recurrent_lif(attrs: dict[str, Any], current: np.ndarray, weight: np.ndarray,
                         last0: np.ndarray | None = None, **initial: np.ndarray) -> dict[str, np.ndarray]:
    """Recurrent LIF: test_lif's scalar LIF run one step at a time on ``u[t] + r[t]``."""
    k = Scalars(attrs)
    neuron_shape = current.shape[1:]
    last = per_sample(last0, 0, neuron_shape).astype(current.dtype)
    state = {key: value for key, value in initial.items() if value is not None}
    spikes = []
    for t in range(current.shape[0]):
        x = current[t].reshape(last.shape)
        total = np.array([[k.with_recurrence(k.number(x[n, f]), last[n], weight, f) for f in range(x.shape[1])]
                          for n in range(x.shape[0])], current.dtype)
        out = scalar_lif(attrs, total.reshape(1, *neuron_shape), state.get("v0"), state.get("theta0"),
                         state.get("refractory0"))
        state = {"v0": out["v"], "theta0": out["theta"], "refractory0": out["refractory"]}
        spikes.append(out["spikes"][0])
        last = out["spikes"][0].reshape(last.shape)
    stacked = np.stack(spikes) if spikes else np.zeros(current.shape, current.dtype)
    final = scalar_lif(attrs, np.zeros((0, *neuron_shape), current.dtype), state.get("v0"), state.get("theta0"),
                       state.get("refractory0"))
    return {"spikes": stacked, "v": final["v"], "theta": final["theta"], "refractory": final["refractory"],
            "last_spikes": last.reshape(neuron_shape)}


# ---------------------------------------------------------------------------------------------
# Running one node on every path
# ---------------------------------------------------------------------------------------------
def output_types(op: str, outputs: list[str], current: np.ndarray, steps: int = 0) -> dict[str, tuple[int, tuple]]:
    """The output types of a neuron node on ``current`` (``steps`` > 0: one step's current, repeated)."""
    elem, neurons = elem_of(current), current.shape[1:]
    every_step = (steps, *neurons) if steps else current.shape
    types = []
    for index in range(len(outputs)):
        per_step = index == 0
        fixed_int = op == "LIF" and index == 3
        types.append((TensorProto.INT32 if fixed_int else elem, every_step if per_step else neurons))
    return {name: kind for name, kind in zip(outputs, types) if name}


def run_everywhere(op: str, attrs: dict[str, Any], inputs: dict[str, np.ndarray | None], outputs: list[str],
                   expected: dict[str, np.ndarray], native_library: Any = None) -> dict[str, np.ndarray]:
    """One node through run_reference, onnxruntime, onnx.reference, torch (both modes) and, for
    LIF with a library, the native kernel; each must equal ``expected`` (the scalar reference)."""
    decl = hnnx.ops.declaration(op)
    port_names = [port.name for port in decl.inputs]
    names = [name if inputs.get(name) is not None else "" for name in port_names]
    while names[-1] == "":
        names.pop()
    node = hnnx.ops.make_node(op, names, outputs, name=f"{op.lower()}_node", **attrs)
    arrays = [inputs.get(name) for name in port_names[: len(names)]]
    current = inputs["current"]

    def check(got: Any, what: str) -> None:
        assert len(got) == len(outputs), what
        for out_name, value in zip(outputs, got):
            if out_name:
                assert_same_array(np.asarray(value), expected[decl.outputs[outputs.index(out_name)].name],
                                  f"{what}, output {out_name!r}")

    check(hnnx.ops.run_reference(node, *arrays), "run_reference")
    view = decl.view(node)
    tensors = [None if a is None else torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    check([t.numpy() for t in decl.torch_forward(view, *tensors)], "torch")
    feeds = {name: array for name, array in zip(names, arrays) if name}
    model = build_model([node], {k: (elem_of(v), v.shape) for k, v in feeds.items()},
                        output_types(op, outputs, current, attrs.get("steps", 0)))
    got = run_model_both_ways(model, feeds)
    check(got, "onnxruntime")
    if native_library is not None:
        check(run_native(model, feeds, native_library), "native kernel")
    return dict(zip(outputs, got))


# ---------------------------------------------------------------------------------------------
# 1. Random configurations on every path
# ---------------------------------------------------------------------------------------------
SEEDS = range(16)
RESET_MODES = ("hard", "soft", "soft_constant", "none")


def random_setup(rng: np.random.Generator, integer: bool, recurrent: bool
                 ) -> tuple[dict[str, Any], Any, Any, np.ndarray, np.ndarray | None]:
    """Mode attributes, constant and fraction draws, the current and a recurrent weight."""
    shape = [(3, 4), (2, 2, 3), (1, 5)][rng.integers(3)] if recurrent else [(3,), (2, 3), (2, 1, 2)][rng.integers(3)]
    steps = int(rng.integers(1, 9))
    features = int(np.prod(shape[1:]))
    if integer:
        bits = int(rng.choice([10, 16, 28]))
        unit = min(2 ** (bits - 1) - 1, 2 ** 20) // 32
        attrs: dict[str, Any] = {"mode": "integer", "state_bits": bits}
        current = rng.integers(-4 * unit, 8 * unit, size=(steps, *shape)).astype(np.int32)
        weight = rng.integers(-6 * unit, 6 * unit, size=(features, features)).astype(np.int32)

        def const(low: float, high: float) -> int:
            return int(rng.integers(int(low * unit), int(high * unit) + 1))

        def fraction() -> float:
            return int(rng.integers(0, 257)) / 256
    else:
        attrs = {}
        current = rng.normal(0.3, 0.7, size=(steps, *shape)).astype(np.float32)
        weight = rng.normal(0.0, 0.6, size=(features, features)).astype(np.float32)

        def const(low: float, high: float) -> float:
            return float(rng.uniform(low, high))

        def fraction() -> float:
            return float(rng.uniform(0.0, 1.0))
    return attrs, const, fraction, current, weight if recurrent else None


def random_initial(rng: np.random.Generator, shape: tuple[int, ...], draw: Any, dtype: type) -> np.ndarray | None:
    if rng.random() < 0.5:
        return None
    target = [(), shape[-1:], shape][rng.integers(3)]
    return np.asarray([draw() for _ in range(int(np.prod(target)))], dtype).reshape(target)


def cuba_case(seed: int, integer: bool, recurrent: bool) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A random CubaLIF configuration: attributes, inputs by port name, outputs."""
    rng = np.random.default_rng(seed)
    attrs, const, fraction, current, weight = random_setup(rng, integer, recurrent)
    attrs.update(threshold=const(0.3, 2.5), reset_mode=str(rng.choice(RESET_MODES)), alpha=fraction(),
                 alpha_syn=fraction())
    for name, draw in {"v_reset": lambda: const(-1, 1), "reset_decrement": lambda: const(0, 3),
                       "v_init": lambda: const(-2, 2), "i_init": lambda: const(-1, 1), "beta": lambda: const(-1, 1),
                       "v_lower": lambda: const(-4, 0)}.items():
        if rng.random() < 0.4:
            attrs[name] = draw()
    dtype = current.dtype.type
    shape = current.shape[1:]
    inputs = {"current": current, "v0": random_initial(rng, shape, lambda: const(-3, 3), dtype),
              "i0": random_initial(rng, shape, lambda: const(-2, 2), dtype), "recurrent_weight": weight}
    if recurrent:
        inputs["last_spikes0"] = random_initial(rng, shape, lambda: float(rng.integers(0, 2)), dtype)
    return attrs, inputs, list(CUBA_OUTPUTS[: int(rng.integers(1, 5 if recurrent else 4))])


def recurrent_lif_case(seed: int, integer: bool) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A random recurrent LIF configuration: attributes, inputs by port name, outputs."""
    rng = np.random.default_rng(100 + seed)
    attrs, const, fraction, current, weight = random_setup(rng, integer, recurrent=True)
    attrs.update(threshold=const(0.3, 2.5), reset_mode=str(rng.choice(RESET_MODES)))
    for name, draw in {"v_reset": lambda: const(-1, 1), "reset_decrement": lambda: const(0, 3),
                       "alpha": fraction, "beta": lambda: const(-1, 1), "v_lower": lambda: const(-4, 0),
                       "refractory": lambda: int(rng.integers(0, 3)), "theta_increment": lambda: const(0, 2),
                       "theta_alpha": fraction}.items():
        if rng.random() < 0.4:
            attrs[name] = draw()
    dtype = current.dtype.type
    shape = current.shape[1:]
    inputs = {"current": current, "v0": random_initial(rng, shape, lambda: const(-3, 3), dtype),
              "last_spikes0": random_initial(rng, shape, lambda: float(rng.integers(0, 2)), dtype),
              "recurrent_weight": weight}
    return attrs, inputs, list(LIF_OUTPUTS[: int(rng.integers(1, 6))])


@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "recurrent"])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("seed", SEEDS)
def test_cuba_random_configurations_agree_on_all_paths(seed: int, integer: bool, recurrent: bool) -> None:
    attrs, inputs, outputs = cuba_case(seed, integer, recurrent)
    expected = scalar_cuba(attrs, inputs["current"], inputs["v0"], inputs["i0"], inputs.get("last_spikes0"),
                           inputs["recurrent_weight"])
    run_everywhere("CubaLIF", attrs, inputs, outputs, expected)


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("seed", SEEDS)
def test_recurrent_lif_random_configurations_agree_on_all_paths(seed: int, integer: bool, library: Any) -> None:
    """Also through the native kernel: recurrent LIF nodes run on it when it is registered."""
    attrs, inputs, outputs = recurrent_lif_case(seed, integer)
    expected = scalar_recurrent_lif(attrs, inputs["current"], inputs["recurrent_weight"], inputs["last_spikes0"],
                                    v0=inputs["v0"])
    run_everywhere("LIF", attrs, inputs, outputs, expected, native_library=library)


@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "recurrent"])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("seed", range(8))
def test_lif_constant_current_equals_the_current_repeated(seed: int, integer: bool, recurrent: bool,
                                                          library: Any) -> None:
    """``steps`` > 0: one step's current ``[1, N, ...]`` applied at each step gives what the
    scalar reference gives on that current repeated ``steps`` times — on every path, native too."""
    if recurrent:
        attrs, inputs, outputs = recurrent_lif_case(seed, integer)
    else:
        case = test_lif.random_case(seed, integer)
        attrs, inputs = dict(case.attrs), {"current": case.current, **case.initial}
        outputs = list(test_lif.OUTPUT_NAMES[: case.n_outputs])
    steps = max(int(inputs["current"].shape[0]), 3)
    one = inputs["current"][:1]
    repeated = np.repeat(one, steps, axis=0)
    if recurrent:
        expected = scalar_recurrent_lif(attrs, repeated, inputs["recurrent_weight"], inputs["last_spikes0"],
                                        v0=inputs["v0"])
    else:
        expected = test_lif.scalar_lif(attrs, repeated, **case.initial)
    run_everywhere("LIF", {**attrs, "steps": steps}, {**inputs, "current": one}, outputs, expected,
                   native_library=library)


def test_lif_constant_current_of_several_steps_is_refused() -> None:
    node = hnnx.ops.make_node("LIF", ["current"], ["spikes"], name="repeating_lif", steps=4)
    with pytest.raises(NodeError, match="repeating_lif.*one step"):
        hnnx.ops.run_reference(node, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_random_cases_fire_and_stay_silent(integer: bool) -> None:
    """Most random cases both fire and stay silent somewhere, so agreement means something."""
    mixed = []
    for seed in SEEDS:
        for recurrent in (False, True):
            attrs, inputs, _ = cuba_case(seed, integer, recurrent)
            spikes = scalar_cuba(attrs, inputs["current"], inputs["v0"], inputs["i0"], inputs.get("last_spikes0"),
                                 inputs["recurrent_weight"])["spikes"]
            mixed.append(spikes.any() and not spikes.all())
        attrs, inputs, _ = recurrent_lif_case(seed, integer)
        spikes = scalar_recurrent_lif(attrs, inputs["current"], inputs["recurrent_weight"], inputs["last_spikes0"],
                                      v0=inputs["v0"])["spikes"]
        mixed.append(spikes.any() and not spikes.all())
    assert sum(mixed) >= 0.6 * len(mixed)


@pytest.mark.parametrize("op", ["LI", "Integrator"])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
@pytest.mark.parametrize("seed", range(6))
def test_li_and_integrator_random_configurations_agree_on_all_paths(seed: int, integer: bool, op: str) -> None:
    rng = np.random.default_rng(200 + seed)
    attrs, const, fraction, current, _ = random_setup(rng, integer, recurrent=False)
    attrs["v_init"] = const(-2, 2)
    if op == "LI":
        attrs.update(alpha=fraction(), beta=const(-1, 1))
    v0 = random_initial(rng, current.shape[1:], lambda: const(-3, 3), current.dtype.type)
    outputs = ["y", "v"][: int(rng.integers(1, 3))]
    run_everywhere(op, attrs, {"current": current, "v0": v0}, outputs, scalar_li(attrs, current, v0))


# ---------------------------------------------------------------------------------------------
# 2. Hand-computed traces
# ---------------------------------------------------------------------------------------------
def test_cuba_float_trace() -> None:
    """alpha_syn 0.5, alpha 0.5, threshold 1, hard reset to 0; one neuron, input 1, 0, 0, 1, 0."""
    attrs = {"alpha_syn": 0.5, "alpha": 0.5, "threshold": 1.0}
    current = np.array([[1.0], [0.0], [0.0], [1.0], [0.0]], np.float32)
    # t0: i1 = 1,          v1 = 1          (not > 1);  v = 0.5,   i = 0.5
    # t1: i1 = 0.5,        v1 = 1.0        (not > 1);  v = 0.5,   i = 0.25
    # t2: i1 = 0.25,       v1 = 0.75;                  v = 0.375, i = 0.125
    # t3: i1 = 1.125,      v1 = 1.5 > 1: spike;        v = 0,     i = 0.5625
    # t4: i1 = 0.5625,     v1 = 0.5625;                v = 0.28125, i = 0.28125
    out = run_everywhere("CubaLIF", attrs, {"current": current}, ["spikes", "v", "i"],
                         scalar_cuba(attrs, current))
    assert_same_array(out["spikes"][:, 0], np.array([0, 0, 0, 1, 0], np.float32), "spikes")
    assert_same_array(out["v"], np.array([0.28125], np.float32), "v")
    assert_same_array(out["i"], np.array([0.28125], np.float32), "i")


def test_cuba_integer_trace_floors() -> None:
    """Integer: alpha_syn 0.75 = 192/256, alpha 0.5, beta −1, threshold 100, soft reset."""
    attrs = {"mode": "integer", "alpha_syn": 0.75, "alpha": 0.5, "beta": -1, "threshold": 100, "reset_mode": "soft"}
    current = np.array([[90], [30], [-7]], np.int32)
    # t0: i1 = 90,  v1 = 90;                      v = floor(45)−1 = 44,  i = floor(67.5) = 67
    # t1: i1 = 97,  v1 = 141 > 100: v2 = 41;      v = floor(20.5)−1 = 19, i = floor(72.75) = 72
    # t2: i1 = 65,  v1 = 84;                      v = 42−1 = 41,        i = floor(48.75) = 48
    out = run_everywhere("CubaLIF", attrs, {"current": current}, ["spikes", "v", "i"], scalar_cuba(attrs, current))
    assert_same_array(out["spikes"][:, 0], np.array([0, 1, 0], np.int32), "spikes")
    assert_same_array(out["v"], np.array([41], np.int32), "v")
    assert_same_array(out["i"], np.array([48], np.int32), "i")


def test_cuba_without_synaptic_memory_is_lif() -> None:
    rng = np.random.default_rng(5)
    current = rng.normal(0.4, 0.8, (20, 3, 4)).astype(np.float32)
    shared = {"threshold": 0.9, "alpha": 0.75, "beta": 0.0625, "reset_mode": "soft", "v_lower": -1.0}
    cuba = hnnx.ops.make_node("CubaLIF", ["current"], ["spikes", "v"], alpha_syn=0.0, **shared)
    lif = hnnx.ops.make_node("LIF", ["current"], ["spikes", "v"], **shared)
    for got, expected in zip(hnnx.ops.run_reference(cuba, current), hnnx.ops.run_reference(lif, current)):
        assert_same_array(got, expected, "CubaLIF(alpha_syn=0) vs LIF")
    assert 0 < hnnx.ops.run_reference(lif, current)[0].mean() < 1


def test_li_and_integrator_traces() -> None:
    current = np.array([[1.0, 4.0], [0.0, -2.0], [2.0, 0.0]], np.float32)
    li = {"alpha": 0.5, "beta": 0.25, "v_init": 1.0}
    # neuron 0: y = 1+1 = 2, v = 1.25; y = 1.25, v = 0.875; y = 2.875, v = 1.6875
    out = run_everywhere("LI", li, {"current": current}, ["y", "v"], scalar_li(li, current))
    assert_same_array(out["y"][:, 0], np.array([2.0, 1.25, 2.875], np.float32), "LI y")
    assert_same_array(out["v"][0:1], np.array([1.6875], np.float32), "LI v")
    out = run_everywhere("Integrator", {}, {"current": current}, ["y"], scalar_li({}, current))
    assert_same_array(out["y"], np.cumsum(current, axis=0), "Integrator y")


def test_integer_integrator_saturates() -> None:
    attrs = {"mode": "integer", "state_bits": 8}
    current = np.array([[100], [100], [-300], [-300], [1000]], np.int32)
    # inputs saturate first (−300 → −128, 1000 → 127): 100, 200 → 127, 127 − 128 = −1, −129 → −128, −128 + 127 = −1
    out = run_everywhere("Integrator", attrs, {"current": current}, ["y", "v"], scalar_li(attrs, current))
    assert_same_array(out["y"][:, 0], np.array([100, 127, -1, -128, -1], np.int32), "saturated integrator")


# ---------------------------------------------------------------------------------------------
# 3. Recurrence
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["LIF", "CubaLIF"])
def test_recurrent_spike_arrives_one_step_later(op: str) -> None:
    """Neuron 0 excites neuron 1 (weight 2): its spike at step t makes neuron 1 fire at t + 1."""
    weight = np.array([[0.0, 2.0], [0.0, 0.0]], np.float32)
    current = np.zeros((5, 1, 2), np.float32)
    current[1, 0, 0] = 1.5
    attrs = {"threshold": 1.0} if op == "LIF" else {"threshold": 1.0, "alpha_syn": 0.0}
    node = hnnx.ops.make_node(op, ["current"] + [""] * (4 if op == "LIF" else 3) + ["w"], ["spikes"], **attrs)
    spikes = hnnx.ops.run_reference(node, current, *[None] * (4 if op == "LIF" else 3), weight)[0]
    assert_same_array(spikes[:, 0], np.array([[0, 0], [1, 0], [0, 1], [0, 0], [0, 0]], np.float32), "spikes")


def test_float_recurrent_sum_is_exact_in_float64_before_rounding() -> None:
    """1e8 + 1 − 1e8 in the order of the presynaptic index: float32 accumulation gives 0,
    the op's float64 sum gives exactly 1 — on every executor."""
    weight = np.zeros((4, 4), np.float32)
    weight[:3, 3] = [1e8, 1.0, -1e8]
    current = np.zeros((1, 1, 4), np.float32)
    last = np.array([[1, 1, 1, 0]], np.float32)
    node = hnnx.ops.make_node("LIF", ["current", "", "", "", "last", "w"], ["spikes", "v"], threshold=10.0)
    expected = np.array([[0, 0, 0, 1]], np.float32)
    for got in (hnnx.ops.run_reference(node, current, None, None, None, last, weight)[1],
                run_onnxruntime(build_model([node], {"current": (TensorProto.FLOAT, (1, 1, 4)),
                                                     "last": (TensorProto.FLOAT, (1, 4)),
                                                     "w": (TensorProto.FLOAT, (4, 4))},
                                            {"spikes": (TensorProto.FLOAT, (1, 1, 4)),
                                             "v": (TensorProto.FLOAT, (1, 4))}),
                                {"current": current, "last": last, "w": weight})[1]):
        assert_same_array(got, expected, "membrane after the recurrent input")


def test_recurrent_native_kernel_over_many_samples_and_threads(library: Any) -> None:
    rng = np.random.default_rng(9)
    current = rng.normal(0.2, 0.5, (40, 33, 50)).astype(np.float32)
    weight = rng.normal(0, 0.3, (50, 50)).astype(np.float32)
    node = hnnx.ops.make_node("LIF", ["current", "", "", "", "", "w"], ["spikes", "v", "theta", "refractory",
                                                                          "last"], alpha=0.875, refractory=1)
    feeds = {"current": current, "w": weight}
    model = build_model([node], {"current": (TensorProto.FLOAT, current.shape), "w": (TensorProto.FLOAT, (50, 50))},
                        output_types("LIF", ["spikes", "v", "theta", "refractory", "last"], current))
    bodies = run_onnxruntime(model, feeds)
    for threads in (1, 2):
        for got, expected in zip(run_native(model, feeds, library, threads), bodies):
            assert got.tobytes() == expected.tobytes()
    assert 0.05 < bodies[0].mean() < 0.95


@pytest.mark.parametrize("op", ["LIF", "CubaLIF"])
def test_recurrent_weight_shape_errors_name_the_node(op: str) -> None:
    offset = 4 if op == "LIF" else 3
    node = hnnx.ops.make_node(op, ["current"] + [""] * offset + ["w"], ["spikes"], name="rec_node")
    with pytest.raises(NodeError, match=r"rec_node.*recurrent_weight of shape \[3, 4\].*F = 4"):
        hnnx.ops.run_reference(node, np.zeros((2, 1, 4), np.float32), *[None] * offset,
                               np.zeros((3, 4), np.float32))
    with pytest.raises(NodeError, match="rec_node.*needs the recurrent_weight"):
        hnnx.ops.make_node(op, ["current"] + [""] * (offset - 1) + ["last"], ["spikes"], name="rec_node")


# ---------------------------------------------------------------------------------------------
# 4. Steps and continuation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_step_functions_equal_the_multi_step_ops(integer: bool) -> None:
    rng = np.random.default_rng(11)
    if integer:
        current = rng.integers(-300, 700, (9, 2, 3)).astype(np.int32)
        weight = rng.integers(-400, 400, (3, 3)).astype(np.int32)
        cuba = {"mode": "integer", "threshold": 500, "alpha": 0.75, "alpha_syn": 0.5, "state_bits": 16}
        li = {"mode": "integer", "alpha": 0.875, "beta": 3}
        lif = {"mode": "integer", "threshold": 500, "alpha": 0.75}
    else:
        current = rng.normal(0.3, 0.7, (9, 2, 3)).astype(np.float32)
        weight = rng.normal(0, 0.5, (3, 3)).astype(np.float32)
        cuba = {"threshold": 1.0, "alpha": 0.75, "alpha_syn": 0.5}
        li = {"alpha": 0.875, "beta": 0.125}
        lif = {"threshold": 1.0, "alpha": 0.75}
    ops = hnnx.ops
    view = ops.CubaLIF.view_for(cuba, [True, False, False, False, True], 4)
    state = ops.CubaLIF.initial_state(view, (2, 3))
    stepped = []
    for x in current:
        spikes, state = ops.CubaLIF.step(view, state, x, weight)
        stepped.append(spikes)
    whole = ops.CubaLIF.reference(view, current, None, None, None, weight)
    assert_same_array(np.stack(stepped), whole[0], "CubaLIF steps")
    for got, expected in zip(state, whole[1:]):
        assert_same_array(got, expected, "CubaLIF final state")

    view = ops.LIF.view_for(lif, [True, False, False, False, False, True], 5)
    lif_state = ops.LIF.initial_state(view, (2, 3))
    stepped = []
    for x in current:
        spikes, lif_state = ops.LIF.step(view, lif_state, x, weight)
        stepped.append(spikes)
    whole = ops.LIF.reference(view, current, None, None, None, None, weight)
    assert_same_array(np.stack(stepped), whole[0], "LIF steps")
    assert_same_array(lif_state.last_spikes, whole[4], "LIF last spikes")

    for op, attrs in (("LI", li), ("Integrator", {k: v for k, v in li.items() if k == "mode"})):
        decl = ops.declaration(op)
        view = decl.view_for(attrs, [True], 2)
        v = decl.initial_state(view, (2, 3))
        ys = []
        for x in current:
            y, v = decl.step(view, v, x)
            ys.append(y)
        whole = decl.reference(view, current)
        assert_same_array(np.stack(ys), whole[0], f"{op} steps")
        assert_same_array(v, whole[1], f"{op} final state")


@pytest.mark.parametrize("op", ["LIF", "CubaLIF", "LI", "Integrator"])
def test_state_ports_continue_a_sequence_exactly(op: str) -> None:
    """Two calls, the second fed the first one's state outputs (the ops' state_spec), equal one call."""
    rng = np.random.default_rng(4)
    current = rng.normal(0.3, 0.7, (10, 2, 3)).astype(np.float32)
    weight = rng.normal(0, 0.5, (3, 3)).astype(np.float32)
    decl = hnnx.ops.declaration(op)
    attrs = {"LIF": {"alpha": 0.75, "refractory": 1, "theta_increment": 0.25},
             "CubaLIF": {"alpha": 0.75, "alpha_syn": 0.5, "v_init": 0.25, "i_init": 0.5},
             "LI": {"alpha": 0.5, "v_init": 0.25}, "Integrator": {"v_init": 0.25}}[op]
    recurrent = op in ("LIF", "CubaLIF")
    n_ports = len(decl.inputs)
    inputs = [True] + [False] * (n_ports - 1)
    if recurrent:
        inputs[-1] = True
    view = decl.view_for(attrs, inputs, len(decl.outputs))
    specs = decl.state_spec(view)
    assert {spec.name for spec in specs} >= ({"last_spikes"} if recurrent else {"v"})

    def call(x: np.ndarray, states: dict[int, np.ndarray]) -> tuple[np.ndarray, ...]:
        args: list[Any] = [x] + [states.get(port) for port in range(1, n_ports)]
        if recurrent:
            args[-1] = weight
        used = [a is not None for a in args]
        return decl.reference(decl.view_for(attrs, used, len(decl.outputs)), *args)

    whole = call(current, {})
    first = call(current[:4], {})
    second = call(current[4:], {spec.input: first[spec.output] for spec in specs})
    assert_same_array(np.concatenate([first[0], second[0]]), whole[0], f"{op} output 0 in two calls")
    for spec in specs:
        assert_same_array(second[spec.output], whole[spec.output], f"{op} state {spec.name}")


# ---------------------------------------------------------------------------------------------
# 5. Training: surrogate gradients
# ---------------------------------------------------------------------------------------------
def test_cuba_surrogate_gradient_is_the_rectangle_at_the_threshold() -> None:
    """One step from v_init/i_init: v1 = v_init + i_init + x, s = 1[v1 > 1]; with the rectangle
    surrogate of width 0.5, ∂s/∂x = 2 where |v1 − 1| < 0.25, else 0."""
    x = torch.tensor([[[0.0, 0.3, 0.5, 0.7, 1.2]]], requires_grad=True)
    view = hnnx.ops.CubaLIF.view_for({"v_init": 0.25, "i_init": 0.25, "surrogate_width": 0.5}, [True], 1)
    (spikes,) = hnnx.ops.CubaLIF.torch_forward(view, x)
    spikes.sum().backward()
    assert spikes.detach().numpy().tolist() == [[[0, 0, 0, 1, 1]]]
    assert x.grad.numpy().tolist() == [[[0.0, 2.0, 2.0, 2.0, 0.0]]]  # v1 = 0.5, 0.8, 1.0, 1.2, 1.7


def test_recurrent_weight_gets_gradients_through_time() -> None:
    rng = np.random.default_rng(2)
    current = torch.tensor(rng.normal(0.4, 0.6, (12, 4, 6)).astype(np.float32))
    weight = torch.tensor(rng.normal(0, 0.3, (6, 6)).astype(np.float32), requires_grad=True)
    for op, offset in (("LIF", 4), ("CubaLIF", 3)):
        decl = hnnx.ops.declaration(op)
        view = decl.view_for({"alpha": 0.8, "surrogate": "atan"}, [True] + [False] * offset + [True], 1)
        (spikes,) = decl.torch_forward(view, current, *[None] * offset, weight)
        weight.grad = None
        spikes.sum().backward()
        assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0, op


# ---------------------------------------------------------------------------------------------
# 6. Validation and ONNX tooling
# ---------------------------------------------------------------------------------------------
BAD = [
    ("CubaLIF", {"alpha_syn": 1.5}, "alpha_syn"),
    ("CubaLIF", {"mode": "integer", "alpha_syn": 0.3}, "alpha_syn"),
    ("CubaLIF", {"mode": "integer", "i_init": 0.5}, "i_init"),
    ("CubaLIF", {"refractory": 2}, "refractory"),
    ("LI", {"alpha": -0.5}, "alpha"),
    ("LI", {"mode": "integer", "state_bits": 8, "beta": 300}, "beta"),
    ("LI", {"threshold": 1.0}, "threshold"),
    ("Integrator", {"alpha": 0.5}, "alpha"),
    ("Integrator", {"mode": "integer", "v_init": 0.5}, "v_init"),
]


@pytest.mark.parametrize("op, attrs, attribute", BAD, ids=[f"{op}-{a}" for op, a, _ in BAD])
def test_bad_attributes_name_the_node(op: str, attrs: dict[str, Any], attribute: str) -> None:
    with pytest.raises(NodeError) as error:
        hnnx.ops.make_node(op, ["current"], ["out"], name="bad_neuron", **attrs)
    assert error.value.node == "bad_neuron" and attribute in str(error.value)


@pytest.mark.parametrize("op", ["CubaLIF", "LI", "Integrator"])
def test_wrong_current_type_names_the_node(op: str) -> None:
    node = hnnx.ops.make_node(op, ["current"], ["out"], name="typed", mode="integer")
    with pytest.raises(NodeError, match=f"typed.*{op} in integer mode needs int32"):
        hnnx.ops.run_reference(node, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.INT32], ids=["float", "integer"])
def test_symbolic_shape_inference_and_checker(elem: int) -> None:
    mode = "integer" if elem == TensorProto.INT32 else "float"
    nodes = [hnnx.ops.make_node("CubaLIF", ["x", "", "", "", "w"], ["s", "v", "i", "last"], name="cuba", mode=mode),
             hnnx.ops.make_node("LI", ["s"], ["y", "vl"], name="li", mode=mode),
             hnnx.ops.make_node("Integrator", ["y"], ["z"], name="integrator", mode=mode)]
    model = build_model(nodes, {"x": (elem, ("T", "N", 6)), "w": (elem, (6, 6))},
                        {"s": (elem, ("T", "N", 6)), "v": (elem, ("N", 6)), "i": (elem, ("N", 6)),
                         "last": (elem, ("N", 6)), "y": (elem, ("T", "N", 6)), "vl": (elem, ("N", 6)),
                         "z": (elem, ("T", "N", 6))})
    assert {f.name for f in model.functions} == {"CubaLIF", "LI", "Integrator"}
    onnx.checker.check_model(model, full_check=True)
    assert hnnx.ops.CubaLIF.emits_spikes(hnnx.ops.CubaLIF.view(nodes[0]))
    assert not hnnx.ops.LI.emits_spikes(hnnx.ops.LI.view(nodes[1]))


def test_models_with_the_new_ops_save_and_run_in_a_plain_session(tmp_path: Any) -> None:
    """hnnx.save writes the function bodies: a stock onnxruntime session runs the file."""
    import onnxruntime as ort

    nodes = [hnnx.ops.make_node("CubaLIF", ["x"], ["s"], name="cuba", alpha=0.5, alpha_syn=0.5),
             hnnx.ops.make_node("LI", ["s"], ["y"], name="readout", alpha=0.5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", 3])])
    path = tmp_path / "neurons.onnx"
    hnnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    x = np.random.default_rng(0).normal(0.5, 0.5, (6, 2, 3)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    spikes = scalar_cuba({"alpha": 0.5, "alpha_syn": 0.5}, x)["spikes"]
    assert_same_array(got, scalar_li({"alpha": 0.5}, spikes)["y"], "CubaLIF → LI")


# ---------------------------------------------------------------------------------------------
# 7. Integer forms of float neurons, and the torch front end's modules
# ---------------------------------------------------------------------------------------------
def test_integer_attributes_scale_constants_and_snap_decays() -> None:
    view = hnnx.ops.CubaLIF.view_for({"threshold": 1.0, "v_reset": 0.1, "alpha": 0.9, "alpha_syn": 0.7,
                                      "beta": 0.01, "i_init": 0.25}, [True], 1)
    attrs = hnnx.ops.CubaLIF.integer_attributes(view, 200.0)
    assert (attrs["threshold"], attrs["v_reset"], attrs["beta"], attrs["i_init"]) == (200.0, 20.0, 2.0, 50.0)
    assert (attrs["alpha"], attrs["alpha_syn"], attrs["mode"]) == (230 / 256, 179 / 256, "integer")
    # with decays that are multiples of 1/256, only the floors of the integer leaks differ
    view = hnnx.ops.CubaLIF.view_for({"threshold": 1.0, "alpha": 0.875, "alpha_syn": 0.75}, [True], 1)
    rng = np.random.default_rng(8)
    current = rng.normal(0.15, 0.3, (40, 8, 16)).astype(np.float32)
    float_spikes = hnnx.ops.CubaLIF.reference(view, current)[0]
    integer_view = hnnx.ops.CubaLIF.view_for(hnnx.ops.CubaLIF.integer_attributes(view, 1024.0), [True], 1)
    integer_spikes = hnnx.ops.CubaLIF.reference(integer_view, np.round(current * 1024).astype(np.int32))[0]
    assert 0.05 < float_spikes.mean() < 0.95 and (integer_spikes == float_spikes).mean() > 0.98
    li = hnnx.ops.LI.view_for({"alpha": 0.5, "beta": 0.125}, [True], 1)
    integer_li = hnnx.ops.LI.view_for(hnnx.ops.LI.integer_attributes(li, 64.0), [True], 1)
    assert integer_li.attrs["beta"] == 8.0
    with pytest.raises(NodeError, match="already an integer-mode LI"):
        hnnx.ops.LI.integer_attributes(integer_li, 2.0)


def test_torch_modules_train_and_export_the_new_neurons(tmp_path: Any) -> None:
    """CubaLIF and LIF with learnable recurrent weights and an LI readout: the recurrent weights get
    gradients, and the exported ONNX file computes what the torch modules compute."""
    from torch import nn

    import hnnx.frontends.torch as hnn

    torch.manual_seed(0)
    net = nn.Sequential(hnn.TimeFold(nn.Linear(6, 8)), hnn.CubaLIF(alpha=0.75, alpha_syn=0.5, recurrent_features=8),
                        hnn.TimeFold(nn.Linear(8, 5)), hnn.LIF(alpha=0.875, threshold=0.5, recurrent_features=5),
                        hnn.LI(alpha=0.5), hnn.Integrator())
    with torch.no_grad():
        for module in (net[1], net[3]):
            module.recurrent_weight.normal_(0, 0.4)
    x = torch.rand(7, 3, 6)
    net(x).sum().backward()
    assert all(m.recurrent_weight.grad.abs().sum() > 0 for m in (net[1], net[3]))
    model = hnn.export(net, (x,), tmp_path / "net.onnx", input_names=["x"], output_names=["y"], time_major_inputs=[0])
    assert [n.op_type for n in hnnx.ops.hnnx_nodes(model.graph)] == ["CubaLIF", "LIF", "LI", "Integrator"]
    assert [len(n.input) for n in hnnx.ops.hnnx_nodes(model.graph)][:2] == [5, 6]
    got = run_onnxruntime(model, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(got, net(x).detach().numpy())
