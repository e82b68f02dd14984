"""Calibration data from files: opened only as far as used, read slice by slice, validated batch by
batch (memory holds one batch whatever the number of samples), and a fixed batch fed as it is."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from hnnx.calibrate import batches, readers
from hnnx.errors import DataError
from hnnx.runtime import TensorSpec

X_SPEC = TensorSpec("x", np.dtype("float32"), ("N", 4))
U_SPEC = TensorSpec("u", np.dtype("float32"), ("T", "N", 3))  # time-major: samples on axis 1


def _joined(stream, name: str, axis: int = 0) -> tuple[np.ndarray, list[int]]:
    parts = [feeds[name] for feeds in stream]
    return np.concatenate(parts, axis=axis), [part.shape[axis] for part in parts]


def _folder_of_four_sample_files(folder: Path, x: np.ndarray) -> list[Path]:
    """``x`` in files of 4 samples, stored and compressed by turns, named in sample order."""
    folder.mkdir()
    paths = []
    for number, start in enumerate(range(0, len(x), 4)):
        path = folder / f"part{number:03d}.npz"
        (np.savez_compressed if number % 2 else np.savez)(path, x=x[start:start + 4], labels=np.zeros(4))
        paths.append(path)
    return paths


def test_num_samples_opens_only_the_files_it_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    folder = tmp_path / "calib"
    _folder_of_four_sample_files(folder, x)
    (folder / "part999.npz").write_bytes(b"not an archive")  # beyond the samples used
    opened: list[str] = []
    original = readers.open_stored
    monkeypatch.setattr(readers, "open_stored", lambda path: opened.append(path.name) or original(path))

    stream = batches(folder, [X_SPEC], batch_size=4, num_samples=10)
    values, sizes = _joined(stream, "x")

    np.testing.assert_array_equal(values, x[:10])
    assert sizes == [4, 4, 2] and stream.total == 10
    assert opened == ["part000.npz", "part001.npz", "part002.npz"]  # 12 samples hold the 10 used
    with pytest.raises(DataError, match=r"part999.npz: not a readable .npz/.npy file"):
        batches(folder, [X_SPEC], batch_size=4)  # all samples: the corrupt file is reached


def test_stored_compressed_npy_fortran_and_time_major_files_read_in_slices(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(23, 4)).astype(np.float32)
    folder = tmp_path / "mixed"
    folder.mkdir()
    np.savez(folder / "a.npz", x=x[:5])
    np.savez_compressed(folder / "b.npz", x=x[5:16])
    np.save(folder / "c.npy", np.asfortranarray(x[16:]))
    for batch_size, num_samples in ((3, None), (7, 12), (1, 23)):
        values, sizes = _joined(batches(folder, [X_SPEC], batch_size=batch_size, num_samples=num_samples), "x")
        used = num_samples or 23
        np.testing.assert_array_equal(values, x[:used])
        assert sum(sizes) == used and max(sizes) == batch_size

    u = rng.normal(size=(2, 9, 3)).astype(np.float32)
    time_major = tmp_path / "time"
    time_major.mkdir()
    np.savez_compressed(time_major / "a.npz", u=u[:, :4])
    np.savez(time_major / "b.npz", u=u[:, 4:])
    values, sizes = _joined(batches(time_major, [U_SPEC], batch_size=3), "u", axis=1)
    np.testing.assert_array_equal(values, u)
    assert sizes == [3, 3, 3]


def test_nothing_stays_memory_mapped(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads the process's memory maps from /proc")
    x = np.random.default_rng(2).normal(size=(64, 4)).astype(np.float32)
    folder = tmp_path / "mapped"
    _folder_of_four_sample_files(folder, x)
    for feeds in batches(folder, [X_SPEC], batch_size=8):
        maps = Path("/proc/self/maps").read_text()
        assert str(folder) not in maps  # mapped pages would count in the resident set while mapped
        assert feeds["x"].shape == (8, 4)


def test_validation_and_batches_hold_one_batch_whatever_the_number_of_samples(tmp_path: Path) -> None:
    """Peak traced memory with 512 samples ≤ 1.1× that with 32, batches of 32 (64 KiB samples)."""
    spec = TensorSpec("x", np.dtype("float32"), ("N", 16384))
    rng = np.random.default_rng(3)
    folder = tmp_path / "big"
    folder.mkdir()
    for number in range(64):
        np.savez(folder / f"part{number:03d}.npz", x=rng.normal(size=(8, 16384)).astype(np.float32))

    def peak(samples: int) -> int:
        tracemalloc.start()
        seen = 0
        for feeds in batches(folder, [spec], batch_size=32, num_samples=samples):
            seen += len(feeds["x"])
            del feeds
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert seen == samples
        return top

    peak(32)  # warm-up: first-use allocations
    few, many = peak(32), peak(512)
    assert many <= 1.1 * few, (few, many)
    assert few < 4 * 32 * 16384 * 4  # a few batches at most, not the data


# --------------------------------------------------------------------------- fixed batch
def test_a_model_with_a_batch_of_one_is_fed_one_sample_at_a_time() -> None:
    x = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    spec = TensorSpec("x", np.dtype("float32"), (1, 4))
    values, sizes = _joined(batches({"x": x}, [spec], batch_size=64), "x")
    np.testing.assert_array_equal(values, x)
    assert sizes == [1] * 5
    values, sizes = _joined(batches(iter([x[:2], x[2:]]), [spec], batch_size=64), "x")
    assert sizes == [1] * 5


def test_a_fixed_batch_that_the_samples_do_not_fill_is_refused() -> None:
    x = np.zeros((10, 4), np.float32)
    spec = TensorSpec("x", np.dtype("float32"), (4, 4))
    message = r"input 'x' takes exactly 4 samples per run, but 10 samples do not fill whole batches"
    with pytest.raises(DataError, match=message):
        batches({"x": x}, [spec], batch_size=64)
    assert [f["x"].shape[0] for f in batches({"x": x}, [spec], batch_size=64, num_samples=8)] == [4, 4]
    with pytest.raises(DataError, match=message):
        list(batches(iter([x]), [spec], batch_size=64))
    other = TensorSpec("y", np.dtype("float32"), (2, 4))
    with pytest.raises(DataError, match=r"the model's inputs fix different batch sizes: \{'x': 4, 'y': 2\}"):
        batches({"x": x, "y": x}, [spec, other], batch_size=64)


def test_a_file_cut_short_after_opening_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((8, 4), np.float32))
    stream = batches(path, [X_SPEC], batch_size=4)  # validated: the file was whole
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 16)
    with pytest.raises(DataError, match=r"x.npy: cannot read samples 4:8 \(ValueError: "):
        list(stream)


def test_quantize_reads_only_the_files_num_samples_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration and the report's comparison both stop at ``num_samples``: the corrupt file
    after them is never opened."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import hnnx
    from hnnx import ops

    rng = np.random.default_rng(5)
    weight = rng.normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(weight, "w")])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)]))
    folder = tmp_path / "calib"
    _folder_of_four_sample_files(folder, rng.normal(size=(40, 4)).astype(np.float32))
    (folder / "part999.npz").write_bytes(b"not an archive")
    opened: list[str] = []
    original = readers.open_stored
    monkeypatch.setattr(readers, "open_stored", lambda path: opened.append(path.name) or original(path))

    quantized, report = hnnx.quantize(model, folder, target="qdq", num_samples=8, batch_size=4)

    assert isinstance(quantized, onnx.ModelProto) and report.calibration_samples == 8
    assert set(opened) == {"part000.npz", "part001.npz"}
