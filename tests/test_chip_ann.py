"""`hnnx lower` of the ANN integer forms: residual adds with their alignment shifts, Concat,
window sums (average pooling), integer Clip and grouped convolutions.

References: onnxruntime's run of the integer graph (`hnnx.simulate`) on every tensor the
program can read out, and a numpy computation of a hand-built graph (int32 wrap-around
included). The chip simulator must equal them bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hnnx
from hnnx import chip, models
from hnnx.datasets import load_digits
from hnnx.quantization import quantize
from test_chip import assert_chip_equals_graph, tiny_spec

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def ann_models(digits) -> dict[str, onnx.ModelProto]:
    calibration = {"pixels": digits.x_train[:256].reshape(-1, 1, 8, 8)}
    return {name: quantize(models.path(name), calibration)[0] for name in ("ann_residual", "ann_cnn")}


@pytest.fixture(scope="module")
def integer_forms():
    """The small models of test_integer_forms.py, loaded as a module of their own (its random
    generator is not shared with that test module)."""
    spec = importlib.util.spec_from_file_location("integer_form_models", HERE / "test_integer_forms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spec_with(base: str = "tianjicx", **primitives) -> chip.ChipSpec:
    data = chip.load_spec(base).to_json()
    data["name"] = f"{base}-edited"
    for key, value in primitives.items():
        data["primitives"][key] = {"value": value, "assumed": "test chip"}
    return chip.parse_spec(data, "test chip")


def _readable(program: chip.Program, model: onnx.ModelProto) -> list[str]:
    """Every graph tensor the program reads out (graph inputs aside)."""
    inputs = {vi.name for vi in model.graph.input}
    return [name for name in program.meta["readouts"] if name not in inputs]


def _assert_bit_exact(model: onnx.ModelProto, program: chip.Program, data: dict[str, np.ndarray]) -> list[str]:
    """The graph's outputs and every intermediate tensor the program holds, against onnxruntime."""
    probes = [name for name in _readable(program, model) if name not in program.meta["model"]["outputs"]]
    assert_chip_equals_graph(model, program, data, probes)
    return probes


def _layer(program: chip.Program, name: str) -> tuple[int, dict]:
    return next((i, layer) for i, layer in enumerate(program.layers) if layer["name"] == name)


# ---------------------------------------------------------------------------- bundled ANNs
def test_ann_residual_runs_bit_exact_on_tianjicx(ann_models, digits) -> None:
    model = ann_models["ann_residual"]
    program = chip.lower(model, "tianjicx")
    probes = _assert_bit_exact(model, program, {"pixels": digits.x_test.reshape(-1, 1, 8, 8)})
    assert {"add_40.sum0", "avg_pool2d.sum", "cat.i8", "relu_3.q", "view.i8"} <= set(probes)
    kinds = {layer["name"]: (layer["kind"], layer["attrs"]) for layer in program.layers}
    assert kinds["add_40"] == ("add", {"operands": 2})  # the residual sum of two int8 branches
    assert kinds["avg_pool2d"][0] == kinds["avg_pool2d_1"][0] == "sumpool"
    # The Concat is data movement: the layer reading it (its rounding addend, then its
    # requantization) takes axons from the cores of both joined convolutions, the first branch
    # shifted left by 2 (× 4).
    index, joined = _layer(program, "cat.rounding.Add")
    sources = {program.layers[i]["name"] for i in joined["sources"]}
    assert joined["kind"] == "add" and sources == {"node_conv2d_3", "node_conv2d_4"}
    assert [stage["op"] for stage in joined["stages"]] == ["bias", "requantize", "relu"]
    assert joined["stages"][1]["node"] == "cat.requantize"
    feeding = {program.layers[program.cores[r["src"]]["layer"]]["name"] for r in program.routes
               if r["dst"] is not None and program.cores[r["dst"]]["layer"] == index}
    assert feeding == sources
    shifts = np.concatenate([program.arrays[f"core{c['id']}.shifts"] for c in program.cores if c["layer"] == index])
    assert sorted(np.unique(shifts).tolist()) == [0, 2] and np.count_nonzero(shifts == 2) == 512


def test_ann_cnn_runs_bit_exact_on_both_chips(ann_models, digits) -> None:
    model = ann_models["ann_cnn"]
    for target in chip.BUILTIN:
        program = chip.lower(model, target)
        _assert_bit_exact(model, program, {"pixels": digits.x_test.reshape(-1, 1, 8, 8)})


def test_a_chip_without_add_or_average_pooling_names_the_layer(ann_models) -> None:
    model = ann_models["ann_residual"]
    with pytest.raises(chip.MappingError, match=r"^add_40: a residual add of 2 tensors is not supported on tianjic$"):
        chip.lower(model, "tianjic")
    with pytest.raises(chip.MappingError,
                       match=r"^avg_pool2d: average pooling \(a window sum\) is not supported on tianjicx-edited$"):
        chip.lower(model, _spec_with(avg_pool=False))


def test_ann_residual_split_over_tiny_cores_and_chips_stays_bit_exact(ann_models, digits) -> None:
    spec = tiny_spec(128, 64, None, 4, 4)  # 16 cores of 128 axons × 64 neurons
    model = ann_models["ann_residual"]
    with pytest.raises(chip.MappingError, match=r"needs \d+ cores, the chip has 16"):
        chip.lower(model, spec)
    program = chip.lower(model, spec, chips=16)
    assert math.ceil(len(program.cores) / spec.cores_per_chip) > 1
    roles: dict[str, list[str]] = {}
    for core in program.cores:
        roles.setdefault(program.layers[core["layer"]]["name"], []).append(core["role"])
        assert core["axons"] <= 128 and core["neurons"] <= 64
    assert "merge" in roles["node_Conv_26"] and "merge" in roles["node_Conv_27"]  # 144 inputs > 128 axons
    assert roles["add_40"].count("add") > 1 and roles["cat.rounding.Add"].count("add") > 1  # fan-out splits
    assert roles["avg_pool2d"].count("pool") > 1
    _assert_bit_exact(model, program, {"pixels": digits.x_test[:64].reshape(-1, 1, 8, 8)})


def test_report_counts_the_additions_of_adds_and_window_sums(ann_models) -> None:
    report = chip.chip_report(chip.lower(ann_models["ann_residual"], "tianjicx")).data
    macs = {layer["name"]: layer["macs"] for layer in report["layers"]}
    assert macs["add_40"] == 2 * 16 * 8 * 8  # two operands per output
    # 3×3 windows with one pixel of padding on 8×8: 22 in-bounds rows × 22 columns per channel
    assert macs["avg_pool2d"] == 16 * (6 * 3 + 2 * 2) ** 2
    assert macs["avg_pool2d_1"] == 16 * 8 * 8  # 2×2 windows, stride 2: every pixel once


def test_program_with_adds_round_trips_and_checks_its_shifts(ann_models, digits, tmp_path: Path) -> None:
    program = chip.lower(ann_models["ann_residual"], "tianjicx")
    target = program.save(tmp_path / "program")
    data = {"pixels": digits.x_test[:32].reshape(-1, 1, 8, 8)}
    assert np.array_equal(chip.simulate(target, data).outputs["scores"], chip.simulate(program, data).outputs["scores"])
    core = next(c for c in program.cores if c["role"] == "add")
    program.arrays[f"core{core['id']}.shifts"] = np.full(core["axons"], 31, np.int8)
    program.save(target)
    with pytest.raises(chip.ProgramError, match=rf"cores\[{core['id']}\]': core{core['id']}\.shifts must be int8 in "
                                                r"\[0, 30\]"):
        chip.load_program(target)


# ---------------------------------------------------------------------------- the small integer forms
@pytest.mark.parametrize("name", ["residual", "inception", "global_pool_clip", "preactivation",
                                  "preactivation_dense_block"])
def test_integer_form_models_lower_bit_exact(name: str, integer_forms) -> None:
    rng = np.random.default_rng(5)
    calibration = rng.uniform(0, 1, (48, 2, 6, 6)).astype(np.float32)
    model, _ = quantize(integer_forms.MODELS[name](), {"x": calibration})
    data = {"x": rng.uniform(0, 1, (40, 2, 6, 6)).astype(np.float32)}
    target: str | chip.ChipSpec = "tianjicx"
    affine = name.startswith("preactivation")  # the per-channel affine is a depthwise 1×1 ConvInteger
    if affine:
        with pytest.raises(chip.MappingError,
                           match=r"^bn1?\.mul: grouped convolution \(group 4\) is not supported on tianjicx$"):
            chip.lower(model, "tianjicx")
        target = _spec_with(group_conv=True)
    _assert_bit_exact(model, chip.lower(model, target), data)
    tiny = tiny_spec(64, 16, None, 4, 4)
    if affine:
        tiny = chip.parse_spec({**tiny.to_json(), "primitives": _spec_with(group_conv=True).to_json()["primitives"]})
    program = chip.lower(model, tiny, chips=8)
    per_layer = np.bincount([core["layer"] for core in program.cores])
    assert per_layer.max() > 1  # 144 outputs per convolution over cores of 16 neurons
    assert any(core["role"] == "merge" for core in program.cores) == (name != "global_pool_clip")  # heads > 64 inputs
    _assert_bit_exact(model, program, data)


# ---------------------------------------------------------------------------- a hand-built graph against numpy
def _hand_model() -> onnx.ModelProto:
    """x int8 [N, 2, 4, 4]:
    window = depthwise all-ones 3×3 ConvInteger (pad 1);   wide = Cast(x, int32)
    total = window + wide·2^30 + wide·4 (a chain of Adds);  clipped = Clip(total, −1000, 5000)
    joined = Concat(clipped, wide·16) on channels (a graph output that mixes layers);
    pooled = ReduceSum(wide, axes [2, 3], keepdims 1)."""
    nodes = [helper.make_node("ConvInteger", ["x", "ones"], ["window"], name="window", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["x"], ["wide"], name="wide", to=TensorProto.INT32),
             helper.make_node("Mul", ["wide", "k30"], ["big"], name="big"),
             helper.make_node("Mul", ["wide", "k2"], ["four"], name="four"),
             helper.make_node("Add", ["window", "big"], ["partial"], name="partial"),
             helper.make_node("Add", ["four", "partial"], ["total"], name="total"),
             helper.make_node("Clip", ["total", "low", "high"], ["clipped"], name="clip"),
             helper.make_node("Mul", ["wide", "k4"], ["sixteen"], name="sixteen"),
             helper.make_node("Concat", ["clipped", "sixteen"], ["joined"], name="join", axis=1),
             helper.make_node("ReduceSum", ["wide", "axes"], ["pooled"], name="pool", keepdims=1)]
    constants = {"ones": np.ones((2, 1, 3, 3), np.int8), "k30": np.int32(1 << 30), "k2": np.int32(4),
                 "k4": np.int32(16), "low": np.int32(-1000), "high": np.int32(5000), "axes": np.array([2, 3], np.int64)}
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("joined", TensorProto.INT32, ["N", 4, 4, 4]),
                               helper.make_tensor_value_info("pooled", TensorProto.INT32, ["N", 2, 1, 1])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _hand_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    wide = x.astype(np.int64)
    padded = np.pad(wide, ((0, 0), (0, 0), (1, 1), (1, 1)))
    window = sum(padded[:, :, dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3))
    total = (window + wide * 2**30 + wide * 4).astype(np.int32)  # int32 wrap-around, as ONNX's Add and Mul
    clipped = np.clip(total, -1000, 5000)
    return {"joined": np.concatenate([clipped, (wide * 16).astype(np.int32)], axis=1),
            "pooled": wide.sum(axis=(2, 3), keepdims=True).astype(np.int32)}


def test_hand_built_adds_windows_clip_and_concat_match_numpy_and_onnxruntime() -> None:
    model = _hand_model()
    x = np.random.default_rng(11).integers(-128, 128, (24, 2, 4, 4)).astype(np.int8)
    expected = _hand_reference(x)
    assert np.any(expected["joined"][:, :2] == 5000) and np.any(expected["joined"][:, :2] == -1000)  # clip bites
    onnxruntime = hnnx.simulate(model, {"x": x}).outputs
    spec = tiny_spec(16, 8, None, 4, 4)
    program = chip.lower(model, spec, chips=4)
    layers = [(layer["kind"], layer["attrs"].get("operands")) for layer in program.layers]
    assert ("add", 3) in layers and ("add", 1) in layers and layers.count(("sumpool", None)) == 2
    got = chip.simulate(program, {"x": x}).outputs
    for name, want in expected.items():
        assert np.array_equal(onnxruntime[name], want), name
        assert got[name].dtype == np.int32 and np.array_equal(got[name], want), name


def test_unmappable_integer_forms_are_named() -> None:
    model = _hand_model()
    node = next(n for n in model.graph.node if n.name == "four")
    next(i for i in model.graph.initializer if i.name == node.input[1]).CopyFrom(
        numpy_helper.from_array(np.int32(3), node.input[1]))
    with pytest.raises(chip.MappingError, match=r"^four: Mul by 3: the chip aligns values by left shifts"):
        chip.lower(model, "tianjicx")
    model = _hand_model()
    next(i for i in model.graph.initializer if i.name == "k4").CopyFrom(numpy_helper.from_array(np.int32(8), "k4"))
    with pytest.raises(chip.MappingError, match=r"^joined: left shift 3 is not a multiple of 2 on tianjicx$"):
        chip.lower(model, "tianjicx")  # the Concat output, gathered for the host, applies the shift
    model = _hand_model()
    with pytest.raises(chip.MappingError, match=r"^partial: a residual add of 3 tensors is not supported on "
                                                r"tianjicx-edited$"):
        chip.lower(model, _spec_with(add=False))
    # Two bias Adds on one layer (the program holds one bias array per core): refused, not summed twice.
    model = _hand_model()
    window = next(n for n in model.graph.node if n.name == "window")
    window.output[0] = "window_raw"
    model.graph.initializer.extend([numpy_helper.from_array(np.int32(3), "b1"), numpy_helper.from_array(np.int32(5), "b2")])
    model.graph.node.insert(1, helper.make_node("Add", ["window_raw", "b1"], ["window_b1"], name="bias1"))
    model.graph.node.insert(2, helper.make_node("Add", ["window_b1", "b2"], ["window"], name="bias2"))
    with pytest.raises(chip.MappingError, match=r"^bias2: a second int32 bias on one layer"):
        chip.lower(model, "tianjicx")


def test_spec_files_without_the_new_primitives_read_them_as_unsupported(tmp_path: Path) -> None:
    data = chip.load_spec("tianjicx").to_json()
    for key in ("avg_pool", "add"):
        del data["primitives"][key]
    path = tmp_path / "older.json"
    path.write_text(json.dumps(data))
    spec = chip.load_spec(path)
    assert spec.value("primitives", "add") is False and spec.value("primitives", "avg_pool") is False
    assert "primitives.add" in spec.assumed_figures()
    assert chip.load_spec("tianjicx").value("primitives", "avg_pool") is True
