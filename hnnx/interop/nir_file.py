"""The NIR file (``.nir``, HDF5) and the time discretisation hnnx applies to NIR's ODEs.

NIR (Neuromorphic Intermediate Representation, neuroir.org) stores a graph of
continuous-time nodes. The file: a string dataset ``version`` and a group ``node`` holding the
top graph; every node group has a string dataset ``type`` (``"LIF"``, ``"Affine"``, ...) and
one dataset per parameter; a graph (``"NIRGraph"``) has a group ``nodes`` of named node groups,
a dataset ``edges`` (``E × 2`` byte strings, source then target) and an optional ``metadata``
group. ``Input``/``Output`` nodes store ``shape``. Shapes are per sample (no batch, no time).

hnnx reads and writes the file with ``h5py`` alone (``pip install 'hnnx[nir]'``), so importing
and exporting NIR needs neither the ``nir`` package nor any simulator. This module holds the
file format (:func:`read_nir`, :func:`write_nir`, :class:`NirGraph`, :class:`NirNode`) and the
one definition of the discretisation both directions use (:class:`Discretisation`).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hnnx.errors import HnnxError, ModelError

NIR_VERSION = "1.0.8"
"""The NIR release whose file format hnnx writes (read back by ``nir.read`` in the tests)."""

GAIN_DOC = "hnnx.nir: the input gain of the neuron it feeds"
"""``doc_string`` of the ``Mul`` the importer writes for a NIR neuron's input gain (``r``, ``w_in``);
the exporter gives that factor back to the neuron (any other ``Mul`` by a constant is a Scale)."""

SCHEMES = ("euler", "exp")
"""Discretisation schemes: forward Euler (snnTorch's and Norse's) and exponential Euler."""


class NirFormatError(ModelError):
    """A NIR file is unreadable or inconsistent; the message names the file and the node or field."""


@dataclass
class NirNode:
    """One NIR node: its ``type`` (e.g. ``"CubaLIF"``) and its parameters (numpy arrays,
    numbers or strings, as stored). A graph node (``type == "NIRGraph"``) is a :class:`NirGraph`."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def array(self, name: str, where: str, default: Any = None) -> np.ndarray:
        """Parameter ``name`` as a float64 array; NirFormatError naming ``where`` if it is absent
        (and no ``default`` is given) or not numeric."""
        if name not in self.params:
            if default is None:
                raise NirFormatError(f"{where}: {self.type} node has no parameter {name!r}")
            return np.asarray(default, np.float64)
        value = self.params[name]
        try:
            array = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            raise NirFormatError(f"{where}: {self.type} parameter {name!r} is not numeric: {value!r}") from None
        if not np.all(np.isfinite(array)):
            raise NirFormatError(f"{where}: {self.type} parameter {name!r} holds NaN or infinity")
        return array


@dataclass
class NirGraph(NirNode):
    """A NIR graph: named nodes (possibly graphs themselves) and ``(source, target)`` edges."""

    type: str = "NIRGraph"
    nodes: dict[str, NirNode] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------- reading
def read_nir(path: str | os.PathLike) -> tuple[NirGraph, str]:
    """The graph and the format version of the NIR file ``path``; NirFormatError (naming the
    file and the node or field) if it cannot be read as one."""
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise NirFormatError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as handle:
            version = _text(handle["version"][()]) if "version" in handle else "unknown"
            if "node" not in handle:
                raise NirFormatError(f"{path}: not a NIR file (no group 'node')")
            graph = _read_node(handle["node"], str(path), "")
    except OSError as exc:
        raise NirFormatError(f"{path}: not an HDF5 file ({exc})") from None
    if not isinstance(graph, NirGraph):
        raise NirFormatError(f"{path}: the top node is a {graph.type}, not a NIRGraph")
    return graph, version


def _read_node(group: Any, source: str, name: str) -> NirNode:
    h5py = _h5py()
    where = f"{source}: node {name!r}" if name else source
    if "type" not in group:
        raise NirFormatError(f"{where}: no 'type' field")
    kind = _text(group["type"][()])
    metadata = {key: _value(item[()]) for key, item in group["metadata"].items()} if "metadata" in group else {}
    if kind == "NIRGraph":
        if "nodes" not in group:
            raise NirFormatError(f"{where}: NIRGraph without 'nodes'")
        nodes = {key: _read_node(item, source, f"{name}.{key}" if name else key)
                 for key, item in group["nodes"].items()}
        edges_raw = group["edges"][()] if "edges" in group else np.zeros((0, 2), object)
        edges_raw = np.asarray(edges_raw, dtype=object).reshape(-1, 2) if np.size(edges_raw) else []
        edges = [(_text(a), _text(b)) for a, b in edges_raw]
        return NirGraph(kind, {}, metadata, nodes, edges)
    params = {key: _value(item[()]) for key, item in group.items()
              if key not in ("type", "metadata") and isinstance(item, h5py.Dataset)}
    return NirNode(kind, params, metadata)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def _value(value: Any) -> Any:
    """A dataset's value: strings decoded, numbers and arrays as numpy values."""
    if isinstance(value, (bytes, str)):
        return _text(value)
    return value


# ---------------------------------------------------------------------------- writing
def write_nir(graph: NirGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` as a NIR file (atomically: a temporary file, then a rename)."""
    from hnnx.model import write_atomic

    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.create_dataset("version", data=NIR_VERSION, dtype=h5py.string_dtype())
        _write_node(handle.create_group("node"), graph)
    write_atomic(path, buffer.getvalue())


def _write_node(group: Any, node: NirNode) -> None:
    h5py = _h5py()
    group.create_dataset("type", data=node.type, dtype=h5py.string_dtype())
    if node.metadata:
        meta = group.create_group("metadata")
        for key, value in node.metadata.items():
            _write_value(meta, key, value)
    if isinstance(node, NirGraph):
        nodes = group.create_group("nodes")
        for name, child in node.nodes.items():
            _write_node(nodes.create_group(name), child)
        edges = np.array([[a.encode(), b.encode()] for a, b in node.edges], dtype=object).reshape(-1, 2)
        group.create_dataset("edges", data=edges, dtype=h5py.string_dtype())
        return
    for key, value in node.params.items():
        _write_value(group, key, value)


def _write_value(group: Any, key: str, value: Any) -> None:
    h5py = _h5py()
    if isinstance(value, str):
        group.create_dataset(key, data=value, dtype=h5py.string_dtype())
    elif isinstance(value, np.ndarray) and value.ndim > 0:
        group.create_dataset(key, data=value, compression="gzip")
    else:
        group.create_dataset(key, data=value)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise HnnxError("reading and writing NIR files needs h5py: pip install 'hnnx[nir]'") from None
    return h5py


# ---------------------------------------------------------------------------- discretisation
@dataclass(frozen=True)
class Discretisation:
    """How NIR's continuous-time neurons become hnnx's discrete steps of ``dt`` (the unit of NIR's
    time constants, e.g. seconds; NIR itself stores no ``dt``).

    For ``τ dv/dt = −v + X``, one step multiplies ``v`` by :meth:`decay` and adds :meth:`gain`
    times ``X``:

    * ``euler`` (forward Euler, what snnTorch and Norse do): ``decay = 1 − dt/τ``,
      ``gain = dt/τ``; needs ``dt ≤ τ``;
    * ``exp`` (exponential Euler: exact for an input held constant over the step):
      ``decay = exp(−dt/τ)``, ``gain = 1 − exp(−dt/τ)``.

    For ``dv/dt = X`` (NIR's ``IF`` and ``I``) both give ``v + dt·X``.
    """

    dt: float
    scheme: str = "euler"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise HnnxError(f"dt must be a positive number of NIR time units (e.g. 1e-4 s), got {self.dt}")
        if self.scheme not in SCHEMES:
            raise HnnxError(f"unknown discretisation scheme {self.scheme!r} (known: {', '.join(SCHEMES)})")

    def decay(self, tau: np.ndarray) -> np.ndarray:
        """The factor one step multiplies the state by (float64)."""
        ratio = self.dt / tau
        return 1.0 - ratio if self.scheme == "euler" else np.exp(-ratio)

    def gain(self, tau: np.ndarray) -> np.ndarray:
        """The factor one step adds the drive ``X`` of ``τ dv/dt = −v + X`` with (float64)."""
        ratio = self.dt / tau
        return ratio if self.scheme == "euler" else -np.expm1(-ratio)

    def tau(self, decay: np.ndarray) -> np.ndarray:
        """The time constant whose :meth:`decay` is ``decay`` (the inverse, for export)."""
        decay = np.asarray(decay, np.float64)
        return self.dt / (1.0 - decay) if self.scheme == "euler" else -self.dt / np.log(decay)

    def describe(self) -> str:
        if self.scheme == "euler":
            return f"forward Euler at dt = {self.dt:g}: decay 1 − dt/τ, input gain dt/τ"
        return f"exponential Euler at dt = {self.dt:g}: decay exp(−dt/τ), input gain 1 − exp(−dt/τ)"
