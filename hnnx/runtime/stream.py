"""Running a model a few steps at a time: the online :class:`Stream` and chunked simulation.

Both run the stepwise form of the model (:func:`hnnx.passes.stepwise.stepwise_parts`): the prefix
once per sequence (and again when a :class:`Stream` gets new static inputs), the chunk graph once
per call with every stateful node's state carried from call to call, and the suffix on what the
calls produced. The outputs, probes and firing rates equal a run over the whole sequence at
once, bit for bit: the chunk graph computes each step exactly as the whole graph does, and the
suffix sees exactly the whole graph's tensors.

Memory is then flat in the number of steps T: a call holds K steps of every layer, and time-major
inputs are read from their files K steps at a time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from hnnx import ops
from hnnx.errors import DataError, HnnxError, ModelError
from hnnx.passes.stepwise import LAST, SEQUENCE, STATIC, STEPS_INPUT, StepwiseParts, stepwise_parts
from hnnx.runtime.data import LABELS_KEY, TensorSpec, input_parts, spec_of, validate_array

MEMORY_FRACTION = 0.5
"""Default memory budget of a simulation: this fraction of the memory available when it starts."""
OVERHEAD = 2.0
"""A run holds about this many times the bytes of the chunk graph's time-major tensors (buffers for
operator intermediates, the function bodies' copies); the memory estimate multiplies by it."""


@dataclass
class StreamState:
    """Everything a :class:`Stream` carries between calls (see :meth:`Stream.get_state`).

    ``position``: steps run since the last reset; ``states``: the chunk graph's carried tensors by
    input name; ``static``: the static inputs and prefix values in use; ``sequences``: the chunks'
    outputs collected for outputs that need the whole sequence; ``last``: the chunk graph's latest
    per-call values.
    """

    position: int
    states: dict[str, np.ndarray]
    static: dict[str, np.ndarray]
    sequences: dict[str, list[np.ndarray]]
    last: dict[str, np.ndarray]


class Stream:
    """A model run online: ``step(inputs for K steps) → outputs of those K steps``, state carried.

    ``model``: an ONNX model (path or ModelProto; float or integer). ``probes``: intermediate
    tensors returned next to the outputs; ``threads``/``native``: as :class:`hnnx.Simulator`.

    :meth:`step` takes the time-major inputs ``[K, N, ...]`` of the next K steps and the static
    inputs ``[N, ...]`` (needed at the first step after a reset; giving them again replaces them
    and recomputes what depends on them). A model without time-major inputs (an A2S codes its
    static input) runs ``steps`` steps per call (default 1). It returns every output it can give
    now: time-major outputs for these K steps (a windowed S2A's: the windows these steps complete,
    possibly none), running values as they stand (a ``global`` S2A readout and what follows it,
    final states), and outputs that need the whole sequence once it is complete (an A2S model
    after its ``steps`` steps; :meth:`finish` gives them for any length).
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, *, probes: Sequence[str] = (),
                 threads: int | None = None, native: bool | None = None) -> None:
        from hnnx.model import load

        if not isinstance(model, onnx.ModelProto):
            model = load(model)
        self.parts = stepwise_parts(model)
        self.inputs = [spec_of(vi) for vi in model.graph.input
                       if vi.name not in {init.name for init in model.graph.initializer}]
        self._runner = _Runner(self.parts, list(dict.fromkeys(probes)), threads, native, firing_rates=False)
        self.native = self._runner.native
        self.reset()

    @property
    def position(self) -> int:
        """Steps run since the last reset."""
        return self._runner.state.position

    @property
    def steps(self) -> int | None:
        """The sequence length the model fixes (A2S ``steps``, a fixed time dim), or None."""
        return self.parts.steps

    def reset(self) -> None:
        """Start a new sequence (states at their initial values, static inputs forgotten)."""
        self._runner.reset()

    def step(self, inputs: Mapping[str, np.ndarray] | None = None, steps: int | None = None
             ) -> dict[str, np.ndarray]:
        """Run the next steps (see the class docstring); returns outputs and probes by name."""
        inputs = dict(inputs or {})
        unknown = sorted(set(inputs) - {spec.name for spec in self.inputs})
        if unknown:
            raise DataError(f"the model has no input {unknown[0]!r} (inputs: "
                            f"{', '.join(spec.name for spec in self.inputs)})")
        specs = {spec.name: spec for spec in self.inputs}
        time_feeds = {}
        for name in self.parts.time_inputs:
            if name not in inputs:
                raise DataError(f"step: no array for time-major input {name!r} ([K, N, ...])")
            time_feeds[name] = validate_array(inputs.pop(name), _any_length(specs[name]), "step")
        static = {name: validate_array(value, specs[name], "step") for name, value in inputs.items()}
        if time_feeds:
            lengths = {value.shape[0] for value in time_feeds.values()}
            if len(lengths) > 1 or (steps is not None and steps not in lengths):
                raise DataError(f"step: the time-major inputs disagree on the number of steps "
                                f"({', '.join(f'{k}: {v.shape[0]}' for k, v in time_feeds.items())}"
                                f"{'' if steps is None else f', steps={steps}'})")
            steps = lengths.pop()
        elif steps is None:
            steps = 1
        if static:
            self._runner.set_static(static)
        tensors, _ = self._runner.advance(time_feeds, steps)
        return tensors

    def finish(self) -> dict[str, np.ndarray]:
        """The outputs that need the whole sequence, from the steps run since the last reset."""
        tensors, _ = self._runner.finish()
        return tensors

    def get_state(self) -> StreamState:
        """A copy of what the stream carries (restore it with :meth:`set_state`)."""
        return _copied(self._runner.state)

    def set_state(self, state: StreamState) -> None:
        """Continue from a state taken with :meth:`get_state` (of a stream of the same model)."""
        expected = set(self._runner.state.states)
        if set(state.states) != expected:
            raise HnnxError(f"set_state: the state holds {sorted(state.states)}, this model carries {sorted(expected)}")
        self._runner.state = _copied(state)


def _copied(state: StreamState) -> StreamState:
    """A copy that later calls do not change (the arrays of states and last values copied)."""
    return StreamState(state.position, {k: v.copy() for k, v in state.states.items()}, dict(state.static),
                       {k: list(v) for k, v in state.sequences.items()}, {k: v.copy() for k, v in state.last.items()})


class _Runner:
    """The sessions of a model's stepwise parts and what a sequence carries between calls."""

    def __init__(self, parts: StepwiseParts, probes: list[str], threads: int | None, native: bool | None,
                 firing_rates: bool) -> None:
        from hnnx.runtime.session import Simulator

        self.parts = parts
        where = _place_probes(parts, probes)
        self.probes = probes

        def session(model: onnx.ModelProto | None, part: str) -> Simulator | None:
            if model is None:
                return None
            # Calls of a few steps each: onnxruntime's memory pattern would plan one more block per
            # call length and raise the peak by a third (bench/long.py), at no gain in speed.
            return Simulator(model, probes=where.get(part, []), firing_rates=firing_rates, threads=threads,
                             native=native, memory_pattern=False)

        self.prefix = session(parts.prefix, "prefix")
        self.chunk = session(parts.chunk, "chunk")
        self.suffix = session(parts.suffix, "suffix")
        self.native = any(s is not None and s.native for s in (self.prefix, self.chunk, self.suffix))
        chunk_inputs = {spec.name for spec in self.chunk.inputs} if self.chunk is not None else set()
        self.chunk_static = [n for n in [*parts.static_inputs, *parts.prefix_outputs] if n in chunk_inputs]
        outputs = set(parts.outputs) | set(probes)
        suffix_reads = set(parts.suffix_inputs)
        # What each call keeps: sequences (concatenated) and last values, by tensor name.
        self.keep_sequence = {n for n in (outputs | suffix_reads) if parts.kinds.get(n) == SEQUENCE}
        self.keep_last = {n for n in (outputs | suffix_reads) if parts.kinds.get(n) == LAST}
        self.suffix_needs_sequence = any(parts.kinds.get(n) == SEQUENCE for n in suffix_reads)
        # An A2S codes `steps` steps and no more: the sequence ends there.
        self.coded = parts.chunk is not None and any(n.op_type == "A2S" for n in ops.hnnx_nodes(parts.chunk.graph))
        self.state = StreamState(0, {}, {}, {}, {})
        self.prefix_counts: dict[str, tuple[float, int]] = {}  # the firing of LIF layers the prefix ran

    # -------------------------------------------------------------- sequence control
    def reset(self, keep_static: bool = False) -> None:
        static = self.state.static if keep_static else {}
        self.state = StreamState(0, {s.input: s.initial for s in self.parts.states}, static, {}, {})
        if static:
            self._initial_from_static()

    def set_static(self, values: dict[str, np.ndarray]) -> None:
        """New static inputs: the prefix runs again on them."""
        static = {k: v for k, v in self.state.static.items() if k in self.parts.static_inputs}
        static.update(values)
        missing = [n for n in self.parts.static_inputs if n not in static]
        if missing:
            raise DataError(f"step: no array for input {missing[0]!r} (needed at the first step)")
        counts: dict[str, tuple[float, int]] = {}
        if self.prefix is not None:
            feeds = {spec.name: static[spec.name] for spec in self.prefix.inputs}
            tensors, counts = self.prefix.run(feeds)
            static.update(tensors)
        self.state.static = static
        self.prefix_counts = counts
        if self.state.position == 0:
            self._initial_from_static()

    def _shape_states(self, arrays: dict[str, np.ndarray]) -> None:
        """Initial states at their full shapes, for the batch and dims of the first inputs."""
        symbols = self.parts.symbols(arrays)
        for s in self.parts.states:
            shape = s.shape_for(symbols)
            if shape is not None:
                value = np.asarray(self.state.states[s.input], s.dtype)
                self.state.states[s.input] = np.ascontiguousarray(np.broadcast_to(value, shape))

    def _initial_from_static(self) -> None:
        for s in self.parts.states:
            if s.initial_from is not None:
                self.state.states[s.input] = self.state.static[s.initial_from]

    def advance(self, time_feeds: dict[str, np.ndarray], steps: int, suffix: bool = True
                ) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, int]]]:
        """Run ``steps`` steps: the chunk graph once, then (``suffix``) the suffix where it can run now."""
        parts, state = self.parts, self.state
        missing = [n for n in parts.static_inputs if n not in state.static]
        if missing:
            raise DataError(f"step: no array for input {missing[0]!r} (needed at the first step)")
        if self.coded and state.position + steps > parts.steps:
            raise HnnxError(f"the model's sequence has {parts.steps} steps; {state.position} ran, {steps} more "
                            f"do not fit: reset() starts a new sequence")
        if state.position == 0:
            self._shape_states({**state.static, **time_feeds})
        tensors: dict[str, np.ndarray] = {}
        counts: dict[str, tuple[float, int]] = {}
        if self.chunk is not None:
            chunk_inputs = {spec.name for spec in self.chunk.inputs}
            feeds = {n: v for n, v in time_feeds.items() if n in chunk_inputs}
            feeds.update({n: state.static[n] for n in self.chunk_static})
            feeds.update(state.states)
            if parts.steps_input:
                feeds[STEPS_INPUT] = np.array(steps, np.int64)
            tensors, counts = self.chunk.run(feeds)
            for s in parts.states:
                state.states[s.input] = tensors.pop(s.output) if s.output not in self.keep_last else tensors[s.output]
        tensors.update({n: v for n, v in time_feeds.items()})
        state.position += steps
        for name in self.keep_sequence:
            if name in tensors:
                state.sequences.setdefault(name, []).append(tensors[name])
        for name in self.keep_last:
            if name in tensors:
                state.last[name] = tensors[name]
        out = {n: v for n, v in tensors.items() if n in set(parts.outputs) | set(self.probes)}
        out.update({n: state.static[n] for n in [*parts.outputs, *self.probes]
                    if parts.kinds.get(n) == STATIC and n in state.static})
        complete = self.coded and state.position == parts.steps
        if suffix and self.suffix is not None and (not self.suffix_needs_sequence or complete):
            suffix_tensors, suffix_counts = self.run_suffix()
            out.update(suffix_tensors)
            counts = _added(counts, suffix_counts)
        return out, counts

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, int]]]:
        """The outputs and probes of the sequence so far that need it whole (the suffix's)."""
        parts = self.parts
        if self.coded and self.state.position != parts.steps:
            raise HnnxError(f"the model's sequence has {parts.steps} steps but {self.state.position} ran")
        if self.suffix is None:
            return {}, {}
        return self.run_suffix()

    def run_suffix(self) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, int]]]:
        state = self.state
        feeds = {}
        for spec in self.suffix.inputs:
            name = spec.name
            if name in state.sequences:
                pieces = state.sequences[name]
                feeds[name] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)
            elif name in state.last:
                feeds[name] = state.last[name]
            elif name in state.static:
                feeds[name] = state.static[name]
            else:
                raise HnnxError(f"no steps have run: {name!r} is not computed yet")
        return self.suffix.run(feeds)

    def sequence_of(self, name: str) -> np.ndarray | None:
        pieces = self.state.sequences.get(name)
        if not pieces:
            return None
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)


def _place_probes(parts: StepwiseParts, probes: Sequence[str]) -> dict[str, list[str]]:
    """Which part's session records each probe (the part that computes the tensor)."""
    where: dict[str, list[str]] = {}
    for name in probes:
        kind = parts.kinds.get(name)
        if kind is None:
            raise ModelError(f"probe {name!r}: the model has no tensor of that name")
        if name in parts.time_inputs or name in parts.static_inputs:
            continue
        part = {STATIC: "prefix", SEQUENCE: "chunk", LAST: "chunk"}.get(kind, "suffix")
        where.setdefault(part, []).append(name)
    return where


def _added(a: dict[str, tuple[float, int]], b: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
    out = dict(a)
    for name, (total, count) in b.items():
        old = out.get(name, (0.0, 0))
        out[name] = (old[0] + total, old[1] + count)
    return out


def _any_length(spec: TensorSpec) -> TensorSpec:
    """A time-major input spec that takes any number of steps (a chunk of the sequence)."""
    if spec.dims is None or not spec.dims:
        return spec
    return replace(spec, dims=("T", *spec.dims[1:]))


# ---------------------------------------------------------------------------- chunked simulation
def available_memory() -> int:
    """Bytes of memory available to a new allocation now (Linux ``MemAvailable``; else free pages)."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def bytes_per_step(parts: StepwiseParts, symbols: dict[str, int]) -> int | None:
    """Estimated bytes one step of the chunk graph holds for the given named dims (None if a
    tensor's size is unknown): :data:`OVERHEAD` × the bytes of its time-major tensors."""
    total = 0
    for name, (size, dtype) in parts.per_step.items():
        value = size.value(symbols)
        if value is None:
            return None
        total += value * dtype.itemsize
    return int(total * OVERHEAD)


def choose_chunk(parts: StepwiseParts, steps: int, symbols: dict[str, int], memory_limit: int | None
                 ) -> int | None:
    """The steps per call for a memory budget (``memory_limit`` bytes, default
    :data:`MEMORY_FRACTION` of the available memory): None when the whole sequence fits."""
    if parts.chunk is None:
        return None
    per_step = bytes_per_step(parts, symbols)
    if per_step is None or per_step == 0:
        return None
    budget = memory_limit if memory_limit is not None else int(available_memory() * MEMORY_FRACTION)
    if per_step * steps <= budget:
        return None
    return max(1, min(steps, budget // per_step))


@dataclass
class _LazyData:
    """A dataset whose time-major arrays are read K steps at a time (memory maps opened per read)."""

    source: str
    static: dict[str, np.ndarray]
    timed: dict[str, list[np.ndarray]]  # per input: the array of each file (memory-mapped when possible)
    specs: dict[str, TensorSpec]
    labels: np.ndarray | None
    size: int
    steps: int | None
    offsets: dict[str, list[int]] = field(default_factory=dict)

    def window(self, name: str, first: int, stop: int, start: int, end: int) -> np.ndarray:
        """Steps ``first:stop`` of samples ``start:end`` of time-major input ``name``, validated."""
        pieces = []
        for array, offset in zip(self.timed[name], self.offsets[name]):
            lo, hi = max(start - offset, 0), min(end - offset, array.shape[1])
            if lo < hi:
                pieces.append(_read_rows(array, first, stop, lo, hi))
        block = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
        return validate_array(block, _any_length(self.specs[name]), self.source)


def _read_rows(array: np.ndarray, first: int, stop: int, start: int, end: int) -> np.ndarray:
    """``array[first:stop, start:end]`` copied out; a C-ordered memory map is mapped for just those
    rows and unmapped again, so reading a long file keeps the resident memory flat."""
    if isinstance(array, np.memmap) and array.flags.c_contiguous and getattr(array, "filename", None):
        rows = np.memmap(array.filename, dtype=array.dtype, mode="r", offset=array.offset + first * array.strides[0],
                         shape=(stop - first, *array.shape[1:]))
        try:
            return np.array(rows[:, start:end])
        finally:
            rows._mmap.close()  # type: ignore[attr-defined]
    return np.array(array[first:stop, start:end])


def open_data(data: Any, specs: Sequence[TensorSpec], labels: Any, time_inputs: Sequence[str]) -> _LazyData:
    """Open a dataset for chunked runs: static inputs read and validated, time-major inputs mapped."""
    from hnnx.runtime.data import _joined, _labels

    source, parts = input_parts(data, specs, mmap=True)
    by_name = {spec.name: spec for spec in specs}
    static, timed, offsets, sizes = {}, {}, {}, {}
    lengths = set()
    for spec in specs:
        if spec.name in time_inputs:
            arrays = [part[spec.name] if isinstance(part[spec.name], np.memmap) else np.asarray(part[spec.name])
                      for part in parts]
            for array in arrays:
                if array.ndim < 2:
                    raise DataError(f"{source}: array {spec.name!r} has shape {list(array.shape)}, the model "
                                    f"expects {spec.describe()}")
                lengths.add(array.shape[0])
            timed[spec.name] = arrays
            offsets[spec.name] = list(np.cumsum([0] + [a.shape[1] for a in arrays[:-1]]))
            sizes[spec.name] = sum(a.shape[1] for a in arrays)
        else:
            static[spec.name] = validate_array(_joined(parts, spec.name, spec.batch_axis, source), spec, source)
            sizes[spec.name] = static[spec.name].shape[spec.batch_axis]
    if len(lengths) > 1:
        raise DataError(f"{source}: the time-major arrays have different numbers of steps: {sorted(lengths)}")
    if len(set(sizes.values())) > 1:
        raise DataError(f"{source}: inputs disagree on the number of samples: {sizes}")
    size = next(iter(sizes.values())) if sizes else 0
    if size == 0:
        raise DataError(f"{source}: holds no samples")
    raw = {LABELS_KEY: _joined(parts, LABELS_KEY, 0, source)} if LABELS_KEY in parts[0] else {}
    label_array = _labels(labels, raw, source, size)
    return _LazyData(source, static, timed, by_name, label_array, size, lengths.pop() if lengths else None, offsets)


def symbols_of(parts: StepwiseParts, shapes: Mapping[str, Sequence[int]], specs: Sequence[TensorSpec],
               batch: int) -> dict[str, int]:
    """Values of the named dims of the graph inputs in arrays of the given shapes, with ``batch``
    samples on each input's sample axis."""
    batch_axes = {spec.name: spec.batch_axis for spec in specs}
    return {symbol: batch if axis == batch_axes.get(name) else int(shapes[name][axis])
            for symbol, (name, axis) in parts.symbol_axes.items()
            if name in shapes and axis < len(shapes[name])}


@dataclass
class ChunkedRun:
    """What :func:`run_chunked` collected: per tensor, its value in each batch; per LIF layer,
    ``[spike sum, element count]``; the batch sizes, labels and sample count of the data; the
    steps per call (None: nothing ran step by step); the seconds; the stateful nodes that ran on
    the whole sequence (with the reason)."""

    tensors: dict[str, list[np.ndarray]]
    spike_sums: dict[str, list[float]]
    batch_sizes: list[int]
    labels: np.ndarray | None
    samples: int
    inputs: list[TensorSpec]
    chunk_steps: int | None
    seconds: float
    whole_sequence: dict[str, str]


def run_chunked(model: onnx.ModelProto, data: Any, *, labels: Any, batch_size: int, probes: Sequence[str],
                threads: int | None, progress: bool, native: bool | None, chunk_steps: int | None,
                memory_limit: int | None, parts: StepwiseParts | None = None) -> ChunkedRun:
    """Simulate ``model`` over ``data`` K steps at a time (see :func:`hnnx.runtime.simulate.simulate`);
    ``chunk_steps`` None: chosen for ``memory_limit``."""
    from tqdm.auto import tqdm

    parts = parts or stepwise_parts(model)
    specs = [spec_of(vi) for vi in model.graph.input if vi.name not in {i.name for i in model.graph.initializer}]
    dataset = open_data(data, specs, labels, parts.time_inputs)
    steps = dataset.steps if parts.time_inputs else parts.steps
    if parts.time_inputs and parts.steps is not None and dataset.steps != parts.steps:
        raise DataError(f"{dataset.source}: the time-major arrays have {dataset.steps} steps, the model's "
                        f"sequence has {parts.steps}")
    if chunk_steps is None and steps:
        shapes = {**{n: a.shape for n, a in dataset.static.items()},
                  **{n: arrays[0].shape for n, arrays in dataset.timed.items()}}
        chunk_steps = choose_chunk(parts, steps, symbols_of(parts, shapes, specs, min(batch_size, dataset.size)),
                                   memory_limit)
    if parts.chunk is None:  # nothing runs step by step: prefix and suffix run once
        chunk_steps = None
    per_call = chunk_steps or steps or 1
    probes = list(dict.fromkeys(probes))
    runner = _Runner(parts, probes, threads, native, firing_rates=True)
    collected: dict[str, list[np.ndarray]] = {}
    spike_sums: dict[str, list[float]] = {}
    batch_sizes: list[int] = []
    started = time.perf_counter()
    with tqdm(total=dataset.size, unit="sample", disable=not progress, leave=False) as bar:
        for start in range(0, dataset.size, batch_size):
            stop = min(start + batch_size, dataset.size)
            runner.reset()
            static = {}
            for name, array in dataset.static.items():
                spec = dataset.specs[name]
                index = [slice(None)] * array.ndim
                index[spec.batch_axis] = slice(start, stop)
                static[name] = np.ascontiguousarray(array[tuple(index)])
            runner.set_static(static)
            counts = dict(runner.prefix_counts)
            last: dict[str, np.ndarray] = {}
            for first in range(0, steps or 0, per_call):
                count = min(per_call, steps - first)
                feeds = {n: dataset.window(n, first, first + count, start, stop) for n in parts.time_inputs}
                tensors, chunk_counts = runner.advance(feeds, count, suffix=False)
                counts = _added(counts, chunk_counts)
                last.update(tensors)
            if runner.suffix is not None:
                tensors, suffix_counts = runner.finish()
                counts = _added(counts, suffix_counts)
                last.update(tensors)
            for name in [*parts.outputs, *probes]:
                if parts.kinds.get(name) == SEQUENCE:
                    value = runner.sequence_of(name)
                else:
                    value = last.get(name)
                    if value is None and name in runner.state.static:
                        value = runner.state.static[name]
                if value is None:
                    raise HnnxError(f"tensor {name!r} was not computed by the stepwise run")
                collected.setdefault(name, []).append(value)
            for name, (total, count) in counts.items():
                sums = spike_sums.setdefault(name, [0.0, 0])
                sums[0] += total
                sums[1] += count
            batch_sizes.append(stop - start)
            bar.update(stop - start)
    seconds = time.perf_counter() - started
    return ChunkedRun(collected, spike_sums, batch_sizes, dataset.labels, dataset.size, specs, chunk_steps, seconds,
                      dict(parts.whole_sequence))


__all__ = ["ChunkedRun", "MEMORY_FRACTION", "OVERHEAD", "Stream", "StreamState", "available_memory", "bytes_per_step",
           "choose_chunk", "run_chunked"]
