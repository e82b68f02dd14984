"""Tests of the Hybrid Unit ops ``hnnx.A2S`` and ``hnnx.S2A``.

Every case runs through an independent reference written here from the op docstrings
(plain Python loops over samples, steps and elements; the counter-based generator
re-implemented on Python ints), ``hnnx.ops.run_reference``, onnxruntime on the function
bodies (after ``attach_functions``, full checker, strict shape inference),
``onnx.reference`` with the hnnx kernels and ``onnx.reference`` on the function bodies;
all must agree bit for bit. Then: the HU shape cases of hnn_spec §4.4 in hnnx's
time-major layout, properties of rate coding, and attribute/port validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import hnnx.frontends.torch as hnn
import hnnx.ops
from conftest import (assert_same_array, build_model, inferred_output_types, run_model_both_ways,
                      run_onnxruntime, single_node_model)
from hnnx.errors import NodeError

FLOAT = TensorProto.FLOAT
U32 = 0xFFFFFFFF

# Attribute defaults as documented in the attribute tables (written out, not read from hnnx).
A2S_DEFAULTS: dict[str, Any] = {"coding": "direct", "normalize": "minmax", "seed": 0, "activation": "none",
                                "converter": "identity", "bits": 8}
S2A_DEFAULTS: dict[str, Any] = {"decoding": "rate", "mode": "float", "window": 1, "kernel": 0, "stride": 0,
                                "padding": 0, "activation": "none"}


# ---------------------------------------------------------------------------------------------
# The independent reference (docstrings of A2S / S2A, one element at a time)
# ---------------------------------------------------------------------------------------------
def lowbias32(z: int) -> int:
    """``z ^= z>>16; z *= 0x7FEB352D; z ^= z>>15; z *= 0x846CA68B; z ^= z>>16`` on uint32."""
    z &= U32
    z ^= z >> 16
    z = (z * 0x7FEB352D) & U32
    z ^= z >> 15
    z = (z * 0x846CA68B) & U32
    z ^= z >> 16
    return z


def counter_uniform(seed: int, t: int, i: int) -> float:
    """``u[t, i] = (mix32(mix32(key ^ t) ^ mix32(i)) >> 8) · 2^−24``, ``key = mix32(seed + 0x9E3779B9)``.

    The value has 24 significant bits, so this Python float equals the float32 exactly.
    """
    key = lowbias32((seed + 0x9E3779B9) & U32)
    r = lowbias32(lowbias32(key ^ t) ^ lowbias32(i))
    return (r >> 8) * 2.0**-24


def reference_a2s(attrs: dict[str, Any], x: np.ndarray, weight: np.ndarray | None = None,
                  bias: np.ndarray | None = None) -> np.ndarray:
    """A2S by the docstring: coding, then activation, then converter, per (t, n, i)."""
    a = {**A2S_DEFAULTS, **attrs}
    steps, batch, sample_shape = a["steps"], x.shape[0], x.shape[1:]
    elements = math.prod(sample_shape)
    flat = x.reshape(batch, elements)
    y = np.zeros((steps, batch, elements), np.float32)
    for n in range(batch):
        values = [np.float32(v) for v in flat[n]]
        p: list[np.float32] = []
        if a["coding"] == "rate" and a["normalize"] == "minmax":
            low, high = min(values, default=np.float32(0)), max(values, default=np.float32(0))
            # 0 where the sample is constant (no NaN from 0/0)
            p = [np.float32((v - low) / (high - low)) if high > low else np.float32(0) for v in values]
        elif a["coding"] == "rate":
            p = [min(max(v, np.float32(0)), np.float32(1)) for v in values]
        for t in range(steps):
            for i, v in enumerate(values):
                if a["coding"] == "direct":
                    out = v
                elif a["coding"] == "learnable":
                    out = np.float32(weight[t]) * v
                    if bias is not None:
                        out = out + np.float32(bias[t])
                else:
                    out = np.float32(1.0 if counter_uniform(a["seed"], t, i) < p[i] else 0.0)
                if a["activation"] == "relu":
                    out = max(out, np.float32(0))
                if a["converter"] == "sign":
                    out = np.float32(int(out > 0) - int(out < 0))
                elif a["converter"] == "round":
                    limit = 2 ** (a["bits"] - 1)
                    out = np.float32(min(max(round(float(out)), -limit), limit - 1))  # round(): half to even
                y[t, n, i] = out
    return y.reshape(steps, batch, *sample_shape)


def s2a_geometry(attrs: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """``(window, K, s, padding, L)`` with ``L = floor((window + 2·padding − K)/s) + 1``."""
    a = {**S2A_DEFAULTS, **attrs}
    window = a["window"]
    kernel = a["kernel"] or window
    stride = a["stride"] or kernel
    return window, kernel, stride, a["padding"], (window + 2 * a["padding"] - kernel) // stride + 1


def reference_s2a(attrs: dict[str, Any], x: np.ndarray, weight: np.ndarray | None = None,
                  bias: np.ndarray | None = None) -> np.ndarray:
    """S2A by the docstring: sums in index order in float32, per (output step, element)."""
    a = {**S2A_DEFAULTS, **attrs}
    steps, rest = x.shape[0], x.shape[1:]
    flat = x.reshape(steps, math.prod(rest))
    relu = a["activation"] == "relu"
    if a["decoding"] == "global":
        out = np.zeros(flat.shape[1], np.float32)
        for m in range(flat.shape[1]):
            total = np.float32(0)
            for t in range(steps):
                total = total + flat[t, m]
            mean = total / np.float32(steps)
            out[m] = max(mean, np.float32(0)) if relu else mean
        return out.reshape(rest)
    window, kernel, stride, padding, per_window = s2a_geometry(a)
    windows = steps // window
    out = np.zeros((windows * per_window, flat.shape[1]), np.float32)
    for j in range(windows):
        for l in range(per_window):
            for m in range(flat.shape[1]):
                total = np.float32(0)
                if a["decoding"] == "rate":
                    for k in range(kernel):
                        total = total + flat[j * window + l * stride + k, m]
                    value = total / np.float32(kernel)
                else:
                    row = weight[j if weight.shape[0] > 1 else 0]
                    for k in range(kernel):
                        index = l * stride + k - padding
                        if 0 <= index < window:  # outside: zero padding contributes nothing
                            total = total + np.float32(row[k]) * flat[j * window + index, m]
                    value = total
                    if bias is not None:
                        value = value + np.float32(bias[j if bias.shape[0] > 1 else 0])
                out[j * per_window + l, m] = max(value, np.float32(0)) if relu else value
    return out.reshape(windows * per_window, *rest)


# ---------------------------------------------------------------------------------------------
# Running one node on every path
# ---------------------------------------------------------------------------------------------
def run_function_bodies(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``onnx.reference`` evaluating the model-local function bodies (no hnnx kernels)."""
    return ReferenceEvaluator(model).run(None, feeds)


def run_hybrid(op: str, attrs: dict[str, Any], x: np.ndarray, weight: np.ndarray | None = None,
               bias: np.ndarray | None = None, name: str = "hu") -> np.ndarray:
    """Run one A2S/S2A node through the independent reference, ``run_reference``, onnxruntime,
    ``onnx.reference`` (hnnx kernels and function bodies); assert bit-exact agreement and the
    inferred output type; return the output."""
    feeds = {"x": x, **({"weight": weight} if weight is not None else {}),
             **({"bias": bias} if bias is not None else {})}
    inputs = ["x", "weight" if weight is not None else "", "bias" if bias is not None else ""]
    while inputs[-1] == "":
        inputs.pop()
    node = hnnx.ops.make_node(op, inputs, ["y"], name=name, **attrs)
    reference = reference_a2s if op == "A2S" else reference_s2a
    expected = reference(attrs, x, weight, bias)

    (from_reference,) = hnnx.ops.run_reference(node, x, weight, bias)
    assert_same_array(from_reference, expected, f"{op} run_reference vs independent reference")

    # single_node_model: full checker, and strict shape inference must give y's exact type
    model = single_node_model(node, feeds, {"y": (FLOAT, expected.shape)})
    (from_model,) = run_model_both_ways(model, feeds)  # onnxruntime == ReferenceEvaluator(new_ops)
    assert_same_array(from_model, expected, f"{op} onnxruntime vs independent reference")
    (from_bodies,) = run_function_bodies(model, feeds)
    assert_same_array(from_bodies, expected, f"{op} onnx.reference on the function body vs independent reference")
    return from_model


# ---------------------------------------------------------------------------------------------
# 1. Every coding / mode against the independent reference
# ---------------------------------------------------------------------------------------------
def halves(rng: np.random.Generator, shape: tuple[int, ...], span: int) -> np.ndarray:
    """Multiples of 0.5 in [−span, span): exact ties for the round-half-to-even converter."""
    return (rng.integers(-2 * span, 2 * span, size=shape) / 2).astype(np.float32)


@dataclass
class A2SCase:
    attrs: dict[str, Any]
    shape: tuple[int, ...]
    values: str = "normal"  # normal | halves | unit (U[−0.5, 1.5)) | zeros_mixed
    learnable_bias: bool | None = None  # None: not learnable


A2S_CASES = {
    "direct": A2SCase({"steps": 3}, (2, 5)),
    "direct-multidim": A2SCase({"steps": 2, "coding": "direct"}, (2, 3, 2, 2)),
    "direct-relu": A2SCase({"steps": 3, "activation": "relu"}, (3, 4)),
    "direct-sign": A2SCase({"steps": 2, "converter": "sign"}, (2, 6), "zeros_mixed"),
    "direct-relu-sign": A2SCase({"steps": 2, "activation": "relu", "converter": "sign"}, (2, 6), "zeros_mixed"),
    "direct-round4": A2SCase({"steps": 2, "converter": "round", "bits": 4}, (3, 8), "halves"),
    "direct-round2": A2SCase({"steps": 2, "converter": "round", "bits": 2}, (2, 8), "halves"),
    "direct-round24": A2SCase({"steps": 1, "converter": "round", "bits": 24}, (2, 8), "halves"),
    "direct-relu-round3": A2SCase({"steps": 2, "activation": "relu", "converter": "round", "bits": 3},
                                  (2, 8), "halves"),
    "rate-minmax": A2SCase({"steps": 6, "coding": "rate"}, (3, 4, 5)),
    "rate-minmax-seed": A2SCase({"steps": 5, "coding": "rate", "normalize": "minmax", "seed": 12345}, (2, 2, 3)),
    "rate-minmax-seed-max": A2SCase({"steps": 4, "coding": "rate", "seed": 2**32 - 1}, (2, 7)),
    "rate-minmax-seed-high-bit": A2SCase({"steps": 4, "coding": "rate", "seed": 0xDEADBEEF}, (2, 7)),
    # rank 1: every sample is one element (minmax would make it constant, so clip)
    "rate-clip-rank1": A2SCase({"steps": 6, "coding": "rate", "normalize": "clip"}, (6,), "unit"),
    "rate-minmax-sign": A2SCase({"steps": 5, "coding": "rate", "activation": "relu", "converter": "sign"}, (2, 9)),
    "rate-clip": A2SCase({"steps": 8, "coding": "rate", "normalize": "clip", "seed": 7}, (3, 2, 4), "unit"),
    "rate-clip-round2": A2SCase({"steps": 4, "coding": "rate", "normalize": "clip", "converter": "round",
                                 "bits": 2}, (2, 5), "unit"),
    "learnable-bias": A2SCase({"steps": 4, "coding": "learnable"}, (2, 3, 2), learnable_bias=True),
    "learnable-no-bias": A2SCase({"steps": 3, "coding": "learnable"}, (3, 4), learnable_bias=False),
    "learnable-relu": A2SCase({"steps": 3, "coding": "learnable", "activation": "relu"}, (2, 5),
                              learnable_bias=True),
    "learnable-sign": A2SCase({"steps": 3, "coding": "learnable", "converter": "sign"}, (2, 5),
                              learnable_bias=True),
    "learnable-relu-round3": A2SCase({"steps": 3, "coding": "learnable", "activation": "relu",
                                      "converter": "round", "bits": 3}, (2, 6), learnable_bias=True),
    "learnable-round8": A2SCase({"steps": 2, "coding": "learnable", "converter": "round"}, (2, 6),
                                learnable_bias=False),
    "single-step": A2SCase({"steps": 1, "coding": "rate"}, (2, 3)),
}


def a2s_input(case: A2SCase, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    if case.values == "halves":
        x = halves(rng, case.shape, 12)
    elif case.values == "unit":
        x = rng.uniform(-0.5, 1.5, size=case.shape).astype(np.float32)
    elif case.values == "zeros_mixed":
        x = rng.integers(-2, 3, size=case.shape).astype(np.float32) * np.float32(0.75)
    else:
        x = rng.normal(0.0, 2.0, size=case.shape).astype(np.float32)
    if case.learnable_bias is None:
        return x, None, None
    steps = case.attrs["steps"]
    weight = rng.normal(0.0, 3.0, size=steps).astype(np.float32)
    bias = rng.normal(0.0, 2.0, size=steps).astype(np.float32) if case.learnable_bias else None
    return x, weight, bias


@pytest.mark.parametrize("case_id", list(A2S_CASES))
def test_a2s_agrees_with_independent_reference_on_all_paths(case_id: str) -> None:
    case = A2S_CASES[case_id]
    x, weight, bias = a2s_input(case, seed=len(case_id))
    y = run_hybrid("A2S", case.attrs, x, weight, bias)
    assert y.shape == (case.attrs["steps"], *case.shape)


@pytest.mark.parametrize("case_id", list(A2S_CASES))
def test_a2s_repeated_step_is_what_every_step_gives(case_id: str) -> None:
    """``A2S.repeated_step``: for direct coding, the node it describes (steps = 1) gives exactly what
    the node gives at every one of its steps; other codings, and a call coding part of the sequence
    (offset/count inputs), have none."""
    case = A2S_CASES[case_id]
    x, weight, bias = a2s_input(case, seed=len(case_id))
    decl = hnnx.ops.declaration("A2S")
    inputs = ["x"] + (["weight"] if weight is not None else []) + (["bias"] if bias is not None else [])
    node = hnnx.ops.make_node("A2S", inputs, ["y"], name="coder", **case.attrs)
    repeated = decl.repeated_step(decl.view(node))
    if decl.view(node).attrs["coding"] != "direct":
        assert repeated is None
        return
    assert repeated is not None
    steps, attrs = repeated
    assert steps == case.attrs["steps"]
    one = hnnx.ops.make_node("A2S", ["x"], ["y"], name="one", **{k: v for k, v in attrs.items() if v is not None})
    (step,) = hnnx.ops.run_reference(one, x)
    (every,) = hnnx.ops.run_reference(node, x)
    assert step.shape == (1, *x.shape)
    assert_same_array(every, np.repeat(step, steps, axis=0), "every step against the one step")
    partial = hnnx.ops.make_node("A2S", ["x", "", "", "offset"], ["y"], name="part", **case.attrs)
    assert decl.repeated_step(decl.view(partial)) is None


def test_a2s_cases_exercise_what_they_claim() -> None:
    """Agreement means something: rate cases both fire and stay silent, round cases hit ties
    and the clamp, sign cases produce −1, 0 and 1."""
    for case_id, case in A2S_CASES.items():
        x, weight, bias = a2s_input(case, seed=len(case_id))
        y = reference_a2s(case.attrs, x, weight, bias)
        if case.attrs.get("coding") == "rate" and case.attrs.get("converter", "identity") == "identity":
            assert set(np.unique(y)) == {0.0, 1.0}, case_id
        if case.attrs.get("converter") == "sign" and case.attrs.get("activation") != "relu" \
                and case.attrs.get("coding", "direct") == "direct":
            assert set(np.unique(y)) == {-1.0, 0.0, 1.0}, case_id
        if case.attrs.get("converter") == "round" and case.values == "halves":
            limit = 2 ** (case.attrs["bits"] - 1)
            low = 0 if case.attrs.get("activation") == "relu" else -limit
            if case.attrs["bits"] < 24:
                assert y.max() == limit - 1 and y.min() == low, case_id  # both clamps hit
            assert np.any(x != np.round(x)), case_id  # exact .5 ties present


def test_a2s_round_is_half_to_even_and_clamps() -> None:
    x = np.array([[-9.5, -8.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 6.5, 7.5, 100.0]], np.float32)
    y = run_hybrid("A2S", {"steps": 1, "converter": "round", "bits": 4}, x)
    # 4-bit signed: [−8, 7]; ties go to the even neighbour
    assert_same_array(y[0], np.array([[-8, -8, -2, -2, 0, 0, 2, 2, 6, 7, 7]], np.float32), "round 4 bits")


def test_a2s_sign_after_relu_and_direct_values() -> None:
    x = np.array([[-2.0, -0.0, 0.0, 0.25, 3.0]], np.float32)
    assert_same_array(run_hybrid("A2S", {"steps": 2, "converter": "sign"}, x),
                      np.array([[[-1, 0, 0, 1, 1]]] * 2, np.float32), "sign")
    assert_same_array(run_hybrid("A2S", {"steps": 2, "activation": "relu", "converter": "sign"}, x),
                      np.array([[[0, 0, 0, 1, 1]]] * 2, np.float32), "relu then sign")
    assert_same_array(run_hybrid("A2S", {"steps": 2, "activation": "relu"}, x),
                      np.array([[[0, 0, 0, 0.25, 3]]] * 2, np.float32), "relu")


def test_a2s_learnable_hand_values() -> None:
    x = np.array([[1.0, -2.0]], np.float32)
    weight, bias = np.array([2.0, -1.0, 0.5], np.float32), np.array([0.5, 0.0, -1.0], np.float32)
    # y[t] = w[t]·x + b[t]: [2.5, −3.5], [−1, 2], [−0.5, −2]
    assert_same_array(run_hybrid("A2S", {"steps": 3, "coding": "learnable"}, x, weight, bias),
                      np.array([[[2.5, -3.5]], [[-1.0, 2.0]], [[-0.5, -2.0]]], np.float32), "learnable")


def test_counter_uniform_matches_hnnx_generator_on_a_grid() -> None:
    """The Python-int re-implementation equals the field hnnx draws (via clip-coded thresholds):
    p = u[t, i] exactly gives no spike (u < p is strict), p = next float32 above gives a spike."""
    seed, steps, elements = 99, 3, 5
    u = np.array([[counter_uniform(seed, t, i) for i in range(elements)] for t in range(steps)], np.float32)
    assert np.all((u >= 0) & (u < 1))
    for t in range(steps):
        at = u[t][None, :]
        above = np.nextafter(at, np.float32(2))
        node = hnnx.ops.make_node("A2S", ["x"], ["y"], name="probe", steps=steps, coding="rate",
                                  normalize="clip", seed=seed)
        (y_at,) = hnnx.ops.run_reference(node, at)
        (y_above,) = hnnx.ops.run_reference(node, above)
        assert_same_array(y_at[t, 0], np.zeros(elements, np.float32), f"p = u at t={t}")
        assert_same_array(y_above[t, 0], np.ones(elements, np.float32), f"p just above u at t={t}")


def test_counter_uniform_equals_hnnx_field_and_fixed_point() -> None:
    """0 is lowbias32's fixed point (why the seed is offset by 0x9E3779B9 first); the
    Python-int field equals the one hnnx evaluates, including a seed that wraps."""
    from hnnx.ops.hybrid import numpy_uniform_field

    assert lowbias32(0) == 0
    for seed in (0, 1, 0x61C88647, 2**32 - 1):  # 0x61C88647 + 0x9E3779B9 wraps to exactly 0
        drawn = numpy_uniform_field(seed, 4, 6)
        mine = np.array([[counter_uniform(seed, t, i) for i in range(6)] for t in range(4)], np.float32)
        assert_same_array(drawn, mine, f"uniform field, seed {seed}")


@dataclass
class S2ACase:
    attrs: dict[str, Any]
    steps: int
    sample_shape: tuple[int, ...]
    values: str = "spikes"  # spikes (0/1) | signed ({−1, 0, 1}) | float
    weight_rows: int | None = None  # learnable: rows of weight
    bias_rows: int | None = None  # learnable: rows of bias (None: absent)


S2A_CASES = {
    "rate-window1": S2ACase({"decoding": "rate"}, 4, (2, 3)),
    "rate-window4": S2ACase({"decoding": "rate", "window": 4}, 8, (3, 2)),
    "rate-w4-k2-s2": S2ACase({"decoding": "rate", "window": 4, "kernel": 2, "stride": 2}, 12, (2, 3)),
    "rate-w5-k3-s1": S2ACase({"decoding": "rate", "window": 5, "kernel": 3, "stride": 1}, 10, (2, 2, 2)),
    "rate-w6-k4-s3": S2ACase({"decoding": "rate", "window": 6, "kernel": 4, "stride": 3}, 12, (2, 3)),
    "rate-w7-k2-s3": S2ACase({"decoding": "rate", "window": 7, "kernel": 2, "stride": 3}, 14, (2, 3)),
    "rate-window9": S2ACase({"decoding": "rate", "window": 9}, 9, (3, 2)),
    "rate-relu-signed": S2ACase({"decoding": "rate", "window": 3, "activation": "relu"}, 6, (2, 4), "signed"),
    "rate-float-inputs": S2ACase({"decoding": "rate", "window": 5, "kernel": 4, "stride": 1}, 10, (2, 3), "float"),
    "global": S2ACase({"decoding": "global"}, 7, (3, 4)),
    "global-multidim": S2ACase({"decoding": "global"}, 5, (2, 2, 3, 2)),
    "global-relu-signed": S2ACase({"decoding": "global", "activation": "relu"}, 6, (2, 5), "signed"),
    "learnable-w3-k3": S2ACase({"decoding": "learnable", "window": 3, "kernel": 3, "stride": 1}, 9, (2, 3),
                               weight_rows=3, bias_rows=3),
    "learnable-padding": S2ACase({"decoding": "learnable", "window": 4, "kernel": 3, "stride": 1, "padding": 1},
                                 8, (2, 2, 2), weight_rows=2),
    "learnable-padding-stride2": S2ACase({"decoding": "learnable", "window": 5, "kernel": 3, "stride": 2,
                                          "padding": 2}, 10, (2, 3), weight_rows=2, bias_rows=2),
    "learnable-shared-row": S2ACase({"decoding": "learnable", "window": 4, "kernel": 2, "stride": 2}, 12, (2, 3),
                                    weight_rows=1, bias_rows=1),
    "learnable-shared-bias": S2ACase({"decoding": "learnable", "window": 3}, 9, (2, 2), weight_rows=3, bias_rows=1),
    "learnable-kernel-in-padding": S2ACase({"decoding": "learnable", "window": 2, "kernel": 1, "padding": 2,
                                            "activation": "relu"}, 4, (2, 3), "signed", weight_rows=2,
                                           bias_rows=2),
    "learnable-float-inputs": S2ACase({"decoding": "learnable", "window": 4, "kernel": 4}, 8, (2, 3), "float",
                                      weight_rows=2, bias_rows=2),
}


def s2a_input(case: S2ACase, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    shape = (case.steps, *case.sample_shape)
    if case.values == "spikes":
        x = (rng.random(shape) < 0.4).astype(np.float32)
    elif case.values == "signed":
        x = rng.integers(-1, 2, size=shape).astype(np.float32)
    else:
        x = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    weight = bias = None
    if case.weight_rows is not None:
        kernel = s2a_geometry(case.attrs)[1]
        weight = rng.normal(0.0, 1.0, size=(case.weight_rows, kernel)).astype(np.float32)
        if case.bias_rows is not None:
            bias = rng.normal(0.0, 1.0, size=case.bias_rows).astype(np.float32)
    return x, weight, bias


def s2a_expected_shape(case: S2ACase) -> tuple[int, ...]:
    if case.attrs["decoding"] == "global":
        return case.sample_shape
    window, *_, per_window = s2a_geometry(case.attrs)
    return (case.steps // window * per_window, *case.sample_shape)


@pytest.mark.parametrize("case_id", list(S2A_CASES))
def test_s2a_agrees_with_independent_reference_on_all_paths(case_id: str) -> None:
    case = S2A_CASES[case_id]
    x, weight, bias = s2a_input(case, seed=len(case_id))
    y = run_hybrid("S2A", case.attrs, x, weight, bias)
    assert y.shape == s2a_expected_shape(case)


def test_s2a_rate_hand_values() -> None:
    # one element, T = 8, window 4, kernel 2, stride 2: windows [1,1,0,1] and [0,0,1,1]
    x = np.array([1, 1, 0, 1, 0, 0, 1, 1], np.float32).reshape(8, 1, 1)
    y = run_hybrid("S2A", {"window": 4, "kernel": 2, "stride": 2}, x)
    assert_same_array(y[:, 0, 0], np.array([1.0, 0.5, 0.0, 1.0], np.float32), "rate k2 s2")
    y = run_hybrid("S2A", {"window": 4}, x)
    assert_same_array(y[:, 0, 0], np.array([0.75, 0.5], np.float32), "one rate per window")
    y = run_hybrid("S2A", {"decoding": "global"}, x)
    assert_same_array(y, np.array([[0.625]], np.float32), "global")


def test_s2a_global_applies_relu() -> None:
    """The docstring applies ``activation`` after every mode, global included."""
    x = np.array([[-1.0, 1.0], [-1.0, 0.0]], np.float32)  # means −1 and 0.5
    assert_same_array(run_hybrid("S2A", {"decoding": "global", "activation": "relu"}, x),
                      np.array([0.0, 0.5], np.float32), "relu(global mean)")


def test_s2a_learnable_hand_values_with_padding() -> None:
    # window 3, kernel 3, stride 1, padding 1: outputs l = 0..2 see x[l−1], x[l], x[l+1]
    x = np.array([1, 0, 1], np.float32).reshape(3, 1, 1)
    weight = np.array([[1.0, 2.0, 4.0]], np.float32)
    bias = np.array([0.5], np.float32)
    y = run_hybrid("S2A", {"decoding": "learnable", "window": 3, "kernel": 3, "stride": 1, "padding": 1},
                   x, weight, bias)
    # l=0: 0·1 + 1·2 + 0·4 + .5 = 2.5; l=1: 1·1 + 0·2 + 1·4 + .5 = 5.5; l=2: 0·1 + 1·2 + 0 + .5 = 2.5
    assert_same_array(y[:, 0, 0], np.array([2.5, 5.5, 2.5], np.float32), "learnable padded")


def test_one_model_with_several_overloads_and_shared_bodies() -> None:
    """A2S → S2A chains and nodes sharing a FunctionProto (same structure, different seed or
    steps) each honour their own attributes."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    nodes = [
        hnnx.ops.make_node("A2S", ["x"], ["r1"], name="rate_a", steps=6, coding="rate", seed=1),
        hnnx.ops.make_node("A2S", ["x"], ["r2"], name="rate_b", steps=4, coding="rate", seed=2),
        hnnx.ops.make_node("A2S", ["x"], ["d"], name="direct", steps=6),
        hnnx.ops.make_node("S2A", ["r1"], ["g"], name="global", decoding="global"),
        hnnx.ops.make_node("S2A", ["r1"], ["w"], name="windows", decoding="rate", window=3),
        hnnx.ops.make_node("S2A", ["d"], ["w2"], name="windows2", decoding="rate", window=2, kernel=2),
    ]
    model = build_model(nodes, {"x": (FLOAT, (3, 4))},
                        {"r1": (FLOAT, (6, 3, 4)), "r2": (FLOAT, (4, 3, 4)), "g": (FLOAT, (3, 4)),
                         "w": (FLOAT, (2, 3, 4)), "w2": (FLOAT, (3, 3, 4))})
    assert sorted(f.overload for f in model.functions if f.name == "A2S") == ["direct-i1o1", "rate-minmax-i1o1"]
    r1, r2, g, w, w2 = run_model_both_ways(model, {"x": x})
    expected_r1 = reference_a2s({"steps": 6, "coding": "rate", "seed": 1}, x)
    assert_same_array(r1, expected_r1, "rate_a")
    assert_same_array(r2, reference_a2s({"steps": 4, "coding": "rate", "seed": 2}, x), "rate_b")
    assert_same_array(g, reference_s2a({"decoding": "global"}, expected_r1), "global")
    assert_same_array(w, reference_s2a({"window": 3}, expected_r1), "windows")
    assert_same_array(w2, reference_s2a({"window": 2}, np.repeat(x[None], 6, 0)), "windows2")
    assert_same_array(run_function_bodies(model, {"x": x})[0], r1, "function bodies")


# ---------------------------------------------------------------------------------------------
# 2. The HU shape cases of hnn_spec §4.4, time-major
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op, attrs, in_shape, out_shape, learnable", [
    # Poisson/rate coding T=5: [3,4,5,6] → [5,3,4,5,6] (the spec's [3,4,5,6,5], time first)
    ("A2S", {"steps": 5, "coding": "rate"}, (3, 4, 5, 6), (5, 3, 4, 5, 6), False),
    # per-window global rate, window 9, T=9 → one rate frame
    ("S2A", {"decoding": "rate", "window": 9}, (9, 3, 4), (1, 3, 4), False),
    # learnable: window 3, 3 windows, kernel 3, stride 1, padding 0 on T=9 → 3 frames
    ("S2A", {"decoding": "learnable", "window": 3, "kernel": 3, "stride": 1, "padding": 0}, (9, 3, 4), (3, 3, 4), True),
    # rate (window 4, kernel 2, stride 2) on T=12 → 6 frames
    ("S2A", {"decoding": "rate", "window": 4, "kernel": 2, "stride": 2}, (12, 3, 4), (6, 3, 4), False),
    # global mean over all steps → [N, ...]
    ("S2A", {"decoding": "global"}, (9, 3, 4), (3, 4), False),
], ids=["a2s-poisson-T5", "s2a-window9", "s2a-learnable-3x3", "s2a-rate-w4k2s2", "s2a-global"])
def test_spec_hu_shapes(op: str, attrs: dict[str, Any], in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                        learnable: bool) -> None:
    rng = np.random.default_rng(0)
    x = (rng.random(in_shape) < 0.5).astype(np.float32) if op == "S2A" else rng.random(in_shape, np.float32)
    weight = bias = None
    if learnable:
        weight, bias = rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    y = run_hybrid(op, attrs, x, weight, bias)  # also asserts the strictly inferred shape
    assert y.shape == out_shape


@pytest.mark.parametrize("op, attrs, in_dims, out_dims", [
    ("A2S", {"steps": 5, "coding": "rate"}, ("N", 4, 5), (5, "N", 4, 5)),
    ("A2S", {"steps": 2, "coding": "direct"}, ("N", "C"), (2, "N", "C")),
    ("S2A", {"decoding": "global"}, ("T", "N", 3), ("N", 3)),
    ("S2A", {"decoding": "rate", "window": 4, "kernel": 2, "stride": 2}, (12, "N", 3), (6, "N", 3)),
])
def test_symbolic_dims_are_kept(op: str, attrs: dict[str, Any], in_dims: tuple[Any, ...],
                                out_dims: tuple[Any, ...]) -> None:
    node = hnnx.ops.make_node(op, ["x"], ["y"], name="hu", **attrs)
    build_model([node], {"x": (FLOAT, in_dims)}, {"y": (FLOAT, out_dims)})


def test_symbolic_time_gives_unknown_windowed_length() -> None:
    """T symbolic: the number of output frames is unknown, the other dims are kept."""
    node = hnnx.ops.make_node("S2A", ["x"], ["y"], name="hu", decoding="rate", window=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", FLOAT, ["T", "N", 3])],
                              [helper.make_tensor_value_info("y", FLOAT, [None, "N", 3])])
    model = hnnx.ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    onnx.checker.check_model(model, full_check=True)
    elem, dims = inferred_output_types(model)["y"]
    # dim 0 is T/4 frames: not a known number, and not T itself (ONNX may name it freshly)
    assert elem == FLOAT and dims[1:] == ("N", 3) and isinstance(dims[0], str) and dims[0] != "T"


# ---------------------------------------------------------------------------------------------
# 3. Rate coding
# ---------------------------------------------------------------------------------------------
def rate_node(steps: int, seed: int, normalize: str = "minmax", name: str = "rate") -> onnx.NodeProto:
    return hnnx.ops.make_node("A2S", ["x"], ["y"], name=name, steps=steps, coding="rate", normalize=normalize,
                              seed=seed)


def rate_everywhere(x: np.ndarray, steps: int, seed: int, normalize: str = "minmax") -> np.ndarray:
    """Rate-coded spikes from numpy, onnxruntime, torch and ReferenceEvaluator (asserting all equal)."""
    node = rate_node(steps, seed, normalize)
    (from_numpy,) = hnnx.ops.run_reference(node, x)
    model = single_node_model(node, {"x": x}, {"y": (FLOAT, (steps, *x.shape))})
    (from_model,) = run_model_both_ways(model, {"x": x})
    from_torch = hnn.A2S(steps, "rate", normalize=normalize, seed=seed)(torch.from_numpy(x)).numpy()
    assert_same_array(from_model, from_numpy, "onnxruntime vs numpy")
    assert_same_array(from_torch, from_numpy, "torch vs numpy")
    assert_same_array(run_function_bodies(model, {"x": x})[0], from_numpy, "function body vs numpy")
    return from_numpy


def test_rate_coding_is_deterministic_across_runs_and_executors() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    first = rate_everywhere(x, 10, seed=42)
    assert_same_array(rate_everywhere(x, 10, seed=42), first, "second run")
    # a fresh session of the same model, run twice
    model = single_node_model(rate_node(10, 42), {"x": x}, {"y": (FLOAT, (10, 4, 3, 5))})
    for _ in range(2):
        assert_same_array(run_onnxruntime(model, {"x": x})[0], first, "repeated onnxruntime")
    assert_same_array(reference_a2s({"steps": 10, "coding": "rate", "seed": 42}, x), first, "independent")
    assert 0.1 < first.mean() < 0.9


def test_different_seed_changes_the_spikes() -> None:
    x = np.random.default_rng(2).normal(size=(3, 20)).astype(np.float32)
    a, b = rate_everywhere(x, 16, seed=0), rate_everywhere(x, 16, seed=1)
    differing = float(np.mean(a != b))
    # independent Bernoulli trains with p ~ 0.5 differ in about half the places
    assert differing > 0.2, differing
    # the rate itself stays about the same
    assert abs(a.mean() - b.mean()) < 0.1


def test_more_steps_extend_the_same_train() -> None:
    """u[t, i] depends on t, not on T: the first T steps of a longer run are the shorter run."""
    x = np.random.default_rng(3).normal(size=(2, 6)).astype(np.float32)
    assert_same_array(rate_everywhere(x, 12, seed=9)[:5], rate_everywhere(x, 5, seed=9), "prefix")


@pytest.mark.parametrize("normalize", ["minmax", "clip"])
def test_sample_spikes_do_not_depend_on_batch_or_position(normalize: str) -> None:
    rng = np.random.default_rng(4)
    batch = rng.uniform(-1, 2, size=(5, 2, 3)).astype(np.float32)
    together = rate_everywhere(batch, 8, seed=77, normalize=normalize)
    for n in range(len(batch)):
        alone = rate_everywhere(batch[n:n + 1], 8, seed=77, normalize=normalize)
        assert_same_array(together[:, n], alone[:, 0], f"sample {n} in a batch vs alone")
    reversed_batch = rate_everywhere(batch[::-1].copy(), 8, seed=77, normalize=normalize)
    assert_same_array(reversed_batch[:, ::-1], together, "batch order reversed")


def test_minmax_normalization_is_per_sample() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 10)).astype(np.float32)
    before = rate_everywhere(x, 12, seed=3)
    scaled = x.copy()
    scaled[0] = scaled[0] * np.float32(1000.0) + np.float32(50.0)  # only sample 0 changes
    after = rate_everywhere(scaled, 12, seed=3)
    assert_same_array(after[:, 1:], before[:, 1:], "other samples unchanged")
    # a power-of-two scale and offset leaves (x − min)/(max − min) exact: sample 0 itself unchanged
    exact = x.copy()
    exact[0] = exact[0] * np.float32(4.0)
    assert_same_array(rate_everywhere(exact, 12, seed=3), before, "power-of-two scale")


def test_constant_sample_gives_zero_probability() -> None:
    x = np.array([[2.5] * 6, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [-1.0] * 6], np.float32)
    y = rate_everywhere(x, 50, seed=5)
    assert not np.isnan(y).any()
    assert_same_array(y[:, 0], np.zeros((50, 6), np.float32), "constant sample: no spikes")
    assert_same_array(y[:, 2], np.zeros((50, 6), np.float32), "constant negative sample: no spikes")
    # sample 1: p = 0 for its minimum (never fires), p = 1 for its maximum (always fires)
    assert not y[:, 1, 0].any() and y[:, 1, 5].all()


def test_clip_probabilities_saturate_at_zero_and_one() -> None:
    x = np.array([[-3.0, 0.0, 1.0, 7.0]], np.float32)
    y = rate_everywhere(x, 200, seed=11, normalize="clip")
    assert_same_array(y[:, 0], np.array([[0, 0, 1, 1]] * 200, np.float32), "p = 0 never, p = 1 always")


def test_empirical_firing_probability_matches_p() -> None:
    steps = 4000
    p = np.array([0.0, 0.02, 0.1, 0.25, 1 / 3, 0.5, 0.75, 0.9, 0.98, 1.0], np.float32)
    x = np.stack([p, p[::-1]])  # two samples, clip normalization: p is the input itself
    node = rate_node(steps, seed=2024, normalize="clip")
    (y,) = hnnx.ops.run_reference(node, x)
    model = single_node_model(node, {"x": x}, {"y": (FLOAT, (steps, 2, len(p)))})
    assert_same_array(run_onnxruntime(model, {"x": x})[0], y, "onnxruntime vs numpy at T=4000")
    rates = y.mean(axis=0)  # [2, M]
    for probabilities, observed in zip(x, rates):
        sigma = np.sqrt(probabilities * (1 - probabilities) / steps)
        # 5 σ plus a little: a false alarm is practically impossible, a biased generator is caught
        assert np.all(np.abs(observed - probabilities) <= 5 * sigma + 1e-3), (observed, probabilities)
    # elements are not copies of each other, steps are not correlated: p = 0.5 trains agree ~half the time
    half = y[:, 0, 5]
    for other in (y[:, 0, 4], y[:, 0, 6], y[:, 1, 4]):
        assert 0.4 < float(np.mean(half == other)) < 0.6
    assert 0.45 < float(np.mean(half[1:] == half[:-1])) < 0.55


def test_torch_rate_coding_matches_on_a_sample_larger_than_one_batch_block() -> None:
    """The generator's element counter covers the whole sample (M = 3·8·8 = 192)."""
    x = np.random.default_rng(8).random((2, 3, 8, 8), np.float32)
    y = rate_everywhere(x, 4, seed=123)
    assert_same_array(y, reference_a2s({"steps": 4, "coding": "rate", "seed": 123}, x), "independent")


# ---------------------------------------------------------------------------------------------
# 4. Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op, inputs, attrs, fragment", [
    ("A2S", ["x"], {"steps": 3, "coding": "learnable"}, "weight"),
    ("A2S", ["x", "w"], {"steps": 3, "coding": "direct"}, "weight"),
    ("A2S", ["x", "", "b"], {"steps": 3, "coding": "rate"}, "weight"),
    ("A2S", ["x"], {"steps": 0}, "steps"),
    ("A2S", ["x"], {"steps": -2, "coding": "rate"}, "steps"),
    ("A2S", ["x"], {}, "steps"),
    ("A2S", ["x"], {"steps": 3, "coding": "rate", "seed": -1}, "seed"),
    ("A2S", ["x"], {"steps": 3, "coding": "rate", "seed": 2**32}, "seed"),
    ("A2S", ["x"], {"steps": 3, "converter": "round", "bits": 1}, "bits"),
    ("A2S", ["x"], {"steps": 3, "converter": "round", "bits": 25}, "bits"),
    ("A2S", ["x"], {"steps": 3, "coding": "poisson"}, "coding"),
    ("A2S", ["x"], {"steps": 3, "converter": "floor"}, "converter"),
    ("S2A", ["x"], {"decoding": "rate", "window": 3, "kernel": 4}, "kernel"),
    ("S2A", ["x"], {"decoding": "learnable", "window": 3, "kernel": 6, "padding": 1}, "kernel"),
    ("S2A", ["x"], {"decoding": "rate", "window": 4, "padding": 1}, "padding"),
    ("S2A", ["x"], {"decoding": "learnable", "window": 3}, "weight"),
    ("S2A", ["x", "w"], {"decoding": "rate", "window": 3}, "weight"),
    ("S2A", ["x", "", "b"], {"decoding": "global"}, "weight"),
    ("S2A", ["x"], {"decoding": "rate", "window": 0}, "window"),
    ("S2A", ["x"], {"decoding": "learnable", "window": 3, "padding": -1}, "padding"),
    ("S2A", ["x"], {"decoding": "rate", "window": 4, "stride": -1}, "stride"),
])
def test_bad_attributes_and_ports_raise_node_error_naming_the_node(op: str, inputs: list[str],
                                                                   attrs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(NodeError, match=fragment) as info:
        hnnx.ops.make_node(op, inputs, ["y"], name="my_hu", **attrs)
    assert info.value.node == "my_hu"
    assert "'my_hu'" in str(info.value)


def test_bad_raw_node_is_rejected_by_attach_functions_and_run_reference() -> None:
    """A node written without make_node (e.g. by another tool) is validated when used."""
    raw = helper.make_node("S2A", ["x"], ["y"], name="raw_s2a", domain="hnnx", decoding="learnable", window=3)
    with pytest.raises(NodeError, match="weight") as info:
        hnnx.ops.run_reference(raw, np.zeros((3, 1), np.float32))
    assert info.value.node == "raw_s2a"
    graph = helper.make_graph([raw], "g", [helper.make_tensor_value_info("x", FLOAT, [3, 1])],
                              [helper.make_tensor_value_info("y", FLOAT, None)])
    with pytest.raises(NodeError, match="raw_s2a"):
        hnnx.ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


@pytest.mark.parametrize("steps", [5, 7, 0])
def test_s2a_time_not_a_multiple_of_window_raises(steps: int) -> None:
    node = hnnx.ops.make_node("S2A", ["x"], ["y"], name="windows", decoding="rate", window=3)
    with pytest.raises(NodeError, match="multiple of window") as info:
        hnnx.ops.run_reference(node, np.zeros((steps, 2), np.float32))
    assert info.value.node == "windows"


def test_s2a_global_of_empty_sequence_raises() -> None:
    node = hnnx.ops.make_node("S2A", ["x"], ["y"], name="mean", decoding="global")
    with pytest.raises(NodeError, match="empty") as info:
        hnnx.ops.run_reference(node, np.zeros((0, 2), np.float32))
    assert info.value.node == "mean"


def test_s2a_weight_rows_must_match_windows() -> None:
    node = hnnx.ops.make_node("S2A", ["x", "weight"], ["y"], name="conv", decoding="learnable", window=3)
    with pytest.raises(NodeError, match="rows") as info:
        hnnx.ops.run_reference(node, np.zeros((9, 2), np.float32), np.ones((2, 3), np.float32))
    assert info.value.node == "conv"


@pytest.mark.parametrize("weight, bias", [
    (np.ones(4, np.float32), None),  # 4 gains for 3 steps
    (np.ones(1, np.float32), None),  # 1 gain for 3 steps
    (np.ones(3, np.float32), np.zeros(2, np.float32)),  # 2 offsets for 3 steps
], ids=["weight-long", "weight-short", "bias-short"])
def test_a2s_learnable_inputs_must_have_steps_entries(weight: np.ndarray, bias: np.ndarray | None) -> None:
    """weight/bias are documented as [T]; another length is a NodeError naming the node (as S2A's
    row check is), not a numpy reshape/broadcast error."""
    node = hnnx.ops.make_node("A2S", ["x", "weight", "bias"], ["y"], name="coder", steps=3, coding="learnable")
    with pytest.raises(NodeError) as info:
        hnnx.ops.run_reference(node, np.ones((2, 2), np.float32), weight, bias)
    assert info.value.node == "coder"


@pytest.mark.parametrize("weight_shape, bias_shape", [((2, 3), None), ((2, 1), None), ((2, 2), (3,))],
                         ids=["weight-extra-column", "weight-missing-column", "bias-rows"])
def test_s2a_learnable_inputs_must_fit_the_kernel_and_windows(weight_shape: tuple[int, ...],
                                                              bias_shape: tuple[int, ...] | None) -> None:
    """weight is documented as [T / window, kernel] (or [1, kernel]), bias as [T / window] (or [1]):
    a weight with more columns than the kernel must not be silently truncated."""
    node = hnnx.ops.make_node("S2A", ["x", "weight", "bias"], ["y"], name="conv", decoding="learnable", window=3,
                              kernel=2)
    bias = None if bias_shape is None else np.zeros(bias_shape, np.float32)
    with pytest.raises(NodeError) as info:
        hnnx.ops.run_reference(node, np.ones((6, 2), np.float32), np.ones(weight_shape, np.float32), bias)
    assert info.value.node == "conv"


@pytest.mark.parametrize("op, attrs", [("A2S", {"steps": 2}), ("S2A", {"decoding": "global"})])
def test_run_reference_rejects_non_float_input_in_float_mode(op: str, attrs: dict[str, Any]) -> None:
    node = hnnx.ops.make_node(op, ["x"], ["y"], name="hu", **attrs)
    with pytest.raises(NodeError, match="float") as info:
        hnnx.ops.run_reference(node, np.zeros((2, 3), np.int32))
    assert info.value.node == "hu"


# ---------------------------------------------------------------------------------------------
# 5. Degenerate shapes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs", [
    {"steps": 3, "coding": "direct"},
    {"steps": 3, "coding": "rate", "normalize": "clip"},
    {"steps": 3, "coding": "rate", "normalize": "minmax"},
], ids=["direct", "rate-clip", "rate-minmax"])
@pytest.mark.parametrize("shape", [(0, 4), (2, 0)], ids=["empty-batch", "empty-sample"])
def test_a2s_empty_tensors(attrs: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Empty batches and empty samples give empty sequences on every path, as in onnxruntime
    (minmax of an empty sample has no elements to normalize, so nothing to reduce)."""
    x = np.zeros(shape, np.float32)
    y = run_hybrid("A2S", attrs, x)
    assert y.shape == (3, *shape)
