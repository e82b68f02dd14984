"""`hnnx lower`: chip specs, mapping, the program format and the chip simulator.

The reference is always `hnnx.simulate` of the integer graph in onnxruntime (or numpy for
hand-built cases): the chip simulator must equal it bit for bit, outputs and spike trains.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import hnnx
from hnnx import chip, models, ops
from hnnx.chip.mapper import xy_path
from hnnx.chip.soma import lif_attributes, p08_fields
from hnnx.cli import main
from hnnx.datasets import load_digits
from hnnx.quantization import quantize

SPIKING_MODELS = ["snn_mlp", "snn_conv", "hybrid_a2s", "hybrid_s2a"]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _pixels(digits, name: str, count: int | None = None) -> dict[str, np.ndarray]:
    x = digits.x_test if count is None else digits.x_test[:count]
    return {"pixels": x.reshape(-1, *models.input_layout(name))}


@pytest.fixture(scope="module")
def integer_models(digits) -> dict[str, onnx.ModelProto]:
    out = {}
    for name in SPIKING_MODELS:
        calibration = {"pixels": digits.x_train[:256].reshape(-1, *models.input_layout(name))}
        out[name], _ = quantize(models.path(name), calibration, target="tianjicx")
    return out


def _spike_trains(program: chip.Program) -> list[str]:
    """Every LIF (and rate-coding A2S) spike train [T, N, ...] the program can read out."""
    names = []
    for name, r in program.meta["readouts"].items():
        layer = program.layers[r["layer"]]
        if layer["spiking_output"] and r["stage"] == len(layer["stages"]) and r["timing"] == "step" and not r["folded"]:
            names.append(name)
    return names


def assert_chip_equals_graph(model: onnx.ModelProto, program: chip.Program, data: dict[str, np.ndarray],
                             probes: list[str]) -> None:
    """The chip simulator's outputs and ``probes`` equal onnxruntime's run of ``model``, bit for bit."""
    expected = hnnx.simulate(model, data, probes=probes, batch_size=128)
    got = chip.simulate(program, data, probes=probes, batch_size=128)
    for name, want in {**expected.outputs, **expected.probes}.items():
        have = got.outputs.get(name, got.probes.get(name))
        assert have.dtype == want.dtype and have.shape == want.shape, name
        assert np.array_equal(have, want), f"{name}: {np.count_nonzero(have != want)} values differ"


def _assert_bit_exact(model: onnx.ModelProto, program: chip.Program, data: dict[str, np.ndarray]) -> list[str]:
    trains = _spike_trains(program)
    assert_chip_equals_graph(model, program, data, trains)
    return trains


def tiny_spec(axons: int | None, neurons: int | None, memory: int | None, width: int = 2,
              height: int = 2) -> chip.ChipSpec:
    """A 4-core chip (2 × 2) with small per-core limits, up to 64 chips on a board."""
    data = chip.load_spec("tianjicx").to_json()
    data["name"] = "tiny"
    data["mesh"].update(width={"value": width, "assumed": "test chip"}, height={"value": height, "assumed": "test chip"},
                        chips_per_board={"value": 64, "assumed": "test chip"})
    data["core"].update(max_axons={"value": axons, "assumed": "test chip"},
                        max_neurons={"value": neurons, "assumed": "test chip"},
                        memory_bytes={"value": memory, "assumed": "test chip"})
    return chip.parse_spec(data, "tiny")


def _fewest_chips(model: onnx.ModelProto, spec: chip.ChipSpec) -> tuple[chip.Program, int]:
    for chips in range(1, 65):
        try:
            return chip.lower(model, spec, chips=chips), chips
        except chip.MappingError as exc:
            assert "--chips" in str(exc) or "the chip has" in str(exc) or "chips have" in str(exc), str(exc)
    raise AssertionError("no board size fits")


# ---------------------------------------------------------------------------- specs
@pytest.mark.parametrize("name", chip.BUILTIN)
def test_builtin_specs_give_every_figure_a_source_or_an_assumption(name: str) -> None:
    spec = chip.load_spec(name)
    assert chip.parse_spec(spec.to_json()) == spec  # the schema round-trips
    for group in spec.figures.values():
        for figure in group.values():
            assert (figure.source is None) != (figure.assumed is None)
    assert spec.value("core", "max_axons" if name == "tianjic" else "memory_bytes") in (256, 147456)
    assert spec.cores_per_chip == {"tianjicx": 160, "tianjic": 156}[name]


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["core"].pop("max_axons"), "core.max_axons"),
    (lambda d: d["neuron"]["refractory_max"].update(value=-1), "neuron.refractory_max"),
    (lambda d: d["noc"]["routing"].pop("source"), "noc.routing"),
    (lambda d: d["mesh"].update(depth={"value": 2, "source": "x"}), "mesh.depth"),
    (lambda d: d.update(schema="other"), "schema"),
])
def test_bad_spec_errors_name_the_field(edit, field: str, tmp_path: Path) -> None:
    data = chip.load_spec("tianjicx").to_json()
    edit(data)
    path = tmp_path / "chip.json"
    path.write_text(json.dumps(data))
    with pytest.raises(chip.ChipSpecError, match=field.replace(".", r"\.")):
        chip.load_spec(path)


# ---------------------------------------------------------------------------- bit-exact on bundled models
@pytest.mark.parametrize("target", chip.BUILTIN)
@pytest.mark.parametrize("name", SPIKING_MODELS)
def test_bundled_model_runs_bit_exact_on_the_chip(name: str, target: str, digits, integer_models) -> None:
    model = integer_models[name]
    program = chip.lower(model, target)
    trains = _assert_bit_exact(model, program, _pixels(digits, name))  # the whole test split
    assert trains  # every model has spike trains to compare
    spec = chip.load_spec(target)
    for core in program.cores:
        layer = program.layers[core["layer"]]
        assert core["neurons"] <= (spec.value("core", "max_neurons") or core["neurons"])
        assert core["axons"] <= (spec.value("core", "max_axons") or core["axons"]), layer["name"]
        assert core["memory_bytes"] <= (spec.value("core", "memory_bytes") or core["memory_bytes"])


@pytest.mark.parametrize("name, limits", [
    ("snn_mlp", (48, 32, None)),
    ("snn_conv", (64, 32, None)),
    ("hybrid_s2a", (64, 32, None)),
    ("hybrid_a2s", (256, 16, 2048)),
])
def test_tiny_chip_splits_layers_over_cores_and_chips_bit_exact(name: str, limits, digits, integer_models) -> None:
    spec = tiny_spec(*limits)
    model = integer_models[name]
    with pytest.raises(chip.MappingError, match=r"needs \d+ cores, the chip has 4"):
        chip.lower(model, spec)
    program, chips = _fewest_chips(model, spec)
    assert chips > 1
    per_layer: dict[int, list[str]] = {}
    for core in program.cores:
        per_layer.setdefault(core["layer"], []).append(core["role"])
        assert core["axons"] <= (limits[0] or core["axons"]) and core["neurons"] <= limits[1]
        assert core["memory_bytes"] <= (limits[2] or core["memory_bytes"])
    assert any(len([r for r in roles if r != "merge"]) > 1 for roles in per_layer.values())  # fan-out split
    if name != "hybrid_a2s":  # its 256 inputs per neuron fit one tiny core
        assert any("merge" in roles for roles in per_layer.values())  # fan-in split
    _assert_bit_exact(model, program, _pixels(digits, name, 40))


def _matmul_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["acc"], name="fc"),
         helper.make_node("Add", ["acc", "b"], ["y"], name="fc_bias")],
        "g", [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", weight.shape[1]])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_fan_in_partial_sums_merge_exactly_against_numpy() -> None:
    rng = np.random.default_rng(3)
    weight = rng.integers(-128, 128, (8, 3)).astype(np.int8)
    bias = np.array([100000, -7, 2**20], np.int32)
    x = rng.integers(-128, 128, (5, 8)).astype(np.int8)
    program = chip.lower(_matmul_model(weight, bias), tiny_spec(4, 4, None, 3, 2))
    # 8 inputs over cores of 4 axons: two partial sums per neuron; a merge core takes 2 × 2 of them
    roles = sorted(core["role"] for core in program.cores)
    assert roles == ["merge"] * 2 + ["partial"] * 4
    expected = x.astype(np.int64) @ weight.astype(np.int64) + bias
    got = chip.simulate(program, {"x": x}).outputs["y"]
    assert got.dtype == np.int32 and np.array_equal(got, expected)


def test_conv_relu_maxpool_split_over_cores_match_onnxruntime() -> None:
    rng = np.random.default_rng(7)
    weight = rng.integers(-128, 128, (4, 2, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, (1, 4, 1, 1)).astype(np.int32)
    nodes = [helper.make_node("ConvInteger", ["x", "w"], ["acc"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["acc", "b"], ["acc_b"], name="conv_bias"),
             ops.make_node("Requantize", ["acc_b"], ["q"], name="conv_rq", shift=6),
             helper.make_node("Relu", ["q"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, ["N", 4, 3, 3])],
                              initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    x = rng.integers(-128, 128, (9, 2, 6, 6)).astype(np.int8)
    program = chip.lower(model, tiny_spec(12, 8, None, 4, 4), chips=8)
    roles = [core["role"] for core in program.cores]
    assert roles.count("pool") > 1 and "merge" in roles  # 18 inputs per conv neuron > 12 axons: fan-in split
    expected = hnnx.simulate(model, {"x": x}).outputs["y"]
    got = chip.simulate(program, {"x": x}, probes=["r"])
    assert got.outputs["y"].dtype == np.int8 and np.array_equal(got.outputs["y"], expected)
    windows = got.probes["r"].reshape(9, 4, 3, 2, 3, 2).max(axis=(3, 5))
    assert np.array_equal(windows, expected)  # numpy max pooling of the probed ReLU output


# ---------------------------------------------------------------------------- errors
def _with_attribute(model: onnx.ModelProto, node_name: str, **attrs) -> onnx.ModelProto:
    edited = copy.deepcopy(model)
    node = next(n for n in edited.graph.node if n.name == node_name)
    for key, value in attrs.items():
        for attribute in node.attribute:
            if attribute.name == key:
                node.attribute.remove(attribute)
                break
        node.attribute.append(helper.make_attribute(key, value))
    return ops.attach_functions(edited)


def test_a_soma_the_chip_lacks_stops_with_the_layer_and_the_limit(integer_models) -> None:
    model = _with_attribute(integer_models["snn_mlp"], "hidden_lif", refractory=20)
    with pytest.raises(chip.MappingError, match=r"^hidden_lif: refractory 20 > 15 on tianjicx$"):
        chip.lower(model, "tianjicx")
    model = _with_attribute(integer_models["snn_mlp"], "hidden_lif", reset_mode="none")
    with pytest.raises(chip.MappingError, match=r"hidden_lif: reset mode 'none' is not supported on tianjic$"):
        chip.lower(model, "tianjic")


def test_an_odd_shift_stops_on_tianjicx_and_maps_on_tianjic(integer_models) -> None:
    model = _with_attribute(integer_models["hybrid_s2a"], "linear.requantize", shift=7)
    with pytest.raises(chip.MappingError, match=r"linear.requantize: shift 7 is not a multiple of 2 on tianjicx"):
        chip.lower(model, "tianjicx")
    assert chip.lower(model, "tianjic").cores


def test_unmappable_node_and_float_model_are_named() -> None:
    model = _matmul_model(np.ones((4, 2), np.int8), np.zeros(2, np.int32))
    model.graph.node.append(helper.make_node("Neg", ["y"], ["z"], name="negate"))
    model.graph.output[0].name = "z"
    with pytest.raises(chip.MappingError, match=r"^negate: Neg cannot be mapped onto the chip$"):
        chip.lower(model, "tianjicx")
    with pytest.raises(chip.MappingError, match="float graph"):
        chip.lower(models.path("snn_mlp"), "tianjicx")


def test_rate_coding_needs_the_whole_sample_in_one_core(integer_models) -> None:
    with pytest.raises(chip.MappingError, match=r"^a2s: needs 256 axons in one core"):
        chip.lower(integer_models["hybrid_a2s"], tiny_spec(64, 64, None), chips=64)


# ---------------------------------------------------------------------------- program format
def test_program_directory_round_trips_and_rejects_tampering(tmp_path: Path, digits, integer_models) -> None:
    program = chip.lower(integer_models["snn_mlp"], "tianjicx")
    target = program.save(tmp_path / "program")
    loaded = chip.load_program(target)
    assert loaded.meta == json.loads((target / "program.json").read_text())
    data = _pixels(digits, "snn_mlp", 16)
    assert np.array_equal(chip.simulate(loaded, data).outputs["scores"], chip.simulate(program, data).outputs["scores"])
    program.save(target)  # overwriting a program directory is atomic and allowed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["program"]

    meta = json.loads((target / "program.json").read_text())
    meta["cores"][0]["x"] = 99
    (target / "program.json").write_text(json.dumps(meta))
    with pytest.raises(chip.ProgramError, match="program.json: content hash mismatch"):
        chip.load_program(target)
    from hnnx.chip.program import _meta_hash

    meta["hashes"]["program.json"] = _meta_hash(meta)
    (target / "program.json").write_text(json.dumps(meta))
    with pytest.raises(chip.ProgramError, match=r"cores\[0\]' is placed at chip 0 \(99, "):
        chip.load_program(target)
    program.save(target)
    with open(target / "weights.npz", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(chip.ProgramError, match="weights.npz: content hash mismatch"):
        chip.load_program(target)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(chip.ProgramError, match="not a program directory"):
        program.save(tmp_path / "other")


def test_verify_names_the_first_differing_tensor(digits, integer_models) -> None:
    model = integer_models["snn_mlp"]
    program = chip.lower(model, "tianjicx")
    data = _pixels(digits, "snn_mlp", 32)
    assert chip.verify(model, program, data) == ["hidden_lif.spikes.q", "out_lif.spikes.q", "scores"]
    layer = next(i for i, layer in enumerate(program.layers) if layer["name"] == "node_linear")
    core = next(c for c in program.cores if c["layer"] == layer)
    program.arrays[f"core{core['id']}.bias"] = program.arrays[f"core{core['id']}.bias"] + 5000
    with pytest.raises(chip.VerificationError, match=r"^hidden_lif\.spikes\.q: the chip program differs"):
        chip.verify(model, program, data)


# ---------------------------------------------------------------------------- pieces
def test_p08_fields_round_trip_every_lif_feature() -> None:
    attrs = ops.LIF.view_for({"mode": "integer", "threshold": 300, "reset_mode": "soft_constant",
                              "reset_decrement": 40, "v_init": 3, "alpha": 0.75, "beta": -2, "v_lower": -500,
                              "refractory": 3, "theta_alpha": 0.5, "theta_beta": 1, "theta_increment": 9},
                             (True,), 1).attrs
    fields = p08_fields(attrs)
    assert (fields["Vleaky_alpha"], fields["Vleaky_adpt_en"], fields["reset_mode"], fields["Ref_len"]) == (192, 1, 2, 3)
    back = ops.LIF.view_for(lif_attributes(fields), (True,), 1).attrs
    assert {k: v for k, v in back.items() if k not in ("surrogate", "surrogate_width")} == {
        k: v for k, v in attrs.items() if k not in ("surrogate", "surrogate_width")}


def test_xy_routes_go_along_x_first_and_placement_is_deterministic(integer_models) -> None:
    assert xy_path((0, 0), (2, 1)) == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert xy_path((3, 2), (1, 0)) == [(3, 2), (2, 2), (1, 2), (1, 1), (1, 0)]
    spec = tiny_spec(64, 32, None)
    first = chip.lower(integer_models["snn_conv"], spec, chips=12)
    second = chip.lower(integer_models["snn_conv"], spec, chips=12)
    assert first.meta == second.meta
    width = spec.value("mesh", "width")
    for route in first.meta["routes"]:
        ends = [(-1, 0) if i is None else (first.cores[i]["chip"] * width + first.cores[i]["x"], first.cores[i]["y"])
                for i in (route["src"], route["dst"])]
        assert route["hops"] == abs(ends[0][0] - ends[1][0]) + abs(ends[0][1] - ends[1][1])


def test_placement_lowers_traffic_times_distance_below_the_serpentine_start(integer_models) -> None:
    from hnnx.chip.mapper import _global, _slots

    spec = tiny_spec(64, 32, None)
    program = chip.lower(integer_models["snn_conv"], spec, chips=12)
    placed = {c["id"]: _global(spec, (c["chip"], c["x"], c["y"])) for c in program.cores}
    serpentine = {i: _global(spec, slot) for i, slot in enumerate(_slots(spec, 12)[: len(program.cores)])}

    def cost(where: dict[int, tuple[int, int]]) -> float:
        total = 0.0
        for route in program.routes:
            a, b = ((-1, 0) if i is None else where[i] for i in (route["src"], route["dst"]))
            total += route["packets"] * route["emissions"] * (abs(a[0] - b[0]) + abs(a[1] - b[1]))
        return total

    assert cost(placed) < 0.75 * cost(serpentine)
    assert cost(placed) == sum(r["packets"] * r["emissions"] * r["hops"] for r in program.routes)


def test_phases_follow_the_dataflow(integer_models) -> None:
    program = chip.lower(integer_models["snn_conv"], tiny_spec(64, 32, None), chips=12)
    phase_of = {}
    for index, phase in enumerate(program.meta["schedule"]["step"]):
        for entry in phase:
            phase_of[entry["core"]] = index
    for route in program.routes:
        src, dst = route["src"], route["dst"]
        if src in phase_of and dst in phase_of and program.layers[route["layer"]]["group"] == "step":
            assert phase_of[src] < phase_of[dst]  # a core reads what earlier phases of the same step sent


def test_report_counts_dense_synops_and_states_assumed_figures(integer_models) -> None:
    program = chip.lower(integer_models["snn_mlp"], "tianjicx")
    report = chip.chip_report(program).data
    steps = program.steps
    expected = sum(layer["synapses"] for layer in program.layers if layer["spiking_input"]) * steps
    assert report["traffic"]["synops"] == expected  # dense: every spiking input fires every step
    assert report["cores_used"] == len(program.cores) and report["cores_available"] == 160
    assert "energy.synop_joules" in report["assumed"] and "timing.clock_hz" in report["assumed"]
    energy = chip.load_spec("tianjicx").figures["energy"]
    dynamic = (report["traffic"]["synops"] * energy["synop_joules"].value + report["traffic"]["macs"]
               * energy["mac_joules"].value + report["traffic"]["hops"] * energy["hop_joules"].value)
    assert report["energy"]["dynamic_joules"] == pytest.approx(dynamic)
    assert report["latency"]["pipelined_step_cycles"] <= report["latency"]["step_cycles"]


# ---------------------------------------------------------------------------- command line
def test_cli_lowers_verifies_and_simulates_the_program(tmp_path: Path, digits) -> None:
    from hnnx.runtime.simulate import npz_bytes

    data = tmp_path / "test.npz"
    data.write_bytes(npz_bytes({**_pixels(digits, "snn_mlp", 48), "labels": digits.y_test[:48]}))
    runner = CliRunner()
    out = tmp_path / "program"
    result = runner.invoke(main, ["lower", str(models.path("snn_mlp")), "--chip", "tianjic", "--calib", str(data),
                                  "-o", str(out), "--verify", str(data), "--report", str(tmp_path / "r.json"),
                                  "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "verified: the chip program equals the integer graph bit for bit" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["chip"] == "tianjic"
    assert (tmp_path / "r.md").read_text().startswith("# Chip program: tianjic")
    try:
        import matplotlib  # noqa: F401

        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert "pip install matplotlib" in result.output and "hnnx[plot]" in result.output
    simulated = runner.invoke(main, ["simulate", str(out), "--input", str(data), "-o", str(tmp_path / "o.npz")])
    assert simulated.exit_code == 0, simulated.output
    assert "accuracy:" in simulated.output


def test_cli_mapping_error_is_one_line(tmp_path: Path, integer_models) -> None:
    model = tmp_path / "m.onnx"
    hnnx.save(_with_attribute(integer_models["snn_mlp"], "hidden_lif", refractory=20), model)
    result = CliRunner().invoke(main, ["lower", str(model), "--chip", "tianjicx", "-o", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert result.output.strip() == "hnnx: error: hidden_lif: refractory 20 > 15 on tianjicx"
    assert not (tmp_path / "p").exists()
