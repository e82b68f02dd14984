"""Tests of the PyTorch front end ``hnnx.frontends.torch``.

1. Each module's eager forward equals ``hnnx.ops.run_reference`` of the same node, bit for bit.
2. ``export`` writes a checked file with one named hnnx node per module, which onnxruntime
   runs to the torch outputs (also at other batch sizes and T).
3. Surrogate and straight-through gradients follow their documented formulas.
4. The four digits examples export to models onnxruntime runs like torch.
5. Construction errors.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from torch import nn

import hnnx.frontends.torch as hnn
import hnnx.ops
from conftest import assert_same_array
from hnnx.datasets import load_digits
from hnnx.errors import HnnxError, NodeError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def reference(op: str, attrs: dict[str, Any], inputs: list[np.ndarray | None], n_outputs: int = 1,
              name: str = "node") -> tuple[np.ndarray, ...]:
    """``run_reference`` of one hnnx node with the given attributes and (optional) inputs."""
    port_names = [p.name for p in hnnx.ops.declaration(op).inputs]
    wired = [port if x is not None else "" for port, x in zip(port_names, inputs)]
    while wired and wired[-1] == "":
        wired.pop()
    outputs = [p.name for p in hnnx.ops.declaration(op).outputs][:n_outputs]
    node = hnnx.ops.make_node(op, wired, outputs, name=name, **attrs)
    return hnnx.ops.run_reference(node, *inputs[: len(wired)])


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# 1. Module forward == run_reference
# ---------------------------------------------------------------------------------------------
LIF_CASES: dict[str, tuple[dict[str, Any], int]] = {
    # id: (attributes, outputs)
    "defaults": ({}, 1),
    "leaky-hard": ({"threshold": 0.8, "alpha": 0.875, "beta": -0.05, "v_reset": 0.1}, 2),
    "soft": ({"threshold": 0.6, "reset_mode": "soft", "alpha": 0.9}, 2),
    "soft-constant-lower": ({"reset_mode": "soft_constant", "reset_decrement": 0.5, "v_lower": -1.0,
                             "v_init": 0.3}, 2),
    "refractory": ({"threshold": 0.5, "refractory": 2}, 4),
    "adaptive": ({"threshold": 0.4, "theta_alpha": 0.5, "theta_beta": 0.01, "theta_increment": 0.3,
                  "reset_mode": "soft"}, 4),
    "surrogate-sigmoid": ({"threshold": 0.7, "alpha": 0.75, "surrogate": "sigmoid", "surrogate_width": 0.5}, 1),
    "integer-soft": ({"mode": "integer", "threshold": 100, "alpha": 224 / 256, "beta": -3, "reset_mode": "soft",
                      "state_bits": 12}, 2),
    "integer-adaptive-refractory": ({"mode": "integer", "threshold": 80, "theta_alpha": 192 / 256,
                                     "theta_increment": 40, "refractory": 1, "v_lower": -200,
                                     "state_bits": 10}, 4),
}


def lif_current(integer: bool, seed: int, shape: tuple[int, ...] = (7, 3, 2, 2)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if integer:  # beyond the 10/12-bit state range now and then: exercises saturation
        return rng.integers(-300, 900, size=shape).astype(np.int32)
    return rng.normal(0.3, 0.6, size=shape).astype(np.float32)


@pytest.mark.parametrize("case_id", list(LIF_CASES))
def test_lif_module_forward_equals_reference(case_id: str) -> None:
    attrs, outputs = LIF_CASES[case_id]
    integer = attrs.get("mode") == "integer"
    current = lif_current(integer, seed=len(case_id))
    module = hnn.LIF(outputs=outputs, **attrs)
    got = module(torch.from_numpy(current))
    got = (got,) if outputs == 1 else got
    expected = reference("LIF", attrs, [current], outputs)
    assert len(got) == len(expected) == outputs
    for index, (a, b) in enumerate(zip(got, expected)):
        assert_same_array(to_numpy(a), b, f"LIF {case_id} output {index}")
    spikes = expected[0]
    assert spikes.any() and not spikes.all(), "the case fires somewhere and stays silent somewhere"


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_lif_module_initial_states_equal_reference(integer: bool) -> None:
    attrs = {"threshold": 3 if integer else 0.5, "theta_increment": 2 if integer else 0.2, "refractory": 1}
    if integer:
        attrs["mode"] = "integer"
    dtype = np.int32 if integer else np.float32
    current = lif_current(integer, seed=3, shape=(5, 2, 3))
    if integer:  # keep the integer current near the small threshold
        current = (current // 50).astype(dtype)
    v0 = np.array([[0, 1, 2]], dtype)  # broadcasts over the batch
    theta0 = np.array(1, dtype)
    refractory0 = np.array([[1, 0, 2], [0, 0, 1]], np.int32)
    got = hnn.LIF(outputs=4, **attrs)(torch.from_numpy(current), torch.from_numpy(v0), torch.from_numpy(theta0),
                                      torch.from_numpy(refractory0))
    expected = reference("LIF", attrs, [current, v0, theta0, refractory0], 4)
    for index, (a, b) in enumerate(zip(got, expected)):
        assert_same_array(to_numpy(a), b, f"output {index}")


def test_if_module_is_lif_without_leak() -> None:
    current = lif_current(False, seed=4)
    got = hnn.IF(threshold=0.9, reset_mode="soft")(torch.from_numpy(current))
    (expected,) = reference("LIF", {"threshold": 0.9, "reset_mode": "soft", "alpha": 1.0, "beta": 0.0}, [current])
    assert_same_array(to_numpy(got), expected, "IF spikes")


A2S_MODULE_CASES: dict[str, dict[str, Any]] = {
    "direct": {"steps": 4},
    "direct-relu-round": {"steps": 3, "activation": "relu", "converter": "round", "bits": 3},
    "rate-minmax": {"steps": 6, "coding": "rate", "seed": 31},
    "rate-clip-sign": {"steps": 5, "coding": "rate", "normalize": "clip", "seed": 2**32 - 1,
                       "converter": "sign"},
    "learnable": {"steps": 4, "coding": "learnable"},
    "learnable-relu-sign": {"steps": 3, "coding": "learnable", "activation": "relu", "converter": "sign"},
}


@pytest.mark.parametrize("case_id", list(A2S_MODULE_CASES))
def test_a2s_module_forward_equals_reference(case_id: str) -> None:
    attrs = A2S_MODULE_CASES[case_id]
    rng = np.random.default_rng(len(case_id))
    x = (rng.normal(size=(3, 2, 5)) * 2).astype(np.float32)
    kwargs = {k: v for k, v in attrs.items() if k not in ("steps", "coding")}
    module = hnn.A2S(attrs["steps"], attrs.get("coding", "direct"), **kwargs)
    weight = bias = None
    if attrs.get("coding") == "learnable":
        weight = rng.normal(size=attrs["steps"]).astype(np.float32)
        bias = rng.normal(size=attrs["steps"]).astype(np.float32)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(weight))
            module.bias.copy_(torch.from_numpy(bias))
    got = module(torch.from_numpy(x))
    (expected,) = reference("A2S", attrs, [x, weight, bias])
    assert_same_array(to_numpy(got), expected, f"A2S {case_id}")


def test_learnable_a2s_module_starts_as_direct_coding() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    got = hnn.A2S(5, "learnable")(torch.from_numpy(x))
    (direct,) = reference("A2S", {"steps": 5}, [x])
    assert_same_array(to_numpy(got), direct, "weight 1, bias 0")


S2A_MODULE_CASES: dict[str, tuple[dict[str, Any], int | None, int]] = {
    # id: (attributes, num_windows, T)
    "rate-window1": ({"decoding": "rate"}, None, 5),
    "rate-w4-k2-s2": ({"decoding": "rate", "window": 4, "kernel": 2, "stride": 2}, None, 12),
    "rate-relu": ({"decoding": "rate", "window": 3, "activation": "relu"}, None, 6),
    "global": ({"decoding": "global"}, None, 7),
    "learnable": ({"decoding": "learnable", "window": 3, "kernel": 3, "stride": 1}, 3, 9),
    "learnable-padding": ({"decoding": "learnable", "window": 4, "kernel": 3, "stride": 2, "padding": 1}, 2, 8),
    "learnable-shared-relu": ({"decoding": "learnable", "window": 2, "kernel": 2, "activation": "relu"}, 1, 8),
}


@pytest.mark.parametrize("case_id", list(S2A_MODULE_CASES))
def test_s2a_module_forward_equals_reference(case_id: str) -> None:
    attrs, num_windows, steps = S2A_MODULE_CASES[case_id]
    rng = np.random.default_rng(len(case_id))
    # signed spikes (−1/0/1, as from a sign converter) make relu matter
    x = rng.integers(-1, 2, size=(steps, 2, 3, 2)).astype(np.float32)
    kwargs = {k: v for k, v in attrs.items() if k != "decoding"}
    module = hnn.S2A(attrs["decoding"], num_windows=num_windows, **kwargs)
    weight = bias = None
    if attrs["decoding"] == "learnable":
        kernel = attrs.get("kernel") or attrs["window"]
        assert tuple(module.weight.shape) == (num_windows, kernel) and tuple(module.bias.shape) == (num_windows,)
        weight = rng.normal(size=(num_windows, kernel)).astype(np.float32)
        bias = rng.normal(size=num_windows).astype(np.float32)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(weight))
            module.bias.copy_(torch.from_numpy(bias))
    got = module(torch.from_numpy(x))
    (expected,) = reference("S2A", attrs, [x, weight, bias])
    assert_same_array(to_numpy(got), expected, f"S2A {case_id}")


def test_learnable_s2a_module_starts_as_rate_coding() -> None:
    x = (np.random.default_rng(1).random((8, 2, 3)) < 0.5).astype(np.float32)
    got = hnn.S2A("learnable", num_windows=2, window=4, kernel=2, stride=2)(torch.from_numpy(x))
    (rate,) = reference("S2A", {"decoding": "rate", "window": 4, "kernel": 2, "stride": 2}, [x])
    # weights 1/2 and a sum equal a mean of 2 for 0/1 spikes exactly
    assert_same_array(to_numpy(got), rate, "weight 1/kernel, bias 0")


@pytest.mark.parametrize("dtype", [np.float32, np.int32], ids=["float", "int32"])
def test_fire_module_forward_equals_reference(dtype: type) -> None:
    v = np.array([[-1, 0, 1, 2], [3, 1, 0, 2]], dtype)
    threshold = np.array([0, 1, 1, 2], dtype)  # per neuron; ties must not fire
    got = hnn.Fire(surrogate="atan")(torch.from_numpy(v), torch.from_numpy(threshold))
    (expected,) = reference("Fire", {"surrogate": "atan"}, [v, threshold])
    assert_same_array(to_numpy(got), expected, "Fire spikes")
    assert_same_array(expected, np.array([[0, 0, 0, 0], [1, 0, 0, 0]], dtype), "strict")


# ---------------------------------------------------------------------------------------------
# 2. Export
# ---------------------------------------------------------------------------------------------
def hnnx_modules(model: nn.Module) -> dict[str, hnn.HnnxModule]:
    return {path: module for path, module in model.named_modules() if isinstance(module, hnn.HnnxModule)}


def check_exported_file(path: Path, model: nn.Module) -> onnx.ModelProto:
    """The file passes the full checker and holds exactly one hnnx node per hnnx module, named
    by the module path, with the module's attributes (all attributes written)."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    nodes = [node for node in proto.graph.node if node.domain == hnnx.ops.DOMAIN]
    modules = hnnx_modules(model)
    assert sorted(node.name for node in nodes) == sorted(modules), "one hnnx node per module, by module path"
    for node in nodes:
        module = modules[node.name]
        assert node.op_type == module.op.name
        written = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        written = {k: v.decode() if isinstance(v, bytes) else v for k, v in written.items()}
        resolved = module.op.resolve(dict(module.attrs), node.name)
        assert written == {k: v for k, v in resolved.items() if v is not None}, node.name
        for key, value in module.attrs.items():  # the module's own arguments, as given
            expected = float(np.float32(value)) if isinstance(value, float) else value
            assert written[key] == expected, (node.name, key)
    assert {(f.name, f.overload) for f in proto.functions} == {(n.op_type, n.overload) for n in nodes}
    return proto


class SpikesOnly(nn.Module):
    """hnnx ops (and the reshapes between them) only: outputs must match bit for bit."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = hnn.A2S(steps=6, coding="rate", seed=17)
        self.lif = hnn.LIF(threshold=0.5, alpha=0.875, reset_mode="soft", surrogate="sigmoid")
        self.adaptive = hnn.LIF(outputs=4, threshold=0.3, theta_alpha=0.5, theta_increment=0.25, refractory=1)
        self.pool = hnn.S2A(decoding="rate", window=3, kernel=2, stride=1)
        self.mean = hnn.S2A(decoding="global")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        spikes = self.encode(x.flatten(1)).reshape(6, *x.shape)  # [T, N, C, F]
        s1 = self.lif(spikes)
        s2, v, theta, refractory = self.adaptive(s1)
        return s1, self.pool(s2), self.mean(s1), v, theta, refractory


class TimeMajor(nn.Module):
    """A time-major float input and an int32 integer-mode input, learnable S2A shared row."""

    def __init__(self) -> None:
        super().__init__()
        self.neuron = hnn.IF(threshold=1.0, refractory=1)
        self.readout = hnn.S2A(decoding="learnable", num_windows=1, window=2, kernel=2, padding=1, stride=1)
        self.chip = hnn.LIF(mode="integer", threshold=40, alpha=0.75, beta=-2, state_bits=16)
        self.chip_rate = hnn.S2A(decoding="global")
        with torch.no_grad():
            self.readout.weight.copy_(torch.tensor([[0.75, -0.5]]))
            self.readout.bias.fill_(0.125)

    def forward(self, current: torch.Tensor, icurrent: torch.Tensor) -> tuple[torch.Tensor, ...]:
        spikes = self.neuron(current)
        chip_spikes = self.chip(icurrent)
        return spikes, self.readout(spikes), chip_spikes, self.chip_rate(chip_spikes.float())


def test_export_hnnx_only_model_is_bit_exact_and_dynamic(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SpikesOnly()
    example = torch.rand(3, 2, 5)
    path = tmp_path / "spikes.onnx"
    returned = hnn.export(model, (example,), path, input_names=["x"])
    proto = check_exported_file(path, model)
    # besides the hnnx nodes only shape plumbing (no arithmetic that could round differently)
    plumbing = {"Reshape", "Flatten", "Shape", "Slice", "Concat", "Constant", "Squeeze", "Unsqueeze", "Gather",
                "Identity"}
    assert {n.op_type for n in proto.graph.node if n.domain != hnnx.ops.DOMAIN} <= plumbing
    assert returned.graph.input[0].name == "x"
    session = ort_session(proto)
    for batch in (3, 1, 7):  # the example batch and two others
        x = torch.from_numpy(np.random.default_rng(batch).random((batch, 2, 5), np.float32))
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, {"x": x.numpy()})
        assert len(got) == len(expected)
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same_array(a, to_numpy(b), f"batch {batch}, output {index}")
        assert got[0].shape == (6, batch, 2, 5)


def test_export_time_major_inputs_run_at_other_t_and_n(tmp_path: Path) -> None:
    model = TimeMajor()
    rng = np.random.default_rng(0)

    def inputs(steps: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        current = rng.normal(0.4, 0.6, size=(steps, batch, 3)).astype(np.float32)
        icurrent = rng.integers(-20, 60, size=(steps, batch, 3)).astype(np.int32)
        return torch.from_numpy(current), torch.from_numpy(icurrent)

    path = tmp_path / "time_major.onnx"
    hnn.export(model, inputs(4, 2), path, input_names=["current", "icurrent"], time_major_inputs=[0, 1])
    proto = check_exported_file(path, model)
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    assert dims == [["T", "N", 3], ["T", "N", 3]]
    assert proto.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT32
    session = ort_session(proto)
    for steps, batch in ((4, 2), (10, 5), (2, 1)):
        current, icurrent = inputs(steps, batch)
        with torch.no_grad():
            expected = model(current, icurrent)
        got = session.run(None, {"current": current.numpy(), "icurrent": icurrent.numpy()})
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same_array(a, to_numpy(b), f"T={steps} N={batch}, output {index}")
        # window 2, kernel 2, padding 1, stride 1: L = (2 + 2 − 2)/1 + 1 = 3 frames per window
        assert got[1].shape == (steps // 2 * 3, batch, 3)
        assert got[2].dtype == np.int32 and got[2].any()


class WithLayers(nn.Module):
    """Conv/Linear layers around the hnnx modules: float results within rounding."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.encode = hnn.A2S(steps=8, coding="learnable", activation="relu")
        self.hidden = hnn.TimeFold(nn.Linear(64 * 4, 32))
        self.lif = hnn.LIF(threshold=0.5, alpha=0.9, surrogate="atan", surrogate_width=2.0)
        self.window = hnn.S2A(decoding="learnable", num_windows=2, window=4, kernel=2, stride=2, activation="relu")
        self.head = nn.Linear(4 * 32, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        frames = self.window(self.lif(self.hidden(self.encode(self.front(pixels)))))  # [4, N, 32]
        return self.head(frames.permute(1, 0, 2).flatten(1))


def test_export_with_layers_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = WithLayers()
    with torch.no_grad():
        model.encode.weight.copy_(torch.linspace(0.5, 1.5, 8))
        model.window.bias.copy_(torch.tensor([0.1, -0.1]))
    digits = load_digits()
    pixels = torch.from_numpy(digits.x_test[:64].reshape(-1, 1, 8, 8))
    path = tmp_path / "layers.onnx"
    hnn.export(model, (pixels[:2],), path, input_names=["pixels"], output_names=["scores"])
    proto = check_exported_file(path, model)
    assert {n.op_type for n in proto.graph.node} >= {"Conv", "Gemm", "A2S", "LIF", "S2A"}
    with torch.no_grad():
        expected = to_numpy(model(pixels))
    (got,) = ort_session(proto).run(None, {"pixels": pixels.numpy()})  # N = 64, exported with N = 2
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert_same_array(got.argmax(1), expected.argmax(1), "argmax")
    assert np.unique(expected.argmax(1)).size > 1, "scores are not degenerate"


def test_export_fire_module(tmp_path: Path) -> None:
    class Neuron(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fire = hnn.Fire(surrogate="sigmoid", surrogate_width=0.5)

        def forward(self, v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
            return self.fire(v, threshold)

    model = Neuron()
    v = torch.tensor([[0.25, 0.5, 0.75], [1.0, 0.5, -1.0]])
    threshold = torch.tensor([0.5, 0.5, 0.5])
    path = tmp_path / "fire.onnx"
    hnn.export(model, (v, threshold), path, input_names=["v", "threshold"], dynamic=False)
    proto = check_exported_file(path, model)
    (got,) = ort_session(proto).run(None, {"v": v.numpy(), "threshold": threshold.numpy()})
    (expected,) = reference("Fire", {}, [v.numpy(), threshold.numpy()])
    assert_same_array(got, expected, "Fire via onnxruntime")


def test_export_without_path_returns_checked_model_and_leaves_eval_mode() -> None:
    model = nn.Sequential(hnn.A2S(steps=3), hnn.LIF(threshold=0.5))
    model.train()
    proto = hnn.export(model, (torch.rand(2, 4),), None, input_names=["x"])
    onnx.checker.check_model(proto, full_check=True)
    assert sorted(n.name for n in proto.graph.node if n.domain == hnnx.ops.DOMAIN) == ["0", "1"]
    assert not model.training


# ---------------------------------------------------------------------------------------------
# 3. Gradients
# ---------------------------------------------------------------------------------------------
def surrogate_formula(kind: str, width: float, x: np.ndarray) -> np.ndarray:
    """The documented pseudo-derivatives g(x), x = v − θ, in float64."""
    x = x.astype(np.float64)
    if kind == "rectangle":
        return np.where(np.abs(x) < width / 2, 1.0 / width, 0.0)
    if kind == "sigmoid":
        sig = 1.0 / (1.0 + np.exp(-4.0 * x / width))
        return (4.0 / width) * sig * (1.0 - sig)
    return (1.0 / width) / (1.0 + (math.pi * x / width) ** 2)


OFFSETS = np.array([-2.0, -1.0, -0.5, -0.25, -0.125, 0.0, 0.0625, 0.25, 0.5, 0.75, 1.0, 3.0], np.float32)


@pytest.mark.parametrize("width", [0.5, 2.0])
@pytest.mark.parametrize("kind", ["rectangle", "sigmoid", "atan"])
def test_lif_one_step_surrogate_gradient(kind: str, width: float) -> None:
    threshold = np.float32(0.5)
    current = torch.from_numpy((threshold + OFFSETS)[None, None, :]).requires_grad_()  # [T=1, N=1, M]
    spikes = hnn.LIF(threshold=float(threshold), surrogate=kind, surrogate_width=width)(current)
    spikes.sum().backward()
    # v1 = 0 + u; x = v1 − θ exactly as the float32 op computes it
    x = (threshold + OFFSETS) - threshold
    expected = surrogate_formula(kind, width, x)
    # float32 evaluation: σ(1 − σ) loses a few digits where σ nears 1
    np.testing.assert_allclose(to_numpy(current.grad)[0, 0], expected, rtol=1e-4, atol=1e-7)
    assert_same_array(to_numpy(spikes)[0, 0], (x > 0).astype(np.float32), "forward is the strict Heaviside")
    if kind == "rectangle":  # exact 1/w inside, exact 0 on and beyond the edges |x| = w/2
        assert set(np.unique(to_numpy(current.grad))) <= {0.0, np.float32(1 / width)}


@pytest.mark.parametrize("kind", ["rectangle", "sigmoid", "atan"])
def test_fire_surrogate_gradient(kind: str) -> None:
    v = torch.from_numpy(OFFSETS.copy()).requires_grad_()
    threshold = torch.tensor(0.0, requires_grad=True)
    hnn.Fire(surrogate=kind, surrogate_width=0.5)(v, threshold).sum().backward()
    expected = surrogate_formula(kind, 0.5, OFFSETS)
    np.testing.assert_allclose(to_numpy(v.grad), expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(threshold.grad), -expected.sum(), rtol=1e-4)  # ∂s/∂θ = −g


def test_surrogates_are_per_module() -> None:
    """Two LIF modules with different surrogates in one model each use their own."""
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.narrow = hnn.LIF(threshold=0.5, surrogate="rectangle", surrogate_width=0.5)
            self.wide = hnn.LIF(threshold=0.5, surrogate="atan", surrogate_width=2.0)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.wide(b), self.narrow(a)  # wide runs first: no state may leak to narrow

    current = (np.float32(0.5) + OFFSETS)[None, None, :]
    a = torch.from_numpy(current.copy()).requires_grad_()
    b = torch.from_numpy(current.copy()).requires_grad_()
    wide, narrow = Two()(a, b)
    (wide + narrow).sum().backward()
    x = current[0, 0] - np.float32(0.5)
    np.testing.assert_allclose(to_numpy(a.grad)[0, 0], surrogate_formula("rectangle", 0.5, x), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(to_numpy(b.grad)[0, 0], surrogate_formula("atan", 2.0, x), rtol=1e-4, atol=1e-7)


def test_multi_step_lif_gradient_reaches_earlier_steps() -> None:
    """The membrane carries the gradient back in time: an early current influences later spikes."""
    current = torch.full((4, 1, 1), 0.3, requires_grad=True)
    spikes = hnn.LIF(threshold=1.0, alpha=0.9, surrogate="atan")(current)
    assert to_numpy(spikes)[:, 0, 0].tolist() == [0, 0, 0, 1]  # v1 = 0.3, 0.57, 0.813, 1.0317
    spikes[-1].sum().backward()
    # ∂v1(3)/∂u(t) = 0.9^(3−t): every step before the spike gets a positive gradient
    grad = to_numpy(current.grad)[:, 0, 0]
    assert (grad > 0).all() and grad[0] < grad[1] < grad[2] < grad[3]


def test_learnable_a2s_gradients() -> None:
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(3, 2, 2)).astype(np.float32)
    upstream = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    module = hnn.A2S(4, "learnable")
    x = torch.from_numpy(x_np).requires_grad_()
    (module(x) * torch.from_numpy(upstream)).sum().backward()
    # y[t] = w[t]·x + b[t]: ∂L/∂w[t] = Σ up[t]·x, ∂L/∂b[t] = Σ up[t], ∂L/∂x = Σ_t up[t]·w[t] (w = 1)
    np.testing.assert_allclose(to_numpy(module.weight.grad), (upstream * x_np).sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(module.bias.grad), upstream.sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(x.grad), upstream.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_learnable_s2a_gradients() -> None:
    rng = np.random.default_rng(1)
    window, kernel, stride, padding, windows = 4, 3, 1, 1, 2
    per_window = (window + 2 * padding - kernel) // stride + 1
    x_np = (rng.random((window * windows, 2, 3)) < 0.5).astype(np.float32)
    upstream = rng.normal(size=(windows * per_window, 2, 3)).astype(np.float32)
    module = hnn.S2A("learnable", num_windows=windows, window=window, kernel=kernel, stride=stride, padding=padding)
    (module(torch.from_numpy(x_np)) * torch.from_numpy(upstream)).sum().backward()
    expected_w = np.zeros((windows, kernel))
    expected_b = np.zeros(windows)
    for j in range(windows):
        for l in range(per_window):
            expected_b[j] += upstream[j * per_window + l].sum()
            for k in range(kernel):
                index = l * stride + k - padding
                if 0 <= index < window:
                    expected_w[j, k] += (upstream[j * per_window + l] * x_np[j * window + index]).sum()
    np.testing.assert_allclose(to_numpy(module.weight.grad), expected_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(module.bias.grad), expected_b, rtol=1e-5, atol=1e-6)


def test_sign_converter_passes_gradient_straight_through() -> None:
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 3.0]], requires_grad=True)
    hnn.A2S(3, converter="sign")(x).sum().backward()
    assert_same_array(to_numpy(x.grad), np.full((1, 5), 3.0, np.float32), "3 steps, each passes 1")
    # learnable coding + sign trains (in the original HNN the sign's zero gradient froze it)
    module = hnn.A2S(3, "learnable", converter="sign")
    module(torch.tensor([[1.0, -2.0]])).sum().backward()
    assert_same_array(to_numpy(module.weight.grad), np.full(3, -1.0, np.float32), "Σ x = 1 − 2")
    assert_same_array(to_numpy(module.bias.grad), np.full(3, 2.0, np.float32), "two elements")


def test_round_converter_gradient_is_zero_outside_the_clamp_range() -> None:
    # bits 3: range [−4, 3]
    x = torch.tensor([[-10.0, -4.5, -4.0, -1.2, 0.0, 2.6, 3.0, 3.2, 9.0]], requires_grad=True)
    y = hnn.A2S(2, converter="round", bits=3)(x)
    assert_same_array(to_numpy(y)[0], np.array([[-4, -4, -4, -1, 0, 3, 3, 3, 3]], np.float32), "forward")
    y.sum().backward()
    assert_same_array(to_numpy(x.grad), np.array([[0, 0, 2, 2, 2, 2, 2, 0, 0]], np.float32), "inside only")


def test_rate_coding_passes_gradient_straight_to_the_input() -> None:
    rng = np.random.default_rng(2)
    steps = 5
    upstream = torch.from_numpy(rng.normal(size=(steps, 2, 6)).astype(np.float32))
    # clip: p = x inside (0, 1), so ∂L/∂x = Σ_t upstream
    x = torch.from_numpy(rng.uniform(0.05, 0.95, size=(2, 6)).astype(np.float32)).requires_grad_()
    (hnn.A2S(steps, "rate", normalize="clip")(x) * upstream).sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), to_numpy(upstream.sum(0)), rtol=1e-6)
    # minmax: the gradient of the spikes is that of p = (x − min) / (max − min) (straight through)
    x_np = rng.normal(size=(2, 6)).astype(np.float32)
    x = torch.from_numpy(x_np).requires_grad_()
    (hnn.A2S(steps, "rate")(x) * upstream).sum().backward()
    x_ref = torch.from_numpy(x_np).requires_grad_()
    low, high = x_ref.amin(1, keepdim=True), x_ref.amax(1, keepdim=True)
    ((x_ref - low) / (high - low) * upstream).sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), to_numpy(x_ref.grad), rtol=1e-5, atol=1e-6)
    assert np.abs(to_numpy(x.grad)).sum() > 0


def test_gradients_reach_every_parameter_of_a_hybrid_model() -> None:
    torch.manual_seed(0)
    model = WithLayers()
    pixels = torch.from_numpy(load_digits().x_train[:16].reshape(-1, 1, 8, 8))
    nn.functional.cross_entropy(model(pixels), torch.arange(16) % 10).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"


# ---------------------------------------------------------------------------------------------
# 4. The digits examples
# ---------------------------------------------------------------------------------------------
def example_classes() -> dict[str, Callable[[], nn.Module]]:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from hybrid_a2s import HybridA2S
    from hybrid_s2a import HybridS2A
    from snn_conv import SpikingConvNet
    from snn_mlp import SpikingMLP

    return {"snn_mlp": SpikingMLP, "snn_conv": SpikingConvNet, "hybrid_a2s": HybridA2S, "hybrid_s2a": HybridS2A}


@pytest.mark.parametrize("example", ["snn_mlp", "snn_conv", "hybrid_a2s", "hybrid_s2a"])
def test_example_model_trains_exports_and_runs_like_torch(example: str, tmp_path: Path) -> None:
    build = example_classes()[example]
    from common import train  # examples/common.py, on sys.path after example_classes()

    digits = load_digits()
    layout = (-1, 64) if example == "snn_mlp" else (-1, 1, 8, 8)
    x_train = torch.from_numpy(digits.x_train[:512].reshape(layout))
    y_train = torch.from_numpy(digits.y_train[:512])
    x_test = torch.from_numpy(digits.x_test.reshape(layout))
    torch.manual_seed(0)
    model = build()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train(model, x_train, y_train, epochs=1)  # one short epoch: trained weights, still fast
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())
    path = tmp_path / f"{example}.onnx"
    hnn.export(model, (x_test[:4],), path, input_names=["pixels"], output_names=["scores"])
    proto = check_exported_file(path, model)
    with torch.no_grad():
        expected = to_numpy(model(x_test))
    (got,) = ort_session(proto).run(None, {"pixels": x_test.numpy()})
    assert got.shape == (len(x_test), 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    agreement = float(np.mean(got.argmax(1) == expected.argmax(1)))
    assert agreement >= 0.99, agreement
    # the comparison means something: the scores separate the samples
    assert np.unique(expected.argmax(1)).size > 1 and expected.std() > 0


# ---------------------------------------------------------------------------------------------
# 5. Errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("leak", [{"alpha": 0.9}, {"beta": 0.1}, {"alpha": 1.0}])
def test_if_with_leak_raises(leak: dict[str, float]) -> None:
    with pytest.raises(HnnxError, match="leak"):
        hnn.IF(threshold=1.0, **leak)


@pytest.mark.parametrize("build, attribute", [
    (lambda: hnn.LIF(alpha=1.5), "alpha"),
    (lambda: hnn.LIF(threshold="high"), "threshold"),
    (lambda: hnn.LIF(reset_mode="sideways"), "reset_mode"),
    (lambda: hnn.LIF(surrogate="relu"), "surrogate"),
    (lambda: hnn.LIF(mode="integer", threshold=0.5), "threshold"),
    (lambda: hnn.LIF(thresold=1.0), "thresold"),
    (lambda: hnn.Fire(surrogate_width=0.0), "surrogate_width"),
    (lambda: hnn.A2S(0), "steps"),
    (lambda: hnn.A2S(3, "rate", seed=-1), "seed"),
    (lambda: hnn.A2S(3, converter="round", bits=30), "bits"),
    (lambda: hnn.A2S(3, "poisson"), "coding"),
    (lambda: hnn.S2A("rate", window=3, kernel=4), "kernel"),
    (lambda: hnn.S2A("rate", window=4, padding=1), "padding"),
    (lambda: hnn.S2A("mean"), "decoding"),
], ids=["alpha", "threshold-type", "reset-mode", "surrogate", "integer-fraction", "unknown", "fire-width",
        "steps", "seed", "bits", "coding", "kernel", "padding", "decoding"])
def test_bad_attribute_raises_node_error_at_construction(build: Callable[[], nn.Module], attribute: str) -> None:
    with pytest.raises(NodeError, match=attribute):
        build()


@pytest.mark.parametrize("num_windows", [None, 0, -1])
def test_learnable_s2a_needs_num_windows(num_windows: int | None) -> None:
    with pytest.raises(HnnxError, match="num_windows"):
        hnn.S2A("learnable", num_windows=num_windows, window=3)


@pytest.mark.parametrize("outputs", [0, 5])
def test_lif_outputs_out_of_range_raises(outputs: int) -> None:
    with pytest.raises(HnnxError, match="outputs"):
        hnn.LIF(outputs=outputs)


def test_export_failure_is_an_hnnx_error(tmp_path: Path) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow cannot be exported
                return x
            return -x

    with pytest.raises(HnnxError, match="export failed"):
        hnn.export(Broken(), (torch.rand(2, 3),), tmp_path / "broken.onnx")
    assert not (tmp_path / "broken.onnx").exists()
