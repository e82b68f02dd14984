"""Running hnnx models in onnxruntime: sessions, datasets and batched simulation."""

from hnnx.runtime.data import Dataset, TensorSpec, load_dataset, read_arrays
from hnnx.runtime.session import Simulator
from hnnx.runtime.simulate import SimulationResult, accuracy, simulate
from hnnx.runtime.stream import Stream, StreamState

__all__ = ["Dataset", "TensorSpec", "load_dataset", "read_arrays", "Simulator", "SimulationResult",
           "accuracy", "simulate", "Stream", "StreamState"]
