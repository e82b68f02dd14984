"""hnnx.calibrate: observers against numpy references, streaming readers, and calibration runs."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hnnx import ops
from hnnx.calibrate import (OBSERVERS, EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver, batches,
                            calibrate, make_observer)
from hnnx.errors import DataError, HnnxError, ModelError
from hnnx.runtime import Simulator, TensorSpec
from hnnx.runtime.data import read_arrays

HISTOGRAM_OBSERVERS = ["percentile", "entropy", "mse"]

X_SPEC = TensorSpec("x", np.dtype("float32"), ("N", 4))
U_SPEC = TensorSpec("u", np.dtype("float32"), ("T", "N", 3))  # time-major: samples on axis 1


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def gaussian_with_outliers(rng: np.random.Generator, size: int = 400_000, outliers: int = 1,
                           at: float = 40.0) -> np.ndarray:
    """Unit Gaussian plus a few values at ±``at`` (in random positions)."""
    values = rng.normal(size=size)
    values[rng.choice(size, outliers, replace=False)] = at * rng.choice([-1.0, 1.0], outliers)
    return values


def observed(name: str, data: np.ndarray, pieces: int = 10, **options: Any):
    observer = make_observer(name, **options)
    for part in np.array_split(data, pieces):
        observer.update(part)
    return observer


def quantization_mse(values: np.ndarray, threshold: float, levels: int = 127) -> float:
    """Mean squared error of symmetric uniform quantization with clip threshold ``threshold``."""
    step = threshold / levels
    return float(np.mean((values - step * np.clip(np.round(values / step), -levels, levels)) ** 2))


# --------------------------------------------------------------------------- min/max
def test_minmax_is_exact(rng: np.random.Generator) -> None:
    data = rng.normal(size=(50, 7)).astype(np.float32) * 3 - 1

    observer = observed("minmax", data, pieces=7)

    assert observer.range() == (float(data.min()), float(data.max()))
    assert observer.absmax() == float(np.abs(data).max())
    assert observer.count == data.size


@pytest.mark.parametrize("axis", [1, -2])
def test_minmax_per_channel_is_exact(rng: np.random.Generator, axis: int) -> None:
    scales = np.array([0.5, 2.0, 8.0], np.float32)
    data = rng.normal(size=(40, 3, 5)).astype(np.float32) * scales[None, :, None]

    observer = make_observer("minmax", per_channel_axis=axis)
    for part in np.array_split(data, 6):
        observer.update(part)

    low, high = observer.range()
    np.testing.assert_array_equal(low, data.min(axis=(0, 2)))
    np.testing.assert_array_equal(high, data.max(axis=(0, 2)))
    np.testing.assert_array_equal(observer.absmax(), np.abs(data).max(axis=(0, 2)))
    assert observer.channels == 3


def test_integer_tensors_are_observed(rng: np.random.Generator) -> None:
    data = rng.integers(-300, 200, size=(30, 4)).astype(np.int32)
    observer = observed("percentile", data, percentile=100)
    assert observer.range() == (float(data.min()), float(data.max()))
    assert observer.absmax() == pytest.approx(float(np.abs(data).max()))
    int8 = observed("mse", np.array([-128, 5, 127], np.int8), pieces=1)
    assert int8.absmax() <= 128 and int8.range() == (-128.0, 127.0)


# --------------------------------------------------------------------------- percentile
@pytest.mark.parametrize("percentile", [50.0, 99.0, 99.99])
@pytest.mark.parametrize("distribution", ["normal", "laplace", "uniform", "relu"])
def test_percentile_matches_numpy_within_a_bin(rng: np.random.Generator, percentile: float,
                                               distribution: str) -> None:
    data = {
        "normal": lambda: rng.normal(size=100_000),
        "laplace": lambda: rng.laplace(size=100_000),
        "uniform": lambda: rng.uniform(-2, 3, size=100_000),
        "relu": lambda: np.maximum(rng.normal(size=100_000), 0),
    }[distribution]()

    observer = observed("percentile", data, percentile=percentile)

    expected = np.percentile(np.abs(data), percentile)
    assert abs(observer.absmax() - expected) <= float(observer.bin_width[0]) * 1.001


def test_percentile_per_channel_matches_numpy(rng: np.random.Generator) -> None:
    data = rng.laplace(size=(2000, 4, 6)) * np.array([1, 10, 0.1, 3])[None, :, None]

    observer = make_observer("percentile", per_channel_axis=1, percentile=99.5)
    for part in np.array_split(data, 8):
        observer.update(part)

    expected = np.percentile(np.abs(data), 99.5, axis=(0, 2))
    assert np.all(np.abs(observer.absmax() - expected) <= observer.bin_width * 1.001)


# --------------------------------------------------------------------------- entropy and MSE
def kl_threshold_bins(histogram: np.ndarray, levels: int) -> int:
    """The entropy-calibration clip (in bins), written out candidate by candidate from its definition."""
    bins = len(histogram)
    best, best_kept = np.inf, bins
    for kept in range(levels, bins + 1):
        reference = histogram[:kept].copy()
        reference[-1] += histogram[kept:].sum()
        candidate = np.zeros(kept)
        starts = [int(np.ceil(k * kept / levels)) for k in range(levels)] + [kept]
        for low, high in zip(starts[:-1], starts[1:]):
            group = histogram[low:high]
            if (group > 0).any():
                candidate[low:high] = np.where(group > 0, group.sum() / (group > 0).sum(), 0.0)
        p, q = reference / reference.sum(), candidate / max(candidate.sum(), 1e-300)
        if np.any((p > 0) & (q == 0)):
            continue
        divergence = float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
        if divergence < best:
            best, best_kept = divergence, kept
    return best_kept


@pytest.mark.parametrize("distribution", ["outliers", "laplace", "relu"])
def test_entropy_threshold_follows_its_definition(rng: np.random.Generator, distribution: str) -> None:
    data = {
        "outliers": lambda: gaussian_with_outliers(rng, 50_000, outliers=3, at=12.0),
        "laplace": lambda: rng.laplace(size=50_000),
        "relu": lambda: np.maximum(rng.normal(size=50_000), 0),
    }[distribution]()

    observer = observed("entropy", data, bins=384, levels=32)

    expected = kl_threshold_bins(observer.histogram[0], levels=32) * float(observer.bin_width[0])
    assert observer.absmax() == pytest.approx(min(expected, np.abs(data).max()), rel=1e-12)


@pytest.mark.parametrize("name", ["entropy", "mse"])
def test_gaussian_with_outliers_is_clipped_well_below_the_max(rng: np.random.Generator, name: str) -> None:
    # MSE keeps outliers whose clipping error outweighs the finer step: 1 in 400 000 at 40 σ does not.
    data = gaussian_with_outliers(rng)

    threshold = observed(name, data).absmax()

    assert 3.0 < threshold < 0.5 * np.abs(data).max()


@pytest.mark.parametrize("name", HISTOGRAM_OBSERVERS)
def test_uniform_data_is_clipped_close_to_its_max(rng: np.random.Generator, name: str) -> None:
    data = rng.uniform(-3, 3, size=100_000)
    threshold = observed(name, data).absmax()
    assert 0.98 * 3 < threshold <= np.abs(data).max()


@pytest.mark.parametrize("distribution", ["outliers", "laplace", "uniform", "relu"])
def test_mse_threshold_minimises_the_empirical_quantization_error(rng: np.random.Generator,
                                                                  distribution: str) -> None:
    data = {
        "outliers": lambda: gaussian_with_outliers(rng, 100_000, outliers=1, at=20.0),
        "laplace": lambda: rng.laplace(size=100_000),
        "uniform": lambda: rng.uniform(-1, 1, size=100_000),
        "relu": lambda: np.maximum(rng.normal(size=100_000), 0),
    }[distribution]()
    largest = np.abs(data).max()

    threshold = observed("mse", data).absmax()

    grid = np.linspace(0.01, 1.0, 300) * largest
    best_on_grid = min(quantization_mse(data, t) for t in grid)
    assert quantization_mse(data, threshold) <= best_on_grid * 1.002


def test_mse_observer_bits_option_changes_the_grid(rng: np.random.Generator) -> None:
    data = rng.laplace(size=50_000)
    four_bit = observed("mse", data, bits=4).absmax()
    eight_bit = observed("mse", data, bits=8).absmax()
    assert four_bit < eight_bit  # coarser grids trade more clipping for less rounding error
    grid = np.linspace(0.05, 1.0, 200) * np.abs(data).max()
    assert quantization_mse(data, four_bit, 7) <= min(quantization_mse(data, t, 7) for t in grid) * 1.002


# --------------------------------------------------------------------------- streaming and memory
@pytest.mark.parametrize("name", list(OBSERVERS))
def test_streaming_equals_one_shot(rng: np.random.Generator, name: str) -> None:
    data = gaussian_with_outliers(rng, 100_000, outliers=5, at=10.0)
    # Growing magnitudes force the histogram range to grow (and bins to merge) several times.
    data = data[np.argsort(np.abs(data), kind="stable")]
    rng.shuffle(data[:90_000])

    streamed = observed(name, data, pieces=25)
    whole = observed(name, data, pieces=1)
    shuffled = observed(name, rng.permutation(data), pieces=7)

    assert streamed.range() == whole.range() == shuffled.range()
    assert streamed.count == whole.count == data.size
    # The histogram range is a power of two fixed by the maximum alone, so the merged
    # histograms equal the one-shot histogram and the thresholds agree exactly.
    assert streamed.absmax() == whole.absmax() == shuffled.absmax()
    if name != "minmax":
        np.testing.assert_array_equal(streamed.histogram, whole.histogram)


def test_merged_histogram_equals_a_histogram_of_all_data_over_the_final_range(rng: np.random.Generator) -> None:
    data = np.abs(rng.normal(size=30_000)) * np.repeat([1.0, 1.7, 4.0, 9.5], 7_500)  # range grows 3 times
    data[::1000] = np.arange(30) * (64 / 384)  # values on bin edges of the final range [0, 64], and zeros

    observer = observed("percentile", data, pieces=4, bins=384)

    edge = float(observer.edge[0])
    assert data.max() <= edge < 2 * data.max() and np.log2(edge) == np.round(np.log2(edge))
    # Right-closed bins: (j·w, (j+1)·w] holds bin j, zero is in bin 0.
    lower = np.arange(384) * (edge / 384)
    direct = np.maximum(np.searchsorted(lower, data, side="left") - 1, 0)
    np.testing.assert_array_equal(observer.histogram[0], np.bincount(direct, minlength=384))
    assert observer.histogram.sum() == data.size


@pytest.mark.parametrize("name", HISTOGRAM_OBSERVERS)
def test_a_power_of_two_maximum_streams_like_one_shot(name: str) -> None:
    # The first batch's maximum 4 is its range's top edge; after the range doubles it must sit where
    # one pass over all the data puts it (a clamp into the top bin would move it one bin down).
    first, second = np.array([4.0, 1.0, 0.0]), np.array([6.0, 2.5])

    options: dict[str, Any] = {"bins": 8, **({"levels": 4} if name == "entropy" else {})}
    streamed = observed(name, np.concatenate([first, second]), pieces=1, **options)
    in_two = make_observer(name, **options)
    in_two.update(first)
    in_two.update(second)

    np.testing.assert_array_equal(in_two.histogram, streamed.histogram)
    # E = 8, w = 1: 0 and 1 in bin 0 = [0, 1], 2.5 in (2, 3], 4 in (3, 4], 6 in (5, 6].
    np.testing.assert_array_equal(in_two.histogram[0], [2, 0, 1, 1, 0, 1, 0, 0])


def split_observers(name: str, data: np.ndarray, cuts: list[int], axis: int | None, **options: Any) -> list:
    """One observer per part of ``data`` (cut at ``cuts`` on axis 0), each fed its part in two updates."""
    observers = []
    for part in np.split(data, cuts):
        observer = make_observer(name, per_channel_axis=axis, **options)
        for piece in np.array_split(part, 2):
            observer.update(piece)
        observers.append(observer)
    return observers


@pytest.mark.parametrize("name", list(OBSERVERS))
@pytest.mark.parametrize("axis", [None, 1])
def test_merged_observers_equal_one_observer_of_all_the_data(rng: np.random.Generator, name: str,
                                                             axis: int | None) -> None:
    data = rng.laplace(size=(900, 3)) * np.array([0.5, 3.0, 20.0])
    data[:300] /= 8  # the first part's ranges are smaller: merging re-bins them
    data[300:400, 0] = 0.0
    data[:100] = 0.0  # a part that saw only zeros (range 0)
    data[150, :] = [1.0, 4.0, 32.0]  # a part's maximum at a power of two, the top of its range
    data[500, :] = [2.0, 16.0, 64.0]  # powers of two and values on bin edges
    data[501, :] = [0.25, 1.5, 3.0]
    options = {} if name == "minmax" else {"bins": 256}
    one = make_observer(name, per_channel_axis=axis, **options)
    one.update(data)

    parts = split_observers(name, data, [100, 300, 650], axis, **options)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    backwards = split_observers(name, data, [100, 300, 650], axis, **options)[::-1]
    for part in backwards[1:]:
        backwards[0].merge(part)

    for combined in (merged, backwards[0]):
        assert combined.count == one.count == data.size
        np.testing.assert_array_equal(combined.range()[0], one.range()[0])
        np.testing.assert_array_equal(combined.range()[1], one.range()[1])
        np.testing.assert_array_equal(combined.absmax(), one.absmax())
        if name != "minmax":
            np.testing.assert_array_equal(combined.edge, one.edge)
            np.testing.assert_array_equal(combined.histogram, one.histogram)


def test_merging_an_empty_observer_and_into_an_empty_one(rng: np.random.Generator) -> None:
    data = rng.normal(size=500)
    seen = observed("entropy", data, pieces=3)
    fresh = make_observer("entropy")

    fresh.merge(seen)
    seen.merge(make_observer("entropy"))

    assert fresh.absmax() == seen.absmax() == observed("entropy", data, pieces=1).absmax()
    assert fresh.count == seen.count == 500
    fresh.update(data)  # the merged copy is independent of the observer it came from
    assert seen.count == 500


@pytest.mark.parametrize("first, second, message", [
    (("percentile", {"percentile": 99.0}), ("percentile", {"percentile": 99.9}), "cannot merge"),
    (("percentile", {}), ("mse", {}), "cannot merge"),
    (("minmax", {"per_channel_axis": 1}), ("minmax", {}), "cannot merge"),
    (("minmax", {"per_channel_axis": 1}), ("minmax", {"per_channel_axis": 1}), "cannot merge 3 channels into 2"),
])
def test_merge_refuses_observers_of_other_settings(first: tuple, second: tuple, message: str) -> None:
    a, b = make_observer(first[0], **first[1]), make_observer(second[0], **second[1])
    a.update(np.ones((4, 2)))
    b.update(np.ones((4, 3)))
    with pytest.raises(HnnxError, match=message):
        a.merge(b)


@pytest.mark.parametrize("name", list(OBSERVERS))
@pytest.mark.parametrize("axis", [None, 1])
def test_observer_state_does_not_grow_with_the_number_of_updates(rng: np.random.Generator, name: str,
                                                                 axis: int | None) -> None:
    observer = make_observer(name, per_channel_axis=axis)

    def feed(updates: int) -> None:
        for _ in range(updates):
            observer.update(rng.normal(size=(64, 3, 8)) * rng.uniform(0.5, 2))

    feed(10)
    small = observer.nbytes
    feed(100)

    assert observer.nbytes == small
    assert small <= 3 * (2048 + 4) * 8 + 64  # O(channels × bins), independent of the data size
    observer.absmax()
    assert observer.nbytes == small


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_per_channel_equals_a_per_tensor_observer_on_each_channel(rng: np.random.Generator, name: str) -> None:
    data = rng.laplace(size=(600, 3, 4)) * np.array([0.2, 1.0, 30.0])[None, :, None]
    data[200:, 1] *= 3  # one channel's range grows mid-stream
    parts = np.array_split(data, 5)

    joint = make_observer(name, per_channel_axis=1)
    for part in parts:
        joint.update(part)
    for channel in range(3):
        alone = make_observer(name)
        for part in parts:
            alone.update(part[:, channel])
        assert joint.absmax()[channel] == alone.absmax()
        assert (joint.range()[0][channel], joint.range()[1][channel]) == alone.range()


def test_all_zero_channel_gets_threshold_one() -> None:
    data = np.zeros((10, 2), np.float32)
    data[:, 1] = np.linspace(-2, 1, 10)
    for name in OBSERVERS:
        observer = make_observer(name, per_channel_axis=1)
        observer.update(data[:5])
        observer.update(data[5:])
        threshold = observer.absmax()
        assert threshold[0] == 1.0 and 0 < threshold[1] <= 2.0, name


# --------------------------------------------------------------------------- observer errors
def test_unknown_observer_lists_the_known_ones() -> None:
    with pytest.raises(HnnxError, match="unknown observer 'kl'.*minmax, percentile, entropy, mse"):
        make_observer("kl")


def test_unknown_option_is_named() -> None:
    with pytest.raises(HnnxError, match="observer 'minmax' has no option 'percentile'"):
        make_observer("minmax", percentile=99.0)


@pytest.mark.parametrize("name, options, message", [
    ("percentile", {"percentile": 0}, "percentile must be in"),
    ("percentile", {"percentile": 101}, "percentile must be in"),
    ("entropy", {"bins": 64}, "levels must be an integer in"),
    ("mse", {"bits": 1}, "bits must be"),
    ("mse", {"bins": 0}, "bins must be a positive integer"),
])
def test_bad_observer_options(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(HnnxError, match=message):
        make_observer(name, **options)


def test_observer_rejects_nan_and_infinity() -> None:
    observer = MinMaxObserver()
    with pytest.raises(DataError, match="NaN or infinite"):
        observer.update(np.array([1.0, np.nan]))
    with pytest.raises(DataError, match="NaN or infinite"):
        PercentileObserver().update(np.array([1.0, -np.inf]))


def test_observer_rejects_a_changed_channel_count_and_a_bad_axis() -> None:
    observer = EntropyObserver(axis=1)
    observer.update(np.ones((2, 3)))
    with pytest.raises(DataError, match="has 4 channels on axis 1, earlier batches had 3"):
        observer.update(np.ones((2, 4)))
    with pytest.raises(DataError, match="channel axis 2 is out of range"):
        MSEObserver(axis=2).update(np.ones((2, 3)))


def test_threshold_before_any_data_is_an_error() -> None:
    with pytest.raises(HnnxError, match="no data observed yet"):
        MSEObserver().absmax()


# --------------------------------------------------------------------------- readers
def joined(stream: Iterator[dict[str, np.ndarray]], name: str, axis: int = 0) -> tuple[np.ndarray, list[int]]:
    parts = [feeds[name] for feeds in stream]
    return np.concatenate(parts, axis=axis), [part.shape[axis] for part in parts]


def assert_cut(sizes: list[int], batch_size: int, total: int) -> None:
    assert sum(sizes) == total
    assert all(size == batch_size for size in sizes[:-1]) and 0 < sizes[-1] <= batch_size


@pytest.fixture
def x(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(23, 4)).astype(np.float32)


def test_npz_file_is_streamed_in_batches(tmp_path: Path, x: np.ndarray) -> None:
    np.savez(tmp_path / "data.npz", x=x, labels=np.arange(23))
    stream = batches(tmp_path / "data.npz", [X_SPEC], batch_size=5)
    assert stream.total == 23
    values, sizes = joined(stream, "x")
    np.testing.assert_array_equal(values, x)
    assert_cut(sizes, 5, 23)


def test_npy_file_and_compressed_npz(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", x)
    np.savez_compressed(tmp_path / "z.npz", x=x)
    for path in (tmp_path / "x.npy", str(tmp_path / "z.npz")):
        values, sizes = joined(batches(path, [X_SPEC], batch_size=8), "x")
        np.testing.assert_array_equal(values, x)
        assert_cut(sizes, 8, 23)


def test_uncompressed_files_are_memory_mapped(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "s.npz", x=x)
    np.savez_compressed(tmp_path / "z.npz", x=x)
    for name, mapped in [("x.npy", True), ("s.npz", True), ("z.npz", False)]:
        array = read_arrays(tmp_path / name, mmap=True)[0]["" if name.endswith(".npy") else "x"]
        assert isinstance(array, np.memmap) == mapped, name
        np.testing.assert_array_equal(array, x)


def test_directory_batches_span_file_boundaries(tmp_path: Path, rng: np.random.Generator) -> None:
    u = rng.normal(size=(2, 17, 3)).astype(np.float32)
    folder = tmp_path / "parts"
    folder.mkdir()
    np.savez(folder / "a.npz", u=u[:, :5])
    np.savez(folder / "b.npz", u=u[:, 5:6])
    np.savez(folder / "c.npz", u=u[:, 6:])

    values, sizes = joined(batches(folder, [U_SPEC], batch_size=4), "u", axis=1)

    np.testing.assert_array_equal(values, u)
    assert_cut(sizes, 4, 17)


def test_mapping_of_arrays_is_cast_and_cut_on_the_sample_axis(rng: np.random.Generator) -> None:
    u = rng.normal(size=(3, 10, 3))  # float64 in, float32 out
    stream = batches({"u": u, "extra": np.zeros(2)}, [U_SPEC], batch_size=3)
    feeds = list(stream)
    assert all(f["u"].dtype == np.float32 for f in feeds)
    np.testing.assert_array_equal(np.concatenate([f["u"] for f in feeds], axis=1), u.astype(np.float32))
    assert [f["u"].shape[1] for f in feeds] == [3, 3, 3, 1]


def test_two_inputs_from_a_generator_of_tuples_are_recut(rng: np.random.Generator) -> None:
    specs = [TensorSpec("a", np.dtype("float32"), ("N", 2)), TensorSpec("b", np.dtype("float32"), ("N", 1))]
    a, b = rng.normal(size=(20, 2)), rng.normal(size=(20, 1))
    cuts = [0, 3, 4, 11, 20]
    items = ((a[lo:hi], b[lo:hi], np.zeros(hi - lo)) for lo, hi in zip(cuts[:-1], cuts[1:]))  # (a, b, labels)

    feeds = list(batches(items, specs, batch_size=6))

    assert [f["a"].shape[0] for f in feeds] == [6, 6, 6, 2]
    np.testing.assert_array_equal(np.concatenate([f["a"] for f in feeds]), a.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([f["b"] for f in feeds]), b.astype(np.float32))


@pytest.mark.parametrize("form", ["dict", "array", "tuple", "nested"])
def test_iterable_item_forms(x: np.ndarray, form: str) -> None:
    wrap = {
        "dict": lambda part: {"x": part, "labels": np.zeros(len(part))},
        "array": lambda part: part,
        "tuple": lambda part: (part, np.zeros(len(part))),
        "nested": lambda part: ({"x": part}, np.zeros(len(part))),
    }[form]
    items = [wrap(part) for part in np.array_split(x, 4)]  # a list: any iterable works

    values, sizes = joined(batches(items, [X_SPEC], batch_size=10), "x")

    np.testing.assert_array_equal(values, x)
    assert_cut(sizes, 10, 23)


def test_torch_dataloader(x: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.arange(23)), batch_size=4)
    values, sizes = joined(batches(loader, [X_SPEC], batch_size=10), "x")
    np.testing.assert_array_equal(values, x)
    assert_cut(sizes, 10, 23)

    dict_loader = DataLoader([{"x": torch.from_numpy(row).double(), "label": 0} for row in x], batch_size=5)
    values, _ = joined(batches(dict_loader, [X_SPEC], batch_size=10), "x")
    np.testing.assert_array_equal(values, x)


def test_num_samples_caps_the_total_and_draws_no_more_items(x: np.ndarray) -> None:
    drawn = []

    def items() -> Iterator[np.ndarray]:
        for start in range(0, 23, 3):
            drawn.append(start)
            yield x[start:start + 3]

    values, sizes = joined(batches(items(), [X_SPEC], batch_size=4, num_samples=7), "x")

    np.testing.assert_array_equal(values, x[:7])
    assert sizes == [4, 3]
    assert drawn == [0, 3, 6]  # the third item is cut; a fourth is never drawn
    values, sizes = joined(batches({"x": x}, [X_SPEC], batch_size=4, num_samples=9), "x")
    assert sizes == [4, 4, 1]


def test_nan_in_a_file_is_found_before_the_first_batch(tmp_path: Path, x: np.ndarray) -> None:
    bad = x.copy()
    bad[21, 2] = np.nan  # in the last batch
    np.savez(tmp_path / "bad.npz", x=bad)
    with pytest.raises(DataError, match=r"bad.npz: array 'x' holds 1 NaN/inf values \(first at index \(21, 2\)\)$"):
        batches(tmp_path / "bad.npz", [X_SPEC], batch_size=20)
    # Samples beyond the cap are not used, so they are not checked.
    assert len(list(batches(tmp_path / "bad.npz", [X_SPEC], batch_size=20, num_samples=21))) == 2


def test_nan_in_a_large_file_is_named_by_its_index_in_the_whole_file(tmp_path: Path) -> None:
    big = np.zeros((2500, 4), np.float32)
    big[2100, 1] = np.inf
    np.save(tmp_path / "big.npy", big)  # validated batch by batch: the bad value is in batch 32
    with pytest.raises(DataError, match=r"big.npy: array 'x' holds 1 NaN/inf values \(first at index \(2100, 1\)\)$"):
        batches(tmp_path / "big.npy", [X_SPEC], batch_size=64)


@pytest.mark.parametrize("source, message", [
    ({"y": np.zeros((3, 4))}, "no array for model input 'x'"),
    ({"x": np.zeros((3, 5))}, r"array 'x' has shape \[3, 5\], the model expects x: float32 \[N, 4\]"),
    ({"x": np.zeros((0, 4))}, "holds no samples"),
    ([{"y": np.zeros((3, 4))}], r"list item 0: no array for model input 'x' \(the item has: y\)"),
    ([np.zeros((3, 4)), np.zeros((3, 4, 1))], r"list item 1: array 'x' has shape \[3, 4, 1\]"),
    ([np.zeros((3, 4)), np.full((3, 4), np.inf)], "list item 1: array 'x' holds 12 NaN/inf"),
    ([np.zeros((3, 4)), "text"], "list item 1: expected a dict keyed by input name"),
    ([], "list: holds no samples"),
    (iter([]), "holds no samples"),
    (42, "calibration data must be"),
])
def test_bad_sources(source: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        list(batches(source, [X_SPEC], batch_size=2))


def test_a_bare_array_needs_a_one_input_model() -> None:
    specs = [X_SPEC, TensorSpec("y", np.dtype("float32"), ("N", 4))]
    with pytest.raises(DataError, match="a bare array feeds one input, but the model has 2"):
        list(batches([np.zeros((2, 4))], specs, batch_size=2))


def test_bad_batch_size_and_num_samples(x: np.ndarray) -> None:
    with pytest.raises(DataError, match="batch size must be ≥ 1"):
        batches({"x": x}, [X_SPEC], batch_size=0)
    with pytest.raises(DataError, match="number of calibration samples must be ≥ 1"):
        batches({"x": x}, [X_SPEC], batch_size=2, num_samples=0)


# --------------------------------------------------------------------------- calibration runs
STEPS = 4
LIF_ATTRS = {"threshold": 0.5, "alpha": 0.75, "beta": -0.125}
WEIGHT = (np.arange(20, dtype=np.float32).reshape(5, 4) % 7 - 3) / 4
BIAS = np.array([0.125, -0.25, 0.375, 0.0, 0.5], np.float32)


def hybrid_model() -> onnx.ModelProto:
    """x [N, 4] → Gemm → current_n [N, 5] → repeat STEPS times → LIF → mean over time → logits [N, 5]."""
    initializers = [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b"),
                    numpy_helper.from_array(np.array([0], np.int64), "axis0"),
                    numpy_helper.from_array(np.array([STEPS, 1, 1], np.int64), "repeat_shape")]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["current_n"], name="fc", transB=1),
        helper.make_node("Unsqueeze", ["current_n", "axis0"], ["current_1"]),
        helper.make_node("Expand", ["current_1", "repeat_shape"], ["current"]),
        ops.make_node("LIF", ["current"], ["spikes"], name="lif1", **LIF_ATTRS),
        helper.make_node("ReduceMean", ["spikes", "axis0"], ["logits"], keepdims=0),
        helper.make_node("Log", ["logits"], ["log_rate"]),
    ]
    graph = helper.make_graph(nodes, "calibration", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
                               helper.make_tensor_value_info("log_rate", TensorProto.FLOAT, ["N", 5])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


def lif_spikes(current: np.ndarray) -> np.ndarray:
    """Spikes of the hard-reset LIF of ``hybrid_model`` over axis 0, from v = 0."""
    v = np.zeros(current.shape[1:], np.float32)
    spikes = np.zeros_like(current)
    for t in range(current.shape[0]):
        v1 = v + current[t]
        spikes[t] = v1 > np.float32(LIF_ATTRS["threshold"])
        v = np.where(spikes[t] > 0, np.float32(0), v1) * np.float32(LIF_ATTRS["alpha"]) + np.float32(LIF_ATTRS["beta"])
    return spikes


@pytest.fixture
def samples(rng: np.random.Generator) -> np.ndarray:
    # Multiples of 1/8 keep the Gemm exact in float32, so onnxruntime and numpy agree bit for bit.
    return (rng.integers(-16, 17, size=(37, 4)) / 8).astype(np.float32)


def test_calibrate_records_ranges_and_firing_rates(samples: np.ndarray) -> None:
    current = samples @ WEIGHT.T + BIAS
    spikes = lif_spikes(np.broadcast_to(current, (STEPS, *current.shape)).copy())
    assert 0 < spikes.mean() < 1

    result = calibrate(hybrid_model(), {"x": samples}, ["current_n", "logits", "x"], batch_size=5)

    assert result.samples == 37
    assert result.range("current_n") == (float(current.min()), float(current.max()))
    assert result.absmax("current_n") == float(np.abs(current).max())
    assert result.range("x") == (float(samples.min()), float(samples.max()))
    assert result.range("logits") == (float(spikes.mean(axis=0).min()), float(spikes.mean(axis=0).max()))
    assert result.currents == {"lif1": "current"}
    assert result.current_ranges == {"lif1": (float(current.min()), float(current.max()))}
    assert result.firing_rates == {"lif1": pytest.approx(float(spikes.mean(dtype=np.float64)), abs=1e-12)}
    assert "lif1" in result.summary()


def test_calibrate_per_channel_with_options_from_a_generator(samples: np.ndarray) -> None:
    current = samples @ WEIGHT.T + BIAS

    result = calibrate(hybrid_model(), (samples[i:i + 6] for i in range(0, 37, 6)), ["current_n"],
                       observer="percentile", per_channel={"current_n": 1}, batch_size=8,
                       observer_options={"percentile": 100.0}, num_samples=30)

    assert result.samples == 30
    np.testing.assert_allclose(result.absmax("current_n"), np.abs(current[:30]).max(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(result.range("current_n")[1], current[:30].max(axis=0))


@pytest.mark.parametrize("name", HISTOGRAM_OBSERVERS)
def test_calibrate_with_histogram_observers_equals_direct_observation(samples: np.ndarray, name: str) -> None:
    current = samples @ WEIGHT.T + BIAS
    direct = make_observer(name)
    for start in range(0, 37, 10):
        direct.update(current[start:start + 10])

    result = calibrate(hybrid_model(), {"x": samples}, ["current_n"], observer=name, batch_size=10)

    assert result.absmax("current_n") == direct.absmax()


def test_calibrate_memory_does_not_grow_with_samples(rng: np.random.Generator) -> None:
    model = hybrid_model()

    def peak(batch_count: int) -> int:
        source = ((rng.integers(-16, 17, size=(64, 4)) / 8).astype(np.float32) for _ in range(batch_count))
        tracemalloc.start()
        calibrate(model, source, ["current_n", "logits"], observer="percentile", batch_size=64)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    peak(2)  # warm-up: first-call allocations
    few, many = peak(4), peak(40)
    assert many <= 1.3 * few


def test_errors_are_raised_before_any_model_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                samples: np.ndarray) -> None:
    runs = []
    original = Simulator.run
    monkeypatch.setattr(Simulator, "run", lambda self, feeds: runs.append(1) or original(self, feeds))
    bad = samples.copy()
    bad[-1, 0] = np.inf
    np.savez(tmp_path / "bad.npz", x=bad)

    with pytest.raises(DataError, match="bad.npz: array 'x' holds 1 NaN/inf"):
        calibrate(hybrid_model(), tmp_path / "bad.npz", ["current_n"], batch_size=4)
    with pytest.raises(DataError, match="item 0: array 'x' has shape"):
        calibrate(hybrid_model(), iter([samples[:, :3]]), ["current_n"])
    with pytest.raises(DataError, match="no array for model input 'x'"):
        calibrate(hybrid_model(), [{"input": samples}], ["current_n"])
    with pytest.raises(DataError, match="holds no samples"):
        calibrate(hybrid_model(), iter([]), ["current_n"])
    assert runs == []


def test_calibrate_rejects_unknown_names(samples: np.ndarray) -> None:
    with pytest.raises(ModelError, match="'nope': the model has no tensor of that name"):
        calibrate(hybrid_model(), {"x": samples}, ["nope"])
    with pytest.raises(HnnxError, match="per-channel axis given for tensor 'logits'"):
        calibrate(hybrid_model(), {"x": samples}, ["current_n"], per_channel={"logits": 1})
    with pytest.raises(HnnxError, match="unknown observer 'best'"):
        calibrate(hybrid_model(), {"x": samples}, ["current_n"], observer="best")
    result = calibrate(hybrid_model(), {"x": samples}, ["current_n"])
    with pytest.raises(HnnxError, match=r"tensor 'logits' was not calibrated \(calibrated: 'current_n'\)"):
        result.absmax("logits")


def test_non_finite_tensor_in_the_model_is_named(samples: np.ndarray) -> None:
    # log(0) = −inf wherever a neuron never fired
    with pytest.raises(DataError, match="tensor 'log_rate': .*NaN or infinite"):
        calibrate(hybrid_model(), {"x": samples}, ["log_rate"])


def test_calibrate_records_the_membrane_range_of_every_lif_layer() -> None:
    # current [T, N, 3] straight into a leaky neuron: v1 = v + u; fire above 1; reset to 0; v ← 0.5·v.
    node = ops.make_node("LIF", ["current"], ["spikes"], name="lif", threshold=1.0, alpha=0.5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("current", TensorProto.FLOAT, ["T", "N", 3])],
                              [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, ["T", "N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    current = np.random.default_rng(3).normal(0.3, 0.8, (6, 20, 3)).astype(np.float32)
    result = calibrate(model, {"current": current}, ["current"], batch_size=7)
    v = np.zeros((20, 3), np.float32)
    seen = []
    for u in current:
        v1 = v + u
        seen.append(v1)
        v = np.where(v1 > 1.0, np.float32(0), v1) * np.float32(0.5)
    low, high = result.membrane_ranges["lif"]
    assert (low, high) == (float(np.min(seen)), float(np.max(seen)))


def test_batches_are_cut_to_the_probe_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import hnnx
    """A budget smaller than one sample's probes runs sample by sample, with the same statistics."""
    from hnnx import models
    from hnnx.calibrate import calibrate
    from hnnx.datasets import load_digits
    from hnnx.runtime.session import Simulator

    model = hnnx.load(models.path("ann_residual"))
    names = [node.output[0] for node in model.graph.node]
    data = {"pixels": load_digits().x_train[:12].reshape(-1, 1, 8, 8)}
    per_sample = Simulator(model, probes=names).bytes_per_sample()
    assert per_sample > 16 * 8 * 8 * 4  # the first conv's output alone
    sizes: list[int] = []
    run = Simulator.run

    def counting(self: Simulator, feeds: dict) -> tuple:
        sizes.append(next(iter(feeds.values())).shape[0])
        return run(self, feeds)

    monkeypatch.setattr(Simulator, "run", counting)
    whole = calibrate(model, data, names)
    assert sizes == [12]
    sizes.clear()
    cut = calibrate(model, data, names, memory_budget=2 * per_sample + 1)
    assert sizes == [2] * 6 and cut.samples == whole.samples == 12
    for name in names:
        assert cut.range(name) == whole.range(name)


def test_minmax_ranges_are_reduced_in_the_graph_per_tensor_and_per_channel(samples: np.ndarray) -> None:
    """A min/max statistic never copies its tensor out: the graph reduces it (per channel on any
    axis), with the same result as observing the values themselves."""
    current = samples @ WEIGHT.T + BIAS

    result = calibrate(hybrid_model(), {"x": samples}, ["current_n", "current_1", "x"], batch_size=7,
                       per_channel={"current_1": 2, "x": -1})

    taps = {tap.tensor: tap for tap in result.simulator.range_taps}
    assert set(taps) == {"current_n", "current_1", "x"} and not any(tap.probed for tap in taps.values())
    assert not result.simulator.probes[:-1]  # only the neuron current is probed
    assert result.range("current_n") == (float(current.min()), float(current.max()))
    np.testing.assert_array_equal(result.range("current_1")[0], current.min(axis=0))
    np.testing.assert_array_equal(result.range("current_1")[1], current.max(axis=0))
    low, high = result.range("x")  # a negative axis counts from the end
    np.testing.assert_array_equal(low, samples.min(axis=0))
    np.testing.assert_array_equal(high, samples.max(axis=0))
    assert result.observers["current_n"].count == current.size


def test_nan_in_a_range_reduced_tensor_is_named(samples: np.ndarray) -> None:
    """ReduceMin/ReduceMax may pass over a NaN: the in-graph range carries a NaN check of its own."""
    nodes = [helper.make_node("Sqrt", ["x"], ["root"]), helper.make_node("ReduceSum", ["root"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)], ir_version=ops.IR_VERSION)
    positive = np.abs(samples) + 1
    positive[5, 2] = -1.0  # one NaN among finite roots
    with pytest.raises(DataError, match="tensor 'root': .*NaN or infinite"):
        calibrate(model, {"x": positive}, ["root"])
    assert calibrate(model, {"x": np.abs(samples)}, ["root"]).range("root")[1] == float(np.sqrt(np.abs(samples)).max())


def test_integer_and_float16_tensors_are_range_reduced(samples: np.ndarray) -> None:
    nodes = [helper.make_node("Cast", ["x"], ["ints"], to=TensorProto.INT32),
             helper.make_node("Cast", ["x"], ["halves"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["halves"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "types", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("ints", TensorProto.INT32, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)], ir_version=ops.IR_VERSION)
    large = np.abs(samples) * 4000 + 1000  # float16 holds each value; their sum (> 148,000) would overflow it
    result = calibrate(model, {"x": large}, ["ints", "halves"], per_channel={"ints": 1})
    assert not any(tap.probed for tap in result.simulator.range_taps)
    np.testing.assert_array_equal(result.range("ints")[1], large.astype(np.int32).max(axis=0))
    assert result.range("halves") == (float(large.astype(np.float16).min()), float(large.astype(np.float16).max()))
