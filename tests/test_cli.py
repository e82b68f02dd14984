"""The hnnx command line: inspect and simulate output, error reporting, help."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper

import hnnx
from hnnx import ops
from hnnx.cli import main

from builders import BIAS, HYBRID_LIF, WEIGHT, hybrid_model

STEPS = 3
SAMPLES = 9
LIF_ATTRIBUTES = HYBRID_LIF
# Multiples of 1/4 and 1/8 keep float32 arithmetic exact, so numpy and onnxruntime agree bit for bit.



def expected_spikes(x: np.ndarray) -> np.ndarray:
    """The hard-reset LIF equations, by hand, on the repeated Gemm current."""
    current_n = x @ WEIGHT.T + BIAS
    v = np.zeros_like(current_n)
    spikes = np.zeros((STEPS, *current_n.shape), np.float32)
    for t in range(STEPS):
        v1 = v + current_n
        fired = v1 > np.float32(LIF_ATTRIBUTES["threshold"])
        spikes[t] = fired
        v = np.where(fired, np.float32(0), v1) * np.float32(LIF_ATTRIBUTES["alpha"]) + np.float32(
            LIF_ATTRIBUTES["beta"])
    return spikes


@pytest.fixture
def x() -> np.ndarray:
    return (np.random.default_rng(11).integers(-8, 9, size=(SAMPLES, 4)) / 4).astype(np.float32)


@pytest.fixture
def labels(x: np.ndarray) -> np.ndarray:
    labels = expected_spikes(x).mean(axis=0).argmax(axis=1).astype(np.int64)
    labels[[1, 5, 6]] = (labels[[1, 5, 6]] + 1) % 5  # 6 of 9 right: 66.67 %
    return labels


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return hnnx.save(hybrid_model(), tmp_path / "hybrid.onnx")


@pytest.fixture
def data_file(tmp_path: Path, x: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(tmp_path / "test.npz", x=x, labels=labels)
    return tmp_path / "test.npz"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str | Path) -> Result:
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=True)


def hnnx_executable() -> str:
    """The installed console script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("hnnx")
    found = str(beside) if beside.is_file() else shutil.which("hnnx")
    assert found, "the hnnx console command is not installed"
    return found


# --------------------------------------------------------------------------- help and version
@pytest.mark.parametrize("args", [["--help"], ["-h"], ["inspect", "--help"], ["simulate", "--help"],
                                  ["demo", "--help"]], ids=" ".join)
def test_help(runner: CliRunner, args: list[str]) -> None:
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage:")
    assert result.stderr == ""


def test_top_level_help_lists_the_commands(runner: CliRunner) -> None:
    stdout = invoke(runner, "--help").stdout
    for command in ("inspect", "simulate", "demo"):
        assert command in stdout


def test_simulate_help_lists_its_options(runner: CliRunner) -> None:
    stdout = invoke(runner, "simulate", "--help").stdout
    for option in ("--input", "--labels", "--batch-size", "--probe", "--threads", "--output"):
        assert option in stdout


def test_version(runner: CliRunner) -> None:
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert hnnx.__version__ in result.stdout


# --------------------------------------------------------------------------- inspect
def test_inspect_shows_inputs_outputs_ops_and_lif_attributes(runner: CliRunner, model_file: Path) -> None:
    result = invoke(runner, "inspect", model_file)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"model: {model_file}")
    assert "ai.onnx 21" in lines[0] and "hnnx 1" in lines[0]
    assert lines[lines.index("inputs:") + 1].strip() == "x: float32 [N, 4]"
    assert lines[lines.index("outputs:") + 1].strip() == "logits: float32 [N, 5]"
    assert "parameters: 29 in 4 initializers" in lines  # 20 weights, 5 biases, 1 + 3 shape constants
    histogram = lines[lines.index("ops:") + 1: lines.index("hnnx nodes: 1")]
    assert sorted(line.split() for line in histogram) == sorted(
        [["1", op] for op in ("Expand", "Gemm", "ReduceMean", "Unsqueeze", "hnnx.LIF")])
    node_section = lines[lines.index("hnnx nodes: 1") + 1:]
    assert node_section[0].strip().startswith("lif1  (LIF, body float-hard-leak-beta")
    assert node_section[1].split() == ["inputs:", "current"]
    assert node_section[2].split() == ["outputs:", "spikes"]
    attributes = dict(line.strip().split(" = ") for line in node_section[3:])
    assert attributes["threshold"] == "0.5"
    assert attributes["alpha"] == "0.75"
    assert attributes["beta"] == "-0.125"
    assert attributes["reset_mode"] == "hard"
    assert attributes["mode"] == "float"
    assert "v_lower" not in attributes  # absent optional attribute


def test_inspect_counts_repeated_ops(runner: CliRunner, tmp_path: Path) -> None:
    nodes = [ops.make_node("LIF", ["u"], ["s1"], name="first"),
             ops.make_node("LIF", ["s1"], ["s"], name="second", alpha=0.5)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["T", "N", 2])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["T", "N", 2])])
    path = hnnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]),
                     tmp_path / "two.onnx")

    stdout = invoke(runner, "inspect", path).stdout

    assert ["2", "hnnx.LIF"] in [line.split() for line in stdout.splitlines()]
    assert "hnnx nodes: 2" in stdout
    assert "  first  (LIF, body float-hard-i1o1)" in stdout
    assert "  second  (LIF, body float-hard-leak-i1o1)" in stdout


# --------------------------------------------------------------------------- simulate
def test_simulate_reports_accuracy_and_firing_rates_and_writes_npz(runner: CliRunner, tmp_path: Path,
                                                                   model_file: Path, data_file: Path,
                                                                   x: np.ndarray) -> None:
    out = tmp_path / "out.npz"
    spikes = expected_spikes(x)

    result = invoke(runner, "simulate", model_file, "-i", data_file, "--probe", "spikes", "--probe", "current_n",
                    "-b", "2", "-o", out)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"samples: {SAMPLES}")
    assert "accuracy: 66.67 %" in lines
    assert "firing rates (spikes per neuron per step):" in lines
    assert f"  lif1  {spikes.mean(dtype=np.float64):.4f}" in lines
    assert "output logits: float32 [9, 5]" in lines
    assert "probe spikes: float32 [3, 9, 5]" in lines
    assert "probe current_n: float32 [9, 5]" in lines
    assert lines[-1] == f"wrote {out}"
    with np.load(out) as saved:
        assert sorted(saved.files) == ["current_n", "logits", "spikes"]
        np.testing.assert_array_equal(saved["spikes"], spikes)
        np.testing.assert_allclose(saved["logits"], spikes.mean(axis=0), rtol=1e-6, atol=0)
        np.testing.assert_array_equal(saved["current_n"], x @ WEIGHT.T + BIAS)


def test_simulate_with_labels_file_and_threads(runner: CliRunner, tmp_path: Path, model_file: Path,
                                               x: np.ndarray, labels: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)

    result = invoke(runner, "simulate", model_file, "--input", tmp_path / "x.npy", "--labels", tmp_path / "y.npy",
                    "--threads", "1", "--batch-size", "7", "--no-progress")

    assert result.exit_code == 0, result.output
    assert "accuracy: 66.67 %" in result.stdout.splitlines()


def test_simulate_without_labels_prints_no_accuracy(runner: CliRunner, tmp_path: Path, model_file: Path,
                                                    x: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", x)
    result = invoke(runner, "simulate", model_file, "-i", tmp_path / "x.npy")
    assert result.exit_code == 0, result.output
    assert "accuracy" not in result.stdout
    assert "lif1" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid.onnx", "x.npy"]


def test_simulate_probe_output_keeps_samples_on_axis_1_for_any_batch_size(runner: CliRunner, tmp_path: Path,
                                                                          model_file: Path, data_file: Path,
                                                                          x: np.ndarray) -> None:
    # batch size 3 == STEPS: the [3, N, 5] probe must still come back as [3, 9, 5].
    out = tmp_path / "out.npz"
    result = invoke(runner, "simulate", model_file, "-i", data_file, "--probe", "spikes", "-b", "3", "-o", out)
    assert result.exit_code == 0, result.output
    assert "probe spikes: float32 [3, 9, 5]" in result.stdout.splitlines()
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["spikes"], expected_spikes(x))


# --------------------------------------------------------------------------- errors
def _write_garbage(path: Path) -> Path:
    path.write_bytes(b"\x00\x01 not protobuf \xff" * 4)
    return path


def _write_nan_data(path: Path, x: np.ndarray) -> Path:
    x = x.copy()
    x[3, 2] = np.nan
    np.savez(path, x=x)
    return path


def _write_invalid_lif_model(path: Path) -> Path:
    model = hybrid_model()
    (node,) = [n for n in model.graph.node if n.op_type == "LIF"]
    next(a for a in node.attribute if a.name == "alpha").f = 1.5
    onnx.save(model, path)
    return path


def _write_truncated_npz(path: Path, x: np.ndarray) -> Path:
    np.savez(path, x=x)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    return path


ErrorCase = Callable[[Path, Path, Path, np.ndarray], tuple[list[str | Path], list[str]]]
"""(tmp dir, model file, data file, x) → (command line, fragments the error line must contain)."""

ERROR_CASES: dict[str, ErrorCase] = {
    "missing model": lambda d, m, data, x: (
        ["simulate", d / "nope.onnx", "-i", data], [str(d / "nope.onnx"), "no such model file"]),
    "garbage model": lambda d, m, data, x: (
        ["simulate", _write_garbage(d / "junk.onnx"), "-i", data], [str(d / "junk.onnx"), "not an ONNX model"]),
    "invalid LIF attribute": lambda d, m, data, x: (
        ["simulate", _write_invalid_lif_model(d / "bad_alpha.onnx"), "-i", data], ["lif1", "alpha"]),
    "missing data": lambda d, m, data, x: (
        ["simulate", m, "-i", d / "nodata.npz"], [str(d / "nodata.npz"), "no such data file"]),
    "truncated data": lambda d, m, data, x: (
        ["simulate", m, "-i", _write_truncated_npz(d / "cut.npz", x)], [str(d / "cut.npz")]),
    "wrong input name": lambda d, m, data, x: (
        ["simulate", m, "-i", _saved_npz(d / "pixels.npz", pixels=x)], [str(d / "pixels.npz"), "'x'", "pixels"]),
    "NaN data": lambda d, m, data, x: (
        ["simulate", m, "-i", _write_nan_data(d / "nan.npz", x)], [str(d / "nan.npz"), "'x'", "NaN"]),
    "wrong shape": lambda d, m, data, x: (
        ["simulate", m, "-i", _saved_npz(d / "narrow.npz", x=x[:, :3])], ["'x'", "[9, 3]", "[N, 4]"]),
    "wrong label count": lambda d, m, data, x: (
        ["simulate", m, "-i", data, "--labels", _saved_npy(d / "few.npy", np.zeros(4, np.int64))],
        [str(d / "few.npy"), "[9]"]),
    "unknown probe": lambda d, m, data, x: (
        ["simulate", m, "-i", data, "--probe", "membrane"], ["'membrane'"]),
    "output not npz": lambda d, m, data, x: (
        ["simulate", m, "-i", data, "-o", d / "out.txt"], [str(d / "out.txt"), ".npz"]),
    "output directory missing": lambda d, m, data, x: (
        ["simulate", m, "-i", data, "-o", d / "absent" / "out.npz"], [str(d / "absent")]),
    "inspect missing model": lambda d, m, data, x: (
        ["inspect", d / "nope.onnx"], [str(d / "nope.onnx"), "no such model file"]),
    "inspect garbage model": lambda d, m, data, x: (
        ["inspect", _write_garbage(d / "junk.onnx")], [str(d / "junk.onnx"), "not an ONNX model"]),
    "inspect invalid LIF attribute": lambda d, m, data, x: (
        ["inspect", _write_invalid_lif_model(d / "bad_alpha.onnx")], ["lif1", "alpha"]),
}


def _saved_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _saved_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_input_is_one_error_line_and_exit_code_2(runner: CliRunner, tmp_path: Path, model_file: Path,
                                                      data_file: Path, x: np.ndarray, case: str) -> None:
    args, fragments = ERROR_CASES[case](tmp_path, model_file, data_file, x)
    if args[0] == "simulate" and "-o" not in args:
        args += ["-o", tmp_path / "result.npz"]
    before = sorted(p.name for p in tmp_path.rglob("*"))

    result = invoke(runner, *args)

    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output!r} {result.exception!r}"
    error_lines = result.stderr.splitlines()
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("hnnx: error: ")
    for fragment in fragments:
        assert fragment in error_lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no output file, no temporary file


def test_batch_size_zero_is_a_usage_error(runner: CliRunner, model_file: Path, data_file: Path) -> None:
    result = invoke(runner, "simulate", model_file, "-i", data_file, "-b", "0")
    assert result.exit_code == 2
    assert "--batch-size" in result.stderr


def test_simulate_needs_input(runner: CliRunner, model_file: Path) -> None:
    result = invoke(runner, "simulate", model_file)
    assert result.exit_code == 2
    assert "--input" in result.stderr


# --------------------------------------------------------------------------- the installed command
def test_console_command_simulates_and_writes_npz(tmp_path: Path, model_file: Path, data_file: Path,
                                                  x: np.ndarray) -> None:
    out = tmp_path / "out.npz"
    completed = subprocess.run(
        [hnnx_executable(), "simulate", str(model_file), "--input", str(data_file), "--probe", "spikes",
         "--output", str(out)],
        capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    assert "accuracy: 66.67 %" in completed.stdout.splitlines()
    assert f"  lif1  {expected_spikes(x).mean(dtype=np.float64):.4f}" in completed.stdout.splitlines()
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["spikes"], expected_spikes(x))


def test_console_command_reports_bad_data_on_one_stderr_line(tmp_path: Path, model_file: Path,
                                                             x: np.ndarray) -> None:
    bad = _write_nan_data(tmp_path / "nan.npz", x)
    completed = subprocess.run(
        [hnnx_executable(), "simulate", str(model_file), "-i", str(bad), "-o", str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 2
    assert completed.stdout == ""
    (line,) = completed.stderr.splitlines()
    assert line.startswith("hnnx: error: ") and str(bad) in line and "'x'" in line
    assert not (tmp_path / "out.npz").exists()


def test_console_command_inspect(model_file: Path) -> None:
    completed = subprocess.run([hnnx_executable(), "inspect", str(model_file)], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "  x: float32 [N, 4]" in completed.stdout.splitlines()
    assert "    alpha = 0.75" in completed.stdout.splitlines()
