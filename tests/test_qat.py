"""hnnx.qat: the torch module of a graph against onnxruntime, its gradients against their formulas,
weights written back into the same graph, and fine-tuning end to end on the digits."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import hnnx
import hnnx.models
from hnnx import ops
from hnnx.cli import main
from hnnx.datasets import load_digits
from hnnx.errors import DataError, HnnxError, ModelError
from hnnx.qat import GraphModule, finetune, to_torch
from hnnx.qat.hnnx_nodes import float_stand_in
from hnnx.qat.kernels import NodeContext, build_kernel
from hnnx.runtime.simulate import npz_bytes
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

MODELS = ("ann_cnn", "ann_residual", "snn_mlp", "snn_conv", "hybrid_a2s", "hybrid_s2a")
FLOAT_TOLERANCE = 2e-5
"""Float graphs: torch and onnxruntime sum convolutions in different orders (relative and absolute)."""


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _pixels(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    shape = tuple(d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    return x.reshape((-1, *shape))


@pytest.fixture(scope="module")
def models(digits):
    """Each bundled model, float and tianjicx fake-quant (64 calibration samples)."""
    out = {}
    for name in MODELS:
        model = hnnx.load(hnnx.models.path(name))
        fake, _ = hnnx.quantize(model, {"pixels": _pixels(model, digits.x_train[:64])}, format="fakequant")
        out[name] = (model, fake)
    return out


def _onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    outputs, _ = hnnx.Simulator(model).run(feeds)
    return outputs


# --------------------------------------------------------------------------- forward = onnxruntime
@pytest.mark.parametrize("name", MODELS)
def test_fakequant_forward_is_bit_exact_with_onnxruntime(models, digits, name):
    _, fake = models[name]
    x = _pixels(fake, digits.x_test[:48])
    module = to_torch(fake)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    expected = _onnxruntime(fake, {"pixels": x})[module.output_names[0]]
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


@pytest.mark.parametrize("name", MODELS)
def test_float_forward_matches_onnxruntime(models, digits, name):
    model, _ = models[name]
    x = _pixels(model, digits.x_test[:48])
    with torch.no_grad():
        got = to_torch(model)(torch.from_numpy(x)).numpy()
    expected = _onnxruntime(model, {"pixels": x})[model.graph.output[0].name]
    np.testing.assert_allclose(got, expected, rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE)


def test_integer_graphs_and_unknown_ops_are_refused(models, digits):
    model, fake = models["ann_cnn"]
    integer, _ = hnnx.quantize(fake, None, format="int")
    with pytest.raises(ModelError, match="integer graph"):
        to_torch(integer)
    node = helper.make_node("Hardmax", ["x"], ["y"], name="odd")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    with pytest.raises(ModelError, match="'odd'.*Hardmax"):
        to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


# --------------------------------------------------------------------------- gradients
def _kernel(op: str, n_inputs: int, **attrs) -> callable:
    node = helper.make_node(op, [f"in{i}" for i in range(n_inputs)], ["out"], **attrs)
    return build_kernel(node, NodeContext(21, (), 1))


GRADCHECK_CASES = [
    ("Conv", [(1, 2, 4, 5), (3, 2, 3, 3), (3,)], {"pads": [1, 0, 1, 2], "strides": [1, 2]}),
    ("Conv", [(1, 4, 5, 4), (4, 2, 2, 2)], {"group": 2, "dilations": [2, 1]}),
    ("Gemm", [(3, 4), (5, 4), (5,)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ("MatMul", [(2, 3, 4), (4, 5)], {}),
    ("BatchNormalization", [(2, 3, 4), (3,), (3,)], {}),  # mean/var appended as constants below
    ("AveragePool", [(1, 2, 4, 4)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("MaxPool", [(1, 2, 4, 4)], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("GlobalAveragePool", [(2, 3, 2, 2)], {}),
    ("Softmax", [(3, 7)], {"axis": 1}),
    ("LogSoftmax", [(3, 7)], {}),
    ("Sigmoid", [(3, 4)], {}),
    ("Tanh", [(3, 4)], {}),
    ("Relu", [(3, 4)], {}),
    ("Add", [(3, 4), (4,)], {}),
    ("Mul", [(3, 4), (3, 1)], {}),
    ("Div", [(3, 4), (3, 4)], {}),
    ("Flatten", [(2, 3, 4)], {"axis": 1}),
    ("Transpose", [(2, 3, 4)], {"perm": [2, 0, 1]}),
    ("Concat", [(2, 3), (2, 5)], {"axis": 1}),
    ("ReduceMean", [(2, 3, 4)], {"keepdims": 0, "axes": [1, 2]}),
]


@pytest.mark.parametrize("op,shapes,attrs", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
def test_standard_kernels_pass_gradcheck(op, shapes, attrs):
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(*shape, dtype=torch.float64, generator=generator, requires_grad=True) for shape in shapes]
    extra = []
    if op == "BatchNormalization":
        extra = [torch.randn(3, dtype=torch.float64, generator=generator), torch.rand(3, dtype=torch.float64) + 0.5]
    if op == "ReduceMean":
        attrs = {k: v for k, v in attrs.items() if k != "axes"}
        extra = [torch.tensor([1, 2])]
    if op == "Div":
        tensors[1] = (tensors[1].detach().abs() + 1).requires_grad_()
    kernel = _kernel(op, len(shapes) + len(extra), **attrs)
    assert torch.autograd.gradcheck(lambda *xs: kernel([*xs, *extra])[0], tensors)


@pytest.mark.parametrize("op,fn", [("Floor", np.floor), ("Round", np.round), ("Ceil", np.ceil)])
def test_rounding_passes_the_gradient_straight_through(op, fn):
    x = torch.tensor([-1.5, -0.5, 0.2, 0.5, 2.5, 3.7], requires_grad=True)
    y = _kernel(op, 1)([x])[0]
    assert np.array_equal(y.detach().numpy(), fn(x.detach().numpy()))  # numpy rounds half to even, like ONNX
    y.backward(torch.arange(1.0, 7.0))
    assert torch.equal(x.grad, torch.arange(1.0, 7.0))


def test_fake_quantize_pair_has_the_clipping_mask_of_hnn():
    """QuantizeLinear → DequantizeLinear is HNN's FakeQuantize: clamp(round(x/s), −128, 127)·s forward,
    gradient 1 inside [−128·s, 127·s] and 0 outside; no gradient to the scale."""
    scale = torch.tensor(0.25, requires_grad=True)
    zero = torch.tensor(0.0)
    x = torch.tensor([-40.0, -32.0, -31.9, -0.125, 0.13, 31.75, 31.8, 50.0], requires_grad=True)
    quantize = build_kernel(helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                            NodeContext(21, (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT8), 1))
    dequantize = _kernel("DequantizeLinear", 3)
    y = dequantize([quantize([x, scale, zero])[0], scale, zero])[0]
    expected = np.clip(np.round(x.detach().numpy() / 0.25), -128, 127) * 0.25
    assert np.array_equal(y.detach().numpy(), expected)
    y.sum().backward()
    inside = (x.detach() >= -128 * 0.25) & (x.detach() <= 127 * 0.25)
    assert torch.equal(x.grad, inside.to(torch.float32))
    assert scale.grad is None or float(scale.grad) == pytest.approx(float(scale.grad))  # scale is a constant


def test_clip_and_cast_gradients():
    x = torch.tensor([-3.0, -1.0, 0.5, 2.0, 5.0], requires_grad=True)
    y = _kernel("Clip", 3)([x, torch.tensor(-1.0), torch.tensor(2.0)])[0]
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    x = torch.tensor([-2.7, -0.5, 0.5, 3.9], requires_grad=True)
    y = _kernel("Cast", 1, to=TensorProto.INT32)([x])[0]
    assert torch.equal(y.detach(), torch.tensor([-2.0, -0.0, 0.0, 3.0]))  # ONNX casts truncate
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))


def _one_node_module(node: onnx.NodeProto, inputs: dict[str, tuple[int, list]], outputs: dict[str, tuple[int, list]]
                     ) -> GraphModule:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()],
                              [helper.make_tensor_value_info(k, t, s) for k, (t, s) in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    ops.attach_functions(model)
    return GraphModule(model)


def _surrogate(x: np.ndarray, kind: str, width: float) -> np.ndarray:
    """The documented pseudo-derivatives (hnnx.ops.torch_ops), written out independently."""
    if kind == "rectangle":
        return (np.abs(x) < width / 2) / width
    if kind == "sigmoid":
        sig = 1 / (1 + np.exp(-4 * x / width))
        return 4 / width * sig * (1 - sig)
    return (1 / width) / (1 + (np.pi * x / width) ** 2)


@pytest.mark.parametrize("kind", ["rectangle", "sigmoid", "atan"])
def test_float_lif_gradient_is_its_surrogate(kind):
    """One step from v = 0: s = H(u − θ), so ∂s/∂u = g(u − θ)."""
    node = ops.make_node("LIF", ["u"], ["s"], name="lif", threshold=0.5, surrogate=kind, surrogate_width=0.8)
    module = _one_node_module(node, {"u": (TensorProto.FLOAT, [1, 9])}, {"s": (TensorProto.FLOAT, [1, 9])})
    u = torch.linspace(-0.2, 1.2, 9).reshape(1, 9).requires_grad_()
    module(u).sum().backward()
    expected = _surrogate(u.detach().numpy() - 0.5, kind, 0.8)
    np.testing.assert_allclose(u.grad.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_integer_lif_is_exact_with_the_gradient_of_its_float_stand_in():
    """An integer IF neuron between casts: forward = the integer reference; ∂s/∂u at step 0 = the
    rectangle surrogate with the node's window (in integer units, as the quantizer scales it)."""
    nodes = [helper.make_node("Cast", ["u"], ["u_int"], to=TensorProto.INT32),
             ops.make_node("LIF", ["u_int"], ["s_int"], name="if", mode="integer", threshold=40.0,
                           reset_mode="soft", v_init=20.0, surrogate_width=40.0),
             helper.make_node("Cast", ["s_int"], ["s"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("u", TensorProto.FLOAT, [6, 2, 5])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [6, 2, 5])])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    module = GraphModule(model)
    u = torch.from_numpy(np.random.default_rng(1).integers(-10, 50, (6, 2, 5)).astype(np.float32)).requires_grad_()
    spikes = module(u)
    reference, = ops.run_reference(nodes[1], u.detach().numpy().astype(np.int32))
    assert np.array_equal(spikes.detach().numpy(), reference.astype(np.float32))
    expected = _onnxruntime(model, {"u": u.detach().numpy()})["s"]
    assert np.array_equal(spikes.detach().numpy(), expected)
    spikes[0].sum().backward()
    expected_grad = _surrogate(u.detach().numpy()[0] + 20.0 - 40.0, "rectangle", 40.0)
    np.testing.assert_allclose(u.grad.numpy()[0], expected_grad, rtol=1e-6)
    view = ops.LIF.view(nodes[1])
    assert float_stand_in(ops.LIF, view).attrs["surrogate_width"] == 40.0


def test_integer_s2a_counts_carry_the_gradient_of_a_sum():
    """Integer S2A (rate, window 4) outputs counts = K × rate: its stand-in's gradient is 1 per step."""
    nodes = [helper.make_node("Cast", ["x"], ["x_int"], to=TensorProto.INT32),
             ops.make_node("S2A", ["x_int"], ["c_int"], name="rate", mode="integer", decoding="rate", window=4),
             helper.make_node("Cast", ["c_int"], ["c"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 3])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 3])])
    module = GraphModule(ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])))
    x = torch.from_numpy((np.random.default_rng(2).random((8, 3)) < 0.5).astype(np.float32)).requires_grad_()
    counts = module(x)
    assert np.array_equal(counts.detach().numpy(), x.detach().numpy().reshape(2, 4, 3).sum(1))
    counts.sum().backward()
    assert torch.equal(x.grad, torch.ones(8, 3))


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_trainable_tensor(models, digits, name):
    """Through every op of the fake-quant graph (STE, integer neurons and hybrid units)."""
    _, fake = models[name]
    module = to_torch(fake)
    x = torch.from_numpy(_pixels(fake, digits.x_train[:32]))
    scores = module.real_outputs(x)[0]
    scores = scores.mean(0) if scores.dim() == 3 else scores
    torch.nn.functional.cross_entropy(scores, torch.from_numpy(digits.y_train[:32])).backward()
    for key, parameter in module.parameters_dict.items():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, module.initializer_of[key]


# --------------------------------------------------------------------------- write-back
def test_write_back_without_training_is_the_same_model(models):
    _, fake = models["ann_residual"]
    written = to_torch(fake).write_back()
    assert written.SerializeToString() == fake.SerializeToString()


def test_trained_weights_round_trip(models, digits):
    """After a training step: the written graph has the same nodes and initializer names, onnxruntime on
    it equals the module bit for bit, biases sit on their integer grid, and re-quantizing it to the
    integer graph gives the fake-quant outputs times one power of two."""
    _, fake = models["ann_residual"]
    module = to_torch(fake)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    x = _pixels(fake, digits.x_train[:64])
    loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(digits.y_train[:64]))
    loss.backward()
    optimizer.step()
    written = module.write_back()
    assert [(n.op_type, n.name, list(n.input), list(n.output)) for n in written.graph.node] == \
           [(n.op_type, n.name, list(n.input), list(n.output)) for n in fake.graph.node]
    assert [i.name for i in written.graph.initializer] == [i.name for i in fake.graph.initializer]
    before = {i.name: numpy_helper.to_array(i) for i in fake.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert set(changed) <= set(module.trainable_initializers()) and changed
    for bias, grid in module.bias_grids.items():
        units = after[bias].astype(np.float64) / grid
        assert np.array_equal(units, np.round(units)), bias
    test = _pixels(fake, digits.x_test[:64])
    with torch.no_grad():
        got = module(torch.from_numpy(test)).numpy()
    fake_out = _onnxruntime(written, {"pixels": test})["scores"]
    assert np.array_equal(got, fake_out)
    integer, _ = hnnx.quantize(written, None, format="int")
    int_out = _onnxruntime(integer, {"pixels": test})["scores"]
    ratio = hnnx.quantization.output_scales(integer)["scores"] / hnnx.quantization.output_scales(written)["scores"]
    assert math.log2(ratio).is_integer()
    assert np.array_equal(int_out.astype(np.float64) * ratio, fake_out.astype(np.float64))


# --------------------------------------------------------------------------- fine-tuning
def test_finetune_recovers_perturbed_weights_and_keeps_the_best_epoch(models, digits, tmp_path):
    _, fake = models["ann_cnn"]
    noisy = onnx.ModelProto()
    noisy.CopyFrom(fake)
    rng = np.random.default_rng(0)
    for init in noisy.graph.initializer:  # spoil the weight sources (the QAT parameters)
        if init.name.endswith(".weight"):
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((w + rng.normal(0, 1.0, w.shape) * np.abs(w).max()
                                                   ).astype(np.float32), init.name))
    train = {"pixels": _pixels(fake, digits.x_train[:640]), "labels": digits.y_train[:640]}
    val = {"pixels": _pixels(fake, digits.x_test[:160]), "labels": digits.y_test[:160]}
    lines = []
    checkpoint = tmp_path / "best.onnx"
    result = finetune(noisy, train, validation=val, epochs=2, lr=3e-3, log=lines.append, checkpoint=checkpoint)
    assert len(result.history) == 3 and len(lines) == 3 and lines[0].startswith("before training")
    assert result.best_accuracy > result.initial_accuracy + 0.2
    saved = {i.name: numpy_helper.to_array(i) for i in hnnx.load(checkpoint).graph.initializer}
    assert all(np.array_equal(saved[i.name], numpy_helper.to_array(i)) for i in result.model.graph.initializer)
    # The recorded validation accuracy is that of the returned graph, run in onnxruntime.
    assert hnnx.simulate(result.model, val).accuracy == pytest.approx(result.best_accuracy)
    assert hnnx.simulate(noisy, val).accuracy == pytest.approx(result.initial_accuracy)
    best = max(range(3), key=lambda e: (result.history[e].validation_accuracy, -e))
    assert result.history[result.best_epoch].validation_accuracy == result.history[best].validation_accuracy


def test_finetune_distills_from_the_float_model(models, digits):
    model, fake = models["snn_mlp"]
    train = {"pixels": _pixels(fake, digits.x_train[:192])}
    result = finetune(fake, train, loss="distill", teacher=model, epochs=1, batch_size=64)
    assert result.validation_against == "teacher"
    assert math.isfinite(result.history[1].loss) and result.history[1].loss >= 0


def test_finetune_errors(models, digits):
    _, fake = models["ann_cnn"]
    data = {"pixels": _pixels(fake, digits.x_train[:32])}
    with pytest.raises(DataError, match="needs labels"):
        finetune(fake, data)
    with pytest.raises(HnnxError, match="unknown loss"):
        finetune(fake, {**data, "labels": digits.y_train[:32]}, loss="mse")
    with pytest.raises(HnnxError, match="teacher"):
        finetune(fake, data, loss="distill")
    with pytest.raises(DataError, match="pixels"):
        finetune(fake, {"pixels": np.zeros((4, 1, 9, 9), np.float32), "labels": np.zeros(4, np.int64)})


def test_cli_finetune_writes_a_model_that_requantizes(models, digits, tmp_path):
    _, fake = models["ann_cnn"]
    source, data, out = tmp_path / "fake.onnx", tmp_path / "train.npz", tmp_path / "tuned.onnx"
    hnnx.save(fake, source)
    data.write_bytes(npz_bytes({"pixels": _pixels(fake, digits.x_train[:256]), "labels": digits.y_train[:256]}))
    result = CliRunner().invoke(main, ["finetune", str(source), "--data", str(data), "--epochs", "1",
                                       "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output and f"wrote {out}" in result.output
    tuned = hnnx.load(out)
    integer, _ = hnnx.quantize(tuned, None, format="int")
    assert hnnx.quantization.quantized_as(integer) == "tianjicx/int"
    bad = CliRunner().invoke(main, ["finetune", str(source), "--data", str(data), "--loss", "distill",
                                    "-o", str(out)])
    assert bad.exit_code == 2 and "teacher" in bad.output


def test_quantize_takes_the_percentile_of_its_observer(models, digits, tmp_path):
    """The coarse settings of the fine-tuning results: a lower percentile gives smaller ranges, so finer
    activation scales (larger exponents) that clip more."""
    model, _ = models["ann_cnn"]
    calib = {"pixels": _pixels(model, digits.x_train[:64])}

    def exponents(**options) -> list[int]:
        _, report = hnnx.quantize(model, calib, observer="percentile", **options)
        return [layer["details"]["exponent"] for layer in report.layers if layer["role"] in ("input", "requantize")]

    default, coarse = exponents(), exponents(observer_options={"percentile": 60.0})
    assert len(default) == len(coarse) == 4 and all(c > d for c, d in zip(coarse, default))
    source = tmp_path / "ann.onnx"
    hnnx.save(model, source)
    data = tmp_path / "calib.npz"
    data.write_bytes(npz_bytes(calib))
    bad = CliRunner().invoke(main, ["quantize", str(source), "--calib", str(data), "--percentile", "70",
                                    "-o", str(tmp_path / "q.onnx")])
    assert bad.exit_code == 2 and "--observer percentile" in bad.output
