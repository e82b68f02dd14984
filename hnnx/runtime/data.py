"""Datasets for simulation: arrays keyed by graph input name, validated against the model.

A dataset is a ``.npz`` file keyed by graph input names (plus optional ``labels``), a
``.npy`` file (one-input models), a directory of such files (concatenated in name
order), or a dict of arrays. Arrays are in the model's layout: ``[N, ...]`` for
ordinary inputs, ``[T, N, ...]`` for time-major inputs (first dim named ``T``).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

import numpy as np
import onnx

from hnnx.errors import DataError

LABELS_KEY = "labels"
TIME_DIM_NAMES = frozenset({"t", "time", "steps", "timesteps", "time_steps"})

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype, dims (None = unknown rank)."""

    name: str
    dtype: np.dtype
    dims: tuple[Dim, ...] | None

    @property
    def batch_axis(self) -> int:
        """1 for time-major tensors (first dim named like ``T``), else 0."""
        return 1 if is_time_major(self.dims) else 0

    def describe(self) -> str:
        dims = "?" if self.dims is None else "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"
        return f"{self.name}: {self.dtype.name} {dims}"


def is_time_major(dims: Sequence[Dim] | None) -> bool:
    return bool(dims) and isinstance(dims[0], str) and dims[0].lower() in TIME_DIM_NAMES


def spec_of(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value_info.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else np.dtype("float32")
    dims = None
    if tensor.HasField("shape"):
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return TensorSpec(value_info.name, dtype, dims)


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The inputs a run of ``model`` is fed: its graph inputs that no initializer gives a value."""
    initialized = {init.name for init in model.graph.initializer}
    return [spec_of(vi) for vi in model.graph.input if vi.name not in initialized]


@dataclass
class Dataset:
    """Validated model inputs (``arrays``) with optional integer ``labels`` ``[N]``."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    size: int
    source: str

    def batch(self, specs: Sequence[TensorSpec], start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples ``start:stop`` of every input, sliced on its batch axis."""
        out = {}
        for spec in specs:
            index = [slice(None)] * self.arrays[spec.name].ndim
            index[spec.batch_axis] = slice(start, stop)
            out[spec.name] = np.ascontiguousarray(self.arrays[spec.name][tuple(index)])
        return out


def read_arrays(path: str | os.PathLike, mmap: bool = False) -> list[dict[str, np.ndarray]]:
    """The arrays stored at ``path``, one dict per file (a directory: its .npz/.npy files
    in name order). A ``.npy`` file gives the key ``""``.

    ``mmap``: return read-only memory maps instead of loaded arrays where the file allows it
    (``.npy`` files and uncompressed ``.npz`` members), so that readers which stream the data
    in batches hold one batch in memory, not the whole file.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
        if not files:
            raise DataError(f"{path}: directory holds no .npz or .npy file")
        parts = [read_arrays(f, mmap)[0] for f in files]
        for f, part in zip(files, parts):
            if set(part) != set(parts[0]):
                raise DataError(f"{f}: holds arrays {sorted(part)}, but {files[0].name} holds {sorted(parts[0])}")
        return parts
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        loaded = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return [{"": loaded}]
        with loaded as archive:
            if mmap:
                return [_mapped_members(path, archive)]
            return [{key: archive[key] for key in archive.files}]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path}: not a readable .npz/.npy file ({type(exc).__name__}: {exc})") from None


_ZIP_LOCAL_HEADER = 30  # bytes before a member's file name; name and extra-field lengths at 26..29


def _mapped_members(path: Path, archive: "np.lib.npyio.NpzFile") -> dict[str, np.ndarray]:
    """Every array of an open ``.npz`` archive: memory-mapped if stored uncompressed, else loaded."""
    arrays = {}
    members = {info.filename: info for info in archive.zip.infolist()}
    with open(path, "rb") as raw:
        for key in archive.files:
            info = members.get(f"{key}.npy")
            mapped = _map_member(path, raw, info) if info is not None else None
            arrays[key] = mapped if mapped is not None else archive[key]
    return arrays


def _map_member(path: Path, raw, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A read-only memory map of one stored ``.npy`` member, or None if it cannot be mapped."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
        return None
    header = _npy_header(raw, _stored_member_start(raw, info))
    if header is None:
        return None
    shape, fortran, dtype = header
    if dtype.hasobject or math.prod(shape) == 0:  # object arrays are refused by the loader; empty: nothing to map
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape, order="F" if fortran else "C")


def _stored_member_start(raw: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Offset in the archive file of a stored (uncompressed) member's first byte."""
    raw.seek(info.header_offset + 26)
    name_length, extra_length = np.frombuffer(raw.read(4), "<u2")
    return info.header_offset + _ZIP_LOCAL_HEADER + int(name_length) + int(extra_length)


def _npy_header(stream: BinaryIO, start: int) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran order, dtype)`` of the ``.npy`` data at ``start`` of ``stream``, which is
    left at the first data byte; None for a format version numpy's readers do not take."""
    stream.seek(start)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    return None


# --------------------------------------------------------------------------- lazily read files
class StoredArray:
    """An array of a data file whose values are read only when a slice is asked for.

    ``shape``/``dtype`` come from the file's ``.npy`` header; :meth:`read` returns a new
    in-memory array of samples ``start:stop`` along one axis. ``.npy`` files and stored
    ``.npz`` members are read at the slice's offset (nothing else enters memory: no memory map
    stays mapped, so the resident set holds the slice only); compressed members are
    decompressed as a stream kept open between consecutive slices (sequential reads decompress
    the member once). Arrays of other layouts (Fortran order, a slice along a later axis) are
    read through a temporary map.
    """

    def __init__(self, path: Path, member: str | None, shape: tuple[int, ...], dtype: np.dtype, fortran: bool,
                 offset: int, compressed: bool = False) -> None:
        self.path, self.member, self.compressed = path, member, compressed
        self.shape, self.dtype, self.fortran = tuple(shape), np.dtype(dtype), fortran
        self.offset = offset  # of the first data byte: in the file, or in the decompressed member
        self._stream: BinaryIO | None = None
        self._archive: zipfile.ZipFile | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        """Elements ``start:stop`` along ``axis`` (all of every other axis), as a new array.
        DataError naming the file if it cannot be read (e.g. cut short since it was opened)."""
        try:
            return self._read(axis, start, stop)
        except (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile) as exc:
            self.close()
            where = f"{self.path}" + (f", array {self.member[:-4]!r}" if self.member else "")
            raise DataError(f"{where}: cannot read samples {start}:{stop} ({type(exc).__name__}: {exc})") from None

    def _read(self, axis: int, start: int, stop: int) -> np.ndarray:
        if axis == 0 and not self.fortran:
            row = math.prod(self.shape[1:]) * self.dtype.itemsize
            shape = (stop - start, *self.shape[1:])
            if not self.compressed:
                return np.fromfile(self.path, self.dtype, count=math.prod(shape),
                                   offset=self.offset + start * row).reshape(shape)
            stream = self._open_stream()
            stream.seek(self.offset + start * row)
            data = stream.read(row * (stop - start))
            if stop >= self.shape[0]:
                self.close()  # read to the end: the next pass starts afresh
            return np.frombuffer(data, self.dtype).reshape(shape).copy()
        whole = self._whole()
        index = [slice(None)] * self.ndim
        index[axis] = slice(start, stop)
        return np.array(whole[tuple(index)])

    def close(self) -> None:
        """Close the decompression stream, if one is open."""
        for handle in (self._stream, self._archive):
            if handle is not None:
                handle.close()
        self._stream = self._archive = None

    def _open_stream(self) -> BinaryIO:
        if self._stream is None:
            self._archive = zipfile.ZipFile(self.path)
            self._stream = self._archive.open(self.member)
        return self._stream

    def _whole(self) -> np.ndarray:
        if self.compressed:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
        order = "F" if self.fortran else "C"
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape, order=order)


def data_files(path: str | os.PathLike) -> list[Path]:
    """The data files at ``path``: the file itself, or a directory's .npz/.npy files in name
    order (listed, not opened). DataError if there is none."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
        if not files:
            raise DataError(f"{path}: directory holds no .npz or .npy file")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    return [path]


def open_stored(path: Path) -> dict[str, StoredArray]:
    """The arrays of one ``.npy``/``.npz`` file as :class:`StoredArray` (headers read, no values);
    a ``.npy`` file gives the key ``""``. DataError naming the file if it is not readable."""
    try:
        with open(path, "rb") as raw:
            if raw.read(6) == b"\x93NUMPY":
                return {"": _stored_array(path, None, raw, 0, False)}
            arrays = {}
            with zipfile.ZipFile(raw) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    key = info.filename[:-4]
                    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                        arrays[key] = _stored_array(path, info.filename, raw, _stored_member_start(raw, info), False)
                    else:
                        with archive.open(info) as member:
                            arrays[key] = _stored_array(path, info.filename, member, 0, True)
            return arrays
    except (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path}: not a readable .npz/.npy file ({type(exc).__name__}: {exc})") from None


def _stored_array(path: Path, member: str | None, stream: BinaryIO, start: int, compressed: bool) -> StoredArray:
    header = _npy_header(stream, start)
    if header is None:
        raise ValueError("unsupported .npy format version")
    shape, fortran, dtype = header
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    return StoredArray(path, member, shape, dtype, fortran, stream.tell(), compressed)


def _joined(parts: list[dict[str, np.ndarray]], key: str, axis: int, source: str) -> np.ndarray:
    """Array ``key`` of every file, concatenated on its sample axis."""
    arrays = [np.asarray(part[key]) for part in parts]
    if len(arrays) == 1:
        return arrays[0]
    try:
        return np.concatenate(arrays, axis=axis)
    except (ValueError, np.exceptions.AxisError) as exc:
        raise DataError(f"{source}: arrays {key!r} of its files do not join on the sample axis {axis} ({exc})"
                        ) from None


def input_parts(
    data: str | os.PathLike | Mapping[str, np.ndarray],
    inputs: Sequence[TensorSpec],
    mmap: bool = False,
) -> tuple[str, list[dict[str, np.ndarray]]]:
    """``(source label, arrays of each file)`` of a dataset path or dict, keyed by input name.

    A bare ``.npy`` array is keyed by the one input's name; DataError if an input has no
    array. Arrays are neither joined nor validated (see :func:`validate_array`); ``mmap``
    as in :func:`read_arrays`.
    """
    source = str(data) if not isinstance(data, Mapping) else "data"
    parts = [dict(data)] if isinstance(data, Mapping) else read_arrays(data, mmap)
    return source, [keyed_by_input(part, inputs, source) for part in parts]


def keyed_by_input(part: dict[str, np.ndarray | StoredArray], inputs: Sequence[TensorSpec], source: str
                   ) -> dict[str, np.ndarray | StoredArray]:
    """The arrays of one file keyed by input name: a bare ``.npy`` array (key ``""``) becomes the
    one input's. DataError naming ``source`` if an input has no array."""
    if "" in part:  # a bare .npy file
        if len(inputs) != 1:
            raise DataError(f"{source}: a .npy file feeds one input, but the model has {len(inputs)} "
                            f"({', '.join(s.name for s in inputs)}); use a .npz keyed by input name")
        part = {inputs[0].name: part[""], **{k: v for k, v in part.items() if k}}
    for spec in inputs:
        if spec.name not in part:
            have = ", ".join(sorted(k for k in part if k != LABELS_KEY)) or "nothing"
            raise DataError(f"{source}: no array for model input {spec.name!r} (the file has: {have})")
    return part


def validate_array(array: np.ndarray, spec: TensorSpec, source: str, first_sample: int = 0) -> np.ndarray:
    """``array`` checked against input ``spec`` and cast to its dtype (contiguous).

    DataError naming ``source`` and the array on a non-number dtype, a rank or fixed dim that
    differs from the model's (the sample axis may have any size), NaN/inf values, or values
    an integer input cannot hold. ``first_sample``: the index of ``array``'s first sample in the
    data it was sliced from (messages give indices in the whole data).
    """
    return _validated(array, spec, source, first_sample)


def check_shape(shape: Sequence[int], spec: TensorSpec, source: str) -> None:
    """DataError naming ``source`` if an array of ``shape`` cannot feed input ``spec``: another rank,
    another size of a fixed dim (the sample axis may have any size), or no sample axis."""
    where = f"{source}: array {spec.name!r}"
    if spec.dims is not None:
        if len(shape) != len(spec.dims):
            raise DataError(f"{where} has shape {list(shape)}, the model expects {spec.describe()}")
        for axis, (have, want) in enumerate(zip(shape, spec.dims)):
            if axis != spec.batch_axis and isinstance(want, int) and want > 0 and have != want:
                raise DataError(f"{where} has shape {list(shape)}, the model expects {spec.describe()}")
    if len(shape) <= spec.batch_axis:
        raise DataError(f"{where} has shape {list(shape)}: no batch axis {spec.batch_axis}")


def load_dataset(
    data: str | os.PathLike | Mapping[str, np.ndarray],
    inputs: Sequence[TensorSpec],
    labels: str | os.PathLike | Sequence[int] | np.ndarray | None = None,
) -> Dataset:
    """Read and validate a dataset for a model with graph inputs ``inputs``.

    ``labels``: an array, a ``.npy`` file, or None (use the ``labels`` array of the
    data if present). Raises DataError naming the file and array at fault.
    """
    source, parts = input_parts(data, inputs)
    keys = parts[0]
    arrays: dict[str, np.ndarray] = {}
    for spec in inputs:
        arrays[spec.name] = _validated(_joined(parts, spec.name, spec.batch_axis, source), spec, source)
    raw = {LABELS_KEY: _joined(parts, LABELS_KEY, 0, source)} if LABELS_KEY in keys else {}
    sizes = {spec.name: arrays[spec.name].shape[spec.batch_axis] for spec in inputs}
    if len(set(sizes.values())) > 1:
        raise DataError(f"{source}: inputs disagree on the number of samples: {sizes}")
    size = next(iter(sizes.values())) if sizes else 0
    if size == 0:
        raise DataError(f"{source}: holds no samples")
    label_array = _labels(labels, raw, source, size)
    return Dataset(arrays, label_array, size, source)


def _validated(array: np.ndarray, spec: TensorSpec, source: str, first_sample: int = 0) -> np.ndarray:
    where = f"{source}: array {spec.name!r}"
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {array.dtype}, not a number type")
    check_shape(array.shape, spec, source)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            index = [int(i) for i in np.argwhere(bad)[0]]
            index[spec.batch_axis] += first_sample  # a slice's index counts from the whole data's start
            first = tuple(index)
            raise DataError(f"{where} holds {int(bad.sum())} NaN/inf values (first at index {first})")
    if spec.dtype.kind in "iu" and array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"{where} holds fractional values, the model input is {spec.dtype.name}")
    if spec.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise DataError(f"{where} holds values outside the {spec.dtype.name} range")
    return np.ascontiguousarray(array, dtype=spec.dtype)


def _labels(labels: str | os.PathLike | Sequence[int] | np.ndarray | None, raw: dict[str, np.ndarray], source: str,
            size: int) -> np.ndarray | None:
    if labels is None:
        if LABELS_KEY not in raw:
            return None
        array, where = raw[LABELS_KEY], f"{source}: array 'labels'"
    elif not isinstance(labels, (str, os.PathLike)):
        array, where = np.asarray(labels), "labels"
    else:
        files = read_arrays(labels)
        if len(files[0]) != 1 and LABELS_KEY not in files[0]:
            raise DataError(f"{labels}: holds several arrays and none is named 'labels'")
        key = LABELS_KEY if LABELS_KEY in files[0] else next(iter(files[0]))
        array = _joined(files, key, 0, str(labels))
        where = f"{labels}"
    array = np.asarray(array)
    if array.ndim != 1 or array.shape[0] != size:
        raise DataError(f"{where}: labels must have shape [{size}] (one per sample), got {list(array.shape)}")
    if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and np.array_equal(array, np.round(array))):
        raise DataError(f"{where}: labels must be integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64)
