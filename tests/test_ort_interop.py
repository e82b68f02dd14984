"""onnxruntime interop: a ``CalibrationDataReader`` as calibration data (one pass, rewound or
replayed for quantization's second pass), and the entry points ``import hnnx`` exposes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader

import hnnx
from hnnx.calibrate import batches, calibrate
from hnnx.calibrate.readers import REPLAY_SAMPLES
from hnnx.errors import DataError
from hnnx.runtime import Simulator

DIGITS = hnnx.datasets.load_digits()
IMAGES = DIGITS.x_train[:96].reshape(-1, 1, 8, 8)


class Reader(CalibrationDataReader):
    """onnxruntime's interface: ``get_next()`` gives one feed dict, then None; counts its calls."""

    def __init__(self, images: np.ndarray, per_item: int = 1, rewindable: bool = False) -> None:
        self.items = [images[i:i + per_item] for i in range(0, len(images), per_item)]
        self.position = 0
        self.calls = 0
        if rewindable:
            self.rewind = self._rewind

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.calls += 1
        if self.position == len(self.items):
            return None
        self.position += 1
        return {"pixels": self.items[self.position - 1]}

    def _rewind(self) -> None:
        self.position = 0


def inputs() -> Any:
    return Simulator(hnnx.load(hnnx.models.path("hybrid_a2s"))).inputs


def drawn(reader: Any, batch_size: int = 32, num_samples: int | None = None) -> np.ndarray:
    return np.concatenate([feeds["pixels"] for feeds in batches(reader, inputs(), batch_size, num_samples)])


def test_import_hnnx_exposes_models_and_datasets() -> None:
    import subprocess
    import sys

    code = "import hnnx; print(hnnx.models.path('snn_mlp').name, len(hnnx.datasets.load_digits().y_test))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["snn_mlp.onnx", str(len(DIGITS.y_test))]
    assert set(hnnx.models.available()) >= {"snn_mlp", "hybrid_a2s"} and "models" in hnnx.__all__


@pytest.mark.parametrize("per_item", [1, 7])
def test_a_reader_streams_its_items_in_batches(per_item: int) -> None:
    np.testing.assert_array_equal(drawn(Reader(IMAGES, per_item), batch_size=32), IMAGES)


def test_a_second_pass_replays_what_the_first_kept() -> None:
    reader = Reader(IMAGES)
    first = drawn(reader)
    calls = reader.calls
    np.testing.assert_array_equal(drawn(reader, num_samples=50), first[:50])
    np.testing.assert_array_equal(drawn(reader), first)
    assert reader.calls == calls  # replayed, not read again


def test_a_rewindable_reader_is_read_again() -> None:
    reader = Reader(IMAGES, rewindable=True)
    first = drawn(reader)
    calls = reader.calls
    np.testing.assert_array_equal(drawn(reader), first)
    assert reader.calls == 2 * calls


def test_a_long_reader_without_rewind_replays_its_first_samples_only() -> None:
    images = np.repeat(IMAGES, (REPLAY_SAMPLES // len(IMAGES)) + 2, axis=0)
    reader = Reader(images, per_item=16)
    drawn(reader)
    np.testing.assert_array_equal(drawn(reader, num_samples=128), images[:128])
    with pytest.raises(DataError, match=r"Reader \(onnxruntime reader\) was read once already and has no rewind\(\)"):
        drawn(reader)


def test_bad_reader_items_name_the_reader() -> None:
    class Broken(Reader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            item = super().get_next()
            return None if item is None else {"image": item["pixels"]}

    with pytest.raises(DataError, match=r"Broken \(onnxruntime reader\) item 0: no array for model input 'pixels'"):
        drawn(Broken(IMAGES))


def test_quantize_and_calibrate_take_a_reader_as_they_take_arrays() -> None:
    model = hnnx.models.path("hybrid_a2s")
    from_reader, report = hnnx.quantize(model, Reader(IMAGES, per_item=5))
    from_arrays, expected = hnnx.quantize(model, {"pixels": IMAGES})
    assert from_reader.SerializeToString() == from_arrays.SerializeToString()
    assert report.calibration_samples == len(IMAGES) and report.sqnr_db == expected.sqnr_db
    stats = calibrate(model, Reader(IMAGES), ["pixels"])
    assert stats.samples == len(IMAGES) and stats.absmax("pixels") == pytest.approx(float(IMAGES.max()))
