"""Data-parallel runs: a dataset's samples cut into contiguous shards, each run by a worker with its own
onnxruntime session (and the native kernels when they are built), the results merged in sample order.

Two kinds of workers run the same shards:

* **local processes** (``workers=N``): started with ``spawn`` (a clean interpreter: no onnxruntime or
  torch thread pool is inherited through ``fork``) and kept for later runs in the same process, each
  given ``cpu_count // N`` onnxruntime threads unless ``threads`` says otherwise. As with any
  ``multiprocessing`` program, a script that starts them must guard its entry point with
  ``if __name__ == "__main__":``;
* **Ray workers** (``ray=True`` or ``ray="ADDRESS"``): remote calls on a Ray cluster — the running one,
  the one at ``ADDRESS``, or a local one hnnx starts (``ray.init()``, no dashboard, no usage reports)
  — each reserving ``threads`` CPUs (default 1). Data on a path is read by the workers themselves
  (the path must be readable on every node); in-memory data travels through Ray's object store.

Shards are whole batches (only the last batch of the last shard may be short), so every worker runs
exactly the batches one process would run, and the merged result equals one process's bit for bit.

Faults: a worker that dies (killed, out of memory, a crash of its process or node) is started once
more for its shard, with a :class:`WorkerWarning`; if it dies again the run stops with a
:class:`WorkerError` naming the shard — no partial result is ever returned. An error in the data or
the model (an :class:`~hnnx.errors.HnnxError`) stops the run at once with that error. For tests,
``HNNX_FAIL_SHARD=K`` (or ``K:TRIES``) kills the worker of shard K (counted from 0) on its first try
(its first TRIES tries).
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import onnx

from hnnx.errors import HnnxError
from hnnx.runtime.data import (LABELS_KEY, StoredArray, TensorSpec, data_files, graph_inputs, is_time_major,
                               keyed_by_input, open_stored, validate_array)

FAIL_SHARD_ENV = "HNNX_FAIL_SHARD"
"""Fault injection for tests: ``K`` or ``K:TRIES`` — the worker of shard K dies on its first try(s)."""
RAY_HINT = "pip install 'hnnx[ray]'"

Result = TypeVar("Result")


class WorkerError(HnnxError):
    """A shard could not be run: its worker died twice, or failed in a way that is not a data or model error."""


class WorkerWarning(UserWarning):
    """A worker died and its shard is run again."""


@dataclass(frozen=True)
class Shard:
    """Samples ``start:stop`` of a run cut into ``of`` shards; this is shard ``index`` (from 0)."""

    index: int
    of: int
    start: int
    stop: int

    def __str__(self) -> str:
        return f"shard {self.index + 1} of {self.of} (samples {self.start}:{self.stop})"


def shard_ranges(samples: int, batch_size: int, shards: int) -> list[Shard]:
    """``samples`` cut into at most ``shards`` contiguous ranges of whole batches of ``batch_size``
    (the batches as evenly spread as they go; fewer shards when there are fewer batches)."""
    batches = math.ceil(samples / batch_size)
    count = max(1, min(shards, batches))
    bounds = [min(samples, (batches * k // count) * batch_size) for k in range(count + 1)]
    return [Shard(k, count, bounds[k], bounds[k + 1]) for k in range(count)]


@dataclass(frozen=True)
class Workers:
    """Where the shards run: ``count`` workers (local processes, or Ray workers when ``ray``; ``address``:
    the cluster's, None for the running or a new local one), each with ``threads`` onnxruntime threads."""

    count: int
    threads: int
    ray: bool = False
    address: str | None = None

    @property
    def label(self) -> str:
        """How the run is described in summaries, e.g. ``2 worker processes``."""
        if self.ray:
            return f"{self.count} Ray worker{'s' if self.count != 1 else ''}"
        return f"{self.count} worker process{'es' if self.count != 1 else ''}"


def plan_workers(workers: int | None, ray: bool | str | None, threads: int | None) -> Workers:
    """The :class:`Workers` of a run asked for with ``workers`` (a count) and/or ``ray`` (True or an
    address); connects to (or starts) the Ray cluster when ``ray`` asks for one."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise HnnxError(f"workers must be a whole number ≥ 1, got {workers!r}")
    if threads is not None and threads < 1:
        raise HnnxError(f"threads must be ≥ 1, got {threads!r}")
    if not ray:
        count = workers or 1
        return Workers(count, threads or max(1, (os.cpu_count() or 1) // count))
    address = ray if isinstance(ray, str) else None
    ray_module = connect_ray(address)
    per_worker = threads or 1
    if workers is None:
        cpus = int(ray_module.cluster_resources().get("CPU", 1))
        workers = max(1, cpus // per_worker)
    return Workers(workers, per_worker, True, address)


def connect_ray(address: str | None) -> Any:
    """The ``ray`` module, connected: to the running cluster if this process has one, else to the one
    at ``address``, else to a new local cluster (no dashboard; usage reports off unless the
    environment turns them on)."""
    try:
        import ray
    except ImportError:
        raise HnnxError(f"running on Ray needs the ray package: {RAY_HINT}") from None
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address, include_dashboard=False)
        except Exception as exc:  # ray raises ConnectionError, ValueError, RuntimeError, ...
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise WorkerError(f"cannot start or reach {where}: {_first_line(exc)}") from None
    return ray


def run_shards(function: Callable[[Any, Any, Shard], Result], common: Any, payloads: Sequence[Any],
               shards: Sequence[Shard], workers: Workers, progress: bool = False) -> list[Result]:
    """``function(common, payloads[k], shards[k])`` for every shard, on ``workers``; the results in shard
    order. ``function`` must be a module-level function (workers import it by name); ``common`` goes
    to every worker once, ``payloads[k]`` to shard k's. Faults as the module docstring says."""
    from tqdm.auto import tqdm

    failures = _injected_failures()
    run = _run_on_ray if workers.ray else _run_locally
    total = sum(shard.stop - shard.start for shard in shards)
    with tqdm(total=total, unit="sample", disable=not progress, leave=False) as bar:
        def done(shard: Shard) -> None:
            bar.update(shard.stop - shard.start)

        return run(function, common, payloads, shards, workers, failures, done)


# --------------------------------------------------------------------------- faults
def _injected_failures() -> tuple[int, int] | None:
    """``(shard, tries)`` from :data:`FAIL_SHARD_ENV`, or None."""
    text = os.environ.get(FAIL_SHARD_ENV, "").strip()
    if not text:
        return None
    try:
        shard, _, tries = text.partition(":")
        parsed = int(shard), int(tries or 1)
    except ValueError:
        raise HnnxError(f"{FAIL_SHARD_ENV}={text!r}: give a shard number, optionally ':' and a number of "
                        f"tries") from None
    return parsed


def _fail_if_asked(shard: Shard, attempt: int, failures: tuple[int, int] | None) -> None:
    """Kill this worker process (as an outside kill would) when the fault injection names this try."""
    if failures is not None and failures[0] == shard.index and attempt < failures[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def _died(shard: Shard, attempt: int, how: str) -> None:
    """A worker died: warn that the shard runs again, or stop the run on its second death."""
    if attempt == 0:
        warnings.warn(f"{shard}: the worker died ({how}); running the shard again", WorkerWarning, stacklevel=2)
        return
    raise WorkerError(f"{shard}: the worker died twice ({how}); the run stopped without a result")


# --------------------------------------------------------------------------- local processes
class _LocalWorker:
    """A worker process that runs one shard after another, kept for the runs that follow (starting a
    Python process with hnnx costs about a second) until it dies or this process ends."""

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.connection, child_end = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(child_end,), name="hnnx-worker", daemon=True)
        self.process.start()
        child_end.close()  # the child holds the only other end: its death closes the pipe
        global _EXIT_HOOK_REGISTERED
        if not _EXIT_HOOK_REGISTERED:
            atexit.register(_end_idle)
            _EXIT_HOOK_REGISTERED = True

    def alive(self) -> bool:
        return self.process.is_alive() and not self.connection.closed

    def stop(self) -> None:
        """Kill the process (a run that stops does not wait for a shard it no longer needs)."""
        self.process.kill()
        self.process.join()
        self.connection.close()


_IDLE: list[_LocalWorker] = []
"""Worker processes between runs."""
_EXIT_HOOK_REGISTERED = False
"""Whether :func:`_end_idle` runs when this process ends (registered with the first worker)."""


def _end_idle() -> None:
    """Let the kept workers end as processes do (closing their pipe ends their loop), so that what
    they hold is released by them (no leaked semaphore) rather than by a kill."""
    for worker in _IDLE:
        worker.connection.close()
    for worker in _IDLE:
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
    _IDLE.clear()


def _serve(connection: Any) -> None:
    """A local worker process: run the shards it is sent, sending ``(status, value)`` back for each."""
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        function, common, payload, shard, attempt, failures = job
        _fail_if_asked(shard, attempt, failures)
        try:
            message: tuple[str, Any] = ("ok", function(common, payload, shard))
        except HnnxError as exc:
            message = ("error", exc)
        except BaseException:  # a bug or a resource error: its traceback goes back with it
            message = ("crash", traceback.format_exc())
        del job, payload  # the shard's data is not kept while the worker waits
        connection.send(message)


def _run_locally(function: Callable[..., Any], common: Any, payloads: Sequence[Any], shards: Sequence[Shard],
                 workers: Workers, failures: tuple[int, int] | None, done: Callable[[Shard], None]) -> list[Any]:
    from multiprocessing.connection import wait

    waiting = deque((shard, 0) for shard in shards)
    busy: dict[Any, tuple[_LocalWorker, Shard, int]] = {}  # connection → (worker, shard, attempt)
    results: dict[int, Any] = {}
    try:
        while waiting or busy:
            while waiting and len(busy) < workers.count:
                shard, attempt = waiting.popleft()
                worker = _idle_worker()
                try:
                    worker.connection.send((function, common, payloads[shard.index], shard, attempt, failures))
                except (BrokenPipeError, EOFError, OSError):
                    pass  # it died; the wait below sees its pipe closed
                busy[worker.connection] = (worker, shard, attempt)
            for connection in wait(list(busy)):
                worker, shard, attempt = busy.pop(connection)
                try:
                    status, value = connection.recv()
                except (EOFError, OSError):  # died before or while answering
                    worker.stop()
                    _died(shard, attempt, _exit_description(worker.process.exitcode))
                    waiting.append((shard, attempt + 1))
                    continue
                _IDLE.append(worker)
                if status == "error":
                    raise value
                if status == "crash":
                    raise WorkerError(f"{shard}: the worker failed:\n{value.rstrip()}")
                results[shard.index] = value
                done(shard)
    finally:
        for worker, _, _ in busy.values():
            worker.stop()
    return [results[shard.index] for shard in shards]


def stop_workers() -> int:
    """Stop the local worker processes kept between runs (they hold memory while idle); returns how
    many were stopped. The next run starts new ones."""
    stopped = len(_IDLE)
    _end_idle()
    return stopped


def _idle_worker() -> _LocalWorker:
    """A live worker process from those kept, else a new one."""
    while _IDLE:
        worker = _IDLE.pop()
        if worker.alive():
            return worker
        worker.stop()
    return _LocalWorker()


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# --------------------------------------------------------------------------- Ray
def _ray_worker(function: Callable[..., Any], common: Any, payload: Any, shard: Shard, attempt: int,
                failures: tuple[int, int] | None) -> Any:
    """A Ray worker's call: one shard."""
    _fail_if_asked(shard, attempt, failures)
    return function(common, payload, shard)


def _run_on_ray(function: Callable[..., Any], common: Any, payloads: Sequence[Any], shards: Sequence[Shard],
                workers: Workers, failures: tuple[int, int] | None, done: Callable[[Shard], None]) -> list[Any]:
    ray = connect_ray(workers.address)
    # Ray's own retries are off: a shard is retried once, here, the same way as on local processes.
    remote = ray.remote(num_cpus=workers.threads, max_retries=0)(_ray_worker)
    common_ref = ray.put(common)
    payload_refs = [ray.put(payload) for payload in payloads]  # in-memory shards: through the object store
    pending: dict[Any, tuple[Shard, int]] = {}

    def submit(shard: Shard, attempt: int) -> None:
        ref = remote.remote(function, common_ref, payload_refs[shard.index], shard, attempt, failures)
        pending[ref] = (shard, attempt)

    for shard in shards:
        submit(shard, 0)
    results: dict[int, Any] = {}
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            shard, attempt = pending.pop(ref)
            try:
                results[shard.index] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, HnnxError):
                    raise cause from None
                raise WorkerError(f"{shard}: the worker failed: {exc}") from None
            except ray.exceptions.RayError as exc:  # the worker process or its node died
                _died(shard, attempt, _first_line(exc))
                submit(shard, attempt + 1)
                continue
            done(shard)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return [results[shard.index] for shard in shards]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- data
def shard_payloads(data: str | os.PathLike | Mapping[str, np.ndarray], inputs: Sequence[TensorSpec],
                   shards: Sequence[Shard]) -> list[Any]:
    """What each shard's worker reads: a path (made absolute: workers may run elsewhere) for data
    files, which the worker opens itself; for arrays, the shard's samples of every input (on its
    sample axis) and of ``labels``."""
    if not isinstance(data, Mapping):
        return [str(Path(data).resolve())] * len(shards)
    axes = {spec.name: spec.batch_axis for spec in inputs}
    axes[LABELS_KEY] = 0
    payloads = []
    for shard in shards:
        part = {}
        for name, array in data.items():
            if name in axes:
                index = [slice(None)] * np.ndim(array)
                index[axes[name]] = slice(shard.start, shard.stop)
                part[name] = np.asarray(array)[tuple(index)]
        payloads.append(part)
    return payloads


def mapped_shard(source: str, inputs: Sequence[TensorSpec], start: int, stop: int, stream: bool = False
                 ) -> dict[str, np.ndarray]:
    """Samples ``start:stop`` of the data files at ``source`` as arrays by input name (and ``labels``
    if the files hold them), read and validated here (errors name the file and the sample's index in
    it). With ``stream``, time-major inputs stay read-only memory maps where the files allow it, so a
    chunked run reads the steps it needs as it goes (and validates them then). Only the files the
    range touches are read."""
    pieces: dict[str, list[np.ndarray]] = {}
    offset = 0
    for path in data_files(source):
        arrays = keyed_by_input(open_stored(path), inputs, str(path))
        size = arrays[inputs[0].name].shape[inputs[0].batch_axis]
        low, high = max(start - offset, 0), min(stop - offset, size)
        if low < high:
            for spec in inputs:
                pieces.setdefault(spec.name, []).append(_window(arrays[spec.name], spec, str(path), low, high,
                                                                stream))
            if LABELS_KEY in arrays:
                pieces.setdefault(LABELS_KEY, []).append(arrays[LABELS_KEY].read(0, low, high))
        offset += size
        if offset >= stop:
            break
    axes = {spec.name: spec.batch_axis for spec in inputs}
    return {name: parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axes.get(name, 0))
            for name, parts in pieces.items()}


def _window(stored: StoredArray, spec: TensorSpec, where: str, low: int, high: int, stream: bool) -> np.ndarray:
    """Samples ``low:high`` of input ``spec``'s array ``stored``: with ``stream``, a memory-mapped view of
    an uncompressed C-ordered time-major array; else the slice read into memory and validated."""
    mappable = not (stored.compressed or stored.fortran or math.prod(stored.shape) == 0)
    if stream and mappable and is_time_major(spec.dims):
        mapped = np.memmap(stored.path, dtype=stored.dtype, mode="r", offset=stored.offset, shape=stored.shape)
        return mapped[:, low:high]
    return validate_array(stored.read(spec.batch_axis, low, high), spec, where, first_sample=low)


# --------------------------------------------------------------------------- simulation
def simulate_parallel(model: onnx.ModelProto, data: str | os.PathLike | Mapping[str, np.ndarray], *, labels: Any,
                      batch_size: int, probes: Sequence[str], threads: int | None, progress: bool,
                      native: bool | None, chunk_steps: int | None, memory_limit: int | None,
                      workers: int | None, ray: bool | str | None) -> Any:
    """:func:`hnnx.simulate` with the samples sharded over workers; the same result, bit for bit.

    The coordinator checks the data's shapes (file headers only), loads ``labels`` when given as a
    file or array, and decides the chunking once for every worker (a memory budget of
    ``memory_limit`` — default half the available memory — shared by the workers); each worker runs
    :func:`hnnx.runtime.simulate.collect_batches` on its shard, and the batches are joined in order.
    """
    from hnnx.calibrate.readers import sample_total
    from hnnx.runtime.data import _labels
    from hnnx.runtime.simulate import Batches, chunk_for, joined
    from hnnx.runtime.stream import MEMORY_FRACTION, available_memory

    started = time.perf_counter()
    inputs = graph_inputs(model)
    if isinstance(data, Mapping):  # validated here, as one process would, before any worker starts
        data = {name: np.asarray(value) for name, value in data.items()}
        data = {**data, **{spec.name: validate_array(data[spec.name], spec, "data")
                           for spec in inputs if spec.name in data}}
    total = sample_total(data, inputs)
    source = "data" if isinstance(data, Mapping) else str(data)
    label_array = None if labels is None else _labels(labels, {}, source, total)
    plan = plan_workers(workers, ray, threads)
    shards = shard_ranges(total, batch_size, plan.count)
    if chunk_steps is None:
        budget = memory_limit if memory_limit is not None else int(available_memory() * MEMORY_FRACTION)
        shapes = _first_shapes(data, inputs)
        chunk, _ = chunk_for(model, shapes, total, batch_size, max(1, budget // plan.count))
        chunk_steps = chunk or 0
    options = {"batch_size": batch_size, "probes": list(probes), "threads": plan.threads, "progress": False,
               "native": native, "chunk_steps": chunk_steps, "memory_limit": None}
    payloads = [(part, None if label_array is None else label_array[shard.start:shard.stop])
                for part, shard in zip(shard_payloads(data, inputs, shards), shards)]
    parts: list[Batches] = run_shards(_simulate_shard, (model.SerializeToString(), options), payloads, shards, plan,
                                      progress)
    first = parts[0]
    merged = Batches(
        tensors={name: [piece for part in parts for piece in part.tensors[name]] for name in first.tensors},
        # Spike sums are whole numbers, exact in float64: the sums of the shards' sums are the one-process sums.
        spike_sums={name: [sum(part.spike_sums[name][0] for part in parts),
                           sum(part.spike_sums[name][1] for part in parts)] for name in first.spike_sums},
        batch_sizes=[size for part in parts for size in part.batch_sizes],
        labels=None if first.labels is None else np.concatenate([part.labels for part in parts]),
        samples=sum(part.samples for part in parts),
        seconds=time.perf_counter() - started,
        outputs=first.outputs, probes=first.probes, batch_axes=first.batch_axes, chunk_steps=first.chunk_steps,
        whole_sequence={k: v for part in parts for k, v in part.whole_sequence.items()},
    )
    result = joined(merged)
    result.workers = plan.label
    return result


def _first_shapes(data: str | Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> dict[str, tuple[int, ...]]:
    """The shapes of the inputs' arrays in the data's first file (or the arrays), headers only."""
    if isinstance(data, Mapping):
        return {spec.name: tuple(np.shape(data[spec.name])) for spec in inputs if spec.name in data}
    first = keyed_by_input(open_stored(data_files(data)[0]), inputs, str(data))
    return {spec.name: tuple(first[spec.name].shape) for spec in inputs}


def _simulate_shard(common: tuple[bytes, dict[str, Any]], payload: tuple[Any, np.ndarray | None], shard: Shard
                    ) -> Any:
    """A worker's part of :func:`simulate_parallel`: the batches of one shard."""
    from hnnx.runtime.simulate import collect_batches

    model_bytes, options = common
    model = onnx.load_from_string(model_bytes)
    data, labels = payload
    if isinstance(data, str):
        data = mapped_shard(data, graph_inputs(model), shard.start, shard.stop, stream=bool(options["chunk_steps"]))
    return collect_batches(model, data, labels=labels, **options)


__all__ = ["FAIL_SHARD_ENV", "Shard", "WorkerError", "WorkerWarning", "Workers", "connect_ray", "mapped_shard",
           "plan_workers", "run_shards", "shard_payloads", "shard_ranges", "simulate_parallel", "stop_workers"]
