"""hnnx — hybrid ANN/SNN networks as ONNX graphs: simulate, quantize and lower to neuromorphic chips."""

__version__ = "0.1.0"
