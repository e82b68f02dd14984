"""hnnx quantize without -o (the output named after the model and its form, next to it, never over it)
and without --calib (one line saying which data, in which layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import hnnx
from hnnx import models
from hnnx.cli import main
from hnnx.quantization import quantized_as
from parallel_cases import digits, event_model


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "net.onnx"
    shutil.copy(models.path("hybrid_a2s"), path)
    np.savez(tmp_path / "digits.npz", **digits(32))
    return path


def quantize(*args: str) -> tuple[int, str]:
    run = CliRunner().invoke(main, ["quantize", *args, "--no-progress"])
    return run.exit_code, run.output


@pytest.mark.parametrize("options, name, form", [
    ([], "net.tianjicx.onnx", "tianjicx/int"),
    (["--format", "fakequant"], "net.tianjicx.fakequant.onnx", "tianjicx/fakequant"),
    (["--target", "qdq"], "net.qdq.onnx", "qdq/fakequant"),
])
def test_the_output_is_named_after_the_model_and_its_form(model: Path, options: list[str], name: str,
                                                          form: str) -> None:
    before = model.read_bytes()

    code, output = quantize(str(model), "--calib", str(model.parent / "digits.npz"), *options)

    assert code == 0, output
    assert output.rstrip().endswith(f"wrote {model.parent / name}")
    assert quantized_as(hnnx.load(model.parent / name)) == form
    assert model.read_bytes() == before


def test_a_fake_quant_model_made_integer_needs_no_data_and_never_overwrites_its_input(model: Path) -> None:
    code, output = quantize(str(model), "--calib", str(model.parent / "digits.npz"), "--format", "fakequant")
    assert code == 0, output
    fake = model.parent / "net.tianjicx.fakequant.onnx"

    code, output = quantize(str(fake))  # tianjicx/fakequant → tianjicx/int: weights from their float sources

    assert code == 0, output
    assert quantized_as(hnnx.load(model.parent / "net.tianjicx.onnx")) == "tianjicx/int"
    code, output = quantize(str(model.parent / "net.tianjicx.onnx"))
    assert code == 2
    assert output == (f"hnnx: error: {model.parent / 'net.tianjicx.onnx'}: the default output would overwrite the "
                      f"model (already tianjicx); give -o OUT.onnx\n")


def test_without_calibration_data_one_line_names_the_inputs_and_their_layout(model: Path, tmp_path: Path) -> None:
    code, output = quantize(str(model))

    assert code == 2
    assert output == ("hnnx: error: quantizing needs calibration data: --calib DATA, a .npz keyed by input name, a "
                      ".npy or a directory of them, holding the model's inputs pixels: float32 [N, 1, 8, 8] (samples "
                      "on the N axis; a few hundred are typical)\n")
    hnnx.save(event_model(), tmp_path / "events.onnx")
    code, output = quantize(str(tmp_path / "events.onnx"))
    assert code == 2 and output.count("\n") == 1
    assert "current: float32 [T, N, 6] (time-major: samples on axis 1)" in output
    assert not list(tmp_path.glob("*.tianjicx*.onnx"))
