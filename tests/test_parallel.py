"""Data-parallel simulation and calibration on local worker processes: identical to one process,
faults retried and reported, data errors named.

Each test that starts workers spawns two Python processes (about a second each); they are few."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import hnnx
from hnnx import models
from hnnx.calibrate import calibrate
from hnnx.cli import main
from hnnx.errors import DataError, HnnxError
from hnnx.runtime.parallel import FAIL_SHARD_ENV, WorkerError, WorkerWarning, shard_ranges
from parallel_cases import assert_same_result, digits, event_directory, event_model


def test_shards_are_contiguous_whole_batches() -> None:
    shards = shard_ranges(359, 50, 3)

    assert [(s.start, s.stop) for s in shards] == [(0, 100), (100, 250), (250, 359)]  # 2, 3, 3 batches
    assert [str(s) for s in shards][0] == "shard 1 of 3 (samples 0:100)"
    assert all(s.start % 50 == 0 for s in shards) and shards[-1].stop == 359
    assert len(shard_ranges(30, 50, 4)) == 1  # one batch: one shard
    assert [(s.start, s.stop) for s in shard_ranges(25, 4, 2)] == [(0, 12), (12, 25)]


def test_a_killed_worker_is_retried_and_the_result_equals_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    data = digits()
    probes = ["hidden_lif.spikes", "out_lif.spikes"]
    one = hnnx.simulate(models.path("hybrid_a2s"), data, batch_size=50, probes=probes)
    monkeypatch.setenv(FAIL_SHARD_ENV, "1")  # shard 2's worker is killed on its first try

    with pytest.warns(WorkerWarning, match=r"shard 2 of 2 \(samples 200:359\): the worker died \(killed by SIGKILL\)"):
        two = hnnx.simulate(models.path("hybrid_a2s"), data, batch_size=50, probes=probes, workers=2)

    assert_same_result(two, one)
    assert one.accuracy == pytest.approx(0.9889, abs=1e-4) and two.predicted.shape == (359,)
    assert two.workers == "2 worker processes" and "on 2 worker processes" in two.summary()


def test_a_worker_dying_twice_stops_the_run_naming_its_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAIL_SHARD_ENV, "0:2")

    with pytest.warns(WorkerWarning), pytest.raises(WorkerError) as caught:
        hnnx.simulate(models.path("hybrid_a2s"), digits(100), batch_size=25, workers=2)

    assert str(caught.value) == ("shard 1 of 2 (samples 0:50): the worker died twice (killed by SIGKILL); "
                                 "the run stopped without a result")


def test_cli_workers_on_a_directory_in_chunks_equal_one_process(tmp_path: Path) -> None:
    model_path = tmp_path / "events.onnx"
    hnnx.save(event_model(), model_path)
    data = event_directory(tmp_path / "events")  # 7 + 11 + 7 samples: both shards span two files
    one = hnnx.simulate(model_path, data, batch_size=4, probes=["spikes"], chunk_steps=0)

    run = CliRunner().invoke(main, ["simulate", str(model_path), "-i", str(data), "-b", "4", "--probe", "spikes",
                                    "--chunk", "2", "--workers", "2", "--no-progress", "-o", str(tmp_path / "out.npz")])

    assert run.exit_code == 0, run.output
    assert "in chunks of 2 steps   on 2 worker processes" in run.output
    for line in one.summary().splitlines()[1:]:  # accuracy, firing rates, tensors: the same lines
        assert line in run.output
    with np.load(tmp_path / "out.npz") as saved:
        assert np.array_equal(saved["scores"], one.outputs["scores"])
        assert np.array_equal(saved["spikes"], one.probes["spikes"])


def test_calibration_on_workers_equals_one_process(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits.npz", **digits())
    model = hnnx.load(models.path("hybrid_a2s"))
    tensors = [node.output[0] for node in model.graph.node if node.op_type in ("Conv", "Relu", "MatMul", "Gemm")]
    options = {"observer": "percentile", "observer_options": {"percentile": 99.9}, "batch_size": 32,
               "num_samples": 300, "per_channel": {tensors[0]: 1}}

    one = calibrate(model, tmp_path / "digits.npz", tensors, **options)
    two = calibrate(model, tmp_path / "digits.npz", tensors, workers=2, **options)

    assert two.samples == one.samples == 300
    for name in tensors:
        np.testing.assert_array_equal(two.observers[name].histogram, one.observers[name].histogram)
        np.testing.assert_array_equal(two.absmax(name), one.absmax(name))
        np.testing.assert_array_equal(two.range(name)[0], one.range(name)[0])
    assert two.firing_rates == one.firing_rates and set(one.firing_rates) == {"hidden_lif", "out_lif"}
    assert two.spike_counts == one.spike_counts
    assert two.current_ranges == one.current_ranges and two.membrane_ranges == one.membrane_ranges
    assert two.simulator is not None  # the coordinator's session, for quantization's comparison


def test_cli_quantize_on_workers_writes_the_same_model_and_report(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits.npz", **digits())
    quantized, report = hnnx.quantize(models.path("hybrid_a2s"), tmp_path / "digits.npz", observer="entropy",
                                      num_samples=150, batch_size=32)
    hnnx.save(quantized, tmp_path / "one.onnx")

    run = CliRunner().invoke(main, ["quantize", str(models.path("hybrid_a2s")), "--calib", str(tmp_path / "digits.npz"),
                                    "--observer", "entropy", "--num-samples", "150", "-b", "32", "--workers", "2",
                                    "-o", str(tmp_path / "two.onnx"), "--report", str(tmp_path / "two.json"),
                                    "--no-progress"])

    assert run.exit_code == 0, run.output
    assert (tmp_path / "two.onnx").read_bytes() == (tmp_path / "one.onnx").read_bytes()
    assert (tmp_path / "two.json").read_text() == report.to_json()


def test_a_data_error_in_a_worker_names_the_file_and_is_not_retried(tmp_path: Path) -> None:
    data = event_directory(tmp_path / "events")
    with np.load(data / "part2.npz") as archive:
        current, labels = archive["current"].copy(), archive["labels"]
    current[1, 3, 2] = np.nan
    np.savez(data / "part2.npz", current=current, labels=labels)

    with warnings.catch_warnings(record=True) as seen, pytest.raises(
            DataError, match=r"part2\.npz: array 'current' holds 1 NaN/inf values \(first at index \(1, 3, 2\)\)"):
        warnings.simplefilter("always")
        hnnx.simulate(event_model(), data, batch_size=4, workers=2, chunk_steps=0)

    assert not [w for w in seen if issubclass(w.category, WorkerWarning)]  # a data error is not retried


def test_iterables_and_bad_worker_options_are_refused_before_any_worker_starts() -> None:
    model = hnnx.load(models.path("hybrid_a2s"))
    batches = iter([{"pixels": digits(8)["pixels"]}])

    with pytest.raises(DataError, match="calibration on workers reads each shard's samples from its index on: give "
                                        "the data as a .npz/.npy path or a dict of arrays, not list_iterator"):
        calibrate(model, batches, ["scores"], workers=2)
    with pytest.raises(HnnxError, match="workers must be a whole number ≥ 1, got 0"):
        hnnx.simulate(model, digits(8), workers=0)


def test_ray_without_the_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    np.savez(tmp_path / "digits.npz", **digits(8))

    with pytest.raises(HnnxError, match=r"running on Ray needs the ray package: pip install 'hnnx\[ray\]'"):
        hnnx.simulate(models.path("hybrid_a2s"), digits(8), ray=True)
    # --ray takes an optional address: the model path after it is still MODEL
    run = CliRunner().invoke(main, ["simulate", "--ray", str(models.path("hybrid_a2s")), "-i",
                                    str(tmp_path / "digits.npz")])
    assert run.exit_code == 2
    assert run.output == "hnnx: error: running on Ray needs the ray package: pip install 'hnnx[ray]'\n"
