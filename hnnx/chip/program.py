"""The chip program: a directory with ``program.json`` and ``weights.npz``.

``program.json`` (format ``hnnx-chip-program``, version 1) holds:

* ``chip`` — the chip spec (:mod:`hnnx.chip.spec`) and ``chips`` — how many are used;
* ``model`` — graph inputs and outputs, time steps, the layers (name, kind, group, size,
  element-wise ``stages`` with the soma fields as the chip names them — P08's ``Vth0``,
  ``Vleaky_alpha = round(256·α)``, ``reset_mode``, ``Ref_len`` …);
* ``cores`` — one per tile: ``id``, ``chip``, mesh ``x``/``y``, ``layer``, ``role``
  (``compute``, ``partial``, ``merge``, ``encode``, ``decode``, ``pool``, ``add``),
  ``neurons`` (output neurons of the layer it computes), ``axons`` (inputs it holds),
  ``parts`` (partial sums a merge core adds), ``memory_bytes``; its arrays live in
  ``weights.npz`` under ``core<id>.<name>``: ``neurons`` and ``axons`` (the neuron map and the
  axon map: which layer output and which layer input each holds), ``weights`` [axons,
  neurons] int8 (convolutions unrolled), ``bias``, ``mask`` (pooling windows: the max or the
  sum of each neuron's masked axons, by the layer's kind), ``shifts`` (an add core's left
  shift of each axon value before the operands are summed: ``Σ_j axon[j·n + i]·2^shift``);
* ``routes`` — the routing tables: from a core (or the ``host``) to a core (or the host):
  ``stage`` of the source's value, emission ``slot`` (−1: every emission), ``kind``
  (``value`` or ``psum``), ``count``, ``hops`` and the XY ``path``; arrays
  ``route<id>.src`` (source-local neuron) and ``route<id>.dst`` (destination axon);
* ``schedule`` — ``prologue``, ``step`` and ``epilogue`` phases, each a list of
  ``{"core": id, "action": ...}`` (and ``{"host": layer, "action": "inject"}``);
* ``readouts`` — how the host assembles each graph output (and probe-able tensor) from
  layer outputs (arrays ``readout.<name>.neuron/slot``);
* ``hashes`` — SHA-256 of ``weights.npz`` and of the canonical JSON of the rest.

:func:`load_program` checks the format, version, hashes and bounds before anything uses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hnnx.chip.graph import MAX_ALIGN_SHIFT
from hnnx.chip.spec import parse_spec
from hnnx.errors import HnnxError

FORMAT = "hnnx-chip-program"
VERSION = 1
PROGRAM_FILE = "program.json"
WEIGHTS_FILE = "weights.npz"
ROLES = ("compute", "partial", "merge", "encode", "decode", "pool", "add")



class ProgramError(HnnxError):
    """A program directory is missing, corrupt or inconsistent (the message names the field)."""


@dataclass
class Program:
    """A lowered model: ``meta`` (the JSON document) and ``arrays`` (the npz contents)."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def cores(self) -> list[dict[str, Any]]:
        return self.meta["cores"]

    @property
    def routes(self) -> list[dict[str, Any]]:
        return self.meta["routes"]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.meta["model"]["layers"]

    @property
    def steps(self) -> int:
        return int(self.meta["model"]["steps"])

    def array(self, key: str) -> np.ndarray:
        try:
            return self.arrays[key]
        except KeyError:
            raise ProgramError(f"{WEIGHTS_FILE}: missing array {key!r}") from None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``program.json`` and ``weights.npz`` into ``directory`` atomically: the
        directory is built beside the target and renamed into place."""
        directory = Path(directory)
        parent = directory.parent if str(directory.parent) else Path(".")
        if not parent.is_dir():
            raise ProgramError(f"{directory}: directory {parent} does not exist")
        if directory.exists() and not (directory / PROGRAM_FILE).is_file() and any(directory.iterdir()):
            raise ProgramError(f"{directory}: exists and is not a program directory (not overwritten)")
        weights = _npz_bytes(self.arrays)
        meta = dict(self.meta)
        meta["hashes"] = {WEIGHTS_FILE: hashlib.sha256(weights).hexdigest(), PROGRAM_FILE: _meta_hash(meta)}
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
        try:
            (staging / WEIGHTS_FILE).write_bytes(weights)
            (staging / PROGRAM_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.chmod(staging, 0o777 & ~_umask())
            if directory.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=parent))
                os.replace(directory, old / "program")
                os.replace(staging, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.meta = meta
        return directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{key: arrays[key] for key in sorted(arrays)})
    return buffer.getvalue()


def _meta_hash(meta: dict[str, Any]) -> str:
    body = {key: value for key, value in meta.items() if key != "hashes"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_program(directory: str | os.PathLike) -> Program:
    """Read a program directory, verifying format, version, hashes and bounds.

    Raises ProgramError naming the file and field at fault.
    """
    directory = Path(directory)
    meta_path, weights_path = directory / PROGRAM_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise ProgramError(f"{directory}: not a program directory (needs {PROGRAM_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProgramError(f"{meta_path}: not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ProgramError(f"{meta_path}: field 'format' must be {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ProgramError(f"{meta_path}: field 'version' is {meta.get('version')!r}; this hnnx reads version {VERSION}")
    hashes = meta.get("hashes")
    if not isinstance(hashes, dict):
        raise ProgramError(f"{meta_path}: field 'hashes' is missing")
    if hashes.get(PROGRAM_FILE) != _meta_hash(meta):
        raise ProgramError(f"{meta_path}: content hash mismatch (the file was edited or is corrupt)")
    weights = weights_path.read_bytes()
    if hashes.get(WEIGHTS_FILE) != hashlib.sha256(weights).hexdigest():
        raise ProgramError(f"{weights_path}: content hash mismatch (the file was edited or is corrupt)")
    with np.load(io.BytesIO(weights), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    program = Program(meta, arrays)
    validate(program, str(meta_path))
    return program


def _need(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ProgramError(f"{where}: {message}")


def validate(program: Program, where: str = "program") -> None:
    """Schema and bound checks of a program (cores on the mesh, routes within the arrays)."""
    meta = program.meta
    for key in ("chip", "chips", "model", "cores", "routes", "schedule", "readouts"):
        _need(key in meta, where, f"field {key!r} is missing")
    spec = parse_spec(meta["chip"], f"{where}: field 'chip'")
    chips = meta["chips"]
    _need(isinstance(chips, int) and 1 <= chips <= spec.value("mesh", "chips_per_board"), where,
          f"field 'chips' must lie in [1, {spec.value('mesh', 'chips_per_board')}]")
    width, height = spec.value("mesh", "width"), spec.value("mesh", "height")
    layers = meta["model"].get("layers")
    _need(isinstance(layers, list) and layers, where, "field 'model.layers' must be a non-empty list")
    seen: set[tuple[int, int, int]] = set()
    sizes: dict[int, tuple[int, int]] = {}
    for index, core in enumerate(meta["cores"]):
        at = f"field 'cores[{index}]'"
        _need(core.get("id") == index, where, f"{at}.id must be {index}")
        _need(core.get("role") in ROLES, where, f"{at}.role must be one of {', '.join(ROLES)}")
        _need(isinstance(core.get("layer"), int) and 0 <= core["layer"] < len(layers), where, f"{at}.layer out of range")
        place = (core.get("chip"), core.get("x"), core.get("y"))
        _need(isinstance(place[0], int) and 0 <= place[0] < chips and isinstance(place[1], int)
              and 0 <= place[1] < width and isinstance(place[2], int) and 0 <= place[2] < height, where,
              f"{at} is placed at chip {place[0]} ({place[1]}, {place[2]}), outside {chips} chip(s) of "
              f"{width} x {height}")
        _need(place not in seen, where, f"{at} shares its place with another core")
        seen.add(place)
        neurons = program.array(f"core{index}.neurons")
        _need(neurons.ndim == 1 and neurons.size == core.get("neurons") and neurons.size > 0
              and neurons.min() >= 0 and neurons.max() < layers[core["layer"]]["size"], where,
              f"{at}.neurons does not match core{index}.neurons")
        sizes[index] = (int(core.get("axons", 0)), int(neurons.size))
        if core["role"] != "merge":
            axons = program.array(f"core{index}.axons")
            _need(axons.shape == (core.get("axons"),) and (axons.size == 0 or (
                axons.min() >= 0 and axons.max() < layers[core["layer"]]["input_size"])), where,
                  f"{at}.axons does not match core{index}.axons")
        if core["role"] in ("compute", "partial"):
            weights = program.array(f"core{index}.weights")
            _need(weights.shape == (core["axons"], neurons.size) and weights.dtype == np.int8, where,
                  f"{at}: core{index}.weights must be int8 [{core['axons']}, {neurons.size}]")
        if core["role"] != "partial" and any(s["op"] == "bias" for s in layers[core["layer"]]["stages"]):
            bias = program.array(f"core{index}.bias")
            _need(bias.shape == (neurons.size,) and bias.dtype == np.int32, where,
                  f"{at}: core{index}.bias must be int32 [{neurons.size}]")
        if core["role"] == "pool":
            mask = program.array(f"core{index}.mask")
            _need(mask.shape == (core["axons"], neurons.size) and mask.dtype == bool, where,
                  f"{at}: core{index}.mask must be bool [{core['axons']}, {neurons.size}]")
        if core["role"] == "add":
            shifts = program.array(f"core{index}.shifts")
            _need(core["axons"] % neurons.size == 0 and shifts.shape == (core["axons"],) and shifts.dtype == np.int8
                  and (shifts.size == 0 or (shifts.min() >= 0 and shifts.max() <= MAX_ALIGN_SHIFT)), where,
                  f"{at}: core{index}.shifts must be int8 in [0, {MAX_ALIGN_SHIFT}], one per axon (a whole number of "
                  f"operands of {neurons.size} values)")
    for index, route in enumerate(meta["routes"]):
        at = f"field 'routes[{index}]'"
        src, dst = program.array(f"route{index}.src"), program.array(f"route{index}.dst")
        _need(src.shape == dst.shape == (route.get("count"),), where, f"{at}: arrays do not hold {route.get('count')} entries")
        if route.get("src") is not None:
            _need(route["src"] in sizes, where, f"{at}.src is not a core")
            _need(src.size == 0 or (src.min() >= 0 and src.max() < sizes[route["src"]][1]), where,
                  f"{at}: source neuron out of range")
        if route.get("dst") is not None:
            _need(route["dst"] in sizes, where, f"{at}.dst is not a core")
            limit = sizes[route["dst"]][0]
            _need(dst.size == 0 or (dst.min() >= 0 and dst.max() < limit), where, f"{at}: destination axon out of range")
    for group in ("prologue", "step", "epilogue"):
        phases = meta["schedule"].get(group)
        _need(isinstance(phases, list), where, f"field 'schedule.{group}' must be a list of phases")
        for phase in phases:
            for entry in phase:
                _need(("core" in entry and entry["core"] in sizes) or "host" in entry, where,
                      f"field 'schedule.{group}' names an unknown core")
