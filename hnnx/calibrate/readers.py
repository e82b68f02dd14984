"""Calibration data readers: stream validated model feeds in batches of bounded size.

A *source* is one of

* a path: a ``.npz`` file keyed by graph input names, a ``.npy`` file (one-input models) or a
  directory of such files (see :mod:`hnnx.runtime.data`). Files are opened in name order only
  as far as the samples used reach, read slice by slice (:class:`~hnnx.runtime.data.StoredArray`:
  a batch in memory, never a whole file), and every used sample is validated, batch by batch,
  before the first batch is produced;
* a mapping of input name → array, a :class:`~hnnx.runtime.data.Dataset`, or one array or
  tensor (one-input models), also validated in full up front;
* any other iterable, e.g. a generator or a ``torch.utils.data.DataLoader``, whose items are
  dicts keyed by input name, arrays/tensors (one-input models) or ``(inputs, labels...)``
  tuples/lists. Items are validated one by one as they are drawn;
* an onnxruntime ``CalibrationDataReader`` (anything with ``get_next()`` giving a dict keyed by
  input name, None at the end). A reader is read once per pass; since quantization reads its
  data twice (calibration, then the float-vs-quantized comparison), hnnx calls the reader's
  ``rewind()`` when it has one, and otherwise replays the reader's first :data:`REPLAY_SAMPLES`
  samples, which it keeps from the first pass (a later pass needing more is a DataError).

Arrays are in the model's layout (``[N, ...]``, or ``[T, N, ...]`` for time-major inputs),
so batches are cut on each input's sample axis (:attr:`TensorSpec.batch_axis`). Labels and
extra arrays are ignored: calibration only needs the inputs.
"""

from __future__ import annotations

import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from hnnx.errors import DataError
from hnnx.runtime.data import (Dataset, StoredArray, TensorSpec, check_shape, data_files, keyed_by_input,
                               open_stored, validate_array)

Feeds = dict[str, np.ndarray]
"""One batch: graph input name → array in the input's dtype."""


def batches(
    source: Any,
    inputs: Sequence[TensorSpec],
    batch_size: int,
    num_samples: int | None = None,
) -> "BatchStream":
    """Stream ``source`` as feeds of at most ``batch_size`` samples each, ``num_samples`` in total.

    ``inputs``: the model's graph inputs (e.g. ``Simulator(model).inputs``); ``num_samples``:
    stop after this many samples (None: use the whole source). Iterable items of any size are
    re-cut to ``batch_size`` samples (the last batch may be smaller); no more items are drawn
    than the cap needs. A model whose inputs fix the size of the sample axis (graphs exported
    with a batch of 1) is fed batches of exactly that size, whatever ``batch_size`` says.

    Path and mapping sources are checked completely here, before this function returns;
    iterable items are checked as they are drawn. Either way a bad array (missing input,
    wrong rank or fixed dim, non-number dtype, NaN/inf) raises DataError naming the array and
    the file or item before a batch containing it is produced; a source without samples raises
    DataError when the stream ends empty.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be ≥ 1, got {batch_size}")
    if num_samples is not None and num_samples < 1:
        raise DataError(f"number of calibration samples must be ≥ 1, got {num_samples}")
    limit = num_samples if num_samples is not None else sys.maxsize
    fixed = fixed_batch(inputs)
    if fixed is not None:  # the model takes exactly this many samples per run
        batch_size = fixed
    if isinstance(source, (str, os.PathLike, Mapping, Dataset)) or _is_array(source):
        stored = _StoredSource.open(source, inputs, limit, batch_size)
        total = min(stored.size, limit)
        if fixed is not None and total % fixed:
            raise DataError(_fixed_batch_message(inputs, fixed, total))
        return BatchStream(stored.batches(batch_size, limit), total)
    if _is_reader(source):
        source = _ReaderItems(source, inputs, num_samples)
    if isinstance(source, Iterable):
        items = _validated_items(source, inputs)
        feeds = _rebatched(items, inputs, batch_size, limit, _describe(source))
        return BatchStream(feeds if fixed is None else _whole_batches(feeds, inputs, fixed), num_samples)
    raise DataError(f"calibration data must be a .npz/.npy path, a dict of arrays or an iterable of batches, "
                    f"not {type(source).__name__}")


class BatchStream(Iterator[Feeds]):
    """An iterator of feeds. ``total``: the number of samples it yields for path and mapping
    sources; for iterables the ``num_samples`` cap (an upper bound) or None."""

    def __init__(self, feeds: Iterator[Feeds], total: int | None) -> None:
        self._feeds = feeds
        self.total = total

    def __next__(self) -> Feeds:
        return next(self._feeds)


def sample_count(feeds: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> int:
    """Number of samples in one batch (the size of the first input's sample axis)."""
    spec = inputs[0]
    return int(feeds[spec.name].shape[spec.batch_axis])


def fixed_batch(inputs: Sequence[TensorSpec]) -> int | None:
    """The number of samples per run that the inputs fix (the size their sample axis declares),
    or None when it is free (symbolic or unknown). DataError if two inputs fix different sizes."""
    sizes = {spec.name: spec.dims[spec.batch_axis] for spec in inputs
             if spec.dims is not None and spec.batch_axis < len(spec.dims)
             and isinstance(spec.dims[spec.batch_axis], int) and spec.dims[spec.batch_axis] > 0}
    if len(set(sizes.values())) > 1:
        raise DataError(f"the model's inputs fix different batch sizes: {sizes}")
    return next(iter(sizes.values()), None)


def _fixed_batch_message(inputs: Sequence[TensorSpec], fixed: int, total: int) -> str:
    name = next(spec.name for spec in inputs if spec.dims and spec.dims[spec.batch_axis] == fixed)
    return (f"input {name!r} takes exactly {fixed} samples per run, but {total} samples do not fill whole "
            f"batches; use a multiple of {fixed} samples (num_samples)")


def _whole_batches(feeds: Iterator[Feeds], inputs: Sequence[TensorSpec], fixed: int) -> Iterator[Feeds]:
    """``feeds``, refusing a last batch smaller than the model's fixed batch."""
    total = 0
    for batch in feeds:
        size = sample_count(batch, inputs)
        total += size
        if size != fixed:
            raise DataError(_fixed_batch_message(inputs, fixed, total))
        yield batch


# --------------------------------------------------------------------------- stored sources
def is_indexed(source: Any) -> bool:
    """Whether ``source`` is a path, a mapping of arrays, a Dataset or one array: a source whose
    samples can be read from any index on (:func:`sample_total`, :func:`range_batches`), unlike an
    iterable or a reader, which give them in order."""
    return isinstance(source, (str, os.PathLike, Mapping, Dataset)) or _is_array(source)


def in_memory_arrays(source: Any, inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray] | None:
    """A mapping, Dataset or bare array (one-input models) source as numpy arrays by key (input names,
    and whatever else it holds, e.g. ``labels``); None for a path."""
    if isinstance(source, Dataset):
        source = source.arrays
    elif _is_array(source):
        source = _array_as_mapping(source, inputs, "data")
    if not isinstance(source, Mapping):
        return None
    return {key: np.asarray(_to_numpy(value)) for key, value in source.items()}


def sample_total(source: Any, inputs: Sequence[TensorSpec], limit: int | None = None) -> int:
    """The number of samples of an indexed source (:func:`is_indexed`), at most ``limit``: files are
    opened in name order (headers only) as far as ``limit`` reaches, their arrays' shapes checked as
    :func:`batches` checks them. DataError if it holds no samples."""
    stored = _StoredSource.unopened(source, inputs)
    stored._open_until(sys.maxsize if limit is None else limit)
    if stored.size == 0:
        raise DataError(f"{stored.label}: holds no samples")
    return stored.size if limit is None else min(stored.size, limit)


def range_batches(source: Any, inputs: Sequence[TensorSpec], batch_size: int, start: int, stop: int
                  ) -> Iterator[Feeds]:
    """Samples ``start:stop`` of an indexed source (:func:`is_indexed`) as validated feeds of
    ``batch_size`` samples, each read when it is drawn: files are opened as far as ``stop`` reaches
    and only the samples of the range are read (a data-parallel worker reads its shard so).
    Validation messages give sample indices in the whole source."""
    stored = _StoredSource.unopened(source, inputs)
    stored._open_until(stop)
    if stored.size < stop:
        raise DataError(f"{stored.label}: holds {stored.size} samples, samples {start}:{stop} were asked for")
    return stored.batches(batch_size, stop, start)


Piece = np.ndarray | StoredArray
"""One file's array of one input: in memory, or read slice by slice."""


class _StoredSource:
    """A path or mapping: per input, its files' arrays end to end, files opened as far as used."""

    def __init__(self, label: str, inputs: Sequence[TensorSpec], parts: Iterator[tuple[str, dict[str, Piece]]]
                 ) -> None:
        self.label = label
        self.inputs = inputs
        self.pieces: dict[str, list[Piece]] = {spec.name: [] for spec in inputs}
        self.size = 0
        self._parts = parts
        self._first: dict[str, Piece] = {}

    @classmethod
    def open(cls, source: Any, inputs: Sequence[TensorSpec], limit: int, batch_size: int) -> "_StoredSource":
        """Open ``source`` as far as its first ``limit`` samples reach and validate them, one batch
        of ``batch_size`` samples at a time (so that memory holds one batch)."""
        stored = cls.unopened(source, inputs)
        stored._open_until(limit)
        if stored.size == 0:
            raise DataError(f"{stored.label}: holds no samples")
        stored._validate(min(stored.size, limit), batch_size)
        return stored

    @classmethod
    def unopened(cls, source: Any, inputs: Sequence[TensorSpec]) -> "_StoredSource":
        """``source`` with no file opened yet (:meth:`_open_until` opens them)."""
        arrays = in_memory_arrays(source, inputs)
        if arrays is not None:
            return cls("data", inputs, iter([("data", keyed_by_input(arrays, inputs, "data"))]))
        files = data_files(source)
        parts = ((str(path), keyed_by_input(open_stored(path), inputs, str(path))) for path in files)
        return cls(str(source), inputs, parts)

    def _open_until(self, samples: int) -> None:
        """Open files until they hold ``samples`` samples or none is left."""
        while self.size < samples:
            part = next(self._parts, None)
            if part is None:
                return
            self.size += self._checked_part(*part)

    def _checked_part(self, where: str, arrays: dict[str, Piece]) -> int:
        """Add one file's arrays; returns its samples. DataError if they do not join the files before
        on the sample axis or its inputs disagree on the number of samples."""
        sizes = {}
        for spec in self.inputs:
            array = arrays[spec.name]
            check_shape(array.shape, spec, where)
            first = self._first.setdefault(spec.name, array)
            if _other_dims(array, spec) != _other_dims(first, spec):
                raise DataError(f"{self.label}: arrays {spec.name!r} of its files do not join on the sample "
                                f"axis {spec.batch_axis} (shapes {list(first.shape)} and {list(array.shape)})")
            sizes[spec.name] = array.shape[spec.batch_axis]
        if len(set(sizes.values())) > 1:
            raise DataError(f"{where}: inputs disagree on the number of samples: {sizes}")
        for spec in self.inputs:
            self.pieces[spec.name].append(arrays[spec.name])
        return next(iter(sizes.values()), 0)

    def _validate(self, samples: int, chunk: int) -> None:
        """Check the first ``samples`` samples ``chunk`` at a time, so memory stays at one chunk."""
        for start in range(0, samples, chunk):
            self.take(start, min(start + chunk, samples))

    def take(self, start: int, stop: int) -> Feeds:
        """Validated samples ``start:stop`` of every input."""
        feeds = {}
        for spec in self.inputs:
            slices = list(_slices(self.pieces[spec.name], spec.batch_axis, start, stop))
            joined = slices[0] if len(slices) == 1 else np.concatenate(slices, axis=spec.batch_axis)
            feeds[spec.name] = validate_array(joined, spec, self.label, first_sample=start)
        return feeds

    def batches(self, batch_size: int, limit: int, first: int = 0) -> Iterator[Feeds]:
        """Consecutive batches of ``batch_size`` samples from sample ``first`` up to sample ``limit``."""
        stop = min(self.size, limit)
        try:
            for start in range(first, stop, batch_size):
                yield self.take(start, min(start + batch_size, stop))
        finally:
            for pieces in self.pieces.values():
                for piece in pieces:
                    if isinstance(piece, StoredArray):
                        piece.close()


def _slices(arrays: Sequence[Piece], axis: int, start: int, stop: int) -> Iterator[np.ndarray]:
    """The parts of ``arrays`` (joined end to end on ``axis``) that cover ``start:stop``; stored
    arrays are read here, only those parts."""
    offset = 0
    for array in arrays:
        length = array.shape[axis]
        low, high = max(start - offset, 0), min(stop - offset, length)
        if low < high:
            if isinstance(array, StoredArray):
                yield array.read(axis, low, high)
            else:
                index = [slice(None)] * array.ndim
                index[axis] = slice(low, high)
                yield array[tuple(index)]
        offset += length
        if offset >= stop:
            return


def _other_dims(array: Piece, spec: TensorSpec) -> tuple[int, ...]:
    return tuple(d for axis, d in enumerate(array.shape) if axis != spec.batch_axis)


# --------------------------------------------------------------------------- iterable sources
def _validated_items(source: Iterable[Any], inputs: Sequence[TensorSpec]) -> Iterator[Feeds]:
    """Each item of ``source`` as validated feeds keyed by input name."""
    for number, item in enumerate(source):
        where = f"{_describe(source)} item {number}"
        feeds = _item_feeds(item, inputs, where)
        checked = {spec.name: validate_array(feeds[spec.name], spec, where) for spec in inputs}
        sizes = {spec.name: checked[spec.name].shape[spec.batch_axis] for spec in inputs}
        if len(set(sizes.values())) > 1:
            raise DataError(f"{where}: inputs disagree on the number of samples: {sizes}")
        yield checked


def _item_feeds(item: Any, inputs: Sequence[TensorSpec], where: str) -> dict[str, Any]:
    """The input arrays of one item: a dict, an array (one input) or an ``(inputs, labels)`` sequence."""
    if isinstance(item, Mapping):
        missing = [spec.name for spec in inputs if spec.name not in item]
        if missing:
            have = ", ".join(sorted(map(str, item))) or "nothing"
            raise DataError(f"{where}: no array for model input {missing[0]!r} (the item has: {have})")
        return {spec.name: _to_numpy(item[spec.name]) for spec in inputs}
    if _is_array(item):
        return _array_as_mapping(item, inputs, where)
    if isinstance(item, (tuple, list)) and item:
        first = item[0]
        if isinstance(first, (Mapping, tuple, list)) or (len(inputs) == 1 and _is_array(first)):
            return _item_feeds(first, inputs, where)  # (inputs, labels): the labels are not needed
        if len(item) >= len(inputs) and all(_is_array(part) for part in item[: len(inputs)]):
            return {spec.name: _to_numpy(part) for spec, part in zip(inputs, item)}  # (a, b, ..., labels)
    raise DataError(f"{where}: expected a dict keyed by input name, an array or an (inputs, labels) tuple, "
                    f"got {_kind(item)}")


def _rebatched(items: Iterator[Feeds], inputs: Sequence[TensorSpec], batch_size: int, limit: int,
               label: str) -> Iterator[Feeds]:
    """Items of any size re-cut into batches of ``batch_size`` samples, ``limit`` samples in all."""
    pending: list[Feeds] = []
    pending_samples = 0
    produced = 0
    for feeds in items:
        wanted = limit - produced - pending_samples
        size = sample_count(feeds, inputs)
        if size > wanted:
            feeds, size = _cut(feeds, inputs, 0, wanted), wanted
        if size:
            pending.append(feeds)
            pending_samples += size
        while pending_samples >= batch_size:
            batch, pending = _split(pending, inputs, batch_size)
            pending_samples -= batch_size
            produced += batch_size
            yield batch
        if produced + pending_samples >= limit:
            break  # draw no more items than the cap needs
    if pending_samples:
        produced += pending_samples
        yield _join(pending, inputs)
    if produced == 0:
        raise DataError(f"{label}: holds no samples")


def _split(pending: list[Feeds], inputs: Sequence[TensorSpec], size: int) -> tuple[Feeds, list[Feeds]]:
    """The first ``size`` samples of the queued feeds, and what remains queued."""
    taken, rest, need = [], list(pending), size
    while need:
        head = rest.pop(0)
        have = sample_count(head, inputs)
        if have <= need:
            taken.append(head)
            need -= have
        else:
            taken.append(_cut(head, inputs, 0, need))
            rest.insert(0, _cut(head, inputs, need, have))
            need = 0
    return _join(taken, inputs), rest


def _cut(feeds: Feeds, inputs: Sequence[TensorSpec], start: int, stop: int) -> Feeds:
    out = {}
    for spec in inputs:
        index = [slice(None)] * feeds[spec.name].ndim
        index[spec.batch_axis] = slice(start, stop)
        out[spec.name] = feeds[spec.name][tuple(index)]
    return out


def _join(parts: list[Feeds], inputs: Sequence[TensorSpec]) -> Feeds:
    if len(parts) == 1:
        return parts[0]
    joined = {}
    for spec in inputs:
        arrays = [part[spec.name] for part in parts]
        try:
            joined[spec.name] = np.concatenate(arrays, axis=spec.batch_axis)
        except ValueError:
            raise DataError(f"array {spec.name!r}: batches of shapes {[list(a.shape) for a in arrays]} do not join "
                            f"on the sample axis {spec.batch_axis}; give items of one shape") from None
    return joined


# --------------------------------------------------------------------------- onnxruntime readers
REPLAY_SAMPLES = 1024
"""Samples of an onnxruntime ``CalibrationDataReader`` without ``rewind()`` that hnnx keeps from
its first pass to read them again (quantization's comparison reads the first 128)."""


def _is_reader(source: Any) -> bool:
    """An onnxruntime ``CalibrationDataReader``: ``get_next()`` (onnxruntime's own test of one)."""
    return callable(getattr(source, "get_next", None)) and not isinstance(source, (str, os.PathLike, Mapping))


@dataclass
class _ReaderRecord:
    """What hnnx kept of a reader's first pass: its first items, their samples, and whether they
    are all the reader gave (``complete``)."""

    items: list[Any] = field(default_factory=list)
    samples: int = 0
    complete: bool = False


_READ: "weakref.WeakKeyDictionary[Any, _ReaderRecord]" = weakref.WeakKeyDictionary()
"""The readers hnnx has read from, and what it kept of them (dropped with the reader)."""


class _ReaderItems:
    """One pass over a ``CalibrationDataReader``: the first reads ``get_next()`` until None (keeping
    up to :data:`REPLAY_SAMPLES` samples); later passes ``rewind()`` the reader, or replay what was
    kept when that covers the ``num_samples`` the pass needs."""

    def __init__(self, reader: Any, inputs: Sequence[TensorSpec], num_samples: int | None) -> None:
        self.reader = reader
        self.inputs = inputs
        self.num_samples = num_samples
        self.label = f"{type(reader).__name__} (onnxruntime reader)"

    def __iter__(self) -> Iterator[Any]:
        try:
            record = _READ.get(self.reader)
        except TypeError:  # not weakly referable: nothing is kept
            record = None
        if record is not None and not callable(getattr(self.reader, "rewind", None)):
            yield from self._replay(record)
            return
        if record is not None:
            self.reader.rewind()
        record = _ReaderRecord()
        try:
            _READ[self.reader] = record
        except TypeError:
            pass
        while True:
            item = self.reader.get_next()
            if item is None:
                record.complete = record.samples <= REPLAY_SAMPLES
                return
            if record.samples <= REPLAY_SAMPLES:
                record.items.append(item)
                record.samples += self._count(item)
            yield item

    def _replay(self, record: _ReaderRecord) -> Iterator[Any]:
        needed = self.num_samples
        if not (record.complete or (needed is not None and needed <= record.samples)):
            want = "all its samples" if needed is None else f"{needed} samples"
            raise DataError(f"{self.label} was read once already and has no rewind(); hnnx kept its first "
                            f"{record.samples} samples to read again, but this pass needs {want}: give the reader "
                            f"a rewind() method (or use at most {REPLAY_SAMPLES} samples)")
        yield from record.items

    def _count(self, item: Any) -> int:
        spec = self.inputs[0]
        try:
            return int(np.shape(item[spec.name])[spec.batch_axis])
        except (KeyError, IndexError, TypeError):
            return 1  # a malformed item: validation names it when it is drawn


# --------------------------------------------------------------------------- arrays and tensors
def _torch_tensor_type() -> type | None:
    """``torch.Tensor`` if torch is already imported (no object can be a tensor otherwise)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


def _is_array(value: Any) -> bool:
    tensor = _torch_tensor_type()
    return isinstance(value, np.ndarray) or (tensor is not None and isinstance(value, tensor))


def _to_numpy(value: Any) -> Any:
    """A torch tensor as a numpy array (on the CPU, detached); anything else unchanged."""
    tensor = _torch_tensor_type()
    if tensor is not None and isinstance(value, tensor):
        value = value.detach().cpu()
        if not value.dtype.is_floating_point or value.dtype.itemsize >= 4:
            return value.numpy()
        return value.float().numpy()  # float16/bfloat16: numpy has no bfloat16
    return value


def _array_as_mapping(array: Any, inputs: Sequence[TensorSpec], where: str) -> dict[str, Any]:
    if len(inputs) != 1:
        raise DataError(f"{where}: a bare array feeds one input, but the model has {len(inputs)} "
                        f"({', '.join(spec.name for spec in inputs)}); give dicts keyed by input name")
    return {inputs[0].name: _to_numpy(array)}


def _describe(source: Any) -> str:
    return getattr(source, "label", None) or type(source).__name__


def _kind(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of {', '.join(_kind(part) for part in item) or 'nothing'}"
    return type(item).__name__
