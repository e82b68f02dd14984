"""Post-training quantization: ``hnnx.quantize(model, calibration_data) → (quantized model, report)``.

Pipeline: :func:`hnnx.passes.preprocess_graph` (intake and clean-up passes, one graph kept) →
:func:`hnnx.calibrate.calibrate` (ranges of every float tensor, firing rates, LIF currents and
membranes) → a target's rewrite of that graph (``tianjicx``: :mod:`hnnx.quantization.tianjicx`;
``qdq``: :mod:`hnnx.quantization.qdq`; both implement :class:`~hnnx.quantization.common.QuantizationTarget`)
→ a model whose hnnx nodes carry their function bodies, plus a report with the float-vs-quantized
error of every output and every quantized tensor.
"""

from hnnx.quantization.api import (FORMATS, TARGETS, QuantizationReport, is_fakequant, output_scales, quantize,
                                   quantized_as)

__all__ = ["FORMATS", "TARGETS", "QuantizationReport", "is_fakequant", "output_scales", "quantize", "quantized_as"]
