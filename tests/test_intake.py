"""Intake of models written by other tools: each intake pass keeps the model's outputs (checked in
onnxruntime against the original, sample by sample) and reports what it changed; external data;
the hnnx opset check."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hnnx
from hnnx import ops, passes
from hnnx.errors import ModelError

RNG = np.random.default_rng(5)


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def _one_by_one(model: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    """The model's first output for each sample of ``x`` run alone, joined: the reference for a
    model whose batch was fixed to 1."""
    return np.concatenate([_run(model, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _small_model(nodes: list[onnx.NodeProto], x_dims: list | None, y_dims: list | None,
                 initializers: list[onnx.TensorProto] = (), opset: int = 13) -> onnx.ModelProto:
    """A float graph ``x → nodes → y``."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)], initializer=initializers)
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _weights(**arrays: np.ndarray) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.asarray(value, np.float32 if np.asarray(value).dtype.kind == "f" else None),
                                    name) for name, value in arrays.items()]


def _old_style_cnn(opset: int = 9) -> onnx.ModelProto:
    """An exporter's opset-``opset`` CNN: batch fixed to 1, weights listed as graph inputs (IR 3),
    a folded ``view(1, -1)``, Unsqueeze/Clip/Dropout whose signatures changed after opset 9.
    x [1, 3, 6, 6] → Conv → Clip(0, 6) → MaxPool → Reshape [1, -1] → Gemm → Unsqueeze → y [1, 1, 4]."""
    weights = _weights(w=RNG.normal(0, 0.4, (4, 3, 3, 3)), b=RNG.normal(0, 0.1, 4),
                       fc_w=RNG.normal(0, 0.3, (4, 16)), fc_b=RNG.normal(0, 0.1, 4))
    weights.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"))
    if opset < 11:  # the opset-9 signatures: bounds, ratio and axes as attributes
        clip = helper.make_node("Clip", ["c"], ["r"], name="relu6", min=0.0, max=6.0)
        drop = helper.make_node("Dropout", ["f"], ["d"], name="drop", ratio=0.5)
        unsqueeze = helper.make_node("Unsqueeze", ["g"], ["y"], name="add_axis", axes=[1])
    else:  # opset 13: as inputs
        weights += _weights(low=np.float32(0), high=np.float32(6))
        weights.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
        clip = helper.make_node("Clip", ["c", "low", "high"], ["r"], name="relu6")
        drop = helper.make_node("Dropout", ["f"], ["d"], name="drop")
        unsqueeze = helper.make_node("Unsqueeze", ["g", "axis1"], ["y"], name="add_axis")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), clip,
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3, 3], strides=[3, 3]),
        helper.make_node("Reshape", ["p", "flat_shape"], ["f"], name="flatten"), drop,
        helper.make_node("Gemm", ["d", "fc_w", "fc_b"], ["g"], name="fc", transB=1), unsqueeze,
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])]
    inputs += [helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)) for w in weights]
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4])],
                              initializer=weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=3)


# --------------------------------------------------------------------------- initializers as inputs
def test_initializers_listed_as_inputs_stop_being_inputs() -> None:
    model = _old_style_cnn(opset=13)
    x = RNG.random((1, 3, 6, 6), dtype=np.float32)
    changes: dict[str, bool] = {}
    out = passes.run_passes(model, [passes.drop_initializer_inputs], changes)
    assert changes == {"drop_initializer_inputs": True}
    assert [vi.name for vi in out.graph.input] == ["x"]
    assert out.ir_version >= 4
    np.testing.assert_array_equal(_run(out, {"x": x})[0], _run(model, {"x": x})[0])
    changes.clear()
    passes.run_passes(out, [passes.drop_initializer_inputs], changes)
    assert changes == {"drop_initializer_inputs": False}


def test_weights_listed_as_inputs_are_not_calibrated_as_data() -> None:
    model = passes.preprocess(_old_style_cnn(opset=13))
    assert hnnx.Simulator(model).inputs[0].name == "x" and len(hnnx.Simulator(model).inputs) == 1


# --------------------------------------------------------------------------- opset upgrade
@pytest.mark.parametrize("minimum", [13, ops.MIN_ONNX_OPSET])
def test_an_old_opset_is_upgraded_and_reported(minimum: int) -> None:
    model = _old_style_cnn(opset=9)
    x = RNG.random((1, 3, 6, 6), dtype=np.float32)
    changes: dict[str, bool] = {}
    notes: dict[str, str] = {}
    out = passes.run_passes(model, [passes.drop_initializer_inputs, passes.upgrade_opset(minimum, notes)], changes)
    assert changes["upgrade_opset"] is True
    assert notes == {"upgrade_opset": f"ai.onnx 9 → {minimum}"}
    assert passes.standard_opset(out) == minimum
    # Clip's bounds and Unsqueeze's axes became inputs: the converter rewrote the nodes.
    clip = next(n for n in out.graph.node if n.op_type == "Clip")
    assert len(clip.input) == 3 and not clip.attribute
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_allclose(_run(out, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_a_recent_enough_opset_is_left_alone() -> None:
    model = _old_style_cnn(opset=13)
    notes: dict[str, str] = {}
    changes: dict[str, bool] = {}
    out = passes.run_passes(model, [passes.upgrade_opset(13, notes), passes.upgrade_opset(None, notes)], changes)
    assert changes == {"upgrade_opset": False} and notes == {}
    assert passes.standard_opset(out) == 13


def test_an_op_the_converter_cannot_know_is_named() -> None:
    graph = helper.make_graph([helper.make_node("Fancy", ["x"], ["y"], name="mystery")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
    with pytest.raises(ModelError, match=r"node 'mystery' has op type 'Fancy', which is no ai.onnx op: cannot "
                                         r"convert the model from opset 9 to 13$"):
        passes.run_passes(model, [passes.upgrade_opset(13)])


# --------------------------------------------------------------------------- symbolic batch
def _made_symbolic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool, str]:
    """``make_batch_symbolic`` run on ``model``: the result, whether it changed it, and its note."""
    notes: dict[str, str] = {}
    changes: dict[str, bool] = {}
    out = passes.run_passes(model, [passes.make_batch_symbolic(notes)], changes)
    return out, changes["make_batch_symbolic"], notes["make_batch_symbolic"]


def test_a_fixed_batch_becomes_symbolic_and_the_folded_flatten_copies_it() -> None:
    model = passes.run_passes(_old_style_cnn(opset=13), [passes.drop_initializer_inputs])
    out, changed, note = _made_symbolic(model)
    assert changed and note == "batch of inputs 'x' was fixed at 1, now N; 1 Reshape target(s) now copy the batch"
    assert hnnx.Simulator(out).inputs[0].dims == ("N", 3, 6, 6)
    assert [d.dim_param or d.dim_value for d in out.graph.output[0].type.tensor_type.shape.dim] == ["N", 1, 4]
    x = RNG.random((5, 3, 6, 6), dtype=np.float32)
    np.testing.assert_allclose(_run(out, {"x": x})[0], _one_by_one(model, "x", x), rtol=1e-6, atol=1e-6)


def test_a_batch_the_graph_mixes_stays_fixed_and_says_so() -> None:
    # x [1, 4] → Reshape [2, 2]: the batch does not reach the output, so it must stay 1.
    model = _small_model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [1, 4], [2, 2],
                         [numpy_helper.from_array(np.array([2, 2], np.int64), "shape")])
    out, changed, note = _made_symbolic(model)
    assert not changed
    assert note == ("batch stays fixed at 1: output 'y' does not follow the batch of inputs 'x'; samples are fed 1 "
                    "at a time")
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_a_time_major_input_has_its_batch_on_axis_1() -> None:
    model = _small_model([helper.make_node("Relu", ["x"], ["y"])], ["T", 1, 4], ["T", 1, 4])
    out = passes.run_passes(model, [passes.make_batch_symbolic()])
    assert [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == ["T", "N", 4]


def test_a_model_whose_batch_stays_fixed_is_calibrated_one_sample_at_a_time() -> None:
    # Flatten(axis=0) folds the batch into the features: the batch cannot become symbolic.
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=0), helper.make_node("MatMul", ["f", "w"], ["y"])]
    model = _small_model(nodes, [1, 4], [1, 3], [numpy_helper.from_array(w, "w")])
    x = rng.normal(size=(9, 4)).astype(np.float32)
    quantized, report = hnnx.quantize(model, {"x": x}, target="qdq", batch_size=64)
    steps = {step["pass"]: step for step in report.preprocessing}
    assert steps["make_batch_symbolic"]["changed"] is False
    assert "samples are fed 1 at a time" in steps["make_batch_symbolic"]["detail"]
    assert report.calibration_samples == 9
    expected = x @ w
    session = hnnx.Simulator(quantized)
    got = np.concatenate([session.run({"x": x[i:i + 1]})[0]["y"] for i in range(9)])
    sqnr = 10 * np.log10(np.sum(expected**2) / np.sum((got - expected) ** 2))
    assert sqnr > 30, sqnr
    assert abs(sqnr - report.sqnr_db["y"]) < 0.5  # the report compared the same nine samples


# --------------------------------------------------------------------------- BatchNormalization
def _bn_values(channels: int) -> dict[str, np.ndarray]:
    return {"gamma": RNG.uniform(0.5, 1.5, channels), "beta": RNG.normal(0, 0.3, channels),
            "mean": RNG.normal(0, 0.5, channels), "var": RNG.uniform(0.2, 2.0, channels)}


def _bn_node(name: str) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name=name)


def _bn_weights(values: dict[str, np.ndarray]) -> list[onnx.TensorProto]:
    return _weights(g=values["gamma"], b=values["beta"], m=values["mean"], v=values["var"])


def _preactivation_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [N, 4, 5, 5] → Add(x, x) → BN 'bn1' → Relu → Conv: a BN with no layer to fold into."""
    values = _bn_values(4)
    weights = _weights(**{f"bn1.{k}": v for k, v in values.items()}, w=RNG.normal(0, 0.3, (2, 4, 3, 3)))
    nodes = [helper.make_node("Add", ["x", "x"], ["s"], name="double"),
             helper.make_node("BatchNormalization", ["s", "bn1.gamma", "bn1.beta", "bn1.mean", "bn1.var"], ["n"],
                              name="bn1", epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "pre", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])],
                              initializer=weights)
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), values


def test_an_unfoldable_batchnorm_becomes_a_per_channel_mul_and_add() -> None:
    model, values = _preactivation_model()
    changes: dict[str, bool] = {}
    out = passes.run_passes(model, [passes.infer_shapes, passes.fold_batchnorm, passes.decompose_batchnorm], changes)
    assert changes == {"infer_shapes": True, "fold_batchnorm": False, "decompose_batchnorm": True}
    assert [(n.op_type, n.name) for n in out.graph.node] == [("Add", "double"), ("Mul", "bn1.mul"),
                                                              ("Add", "bn1.add"), ("Relu", "relu"), ("Conv", "conv")]
    mul, add = out.graph.node[1:3]
    assert list(mul.input) == ["s", "bn1.scale"] and list(add.input) == ["bn1.scaled", "bn1.shift"]
    assert list(add.output) == ["n"]  # the BN's output tensor keeps its name
    constants = {init.name: numpy_helper.to_array(init) for init in out.graph.initializer}
    factor = values["gamma"] / np.sqrt(values["var"] + 1e-3)  # hand-computed from the definition of BN
    np.testing.assert_allclose(constants["bn1.scale"], factor.reshape(4, 1, 1), rtol=1e-6)
    np.testing.assert_allclose(constants["bn1.shift"], (values["beta"] - values["mean"] * factor).reshape(4, 1, 1),
                               rtol=1e-6, atol=1e-7)
    x = RNG.normal(size=(3, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(out, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_a_batchnorm_on_features_gets_constants_of_shape_c() -> None:
    values = _bn_values(3)
    model = _small_model([_bn_node("norm")], ["N", 3], ["N", 3], _bn_weights(values), opset=17)
    out = passes.preprocess(model)
    assert [n.op_type for n in out.graph.node] == ["Mul", "Add"]
    assert {i.name: list(i.dims) for i in out.graph.initializer} == {"norm.scale": [3], "norm.shift": [3]}
    x = RNG.normal(size=(6, 3)).astype(np.float32)
    expected = (x - values["mean"]) / np.sqrt(values["var"] + 1e-5) * values["gamma"] + values["beta"]
    np.testing.assert_allclose(_run(out, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_a_batchnorm_of_unknown_rank_is_left_as_it_is() -> None:
    values = _bn_values(3)
    model = _small_model([_bn_node("norm")], None, None, _bn_weights(values), opset=17)
    changes: dict[str, bool] = {}
    out = passes.run_passes(model, [passes.decompose_batchnorm], changes)
    assert changes == {"decompose_batchnorm": False}
    assert [n.op_type for n in out.graph.node] == ["BatchNormalization"]


# --------------------------------------------------------------------------- the whole intake, as a user meets it
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript exporter, as other tools use it
def test_quantize_takes_an_exported_opset_9_preactivation_net_with_a_fixed_batch() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    class PreActivation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.BatchNorm2d(8)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8 * 6 * 6, 5)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            y = self.stem(x)
            z = self.conv(torch.relu(self.norm(y))) + y  # BN → ReLU → Conv: nothing to fold it into
            return self.head(z.view(z.size(0), -1))

    torch.manual_seed(0)
    net = PreActivation().eval()
    with torch.no_grad():
        net.norm.running_mean.normal_(0, 0.5)
        net.norm.running_var.uniform_(0.5, 2.0)
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.rand(1, 3, 6, 6),), buffer, dynamo=False, opset_version=9,
                      keep_initializers_as_inputs=True, input_names=["pixels"], output_names=["scores"])
    model = onnx.load_from_string(buffer.getvalue())
    x = RNG.random((20, 3, 6, 6), dtype=np.float32)

    changes: dict[str, bool] = {}
    notes: dict[str, str] = {}
    processed = passes.preprocess(model, min_opset=13, changes=changes, notes=notes)
    assert all(changes[name] for name in ("drop_initializer_inputs", "upgrade_opset", "make_batch_symbolic",
                                          "decompose_batchnorm"))
    np.testing.assert_allclose(_run(processed, {"pixels": x})[0], _one_by_one(model, "pixels", x),
                               rtol=1e-4, atol=1e-4)

    for target, opset in (("qdq", 13), ("tianjicx", ops.MIN_ONNX_OPSET)):
        quantized, report = hnnx.quantize(model, {"pixels": x}, target=target, batch_size=8)
        steps = {step["pass"]: step for step in report.preprocessing}
        assert steps["upgrade_opset"] == {"pass": "upgrade_opset", "changed": True, "detail": f"ai.onnx 9 → {opset}"}
        assert steps["make_batch_symbolic"]["changed"] and steps["decompose_batchnorm"]["changed"]
        assert "| upgrade_opset | yes | ai.onnx 9 → " in report.markdown()
        assert report.sqnr_db["scores"] > 15, (target, report.sqnr_db)
        assert _run(quantized, {"pixels": x[:7]})[0].shape == (7, 5)  # any batch size now


# --------------------------------------------------------------------------- hnnx opset
def test_a_model_importing_an_unknown_hnnx_opset_is_refused_at_load(tmp_path: Path) -> None:
    graph = helper.make_graph([ops.make_node("Fire", ["v", "t"], ["s"], name="fire")], "g",
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3])],
                              initializer=_weights(t=np.float32(0.5)))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET),
                                                    helper.make_opsetid(ops.DOMAIN, 99)], ir_version=ops.IR_VERSION)
    path = tmp_path / "future.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=rf"^{path}: imports the hnnx opset version 99, but this hnnx implements "
                                         rf"version {ops.OPSET_VERSION} only$"):
        hnnx.load(path)
    with pytest.raises(ModelError, match="imports the hnnx opset version 99"):
        passes.preprocess(model)


# --------------------------------------------------------------------------- external data
def _conv_model() -> onnx.ModelProto:
    """Conv with 8·4·3·3 float weights (1,152 bytes: external) and a 32-byte bias (inline)."""
    weights = _weights(w=RNG.normal(0, 0.3, (8, 4, 3, 3)), b=RNG.normal(0, 0.1, 8))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 3, 3])],
                              initializer=weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)], ir_version=ops.IR_VERSION)


def test_a_model_saved_with_external_data_loads_and_runs(tmp_path: Path) -> None:
    model = _conv_model()
    before = [(t.raw_data, t.data_location, len(t.external_data)) for t in model.graph.initializer]
    path = hnnx.save(model, tmp_path / "conv.onnx", external_data=True)
    assert [(t.raw_data, t.data_location, len(t.external_data)) for t in model.graph.initializer] == before
    assert sorted(os.listdir(tmp_path)) == ["conv.onnx", "conv.onnx.data"]
    assert (tmp_path / "conv.onnx.data").stat().st_size == 8 * 4 * 3 * 3 * 4  # the weight only: the bias is small
    stored = onnx.load(str(path), load_external_data=False)
    w = next(t for t in stored.graph.initializer if t.name == "w")
    assert w.data_location == TensorProto.EXTERNAL and {e.key: e.value for e in w.external_data}["location"] == \
        "conv.onnx.data"
    loaded = hnnx.load(path)
    assert [numpy_helper.to_array(t).tolist() for t in loaded.graph.initializer] == \
        [numpy_helper.to_array(t).tolist() for t in model.graph.initializer]
    x = RNG.normal(size=(2, 4, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(str(path), {"x": x})[0], _run(model, {"x": x})[0])


def test_a_model_over_the_size_limit_goes_to_external_data_and_is_checked_from_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hnnx import model as model_io

    model = _conv_model()
    small = hnnx.save(model, tmp_path / "small.onnx")
    assert sorted(os.listdir(tmp_path)) == ["small.onnx"]  # under the limit: one file
    limit = model.ByteSize() - 1  # stands for protobuf's 2 GB
    path = hnnx.save(model, tmp_path / "big.onnx", size_limit=limit)
    assert (tmp_path / "big.onnx.data").is_file()
    checked: list[str] = []
    original = model_io.check_file
    monkeypatch.setattr(model_io, "check_file", lambda p: checked.append(Path(p).name) or original(p))
    loaded = hnnx.load(path, size_limit=limit)
    assert checked == ["big.onnx"]  # too large for one message: checked from the file
    assert loaded.graph.initializer[0].raw_data == model.graph.initializer[0].raw_data
    assert hnnx.load(small, size_limit=limit) is not None and checked == ["big.onnx"]


def test_missing_external_data_is_named(tmp_path: Path) -> None:
    path = hnnx.save(_conv_model(), tmp_path / "conv.onnx", external_data=True)
    (tmp_path / "conv.onnx.data").unlink()
    with pytest.raises(ModelError, match=rf"^{path}: cannot read its external data"):
        hnnx.load(path)


def test_a_failed_external_data_save_writes_nothing(tmp_path: Path) -> None:
    model = _conv_model()
    model.graph.node[0].input[0] = "nowhere"  # fails the checker
    with pytest.raises(ModelError, match="invalid ONNX model"):
        hnnx.save(model, tmp_path / "bad.onnx", external_data=True)
    assert os.listdir(tmp_path) == []
