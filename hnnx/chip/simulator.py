"""The chip simulator: executes a :class:`~hnnx.chip.program.Program`, and nothing else.

Core by core, phase by phase, step by step: each core holds its axon buffer (the values
its routes delivered, cast to the layer's input type as the axon memory stores them),
its weights, its neurons' state. A core's action — ``integrate`` (int32 synaptic sums of
its tile, then the element-wise stages when it computes a whole neuron), ``merge`` (the
exact int32 sum of the partial sums), ``add`` (each operand value shifted left by its
``shifts`` entry and the operands summed, in int32 with wrap-around as ONNX's int32 ``Mul``
and ``Add``), ``pool`` (the max, or the int32 sum, of each neuron's masked axons), then the
element-wise stages (bias, requantization, ReLU, clip, LIF); ``encode`` (A2S),
``decode``/``finish`` (S2A) — produces its values and sends them along its routing tables.
Neurons, hybrid units and requantization run the op declarations' public functions
(:meth:`hnnx.ops.LIF.step`, :meth:`hnnx.ops.A2S.step`, :meth:`hnnx.ops.S2A.step`,
:meth:`hnnx.ops.Requantize.reference`), so the chip computes exactly what the integer graph
computes. Batched: every array carries the samples on axis 0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from hnnx import ops
from hnnx.chip.program import Program, load_program
from hnnx.chip.soma import lif_attributes
from hnnx.errors import DataError, HnnxError
from hnnx.runtime.data import TensorSpec, load_dataset
from hnnx.runtime.simulate import SimulationResult, accuracy


class VerificationError(HnnxError):
    """The chip simulator and the integer graph disagree (the message names the tensor)."""


class _BlockProduct:
    """``axons @ weights`` in int32, as a few dense products over the rows each block of
    columns uses: consecutive columns whose nonzero rows nearly coincide (the channels of a
    convolution at one output position) share a block, so an unrolled convolution costs its
    kernel's multiply–accumulates, not the whole crossbar's. Exact: every block multiplies
    its columns' every nonzero weight."""

    SLACK = 1.25  # a block's rows may exceed its widest column's nonzero rows by this factor

    def __init__(self, weights: np.ndarray) -> None:
        weights = weights.astype(np.int32)
        nonzero = weights != 0
        self.columns = weights.shape[1]
        self.blocks: list[tuple[np.ndarray | None, slice, np.ndarray]] = []
        start, union, widest = 0, np.zeros(weights.shape[0], bool), 0
        for j in range(self.columns + 1):
            column = nonzero[:, j] if j < self.columns else None
            if column is not None:
                size = int(column.sum())
                trial = union | column
                if j == start or trial.sum() <= self.SLACK * max(widest, size):
                    union, widest = trial, max(widest, size)
                    continue
            rows = np.flatnonzero(union)
            whole = rows.size == weights.shape[0]  # no gather needed
            self.blocks.append((None if whole else rows, slice(start, j), np.ascontiguousarray(weights[rows, start:j])))
            if column is not None:
                start, union, widest = j, column.copy(), size

    def __call__(self, axons: np.ndarray) -> np.ndarray:
        axons = axons.astype(np.int32, copy=False)
        if len(self.blocks) == 1 and self.blocks[0][0] is None:
            return np.matmul(axons, self.blocks[0][2])
        out = np.empty((axons.shape[0], self.columns), np.int32)
        for rows, columns, block in self.blocks:
            out[:, columns] = np.matmul(axons if rows is None else axons[:, rows], block)
        return out


class _Windows:
    """The max, or the int32 sum, of each neuron's window (``mask`` [axons, neurons]): the
    window's axons gathered into ``[batch, neurons, widest window]``, short windows padded
    with a value that changes nothing (0 for a sum, the type's minimum for a max)."""

    GATHERED = 1 << 22  # values gathered at once (bounds the memory of a batch)

    def __init__(self, mask: np.ndarray) -> None:
        neurons, axons = np.nonzero(mask.T)  # window by window, axons in order
        counts = np.bincount(neurons, minlength=mask.shape[1])
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.index = np.full((mask.shape[1], max(int(counts.max(initial=0)), 1)), mask.shape[0])  # pad: extra axon
        self.index[neurons, np.arange(neurons.size) - first[neurons]] = axons

    def reduce(self, axons: np.ndarray, kind: str) -> np.ndarray:
        """``kind`` ``"max"`` (in the axons' type) or ``"sum"`` (int32) of each window: [batch, neurons]."""
        values = axons.astype(np.int32, copy=False) if kind == "sum" else axons
        pad = 0 if kind == "sum" else np.iinfo(values.dtype).min
        padded = np.concatenate([values, np.full((values.shape[0], 1), pad, values.dtype)], axis=1)
        out = np.empty((values.shape[0], self.index.shape[0]), values.dtype)
        rows = max(1, self.GATHERED // self.index.size)
        for start in range(0, values.shape[0], rows):
            gathered = padded[start:start + rows][:, self.index]
            if kind == "sum":
                gathered.sum(axis=2, dtype=np.int32, out=out[start:start + rows])
            else:
                gathered.max(axis=2, out=out[start:start + rows])
        return out


@dataclass
class _Core:
    """A core's configuration and its run-time buffers for one batch."""

    meta: dict[str, Any]
    layer: dict[str, Any]
    neurons: np.ndarray
    product: _BlockProduct | None  # compute and partial cores: their weights
    bias: np.ndarray | None
    pool: _Windows | None  # pool cores: their windows
    multipliers: np.ndarray | None  # add cores: 2^shift per axon, int32
    routes: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = field(default_factory=list)
    axons: np.ndarray | None = None
    lif_state: Any = None
    s2a_state: Any = None
    windows: int = 0


def _stage_views(layer: dict[str, Any]) -> list[Any]:
    """Op views of a layer's stages (built once from the program's fields)."""
    views = []
    for stage in layer["stages"]:
        if stage["op"] == "lif":
            views.append(ops.LIF.view_for(lif_attributes(stage["soma"]), (True,), 1, stage["node"]))
        elif stage["op"] == "requantize":
            views.append(ops.Requantize.view_for({"shift": stage["shift"]}, (True,), 1, stage["node"]))
        else:
            views.append(None)
    return views


class ChipSimulator:
    """Runs a program on batches of input arrays (see the module docstring)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.layers = program.layers
        self.steps = program.steps
        self.views = [_stage_views(layer) for layer in self.layers]
        self.unit_views = [self._unit_view(layer) for layer in self.layers]
        self.cores: list[_Core] = []
        for meta in program.cores:
            key = f"core{meta['id']}"
            weights, mask = program.arrays.get(f"{key}.weights"), program.arrays.get(f"{key}.mask")
            shifts = program.arrays.get(f"{key}.shifts")
            multipliers = None if shifts is None else np.left_shift(np.int32(1), shifts.astype(np.int32))
            self.cores.append(_Core(meta, self.layers[meta["layer"]], program.array(f"{key}.neurons"),
                                    None if weights is None else _BlockProduct(weights),
                                    program.arrays.get(f"{key}.bias"), None if mask is None else _Windows(mask),
                                    multipliers))
        self.host_routes: dict[int, list[tuple[dict[str, Any], np.ndarray, np.ndarray]]] = {}
        for index, route in enumerate(program.routes):
            entry = (route, program.array(f"route{index}.src"), program.array(f"route{index}.dst"))
            if route["dst"] is None:
                continue
            if route["src"] is None:
                self.host_routes.setdefault(route["layer"], []).append(entry)
            else:
                self.cores[route["src"]].routes.append(entry)
        self.inputs = [self._input_spec(name) for name in program.meta["model"]["inputs"]]
        # per batch: (layer, stage) → values of every emission [count, N, size]; spikes per LIF node
        self.history: dict[tuple[int, int], np.ndarray] = {}
        self.spikes: dict[str, int] = {}
        self.feeds: Mapping[str, np.ndarray] = {}

    def _unit_view(self, layer: dict[str, Any]) -> Any:
        if layer["kind"] == "a2s":
            return ops.A2S.view_for(layer["attrs"], (True,), 1, layer["name"])
        if layer["kind"] == "s2a":
            attrs = {k: v for k, v in layer["attrs"].items() if k != "emissions"}
            return ops.S2A.view_for(attrs, (True,), 1, layer["name"])
        return None

    def _input_spec(self, name: str) -> TensorSpec:
        readout = self.program.meta["readouts"][name]
        layer = self.layers[readout["layer"]]
        return TensorSpec(name, np.dtype(layer["attrs"]["dtype"]), ("N", *readout["shape"]))

    # ------------------------------------------------------------------ one batch
    def run(self, feeds: Mapping[str, np.ndarray], wanted: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one batch; returns the ``wanted`` tensors (graph outputs or probes) by name."""
        batch = next(iter(feeds.values())).shape[0]
        readouts = self.program.meta["readouts"]
        self.history = {}
        for name in wanted:
            r = readouts[name]
            key = (r["layer"], r["stage"])
            if key not in self.history:
                layer = self.layers[r["layer"]]
                count = self._emissions(layer)
                self.history[key] = np.zeros((count, batch, layer["size"]), layer["value_dtypes"][r["stage"]])
        self.spikes = {}
        for core in self.cores:
            core.axons = np.zeros((batch, core.meta["axons"]), self._axon_dtype(core))
            core.lif_state = core.s2a_state = None
            core.windows = 0
        schedule = self.program.meta["schedule"]
        self.feeds = feeds
        for phase in schedule["prologue"]:
            for entry in phase:
                self._act(entry, 0)
        for t in range(self.steps):
            for phase in schedule["step"]:
                for entry in phase:
                    self._act(entry, t)
        for phase in schedule["epilogue"]:
            for entry in phase:
                self._act(entry, 0)
        return {name: self._assemble(name, batch) for name in wanted}

    def _emissions(self, layer: dict[str, Any]) -> int:
        if layer["group"] != "step":
            return 1
        if layer["kind"] == "s2a":
            return 1 if layer["attrs"]["decoding"] == "global" else layer["attrs"]["emissions"]
        return self.steps

    def _axon_dtype(self, core: _Core) -> np.dtype:
        return np.dtype(np.int32) if core.meta["role"] == "merge" else np.dtype(core.layer["input_dtype"])

    def _act(self, entry: dict[str, Any], emission: int) -> None:
        if "host" in entry:
            layer = self.layers[entry["host"]]
            feed = self.feeds[layer["name"]]
            values = [self._quantize(layer, feed.reshape(feed.shape[0], -1))]
            self._record(entry["host"], np.arange(layer["size"]), values, emission)
            for route, src, dst in self.host_routes.get(entry["host"], []):
                self._deliver(route, values, src, dst)
            return
        core = self.cores[entry["core"]]
        action = entry["action"]
        layer = core.layer
        if action == "integrate":
            acc = core.product(core.axons)
            if core.meta["role"] == "partial":
                self._send(core, [acc], emission)
                return
            self._finish_neurons(core, acc, emission)
        elif action == "merge":
            parts = core.axons.reshape(core.axons.shape[0], core.meta["parts"], -1)
            self._finish_neurons(core, parts.sum(axis=1, dtype=np.int32), emission)
        elif action == "encode":
            view = self.unit_views[core.meta["layer"]]
            coded = ops.A2S.step(view, core.axons, emission)
            if coded.shape[1] != core.neurons.size:  # rate coding: the core holds the whole sample
                coded = coded[:, core.neurons]
            self._emit(core, [coded], emission)
        elif action in ("decode", "finish"):
            view = self.unit_views[core.meta["layer"]]
            if core.s2a_state is None:
                core.s2a_state = ops.S2A.initial_state(view, core.axons.shape, core.axons.dtype)
            if action == "decode":
                outputs, core.s2a_state = ops.S2A.step(view, core.s2a_state, core.axons.copy())
            else:
                outputs = ops.S2A.finish(view, core.s2a_state)
            for output in outputs:
                self._emit(core, [output], core.windows)
                core.windows += 1
        elif action == "add":
            batch, count = core.axons.shape[0], core.neurons.size
            terms = core.axons.astype(np.int32) * core.multipliers
            total = terms.reshape(batch, -1, count).sum(axis=1, dtype=np.int32)
            self._finish_neurons(core, total.astype(core.axons.dtype, copy=False), emission)
        elif action == "pool":
            self._finish_neurons(core, core.pool.reduce(core.axons, "sum" if layer["kind"] == "sumpool" else "max"),
                                 emission)
        else:
            raise HnnxError(f"program: unknown action {action!r} on core {core.meta['id']}")

    def _finish_neurons(self, core: _Core, acc: np.ndarray, emission: int) -> None:
        """The element-wise stages of a layer on the neurons of one core."""
        values = [acc]
        value = acc
        for stage, view in zip(core.layer["stages"], self.views[core.meta["layer"]]):
            if stage["op"] == "bias":
                value = value + core.bias
            elif stage["op"] == "requantize":
                (value,) = ops.Requantize.reference(view, value)
            elif stage["op"] == "relu":
                value = np.maximum(value, value.dtype.type(0))
            elif stage["op"] == "clip":  # ONNX Clip: min(max(x, low), high) in the value's type
                value = np.minimum(np.maximum(value, value.dtype.type(stage["low"])), value.dtype.type(stage["high"]))
            elif stage["op"] == "lif":
                if core.lif_state is None:
                    core.lif_state = ops.LIF.initial_state(view, value.shape)
                value, core.lif_state = ops.LIF.step(view, core.lif_state, value)
                self.spikes[stage["node"]] = self.spikes.get(stage["node"], 0) + int(value.sum(dtype=np.int64))
            values.append(value)
        self._emit(core, values, emission)

    def _emit(self, core: _Core, values: list[np.ndarray], emission: int) -> None:
        self._record(core.meta["layer"], core.neurons, values, emission)
        self._send(core, values, emission)

    def _record(self, layer: int, neurons: np.ndarray, values: list[np.ndarray], emission: int) -> None:
        for stage, value in enumerate(values):
            history = self.history.get((layer, stage))
            if history is not None:
                history[emission][:, neurons] = value

    def _send(self, core: _Core, values: list[np.ndarray], emission: int) -> None:
        for route, src, dst in core.routes:
            if route["slot"] in (-1, emission):
                self._deliver(route, values, src, dst)

    def _deliver(self, route: dict[str, Any], values: list[np.ndarray], src: np.ndarray, dst: np.ndarray) -> None:
        target = self.cores[route["dst"]].axons
        # The axon memory holds the destination layer's input type: a C cast, as ONNX Cast does.
        target[:, dst] = values[route["stage"]][:, src].astype(target.dtype, copy=False)

    def _quantize(self, layer: dict[str, Any], x: np.ndarray) -> np.ndarray:
        """The host's input quantization: ``saturate(round_half_even(x / scale) + zero_point)``."""
        attrs = layer["attrs"]
        if "scale" not in attrs:
            return x
        out = np.dtype(attrs["out_dtype"])
        info = np.iinfo(out)
        scaled = np.rint(x.astype(np.float32) / np.float32(attrs["scale"])) + np.float32(attrs["zero_point"])
        return np.clip(scaled, info.min, info.max).astype(out)

    def _assemble(self, name: str, batch: int) -> np.ndarray:
        r = self.program.meta["readouts"][name]
        neuron = self.program.array(f"readout.{name}.neuron")
        slot = self.program.array(f"readout.{name}.slot")
        history = self.history[(r["layer"], r["stage"])]
        dtype = np.dtype(r["dtype"])
        shape = tuple(r["shape"])
        if r["timing"] == "static":
            if np.all(slot == -1):
                flat = history[0][:, neuron]
            else:
                flat = history[slot, :, neuron].T
            return flat.astype(dtype, copy=False).reshape(batch, *shape)
        seq = history[:, :, neuron].astype(dtype, copy=False)
        if r["folded"]:
            return seq.reshape(seq.shape[0] * batch, *shape)
        return seq.reshape(seq.shape[0], batch, *shape)


def simulate(program: Program | str | os.PathLike, data: Any, *, labels: Any = None, batch_size: int = 1024,
             probes: Sequence[str] = ()) -> SimulationResult:
    """Run a chip program over a dataset (as :func:`hnnx.simulate` takes it).

    Returns a :class:`~hnnx.runtime.SimulationResult`: ``outputs`` (the graph's outputs),
    ``probes`` (any tensor of the lowered graph the program can read out, e.g. a LIF's spike
    train ``[T, N, ...]``), accuracy when labels are given, firing rates of the LIF layers.
    """
    if not isinstance(program, Program):
        program = load_program(program)
    simulator = ChipSimulator(program)
    readouts = program.meta["readouts"]
    for name in probes:
        if name not in readouts:
            raise DataError(f"probe {name!r}: not a tensor the program can read out "
                            f"(known: {', '.join(sorted(readouts)[:12])}{' …' if len(readouts) > 12 else ''})")
    outputs = list(program.meta["model"]["outputs"])
    wanted = list(dict.fromkeys(outputs + list(probes)))
    dataset = load_dataset(data, simulator.inputs, labels)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    spikes: dict[str, int] = {}
    started = time.perf_counter()
    for start in range(0, dataset.size, batch_size):
        stop = min(start + batch_size, dataset.size)
        result = simulator.run(dataset.batch(simulator.inputs, start, stop), wanted)
        for name, value in result.items():
            collected[name].append(value)
        for node, count in simulator.spikes.items():
            spikes[node] = spikes.get(node, 0) + count
    seconds = time.perf_counter() - started
    joined = {name: _join(readouts[name], parts) for name, parts in collected.items()}
    rates = {}
    for layer, core_count in _lif_sizes(program).items():
        rates[layer] = spikes.get(layer, 0) / max(core_count * dataset.size * max(program.steps, 1), 1)
    sim = SimulationResult(outputs={name: joined[name] for name in outputs},
                           probes={name: joined[name] for name in probes}, firing_rates=rates,
                           samples=dataset.size, seconds=seconds)
    if dataset.labels is not None:
        sim.accuracy = accuracy(joined[outputs[0]], dataset.labels)
    return sim


def _lif_sizes(program: Program) -> dict[str, int]:
    return {stage["node"]: layer["size"] for layer in program.layers for stage in layer["stages"]
            if stage["op"] == "lif"}


def _join(readout: dict[str, Any], parts: list[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    if readout["timing"] == "static" or not readout["folded"]:
        return np.concatenate(parts, axis=0 if readout["timing"] == "static" else 1)
    count = readout["count"]
    unfolded = [p.reshape(count, -1, *p.shape[1:]) for p in parts]
    joined = np.concatenate(unfolded, axis=1)
    return joined.reshape(-1, *joined.shape[2:])


def verify(model: Any, program: Program, data: Any, *, batch_size: int = 1024) -> list[str]:
    """Compare the chip simulator with ``hnnx.simulate`` of the integer graph ``model``, bit for bit.

    Compares every spike train the program reads out (``[T, N, ...]``, layer by layer) and
    then the graph's outputs; raises VerificationError naming the first differing tensor.
    Returns the names of the tensors compared.
    """
    from hnnx.runtime.simulate import simulate as graph_simulate

    readouts = program.meta["readouts"]
    spikes: dict[int, str] = {}
    for name, r in readouts.items():
        layer = program.layers[r["layer"]]
        final = r["stage"] == len(layer["stages"])
        if layer["spiking_output"] and final and r["timing"] == "step" and not r["folded"]:
            spikes.setdefault(r["layer"], name)
    probes = [spikes[index] for index in sorted(spikes)]
    expected = graph_simulate(model, data, probes=probes, batch_size=batch_size)
    got = simulate(program, data, probes=probes, batch_size=batch_size)
    compared = []
    for name in probes + list(program.meta["model"]["outputs"]):
        want = expected.probes.get(name, expected.outputs.get(name))
        have = got.probes.get(name, got.outputs.get(name))
        if want.dtype != have.dtype or want.shape != have.shape:
            raise VerificationError(f"{name}: the chip program gives {have.dtype} {list(have.shape)}, the integer "
                                    f"graph {want.dtype} {list(want.shape)}")
        differ = np.argwhere(want != have)
        if differ.size:
            first = tuple(int(i) for i in differ[0])
            raise VerificationError(f"{name}: the chip program differs from the integer graph at {list(first)} "
                                    f"(chip {have[first]}, graph {want[first]}; {len(differ)} of {want.size} values "
                                    f"differ)")
        compared.append(name)
    return compared
