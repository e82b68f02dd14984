"""The mapper: ``hnnx.lower(model, chip=...) -> Program``.

1. the integer graph becomes chip layers (:mod:`hnnx.chip.graph`), checked against the
   chip's primitives (one error naming the layer and the limit);
2. each layer is cut into core *tiles*: fan-out splits over output neurons (convolutions in
   position-major order, so a tile's neurons share receptive fields), and, when one neuron's
   inputs do not fit a core, fan-in splits over contiguous input ranges whose int32 partial
   sums a *merge* core adds exactly (int32 wrap-around addition is associative) before the
   bias and the neuron. Add layers split over outputs (a tile holds every operand of its
   outputs), pooling layers over windows;
3. tiles are placed on the mesh (chips side by side) along a serpentine path in dataflow
   order, then improved by deterministic moves that lower the total traffic × hop distance
   (traffic from the calibration data's spike rates when given, else dense);
4. routing tables carry each value from the core that computes it to the axons that read it,
   along XY paths;
5. each time step runs in phases: a layer's cores run one phase after the latest of their
   inputs (a merge one phase after its partial sums), so a layer reads its inputs from the
   same step, as the graph computes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import onnx

from hnnx import ops
from hnnx.chip.graph import STATIC, Layer, LayerGraph, MappingError, layer_graph
from hnnx.chip.program import FORMAT, VERSION, Program
from hnnx.chip.soma import p08_fields
from hnnx.chip.spec import ChipSpec, load_spec


@dataclass
class Tile:
    """One core's share of a layer: output ``neurons`` and input ``axons`` (layer indices)."""

    layer: int
    role: str
    neurons: np.ndarray
    axons: np.ndarray
    part: int = 0
    parts: int = 0
    merge: int | None = None  # tile index of the merge core (partial tiles)
    memory: int = 0
    index: int = 0
    place: tuple[int, int, int] = (0, 0, 0)  # chip, x, y


@dataclass
class Route:
    """Values moving from one core (``src`` tile, None = host) to another (``dst``, None = host)."""

    src: int | None
    dst: int | None
    stage: int
    slot: int
    kind: str  # value | psum
    src_index: np.ndarray
    dst_index: np.ndarray
    layer: int = -1  # the layer whose value moves
    packets: float = 0.0  # per emission
    emissions: int = 1  # per inference
    path: list[tuple[int, int]] = field(default_factory=list)


_GENERATED_SUFFIX = re.compile(r"\.(acc|sum\d*)\.(ConvInteger|MatMulInteger|ReduceSum|Add)$")


def display_name(layer: Layer) -> str:
    """The layer's name without the quantizer's ``.acc.ConvInteger``-style suffix (``.sum.ReduceSum``,
    ``.sum0.Add`` …)."""
    return _GENERATED_SUFFIX.sub("", layer.name)


# ---------------------------------------------------------------------------- checks
def check_primitives(graph: LayerGraph, spec: ChipSpec) -> None:
    """One MappingError naming the first layer that uses something the chip lacks."""
    chip = spec.name
    for layer in graph.layers:
        name = display_name(layer)
        if layer.kind == "synapse":
            if layer.conv is not None and layer.conv["group"] > 1 and not spec.value("primitives", "group_conv"):
                raise MappingError(f"{name}: grouped convolution (group {layer.conv['group']}) is not supported on {chip}")
            bits = spec.value("primitives", "weight_bits")
            low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            if layer.weights.size and (layer.weights.min() < low or layer.weights.max() > high):
                raise MappingError(f"{name}: weights span [{layer.weights.min()}, {layer.weights.max()}], {chip} has "
                                   f"{bits}-bit weights")
        if layer.kind == "maxpool" and not spec.value("primitives", "max_pool"):
            raise MappingError(f"{name}: max pooling is not supported on {chip}")
        if layer.kind == "sumpool" and not spec.value("primitives", "avg_pool"):
            raise MappingError(f"{name}: average pooling (a window sum) is not supported on {chip}")
        if layer.kind == "add":
            operands, shifts = layer.attrs["operands"], np.unique(layer.sources.shift)
            if (operands > 1 or shifts.any()) and not spec.value("primitives", "add"):
                what = f"a residual add of {operands} tensors" if operands > 1 else "aligning a tensor by left shifts"
                raise MappingError(f"{name}: {what} is not supported on {chip}")
            for shift in shifts[shifts > 0]:
                check_shift(name, "left shift", int(shift), spec)
        if layer.kind == "a2s" and layer.attrs["coding"] not in spec.value("primitives", "a2s_codings"):
            raise MappingError(f"{name}: A2S coding {layer.attrs['coding']!r} is not supported on {chip}")
        if layer.kind == "s2a" and layer.attrs["decoding"] not in spec.value("primitives", "s2a_decodings"):
            raise MappingError(f"{name}: S2A decoding {layer.attrs['decoding']!r} is not supported on {chip}")
        for stage in layer.stages:
            if stage["op"] == "requantize":
                check_shift(stage["node"], "shift", stage["shift"], spec)
            if stage["op"] == "lif":
                check_soma(stage["node"], stage["attrs"], spec)


def check_shift(where: str, what: str, shift: int, spec: ChipSpec) -> None:
    """A shift against the chip's shifter: a multiple of ``shift_granularity``, at most ``max_shift``."""
    unit, most = spec.value("primitives", "shift_granularity"), spec.value("primitives", "max_shift")
    if shift % unit:
        raise MappingError(f"{where}: {what} {shift} is not a multiple of {unit} on {spec.name}")
    if shift > most:
        raise MappingError(f"{where}: {what} {shift} > {most} on {spec.name}")


def check_soma(node: str, attrs: dict[str, Any], spec: ChipSpec) -> None:
    """The LIF's parameters against the chip's soma (refractory, reset mode, widths …)."""
    chip, neuron = spec.name, spec.figures["neuron"]
    if attrs["refractory"] > neuron["refractory_max"].value:
        raise MappingError(f"{node}: refractory {attrs['refractory']} > {neuron['refractory_max'].value} on {chip}")
    if attrs["reset_mode"] not in neuron["reset_modes"].value:
        raise MappingError(f"{node}: reset mode {attrs['reset_mode']!r} is not supported on {chip}")
    if attrs["state_bits"] != neuron["state_bits"].value:
        raise MappingError(f"{node}: state_bits {attrs['state_bits']} != {neuron['state_bits'].value} on {chip}")
    denominator = neuron["leak_alpha_denominator"].value
    for key in ("alpha", "theta_alpha"):
        if attrs[key] * denominator != round(attrs[key] * denominator):
            raise MappingError(f"{node}: {key} {attrs[key]} is not a multiple of 1/{denominator} on {chip}")
    adapts = attrs["theta_alpha"] != 1.0 or attrs["theta_beta"] != 0.0 or attrs["theta_increment"] != 0.0
    if adapts and not neuron["threshold_adaptation"].value:
        raise MappingError(f"{node}: adaptive threshold is not supported on {chip}")
    if attrs.get("v_lower") is not None and not neuron["lower_saturation"].value:
        raise MappingError(f"{node}: lower membrane saturation (v_lower) is not supported on {chip}")


# ---------------------------------------------------------------------------- tiling
class _Capacity:
    """Per-core limits and the memory model of the spec."""

    def __init__(self, spec: ChipSpec) -> None:
        core = spec.figures["core"]
        self.max_axons = core["max_axons"].value
        self.max_neurons = core["max_neurons"].value
        self.memory = core["memory_bytes"].value
        self.sizes = {k: core[k].value for k in ("weight_bytes", "axon_bytes", "state_bytes", "bias_bytes",
                                                 "partial_sum_bytes")}
        self.shared_conv = core["conv_weights"].value == "shared"

    def fits(self, axons: int, neurons: int, memory: float) -> bool:
        return ((self.max_axons is None or axons <= self.max_axons)
                and (self.max_neurons is None or neurons <= self.max_neurons)
                and (self.memory is None or memory <= self.memory))

    def input_bytes(self, layer: Layer, graph: LayerGraph) -> float:
        """Bytes per axon: 4 for int32 values, else one axon entry (int8 values and spikes)."""
        spiking = all(graph.layers[i].spiking_output for i in np.unique(layer.sources.layer))
        wide = np.dtype(layer.input_dtype).itemsize == 4 and not spiking
        return 4 * self.sizes["axon_bytes"] if wide else self.sizes["axon_bytes"]


def _has_lif(layer: Layer) -> bool:
    return any(stage["op"] == "lif" for stage in layer.stages)


def _soma_bytes(layer: Layer, cap: _Capacity) -> float:
    """Per output neuron: its bias and its neuron state, when its stages have them."""
    ops_used = {stage["op"] for stage in layer.stages}
    return (cap.sizes["bias_bytes"] if "bias" in ops_used else 0) + (cap.sizes["state_bytes"] if "lif" in ops_used
                                                                       else 0)


def _synapse_weight_count(layer: Layer, cap: _Capacity, axon_union: np.ndarray, out_channels: int) -> int:
    if layer.conv is not None and cap.shared_conv:
        in_channels = axon_union.reshape(layer.conv["in_channels"], -1).any(axis=1).sum()
        return int(in_channels) * out_channels * layer.conv["kernel"]
    return int(axon_union.sum())  # per neuron; the caller multiplies


def _output_order(layer: Layer) -> np.ndarray:
    if layer.conv is not None:  # position-major: the channels of one position share inputs
        plane, channels = layer.conv["out_plane"], layer.conv["out_channels"]
        return (np.arange(plane)[:, None] + np.arange(channels)[None, :] * plane).reshape(-1)
    return np.arange(layer.size)


def tile_synapse(layer: Layer, graph: LayerGraph, cap: _Capacity) -> list[Tile]:
    """Fan-out (and, when needed, fan-in) tiles of a Conv/MatMul layer."""
    mask = layer.mask
    m_in = mask.shape[0]
    in_bytes = cap.input_bytes(layer, graph)
    lif = _has_lif(layer)
    fan_in = int(mask.sum(axis=0).max()) if mask.size else 0
    k = 1 if cap.max_axons is None else max(1, math.ceil(fan_in / cap.max_axons))
    order = _output_order(layer)
    plane = layer.conv["out_plane"] if layer.conv is not None else 1
    while k <= max(m_in, 1):
        chunks = np.array_split(np.arange(m_in), k)
        groups = _greedy_groups(layer, cap, mask, chunks, order, plane, in_bytes, lif)
        if groups is not None:
            return _synapse_tiles(layer, mask, chunks, groups, cap, in_bytes, lif, plane)
        k += 1
    name = display_name(layer)
    raise MappingError(f"{name}: one neuron does not fit a core even with its {fan_in} inputs split "
                       f"{m_in} ways (core limits: axons {cap.max_axons}, neurons {cap.max_neurons}, "
                       f"memory {cap.memory} bytes)")


def _tile_bytes(layer: Layer, cap: _Capacity, union: np.ndarray, n: int, out_channels: int, in_bytes: float,
                compute: bool, lif: bool) -> float:
    s = cap.sizes
    weights = _synapse_weight_count(layer, cap, union, out_channels)
    if not (layer.conv is not None and cap.shared_conv):
        weights *= n
    memory = weights * s["weight_bytes"] + union.sum() * in_bytes + n * s["partial_sum_bytes"]
    if compute:
        memory += n * (s["bias_bytes"] + (s["state_bytes"] if lif else 0))
    return memory


def _merge_bytes(cap: _Capacity, parts: int, n: int, lif: bool) -> float:
    s = cap.sizes
    return parts * n * s["partial_sum_bytes"] + n * (s["bias_bytes"] + (s["state_bytes"] if lif else 0)
                                                     + s["partial_sum_bytes"])


def _greedy_groups(layer: Layer, cap: _Capacity, mask: np.ndarray, chunks: list[np.ndarray], order: np.ndarray,
                   plane: int, in_bytes: float, lif: bool) -> list[list[int]] | None:
    """Output neurons grouped greedily (in ``order``) so that every partial tile of each
    group fits a core, and its merge core too; None if one neuron alone does not fit."""
    split = len(chunks) > 1
    groups: list[list[int]] = []
    current: list[int] = []
    unions = [np.zeros(c.size, bool) for c in chunks]
    channels: set[int] = set()

    def fits(trial: list[np.ndarray], n: int, out_channels: int) -> bool:
        parts = 0
        for union, chunk in zip(trial, chunks):
            count = int(union.sum())
            if count == 0:
                continue
            parts += 1
            full = np.zeros(mask.shape[0], bool)
            full[chunk] = union
            if not cap.fits(count, n, _tile_bytes(layer, cap, full, n, out_channels, in_bytes, not split, lif)):
                return False
        return not split or cap.fits(parts * n, n, _merge_bytes(cap, parts, n, lif))

    for j in order:
        column = mask[:, j]
        trial = [u | column[c] for u, c in zip(unions, chunks)]
        trial_channels = channels | {int(j) // plane}
        if fits(trial, len(current) + 1, len(trial_channels)):
            unions, channels = trial, trial_channels
            current.append(int(j))
            continue
        if not current:
            return None
        groups.append(current)
        current, channels = [int(j)], {int(j) // plane}
        unions = [column[c].copy() for c in chunks]
        if not fits(unions, 1, 1):
            return None
    if current:
        groups.append(current)
    return groups


def _synapse_tiles(layer: Layer, mask: np.ndarray, chunks: list[np.ndarray], groups: list[list[int]],
                   cap: _Capacity, in_bytes: float, lif: bool, plane: int) -> list[Tile]:
    tiles: list[Tile] = []
    split = len(chunks) > 1
    for group in groups:
        neurons = np.array(group, np.int64)
        out_channels = len({int(j) // plane for j in group})
        partials = []
        for chunk in chunks:
            used = mask[np.ix_(chunk, neurons)].any(axis=1)
            if not used.any():
                continue
            union = np.zeros(mask.shape[0], bool)
            union[chunk[used]] = True
            memory = _tile_bytes(layer, cap, union, neurons.size, out_channels, in_bytes, not split, lif)
            partials.append(Tile(layer.index, "partial" if split else "compute", neurons, chunk[used],
                                 memory=int(math.ceil(memory))))
        if split:
            merge = Tile(layer.index, "merge", neurons, np.arange(len(partials) * neurons.size), parts=len(partials),
                         memory=int(math.ceil(_merge_bytes(cap, len(partials), neurons.size, lif))))
            for part, tile in enumerate(partials):
                tile.part = part
            tiles += partials + [merge]
        else:
            tiles += partials
    return tiles


def tile_elementwise(layer: Layer, graph: LayerGraph, cap: _Capacity) -> list[Tile]:
    """Tiles of A2S (``encode``), S2A (``decode``), pooling (``pool``) and add (``add``) layers."""
    name = display_name(layer)
    s = cap.sizes
    in_bytes = cap.input_bytes(layer, graph)
    if layer.kind in ("maxpool", "sumpool"):
        # a max keeps its input type; a window sum keeps an int32 sum per output
        out_bytes = s["axon_bytes"] if layer.kind == "maxpool" else s["partial_sum_bytes"]
        return _pool_tiles(layer, cap, in_bytes, out_bytes + _soma_bytes(layer, cap))
    if layer.kind == "add":
        return _add_tiles(layer, cap, in_bytes)
    whole_sample = layer.kind == "a2s" and layer.attrs["coding"] == "rate"
    if layer.kind == "s2a":
        window = 1 if layer.attrs["decoding"] == "global" else ops.S2A.geometry(layer.attrs)[0]
        per_neuron = window * in_bytes + s["state_bytes"] + s["axon_bytes"]
    else:
        per_neuron = (0 if whole_sample else in_bytes) + s["axon_bytes"]
    fixed = layer.input_size * in_bytes if whole_sample else 0
    best = _largest_fitting(layer.size, lambda n: cap.fits(layer.input_size if whole_sample else n, n,
                                                           fixed + n * per_neuron))
    if best == 0:
        if whole_sample:
            raise MappingError(f"{name}: needs {layer.input_size} axons in one core (rate coding normalises over "
                               f"the whole sample); the cores hold {cap.max_axons} axons, {cap.memory} bytes")
        raise MappingError(f"{name}: one neuron does not fit a core")
    role = {"a2s": "encode", "s2a": "decode"}[layer.kind]
    tiles = []
    for start in range(0, layer.size, best):
        neurons = np.arange(start, min(start + best, layer.size))
        axons = np.arange(layer.input_size) if whole_sample else neurons
        tiles.append(Tile(layer.index, role, neurons, axons,
                          memory=int(math.ceil(fixed + neurons.size * per_neuron))))
    return tiles


def _largest_fitting(limit: int, fits: Any) -> int:
    """The largest ``n ≤ limit`` with ``fits(n)`` (``fits`` is monotone: fewer neurons use less), or 0."""
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _add_tiles(layer: Layer, cap: _Capacity, in_bytes: float) -> list[Tile]:
    """Fan-out tiles of an add layer: each holds every operand of its outputs (operand-major axons)."""
    operands = layer.attrs["operands"]
    per_neuron = operands * in_bytes + cap.sizes["partial_sum_bytes"] + _soma_bytes(layer, cap)
    best = _largest_fitting(layer.size, lambda n: cap.fits(operands * n, n, n * per_neuron))
    if best == 0:
        raise MappingError(f"{display_name(layer)}: one output with its {operands} operands does not fit a core "
                           f"(core limits: axons {cap.max_axons}, memory {cap.memory} bytes)")
    tiles = []
    for start in range(0, layer.size, best):
        neurons = np.arange(start, min(start + best, layer.size))
        axons = (np.arange(operands)[:, None] * layer.size + neurons[None, :]).reshape(-1)
        tiles.append(Tile(layer.index, "add", neurons, axons, memory=int(math.ceil(neurons.size * per_neuron))))
    return tiles


def _pool_tiles(layer: Layer, cap: _Capacity, in_bytes: float, per_neuron: float) -> list[Tile]:
    mask = layer.mask
    tiles: list[Tile] = []
    current: list[int] = []
    union = np.zeros(mask.shape[0], bool)

    def memory(u: np.ndarray, n: int) -> float:
        return u.sum() * in_bytes + n * per_neuron

    for j in range(layer.size):
        trial = union | mask[:, j]
        if cap.fits(int(trial.sum()), len(current) + 1, memory(trial, len(current) + 1)):
            union = trial
            current.append(j)
            continue
        if not current:
            raise MappingError(f"{display_name(layer)}: one pooling window does not fit a core")
        tiles.append(Tile(layer.index, "pool", np.array(current), np.flatnonzero(union),
                          memory=int(math.ceil(memory(union, len(current))))))
        current, union = [j], mask[:, j].copy()
    if current:
        tiles.append(Tile(layer.index, "pool", np.array(current), np.flatnonzero(union),
                          memory=int(math.ceil(memory(union, len(current))))))
    return tiles


def _is_spike_stage(layer: Layer, stage: int) -> bool:
    final = layer.kind in ("a2s", "synapse") and stage == len(layer.stages)
    return final and layer.spiking_output


# ---------------------------------------------------------------------------- routes
@dataclass
class _Owner:
    """Which tile holds each output neuron's value of a layer (None: the host)."""

    tile: np.ndarray
    local: np.ndarray


def _owners(graph: LayerGraph, tiles: list[Tile]) -> dict[int, _Owner]:
    owners = {}
    for layer in graph.layers:
        owners[layer.index] = _Owner(np.full(layer.size, -1), np.arange(layer.size))
    for tile in tiles:
        if tile.role == "partial":
            continue
        owners[tile.layer].tile[tile.neurons] = tile.index
        owners[tile.layer].local[tile.neurons] = np.arange(tile.neurons.size)
    return owners


def build_routes(graph: LayerGraph, tiles: list[Tile]) -> list[Route]:
    """Routing tables: every axon of every tile is fed from the tile holding its source value."""
    owners = _owners(graph, tiles)
    routes: list[Route] = []
    for tile in tiles:
        layer = graph.layers[tile.layer]
        if tile.role == "merge":
            continue
        src = layer.sources.take(tile.axons)
        producer = np.array([owners[int(lay)].tile[int(n)] for lay, n in zip(src.layer, src.neuron)])
        local = np.array([owners[int(lay)].local[int(n)] for lay, n in zip(src.layer, src.neuron)])
        keys = np.stack([producer, src.slot, src.stage, src.layer], axis=1)
        for key in np.unique(keys, axis=0):
            chosen = np.all(keys == key, axis=1)
            routes.append(Route(None if key[0] < 0 else int(key[0]), tile.index, int(key[2]), int(key[1]), "value",
                                local[chosen].astype(np.int32), np.flatnonzero(chosen).astype(np.int32),
                                int(key[3])))
        if tile.role == "partial":
            n = tile.neurons.size
            routes.append(Route(tile.index, tile.merge, 0, -1, "psum", np.arange(n, dtype=np.int32),
                                (tile.part * n + np.arange(n)).astype(np.int32), tile.layer))
    return routes


def _route_traffic(graph: LayerGraph, tiles: list[Tile], routes: list[Route], spec: ChipSpec,
                   rates: Mapping[int, float]) -> None:
    """Packets per emission and emissions per inference of every route."""
    payload = spec.value("noc", "packet_payload_bytes")
    psum_bytes = spec.value("core", "partial_sum_bytes")
    for route in routes:
        count = route.src_index.size
        source_layer = graph.layers[route.layer]
        if route.kind == "psum":
            route.packets = math.ceil(count * psum_bytes / payload)
        elif _is_spike_stage(source_layer, route.stage):
            route.packets = rates.get(source_layer.index, 1.0) * count  # one event packet per spike
        else:
            width = source_layer.stage_dtype(route.stage).itemsize
            route.packets = math.ceil(count * width / payload)
        route.emissions = _emissions(graph, source_layer, route.slot)


def _emissions(graph: LayerGraph, layer: Layer, slot: int) -> int:
    if layer.group != "step" or slot >= 0:
        return 1
    if layer.kind == "s2a":
        return 1 if layer.attrs["decoding"] == "global" else layer.attrs["emissions"]
    return graph.steps


# ---------------------------------------------------------------------------- placement
HOST = (-1, 0)
"""Where the host attaches to the board (west of core (0, 0) of chip 0)."""


def _slots(spec: ChipSpec, chips: int) -> list[tuple[int, int, int]]:
    """Core places in serpentine order, chip after chip."""
    width, height = spec.value("mesh", "width"), spec.value("mesh", "height")
    slots = []
    for chip in range(chips):
        for y in range(height):
            xs = range(width) if y % 2 == 0 else range(width - 1, -1, -1)
            slots += [(chip, x, y) for x in xs]
    return slots


def _global(spec: ChipSpec, place: tuple[int, int, int]) -> tuple[int, int]:
    return place[0] * spec.value("mesh", "width") + place[1], place[2]


def place_tiles(tiles: list[Tile], routes: list[Route], spec: ChipSpec, chips: int) -> None:
    """Serpentine placement in dataflow order, then deterministic improving moves."""
    slots = _slots(spec, chips)
    coords = np.array([_global(spec, s) for s in slots])
    at = np.arange(len(tiles))  # slot index of each tile
    occupant = np.full(len(slots), -1)
    occupant[: len(tiles)] = np.arange(len(tiles))
    neighbours: list[dict[int, float]] = [dict() for _ in tiles]
    host_weight = np.zeros(len(tiles))
    for route in routes:
        weight = route.packets * route.emissions
        if route.src is None or route.dst is None:
            host_weight[route.dst if route.src is None else route.src] += weight
            continue
        if route.src != route.dst:
            neighbours[route.src][route.dst] = neighbours[route.src].get(route.dst, 0.0) + weight
            neighbours[route.dst][route.src] = neighbours[route.dst].get(route.src, 0.0) + weight
    host = np.array(HOST)
    linked = [np.fromiter(links, np.int64, len(links)) for links in neighbours]
    traffic = [np.fromiter(links.values(), np.float64, len(links)) for links in neighbours]

    def cost_at(tile: int, where: np.ndarray, exclude: int = -1) -> np.ndarray:
        """Traffic × distance of ``tile``'s links for each candidate place ``where`` [S, 2]."""
        others, weights = linked[tile], traffic[tile]
        if exclude >= 0:
            keep = others != exclude
            others, weights = others[keep], weights[keep]
        distance = np.abs(where[:, None, :] - coords[at[others]][None]).sum(axis=2)  # [S, links]
        return host_weight[tile] * np.abs(where - host).sum(axis=1) + distance @ weights

    for _ in range(4):
        improved = False
        for tile in range(len(tiles)):
            here = at[tile]
            gain_move = cost_at(tile, coords[here][None])[0] - cost_at(tile, coords)
            for slot in np.argsort(-gain_move, kind="stable")[:8]:
                other = occupant[slot]
                if slot == here or gain_move[slot] <= 1e-12:
                    break
                before = cost_at(tile, coords[here][None], other)[0]
                after = cost_at(tile, coords[slot][None], other)[0]
                if other >= 0:
                    before += cost_at(other, coords[slot][None], tile)[0]
                    after += cost_at(other, coords[here][None], tile)[0]
                if after < before - 1e-9:
                    occupant[here], occupant[slot] = other, tile
                    at[tile] = slot
                    if other >= 0:
                        at[other] = here
                    improved = True
                    break
        if not improved:
            break
    for tile in tiles:
        tile.place = slots[at[tile.index]]


def xy_path(start: tuple[int, int], end: tuple[int, int]) -> list[tuple[int, int]]:
    """The nodes an XY-routed packet visits: along x first, then along y."""
    (x, y), (x1, y1) = start, end
    path = [(x, y)]
    while x != x1:
        x += 1 if x1 > x else -1
        path.append((x, y))
    while y != y1:
        y += 1 if y1 > y else -1
        path.append((x, y))
    return path


def _route_paths(tiles: list[Tile], routes: list[Route], spec: ChipSpec) -> None:
    for route in routes:
        start = HOST if route.src is None else _global(spec, tiles[route.src].place)
        end = HOST if route.dst is None else _global(spec, tiles[route.dst].place)
        route.path = xy_path(start, end)


# ---------------------------------------------------------------------------- schedule
def build_schedule(graph: LayerGraph, tiles: list[Tile], spec: ChipSpec) -> dict[str, list[list[dict[str, Any]]]]:
    """Phases of the prologue, of every time step and of the epilogue (see the module docstring)."""
    by_layer: dict[int, list[Tile]] = {}
    for tile in tiles:
        by_layer.setdefault(tile.layer, []).append(tile)
    done: dict[int, tuple[str, int]] = {}
    phases: dict[str, dict[int, list[dict[str, Any]]]] = {"prologue": {}, "step": {}, "epilogue": {}}

    def add(group: str, phase: int, entry: dict[str, Any]) -> None:
        phases[group].setdefault(phase, []).append(entry)

    for layer in graph.layers:
        if layer.kind == "input":
            add("prologue", 0, {"host": layer.index, "action": "inject"})
            done[layer.index] = ("prologue", 0)
            continue
        group = layer.group
        ready = [done[int(i)][1] for i in np.unique(layer.sources.layer) if done[int(i)][0] == group]
        start = max(ready, default=-1) + 1
        split = any(t.role == "merge" for t in by_layer[layer.index])
        for tile in by_layer[layer.index]:
            action = {"compute": "integrate", "partial": "integrate", "merge": "merge", "encode": "encode",
                      "decode": "decode", "pool": "pool", "add": "add"}[tile.role]
            add(group, start + (1 if tile.role == "merge" else 0), {"core": tile.index, "action": action})
        done[layer.index] = (group, start + (1 if split else 0))
        if layer.kind == "s2a" and layer.attrs["decoding"] == "global":
            for tile in by_layer[layer.index]:
                add("epilogue", 0, {"core": tile.index, "action": "finish"})
            done[layer.index] = ("epilogue", 0)
    schedule = {group: [entries[p] for p in sorted(entries)] for group, entries in phases.items()}
    if len(schedule["step"]) > spec.value("primitives", "max_phases"):
        raise MappingError(f"the time step needs {len(schedule['step'])} phases, {spec.name} allows "
                           f"{spec.value('primitives', 'max_phases')}")
    return schedule


# ---------------------------------------------------------------------------- lower
def _is_integer_graph(model: onnx.ModelProto) -> bool:
    float_compute = {"Conv", "Gemm", "MatMul"}
    for node in model.graph.node:
        if node.op_type in float_compute and node.domain in ("", "ai.onnx"):
            return False
        if node.domain == ops.DOMAIN and node.op_type in ("LIF", "A2S", "S2A"):
            if ops.declaration(node.op_type).view(node).attrs["mode"] != "integer":
                return False
    return True


def _spike_rates(model: onnx.ModelProto, graph: LayerGraph, calibration: Any) -> dict[int, float]:
    """Mean spikes per neuron per step of each spiking layer on the calibration data."""
    from hnnx.runtime.simulate import simulate

    names: dict[str, int] = {}
    for name, value in graph.values.items():
        owner = value.elements.single_layer()
        if owner is None or value.timing == STATIC:
            continue
        layer = graph.layers[owner]
        if layer.spiking_output and np.all(value.elements.stage == _final_stage(layer)) and owner not in names.values():
            names[name] = owner
    if not names:
        return {}
    result = simulate(model, calibration, probes=list(names))
    return {owner: float(np.mean(result.probes[name])) for name, owner in names.items()}


def _final_stage(layer: Layer) -> int:
    return len(layer.stages) if layer.kind == "synapse" else 0


def integer_model(model: onnx.ModelProto | str | os.PathLike, calibration: Any = None) -> onnx.ModelProto:
    """The integer graph to lower: ``model`` itself when it is one (``tianjicx``/``int``), else
    ``model`` quantized on ``calibration`` (``hnnx.quantize(..., target="tianjicx")``)."""
    from hnnx.model import load

    if not isinstance(model, onnx.ModelProto):
        model = load(model)
    if _is_integer_graph(model):
        return model
    if calibration is None:
        raise MappingError("the model is a float graph: give calibration data (--calib) to quantize it first, "
                           "or lower the output of `hnnx quantize`")
    from hnnx.quantization import quantize

    quantized, _ = quantize(model, calibration, target="tianjicx")
    return quantized


def lower(model: onnx.ModelProto | str | os.PathLike, chip: str | os.PathLike | ChipSpec = "tianjicx", *,
          calibration: Any = None, chips: int = 1) -> Program:
    """Map an integer (``tianjicx``/``int``) graph onto ``chips`` chips of kind ``chip``.

    ``model``: a path or ModelProto; a float model needs ``calibration`` data and is quantized
    first (see :func:`integer_model`). ``calibration`` (path or dict of arrays) also gives the
    spike rates that weigh placement and the report (else traffic is dense).
    ``chip``: ``"tianjicx"``, ``"tianjic"``, a spec file or a :class:`ChipSpec`.
    Returns the :class:`Program` (``program.save(dir)`` writes it). Raises MappingError naming
    the layer and the limit when the model does not fit or uses what the chip lacks.
    """
    spec = load_spec(chip)
    model = integer_model(model, calibration)
    limit = spec.value("mesh", "chips_per_board")
    if not 1 <= chips <= limit:
        raise MappingError(f"--chips {chips}: {spec.name} boards hold 1 to {limit} chips")
    graph = layer_graph(model)
    check_primitives(graph, spec)
    cap = _Capacity(spec)
    tiles: list[Tile] = []
    available = chips * spec.cores_per_chip
    board = f"the chip has {spec.cores_per_chip}" if chips == 1 else f"{chips} chips have {available}"
    for layer in graph.layers:
        if layer.kind == "input":
            continue
        layer_tiles = tile_synapse(layer, graph, cap) if layer.kind == "synapse" else tile_elementwise(layer, graph, cap)
        if len(layer_tiles) > available:
            raise MappingError(f"{display_name(layer)} needs {len(layer_tiles)} cores, {board}")
        if len(tiles) + len(layer_tiles) > available:
            raise MappingError(f"{display_name(layer)} needs {len(layer_tiles)} cores, only "
                               f"{available - len(tiles)} of the {available} are left (more chips: --chips)")
        for tile in layer_tiles:
            tile.index = len(tiles)
            tiles.append(tile)
        for tile in layer_tiles:
            if tile.role == "partial":
                tile.merge = next(t.index for t in layer_tiles if t.role == "merge" and t.neurons is tile.neurons)
    rates = _spike_rates(model, graph, calibration) if calibration is not None else {}
    routes = build_routes(graph, tiles)
    _route_traffic(graph, tiles, routes, spec, rates)
    place_tiles(tiles, routes, spec, chips)
    _route_paths(tiles, routes, spec)
    schedule = build_schedule(graph, tiles, spec)
    return _program(graph, tiles, routes, schedule, spec, chips, rates)


def _layer_json(layer: Layer, rates: Mapping[int, float]) -> dict[str, Any]:
    stages = []
    for stage in layer.stages:
        if stage["op"] == "lif":
            stages.append({"op": "lif", "node": stage["node"], "soma": p08_fields(stage["attrs"])})
        elif stage["op"] == "requantize":
            stages.append({"op": "requantize", "node": stage["node"], "shift": stage["shift"]})
        elif stage["op"] == "clip":
            stages.append({"op": "clip", "low": stage["low"], "high": stage["high"]})
        else:
            stages.append({"op": stage["op"]})
    attrs = {k: (v.name if isinstance(v, np.dtype) else v) for k, v in layer.attrs.items()}
    entry = {"name": display_name(layer), "kind": layer.kind, "group": layer.group, "size": layer.size,
             "input_size": layer.input_size, "input_dtype": np.dtype(layer.input_dtype).name, "stages": stages,
             "attrs": attrs, "spiking_input": layer.spiking_input, "spiking_output": layer.spiking_output,
             "value_dtypes": [layer.stage_dtype(s).name for s in range(len(layer.stages) + 1)],
             "synapses": int(layer.mask.sum()) if layer.mask is not None else 0,
             "sources": [] if layer.sources is None else sorted(int(i) for i in np.unique(layer.sources.layer))}
    if layer.index in rates:
        entry["spike_rate"] = rates[layer.index]
    return entry


def _program(graph: LayerGraph, tiles: list[Tile], routes: list[Route], schedule: dict[str, Any], spec: ChipSpec,
             chips: int, rates: Mapping[int, float]) -> Program:
    arrays: dict[str, np.ndarray] = {}
    cores = []
    for tile in tiles:
        layer = graph.layers[tile.layer]
        key = f"core{tile.index}"
        arrays[f"{key}.neurons"] = tile.neurons.astype(np.int32)
        axons = tile.axons.size if tile.role != "merge" else tile.parts * tile.neurons.size
        if tile.role != "merge":  # the layer input each axon holds (a merge core's axons are partial sums)
            arrays[f"{key}.axons"] = tile.axons.astype(np.int32)
        if tile.role in ("compute", "partial"):
            arrays[f"{key}.weights"] = np.ascontiguousarray(layer.weights[np.ix_(tile.axons, tile.neurons)])
        if tile.role == "pool":
            arrays[f"{key}.mask"] = np.ascontiguousarray(layer.mask[np.ix_(tile.axons, tile.neurons)])
        if tile.role == "add":  # the left shift of each operand value (its alignment)
            arrays[f"{key}.shifts"] = layer.sources.shift[tile.axons].astype(np.int8)
        if tile.role != "partial":
            for stage in layer.stages:
                if stage["op"] == "bias":
                    arrays[f"{key}.bias"] = stage["bias"][tile.neurons].astype(np.int32)
        if tile.role in ("compute", "partial", "pool"):
            synapses = int(layer.mask[np.ix_(tile.axons, tile.neurons)].sum())
        else:  # an add core's synapses are its operand values
            synapses = int(tile.axons.size) if tile.role == "add" else 0
        cores.append({"id": tile.index, "chip": tile.place[0], "x": tile.place[1], "y": tile.place[2],
                      "layer": tile.layer, "role": tile.role, "neurons": int(tile.neurons.size), "axons": int(axons),
                      "parts": tile.parts, "part": tile.part, "merge": tile.merge, "memory_bytes": tile.memory,
                      "synapses": synapses})
    route_json = []
    for index, route in enumerate(routes):
        arrays[f"route{index}.src"] = route.src_index.astype(np.int32)
        arrays[f"route{index}.dst"] = route.dst_index.astype(np.int32)
        route_json.append({"src": route.src, "dst": route.dst, "layer": route.layer, "stage": route.stage, "slot": route.slot,
                           "kind": route.kind, "count": int(route.src_index.size), "packets": route.packets,
                           "emissions": route.emissions, "hops": len(route.path) - 1,
                           "path": [list(p) for p in route.path]})
    readouts = {}
    for name, value in graph.values.items():
        if not value.elements.readable():  # e.g. a Concat of several layers, an aligned operand
            continue
        owner = int(value.elements.layer[0])
        arrays[f"readout.{name}.neuron"] = value.elements.neuron.astype(np.int32)
        arrays[f"readout.{name}.slot"] = value.elements.slot.astype(np.int32)
        readouts[name] = {"layer": owner, "stage": int(value.elements.stage[0]), "timing": value.timing,
                          "count": value.count, "folded": value.folded, "shape": list(value.shape),
                          "dtype": np.dtype(value.dtype).name, "output": name in graph.outputs}
    meta = {
        "format": FORMAT, "version": VERSION, "chip": spec.to_json(), "chips": chips,
        "model": {"inputs": graph.inputs, "outputs": graph.outputs, "steps": graph.steps,
                  "layers": [_layer_json(layer, rates) for layer in graph.layers],
                  "rates_measured": bool(rates)},
        "cores": cores, "routes": route_json, "schedule": schedule, "readouts": readouts,
    }
    return Program(meta, arrays)


__all__ = ["lower", "MappingError", "Tile", "Route"]
