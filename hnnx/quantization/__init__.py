"""Post-training quantization: ``hnnx.quantize(model, calibration_data) → (quantized model, report)``.

Pipeline: :func:`hnnx.passes.preprocess` → :func:`hnnx.calibrate.calibrate` (ranges of every
float tensor, firing rates, LIF currents and membranes) → a target's rewrite
(``tianjicx``: :mod:`hnnx.quantization.tianjicx`; ``qdq``: :mod:`hnnx.quantization.qdq`)
→ a checked model whose hnnx nodes carry their function bodies, plus a report.
"""

from hnnx.quantization.api import FORMATS, TARGETS, QuantizationReport, output_scales, quantize

__all__ = ["FORMATS", "TARGETS", "QuantizationReport", "output_scales", "quantize"]
