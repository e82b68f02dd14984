"""Calibration data readers: stream validated model feeds in batches of bounded size.

A *source* is one of

* a path: a ``.npz`` file keyed by graph input names, a ``.npy`` file (one-input models) or a
  directory of such files (see :mod:`hnnx.runtime.data`). Files are memory-mapped where they
  allow it and every used sample is validated before the first batch is produced;
* a mapping of input name → array, a :class:`~hnnx.runtime.data.Dataset`, or one array or
  tensor (one-input models), also validated in full up front;
* any other iterable, e.g. a generator or a ``torch.utils.data.DataLoader``, whose items are
  dicts keyed by input name, arrays/tensors (one-input models) or ``(inputs, labels...)``
  tuples/lists. Items are validated one by one as they are drawn.

Arrays are in the model's layout (``[N, ...]``, or ``[T, N, ...]`` for time-major inputs),
so batches are cut on each input's sample axis (:attr:`TensorSpec.batch_axis`). Labels and
extra arrays are ignored: calibration only needs the inputs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from hnnx.errors import DataError
from hnnx.runtime.data import Dataset, TensorSpec, input_parts, validate_array

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
    than the cap needs.

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
    if isinstance(source, (str, os.PathLike, Mapping, Dataset)) or _is_array(source):
        stored = _StoredSource.open(source, inputs, limit)
        return BatchStream(stored.batches(batch_size, limit), min(stored.size, limit))
    if isinstance(source, Iterable):
        items = _validated_items(source, inputs)
        return BatchStream(_rebatched(items, inputs, batch_size, limit, _describe(source)), num_samples)
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


# --------------------------------------------------------------------------- stored sources
@dataclass
class _StoredSource:
    """A path or mapping: per input, its files' arrays (possibly memory maps) end to end."""

    label: str
    inputs: Sequence[TensorSpec]
    pieces: dict[str, list[np.ndarray]]
    size: int

    @classmethod
    def open(cls, source: Any, inputs: Sequence[TensorSpec], limit: int) -> "_StoredSource":
        """Read the structure of ``source`` and validate its first ``limit`` samples."""
        if isinstance(source, Dataset):
            source = source.arrays
        elif _is_array(source):
            source = _array_as_mapping(source, inputs, "data")
        elif isinstance(source, Mapping):
            source = {key: _to_numpy(value) for key, value in source.items()}
        label, parts = input_parts(source, inputs, mmap=True)
        pieces = {spec.name: [np.asarray(part[spec.name]) for part in parts] for spec in inputs}
        stored = cls(label, inputs, pieces, 0)
        stored.size = stored._checked_size()
        if stored.size == 0:
            raise DataError(f"{label}: holds no samples")
        stored._validate(min(stored.size, limit))
        return stored

    def _checked_size(self) -> int:
        """Total samples; DataError if files disagree on rank or inputs on the number of samples."""
        sizes = {}
        for spec in self.inputs:
            arrays = self.pieces[spec.name]
            for array in arrays:
                if array.ndim <= spec.batch_axis:
                    validate_array(array, spec, self.label)  # raises the standard rank message
                if _other_dims(array, spec) != _other_dims(arrays[0], spec):
                    raise DataError(f"{self.label}: arrays {spec.name!r} of its files do not join on the sample "
                                    f"axis {spec.batch_axis} (shapes {[list(a.shape) for a in arrays]})")
            sizes[spec.name] = sum(array.shape[spec.batch_axis] for array in arrays)
        if len(set(sizes.values())) > 1:
            raise DataError(f"{self.label}: inputs disagree on the number of samples: {sizes}")
        return next(iter(sizes.values()), 0)

    def _validate(self, samples: int, chunk: int = 1024) -> None:
        """Check the first ``samples`` samples chunk by chunk, so memory stays at one chunk."""
        for start in range(0, samples, chunk):
            self.take(start, min(start + chunk, samples))

    def take(self, start: int, stop: int) -> Feeds:
        """Validated samples ``start:stop`` of every input."""
        feeds = {}
        for spec in self.inputs:
            slices = list(_slices(self.pieces[spec.name], spec.batch_axis, start, stop))
            joined = slices[0] if len(slices) == 1 else np.concatenate(slices, axis=spec.batch_axis)
            try:
                feeds[spec.name] = validate_array(joined, spec, self.label)
            except DataError as exc:
                if (start, stop) == (0, self.size):
                    raise
                # Indices in the message count from the start of this slice: say which one it is.
                raise DataError(f"{exc}, in samples {start}:{stop}") from None
        return feeds

    def batches(self, batch_size: int, limit: int) -> Iterator[Feeds]:
        """Consecutive batches of ``batch_size`` samples, the first ``limit`` samples in all."""
        stop = min(self.size, limit)
        for start in range(0, stop, batch_size):
            yield self.take(start, min(start + batch_size, stop))


def _slices(arrays: Sequence[np.ndarray], axis: int, start: int, stop: int) -> Iterator[np.ndarray]:
    """The parts of ``arrays`` (joined end to end on ``axis``) that cover ``start:stop``."""
    offset = 0
    for array in arrays:
        length = array.shape[axis]
        low, high = max(start - offset, 0), min(stop - offset, length)
        if low < high:
            index = [slice(None)] * array.ndim
            index[axis] = slice(low, high)
            yield array[tuple(index)]
        offset += length
        if offset >= stop:
            return


def _other_dims(array: np.ndarray, spec: TensorSpec) -> tuple[int, ...]:
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
    return type(source).__name__


def _kind(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of {', '.join(_kind(part) for part in item) or 'nothing'}"
    return type(item).__name__
