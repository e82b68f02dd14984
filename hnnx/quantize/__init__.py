"""Post-training quantization: ``quantize(model, calibration_data) → (quantized model, report)``.

Pipeline: :func:`hnnx.passes.preprocess` → :func:`hnnx.calibrate.calibrate` (ranges of every
float tensor, firing rates) → a target's rewrite (``tianjicx``: :mod:`hnnx.quantize.tianjicx`)
→ a checked model whose hnnx nodes carry their function bodies, plus a report.
"""

from hnnx.quantize.api import QuantizationReport, quantize

__all__ = ["QuantizationReport", "quantize"]
