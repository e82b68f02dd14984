"""hnnx.simulate over small hand-built models, checked against LIF equations written out in numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import hnnx
from hnnx import ops
from hnnx.errors import DataError, ModelError

from builders import BIAS, HYBRID_LIF, WEIGHT, hybrid_model, lif_hard_reset

# Hybrid model: x [N, 4] → Gemm → repeat STEPS times → LIF → mean over time → logits [N, 5].
STEPS = 3
SAMPLES = 9

# Time-major model: u [T, N, 4] → LIF → s [T, N, 4].
TM_STEPS = 5
TM_SAMPLES = 10
TM_LIF = {"threshold": 1.0, "alpha": 0.5}


# --------------------------------------------------------------------------- models
def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)



def time_major_model() -> onnx.ModelProto:
    nodes = [ops.make_node("LIF", ["u"], ["s"], name="lif_tm", **TM_LIF)]
    return _model(nodes, [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["T", "N", 4])],
                  [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["T", "N", 4])])


def two_input_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
                          helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])


def int_input_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["k"], ["y"], to=TensorProto.FLOAT)]
    return _model(nodes, [helper.make_tensor_value_info("k", TensorProto.INT32, ["N", 2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])


def renamed_output_model(name: str) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["x"], [name])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                  [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 2])])


# --------------------------------------------------------------------------- numpy expectations

def hybrid_expected(x: np.ndarray) -> dict[str, np.ndarray]:
    current_n = x @ WEIGHT.T + BIAS
    current = np.broadcast_to(current_n, (STEPS, *current_n.shape)).copy()
    spikes = lif_hard_reset(current, **HYBRID_LIF)
    return {"current_n": current_n, "current": current, "spikes": spikes, "logits": spikes.mean(axis=0)}


def spike_rate(spikes: np.ndarray) -> float:
    """Spikes per neuron per step, in double precision like hnnx's in-graph count."""
    return float(spikes.mean(dtype=np.float64))


def dyadic(generator: np.random.Generator, shape: tuple[int, ...], low: int, high: int, scale: int) -> np.ndarray:
    return (generator.integers(low, high, size=shape) / scale).astype(np.float32)


@pytest.fixture
def generator() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def x(generator: np.random.Generator) -> np.ndarray:
    return dyadic(generator, (SAMPLES, 4), -8, 9, 4)


@pytest.fixture
def u(generator: np.random.Generator) -> np.ndarray:
    return dyadic(generator, (TM_STEPS, TM_SAMPLES, 4), -2, 7, 4)


def labels_with_misses(predicted: np.ndarray, misses: list[int], classes: int) -> np.ndarray:
    """Labels equal to ``predicted`` except at ``misses``, where they name another class."""
    labels = predicted.astype(np.int64).copy()
    labels[misses] = (labels[misses] + 1) % classes
    return labels


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- outputs
def test_hybrid_outputs_match_numpy_lif(x: np.ndarray) -> None:
    expected = hybrid_expected(x)
    assert 0 < expected["spikes"].mean() < 1  # the data must exercise both firing and silence

    result = hnnx.simulate(hybrid_model(), {"x": x})

    assert list(result.outputs) == ["logits"]
    logits = result.outputs["logits"]
    assert logits.dtype == np.float32 and logits.shape == (SAMPLES, 5)
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-6, atol=0)
    assert result.samples == SAMPLES
    assert result.accuracy is None


@pytest.mark.parametrize("batch_size", [1, 2, 7, SAMPLES, 64])
def test_batch_size_does_not_change_outputs_or_probes(x: np.ndarray, batch_size: int) -> None:
    expected = hybrid_expected(x)

    result = hnnx.simulate(hybrid_model(), {"x": x}, batch_size=batch_size, probes=["spikes", "current_n"])

    np.testing.assert_allclose(result.outputs["logits"], expected["logits"], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(result.probes["spikes"], expected["spikes"])
    np.testing.assert_array_equal(result.probes["current_n"], expected["current_n"])
    assert result.firing_rates["lif1"] == pytest.approx(spike_rate(expected["spikes"]), abs=1e-12)


def test_batch_sizes_give_identical_outputs(x: np.ndarray) -> None:
    model = hybrid_model()
    runs = [hnnx.simulate(model, {"x": x}, batch_size=size).outputs["logits"] for size in (1, 7, SAMPLES, 1000)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])


@pytest.mark.parametrize("batch_size", [3, 4], ids=["batch-equals-steps", "uneven-last-batch"])
def test_probe_of_time_major_tensor_is_joined_on_its_sample_axis(x: np.ndarray, batch_size: int) -> None:
    # 'spikes' is [STEPS, N, 5] with STEPS = 3 and N = 9. With 3 batches (of 3, or of 4, 4 and 1)
    # the batch pieces also add up to N along axis 0, which must not be taken for the sample axis.
    expected = hybrid_expected(x)

    result = hnnx.simulate(hybrid_model(), {"x": x}, batch_size=batch_size, probes=["spikes", "current"])

    assert result.probes["current"].shape == (STEPS, SAMPLES, 5)
    assert result.probes["spikes"].shape == (STEPS, SAMPLES, 5)
    np.testing.assert_array_equal(result.probes["spikes"], expected["spikes"])
    np.testing.assert_array_equal(result.probes["current"], expected["current"])


@pytest.mark.parametrize("batch_size", [1, 3, TM_STEPS, 7, TM_SAMPLES, 64])
def test_time_major_model_is_batched_on_axis_1(u: np.ndarray, batch_size: int) -> None:
    expected = lif_hard_reset(u, **TM_LIF)
    assert 0 < expected.mean() < 1

    result = hnnx.simulate(time_major_model(), {"u": u}, batch_size=batch_size, probes=["s"])

    assert result.samples == TM_SAMPLES
    assert result.outputs["s"].shape == (TM_STEPS, TM_SAMPLES, 4)
    np.testing.assert_array_equal(result.outputs["s"], expected)
    np.testing.assert_array_equal(result.probes["s"], expected)
    assert result.firing_rates == {"lif_tm": pytest.approx(spike_rate(expected), abs=1e-12)}


def test_time_major_sample_depends_only_on_its_own_column(u: np.ndarray) -> None:
    model = time_major_model()
    whole = hnnx.simulate(model, {"u": u}, batch_size=4).outputs["s"]
    for sample in (0, 5, TM_SAMPLES - 1):
        alone = hnnx.simulate(model, {"u": u[:, sample:sample + 1]}).outputs["s"]
        np.testing.assert_array_equal(alone, whole[:, sample:sample + 1])


def test_intermediate_probes_have_their_shapes_and_values(x: np.ndarray) -> None:
    expected = hybrid_expected(x)

    result = hnnx.simulate(hybrid_model(), {"x": x}, batch_size=2, probes=["current_n", "current", "spikes"])

    assert list(result.probes) == ["current_n", "current", "spikes"]
    assert result.probes["current_n"].shape == (SAMPLES, 5)
    assert result.probes["current"].shape == (STEPS, SAMPLES, 5)
    assert result.probes["spikes"].shape == (STEPS, SAMPLES, 5)
    for name in ("current_n", "current", "spikes"):
        np.testing.assert_array_equal(result.probes[name], expected[name])
    assert list(result.outputs) == ["logits"]


def test_probing_a_graph_output_returns_it_as_probe_and_output(x: np.ndarray) -> None:
    result = hnnx.simulate(hybrid_model(), {"x": x}, probes=["logits"])
    np.testing.assert_array_equal(result.probes["logits"], result.outputs["logits"])


# --------------------------------------------------------------------------- firing rates
def test_firing_rate_equals_mean_of_probed_spikes(x: np.ndarray) -> None:
    result = hnnx.simulate(hybrid_model(), {"x": x}, batch_size=2, probes=["spikes"])

    assert list(result.firing_rates) == ["lif1"]
    assert result.firing_rates["lif1"] == pytest.approx(spike_rate(result.probes["spikes"]), abs=1e-12)
    assert result.firing_rates["lif1"] == pytest.approx(spike_rate(hybrid_expected(x)["spikes"]), abs=1e-12)


def test_firing_rate_of_silent_layer_is_zero() -> None:
    inhibited = np.full((TM_STEPS, 3, 4), -1.0, np.float32)
    result = hnnx.simulate(time_major_model(), {"u": inhibited})
    assert result.firing_rates == {"lif_tm": 0.0}


# --------------------------------------------------------------------------- accuracy and labels
@pytest.fixture
def hybrid_labels(x: np.ndarray) -> np.ndarray:
    predicted = hybrid_expected(x)["logits"].argmax(axis=1)
    return labels_with_misses(predicted, misses=[0, 4, 8], classes=5)  # 6 of 9 right


def test_accuracy_from_labels_key_of_npz(tmp_path: Path, x: np.ndarray, hybrid_labels: np.ndarray) -> None:
    data = save_npz(tmp_path / "data.npz", x=x, labels=hybrid_labels)
    result = hnnx.simulate(hybrid_model(), data, batch_size=4)
    assert result.accuracy == pytest.approx(6 / 9)


def test_accuracy_from_labels_npy_file(tmp_path: Path, x: np.ndarray, hybrid_labels: np.ndarray) -> None:
    data = save_npz(tmp_path / "data.npz", x=x)
    np.save(tmp_path / "labels.npy", hybrid_labels)
    result = hnnx.simulate(hybrid_model(), data, labels=tmp_path / "labels.npy")
    assert result.accuracy == pytest.approx(6 / 9)


def test_accuracy_from_labels_npz_file_with_several_arrays(tmp_path: Path, x: np.ndarray,
                                                           hybrid_labels: np.ndarray) -> None:
    labels_file = save_npz(tmp_path / "labels.npz", labels=hybrid_labels, other=np.zeros(3))
    result = hnnx.simulate(hybrid_model(), {"x": x}, labels=labels_file)
    assert result.accuracy == pytest.approx(6 / 9)


def test_accuracy_from_labels_array(x: np.ndarray, hybrid_labels: np.ndarray) -> None:
    result = hnnx.simulate(hybrid_model(), {"x": x}, labels=hybrid_labels, batch_size=2)
    assert result.accuracy == pytest.approx(6 / 9)


def test_labels_argument_overrides_labels_in_data(tmp_path: Path, x: np.ndarray,
                                                  hybrid_labels: np.ndarray) -> None:
    all_right = hybrid_expected(x)["logits"].argmax(axis=1)
    data = save_npz(tmp_path / "data.npz", x=x, labels=hybrid_labels)
    result = hnnx.simulate(hybrid_model(), data, labels=all_right)
    assert result.accuracy == 1.0


def test_integral_float_labels_are_accepted(x: np.ndarray, hybrid_labels: np.ndarray) -> None:
    result = hnnx.simulate(hybrid_model(), {"x": x}, labels=hybrid_labels.astype(np.float64))
    assert result.accuracy == pytest.approx(6 / 9)


def test_time_major_accuracy_averages_the_output_over_time(u: np.ndarray) -> None:
    rates = lif_hard_reset(u, **TM_LIF).mean(axis=0)
    labels = labels_with_misses(rates.argmax(axis=1), misses=[1, 2, 3, 7], classes=4)  # 6 of 10 right

    result = hnnx.simulate(time_major_model(), {"u": u}, labels=labels, batch_size=3)

    assert result.accuracy == pytest.approx(6 / 10)


# --------------------------------------------------------------------------- data sources
def test_npy_file_feeds_a_one_input_model(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", x)
    result = hnnx.simulate(hybrid_model(), tmp_path / "x.npy")
    np.testing.assert_allclose(result.outputs["logits"], hybrid_expected(x)["logits"], rtol=1e-6, atol=0)


def test_npz_file_path_as_string(tmp_path: Path, x: np.ndarray) -> None:
    data = save_npz(tmp_path / "data.npz", x=x)
    result = hnnx.simulate(hybrid_model(), str(data))
    np.testing.assert_allclose(result.outputs["logits"], hybrid_expected(x)["logits"], rtol=1e-6, atol=0)


def test_directory_of_npz_files_is_concatenated_in_name_order(tmp_path: Path, x: np.ndarray,
                                                              hybrid_labels: np.ndarray) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    # Names sort differently from creation order on purpose.
    save_npz(folder / "b.npz", x=x[4:], labels=hybrid_labels[4:])
    save_npz(folder / "a.npz", x=x[:4], labels=hybrid_labels[:4])
    (folder / "notes.txt").write_text("ignored")

    result = hnnx.simulate(hybrid_model(), folder, batch_size=5)

    assert result.samples == SAMPLES
    np.testing.assert_allclose(result.outputs["logits"], hybrid_expected(x)["logits"], rtol=1e-6, atol=0)
    assert result.accuracy == pytest.approx(6 / 9)


@pytest.mark.parametrize("split", [4, TM_SAMPLES // 2], ids=["uneven-files", "even-files"])
def test_directory_of_time_major_npz_files_is_concatenated_on_the_sample_axis(tmp_path: Path, u: np.ndarray,
                                                                             split: int) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    save_npz(folder / "a.npz", u=u[:, :split])
    save_npz(folder / "b.npz", u=u[:, split:])

    result = hnnx.simulate(time_major_model(), folder)

    assert result.samples == TM_SAMPLES
    assert result.outputs["s"].shape == (TM_STEPS, TM_SAMPLES, 4)
    np.testing.assert_array_equal(result.outputs["s"], lif_hard_reset(u, **TM_LIF))


def test_dict_of_arrays_is_cast_to_the_input_type(x: np.ndarray) -> None:
    result = hnnx.simulate(hybrid_model(), {"x": x.astype(np.float64)})
    assert result.outputs["logits"].dtype == np.float32
    np.testing.assert_allclose(result.outputs["logits"], hybrid_expected(x)["logits"], rtol=1e-6, atol=0)


def test_two_input_model_reads_both_arrays() -> None:
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.full((3, 2), 0.5, np.float32)
    result = hnnx.simulate(two_input_model(), {"a": a, "b": b, "extra": np.zeros(1)}, batch_size=2)
    np.testing.assert_array_equal(result.outputs["y"], a + b)


def test_integral_floats_feed_an_int32_input() -> None:
    keys = np.array([[1.0, -2.0], [3.0, 40000.0]])
    result = hnnx.simulate(int_input_model(), {"k": keys})
    np.testing.assert_array_equal(result.outputs["y"], keys.astype(np.float32))


def test_npy_data_in_a_file_without_npy_suffix_is_read(tmp_path: Path, x: np.ndarray) -> None:
    # read_arrays hands anything that is not an .npz archive to the one-input path.
    np.save(tmp_path / "x.npy", x)
    data = (tmp_path / "x.npy").rename(tmp_path / "x.bin")

    result = hnnx.simulate(hybrid_model(), data)

    np.testing.assert_allclose(result.outputs["logits"], hybrid_expected(x)["logits"], rtol=1e-6, atol=0)


def test_threads_1_gives_the_same_outputs(x: np.ndarray) -> None:
    model = hybrid_model()
    default = hnnx.simulate(model, {"x": x}).outputs["logits"]
    single = hnnx.simulate(model, {"x": x}, threads=1).outputs["logits"]
    np.testing.assert_array_equal(single, default)


def test_model_path_is_loaded(tmp_path: Path, x: np.ndarray) -> None:
    path = hnnx.save(hybrid_model(), tmp_path / "model.onnx")
    result = hnnx.simulate(str(path), {"x": x})
    np.testing.assert_allclose(result.outputs["logits"], hybrid_expected(x)["logits"], rtol=1e-6, atol=0)


def test_simulate_leaves_the_callers_model_unchanged(x: np.ndarray) -> None:
    model = hybrid_model()
    before = model.SerializeToString()
    hnnx.simulate(model, {"x": x}, probes=["spikes"])
    assert model.SerializeToString() == before


# --------------------------------------------------------------------------- SimulationResult
def test_result_save_writes_outputs_and_probes_by_name(tmp_path: Path, x: np.ndarray) -> None:
    result = hnnx.simulate(hybrid_model(), {"x": x}, probes=["spikes", "current_n"])
    target = tmp_path / "result.npz"

    result.save(target)

    with np.load(target) as saved:
        assert sorted(saved.files) == ["current_n", "logits", "spikes"]
        np.testing.assert_array_equal(saved["logits"], result.outputs["logits"])
        np.testing.assert_array_equal(saved["spikes"], hybrid_expected(x)["spikes"])
        np.testing.assert_array_equal(saved["current_n"], hybrid_expected(x)["current_n"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]


def test_result_save_accepts_any_tensor_name(tmp_path: Path) -> None:
    # "file" is an ordinary ONNX tensor name, and also the name of np.savez's first parameter.
    data = np.ones((2, 2), np.float32)
    result = hnnx.simulate(renamed_output_model("file"), {"x": data})

    result.save(tmp_path / "result.npz")

    with np.load(tmp_path / "result.npz") as saved:
        np.testing.assert_array_equal(saved["file"], data)


def test_summary_reports_accuracy_rates_and_shapes(x: np.ndarray, hybrid_labels: np.ndarray) -> None:
    result = hnnx.simulate(hybrid_model(), {"x": x}, labels=hybrid_labels, probes=["spikes"])
    rate = spike_rate(hybrid_expected(x)["spikes"])

    summary = result.summary()

    assert f"samples: {SAMPLES}" in summary
    assert "accuracy: 66.67 %" in summary
    assert f"lif1  {rate:.4f}" in summary
    assert "output logits: float32 [9, 5]" in summary
    assert "probe spikes: float32 [3, 9, 5]" in summary


# --------------------------------------------------------------------------- bad data
def _corrupt_npz(path: Path, x: np.ndarray) -> Path:
    save_npz(path, x=x)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])  # e.g. an interrupted download
    return path


def test_missing_data_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothere.npz: no such data file"):
        hnnx.simulate(hybrid_model(), tmp_path / "nothere.npz")


def test_npy_for_a_multi_input_model(tmp_path: Path) -> None:
    np.save(tmp_path / "ab.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(DataError, match=r"ab\.npy: a \.npy file feeds one input.* 2 \(a, b\)"):
        hnnx.simulate(two_input_model(), tmp_path / "ab.npy")


def test_npz_without_the_input_names_it(tmp_path: Path, x: np.ndarray) -> None:
    data = save_npz(tmp_path / "data.npz", pixels=x, labels=np.zeros(SAMPLES, np.int64))
    with pytest.raises(DataError, match=r"data\.npz: no array for model input 'x' \(the file has: pixels\)"):
        hnnx.simulate(hybrid_model(), data)


def test_inputs_with_different_sample_counts() -> None:
    with pytest.raises(DataError, match="disagree on the number of samples"):
        hnnx.simulate(two_input_model(), {"a": np.zeros((3, 2), np.float32), "b": np.zeros((4, 2), np.float32)})


@pytest.mark.parametrize("shape", [(SAMPLES,), (SAMPLES, 4, 1)], ids=["rank1", "rank3"])
def test_wrong_rank(shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match=r"array 'x' has shape .*the model expects x: float32 \[N, 4\]"):
        hnnx.simulate(hybrid_model(), {"x": np.zeros(shape, np.float32)})


def test_wrong_fixed_dim() -> None:
    with pytest.raises(DataError, match=r"array 'x' has shape \[9, 3\], the model expects x: float32 \[N, 4\]"):
        hnnx.simulate(hybrid_model(), {"x": np.zeros((SAMPLES, 3), np.float32)})


def test_wrong_fixed_dim_of_time_major_input() -> None:
    with pytest.raises(DataError, match=r"array 'u' has shape \[5, 10, 3\]"):
        hnnx.simulate(time_major_model(), {"u": np.zeros((TM_STEPS, TM_SAMPLES, 3), np.float32)})


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values_name_the_array(tmp_path: Path, x: np.ndarray, bad_value: float) -> None:
    x = x.copy()
    x[2, 1] = bad_value
    data = save_npz(tmp_path / "data.npz", x=x)
    with pytest.raises(DataError, match=r"data\.npz: array 'x' holds 1 NaN/inf values \(first at index \(2, 1\)\)"):
        hnnx.simulate(hybrid_model(), data)


def test_fractional_values_for_an_int32_input() -> None:
    with pytest.raises(DataError, match="array 'k' holds fractional values, the model input is int32"):
        hnnx.simulate(int_input_model(), {"k": np.array([[1.0, 2.5], [3.0, 4.0]])})


def test_values_outside_the_int32_range() -> None:
    with pytest.raises(DataError, match="array 'k' holds values outside the int32 range"):
        hnnx.simulate(int_input_model(), {"k": np.array([[1, 2**40], [3, 4]], np.int64)})


def test_non_numeric_array() -> None:
    with pytest.raises(DataError, match="array 'x' has dtype <U1, not a number type"):
        hnnx.simulate(hybrid_model(), {"x": np.full((2, 4), "a")})


@pytest.mark.parametrize("empty", [np.zeros((0, 4), np.float32), np.zeros((TM_STEPS, 0, 4), np.float32)],
                         ids=["samples-first", "time-major"])
def test_empty_dataset(empty: np.ndarray) -> None:
    model = hybrid_model() if empty.ndim == 2 else time_major_model()
    name = model.graph.input[0].name
    with pytest.raises(DataError, match="holds no samples"):
        hnnx.simulate(model, {name: empty})


def test_empty_data_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="directory holds no .npz or .npy file"):
        hnnx.simulate(hybrid_model(), tmp_path)


def test_directory_files_with_different_arrays(tmp_path: Path, x: np.ndarray) -> None:
    save_npz(tmp_path / "a.npz", x=x[:4])
    save_npz(tmp_path / "b.npz", x=x[4:], labels=np.zeros(5, np.int64))
    with pytest.raises(DataError, match=r"b\.npz: holds arrays \['labels', 'x'\], but a\.npz holds \['x'\]"):
        hnnx.simulate(hybrid_model(), tmp_path)


def test_garbage_data_file(tmp_path: Path) -> None:
    (tmp_path / "data.npz").write_bytes(b"definitely not numpy")
    with pytest.raises(DataError, match=r"data\.npz: not a readable \.npz/\.npy file"):
        hnnx.simulate(hybrid_model(), tmp_path / "data.npz")


def test_truncated_npz_file(tmp_path: Path, x: np.ndarray) -> None:
    data = _corrupt_npz(tmp_path / "data.npz", x)
    with pytest.raises(DataError, match=r"data\.npz"):
        hnnx.simulate(hybrid_model(), data)


def test_labels_with_wrong_length(x: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"labels must have shape \[9\] \(one per sample\), got \[8\]"):
        hnnx.simulate(hybrid_model(), {"x": x}, labels=np.zeros(SAMPLES - 1, np.int64))


def test_labels_in_npz_with_wrong_length_name_the_file(tmp_path: Path, x: np.ndarray) -> None:
    data = save_npz(tmp_path / "data.npz", x=x, labels=np.zeros(SAMPLES + 1, np.int64))
    with pytest.raises(DataError, match=r"data\.npz: array 'labels': labels must have shape \[9\]"):
        hnnx.simulate(hybrid_model(), data)


def test_labels_with_wrong_rank(x: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"labels must have shape \[9\]"):
        hnnx.simulate(hybrid_model(), {"x": x}, labels=np.zeros((SAMPLES, 1), np.int64))


@pytest.mark.parametrize("labels", [np.linspace(0, 1, SAMPLES), np.array(list("abcdefghi")),
                                    np.ones(SAMPLES, bool)], ids=["fractional", "strings", "bool"])
def test_non_integer_labels(x: np.ndarray, labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="labels must be integer class indices"):
        hnnx.simulate(hybrid_model(), {"x": x}, labels=labels)


def test_missing_labels_file(tmp_path: Path, x: np.ndarray) -> None:
    with pytest.raises(DataError, match="nolabels.npy: no such data file"):
        hnnx.simulate(hybrid_model(), {"x": x}, labels=tmp_path / "nolabels.npy")


def test_labels_npz_with_several_arrays_and_none_named_labels(tmp_path: Path, x: np.ndarray) -> None:
    labels_file = save_npz(tmp_path / "y.npz", a=np.zeros(SAMPLES), b=np.zeros(SAMPLES))
    with pytest.raises(DataError, match=r"y\.npz: holds several arrays and none is named 'labels'"):
        hnnx.simulate(hybrid_model(), {"x": x}, labels=labels_file)


def test_unknown_probe_is_a_model_error_naming_it(x: np.ndarray) -> None:
    with pytest.raises(ModelError, match="probe 'membrane': the model has no tensor of that name"):
        hnnx.simulate(hybrid_model(), {"x": x}, probes=["spikes", "membrane"])


@pytest.mark.parametrize("batch_size", [0, -3])
def test_batch_size_below_one(x: np.ndarray, batch_size: int) -> None:
    with pytest.raises(DataError, match=f"batch size must be ≥ 1, got {batch_size}"):
        hnnx.simulate(hybrid_model(), {"x": x}, batch_size=batch_size)


def test_missing_model_file(tmp_path: Path, x: np.ndarray) -> None:
    with pytest.raises(ModelError, match="nomodel.onnx: no such model file"):
        hnnx.simulate(tmp_path / "nomodel.onnx", {"x": x})
