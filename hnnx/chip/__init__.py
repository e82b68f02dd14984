"""Lowering integer graphs onto many-core neuromorphic chips (Tianjic, TianjicX, your own).

>>> import hnnx
>>> program = hnnx.lower("model_int.onnx", chip="tianjicx")   # or chip="my_chip.json"
>>> program.save("program/")
>>> result = hnnx.chip.simulate("program/", "test.npz")       # bit-exact to hnnx.simulate
>>> print(hnnx.chip.chip_report(program).markdown())

* :mod:`hnnx.chip.spec` — chip specs as data (``specs/*.json``, schema in the module doc);
* :mod:`hnnx.chip.graph` — the integer graph as chip layers;
* :mod:`hnnx.chip.mapper` — tiles, placement, XY routes, phase schedule → :class:`Program`;
* :mod:`hnnx.chip.program` — the program directory (``program.json`` + ``weights.npz``);
* :mod:`hnnx.chip.simulator` — the chip simulator and :func:`verify`;
* :mod:`hnnx.chip.report` — cores, traffic, latency and energy estimates; placement plot.
"""

from hnnx.chip.graph import MappingError
from hnnx.chip.mapper import integer_model, lower
from hnnx.chip.program import Program, ProgramError, load_program
from hnnx.chip.report import ChipReport, chip_report, plot_placement
from hnnx.chip.simulator import VerificationError, simulate, verify
from hnnx.chip.spec import BUILTIN, ChipSpec, ChipSpecError, load_spec, parse_spec

__all__ = ["lower", "integer_model", "simulate", "verify", "Program", "load_program", "ChipSpec", "load_spec",
           "parse_spec", "BUILTIN", "ChipReport", "chip_report", "plot_placement", "MappingError", "ProgramError",
           "ChipSpecError", "VerificationError"]
