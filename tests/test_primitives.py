"""Tests of HNN's neuron primitives as hnnx ops (``hnnx.Accumulate``, ``Leak``, ``Saturate``, ``Reset``,
``Threshold``, ``ThresholdDynamics``, ``Refractory``, ``Product``): each against an independent
scalar formula (Python ints in integer mode, np.float32 in float mode) through every path (numpy
reference, onnxruntime function body, onnx.reference, torch); the ``hnnx.LIF`` step composed of
them (a step graph in an ``hnnx.Neuron``) against the LIF itself, bit for bit, in both modes; the
torch primitives' values and surrogate gradients against ``hnnx.LIF``'s; validation."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import hnnx.frontends.torch as hnn
import hnnx.ops
from conftest import assert_same_array, build_model, elem_of, run_model_both_ways, single_node_model
from hnnx.errors import NodeError
from test_lif import scalar_lif

LO, HI = -(2**27), 2**27 - 1
RNG = np.random.default_rng(13)


def sat(x: int) -> int:
    return min(max(x, LO), HI)


def q8(x: int, factor: float) -> int:
    return (round(256 * factor) * x) // 256  # Python // floors


def floats(*shape: int, scale: float = 2.0) -> np.ndarray:
    return (RNG.normal(0.0, scale, shape)).astype(np.float32)


def ints(*shape: int, low: int = -(2**27) - 5, high: int = 2**27 + 5) -> np.ndarray:
    """int32 values including ones outside the 28-bit state (saturation is part of the op)."""
    values = RNG.integers(-300, 300, shape)
    values.flat[::7] = RNG.integers(low, high, values.flat[::7].shape)
    return values.astype(np.int32)


def elementwise(formula: Callable[..., Any], dtype: type, *arrays: np.ndarray) -> np.ndarray:
    """``formula`` applied one broadcast element at a time (Python ints for int32 arrays)."""
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    wide = [np.broadcast_to(a, shape) for a in arrays]
    out = np.zeros(shape, dtype)
    for index in np.ndindex(*shape):
        args = [int(a[index]) if a.dtype == np.int32 else np.float32(a[index]) for a in wide]
        out[index] = formula(*args)
    return out


def run_everywhere(op: str, inputs: dict[str, np.ndarray], out_dtype: type, **attrs: Any) -> np.ndarray:
    """The op through run_reference, onnxruntime, onnx.reference and torch; all must agree bit for bit."""
    decl = hnnx.ops.declaration(op)
    names = [port.name for port in decl.inputs[: len(inputs)]]
    node = hnnx.ops.make_node(op, [n if n in inputs else "" for n in names], ["y"], name=op.lower(), **attrs)
    arrays = [inputs.get(n) for n in names]
    (from_reference,) = hnnx.ops.run_reference(node, *arrays)
    feeds = {n: a for n, a in inputs.items()}
    shape = np.broadcast_shapes(*(a.shape for a in feeds.values())) if op != "Reset" or attrs.get(
        "reset_mode") != "none" else feeds["v"].shape
    elem = TensorProto.INT32 if out_dtype == np.int32 else TensorProto.FLOAT
    model = single_node_model(node, feeds, {"y": (elem, tuple(shape))})
    (from_model,) = run_model_both_ways(model, feeds)
    assert_same_array(from_model, from_reference, f"{op}: onnxruntime vs run_reference")
    view = decl.view(node)
    (from_torch,) = decl.torch_forward(view, *[None if a is None else torch.from_numpy(a) for a in arrays])
    assert_same_array(from_torch.detach().numpy(), from_reference, f"{op}: torch vs run_reference")
    return from_reference


# ---------------------------------------------------------------------------------------------
# 1. Each primitive against its formula
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("integer", [False, True], ids=["float", "int"])
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "refractory"])
def test_accumulate(integer: bool, gated: bool) -> None:
    v, current = (ints(3, 5), ints(3, 5)) if integer else (floats(3, 5), floats(3, 5))
    v = np.clip(v, LO, HI).astype(v.dtype)  # a state inside its range
    inputs = {"v": v, "current": current}
    counter = RNG.integers(0, 3, (3, 5)).astype(np.int32)
    if gated:
        inputs["refractory"] = counter
    mode = "integer" if integer else "float"
    got = run_everywhere("Accumulate", inputs, v.dtype, mode=mode)

    def formula(v: Any, u: Any, r: int = 0) -> Any:
        if r != 0:
            return v
        return sat(v + sat(u)) if integer else v + u

    expected = elementwise(formula, v.dtype, v, current, *([counter] if gated else []))
    assert_same_array(got, expected, "Accumulate")
    if gated:
        assert np.any(counter > 0) and np.any(counter == 0)


@pytest.mark.parametrize("integer", [False, True], ids=["float", "int"])
@pytest.mark.parametrize("alpha, beta", [(0.8125, 3.0), (1.0, -2.0), (0.5, 0.0), (1.0, 0.0)])
def test_leak(integer: bool, alpha: float, beta: float) -> None:
    v = np.clip(ints(4, 6), LO, HI).astype(np.int32) if integer else floats(4, 6)
    got = run_everywhere("Leak", {"v": v}, v.dtype, mode="integer" if integer else "float", alpha=alpha, beta=beta)

    def formula(x: Any) -> Any:
        if integer:
            x = q8(x, alpha) if alpha != 1.0 else x
            return sat(x + int(beta)) if beta else x
        x = np.float32(alpha) * x if alpha != 1.0 else x
        return x + np.float32(beta) if beta else x

    assert_same_array(got, elementwise(formula, v.dtype, v), "Leak")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "int"])
@pytest.mark.parametrize("lower", [None, -40.0])
def test_saturate(integer: bool, lower: float | None) -> None:
    x = ints(5, 4) if integer else floats(5, 4, scale=60.0)
    got = run_everywhere("Saturate", {"x": x}, x.dtype, mode="integer" if integer else "float", v_lower=lower)

    def formula(value: Any) -> Any:
        value = sat(value) if integer else value
        return value if lower is None else max(value, int(lower) if integer else np.float32(lower))

    assert_same_array(got, elementwise(formula, x.dtype, x), "Saturate")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "int"])
@pytest.mark.parametrize("mode", ["hard", "soft", "soft_constant", "none"])
def test_reset(integer: bool, mode: str) -> None:
    dtype = np.int32 if integer else np.float32
    v = np.clip(ints(4, 5), LO, HI).astype(np.int32) if integer else floats(4, 5)
    spikes = RNG.integers(0, 2, (4, 5)).astype(dtype)
    threshold = (np.array([-(2**27) + 3, 7, 2**27 - 1, 4, 5], dtype) if integer
                 else floats(5))  # per neuron, broadcast; extreme values make the subtraction saturate
    attrs = {"mode": "integer" if integer else "float", "reset_mode": mode, "v_reset": -3.0, "reset_decrement": 2.0}
    got = run_everywhere("Reset", {"v": v, "spikes": spikes, "threshold": threshold}, dtype, **attrs)

    def formula(x: Any, s: Any, theta: Any) -> Any:
        if not s or mode == "none":
            return x
        if mode == "hard":
            return -3 if integer else np.float32(-3.0)
        amount = theta if mode == "soft" else (2 if integer else np.float32(2.0))
        return sat(x - amount) if integer else x - amount

    assert_same_array(got, elementwise(formula, dtype, v, spikes, threshold), "Reset")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "int"])
@pytest.mark.parametrize("lower", [None, 5.0])
def test_threshold(integer: bool, lower: float | None) -> None:
    theta_a = np.clip(ints(6), LO, HI).astype(np.int32) if integer else floats(6, scale=10.0)
    got = run_everywhere("Threshold", {"theta_a": theta_a}, theta_a.dtype, mode="integer" if integer else "float",
                         threshold=9.0, v_lower=lower)

    def formula(a: Any) -> Any:
        theta = sat(9 + a) if integer else np.float32(9.0) + a
        return theta if lower is None else max(theta, int(lower) if integer else np.float32(lower))

    assert_same_array(got, elementwise(formula, theta_a.dtype, theta_a), "Threshold")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "int"])
@pytest.mark.parametrize("theta_alpha", [0.75, 1.0])
def test_threshold_dynamics(integer: bool, theta_alpha: float) -> None:
    dtype = np.int32 if integer else np.float32
    theta_a = np.clip(ints(8), LO, HI).astype(np.int32) if integer else floats(8)
    spikes = RNG.integers(0, 2, 8).astype(dtype)
    got = run_everywhere("ThresholdDynamics", {"theta_a": theta_a, "spikes": spikes}, dtype,
                         mode="integer" if integer else "float", theta_alpha=theta_alpha, theta_beta=-1.0,
                         theta_increment=6.0)

    def formula(a: Any, s: Any) -> Any:
        if integer:
            decayed = (q8(a, theta_alpha) if theta_alpha != 1.0 else a) - 1
            return sat(decayed + 6 if s else decayed)
        decayed = (np.float32(theta_alpha) * a if theta_alpha != 1.0 else a) + np.float32(-1.0)
        return decayed + np.float32(6.0) if s else decayed

    assert_same_array(got, elementwise(formula, dtype, theta_a, spikes), "ThresholdDynamics")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "int"])
def test_refractory(integer: bool) -> None:
    counter = np.array([0, 1, 2, 3, 0, 5, -2, 1], np.int32)
    spikes = np.array([1, 0, 1, 0, 0, 0, 0, 1], np.int32 if integer else np.float32)
    got = run_everywhere("Refractory", {"counter": counter, "spikes": spikes}, np.int32,
                         mode="integer" if integer else "float", refractory=4)
    # fired → 4; else max(r − 1, 0)
    assert_same_array(got, np.array([4, 0, 4, 2, 0, 4, 0, 4], np.int32), "Refractory (hand-computed)")


@pytest.mark.parametrize("shift", [0, 5, 17])
def test_product_integer_is_exact(shift: int) -> None:
    a = np.clip(ints(40), LO, HI).astype(np.int32)
    b = np.clip(ints(40), LO, HI).astype(np.int32)
    got = run_everywhere("Product", {"a": a, "b": b}, np.int32, mode="integer", gain=0.6875, shift=shift)

    def formula(x: int, y: int) -> int:
        return (176 * sat((x * y) // 2**shift)) // 256  # round(256·0.6875) = 176

    assert_same_array(got, elementwise(formula, np.int32, a, b), "Product")


def test_product_float() -> None:
    a, b = floats(3, 4), floats(4)
    got = run_everywhere("Product", {"a": a, "b": b}, np.float32, gain=0.3)
    assert_same_array(got, elementwise(lambda x, y: (x * y) * np.float32(0.3), np.float32, a, b), "Product")


def test_product_integer_attributes_keep_the_gain_per_unit() -> None:
    """An integer Product on currents σ times the float ones computes σ times the float product."""
    sigma = 913.25
    view = hnnx.ops.Product.view_for({"gain": 0.04}, [True, True], 1)
    attrs = hnnx.ops.Product.integer_attributes(view, sigma)
    assert attrs["mode"] == "integer" and 0.5 <= attrs["gain"] <= 1.0
    assert attrs["gain"] * 256 == int(attrs["gain"] * 256)
    per_unit = attrs["gain"] * 2.0 ** -attrs["shift"]
    assert abs(per_unit - 0.04 / sigma) <= 0.04 / sigma / 256  # 8 significant bits
    real = np.linspace(-3, 3, 25).astype(np.float32)
    integer = np.round(real * sigma).astype(np.int32)
    node = hnnx.ops.make_node("Product", ["a", "b"], ["y"], **attrs)
    (got,) = hnnx.ops.run_reference(node, integer, integer[::-1].copy())
    want = 0.04 * real.astype(np.float64) * real[::-1] * sigma
    assert np.max(np.abs(got - want)) <= 2 + np.max(np.abs(want)) / 128


# ---------------------------------------------------------------------------------------------
# 2. The LIF step composed of the primitives is the LIF
# ---------------------------------------------------------------------------------------------
def lif_configurations() -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    configs = []
    for index in range(24):
        integer = index % 2 == 1
        config: dict[str, Any] = {"mode": "integer" if integer else "float",
                                  "reset_mode": ["hard", "soft", "soft_constant", "none"][index % 4 if index < 8
                                                                                           else rng.integers(4)]}
        scale = 40 if integer else 1.0
        config["threshold"] = float(round(scale * rng.uniform(0.5, 1.5), 0 if integer else 3))
        if rng.random() < 0.6:
            config["alpha"] = float(rng.integers(128, 256)) / 256
        if rng.random() < 0.4:
            config["beta"] = float(round(scale * rng.uniform(-0.2, 0.2), 0 if integer else 3))
        if rng.random() < 0.4:
            config["v_lower"] = -float(round(scale * rng.uniform(0.5, 2.0), 0 if integer else 3))
        if rng.random() < 0.5:
            config["refractory"] = int(rng.integers(1, 4))
        if rng.random() < 0.5 or index < 4:
            config["theta_alpha"] = float(rng.integers(160, 256)) / 256
            config["theta_increment"] = float(round(scale * rng.uniform(0.1, 0.5), 0 if integer else 3))
        config["v_reset"] = float(round(scale * rng.uniform(-0.3, 0.1), 0 if integer else 3))
        config["reset_decrement"] = float(round(scale * rng.uniform(0.3, 1.0), 0 if integer else 3))
        config["v_init"] = float(round(scale * rng.uniform(-0.5, 0.5), 0 if integer else 3))
        configs.append(config)
    return configs


def lif_step_graph(attrs: dict[str, Any]) -> tuple[Any, list[str], list[float]]:
    """The LIF's step written with the primitive ops, as the README's composition states."""
    a = hnnx.ops.LIF.resolve(attrs, "lif")
    elem = TensorProto.INT32 if a["mode"] == "integer" else TensorProto.FLOAT
    adapt = a["theta_alpha"] != 1.0 or a["theta_increment"] != 0.0
    refr = a["refractory"] > 0
    common = {"mode": a["mode"], "state_bits": a["state_bits"]}
    nodes, init = [], []
    if adapt:
        nodes.append(hnnx.ops.make_node("Threshold", ["theta_a"], ["theta"], threshold=a["threshold"],
                                        v_lower=a["v_lower"], **common))
    else:
        theta = max(a["threshold"], a["v_lower"]) if a["v_lower"] is not None else a["threshold"]
        value = np.array(theta, np.int32 if elem == TensorProto.INT32 else np.float32)
        init.append(numpy_helper.from_array(value, "theta"))
    nodes.append(hnnx.ops.make_node("Accumulate", ["v", "x", "refractory" if refr else ""], ["v1"], **common))
    nodes.append(hnnx.ops.make_node("Fire", ["v1", "theta"], ["s"], surrogate=a["surrogate"]))
    nodes.append(hnnx.ops.make_node("Reset", ["v1", "s", "theta"], ["v2"], reset_mode=a["reset_mode"],
                                    v_reset=a["v_reset"], reset_decrement=a["reset_decrement"], **common))
    nodes.append(hnnx.ops.make_node("Leak", ["v2"], ["v3"], alpha=a["alpha"], beta=a["beta"], **common))
    nodes.append(hnnx.ops.make_node("Saturate", ["v3"], ["v_next"], v_lower=a["v_lower"], **common))
    states = [("v", elem, a["v_init"])]
    outs = ["v_next"]
    if adapt:
        nodes.append(hnnx.ops.make_node("ThresholdDynamics", ["theta_a", "s"], ["theta_next"],
                                        theta_alpha=a["theta_alpha"], theta_beta=a["theta_beta"],
                                        theta_increment=a["theta_increment"], **common))
        states.append(("theta_a", elem, 0.0))
        outs.append("theta_next")
    if refr:
        nodes.append(hnnx.ops.make_node("Refractory", ["refractory", "s"], ["refractory_next"],
                                        refractory=a["refractory"], mode=a["mode"]))
        states.append(("refractory", TensorProto.INT32, 0.0))
        outs.append("refractory_next")
    graph = helper.make_graph(
        nodes, "step", [helper.make_tensor_value_info(n, e, None) for n, e, _ in states]
        + [helper.make_tensor_value_info("x", elem, None)],
        [helper.make_tensor_value_info(o, e, None) for o, (_, e, _) in zip(outs, states)]
        + [helper.make_tensor_value_info("s", elem, None)], initializer=init)
    return graph, [n for n, _, _ in states], [f for _, _, f in states]


@pytest.mark.parametrize("config", lif_configurations(), ids=lambda c: f"{c['mode']}-{c['reset_mode']}")
def test_lif_composed_of_primitives_is_the_lif(config: dict[str, Any]) -> None:
    integer = config["mode"] == "integer"
    dtype = np.int32 if integer else np.float32
    current = (RNG.integers(-15, 60, (20, 3, 4)) if integer else RNG.normal(0.35, 0.6, (20, 3, 4))).astype(dtype)
    step, names, init = lif_step_graph(config)
    outputs = ["y"] + [f"final_{name}" for name in names]
    node = hnnx.ops.make_node("Neuron", ["current"], outputs, name="composed", mode=config["mode"], step=step,
                              state_names=names, state_init=init)
    elem = elem_of(current)
    types = {"y": (elem, ("T", "N", 4))}
    for name, value in zip(names, step.input):
        types[f"final_{name}"] = (value.type.tensor_type.elem_type, ("N", 4))
    model = build_model([node], {"current": (elem, ("T", "N", 4))}, types)
    from_model = run_model_both_ways(model, {"current": current})
    from_reference = hnnx.ops.run_reference(node, current)
    expected = scalar_lif(config, current)
    assert_same_array(from_model[0], expected["spikes"], "Neuron of primitives vs scalar LIF: spikes")
    assert_same_array(from_reference[0], expected["spikes"], "Neuron reference vs scalar LIF: spikes")
    lif_outputs = {"v": "v", "theta_a": "theta", "refractory": "refractory"}
    for index, name in enumerate(names, 1):
        assert_same_array(from_model[index], expected[lif_outputs[name]], f"final {name}")
    assert 0 < expected["spikes"].mean() < 1  # the case spikes and rests
    match = hnnx.ops.Neuron.as_lif(hnnx.ops.Neuron.view(node))
    assert not isinstance(match, str), match
    lif = hnnx.ops.make_node("LIF", ["current"], ["spikes"], **match.attrs)
    assert_same_array(hnnx.ops.run_reference(lif, current)[0], expected["spikes"], "the matched LIF")


@pytest.mark.parametrize("surrogate", ["rectangle", "atan"])
def test_torch_primitives_train_like_the_lif(surrogate: str) -> None:
    """The primitives in torch compose the LIF's forward and its surrogate gradients exactly."""
    attrs = dict(threshold=1.0, alpha=0.75, beta=0.0625, reset_mode="soft", theta_alpha=0.875,
                 theta_increment=0.25, refractory=1, surrogate=surrogate, v_lower=-0.5)
    current = torch.tensor(RNG.normal(0.4, 0.7, (12, 3, 5)).astype(np.float32), requires_grad=True)
    view = hnnx.ops.LIF.view_for(attrs, [True], 1)
    (lif_spikes,) = hnnx.ops.LIF.torch_forward(view, current)
    (lif_spikes * torch.arange(12.0)[:, None, None]).sum().backward()
    lif_grad = current.grad.clone()
    current.grad = None
    v, theta_a = torch.zeros(3, 5), torch.zeros(3, 5)
    counter = torch.zeros(3, 5, dtype=torch.int32)
    spikes = []
    for x in current:
        theta = hnn.threshold(theta_a, 1.0, lower=-0.5)
        v1 = hnn.accumulate(v, x, counter)
        s = hnn.fire(v1, theta, surrogate=surrogate)
        v = hnn.saturate(hnn.leak(hnn.reset(v1, s, theta, mode="soft"), alpha=0.75, beta=0.0625), lower=-0.5)
        theta_a = hnn.threshold_dynamics(theta_a, s, alpha=0.875, increment=0.25)
        counter = hnn.refractory(counter, s, 1)
        spikes.append(s)
    composed = torch.stack(spikes)
    assert torch.equal(composed, lif_spikes)
    (composed * torch.arange(12.0)[:, None, None]).sum().backward()
    assert torch.equal(current.grad, lif_grad) and lif_grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# 3. Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build, message", [
    (lambda: hnnx.ops.make_node("Reset", ["v", "s"], ["y"], reset_mode="soft"), "threshold"),
    (lambda: hnnx.ops.make_node("Product", ["a", "b"], ["y"], shift=3), "shift"),
    (lambda: hnnx.ops.make_node("Product", ["a", "b"], ["y"], mode="integer", gain=0.3), "1/256"),
    (lambda: hnnx.ops.make_node("Refractory", ["r", "s"], ["y"], refractory=-1), "refractory"),
    (lambda: hnnx.ops.make_node("Leak", ["v"], ["y"], alpha=1.5), "alpha"),
    (lambda: hnnx.ops.make_node("Leak", ["v"], ["y"], mode="integer", beta=0.5), "beta"),
])
def test_invalid_primitives_are_named(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(NodeError, match=message):
        build()


def test_integer_primitive_refuses_float_input() -> None:
    node = hnnx.ops.make_node("Leak", ["v"], ["y"], name="leak", mode="integer", alpha=0.5)
    with pytest.raises(NodeError, match="leak.*int32"):
        hnnx.ops.run_reference(node, np.zeros(3, np.float32))


def _edited(graph: Any, edit: Callable[[Any], None]) -> Any:
    copy = helper.make_graph([], "step", [], [])
    copy.CopyFrom(graph)
    edit(copy)
    return copy


def _node_of(graph: Any, op: str) -> Any:
    return next(node for node in graph.node if node.op_type == op)


def _set_attr(node: Any, name: str, value: Any) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _soft_reset_of_a_constant(graph: Any) -> None:
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "theta0"))
    _node_of(graph, "Reset").input[2] = "theta0"  # θ0 alone, not θ0 + θa


def _extra_relu(graph: Any) -> None:
    """Relu between the reset and the leak (inserted in order: a graph is topologically sorted)."""
    leak = _node_of(graph, "Leak")
    index = list(graph.node).index(leak)
    leak.input[0] = "v2_relu"
    graph.node.insert(index, helper.make_node("Relu", ["v2"], ["v2_relu"], name="extra"))


@pytest.mark.parametrize("edit, reason", [
    (_soft_reset_of_a_constant, "another threshold"),
    (lambda g: _set_attr(_node_of(g, "Saturate"), "v_lower", -2.0), "lower bound"),
    (_extra_relu, "Relu"),
    (lambda g: g.output[0].__setattr__("name", "theta"), "not the fired membrane"),
])
def test_steps_that_are_not_the_lif_do_not_fold(edit: Callable[[Any], None], reason: str) -> None:
    config = {"threshold": 1.0, "reset_mode": "soft", "alpha": 0.5, "v_lower": -1.0, "theta_alpha": 0.75,
              "theta_increment": 0.25}
    step, names, init = lif_step_graph(config)
    assert not isinstance(hnnx.ops.Neuron.as_lif(hnnx.ops.Neuron.view_for(
        {"step": step, "state_names": names, "state_init": init}, [True], 1)), str)
    changed = _edited(step, edit)
    view = hnnx.ops.Neuron.view_for({"step": changed, "state_names": names, "state_init": init}, [True], 1)
    match = hnnx.ops.Neuron.as_lif(view)
    assert isinstance(match, str) and reason in match, match


def test_a_nonzero_adaptive_start_does_not_fold() -> None:
    step, names, _ = lif_step_graph({"threshold": 1.0, "theta_increment": 0.5})
    view = hnnx.ops.Neuron.view_for({"step": step, "state_names": names, "state_init": [0.0, 0.25]}, [True], 1)
    match = hnnx.ops.Neuron.as_lif(view)
    assert isinstance(match, str) and "starts at 0.25" in match
