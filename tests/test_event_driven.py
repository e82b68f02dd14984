"""Spike-input layers (``hnnx.SpikeMatMul``, ``hnnx.SpikeConv``), their native event-driven
kernels, the ``event_driven`` and ``integer_as_float`` passes and ``hnnx simulate --event-driven``.

1. The ops: the numpy reference against hand-computed sums (the defined float order shows where
   a dense sum would round differently), against an independent int64 computation (integer), the
   dense function bodies (integer bit for bit, float within rounding) and torch.
2. The native kernels against the numpy reference bit for bit — float and integer, random
   geometries, one and two threads, weights laid out at session creation or per call, non-spike
   inputs, non-finite weights — and the kernel ran.
3. The passes: which tensors hold spikes, which layers are rewritten (rates, modes, float opt-in,
   probes kept), exactness of the integer rewrites (bundled models quantized: bit-identical).
4. ``hnnx.simulate`` / ``hnnx simulate --event-driven``: rates measured on the first batch,
   identical integer outputs, float outputs close to the dense layers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import hnnx
from conftest import assert_same_array
from hnnx import models, ops
from hnnx.cli import main
from hnnx.errors import HnnxError, NodeError
from hnnx.passes import events as ev
from hnnx.runtime import native
from test_native import library  # noqa: F401  (the fixture is used by name)

ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int8): TensorProto.INT8,
        np.dtype(np.int32): TensorProto.INT32}


def layer_model(node: onnx.NodeProto, feeds: dict[str, np.ndarray], constants: dict[str, np.ndarray],
                out_elem: int) -> onnx.ModelProto:
    """A checked one-node model: ``feeds`` as graph inputs, ``constants`` as initializers."""
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, ELEM[v.dtype], v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info("y", out_elem, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)  # the op's own inference
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    onnx.checker.check_model(model, full_check=True)
    return model


def run_session(model: onnx.ModelProto, feeds: dict[str, np.ndarray], lib: Path | None = None,
                threads: int = 0) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if lib is not None:
        options.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]


def same_bits(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal dtype, shape and bytes (signed zeros and NaN included)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if not np.isnan(expected).any() if expected.dtype.kind == "f" else True:
        assert_same_array(actual, expected, what)
    assert actual.tobytes() == expected.tobytes(), f"{what}: different bits"


# ---------------------------------------------------------------------------------------------
# 1. The ops
# ---------------------------------------------------------------------------------------------
def test_float_sum_runs_in_ascending_input_order() -> None:
    """1e8 + 1 rounds back to 1e8 in float32: in the defined order (+0, then inputs 0, 1, 2) the
    sum is 0 and then the bias; summed the other way round it would be 1."""
    node = ops.make_node("SpikeMatMul", ["x", "w", "b"], ["y"], name="dense")
    x = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1]], np.float32)
    w = np.array([[1e8], [1.0], [-1e8]], np.float32)
    (y,) = ops.run_reference(node, x, w, np.array([0.5], np.float32))
    assert y[:, 0].tolist() == [0.5, np.float32(-1e8 + 1) + 0.5, 0.5]
    reverse = (np.float32(-1e8) + np.float32(1.0)) + np.float32(1e8)
    assert reverse == 0.0 and np.float32(np.float32(-1e8) + np.float32(1e8)) + np.float32(1.0) == 1.0


def test_conv_reference_by_hand() -> None:
    """One channel 3×4, kernel 2×2, stride (1, 2), pad top 1: every output written out."""
    node = ops.make_node("SpikeConv", ["x", "w", "b"], ["y"], name="conv", stride_w=2, pad_top=1)
    x = np.array([[[[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 0, 1]]]], np.float32)
    w = np.array([[[[1, 2], [4, 8]]]], np.float32)
    (y,) = ops.run_reference(node, x, w, np.array([100], np.float32))
    # rows iy = oy − 1 + ky, columns ix = 2·ox + kx; row −1 is padding
    expected = [[4 * 1 + 8 * 0, 4 * 1 + 8 * 1],
                [1 * 1 + 2 * 0 + 4 * 0 + 8 * 1, 1 * 1 + 2 * 1 + 4 * 0 + 8 * 0],
                [1 * 0 + 2 * 1 + 4 * 1 + 8 * 1, 1 * 0 + 2 * 0 + 4 * 0 + 8 * 1]]
    assert y.shape == (1, 1, 3, 2) and y[0, 0].tolist() == (np.array(expected) + 100).tolist()


def random_layer(rng: np.random.Generator, op: str, integer: bool, rate: float = 0.2,
                 values: str = "spikes") -> tuple[onnx.NodeProto, np.ndarray, np.ndarray, np.ndarray]:
    """A random layer (its node, x, weight, bias); float weights are not dyadic: sums round."""
    dtype = np.int8 if integer else np.float32
    if op == "SpikeMatMul":
        inputs, outputs = int(rng.integers(1, 200)), int(rng.integers(1, 90))
        x_shape: tuple[int, ...] = (*[int(d) for d in rng.integers(1, 7, size=int(rng.integers(1, 3)))], inputs)
        w_shape: tuple[int, ...] = (inputs, outputs)
        attrs: dict[str, Any] = {}
    else:
        group = int(rng.choice([1, 2, 3]))
        channels, outputs = group * int(rng.integers(1, 7)), group * int(rng.integers(1, 25))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        attrs = {"group": group, "stride_h": int(rng.integers(1, 3)), "stride_w": int(rng.integers(1, 3)),
                 "pad_top": int(rng.integers(0, 2)), "pad_left": int(rng.integers(0, 3)),
                 "pad_bottom": int(rng.integers(0, 2)), "pad_right": int(rng.integers(0, 2)),
                 "dilation_h": int(rng.integers(1, 3)), "dilation_w": int(rng.integers(1, 3))}
        height = int(rng.integers(attrs["dilation_h"] * (kh - 1) + 1, 13))
        width = int(rng.integers(attrs["dilation_w"] * (kw - 1) + 1, 21))
        x_shape, w_shape = (int(rng.integers(1, 5)), channels, height, width), (outputs, channels // group, kh, kw)
    x = (rng.random(x_shape) < rate).astype(dtype)
    if values == "signed":
        x = x * rng.integers(-3, 4, x_shape).astype(dtype)
    if integer:
        w = rng.integers(-128, 128, w_shape).astype(np.int8)
        b = rng.integers(-5000, 5000, outputs).astype(np.int32)
    else:
        w = rng.normal(0, 1, w_shape).astype(np.float32)
        b = rng.normal(0, 1, outputs).astype(np.float32)
    node = ops.make_node(op, ["x", "w", "b"], ["y"], name=f"layer_{op}", mode="integer" if integer else "float",
                         **attrs)
    return node, x, w, b


@pytest.mark.parametrize("op", ["SpikeMatMul", "SpikeConv"])
def test_integer_reference_equals_an_independent_sum_and_the_dense_body(op: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(6):
        node, x, w, b = random_layer(rng, op, integer=True, values="signed")
        (y,) = ops.run_reference(node, x, w, b)
        if op == "SpikeMatMul":
            independent = np.einsum("...k,km->...m", x.astype(np.int64), w.astype(np.int64)) + b
        else:  # float64 convolution: exact for these small integers
            a = ops.SpikeConv.view(node).attrs
            padded = torch.nn.functional.pad(torch.from_numpy(x.astype(np.float64)),
                                             [a["pad_left"], a["pad_right"], a["pad_top"], a["pad_bottom"]])
            independent = torch.nn.functional.conv2d(
                padded, torch.from_numpy(w.astype(np.float64)), torch.from_numpy(b.astype(np.float64)),
                stride=(a["stride_h"], a["stride_w"]), dilation=(a["dilation_h"], a["dilation_w"]),
                groups=a["group"]).numpy()
        assert_same_array(y, independent.astype(np.int32), "integer reference vs an independent sum")
        model = layer_model(node, {"x": x}, {"w": w, "b": b}, TensorProto.INT32)
        assert_same_array(run_session(model, {"x": x}), y, "dense function body (ConvInteger/MatMulInteger)")


def as_int32_input(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """int8 inputs as int32 values with the same low 8 bits (what a Cast to int8 keeps), some far
    outside the int8 range — an integer layer must read them as the int8 values."""
    return (x.astype(np.int32) + 256 * rng.integers(-40000, 40000, x.shape)).astype(np.int32)


@pytest.mark.parametrize("op", ["SpikeMatMul", "SpikeConv"])
def test_integer_layers_read_int32_input_as_int8(op: str) -> None:
    """An int32 ``x`` (e.g. the spikes of an integer LIF) is the int8 that ``Cast`` gives: the
    reference and the dense function body (``Cast`` → ``ConvInteger``/``MatMulInteger``) both give
    the int8 input's results."""
    rng = np.random.default_rng(6)
    for _ in range(4):
        node, x, w, b = random_layer(rng, op, integer=True, values="signed")
        wide = as_int32_input(rng, x)
        assert (np.abs(wide) > 127).any()
        (expected,) = ops.run_reference(node, x, w, b)
        (y,) = ops.run_reference(node, wide, w, b)
        assert_same_array(y, expected, "reference of int32 x vs int8 x")
        model = layer_model(node, {"x": wide}, {"w": w, "b": b}, TensorProto.INT32)
        assert_same_array(run_session(model, {"x": wide}), expected, "dense function body on int32 x")
    with pytest.raises(NodeError, match="x of a integer-mode layer must be int8 or int32, got int16"):
        ops.run_reference(node, x.astype(np.int16), w, b)


@pytest.mark.parametrize("op", ["SpikeMatMul", "SpikeConv"])
def test_float_reference_against_the_dense_body_and_torch(op: str) -> None:
    """The dense body and torch sum in other orders: equal within float32 rounding; with dyadic
    weights (every sum exact) equal bit for bit."""
    rng = np.random.default_rng(2)
    for _ in range(6):
        node, x, w, b = random_layer(rng, op, integer=False)
        (y,) = ops.run_reference(node, x, w, b)
        model = layer_model(node, {"x": x}, {"w": w, "b": b}, TensorProto.FLOAT)
        np.testing.assert_allclose(run_session(model, {"x": x}), y, rtol=1e-5, atol=1e-5)
        view = ops.declaration(op).view(node)
        (from_torch,) = ops.declaration(op).torch_forward(view, *map(torch.from_numpy, (x, w, b)))
        np.testing.assert_allclose(from_torch.numpy(), y, rtol=1e-5, atol=1e-5)
        dyadic_w, dyadic_b = np.round(w * 64) / 64, np.round(b * 64) / 64
        (exact,) = ops.run_reference(node, x, dyadic_w, dyadic_b)
        model = layer_model(node, {"x": x}, {"w": dyadic_w, "b": dyadic_b}, TensorProto.FLOAT)
        assert_same_array(run_session(model, {"x": x}), exact, "dense body on exact sums")


def test_shape_inference_and_types() -> None:
    node = ops.make_node("SpikeConv", ["x", "w"], ["y"], name="conv", mode="integer", stride_h=2, pad_top=1,
                         pad_bottom=1, pad_left=1, pad_right=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, ["B", 4, 9, 8]),
                                            helper.make_tensor_value_info("w", TensorProto.INT8, [6, 4, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))
    out = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output[0].type.tensor_type
    assert out.elem_type == TensorProto.INT32
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["B", 6, 5, 8]
    node = ops.make_node("SpikeMatMul", ["x", "w"], ["y"], name="dense")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, ["T", "N", 5]),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, [5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))
    with pytest.raises(Exception, match="x of a float-mode SpikeMatMul must be float, got int8"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_bad_layers_name_the_node() -> None:
    node = ops.make_node("SpikeMatMul", ["x", "w"], ["y"], name="readout")
    with pytest.raises(NodeError, match="readout.*x \\[..., K\\] and weight \\[K, M\\]"):
        ops.run_reference(node, np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(NodeError, match="readout.*weight of a float-mode layer must be float32, got int8"):
        ops.run_reference(node, np.zeros((2, 3), np.float32), np.zeros((3, 2), np.int8))
    with pytest.raises(NodeError, match="'stride_h' must be ≥ 1"):
        ops.make_node("SpikeConv", ["x", "w"], ["y"], name="conv", stride_h=0)
    conv = ops.make_node("SpikeConv", ["x", "w"], ["y"], name="conv2", group=2)
    with pytest.raises(NodeError, match="conv2.*group 2: x has 3 channels"):
        ops.run_reference(conv, np.zeros((1, 3, 4, 4), np.float32), np.zeros((2, 1, 1, 1), np.float32))


# ---------------------------------------------------------------------------------------------
# 2. The native kernels
# ---------------------------------------------------------------------------------------------
def run_native(model: onnx.ModelProto, feeds: dict[str, np.ndarray], lib: Path, op: str,
               threads: int = 0) -> np.ndarray:
    before = native.kernel_calls(lib, op)
    y = run_session(model, feeds, lib, threads)
    assert native.kernel_calls(lib, op) - before == 1, f"onnxruntime did not run the native {op}"
    return y


@pytest.mark.parametrize("values", ["spikes", "signed"])
@pytest.mark.parametrize("integer", [False, True, "int32"], ids=["float", "integer", "integer-int32-x"])
@pytest.mark.parametrize("op", ["SpikeMatMul", "SpikeConv"])
def test_native_equals_reference(library: Path, op: str, integer: bool | str, values: str) -> None:
    """Random layers; weights as initializers (laid out once) or fed at run time (per call);
    integer layers with int8 x, and with int32 x whose values lie outside int8 too."""
    rng = np.random.default_rng(len(op) * 7 + (integer is True) * 3 + (integer == "int32") * 5 + len(values))
    for trial in range(10):
        rate = [0.0, 0.03, 0.2, 0.6, 1.0][trial % 5]
        node, x, w, b = random_layer(rng, op, bool(integer), rate, values)
        if integer == "int32":
            x = as_int32_input(rng, x)
        (expected,) = ops.run_reference(node, x, w, b)
        constant = trial % 2 == 0
        feeds = {"x": x} if constant else {"x": x, "w": w, "b": b}
        model = layer_model(node, feeds, {"w": w, "b": b} if constant else {}, ELEM[expected.dtype])
        same_bits(run_native(model, feeds, library, op, threads=1 + trial % 2), expected,
                  f"{op} native vs reference, trial {trial}")


@pytest.mark.parametrize("op", ["SpikeMatMul", "SpikeConv"])
def test_native_many_rows_over_threads_and_no_bias(library: Path, op: str) -> None:
    """Enough rows and outputs for several work items and column tiles; no bias input."""
    rng = np.random.default_rng(4)
    if op == "SpikeMatMul":
        x = (rng.random((3, 97, 700)) < 0.1).astype(np.float32)
        w = rng.normal(0, 1, (700, 150)).astype(np.float32)
        node = ops.make_node(op, ["x", "w"], ["y"], name="wide")
    else:
        x = (rng.random((9, 20, 11, 13)) < 0.1).astype(np.float32)
        w = rng.normal(0, 1, (70, 20, 3, 3)).astype(np.float32)
        node = ops.make_node(op, ["x", "w"], ["y"], name="wide", pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    (expected,) = ops.run_reference(node, x, w)
    model = layer_model(node, {"x": x}, {"w": w}, TensorProto.FLOAT)
    same_bits(run_native(model, {"x": x}, library, op, threads=2), expected, f"{op} many rows")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_native_dense_sums_over_input_blocks(library: Path, integer: bool) -> None:
    """1,500 inputs: several input blocks per column tile (the kernel sums a block at a time and
    carries a row's extra events to the next one). Rows summed together whose events lie in
    different blocks (equal counts: first block only against last block only), rows of spikes
    next to rows of signed values, empty rows, an odd number of rows; dense and sparse calls (a
    sparse call merges blocks into longer steps)."""
    rng = np.random.default_rng(31 + integer)
    dtype = np.int8 if integer else np.float32
    inputs, outputs, rows = 1500, 100, 67
    w = (rng.integers(-128, 128, (inputs, outputs)).astype(np.int8) if integer
         else rng.normal(0, 1, (inputs, outputs)).astype(np.float32))
    b = rng.integers(-1000, 1000, outputs).astype(np.int32) if integer else rng.normal(0, 1, outputs).astype(np.float32)
    node = ops.make_node("SpikeMatMul", ["x", "w", "b"], ["y"], name="blocks", mode="integer" if integer else "float")
    for rate in (0.3, 0.01):
        x = (rng.random((rows, inputs)) < rng.uniform(0, 2 * rate, (rows, 1))).astype(dtype)
        x[5:9] = 0
        x[10, :] = 0
        x[10, rng.choice(200, 40, replace=False)] = 1  # the first block only
        x[11, :] = 0
        x[11, inputs - 1 - rng.choice(200, 40, replace=False)] = 1  # the last block only
        x[20:40:3] *= rng.integers(-3, 4, (7, inputs)).astype(dtype)  # values, among rows of spikes
        (expected,) = ops.run_reference(node, x, w, b)
        model = layer_model(node, {"x": x}, {"w": w, "b": b}, ELEM[expected.dtype])
        for threads in (1, 2):
            same_bits(run_native(model, {"x": x}, library, "SpikeMatMul", threads=threads), expected,
                      f"SpikeMatMul over input blocks, rate {rate}, {threads} threads")


def test_native_dense_splits_many_rows_into_bounded_items(library: Path) -> None:
    """10,000 rows: more than one work item's worth (4,096) even where the column tiles alone
    would keep the threads busy — the rows are split, each item's sums bounded."""
    rng = np.random.default_rng(9)
    x = (rng.random((10_000, 300)) < 0.1).astype(np.float32)
    w = rng.normal(0, 1, (300, 300)).astype(np.float32)
    node = ops.make_node("SpikeMatMul", ["x", "w"], ["y"], name="tall")
    (expected,) = ops.run_reference(node, x, w)
    model = layer_model(node, {"x": x}, {"w": w}, TensorProto.FLOAT)
    same_bits(run_native(model, {"x": x}, library, "SpikeMatMul", threads=2), expected, "SpikeMatMul, 10,000 rows")


def test_native_dense_with_weights_on_huge_pages(library: Path) -> None:
    """Weights of 4 MiB or more are laid out on 2 MiB pages where the system allows: the same sums."""
    rng = np.random.default_rng(8)
    x = (rng.random((2, 9, 1100)) < 0.1).astype(np.float32)
    w = rng.normal(0, 1, (1100, 1000)).astype(np.float32)
    assert w.nbytes >= 4 << 20
    node = ops.make_node("SpikeMatMul", ["x", "w"], ["y"], name="large")
    (expected,) = ops.run_reference(node, x, w)
    model = layer_model(node, {"x": x}, {"w": w}, TensorProto.FLOAT)
    same_bits(run_native(model, {"x": x}, library, "SpikeMatMul", threads=2), expected, "SpikeMatMul, 4.2 MB of weights")


@pytest.mark.parametrize("stride", [1, 3], ids=["row-kernel", "scatter-kernel"])
@pytest.mark.parametrize("integer", [False, True, "int32"], ids=["float", "integer", "integer-int32-x"])
def test_native_conv_spikes_over_several_mask_words(library: Path, integer: bool | str, stride: int) -> None:
    """Spikes of 150 channels in one group: summed from each pixel's three 64-bit channel masks
    (the lowest bit first, word by word), by the row kernel (a large output) and the scatter
    kernel (a small one); some pixels silent, some with every channel active."""
    rng = np.random.default_rng(40 + stride)
    dtype = np.int8 if integer else np.float32
    x = (rng.random((3, 150, 17, 19)) < 0.15).astype(dtype)
    x[0, :, 2, 3] = 1
    x[1, :, 5:9, :] = 0
    w = (rng.integers(-128, 128, (40, 150, 3, 3)).astype(np.int8) if integer
         else rng.normal(0, 1, (40, 150, 3, 3)).astype(np.float32))
    node = ops.make_node("SpikeConv", ["x", "w"], ["y"], name="masks", mode="integer" if integer else "float",
                         stride_h=stride, stride_w=stride, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    (expected,) = ops.run_reference(node, x, w)
    if integer == "int32":
        x = as_int32_input(rng, x)
    model = layer_model(node, {"x": x}, {"w": w}, ELEM[expected.dtype])
    same_bits(run_native(model, {"x": x}, library, "SpikeConv", threads=2), expected,
              f"SpikeConv, 150 channels of spikes, stride {stride}")


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_native_conv_over_many_channels(library: Path, integer: bool) -> None:
    """130 channels (active-channel masks of three words), dense firing (long event lists per
    pixel, over several copies of 8), signed values, stride 2, two groups."""
    rng = np.random.default_rng(12)
    dtype = np.int8 if integer else np.float32
    x = ((rng.random((3, 130, 9, 10)) < 0.7) * rng.integers(-2, 3, (3, 130, 9, 10))).astype(dtype)
    w = (rng.integers(-128, 128, (24, 65, 3, 3)).astype(np.int8) if integer
         else rng.normal(0, 1, (24, 65, 3, 3)).astype(np.float32))
    node = ops.make_node("SpikeConv", ["x", "w"], ["y"], name="many", mode="integer" if integer else "float", group=2,
                         stride_h=2, stride_w=2, pad_top=1, pad_left=1, pad_bottom=1, pad_right=1)
    (expected,) = ops.run_reference(node, x, w)
    model = layer_model(node, {"x": x}, {"w": w}, ELEM[expected.dtype])
    same_bits(run_native(model, {"x": x}, library, "SpikeConv", threads=2), expected, "SpikeConv, 130 channels")


@pytest.mark.parametrize("width", [256, 251], ids=["whole-lines", "odd-width"])
def test_native_conv_with_an_output_larger_than_the_caches(library: Path, width: int) -> None:
    """An output of ≥ 16 MiB is written with non-temporal stores where its rows are whole aligned
    cache lines (256 floats), with ordinary stores elsewhere (251): the same bits either way."""
    rng = np.random.default_rng(width)
    x = (rng.random((2, 4, 262, width)) < 0.1).astype(np.float32)
    w = rng.normal(0, 1, (32, 4, 3, 3)).astype(np.float32)
    b = rng.normal(0, 1, 32).astype(np.float32)
    node = ops.make_node("SpikeConv", ["x", "w", "b"], ["y"], name="large", pad_top=1, pad_left=1, pad_bottom=1,
                         pad_right=1)
    (expected,) = ops.run_reference(node, x, w, b)
    assert expected.nbytes >= 16 << 20
    model = layer_model(node, {"x": x}, {"w": w, "b": b}, TensorProto.FLOAT)
    same_bits(run_native(model, {"x": x}, library, "SpikeConv", threads=2), expected, f"SpikeConv, width {width}")


@pytest.mark.parametrize("op", ["SpikeMatMul", "SpikeConv"])
def test_native_counts_every_input_when_a_weight_is_not_finite(library: Path, op: str) -> None:
    """0·inf = NaN: with an infinite weight the kernel cannot skip zero inputs, and does not."""
    rng = np.random.default_rng(5)
    node, x, w, b = random_layer(rng, op, integer=False, rate=0.3)
    w.reshape(-1)[::7] = np.inf
    with np.errstate(invalid="ignore"):  # 0·inf
        (expected,) = ops.run_reference(node, x, w, b)
    assert np.isnan(expected).any()
    model = layer_model(node, {"x": x}, {"w": w, "b": b}, TensorProto.FLOAT)
    same_bits(run_native(model, {"x": x}, library, op), expected, f"{op} with infinite weights")


def test_native_empty_rows_and_wrong_shapes(library: Path) -> None:
    node = ops.make_node("SpikeMatMul", ["x", "w"], ["y"], name="dense")
    w = np.ones((4, 3), np.float32)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["R", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))
    assert run_native(model, {"x": np.zeros((0, 4), np.float32)}, library, "SpikeMatMul").shape == (0, 3)
    node = ops.make_node("SpikeMatMul", ["x", "w"], ["y"], name="dense_bad")
    model = layer_model(node, {"x": np.zeros((2, 5), np.float32), "w": w}, {}, TensorProto.FLOAT)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"hnnx\.SpikeMatMul node 'dense_bad': x \[2, 5\] does not end in the "
                                        r"weight's 4 inputs"):
        session.run(None, {"x": np.zeros((2, 5), np.float32), "w": w})


# ---------------------------------------------------------------------------------------------
# 3. The passes
# ---------------------------------------------------------------------------------------------
def snn_graph(integer: bool) -> onnx.ModelProto:
    """x [T·N, 3, 6, 6] → Conv → Reshape [T, N, 4·6·6] → LIF → Reshape [T·N, 4, 6, 6] → (Cast int8)
    → Conv → Flatten → Gemm / MatMul + Add: spikes reach the second conv and the dense layer."""
    rng = np.random.default_rng(6)
    nodes, inits = [], []
    wt, bt = (np.int8, np.int32) if integer else (np.float32, np.float32)

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    w1 = (rng.integers(-20, 21, (4, 3, 3, 3))).astype(wt)
    w2 = (rng.integers(-20, 21, (5, 4, 3, 3))).astype(wt)
    w3 = (rng.integers(-20, 21, (144, 7))).astype(wt)
    conv = "ConvInteger" if integer else "Conv"
    x = "x8" if integer else "x"
    if integer:
        nodes.append(helper.make_node("Cast", ["x"], ["x8"], to=TensorProto.INT8))
    nodes += [helper.make_node(conv, [x, const("w1", w1)], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
              helper.make_node("Reshape", ["c1", const("s1", np.array([2, -1, 144], np.int64))], ["r1"]),
              ops.make_node("LIF", ["r1"], ["spikes"], name="lif", mode="integer" if integer else "float",
                            threshold=40 if integer else 40.0, alpha=0.5),
              helper.make_node("Reshape", ["spikes", const("s2", np.array([-1, 4, 6, 6], np.int64))], ["r2"])]
    r2 = "r2"
    if integer:
        nodes.append(helper.make_node("Cast", ["r2"], ["r2_8"], to=TensorProto.INT8))
        r2 = "r2_8"
    nodes += [helper.make_node(conv, [r2, const("w2", w2)], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
              helper.make_node("Add", ["c2", const("b2", rng.integers(-9, 9, (1, 5, 1, 1)).astype(bt))], ["a2"]),
              helper.make_node("Flatten", [r2], ["flat"], axis=1)]
    if integer:
        nodes += [helper.make_node("MatMulInteger", ["flat", const("w3", w3)], ["m3"], name="dense"),
                  helper.make_node("Add", ["m3", const("b3", rng.integers(-9, 9, 7).astype(bt))], ["y"])]
    else:
        nodes.append(helper.make_node("Gemm", ["flat", const("w3", np.ascontiguousarray(w3.T)),
                                               const("b3", rng.integers(-9, 9, 7).astype(bt))], ["y"], name="dense",
                                      transB=1))
    graph = helper.make_graph(nodes, "snn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32 if integer else TensorProto.FLOAT,
                                                             None),
                               helper.make_tensor_value_info("a2", TensorProto.INT32 if integer else TensorProto.FLOAT,
                                                             None)],
                              initializer=inits)
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))


def snn_input() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).integers(0, 4, (8, 3, 6, 6)).astype(np.float32)}


def test_spike_sources_follow_shape_ops_and_casts() -> None:
    graph = gs.import_onnx(snn_graph(integer=True))
    spikes = ev.spike_sources(graph)
    assert {"spikes", "r2", "r2_8", "flat"} <= set(spikes) and spikes["flat"] == ("lif",)
    assert not {"x", "x8", "c1", "r1", "c2", "a2", "y"} & set(spikes)


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_event_driven_rewrites_the_spike_input_layers(library: Path, integer: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "EVENT_MIN_OUTPUTS", 1)  # the dense layer here has 7 outputs
    model = snn_graph(integer)
    decisions: list[ev.EventLayer] = []
    changes: dict[str, bool] = {}
    rewritten = hnnx.passes.run_passes(model, [ev.event_driven({"lif": 0.05}, "auto", float_layers=True,
                                                               decisions=decisions)], changes)
    assert changes == {"event_driven": True}
    assert [(d.name, d.op, d.rewritten) for d in decisions] == [("conv2", "SpikeConv", True),
                                                                 ("dense", "SpikeMatMul", True)]
    kinds = [n.op_type for n in rewritten.graph.node]
    assert kinds.count("SpikeConv") == 1 and kinds.count("SpikeMatMul") == 1
    assert ("ConvInteger" if integer else "Conv") in kinds  # conv1 reads no spikes
    assert kinds.count("Add") == 0 if integer else kinds.count("Add") == 1  # integer biases fused
    feeds = snn_input()
    dense = hnnx.Simulator(model, firing_rates=False).run(feeds)[0]
    event = hnnx.Simulator(rewritten, firing_rates=False, native=True).run(feeds)[0]
    for name in ("y", "a2"):
        if integer:
            same_bits(event[name], dense[name], f"{name}: event-driven vs dense integer graph")
        else:  # the dense Gemm / Conv sum in other orders
            np.testing.assert_allclose(event[name], dense[name], rtol=1e-6, atol=1e-3)


def test_decisions_follow_the_rates_and_the_float_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "EVENT_MIN_OUTPUTS", 1)  # the dense layer here has 7 outputs

    def decide(model: onnx.ModelProto, **kwargs: Any) -> list[tuple[str, bool, str]]:
        decisions: list[ev.EventLayer] = []
        hnnx.passes.run_passes(model, [ev.event_driven(decisions=decisions, **kwargs)])
        return [(d.name, d.rewritten, d.reason) for d in decisions]

    integer, floating = snn_graph(True), snn_graph(False)
    assert decide(integer) == [("conv2", False, "firing rate unknown"), ("dense", False, "firing rate unknown")]
    assert decide(integer, rates={"lif": 0.5}) == [
        ("conv2", False, f"firing rate 0.500 > {ev.PAYS_BELOW['SpikeConv']}: dense is faster"),
        ("dense", False, f"firing rate 0.500 > {ev.PAYS_BELOW['SpikeMatMul']}: dense is faster")]
    assert [d[1] for d in decide(integer, rates={"lif": 0.5}, mode="on")] == [True, True]
    assert {d[2] for d in decide(floating, rates={"lif": 0.01})} == {ev.FLOAT_NOT_OPTED_IN}
    # opted in, float layers are decided by their rate like integer ones
    assert [d[1] for d in decide(floating, rates={"lif": 0.01}, float_layers=True)] == [True, True]
    assert decide(floating, rates={"lif": 0.5}, float_layers=True) == decide(integer, rates={"lif": 0.5})
    assert decide(integer, rates={"lif": 0.01}, mode="off") == []
    # a narrow dense layer (7 outputs) stays dense in auto, whatever its rate; "on" still takes it
    monkeypatch.setattr(ev, "EVENT_MIN_OUTPUTS", 32)
    assert [d[1] for d in decide(integer, rates={"lif": 0.01}, mode="on")] == [True, True]
    assert decide(integer, rates={"lif": 0.01})[1] == (
        "dense", False, f"7 outputs < {ev.EVENT_MIN_OUTPUTS}: dense is as fast for a layer bound by reading its input")
    with pytest.raises(HnnxError, match="event-driven mode must be one of auto, on, off"):
        ev.event_driven(mode="always")


def test_a_probed_accumulator_keeps_its_bias_add() -> None:
    rewritten, decisions = ev.for_simulation(snn_graph(True), "on", keep=["c2"])
    kinds = [n.op_type for n in rewritten.graph.node]
    assert "c2" in {o for n in rewritten.graph.node for o in n.output} and kinds.count("Add") == 1
    assert all(d.rewritten for d in decisions)


def test_integer_as_float_is_exact_up_to_the_bound() -> None:
    """ConvInteger of int8 inputs (bound 128) whose first output's weights bring its sums to
    2^24 − 128 runs as a float Conv, exactly; one weight step more leaves the layer integer."""
    rng = np.random.default_rng(8)
    channels = 1040
    budget = (1 << 24) // 128 - 1  # Σ|w| of output 0: 131,071
    w = np.zeros((2, channels, 1, 1), np.int8)
    w[0, : budget // 127, 0, 0] = 127
    w[0, budget // 127, 0, 0] = budget % 127
    w[1, :, 0, 0] = rng.integers(-16, 17, channels)
    assert np.abs(w.astype(np.int64)).reshape(2, -1).sum(1).max() * 128 == (1 << 24) - 128
    x = rng.integers(-128, 128, (3, channels, 2, 2)).astype(np.int8)
    x[0] = -128  # the extreme sum: −128 · 131,071
    bias = np.array([[[[7]], [[-9]]]], np.int32)

    def model(weight: np.ndarray) -> onnx.ModelProto:
        graph = helper.make_graph([helper.make_node("ConvInteger", ["x", "w"], ["acc"], name="conv"),
                                   helper.make_node("Add", ["acc", "b"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.INT8, list(x.shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                                  initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)])

    exact = model(w)
    rewritten, _ = ev.for_simulation(exact, "auto", spike_layers=False)
    assert [n.op_type for n in rewritten.graph.node] == ["Cast", "Conv", "Cast"]
    expected = run_session(exact, {"x": x})
    assert expected[0, 0].min() == 7 - (1 << 24) + 128  # the sums reach the bound
    same_bits(run_session(rewritten, {"x": x}), expected, "float Conv vs ConvInteger")
    probed, _ = ev.for_simulation(exact, "auto", keep=["acc"], spike_layers=False)
    assert [n.op_type for n in probed.graph.node] == ["Cast", "Conv", "Cast", "Add"]  # a probe keeps the accumulator
    over = w.copy()
    over[0, budget // 127, 0, 0] += 1
    assert [n.op_type for n in ev.for_simulation(model(over), "auto", spike_layers=False)[0].graph.node] == [
        "ConvInteger", "Add"]


@pytest.fixture(scope="module")
def quantized_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled conv SNN and hybrid model quantized to tianjicx integer graphs."""
    from hnnx.datasets import load_digits

    pixels = load_digits().x_train[:48].reshape(-1, 1, 8, 8).astype(np.float32)
    out = {}
    for name in ("snn_conv", "hybrid_a2s"):
        quantized, _ = hnnx.quantize(models.path(name), {"pixels": pixels})
        path = tmp_path_factory.mktemp("quantized") / f"{name}.onnx"
        hnnx.save(quantized, path)
        out[name] = path
    return out


@pytest.mark.parametrize("name", ["snn_conv", "hybrid_a2s"])
def test_quantized_bundled_models_are_bit_identical_event_driven(library: Path, quantized_models: dict[str, Path],
                                                                 name: str) -> None:
    from hnnx.datasets import load_digits

    data = {"pixels": load_digits().x_test[:100].reshape(-1, 1, 8, 8).astype(np.float32)}
    off = hnnx.simulate(quantized_models[name], data, batch_size=40, event_driven="off")
    on = hnnx.simulate(quantized_models[name], data, batch_size=40, event_driven="on")
    assert on.event_layers and all(layer.rewritten for layer in on.event_layers)
    auto = hnnx.simulate(quantized_models[name], data, batch_size=40, event_driven="auto")
    for result in (on, auto):
        for key, value in off.outputs.items():
            same_bits(result.outputs[key], value, f"{name} {key}")
        assert result.firing_rates == off.firing_rates
    # auto measured every source's rate on the first batch: the neurons', and the A2S coder's
    # (counted for the decision, not listed among the firing rates)
    measured = {layer.name: layer.rate for layer in auto.event_layers if "outputs <" not in layer.reason}
    assert measured and all(rate is not None for rate in measured.values())  # (narrow layers need no rate)
    assert set(auto.firing_rates) == set(off.firing_rates)
    if name == "hybrid_a2s":
        coder = next(layer for layer in auto.event_layers if layer.name == "node_linear.acc.MatMulInteger")
        assert coder.sources == ("a2s",) and 0 < coder.rate < 1
        model = hnnx.load(quantized_models[name])
        coded = next(node.output[0] for node in model.graph.node if node.name == "a2s")
        first = hnnx.simulate(model, {"pixels": data["pixels"][:40]}, probes=[coded], event_driven="off")
        assert coder.rate == pytest.approx(float(np.mean(first.probes[coded], dtype=np.float64)), rel=1e-12)


def test_integer_layers_take_int32_spikes_without_their_cast(quantized_models: dict[str, Path]) -> None:
    """The quantized conv SNN casts its LIFs' int32 spikes to int8 for the integer layers; the
    rewritten layers read the int32 spikes and the casts go (outputs: the bit-identical test above)."""
    model = onnx.shape_inference.infer_shapes(hnnx.load(quantized_models["snn_conv"]))

    def int32_to_int8_casts(graph: gs.Graph) -> list[gs.Node]:
        return [n for n in graph.nodes if n.op == "Cast" and n.attrs.get("to") == TensorProto.INT8
                and n.inputs[0].dtype == np.int32]

    assert int32_to_int8_casts(gs.import_onnx(model))
    rewritten, decisions = ev.for_simulation(model, "on")
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(rewritten))
    layers = [n for n in graph.nodes if n.op in ("SpikeConv", "SpikeMatMul")]
    assert len(layers) == len(decisions) >= 2
    assert not int32_to_int8_casts(graph)
    assert all(n.inputs[0].dtype == np.int32 for n in layers)


# ---------------------------------------------------------------------------------------------
# 4. hnnx.simulate and the command line
# ---------------------------------------------------------------------------------------------
def batched_snn(monkeypatch: pytest.MonkeyPatch, integer: bool, seed: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """The small SNN with a free batch size and 24 samples; every rate pays and every layer counts."""
    monkeypatch.setitem(ev.PAYS_BELOW, "SpikeConv", 1.0)
    monkeypatch.setitem(ev.PAYS_BELOW, "SpikeMatMul", 1.0)
    monkeypatch.setattr(ev, "EVENT_MIN_OUTPUTS", 1)
    model = snn_graph(integer=integer)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return model, np.random.default_rng(seed).integers(0, 4, (24, 3, 6, 6)).astype(np.float32)


def test_simulate_measures_rates_on_the_first_batch_then_goes_event_driven(library: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With no rates given, batch 1 runs dense and its measured rates decide for the others."""
    model, x = batched_snn(monkeypatch, integer=True, seed=9)
    before = native.kernel_calls(library, "SpikeConv")
    result = hnnx.simulate(model, {"x": x}, batch_size=8, event_driven="auto")
    assert native.kernel_calls(library, "SpikeConv") - before == 2  # batches 2 and 3
    assert [(layer.name, layer.rewritten) for layer in result.event_layers] == [("conv2", True), ("dense", True)]
    dense = hnnx.simulate(model, {"x": x}, batch_size=8, event_driven="off")
    for key, value in dense.outputs.items():
        same_bits(result.outputs[key], value, key)
    assert "event-driven: conv2 (hnnx.SpikeConv)" in result.summary()


def test_simulate_decides_float_layers_by_rate_when_opted_in(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``event_float=True``: ``auto`` measures the rates of a float graph on the first batch and
    rewrites its layers like integer ones; without it the float layers stay dense."""
    model, x = batched_snn(monkeypatch, integer=False, seed=10)
    before = native.kernel_calls(library, "SpikeConv")
    result = hnnx.simulate(model, {"x": x}, batch_size=8, event_driven="auto", event_float=True)
    assert native.kernel_calls(library, "SpikeConv") - before == 2  # batches 2 and 3
    assert [(layer.name, layer.rewritten) for layer in result.event_layers] == [("conv2", True), ("dense", True)]
    assert all(layer.rate is not None for layer in result.event_layers)
    dense = hnnx.simulate(model, {"x": x}, batch_size=8, event_driven="off")
    for key, value in dense.outputs.items():
        np.testing.assert_allclose(result.outputs[key], value, rtol=1e-5, atol=1e-5)
    not_opted = hnnx.simulate(model, {"x": x}, batch_size=8, event_driven="auto")
    assert [(layer.rewritten, layer.reason) for layer in not_opted.event_layers] == [
        (False, ev.FLOAT_NOT_OPTED_IN), (False, ev.FLOAT_NOT_OPTED_IN)]


def test_cli_event_driven_flag(tmp_path: Path, quantized_models: dict[str, Path]) -> None:
    from hnnx.datasets import load_digits

    data = tmp_path / "digits.npz"
    np.savez(data, pixels=load_digits().x_test[:64].reshape(-1, 1, 8, 8).astype(np.float32))
    outputs = {}
    for mode in ("off", "on"):
        result = CliRunner().invoke(main, ["simulate", str(quantized_models["snn_conv"]), "--input", str(data),
                                           "--event-driven", mode, "-o", str(tmp_path / f"{mode}.npz")])
        assert result.exit_code == 0, result.output
        outputs[mode] = dict(np.load(tmp_path / f"{mode}.npz"))
    for key, value in outputs["off"].items():
        same_bits(outputs["on"][key], value, key)
    bad = CliRunner().invoke(main, ["simulate", str(quantized_models["snn_conv"]), "--input", str(data),
                                    "--event-driven", "always"])
    assert bad.exit_code == 2 and "always" in bad.output
    # --event-float: the float model's layers are decided by their measured rates, not left alone
    for flags, opted in (([], False), (["--event-float"], True)):
        result = CliRunner().invoke(main, ["simulate", str(models.path("snn_conv")), "--input", str(data),
                                           "--batch-size", "32", *flags])
        assert result.exit_code == 0, result.output
        assert ("opt in with --event-float" in result.output) != opted, result.output
        assert bool(re.search(r"firing rate \d\.\d{3} [≤>]", result.output)) == opted, result.output
