"""Exporters from hnnx graphs to other formats.

* :mod:`hnnx.interop.bimap` — a ``tianjicx``/``int`` model in the ONNX dialect that BiMap,
  the TianjicX compiler, reads (:func:`export_bimap`, :func:`write_bimap`);
* :mod:`hnnx.interop.bimap_reference` — a numpy interpreter of that dialect, one time step
  at a time, with the host loop around it (:class:`BimapInterpreter`, :func:`run_host_loop`);
* :mod:`hnnx.interop.nir` — a float hnnx model as a NIR graph (:func:`~hnnx.interop.nir.export_nir`),
  on :mod:`hnnx.interop.nir_file` (the ``.nir`` file and the discretisation import and export share).
"""

from hnnx.interop.bimap import BimapReport, export_bimap, write_bimap
from hnnx.interop.bimap_reference import BimapInterpreter, run_host_loop

__all__ = ["BimapReport", "export_bimap", "write_bimap", "BimapInterpreter", "run_host_loop"]
