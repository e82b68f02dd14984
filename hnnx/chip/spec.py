"""Chip specifications as data: ``hnnx/chip/specs/*.json`` and a user's own ``FILE.json``.

A spec file is one JSON object (schema ``hnnx-chip-spec/1``)::

    {
      "schema": "hnnx-chip-spec/1",
      "name": "tianjicx",
      "description": "...",
      "mesh":    {"width": F, "height": F, "chips_per_board": F},
      "core":    {"max_axons": F, "max_neurons": F, "memory_bytes": F,
                  "weight_bytes": F, "axon_bytes": F, "state_bytes": F, "bias_bytes": F,
                  "partial_sum_bytes": F, "conv_weights": F, "mac_array": F},
      "neuron":  {"state_bits": F, "refractory_max": F, "reset_modes": F,
                  "leak_alpha_denominator": F, "threshold_adaptation": F, "lower_saturation": F},
      "primitives": {"weight_bits": F, "shift_granularity": F, "max_shift": F, "group_conv": F,
                     "max_pool": F, "avg_pool": F, "add": F, "a2s_codings": F, "s2a_decodings": F,
                     "max_phases": F},
      "noc":     {"routing": F, "packet_payload_bytes": F},
      "timing":  {"clock_hz": F, "cycles_per_neuron_update": F, "cycles_per_hop": F,
                  "cycles_per_packet": F},
      "energy":  {"synop_joules": F, "mac_joules": F, "hop_joules": F, "static_watts": F}
    }

Every ``F`` is a *figure*: ``{"value": v, "source": "where it is published"}`` or
``{"value": v, "assumed": "why this value"}`` — each number says where it comes from.
``value`` may be ``null`` where a limit does not apply (e.g. ``max_axons`` of a chip
whose cores are bounded by memory alone). Units: bytes, Hz, cycles, joules, watts.

Meaning of the fields:

* ``mesh``: cores per chip in a ``width × height`` 2-D mesh; ``chips_per_board`` chips
  side by side along x (``--chips N`` may ask for up to that many).
* ``core``: per-core limits — ``max_axons`` (fan-in) and ``max_neurons`` (fan-out) per
  core, and/or ``memory_bytes`` of core memory with the sizes of what it holds: one
  weight, one axon input (int8 values and spikes; int32 inputs take 4), one neuron's
  state, one bias, one int32 partial sum. ``conv_weights``: ``"shared"`` (a core stores a
  convolution's kernel once) or ``"unrolled"`` (a crossbar stores one weight per
  axon–neuron pair). ``mac_array``: ``[rows, columns]`` of multiply–accumulate units.
* ``neuron``: the soma's integer LIF — state width, longest refractory period, reset
  modes (``hard``, ``soft``, ``soft_constant``, ``none``), leak factor granularity
  (α = A / denominator), whether the threshold may adapt and the membrane saturate below.
* ``primitives``: weight width, shifts (requantization right shifts and the left shifts
  that align added operands: multiples of ``shift_granularity``, at most ``max_shift``),
  grouped convolution, max pooling, average pooling (``avg_pool``: window sums, the
  integer form of average pooling), element-wise addition of aligned int32 operands
  (``add``: residual connections), hybrid-unit codings and decodings, phases per time
  step. ``avg_pool`` and ``add`` may be left out (files written before they existed): they
  then read as ``false``. Concatenation needs no primitive: it is routing.
* ``noc``: routing algorithm (``"xy"``) and bytes of payload per packet.
* ``timing``/``energy``: the cost model of the report.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hnnx.errors import HnnxError

SCHEMA = "hnnx-chip-spec/1"
BUILTIN = ("tianjicx", "tianjic")


class ChipSpecError(HnnxError):
    """A chip spec file is missing, not JSON, or breaks the schema (the message names the field)."""


@dataclass(frozen=True)
class Figure:
    """One number (or setting) of a spec with its provenance."""

    value: Any
    source: str | None = None
    assumed: str | None = None

    @property
    def is_assumed(self) -> bool:
        return self.assumed is not None

    def to_json(self) -> dict[str, Any]:
        provenance = {"assumed": self.assumed} if self.is_assumed else {"source": self.source}
        return {"value": self.value, **provenance}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _subset_of(*choices: str) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(v in choices for v in value)


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda value: value in choices


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_positive_int(v) for v in value)


# section → field → (check, what a valid value is)
FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "mesh": {
        "width": (_positive_int, "a positive integer"),
        "height": (_positive_int, "a positive integer"),
        "chips_per_board": (_positive_int, "a positive integer"),
    },
    "core": {
        "max_axons": (_optional(_positive_int), "a positive integer or null"),
        "max_neurons": (_optional(_positive_int), "a positive integer or null"),
        "memory_bytes": (_optional(_positive_int), "a positive integer or null"),
        "weight_bytes": (_non_negative_number, "a number ≥ 0"),
        "axon_bytes": (_non_negative_number, "a number ≥ 0"),
        "state_bytes": (_non_negative_number, "a number ≥ 0"),
        "bias_bytes": (_non_negative_number, "a number ≥ 0"),
        "partial_sum_bytes": (_non_negative_number, "a number ≥ 0"),
        "conv_weights": (_one_of("shared", "unrolled"), '"shared" or "unrolled"'),
        "mac_array": (_pair, "[rows, columns] of positive integers"),
    },
    "neuron": {
        "state_bits": (lambda v: _positive_int(v) and 2 <= v <= 31, "an integer in [2, 31]"),
        "refractory_max": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer ≥ 0"),
        "reset_modes": (_subset_of("hard", "soft", "soft_constant", "none"),
                        'a list of "hard", "soft", "soft_constant", "none"'),
        "leak_alpha_denominator": (_positive_int, "a positive integer"),
        "threshold_adaptation": (_bool, "true or false"),
        "lower_saturation": (_bool, "true or false"),
    },
    "primitives": {
        "weight_bits": (lambda v: _positive_int(v) and v <= 8, "an integer in [1, 8]"),
        "shift_granularity": (_positive_int, "a positive integer"),
        "max_shift": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 30, "an integer in [0, 30]"),
        "group_conv": (_bool, "true or false"),
        "max_pool": (_bool, "true or false"),
        "avg_pool": (_bool, "true or false"),
        "add": (_bool, "true or false"),
        "a2s_codings": (_subset_of("direct", "rate"), 'a list of "direct", "rate"'),
        "s2a_decodings": (_subset_of("rate", "global"), 'a list of "rate", "global"'),
        "max_phases": (_positive_int, "a positive integer"),
    },
    "noc": {
        "routing": (_one_of("xy"), '"xy"'),
        "packet_payload_bytes": (_positive_int, "a positive integer"),
    },
    "timing": {
        "clock_hz": (lambda v: _non_negative_number(v) and v > 0, "a number > 0"),
        "cycles_per_neuron_update": (_non_negative_number, "a number ≥ 0"),
        "cycles_per_hop": (_non_negative_number, "a number ≥ 0"),
        "cycles_per_packet": (_non_negative_number, "a number ≥ 0"),
    },
    "energy": {
        "synop_joules": (_non_negative_number, "a number ≥ 0"),
        "mac_joules": (_non_negative_number, "a number ≥ 0"),
        "hop_joules": (_non_negative_number, "a number ≥ 0"),
        "static_watts": (_non_negative_number, "a number ≥ 0"),
    },
}


DEFAULTS: dict[tuple[str, str], Figure] = {
    ("primitives", "avg_pool"): Figure(False, assumed="not stated in the spec file: taken as unsupported"),
    ("primitives", "add"): Figure(False, assumed="not stated in the spec file: taken as unsupported"),
}
"""Figures a spec file may leave out, and what they then read as."""


@dataclass(frozen=True)
class ChipSpec:
    """A validated chip spec. ``figures[section][field]`` holds every figure; the
    properties below are the values the mapper and the cost model read."""

    name: str
    description: str
    figures: dict[str, dict[str, Figure]] = field(repr=False)

    def value(self, section: str, name: str) -> Any:
        return self.figures[section][name].value

    @property
    def cores_per_chip(self) -> int:
        return self.value("mesh", "width") * self.value("mesh", "height")

    def assumed_figures(self) -> list[str]:
        """``section.field`` of every figure marked assumed."""
        return [f"{section}.{name}" for section, group in self.figures.items()
                for name, figure in group.items() if figure.is_assumed]

    def to_json(self) -> dict[str, Any]:
        """The spec as its file holds it (round-trips through :func:`parse_spec`)."""
        return {"schema": SCHEMA, "name": self.name, "description": self.description,
                **{section: {name: fig.to_json() for name, fig in group.items()}
                   for section, group in self.figures.items()}}


def parse_spec(data: Any, source: str = "chip spec") -> ChipSpec:
    """Validate a spec object (see the module docstring); ChipSpecError names the field."""
    if not isinstance(data, dict):
        raise ChipSpecError(f"{source}: a chip spec must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise ChipSpecError(f"{source}: field 'schema' must be {SCHEMA!r}, got {data.get('schema')!r}")
    for key in ("name", "description"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ChipSpecError(f"{source}: field {key!r} must be a non-empty string")
    unknown = sorted(set(data) - {"schema", "name", "description", *FIELDS})
    if unknown:
        raise ChipSpecError(f"{source}: unknown field {unknown[0]!r}")
    figures: dict[str, dict[str, Figure]] = {}
    for section, fields in FIELDS.items():
        group = data.get(section)
        if not isinstance(group, dict):
            raise ChipSpecError(f"{source}: field {section!r} must be an object")
        extra = sorted(set(group) - set(fields))
        if extra:
            raise ChipSpecError(f"{source}: unknown field '{section}.{extra[0]}'")
        figures[section] = {}
        for name, (check, expected) in fields.items():
            where = f"{section}.{name}"
            raw = group.get(name)
            if raw is None and (section, name) in DEFAULTS:
                figures[section][name] = DEFAULTS[section, name]
                continue
            if not isinstance(raw, dict) or "value" not in raw:
                raise ChipSpecError(f"{source}: field {where!r} must be an object "
                                    f'{{"value": ..., "source": ...}} or {{"value": ..., "assumed": ...}}')
            provenance = {k for k in raw if k in ("source", "assumed")}
            if len(provenance) != 1 or not isinstance(raw[provenance.pop()], str) or set(raw) - {
                    "value", "source", "assumed"}:
                raise ChipSpecError(f"{source}: field {where!r} needs exactly one of 'source' (where the figure "
                                    f"is published) or 'assumed' (why it is assumed), as a string")
            if not check(raw["value"]):
                raise ChipSpecError(f"{source}: field {where!r} must be {expected}, got {raw['value']!r}")
            figures[section][name] = Figure(raw["value"], raw.get("source"), raw.get("assumed"))
    core = figures["core"]
    if all(core[k].value is None for k in ("max_axons", "max_neurons", "memory_bytes")):
        raise ChipSpecError(f"{source}: field 'core' needs at least one of max_axons, max_neurons, memory_bytes")
    return ChipSpec(data["name"], data["description"], figures)


def load_spec(chip: str | os.PathLike | ChipSpec) -> ChipSpec:
    """A built-in spec by name (``tianjicx``, ``tianjic``) or a spec file ``FILE.json``."""
    if isinstance(chip, ChipSpec):
        return chip
    text_name = str(chip)
    if text_name in BUILTIN:
        resource = importlib.resources.files("hnnx.chip").joinpath("specs", f"{text_name}.json")
        return parse_spec(json.loads(resource.read_text(encoding="utf-8")), f"built-in chip {text_name}")
    path = Path(chip)
    if path.suffix != ".json":
        raise ChipSpecError(f"unknown chip {text_name!r}: use {', '.join(BUILTIN)} or a spec file FILE.json")
    if not path.is_file():
        raise ChipSpecError(f"{path}: no such chip spec file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChipSpecError(f"{path}: not JSON ({exc})") from None
    return parse_spec(data, str(path))
