"""Each pre-processing pass leaves the model computing the same function (checked in onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hnnx
from hnnx import ops, passes

RNG = np.random.default_rng(11)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)], ir_version=10)
    return ops.attach_functions(model)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def _bn_params(prefix: str, channels: int, affine: bool = True) -> dict[str, np.ndarray]:
    return {
        f"{prefix}.scale": (RNG.uniform(0.5, 1.5, channels) if affine else np.ones(channels)).astype(np.float32),
        f"{prefix}.bias": (RNG.normal(0, 0.3, channels) if affine else np.zeros(channels)).astype(np.float32),
        f"{prefix}.mean": RNG.normal(0, 0.5, channels).astype(np.float32),
        f"{prefix}.var": RNG.uniform(0.2, 2.0, channels).astype(np.float32),
    }


def _bn(prefix: str, x: str, y: str) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, f"{prefix}.scale", f"{prefix}.bias", f"{prefix}.mean",
                                                   f"{prefix}.var"], [y], epsilon=1e-3)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "non-affine"])
@pytest.mark.parametrize("conv_bias", [True, False], ids=["bias", "no-bias"])
def test_fold_batchnorm_into_conv(affine: bool, conv_bias: bool) -> None:
    inits = {"w": RNG.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), **_bn_params("bn", 6, affine)}
    conv_inputs = ["x", "w"]
    if conv_bias:
        inits["b"] = RNG.normal(0, 0.1, 6).astype(np.float32)
        conv_inputs.append("b")
    model = _model([helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1]), _bn("bn", "c", "y"),
                    helper.make_node("Relu", ["y"], ["z"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 6, 5, 5])], inits)
    folded = passes.run_passes(model, [passes.fold_batchnorm])
    assert "BatchNormalization" not in _op_types(folded)
    feeds = {"x": RNG.normal(0, 1, (4, 3, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(_run(folded, feeds)[0], _run(model, feeds)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_batchnorm_into_gemm(trans_b: int) -> None:
    w = RNG.normal(0, 0.5, (5, 8) if trans_b else (8, 5)).astype(np.float32)
    inits = {"w": w, "c": RNG.normal(0, 0.1, 5).astype(np.float32), **_bn_params("bn", 5)}
    model = _model([helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=trans_b, alpha=0.5, beta=2.0),
                    _bn("bn", "g", "y")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    folded = passes.run_passes(model, [passes.fold_batchnorm])
    assert _op_types(folded) == ["Gemm"]
    feeds = {"x": RNG.normal(0, 1, (6, 8)).astype(np.float32)}
    np.testing.assert_allclose(_run(folded, feeds)[0], _run(model, feeds)[0], atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_into_matmul() -> None:
    inits = {"w": RNG.normal(0, 0.5, (8, 5)).astype(np.float32), **_bn_params("bn", 5)}
    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"]), _bn("bn", "m", "y")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])], inits)
    folded = passes.run_passes(model, [passes.infer_shapes, passes.fold_batchnorm])
    assert _op_types(folded) == ["MatMul", "Add"]
    feeds = {"x": RNG.normal(0, 1, (3, 8)).astype(np.float32)}
    np.testing.assert_allclose(_run(folded, feeds)[0], _run(model, feeds)[0], atol=1e-5, rtol=1e-5)


def test_batchnorm_with_a_shared_input_is_not_folded() -> None:
    inits = {"w": RNG.normal(0, 0.5, (4, 2, 1, 1)).astype(np.float32), **_bn_params("bn", 4)}
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"]), _bn("bn", "c", "y"),
                    helper.make_node("Add", ["c", "y"], ["z"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 3, 3])], inits)
    folded = passes.run_passes(model, [passes.fold_batchnorm])
    assert "BatchNormalization" in _op_types(folded)


def test_remove_identities_keeps_output_names_and_function() -> None:
    inits = {"ratio": np.array(0.5, np.float32)}
    model = _model([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                    helper.make_node("Dropout", ["b", "ratio"], ["c"]), helper.make_node("Neg", ["c"], ["d"]),
                    helper.make_node("Identity", ["d"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    cleaned = passes.run_passes(model, [passes.remove_identities])
    assert _op_types(cleaned) == ["Relu", "Neg"]
    assert [o.name for o in cleaned.graph.output] == ["y"]
    feeds = {"x": RNG.normal(0, 1, (3, 4)).astype(np.float32)}
    assert np.array_equal(_run(cleaned, feeds)[0], _run(model, feeds)[0])


def test_identity_from_graph_input_to_output_stays() -> None:
    model = _model([helper.make_node("Identity", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], {})
    assert _op_types(passes.run_passes(model, [passes.remove_identities])) == ["Identity"]


def test_fold_constants_precomputes_and_keeps_hnnx_nodes() -> None:
    inits = {"a": np.full((4,), 2.0, np.float32), "b": np.arange(4, dtype=np.float32)}
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "a"], ["k"]),
             helper.make_node("Mul", ["x", "k"], ["current"]),
             ops.make_node("LIF", ["current"], ["spikes"], name="lif", threshold=3.0)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 4])],
                   [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, ["T", "N", 4])], inits)
    folded = passes.run_passes(model, [passes.fold_constants])
    assert _op_types(folded) == ["Mul", "LIF"]
    feeds = {"x": RNG.normal(0, 1, (5, 2, 4)).astype(np.float32)}
    assert np.array_equal(_run(folded, feeds)[0], _run(model, feeds)[0])


def test_fold_time_runs_conv_and_pool_per_frame() -> None:
    weight = RNG.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             ops.make_node("LIF", ["c"], ["s"], name="lif", alpha=0.5),
             helper.make_node("MaxPool", ["s"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="pool")]
    time_major = ["T", "N", 2, 6, 6]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, time_major)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", 4, 3, 3])],
                          initializer=[numpy_helper.from_array(weight, "w")]),
        opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)], ir_version=10)
    folded = passes.run_passes(model, [passes.infer_shapes, passes.fold_time])
    x = RNG.normal(0, 1, (3, 2, 2, 6, 6)).astype(np.float32)
    got = _run(folded, {"x": x})[0]
    # Reference: the same conv on each frame separately, the LIF over time, the pool per frame.
    frame_model = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                         [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4, 6, 6])], {"w": weight})
    current = np.stack([_run(frame_model, {"x": frame})[0] for frame in x])
    (spikes,) = ops.run_reference(nodes[1], current)
    expected = spikes.reshape(3, 2, 4, 3, 2, 3, 2).max(axis=(4, 6))
    assert got.shape == (3, 2, 4, 3, 3)
    assert np.array_equal(got, expected)


def test_preprocess_keeps_bundled_models_equivalent() -> None:
    from hnnx import models

    for name in models.available():
        model = hnnx.load(models.path(name))
        processed = passes.preprocess(model)
        onnx.checker.check_model(processed, full_check=True)
        x = RNG.random((5, *models.input_layout(name))).astype(np.float32)
        assert np.array_equal(_run(processed, {"pixels": x})[0], _run(model, {"pixels": x})[0]), name


def test_preprocess_folds_conv_batchnorm_chains() -> None:
    """Conv → BatchNormalization → Relu blocks: fold_batchnorm folds each BN into its Conv and
    decompose_batchnorm, running next in the same pipeline, passes over the folded nodes."""
    nodes, weights = [], {}
    x = "x"
    for b in range(2):
        weights |= {f"w{b}": RNG.normal(0, 0.5, (3, 3, 3, 3)).astype(np.float32),
                    f"g{b}": RNG.uniform(0.5, 1.5, 3).astype(np.float32), f"be{b}": RNG.normal(0, 0.1, 3).astype(np.float32),
                    f"m{b}": RNG.normal(0, 0.1, 3).astype(np.float32), f"v{b}": RNG.uniform(0.5, 1.5, 3).astype(np.float32)}
        nodes += [helper.make_node("Conv", [x, f"w{b}"], [f"c{b}"], pads=[1, 1, 1, 1], name=f"conv{b}"),
                  helper.make_node("BatchNormalization", [f"c{b}", f"g{b}", f"be{b}", f"m{b}", f"v{b}"], [f"n{b}"],
                                   name=f"bn{b}"),
                  helper.make_node("Relu", [f"n{b}"], [f"r{b}"], name=f"relu{b}")]
        x = f"r{b}"
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                   [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, 5, 5])], weights)
    changes: dict[str, bool] = {}
    processed = passes.preprocess(model, changes=changes)
    assert changes["fold_batchnorm"] and not changes["decompose_batchnorm"]
    assert [n.op_type for n in processed.graph.node] == ["Conv", "Relu", "Conv", "Relu"]
    data = RNG.random((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(processed, {"x": data})[0], _run(model, {"x": data})[0], rtol=1e-5, atol=1e-5)


def test_a_failing_pass_is_reported_by_name() -> None:
    @passes.graph_pass
    def broken(graph: object) -> bool:
        raise ValueError("boom")

    model = _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", 1, ["N"])],
                   [helper.make_tensor_value_info("y", 1, ["N"])], {})
    with pytest.raises(hnnx.HnnxError, match="pass broken failed: ValueError: boom"):
        passes.run_passes(model, [broken])


def test_an_undeclared_pass_is_refused() -> None:
    def bare(graph: object) -> bool:
        return False

    model = _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", 1, ["N"])],
                   [helper.make_tensor_value_info("y", 1, ["N"])], {})
    with pytest.raises(hnnx.HnnxError, match="bare is not a declared pass"):
        passes.run_passes(model, [bare])


def test_passes_declare_their_kind_and_report_changes() -> None:
    assert passes.infer_shapes.kind == "model"
    assert {p.kind for p in passes.PREPROCESS if p is not passes.infer_shapes} == {"graph"}
    model = _model([helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y"])],
                   [helper.make_tensor_value_info("x", 1, ["N", 3])], [helper.make_tensor_value_info("y", 1, ["N", 3])],
                   {})
    changes: dict[str, bool] = {}
    out = passes.run_passes(model, [passes.remove_identities, passes.fold_batchnorm], changes)
    assert changes == {"remove_identities": True, "fold_batchnorm": False}
    assert _op_types(out) == ["Relu"]
    changes.clear()
    passes.run_passes(out, [passes.remove_identities], changes)
    assert changes == {"remove_identities": False}


def _loop_model() -> onnx.ModelProto:
    """A Loop whose body holds an Identity: graph passes must reach it."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["v_in"], ["v_id"]), helper.make_node("Relu", ["v_id"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [3])])
    loop = helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)
    return _model([loop], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], {"trips": np.array(2, np.int64)})


def test_graph_passes_walk_subgraphs() -> None:
    model = _loop_model()
    changes: dict[str, bool] = {}
    out = passes.run_passes(model, [passes.remove_identities], changes)
    body = out.graph.node[0].attribute[0].g
    assert changes["remove_identities"] is True
    assert [n.op_type for n in body.node].count("Identity") == 1  # the Relu's input Identity is gone
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x})[0], _run(model, {"x": x})[0])


def test_a_fixed_point_group_repeats_until_nothing_changes() -> None:
    rounds: list[int] = []

    @passes.graph_pass(subgraphs=False)
    def drop_one_identity(graph: object) -> bool:
        """Removes one Identity per call (so it needs as many rounds as there are Identities)."""
        identity = next((n for n in graph.nodes if n.op == "Identity" and n.inputs), None)  # type: ignore[attr-defined]
        rounds.append(1)
        if identity is None:
            return False
        source, result = identity.inputs[0], identity.outputs[0]
        for consumer in list(result.outputs):
            consumer.inputs[consumer.inputs.index(result)] = source
        identity.inputs.clear()
        identity.outputs.clear()
        return True

    chain = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(3)]
    model = _model([*chain, helper.make_node("Relu", ["t3"], ["y"])], [helper.make_tensor_value_info("t0", 1, [2])],
                   [helper.make_tensor_value_info("y", 1, [2])], {})
    out = passes.run_passes(model, [passes.fixed_point(drop_one_identity)])
    assert _op_types(out) == ["Relu"] and len(rounds) == 4  # three removals, then a round with no change

    @passes.graph_pass
    def always_changes(graph: object) -> bool:
        return True

    with pytest.raises(hnnx.HnnxError, match="did not settle within 3 rounds"):
        passes.run_passes(model, [passes.fixed_point(always_changes, max_rounds=3)])


@pytest.mark.parametrize("inferred", [True, False], ids=["shapes-inferred", "no-shapes"])
@pytest.mark.parametrize("unit,folds", [
    ({"op": "S2A", "decoding": "global"}, False),  # [T, N, C, H, W] → [N, C, H, W]: a plain conv
    ({"op": "S2A", "decoding": "rate", "window": 2}, True),  # time-major output
    ({"op": "A2S", "steps": 2}, True),  # [N, C, H, W] input → [T, N, C, H, W]
], ids=["s2a-global", "s2a-rate", "a2s"])
def test_fold_time_asks_the_declarations(unit: dict, folds: bool, inferred: bool) -> None:
    attrs = {k: v for k, v in unit.items() if k != "op"}
    x_shape = ["N", 2, 4, 4] if unit["op"] == "A2S" else [2, "N", 2, 4, 4]
    weight = RNG.normal(0, 0.5, (3, 2, 3, 3)).astype(np.float32)
    nodes = [ops.make_node(unit["op"], ["x"], ["u"], name="unit", **attrs),
             helper.make_node("Conv", ["u", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(weight, "w")]),
        opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)], ir_version=10)
    steps = [passes.infer_shapes, passes.fold_time] if inferred else [passes.fold_time]
    if not inferred:
        assert not model.graph.value_info  # the rank of "u" is known only from the declaration
    out = passes.run_passes(model, steps)
    types = _op_types(out)
    assert types.count("Reshape") == (2 if folds else 0)
    assert len(types) == (11 if folds else 2)
    feeds = {"x": RNG.random([2 if d == "N" else d for d in x_shape]).astype(np.float32)}
    got = _run(out, feeds)[0]
    unit_out = ops.run_reference(nodes[0], feeds["x"])[0]
    frames = unit_out.reshape(-1, *unit_out.shape[-3:]) if folds else unit_out
    frame_model = _model([helper.make_node("Conv", ["f", "w"], ["c"], pads=[1, 1, 1, 1])],
                         [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["M", 2, 4, 4])],
                         [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["M", 3, 4, 4])], {"w": weight})
    expected = _run(frame_model, {"f": frames})[0]
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6, atol=1e-6)
    assert got.shape == (*unit_out.shape[:-3], 3, 4, 4)


def _direct_coding_model(steps: int = 5) -> onnx.ModelProto:
    """images [N, 2, 6, 6] repeated over T steps (Unsqueeze → Expand to [T, N, 2, 6, 6]), folded to
    [T·N, …], a Conv, unfolded to [T, N, 4, 6, 6], a LIF: the torch front end's direct coding."""
    nodes = [helper.make_node("Shape", ["images"], ["batch"], start=0, end=1),
             helper.make_node("Concat", ["steps", "batch", "frame_dims"], ["repeat_shape"], axis=0),
             helper.make_node("Unsqueeze", ["images", "axis0"], ["one"]),
             helper.make_node("Expand", ["one", "repeat_shape"], ["repeated"]),
             helper.make_node("Reshape", ["repeated", "fold"], ["folded"]),
             helper.make_node("Conv", ["folded", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Reshape", ["conv", "unfold"], ["current"]),
             ops.make_node("LIF", ["current"], ["spikes"], name="lif", threshold=0.5, alpha=0.9)]
    constants = {"steps": np.array([steps], np.int64), "frame_dims": np.array([2, 6, 6], np.int64),
                 "axis0": np.array([0], np.int64), "fold": np.array([-1, 2, 6, 6], np.int64),
                 "unfold": np.array([steps, -1, 4, 6, 6], np.int64),
                 "w": RNG.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32), "b": RNG.normal(0, 0.1, 4).astype(np.float32)}
    return _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 2, 6, 6])],
                  [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, [steps, "N", 4, 6, 6])], constants)


def test_a_layer_on_a_frame_repeated_over_time_runs_once_per_frame() -> None:
    """hoist_repeated: the Conv runs on [N, …] and the LIF takes its result as one step's current
    repeated over the 5 steps (no copies); spikes equal the original graph's bit for bit. A probe on
    a tensor of the repeated chain keeps it as it is; one on the current keeps the repeated current."""
    from hnnx.passes.time import hoist_repeated

    model = _direct_coding_model()
    images = RNG.uniform(0, 1, (3, 2, 6, 6)).astype(np.float32)
    changes: dict[str, bool] = {}
    hoisted = passes.run_passes(model, [hoist_repeated()], changes)
    assert changes == {"hoist_repeated": True}
    convs = [n for n in hoisted.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 and convs[0].name == "conv_hoisted"
    assert "Reshape" not in _op_types(hoisted)  # the fold and unfold went with the repeated conv
    (lif,) = [n for n in hoisted.graph.node if n.op_type == "LIF"]
    producer = {out: n.op_type for n in hoisted.graph.node for out in n.output}
    assert ops.declaration("LIF").view(lif).attrs["steps"] == 5 and producer[lif.input[0]] == "Unsqueeze"
    (want,), (got,) = _run(model, {"images": images}), _run(hoisted, {"images": images})
    assert want.shape == got.shape == (5, 3, 4, 6, 6) and want.any() and np.array_equal(want, got)
    for probe in ("repeated", "folded", "conv"):
        kept: dict[str, bool] = {}
        passes.run_passes(model, [hoist_repeated([probe])], kept)
        assert kept == {"hoist_repeated": False}, probe
    probed = passes.run_passes(model, [hoist_repeated(["current"])])
    (lif,) = [n for n in probed.graph.node if n.op_type == "LIF"]
    assert ops.declaration("LIF").view(lif).attrs["steps"] == 0 and lif.input[0] == "current"
    assert np.array_equal(_run(probed, {"images": images})[0], want)
    # A simulation with event-driven layers applies it (the probes of hnnx.simulate stay honoured).
    plain = hnnx.simulate(model, {"images": images}, event_driven="off", probes=["conv"])
    event = hnnx.simulate(model, {"images": images}, event_driven="on", probes=["current"])
    assert np.array_equal(plain.outputs["spikes"], event.outputs["spikes"])


@pytest.mark.parametrize("steps", [5, 70], ids=["repeated-by-concat", "repeated-by-expand"])
def test_an_expand_that_broadcasts_the_frame_is_hoisted_with_its_broadcast(steps: int) -> None:
    """Expand to [T, N, 2, 6, 6] of a frame [N, 1, 6, 6]: the frame is broadcast before the layer
    (the result, probed, repeated by a Concat of copies up to 64 steps, by an Expand beyond)."""
    from hnnx.passes.time import hoist_repeated

    model = _direct_coding_model(steps)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    images = RNG.uniform(0, 1, (3, 1, 6, 6)).astype(np.float32)
    hoisted = passes.run_passes(model, [hoist_repeated(["current"])])
    assert [n.name for n in hoisted.graph.node if n.op_type == "Conv"] == ["conv_hoisted"]
    assert ("Concat" if steps <= 64 else "Expand") in [n.op_type for n in hoisted.graph.node
                                                       if n.output[0] == "current"]
    assert np.array_equal(_run(model, {"images": images})[0], _run(hoisted, {"images": images})[0])


def test_an_integer_direct_coding_chain_is_hoisted_in_simulation() -> None:
    """The tianjicx int form of the same network: QuantizeLinear → ConvInteger (run as an exact float
    Conv between Casts) → bias between the fold and the unfold; the simulation hoists the whole chain
    and the integer currents and spikes equal the integer graph's bit for bit."""
    from hnnx.passes.events import for_simulation
    from hnnx.quantization import quantize

    model = _direct_coding_model()
    images = RNG.uniform(0, 1, (8, 2, 6, 6)).astype(np.float32)
    quantized, _ = quantize(model, {"images": images})
    simulated, _ = for_simulation(quantized, "on", {})
    hoisted = [n.op_type for n in simulated.graph.node if n.name.endswith("_hoisted")]
    assert "QuantizeLinear" in hoisted and "Reshape" not in _op_types(simulated)  # no fold: one pass per frame
    (lif,) = [n for n in simulated.graph.node if n.op_type == "LIF"]
    assert ops.declaration("LIF").view(lif).attrs["steps"] == 5  # the integer LIF takes one step's current
    plain = hnnx.simulate(quantized, {"images": images}, event_driven="off")
    event = hnnx.simulate(quantized, {"images": images}, event_driven="on")
    assert plain.outputs["spikes"].any() and np.array_equal(plain.outputs["spikes"], event.outputs["spikes"])


def test_repeated_currents_gives_the_neuron_every_step_again() -> None:
    """The inverse form for tools that split a current into steps: the LIF reads the hoisted current
    repeated over its 5 steps (steps = 0 again), with the same spikes; the hoisted model is left as
    it was, and a model without such a neuron comes back as itself."""
    from hnnx.passes.time import hoist_repeated, repeated_currents

    model = _direct_coding_model()
    hoisted = passes.run_passes(model, [hoist_repeated()])
    before = hoisted.SerializeToString()
    repeated = repeated_currents(hoisted)
    assert hoisted.SerializeToString() == before and repeated_currents(model) is model
    (lif,) = [n for n in repeated.graph.node if n.op_type == "LIF"]
    producer = {out: n.op_type for n in repeated.graph.node for out in n.output}
    assert ops.declaration("LIF").view(lif).attrs["steps"] == 0 and producer[lif.input[0]] == "Expand"
    images = RNG.uniform(0, 1, (3, 2, 6, 6)).astype(np.float32)
    (want,), (got,) = _run(model, {"images": images}), _run(repeated, {"images": images})
    assert want.any() and np.array_equal(want, got)


def test_step_by_step_mappers_refuse_a_constant_current_naming_the_neuron() -> None:
    """Chip mapping, BiMap and NIR export need the current of every step: a LIF with ``steps``
    (a simulation's form) is refused with a NodeError naming it."""
    from hnnx.chip.graph import layer_graph
    from hnnx.errors import NodeError
    from hnnx.interop.bimap import export_bimap
    from hnnx.interop.nir import to_nir
    from hnnx.passes.time import hoist_repeated
    from hnnx.quantization import quantize

    model = _direct_coding_model()
    quantized, _ = quantize(model, {"images": RNG.uniform(0, 1, (8, 2, 6, 6)).astype(np.float32)},
                            target="tianjicx")
    for tool, source in ((layer_graph, quantized), (lambda m: export_bimap(m), quantized), (to_nir, model)):
        hoisted = passes.run_passes(source, [hoist_repeated()])
        with pytest.raises(NodeError, match=r"'lif'.*steps = 5"):
            tool(hoisted)


def _a2s_coding_model(layer: str, coding: str = "direct", steps: int = 5) -> onnx.ModelProto:
    """pixels [N, 2, 6, 6] (conv) or [N, 12] (dense) coded by an A2S over T steps, folded to [T·N, …],
    a Conv (or a Gemm with bias, or a MatMul then Add), unfolded to [T, N, …], a LIF: the bundled
    models' form."""
    conv = layer == "conv"
    frame, out = ([2, 6, 6], [4, 6, 6]) if conv else ([12], [7])
    nodes = [ops.make_node("A2S", ["pixels"], ["coded"], name="coder", steps=steps, coding=coding, seed=3),
             helper.make_node("Reshape", ["coded", "fold"], ["folded"])]
    if conv:
        nodes.append(helper.make_node("Conv", ["folded", "w", "b"], ["layer"], pads=[1, 1, 1, 1], name="conv"))
        w = RNG.normal(0, 0.5, (4, 2, 3, 3))
    elif layer == "gemm":
        nodes.append(helper.make_node("Gemm", ["folded", "w", "b"], ["layer"], transB=1, name="dense"))
        w = RNG.normal(0, 0.5, (7, 12))
    else:
        nodes += [helper.make_node("MatMul", ["folded", "w"], ["product"], name="dense"),
                  helper.make_node("Add", ["product", "b"], ["layer"])]
        w = RNG.normal(0, 0.5, (12, 7))
    nodes += [helper.make_node("Reshape", ["layer", "unfold"], ["current"]),
              ops.make_node("LIF", ["current"], ["spikes"], name="lif", threshold=0.5, alpha=0.9)]
    constants = {"fold": np.array([-1, *frame], np.int64), "unfold": np.array([steps, -1, *out], np.int64),
                 "w": w.astype(np.float32), "b": RNG.normal(0, 0.1, out[0]).astype(np.float32)}
    return _model(nodes, [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", *frame])],
                  [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, [steps, "N", *out])], constants)


@pytest.mark.parametrize("layer", ["conv", "gemm", "matmul"])
def test_a_layer_fed_by_a_direct_coding_a2s_runs_once_per_frame(layer: str) -> None:
    """An A2S whose steps are all the same (direct coding, as its declaration says) is a repeated frame
    too: the A2S codes one step, the layer runs on it once and the LIF takes the result as a constant
    current; spikes equal the original graph's bit for bit. A rate-coding A2S is left alone."""
    from hnnx.passes.time import hoist_repeated

    model = _a2s_coding_model(layer)
    pixels = RNG.uniform(0, 1, (3, 2, 6, 6) if layer == "conv" else (3, 12)).astype(np.float32)
    changes: dict[str, bool] = {}
    hoisted = passes.run_passes(model, [hoist_repeated()], changes)
    assert changes == {"hoist_repeated": True}
    (coder,) = [n for n in hoisted.graph.node if n.op_type == "A2S"]
    (lif,) = [n for n in hoisted.graph.node if n.op_type == "LIF"]
    assert ops.declaration("A2S").view(coder).attrs["steps"] == 1
    assert ops.declaration("LIF").view(lif).attrs["steps"] == 5
    assert _op_types(hoisted).count("Reshape") == 1  # the one step as a frame; the fold and unfold went
    (want,), (got,) = _run(model, {"pixels": pixels}), _run(hoisted, {"pixels": pixels})
    assert want.shape == got.shape and 0 < want.mean() < 1 and np.array_equal(want, got)
    unchanged: dict[str, bool] = {}
    passes.run_passes(_a2s_coding_model(layer, coding="rate"), [hoist_repeated()], unchanged)
    assert unchanged == {"hoist_repeated": False}


def test_a_fold_whose_rows_are_not_frames_is_left_alone() -> None:
    """A fold to rows of half a frame ([N, 12] frames as rows of 6): the layer does not run per frame,
    so nothing is hoisted and the graph runs as it is."""
    from hnnx.passes.time import hoist_repeated

    model = _a2s_coding_model("gemm")
    weights = {init.name: init for init in model.graph.initializer}
    weights["fold"].CopyFrom(numpy_helper.from_array(np.array([-1, 6], np.int64), "fold"))
    weights["w"].CopyFrom(numpy_helper.from_array(RNG.normal(0, 0.5, (7, 6)).astype(np.float32), "w"))
    changes: dict[str, bool] = {}
    kept = passes.run_passes(model, [hoist_repeated()], changes)
    assert changes == {"hoist_repeated": False}
    pixels = RNG.uniform(0, 1, (4, 12)).astype(np.float32)
    assert _run(kept, {"pixels": pixels})[0].shape == (5, 8, 7)


def test_a_quantized_direct_coding_a2s_chain_is_hoisted_in_simulation() -> None:
    """The tianjicx int form (QuantizeLinear → A2S → ConvInteger → bias): the A2S input's rank is
    followed through the QuantizeLinear; the simulation codes one step and the integer spikes equal
    the integer graph's bit for bit."""
    from hnnx.passes.events import for_simulation
    from hnnx.quantization import quantize

    model = _a2s_coding_model("conv")
    pixels = RNG.uniform(0, 1, (8, 2, 6, 6)).astype(np.float32)
    quantized, _ = quantize(model, {"pixels": pixels}, target="tianjicx")
    simulated, _ = for_simulation(quantized, "on", {})
    steps = {n.op_type: ops.declaration(n.op_type).view(n).attrs["steps"] for n in simulated.graph.node
             if n.op_type in ("A2S", "LIF")}
    assert steps == {"A2S": 1, "LIF": 5}
    plain = hnnx.simulate(quantized, {"pixels": pixels}, event_driven="off")
    event = hnnx.simulate(quantized, {"pixels": pixels}, event_driven="on")
    assert plain.outputs["spikes"].any() and np.array_equal(plain.outputs["spikes"], event.outputs["spikes"])


def test_an_unsqueeze_with_computed_axes_is_left_alone() -> None:
    """Axes that the graph computes (as an inlined function body may): no hoisting, no error."""
    from hnnx.passes.time import hoist_repeated

    model = _direct_coding_model()
    unsqueeze = next(n for n in model.graph.node if n.op_type == "Unsqueeze")
    unsqueeze.input[1] = "computed_axes"
    model.graph.node.insert(0, helper.make_node("Identity", ["axis0"], ["computed_axes"]))
    changes: dict[str, bool] = {}
    passes.run_passes(model, [hoist_repeated()], changes)
    assert changes == {"hoist_repeated": False}
