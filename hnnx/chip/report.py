"""The lowering report: what a program occupies, moves and costs, from the spec's figures.

Counts per inference and per time step, from the program alone (its cores, routes and
schedule) and the layers' spike rates (measured on the calibration data when lowering had
it, else dense: every spiking neuron fires every step):

* SynOps — synaptic operations driven by input spikes (rate × synapses);
* MACs — multiply–accumulates on non-spike inputs (synapses), plus the additions of merge
  cores (partial sums), add cores (operand values) and window sums (window values); max
  pooling's comparisons are not counted;
* neuron updates — one per output neuron of a core per emission;
* packets (spikes: one event packet each; values: bytes / payload) and packet hops (XY);
* latency: a phase lasts its slowest core — MACs/SynOps over the MAC array, neuron
  updates, then its longest route (hops and packets); a step is the sum of its phases.
  The pipelined alternative overlaps consecutive steps: a step every slowest phase;
* energy: SynOps, MACs and packet hops times their energies, plus static power over the
  inference's latency. Figures marked ``assumed`` in the spec are listed with the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hnnx.chip.program import Program
from hnnx.chip.spec import parse_spec
from hnnx.errors import HnnxError

PLOT_HINT = "pip install matplotlib (or pip install 'hnnx[plot]')"


@dataclass
class ChipReport:
    """The report of one program (see the module docstring); ``data`` is its JSON form."""

    data: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2) + "\n"

    def markdown(self) -> str:
        d = self.data
        lines = [f"# Chip program: {d['chip']} × {d['chips']}", "",
                 f"cores used: {d['cores_used']} of {d['cores_available']}; time steps: {d['steps']}; "
                 f"spike rates: {'measured on the calibration data' if d['rates_measured'] else 'dense (assumed)'}", "",
                 "| layer | runs | cores | neurons | SynOps/inference | MACs/inference |", "|---|---|---:|---:|---:|---:|"]
        for layer in d["layers"]:
            lines.append(f"| {layer['name']} ({layer['kind']}) | {layer['group']} | {layer['cores']} | "
                         f"{layer['neurons']} | {layer['synops']:,.0f} | {layer['macs']:,.0f} |")
        util = d["utilization"]
        lines += ["", "| per core | mean | max |", "|---|---:|---:|"]
        for key in ("neurons", "axons", "memory"):
            if util[key] is not None:
                lines.append(f"| {key} | {100 * util[key]['mean']:.1f} % | {100 * util[key]['max']:.1f} % |")
        t, e = d["traffic"], d["latency"]
        lines += ["", f"- per time step: {t['synops_per_step']:,.0f} SynOps, {t['macs_per_step']:,.0f} MACs, "
                      f"{t['packets_per_step']:,.1f} packets, {t['hops_per_step']:,.1f} packet hops",
                  f"- per inference: {t['synops']:,.0f} SynOps, {t['macs']:,.0f} MACs, {t['packets']:,.1f} packets, "
                  f"{t['hops']:,.1f} packet hops",
                  f"- busiest link: {t['busiest_link']} ({t['busiest_link_packets']:,.1f} packets per inference)",
                  f"- latency: {e['step_cycles']:,.0f} cycles per step, {1e6 * e['inference_seconds']:,.2f} µs per "
                  f"inference ({e['phases_per_step']} phases per step)",
                  f"- pipelined alternative: {e['pipelined_step_cycles']:,.0f} cycles per step, "
                  f"{1e6 * e['pipelined_inference_seconds']:,.2f} µs per inference",
                  f"- energy per inference: {1e6 * d['energy']['total_joules']:,.4f} µJ "
                  f"(dynamic {1e6 * d['energy']['dynamic_joules']:,.4f} µJ, static "
                  f"{1e6 * d['energy']['static_joules']:,.4f} µJ)"]
        if d["assumed"]:
            lines.append(f"- assumed figures (no published source): {', '.join(d['assumed'])}")
        return "\n".join(lines) + "\n"


def _ratio(used: float, limit: float | None) -> float | None:
    return None if not limit else used / limit


def chip_report(program: Program) -> ChipReport:
    """Compute the report of ``program`` (see the module docstring)."""
    meta = program.meta
    spec = parse_spec(meta["chip"], "program chip")
    layers = program.layers
    steps = max(program.steps, 1)
    rows, columns = spec.value("core", "mac_array")
    lanes = rows * columns
    timing = {k: spec.value("timing", k) for k in ("clock_hz", "cycles_per_neuron_update", "cycles_per_hop",
                                                   "cycles_per_packet")}
    rates = {i: layer.get("spike_rate", 1.0) for i, layer in enumerate(layers)}

    def emissions(layer: dict[str, Any]) -> int:
        return program.steps if layer["group"] == "step" else 1

    core_work: list[tuple[float, float, int]] = []  # synops, macs, neuron updates per emission
    per_layer: dict[int, dict[str, float]] = {}
    for core in program.cores:
        layer = layers[core["layer"]]
        synops = macs = 0.0
        if core["role"] in ("compute", "partial"):
            if layer["spiking_input"]:
                rate = max((rates[i] for i in layer["sources"]), default=1.0)
                synops = rate * core["synapses"]
            else:
                macs = float(core["synapses"])
        elif core["role"] == "merge":
            macs = float(core["parts"] * core["neurons"])
        elif core["role"] == "add" or (core["role"] == "pool" and layer["kind"] == "sumpool"):
            macs = float(core["synapses"])
        updates = 0 if core["role"] == "partial" else core["neurons"]
        core_work.append((synops, macs, updates))
        entry = per_layer.setdefault(core["layer"], {"cores": 0, "synops": 0.0, "macs": 0.0})
        entry["cores"] += 1
        entry["synops"] += synops * emissions(layer)
        entry["macs"] += macs * emissions(layer)
    routes = program.routes
    links: dict[tuple[tuple[int, int], tuple[int, int]], float] = {}
    packets = hops = 0.0
    step_packets = step_hops = 0.0
    route_cycles: dict[int, float] = {}
    for route in routes:
        per_inference = route["packets"] * route["emissions"]
        packets += per_inference
        hops += per_inference * route["hops"]
        if layers[route["layer"]]["group"] == "step":
            step_packets += per_inference / steps
            step_hops += per_inference * route["hops"] / steps
        for a, b in zip(route["path"], route["path"][1:]):
            link = (tuple(a), tuple(b))
            links[link] = links.get(link, 0.0) + per_inference
        if route["src"] is not None:
            cycles = route["hops"] * timing["cycles_per_hop"] + route["packets"] * timing["cycles_per_packet"]
            route_cycles[route["src"]] = max(route_cycles.get(route["src"], 0.0), cycles)

    def phase_cycles(phase: list[dict[str, Any]]) -> float:
        slowest = 0.0
        for entry in phase:
            if "core" not in entry:
                continue
            synops, macs, updates = core_work[entry["core"]]
            cycles = (synops + macs) / lanes + updates * timing["cycles_per_neuron_update"]
            slowest = max(slowest, cycles + route_cycles.get(entry["core"], 0.0))
        return slowest

    schedule = meta["schedule"]
    group_cycles = {group: [phase_cycles(p) for p in schedule[group]] for group in ("prologue", "step", "epilogue")}
    step_cycles = sum(group_cycles["step"])
    once = sum(group_cycles["prologue"]) + sum(group_cycles["epilogue"])
    inference_cycles = once + program.steps * step_cycles
    slowest_phase = max(group_cycles["step"], default=0.0)
    pipelined = once + (program.steps + max(len(group_cycles["step"]) - 1, 0)) * slowest_phase if program.steps else once
    clock = timing["clock_hz"]
    synops_total = sum(v["synops"] for v in per_layer.values())
    step_work = {key: sum(v[key] for i, v in per_layer.items() if layers[i]["group"] == "step")
                 for key in ("synops", "macs")}
    macs_total = sum(v["macs"] for v in per_layer.values())
    energy = spec.figures["energy"]
    dynamic = (synops_total * energy["synop_joules"].value + macs_total * energy["mac_joules"].value
               + hops * energy["hop_joules"].value)
    static = energy["static_watts"].value * meta["chips"] * inference_cycles / clock
    capacity = spec.figures["core"]

    def utilization(key: str, limit: Any) -> dict[str, float] | None:
        if not limit:
            return None
        ratios = [core[key] / limit for core in program.cores]
        return {"mean": sum(ratios) / len(ratios), "max": max(ratios)}

    busiest = max(links.items(), key=lambda item: (item[1], item[0]), default=(None, 0.0))
    used_figures = ["timing.clock_hz", "timing.cycles_per_neuron_update", "timing.cycles_per_hop",
                    "timing.cycles_per_packet", "core.mac_array", "energy.synop_joules", "energy.mac_joules",
                    "energy.hop_joules", "energy.static_watts", "noc.packet_payload_bytes"]
    assumed = [name for name in used_figures if name in spec.assumed_figures()]
    data = {
        "chip": spec.name, "chips": meta["chips"], "steps": program.steps,
        "cores_used": len(program.cores), "cores_available": meta["chips"] * spec.cores_per_chip,
        "rates_measured": meta["model"].get("rates_measured", False),
        "layers": [{"name": layers[i]["name"], "kind": layers[i]["kind"], "group": layers[i]["group"],
                    "cores": int(v["cores"]), "neurons": layers[i]["size"], "synops": v["synops"], "macs": v["macs"]}
                   for i, v in sorted(per_layer.items())],
        "cores": [{"id": c["id"], "layer": layers[c["layer"]]["name"], "role": c["role"], "chip": c["chip"],
                   "x": c["x"], "y": c["y"], "neurons": c["neurons"], "axons": c["axons"],
                   "memory_bytes": c["memory_bytes"]} for c in program.cores],
        "utilization": {"neurons": utilization("neurons", capacity["max_neurons"].value),
                        "axons": utilization("axons", capacity["max_axons"].value),
                        "memory": utilization("memory_bytes", capacity["memory_bytes"].value)},
        "traffic": {"synops": synops_total, "macs": macs_total, "synops_per_step": step_work["synops"] / steps,
                    "macs_per_step": step_work["macs"] / steps, "packets": packets, "hops": hops,
                    "packets_per_step": step_packets, "hops_per_step": step_hops,
                    "busiest_link": None if busiest[0] is None else f"{busiest[0][0]}→{busiest[0][1]}",
                    "busiest_link_packets": busiest[1]},
        "latency": {"phases_per_step": len(schedule["step"]), "step_cycles": step_cycles,
                    "inference_cycles": inference_cycles, "inference_seconds": inference_cycles / clock,
                    "pipelined_step_cycles": slowest_phase, "pipelined_inference_cycles": pipelined,
                    "pipelined_inference_seconds": pipelined / clock},
        "energy": {"dynamic_joules": dynamic, "static_joules": static, "total_joules": dynamic + static},
        "assumed": assumed,
    }
    return ChipReport(data)


def plot_placement(program: Program, path: str) -> None:
    """A PNG of the mesh: cores coloured by layer, routes drawn with width ∝ traffic.

    Needs matplotlib; without it raises HnnxError with the install hint (:data:`PLOT_HINT`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HnnxError(f"the placement plot needs matplotlib: {PLOT_HINT}") from None
    from hnnx.model import write_atomic

    spec = parse_spec(program.meta["chip"], "program chip")
    width, height = spec.value("mesh", "width"), spec.value("mesh", "height")
    chips = program.meta["chips"]
    figure, axes = plt.subplots(figsize=(max(4.0, 0.5 * width * chips + 2), max(3.0, 0.5 * height + 1)))
    colours = plt.get_cmap("tab20")
    names = [layer["name"] for layer in program.layers]
    for x in range(width * chips):
        for y in range(height):
            axes.add_patch(plt.Rectangle((x - 0.45, y - 0.45), 0.9, 0.9, fill=False, color="0.85"))
    seen = set()
    for core in program.cores:
        gx = core["chip"] * width + core["x"]
        label = names[core["layer"]] if core["layer"] not in seen else None
        seen.add(core["layer"])
        axes.add_patch(plt.Rectangle((gx - 0.45, core["y"] - 0.45), 0.9, 0.9, color=colours(core["layer"] % 20),
                                     label=label))
    heaviest = max((r["packets"] * r["emissions"] for r in program.routes), default=1.0) or 1.0
    for route in program.routes:
        xs, ys = zip(*route["path"])
        axes.plot(xs, ys, color="black", alpha=0.5, linewidth=0.5 + 3 * route["packets"] * route["emissions"] / heaviest)
    for chip in range(1, chips):
        axes.axvline(chip * width - 0.5, color="red", linewidth=1)
    axes.set_xlim(-1.5, width * chips - 0.5)
    axes.set_ylim(height - 0.5, -0.5 - 1)
    axes.set_aspect("equal")
    axes.set_title(f"{spec.name} × {chips}: {len(program.cores)} cores")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=120)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())

