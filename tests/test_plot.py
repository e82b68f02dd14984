"""hnnx.plot and the --plot options: figures with the expected panels drawing the data they are given,
valid PNG files, and a one-line hint without matplotlib. Skipped without matplotlib, required in CI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from optional import require

matplotlib = require("matplotlib", "plot")

import matplotlib.image  # noqa: E402

import hnnx  # noqa: E402
from hnnx import models, plot  # noqa: E402
from hnnx.cli import main  # noqa: E402
from parallel_cases import digits  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> tuple[int, int]:
    """``path`` is a PNG file matplotlib reads back; returns its (height, width) in pixels."""
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[0] > 50 and image.shape[1] > 50
    return image.shape[0], image.shape[1]


@pytest.fixture(scope="module")
def spikes() -> np.ndarray:
    """[T=12, N=5, 4, 3] random spikes (12 neurons per sample)."""
    return (np.random.default_rng(3).random((12, 5, 4, 3)) < 0.3).astype(np.float32)


def test_a_raster_has_a_panel_per_sample_with_a_dot_per_spike(spikes: np.ndarray) -> None:
    figure = plot.raster_figure("layer.spikes", spikes, samples=3, neurons=10)

    assert len(figure.axes) == 3
    for sample, panel in enumerate(figure.axes):
        dots = panel.collections[0].get_offsets()
        expected = np.argwhere(spikes[:, sample].reshape(12, -1)[:, :10])  # (step, neuron) of the first 10 neurons
        np.testing.assert_array_equal(np.asarray(dots), expected)
    assert "neurons 0–9 of 12" in figure._suptitle.get_text()
    assert len(plot.raster_figure("two", spikes[:, :2]).axes) == 2  # fewer samples than panels
    plot.pyplot().close("all")


def test_firing_rate_histograms_per_train_and_one_panel_of_layer_means(spikes: np.ndarray) -> None:
    figure = plot.firing_rate_figure({"a": spikes, "b": spikes[:, :, :1]}, {"lif1": 0.25, "lif2": 0.5})

    assert len(figure.axes) == 3
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    rates = spikes.reshape(60, -1).sum(axis=0, dtype=np.int64) / 60  # spikes per neuron per step
    np.testing.assert_array_equal(heights, np.histogram(rates, bins=np.linspace(0, 1, plot.RATE_BINS + 1))[0])
    assert [bar.get_width() for bar in figure.axes[2].patches] == [0.25, 0.5]
    assert len(plot.firing_rate_figure({"a": spikes}).axes) == 1
    plot.pyplot().close("all")


def test_the_confusion_matrix_counts_label_prediction_pairs() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])

    figure = plot.confusion_figure(labels, predicted)

    assert len(figure.axes) == 1
    np.testing.assert_array_equal(figure.axes[0].images[0].get_array(), [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert figure.axes[0].get_title() == "accuracy 66.67 % (6 samples)"
    plot.pyplot().close("all")


def test_simulation_plots_of_a_run_with_probes_and_labels(tmp_path: Path) -> None:
    result = hnnx.simulate(models.path("hybrid_a2s"), digits(100), probes=["hidden_lif.spikes", "pixels"])

    written = plot.simulation_plots(result, tmp_path / "plots")

    # pixels is no spike train: no raster of it
    assert [p.name for p in written] == ["raster_hidden_lif.spikes.png", "firing_rates.png", "confusion.png"]
    heights = [assert_png(path)[0] for path in written]
    assert heights[0] > heights[2]  # three raster panels stacked are taller than one matrix of 10 classes


def test_quantization_plots_bars_per_tensor_and_rate_scatter(tmp_path: Path) -> None:
    _, report = hnnx.quantize(models.path("hybrid_a2s"), digits(64), num_samples=64)
    errors = plot.quantization_error_figure(report.tensor_errors)

    assert len(errors.axes) == 2
    left, right = errors.axes
    assert len(left.patches) == len(right.patches) == len(report.tensor_errors)
    exact = [i for i, e in enumerate(report.tensor_errors) if e["sqnr_db"] == float("inf")]
    assert exact and all(left.patches[i].get_hatch() == "//" for i in exact)
    finite = [i for i in range(len(report.tensor_errors)) if i not in exact]
    assert [left.patches[i].get_width() for i in finite] == [report.tensor_errors[i]["sqnr_db"] for i in finite]
    drift = plot.rate_drift_figure(report.firing_rates)
    assert len(drift.axes) == 1 and len(drift.axes[0].collections[0].get_offsets()) == len(report.firing_rates)
    plot.pyplot().close("all")

    written = plot.quantization_plots(report, tmp_path)
    assert [p.name for p in written] == ["quantization_errors.png", "firing_rate_drift.png"]
    for path in written:
        assert_png(path)


def test_cli_simulate_plot_draws_every_spiking_layer_and_hnnx_plot_redraws_a_saved_run(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits.npz", **digits(60))
    run = CliRunner().invoke(main, ["simulate", str(models.path("hybrid_a2s")), "-i", str(tmp_path / "digits.npz"),
                                    "--plot", str(tmp_path / "plots"), "-o", str(tmp_path / "run.npz"),
                                    "--no-progress"])
    assert run.exit_code == 0, run.output
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["confusion.png", "firing_rates.png", "raster_hidden_lif.spikes.png", "raster_out_lif.spikes.png"]

    again = CliRunner().invoke(main, ["plot", str(tmp_path / "run.npz")])

    assert again.exit_code == 0, again.output
    redrawn = sorted(p.name for p in (tmp_path / "run_plots").iterdir())
    assert redrawn == ["firing_rates.png", "raster_hidden_lif.spikes.png", "raster_out_lif.spikes.png"]
    for name in redrawn[1:]:  # the same rasters from the saved spikes
        assert assert_png(tmp_path / "run_plots" / name) == assert_png(tmp_path / "plots" / name)
    # Two histogram panels side by side from the file; the run's figure adds the layers' mean rates.
    assert assert_png(tmp_path / "run_plots" / "firing_rates.png")[1] < assert_png(tmp_path / "plots" /
                                                                                  "firing_rates.png")[1]


def test_hnnx_plot_of_a_run_without_spikes_says_what_to_probe(tmp_path: Path) -> None:
    np.savez(tmp_path / "run.npz", scores=np.zeros((4, 10), np.float32))

    run = CliRunner().invoke(main, ["plot", str(tmp_path / "run.npz")])

    assert run.exit_code == 2
    assert run.output.strip() == (f"hnnx: error: {tmp_path / 'run.npz'}: holds no spike train (an array [T, N, ...] "
                                  "of zeros and ones; it holds scores [4, 10]): probe a spiking layer's spikes with "
                                  "hnnx simulate --probe")


def test_plot_without_matplotlib_says_how_to_install_it_before_running(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    np.savez(tmp_path / "digits.npz", **digits(8))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails

    for command in (["simulate", str(models.path("hybrid_a2s")), "-i", str(tmp_path / "digits.npz")],
                    ["quantize", str(models.path("hybrid_a2s")), "--calib", str(tmp_path / "digits.npz"),
                     "-o", str(tmp_path / "q.onnx")]):
        run = CliRunner().invoke(main, [*command, "--plot", str(tmp_path / "plots")])
        assert run.exit_code == 2
        assert run.output == "hnnx: error: plots need matplotlib: pip install matplotlib (or pip install " \
                             "'hnnx[plot]')\n"
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "plots").exists()
