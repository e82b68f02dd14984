"""Tests of ``hnnx.Fire``: strict Heaviside, threshold broadcasting, float/int32, shape
inference of the broadcast output, and function body == numpy reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import TensorProto

import hnnx.ops
from conftest import OutputTypes, assert_same_array, build_model, elem_of, run_model_both_ways, single_node_model
from hnnx.errors import NodeError

DTYPES = [np.float32, np.int32]


def scalar_fire(v: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """``1 if v > threshold else 0`` per element of the broadcast, one element at a time."""
    shape = np.broadcast_shapes(v.shape, threshold.shape)
    v_b, threshold_b = np.broadcast_to(v, shape), np.broadcast_to(threshold, shape)
    spikes = np.zeros(shape, v.dtype)
    for index in np.ndindex(*shape):
        spikes[index] = 1 if v_b[index] > threshold_b[index] else 0
    return spikes


def run_fire(v: np.ndarray, threshold: np.ndarray, **attrs: Any) -> np.ndarray:
    """Fire through the scalar loop, ``run_reference``, onnxruntime and ``onnx.reference``;
    asserts they agree bit for bit and returns the spikes."""
    node = hnnx.ops.make_node("Fire", ["v", "threshold"], ["spikes"], name="fire", **attrs)
    expected = scalar_fire(v, threshold)
    (from_reference,) = hnnx.ops.run_reference(node, v, threshold)
    assert_same_array(from_reference, expected, "run_reference vs scalar loop")
    feeds = {"v": v, "threshold": threshold}
    model = single_node_model(node, feeds, {"spikes": (elem_of(v), expected.shape)})
    (from_model,) = run_model_both_ways(model, feeds)
    assert_same_array(from_model, from_reference, "onnxruntime vs run_reference")
    return from_model


@pytest.mark.parametrize("dtype", DTYPES, ids=["float", "int32"])
def test_fire_is_strict(dtype: type) -> None:
    spikes = run_fire(np.array([0, 1, 2, -3], dtype), np.array(1, dtype))
    assert_same_array(spikes, np.array([0, 0, 1, 0], dtype), "spikes")


def test_fire_float_ties_at_fractional_threshold() -> None:
    spikes = run_fire(np.array([0.7499999, 0.75, 0.7500001], np.float32), np.array([0.75], np.float32))
    assert_same_array(spikes, np.array([0, 0, 1], np.float32), "spikes")


def test_fire_per_neuron_threshold() -> None:
    v = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    threshold = np.array([0, 2, 6], np.int32)
    # column thresholds: 1>0 2>2 3>6 / 4>0 5>2 6>6
    assert_same_array(run_fire(v, threshold), np.array([[1, 0, 0], [1, 1, 0]], np.int32), "spikes")


BROADCASTS = [
    ((4, 3), ()),
    ((4, 3), (3,)),
    ((4, 3), (4, 1)),
    ((4, 3), (1, 1)),
    ((3,), (4, 3)),  # the threshold may be the larger operand
    ((4, 1), (1, 3)),
    ((2, 3, 4, 5), (3, 1, 1)),
    ((5,), (1,)),
    ((0, 3), (3,)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float", "int32"])
@pytest.mark.parametrize("v_shape, threshold_shape", BROADCASTS, ids=[f"{a}-{b}" for a, b in BROADCASTS])
def test_fire_broadcasts_threshold(v_shape: tuple[int, ...], threshold_shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(sum(v_shape) * 31 + sum(threshold_shape))
    # small integer values make ties v == threshold frequent
    v = rng.integers(-3, 4, size=v_shape).astype(dtype)
    threshold = rng.integers(-2, 3, size=threshold_shape).astype(dtype)
    spikes = run_fire(v, threshold)
    assert spikes.shape == np.broadcast_shapes(v_shape, threshold_shape)
    if spikes.size >= 12:
        assert 0 < spikes.mean() < 1


@pytest.mark.parametrize("dtype", DTYPES, ids=["float", "int32"])
def test_fire_random_values_body_equals_reference(dtype: type) -> None:
    rng = np.random.default_rng(5)
    if dtype is np.float32:
        v = rng.normal(0, 1, (3, 4, 5)).astype(np.float32)
        threshold = rng.normal(0, 0.5, (4, 1)).astype(np.float32)
    else:
        v = rng.integers(-(2 ** 31), 2 ** 31 - 1, (3, 4, 5), dtype=np.int64).astype(np.int32)
        threshold = rng.integers(-(2 ** 31), 2 ** 31 - 1, (4, 1), dtype=np.int64).astype(np.int32)
    run_fire(v, threshold, surrogate="atan", surrogate_width=0.5)


@pytest.mark.parametrize("surrogate", ["rectangle", "sigmoid", "atan"])
def test_surrogate_does_not_change_the_forward_pass(surrogate: str) -> None:
    v = np.array([-1.0, 0.5, 1.0, 1.5], np.float32)
    spikes = run_fire(v, np.array(1.0, np.float32), surrogate=surrogate, surrogate_width=3.0)
    assert_same_array(spikes, np.array([0, 0, 0, 1], np.float32), "spikes")


SYMBOLIC = [
    (("N", 3), (3,), ("N", 3)),
    (("N", 1), (4,), ("N", 4)),
    ((2, 3), ("M", 1, 1), ("M", 2, 3)),
    (("N", 3), (), ("N", 3)),
]


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.INT32], ids=["float", "int32"])
@pytest.mark.parametrize("v_dims, threshold_dims, out_dims", SYMBOLIC, ids=[str(s) for s in SYMBOLIC])
def test_fire_shape_inference_of_broadcast(v_dims: tuple, threshold_dims: tuple, out_dims: tuple, elem: int) -> None:
    node = hnnx.ops.make_node("Fire", ["v", "threshold"], ["spikes"], name="fire")
    types: OutputTypes = {"v": (elem, v_dims), "threshold": (elem, threshold_dims)}
    build_model([node], types, {"spikes": (elem, out_dims)})


BAD_FIRE_ATTRIBUTES = [
    ({"surrogate": "relu"}, "surrogate"),
    ({"surrogate_width": 0.0}, "surrogate_width"),
    ({"surrogate_width": -1.0}, "surrogate_width"),
    ({"threshold": 1.0}, "threshold"),  # the threshold is an input, not an attribute
]


@pytest.mark.parametrize("attrs, attribute", BAD_FIRE_ATTRIBUTES, ids=[str(a) for a, _ in BAD_FIRE_ATTRIBUTES])
def test_bad_fire_attributes_raise_node_error(attrs: dict[str, Any], attribute: str) -> None:
    with pytest.raises(NodeError) as error:
        hnnx.ops.make_node("Fire", ["v", "threshold"], ["spikes"], name="bad_fire", **attrs)
    assert "'bad_fire'" in str(error.value) and attribute in str(error.value)


def test_fire_needs_a_threshold_input() -> None:
    with pytest.raises(NodeError, match="bad_fire.*threshold"):
        hnnx.ops.make_node("Fire", ["v"], ["spikes"], name="bad_fire")
