"""hnnx — hybrid ANN/SNN networks as ONNX graphs: simulate, quantize and lower to neuromorphic chips.

>>> import hnnx
>>> model = hnnx.load("model.onnx")
>>> result = hnnx.simulate(model, "test.npz")
>>> print(result.summary())
>>> quantized, report = hnnx.quantize(model, "calib.npz", target="tianjicx")
>>> program = hnnx.lower(quantized, chip="tianjicx")           # hnnx.chip.simulate(program, "test.npz")
"""

from hnnx.errors import DataError, HnnxError, ModelError, NodeError
from hnnx.model import load, save
from hnnx.quantization import QuantizationReport, quantize
from hnnx.runtime import SimulationResult, Simulator, Stream, simulate
from hnnx.chip import lower
from hnnx import datasets, models  # the bundled digits and trained models (hnnx.models.path(name))

__version__ = "0.1.0"

__all__ = ["load", "save", "simulate", "quantize", "lower", "Simulator", "SimulationResult", "Stream",
           "QuantizationReport",
           "datasets", "models", "HnnxError", "ModelError",
           "NodeError", "DataError", "__version__"]
