"""Streaming observers: the statistics of one tensor, in memory independent of the sample count.

Every observer tracks the exact minimum and maximum of the values it has seen and turns its
statistics into a symmetric clip threshold ``T > 0`` (:meth:`Observer.absmax`): the range
``[-T, T]`` a quantizer maps onto the signed integer grid. Per channel (``axis`` given), every
statistic is kept for each index of that axis separately and ``absmax`` returns one threshold
per channel.

The histogram observers (percentile, entropy, MSE) keep one histogram of ``|x|`` per channel with
a fixed number of equal bins over ``[0, E]``. Bins are closed on the right: value ``a > 0`` falls in
bin ``⌈a·bins/E⌉ − 1`` (bin ``j`` holds ``(j·w, (j+1)·w]``, ``w = E/bins``), zero in bin 0.
``E`` is the smallest power of two ``≥ max|x|`` seen so far (0 while only zeros were seen). When a
batch exceeds it, ``E`` grows by a factor ``f = 2^k`` and every ``f`` neighbouring bins merge into one:
``⌊(⌈y⌉ − 1)/f⌋ = ⌈y/f⌉ − 1`` for every ``y > 0``, and scaling by a power of two is exact in floating
point, so each value lands in the bin a single pass over all the data would give it (the top value
``a = E`` too: right-closed bins need no clamp, which would break this). ``E`` depends only on the
maximum, so the histogram does not depend on batch sizes or order, and observers that saw disjoint
parts of the data merge exactly (:meth:`Observer.merge`: the histogram, and every threshold, of all
the data). No sample is ever kept; bins are at most twice as wide as with ``E = max|x|``.

State size: ``O(channels × bins)``; an update allocates temporaries of the size of its batch only.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from hnnx.errors import DataError, HnnxError

DEFAULT_BINS = 2048

Threshold = float | np.ndarray
"""A clip threshold: a float per tensor, an array ``[channels]`` per channel."""


class Observer:
    """Base observer: exact minimum, maximum and count, per tensor or per channel.

    ``axis``: the channel axis for per-channel statistics (negative counts from the end),
    None for one statistic over the whole tensor. ``count``: number of values seen, over
    all channels. The clip threshold of this base statistic is ``max(|min|, |max|)``.
    """

    name: ClassVar[str] = "minmax"
    needs_values: ClassVar[bool] = False
    """Whether the statistic needs the values themselves; if not, their per-channel minimum, maximum
    and number suffice (:meth:`update_range`: an in-graph reduction is all calibration copies out)."""

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.count = 0
        self._min: np.ndarray | None = None  # [channels], float64
        self._max: np.ndarray | None = None  # [channels], float64

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def channels(self) -> int | None:
        """Number of channels (1 per tensor), None before the first non-empty update."""
        return None if self._min is None else len(self._min)

    @property
    def nbytes(self) -> int:
        """Bytes held by the observer's state arrays (constant once the first batch is seen)."""
        return sum(value.nbytes for value in vars(self).values() if isinstance(value, np.ndarray))

    def update(self, array: np.ndarray) -> None:
        """Add the values of ``array`` (any shape holding the channel axis; any number type)."""
        rows = self._rows(array)
        if rows.shape[1] == 0:
            return
        self._add_range(rows.min(axis=1), rows.max(axis=1))
        self._observe(rows)
        self.count += rows.size

    def update_range(self, low: np.ndarray | float, high: np.ndarray | float, count: int) -> None:
        """Add ``count`` values known only by their minimum ``low`` and maximum ``high`` (floats per
        tensor, arrays ``[channels]`` per channel; NaN if a value was NaN or infinite). Only for an
        observer that does not need the values (:attr:`needs_values` False): the same state as
        :meth:`update` on the values themselves."""
        if self.needs_values:
            raise HnnxError(f"{self._what()} needs the values themselves, not only their range")
        if count == 0:
            return
        self._add_range(np.atleast_1d(low).ravel(), np.atleast_1d(high).ravel())
        self.count += int(count)

    def merge(self, other: "Observer") -> None:
        """Add what ``other`` observed: an observer of the same kind with the same options and channel
        axis that saw another part of the data. Afterwards this observer holds exactly what one
        observer that saw both parts would hold, so its range and threshold equal that observer's (the
        data-parallel calibration merges its workers' observers this way). ``other`` is unchanged."""
        if type(other) is not type(self) or other.settings() != self.settings():
            raise HnnxError(f"{self._what()} {self.settings()}: cannot merge a {other._what()} {other.settings()}")
        if other._min is None:
            return
        if self._min is None:
            self._min, self._max = other._min.copy(), other._max.copy()
        else:
            if len(other._min) != len(self._min):
                raise DataError(f"{self._what()}: cannot merge {len(other._min)} channels into {len(self._min)}")
            self._min, self._max = np.minimum(self._min, other._min), np.maximum(self._max, other._max)
        self._merge_statistic(other)
        self.count += other.count

    def settings(self) -> dict[str, Any]:
        """The constructor arguments this observer was built with (``axis`` and its options)."""
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    def range(self) -> tuple[Threshold, Threshold]:
        """``(min, max)`` of the values seen: floats per tensor, arrays ``[channels]`` per channel."""
        self._require_data()
        return self._shaped(self._min), self._shaped(self._max)

    def absmax(self) -> Threshold:
        """The clip threshold ``T > 0``, never above the largest ``|x|`` seen.

        A tensor (channel) that held only zeros gets ``T = 1``: any threshold represents zero
        exactly, and 1 keeps the quantization scale a normal number.
        """
        self._require_data()
        largest = np.maximum(-self._min, self._max)
        threshold = np.minimum(self._thresholds(), largest)
        threshold = np.where(threshold > 0, threshold, np.where(largest > 0, largest, 1.0))
        return self._shaped(threshold)

    def _add_range(self, low: np.ndarray, high: np.ndarray) -> None:
        """Widen the running range by a batch's ``[channels]`` minimum and maximum."""
        low, high = low.astype(np.float64), high.astype(np.float64)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise DataError(f"{self._what()}: the data holds NaN or infinite values")
        if self._min is None:
            self._min, self._max = low, high
        elif len(low) != len(self._min):
            raise DataError(f"{self._what()}: a batch has {len(low)} channels, earlier batches had {len(self._min)}")
        else:
            self._min, self._max = np.minimum(self._min, low), np.maximum(self._max, high)

    # -- hooks for subclasses
    def _observe(self, rows: np.ndarray) -> None:
        """Add ``rows`` ``[channels, values]`` to the statistic (min/max/count are done)."""

    def _merge_statistic(self, other: "Observer") -> None:
        """Add ``other``'s statistic (same class and settings; min/max are merged, count is not yet)."""

    def _thresholds(self) -> np.ndarray:
        """The clip threshold of every channel, ``[channels]``."""
        return np.maximum(-self._min, self._max)

    # -- helpers
    def _rows(self, array: np.ndarray) -> np.ndarray:
        """``array`` as ``[channels, values]`` (channels = 1 per tensor)."""
        values = np.asarray(array)
        if values.dtype.kind not in "biuf":
            raise DataError(f"{self._what()}: cannot observe values of dtype {values.dtype}")
        if values.dtype.kind != "f":
            values = values.astype(np.float64)  # |−128| does not fit int8; bool has no abs
        if self.axis is None:
            return values.reshape(1, -1)
        if not -values.ndim <= self.axis < values.ndim:
            raise DataError(f"{self._what()}: channel axis {self.axis} is out of range for shape {list(values.shape)}")
        rows = np.moveaxis(values, self.axis, 0).reshape(values.shape[self.axis], -1)
        if self.channels is not None and rows.shape[0] != self.channels:
            raise DataError(f"{self._what()}: shape {list(values.shape)} has {rows.shape[0]} channels on axis "
                            f"{self.axis}, earlier batches had {self.channels}")
        return rows

    def _shaped(self, values: np.ndarray) -> Threshold:
        return values.copy() if self.per_channel else float(values[0])

    def _require_data(self) -> None:
        if self._min is None:
            raise HnnxError(f"{self._what()}: no data observed yet")

    def _what(self) -> str:
        where = f", channel axis {self.axis}" if self.per_channel else ""
        return f"{self.name} observer{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(axis={self.axis}, count={self.count})"


class MinMaxObserver(Observer):
    """Exact running minimum and maximum; threshold ``T = max(|min|, |max|)``.

    State: two floats per channel.
    """

    name = "minmax"


class HistogramObserver(Observer):
    """Base of the histogram observers: a histogram of ``|x|`` per channel, ``bins`` equal bins
    over ``[0, E]`` (see the module docstring for how ``E`` grows)."""

    needs_values = True

    def __init__(self, axis: int | None = None, bins: int = DEFAULT_BINS) -> None:
        super().__init__(axis)
        if not isinstance(bins, (int, np.integer)) or bins < 1:
            raise HnnxError(f"{self.name} observer: bins must be a positive integer, got {bins!r}")
        self.bins = int(bins)
        self.histogram: np.ndarray | None = None  # [channels, bins] counts (float64: exact to 2**53)
        self.edge: np.ndarray | None = None  # [channels] upper end E of the histogram range

    @property
    def bin_width(self) -> np.ndarray:
        """Width ``E / bins`` of each channel's bins, ``[channels]``."""
        self._require_data()
        return self.edge / self.bins

    def _observe(self, rows: np.ndarray) -> None:
        magnitude = np.abs(rows)
        batch_max = magnitude.max(axis=1).astype(np.float64)
        if self.histogram is None:
            self.histogram = np.zeros((len(rows), self.bins))
            self.edge = _power_of_two_at_least(batch_max)
        else:
            self._grow(batch_max)
        self._add(magnitude)

    def _grow(self, batch_max: np.ndarray) -> None:
        """Widen the range of channels whose new maximum exceeds it, merging bins exactly."""
        outgrown = batch_max > self.edge
        if not outgrown.any():
            return
        new_edge = np.where(outgrown, _power_of_two_at_least(batch_max), self.edge)
        self.histogram = _regridded(self.histogram, self.edge, new_edge)
        self.edge = new_edge

    def _merge_statistic(self, other: Observer) -> None:
        assert isinstance(other, HistogramObserver)
        if other.histogram is None:
            return
        if self.histogram is None:
            self.histogram, self.edge = other.histogram.copy(), other.edge.copy()
            return
        edge = np.maximum(self.edge, other.edge)
        self.histogram = _regridded(self.histogram, self.edge, edge) + _regridded(other.histogram, other.edge, edge)
        self.edge = edge

    def _add(self, magnitude: np.ndarray) -> None:
        scale = np.divide(self.bins, self.edge, out=np.zeros_like(self.edge), where=self.edge > 0)
        position = magnitude * scale[:, None]  # float64, exact: scale is bins · 2^-k
        index = np.ceil(position, out=position).astype(np.int64)
        index -= 1
        # Zeros give −1 (bin 0); a ≤ E gives at most bins − 1 already, so the clip changes nothing else.
        np.clip(index, 0, self.bins - 1, out=index)
        self.histogram += _row_bincount(index, None, self.bins)


class PercentileObserver(HistogramObserver):
    """Threshold at the ``percentile``-th percentile of ``|x|`` (e.g. 99.99 clips the largest 0.01 %).

    From the histogram: the first bin ``j`` where the cumulative count reaches
    ``q = percentile/100 · count``, then linear interpolation inside it (values taken as
    uniform within a bin): ``T = (j + (q − C_{j−1}) / h_j) · w``, ``C`` the cumulative counts,
    ``h`` the counts, ``w`` the bin width. Within one bin width of the exact percentile.
    """

    name = "percentile"

    def __init__(self, axis: int | None = None, percentile: float = 99.99, bins: int = DEFAULT_BINS) -> None:
        super().__init__(axis, bins)
        if not 0 < percentile <= 100:
            raise HnnxError(f"percentile observer: percentile must be in (0, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _thresholds(self) -> np.ndarray:
        cumulative = np.cumsum(self.histogram, axis=1)
        wanted = self.percentile / 100 * cumulative[:, -1]
        bin_index = np.argmax(cumulative >= wanted[:, None], axis=1)
        rows = np.arange(len(bin_index))
        counts = self.histogram[rows, bin_index]
        before = cumulative[rows, bin_index] - counts
        inside = np.divide(wanted - before, counts, out=np.ones_like(counts), where=counts > 0)
        return (bin_index + np.clip(inside, 0, 1)) * self.bin_width


class EntropyObserver(HistogramObserver):
    """Threshold minimising the KL divergence between the clipped and the quantized histogram
    (the entropy calibration of TensorRT, for a symmetric 8-bit target: 128 levels of ``|x|``).

    For every candidate ``i`` = ``levels … bins`` (number of leading bins kept):

    1. reference ``P``: the first ``i`` bin counts, the counts of all later bins (the values
       the clip saturates) added to bin ``i − 1``;
    2. candidate ``Q``: the first ``i`` bins (without the saturated counts) split into
       ``levels`` contiguous groups of ``⌊i/levels⌋`` or ``⌈i/levels⌉`` bins (group ``k`` starts at
       ``⌈k·i/levels⌉``); each group's total is spread evenly over its non-empty bins, empty
       bins stay empty;
    3. ``D(i) = Σ_j p_j · ln(p_j / q_j)`` with ``p``, ``q`` the normalised ``P``, ``Q``; terms
       with ``p_j = 0`` are 0, a bin with ``p_j > 0 = q_j`` makes ``D(i)`` infinite.

    ``T = i* · w`` (the upper edge of the last kept bin) for the smallest ``i*`` minimising
    ``D``. Needs ``bins ≥ levels``. Cost: ``O(bins · levels)`` per channel, once per :meth:`absmax`.
    """

    name = "entropy"

    def __init__(self, axis: int | None = None, bins: int = DEFAULT_BINS, levels: int = 128) -> None:
        super().__init__(axis, bins)
        if not isinstance(levels, (int, np.integer)) or not 2 <= levels <= self.bins:
            raise HnnxError(f"entropy observer: levels must be an integer in [2, bins = {self.bins}], got {levels!r}")
        self.levels = int(levels)

    def _thresholds(self) -> np.ndarray:
        return _least_divergent_bins(self.histogram, self.levels) * self.bin_width


class MSEObserver(HistogramObserver):
    """Threshold minimising the expected squared error of symmetric uniform quantization.

    The quantizer with threshold ``T`` and ``n = 2^(bits−1) − 1`` positive levels (127 for
    int8) maps ``x`` to ``s · clip(round(x/s), −n, n)`` with step ``s = T/n``. Its expected
    squared error is computed from the histogram of ``|x|``, values taken as uniform within
    each bin, exactly for that model:

    * bins below ``T``: rounding error ``(1/w)∫ (a − s·round(a/s))² da`` over the bin, in closed
      form through ``∫_{−1/2}^{u} e(t)² dt = m/12 + ((u − m)³ + 1/8)/3`` with ``m = ⌊u + 1/2⌋``
      and ``e(t) = t − round(t)``;
    * bins above ``T``: clipping error ``E[(a − T)²] = (c − T)² + w²/12`` (``c`` the bin centre).

    Candidates are every bin edge ``T = i·w``, ``i = 1 … bins``; the first minimiser wins.
    Cost: ``O(bins²)`` once per :meth:`absmax`, shared by all channels.
    """

    name = "mse"

    def __init__(self, axis: int | None = None, bins: int = DEFAULT_BINS, bits: int = 8) -> None:
        super().__init__(axis, bins)
        if not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 32:
            raise HnnxError(f"mse observer: bits must be an integer in [2, 32], got {bits!r}")
        self.bits = int(bits)

    def _thresholds(self) -> np.ndarray:
        levels = 2 ** (self.bits - 1) - 1
        errors = _quantization_errors(self.histogram, levels)
        return (np.argmin(errors, axis=1) + 1) * self.bin_width


OBSERVERS: dict[str, type[Observer]] = {
    cls.name: cls for cls in (MinMaxObserver, PercentileObserver, EntropyObserver, MSEObserver)
}
"""Every observer class by name."""


def make_observer(name: str, per_channel_axis: int | None = None, **options: Any) -> Observer:
    """A new observer of kind ``name`` (see :data:`OBSERVERS`), per channel on ``per_channel_axis``.

    ``options`` go to the observer's constructor (e.g. ``percentile=99.9``, ``bins=4096``).
    HnnxError on an unknown name or option.
    """
    try:
        cls = OBSERVERS[name]
    except (KeyError, TypeError):
        raise HnnxError(f"unknown observer {name!r} (known: {', '.join(OBSERVERS)})") from None
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "axis")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no options"
        raise HnnxError(f"observer {name!r} has no option {unknown[0]!r} (it takes: {takes})")
    return cls(per_channel_axis, **options)


# --------------------------------------------------------------------------- numerics
def _power_of_two_at_least(values: np.ndarray) -> np.ndarray:
    """The smallest power of two ``≥ values`` (exactly, via the binary exponent); 0 for 0."""
    mantissa, exponent = np.frexp(values)  # values = mantissa · 2^exponent, mantissa in [0.5, 1)
    powers = np.ldexp(1.0, exponent - (mantissa == 0.5))
    return np.where(values > 0, powers, 0.0)


def _regridded(histogram: np.ndarray, edge: np.ndarray, new_edge: np.ndarray) -> np.ndarray:
    """``histogram`` ``[channels, bins]`` over ``[0, edge]`` re-binned over ``[0, new_edge]`` (per channel
    ``new_edge = 2^k · edge``, or any power of two where ``edge`` is 0): every ``2^k`` neighbouring bins
    merge into one, exactly the bins the values would get over the wider range."""
    bins = histogram.shape[1]
    # A channel that held only zeros (E = 0) keeps them in bin 0 of its first real range.
    ratio = np.divide(new_edge, edge, out=np.full_like(new_edge, bins), where=edge > 0)
    factor = np.minimum(ratio, bins).astype(np.int64)  # a power of two; ≥ bins merges all into bin 0
    target = np.arange(bins)[None, :] // factor[:, None]
    return _row_bincount(target, histogram, bins)


def _row_bincount(index: np.ndarray, weights: np.ndarray | None, bins: int) -> np.ndarray:
    """Per row ``r``, the (weighted) count of each value of ``index[r]``: ``[rows, bins]``."""
    rows = index.shape[0]
    flat = (index + (np.arange(rows) * bins)[:, None]).ravel()
    counts = np.bincount(flat, weights=None if weights is None else weights.ravel(), minlength=rows * bins)
    return counts.reshape(rows, bins).astype(np.float64, copy=False)


def _suffix_sums(values: np.ndarray) -> np.ndarray:
    """``out[:, i] = values[:, i:].sum(axis=1)`` for ``i = 0 … n`` (``out[:, n] = 0``)."""
    out = np.zeros((values.shape[0], values.shape[1] + 1))
    out[:, :-1] = np.cumsum(values[:, ::-1], axis=1)[:, ::-1]
    return out


def _least_divergent_bins(histogram: np.ndarray, levels: int) -> np.ndarray:
    """Per row, the number of leading bins ``i*`` whose clip minimises ``D(i)`` (EntropyObserver).

    ``D(i)`` in closed form from prefix sums, so each candidate costs ``O(levels)``, not ``O(i)``.
    With ``M`` the total count, ``S`` the saturated count, ``P_last = h_{i−1} + S``, ``G_k``/``n_k``
    the total/non-empty bins of group ``k`` and ``Q_last = G_last/n_last`` (0 if ``h_{i−1} = 0``):
    ``D = (Σ_{j<i−1} h_j ln h_j + P_last ln P_last − Σ_k G_k ln(G_k/n_k) − S ln Q_last)/M
    − ln M + ln(M − S)``, since ``Q`` is constant on a group's non-empty bins.
    """
    rows, bins = histogram.shape
    kept = np.arange(levels, bins + 1)  # candidates i
    bounds = -(-np.arange(levels + 1)[None, :] * kept[:, None] // levels)  # [candidates, levels + 1]
    choice = np.empty(rows, np.int64)
    for row, counts in enumerate(histogram):  # one row at a time bounds the [candidates, levels] temporaries
        divergence = _clip_divergences(counts, kept, bounds)
        choice[row] = kept[np.argmin(divergence)]  # first minimiser; D(bins) is always finite
    return choice


def _clip_divergences(counts: np.ndarray, kept: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``D(i)`` for every candidate ``i`` in ``kept`` of one histogram ``counts`` ``[bins]``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        h_log_h = np.where(counts > 0, counts * np.log(counts), 0.0)
        prefix_h = np.concatenate([[0.0], np.cumsum(counts)])
        prefix_occupied = np.concatenate([[0], np.cumsum(counts > 0)])
        prefix_h_log_h = np.concatenate([[0.0], np.cumsum(h_log_h)])
        total = prefix_h[-1]
        saturated = total - prefix_h[kept]
        last = counts[kept - 1]
        reference_last = last + saturated
        group_total = prefix_h[bounds[:, 1:]] - prefix_h[bounds[:, :-1]]  # [candidates, levels]
        group_occupied = prefix_occupied[bounds[:, 1:]] - prefix_occupied[bounds[:, :-1]]
        group_term = np.where(group_total > 0, group_total * np.log(group_total / group_occupied), 0.0).sum(axis=1)
        last_group = group_total[:, -1] / np.maximum(group_occupied[:, -1], 1)
        saturated_term = np.where(saturated > 0, saturated * np.log(np.where(last > 0, last_group, 0.0)), 0.0)
        reference_term = np.where(reference_last > 0, reference_last * np.log(reference_last), 0.0)
        divergence = ((prefix_h_log_h[kept - 1] + reference_term - group_term - saturated_term) / total
                      - np.log(total) + np.log(total - saturated))
    return np.where(np.isnan(divergence), np.inf, divergence)


def _rounding_integral(u: np.ndarray) -> np.ndarray:
    """``∫_{−1/2}^{u} (t − round(t))² dt`` for ``u ≥ −1/2``."""
    m = np.floor(u + 0.5)
    r = u - m
    return m / 12 + (r * r * r + 0.125) / 3


def _quantization_errors(histogram: np.ndarray, levels: int, chunk: int = 256) -> np.ndarray:
    """Total squared error (in bin widths²) of every candidate ``T = i·w``, ``[rows, bins]`` (MSEObserver).

    Units of the bin width make the rounding-error matrix the same for every channel.
    """
    rows, bins = histogram.shape
    edges = np.arange(bins + 1, dtype=np.float64)
    centers = edges[:-1] + 0.5
    candidates = edges[1:]
    # Clipping error of the bins at and above each candidate, by suffix sums of moments:
    # Σ h_j ((c_j − T)² + 1/12) = S2 − 2·T·S1 + T²·S0.
    s0 = _suffix_sums(histogram)[:, 1:]
    s1 = _suffix_sums(histogram * centers)[:, 1:]
    s2 = _suffix_sums(histogram * (centers ** 2 + 1 / 12))[:, 1:]
    clipped = s2 - 2 * candidates * s1 + candidates ** 2 * s0
    rounding = np.empty((rows, bins))
    for start in range(0, bins, chunk):
        thresholds = candidates[start:start + chunk]
        below = int(thresholds[-1])  # bins 0 … below−1 lie under some candidate of this chunk
        step = thresholds / levels
        integral = _rounding_integral(edges[None, :below + 1] / step[:, None])  # [chunk, below + 1]
        per_bin = np.diff(integral, axis=1) * step[:, None] ** 3  # mean error of a value in bin j
        per_bin[edges[None, :below] >= thresholds[:, None]] = 0.0  # those bins are clipped, counted above
        rounding[:, start:start + chunk] = histogram[:, :below] @ per_bin.T
    return clipped + rounding
