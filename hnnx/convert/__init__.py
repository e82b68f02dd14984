"""ANN → SNN conversion and hybrid ANN/SNN partitioning as graph passes (``hnnx convert``).

:func:`to_snn` turns a float ReLU network into a spiking one — IF/LIF neurons with soft reset,
thresholds balanced on calibrated activation ranges, an input coder and a rate readout —
and :func:`hybridize` keeps the part before a chosen layer as ANN. The passes are in
:mod:`hnnx.convert.snn`, the analysis of what changes in :mod:`hnnx.convert.plan`.
"""

from hnnx.convert.plan import ConversionPlan, LayerPlan, plan_conversion
from hnnx.convert.snn import (CODINGS, OBSERVERS, ConversionReport, Converter, NeuronChoice, hybridize, plot_curve,
                             print_curve, to_snn)

__all__ = ["to_snn", "hybridize", "Converter", "ConversionReport", "NeuronChoice", "ConversionPlan", "LayerPlan",
           "plan_conversion", "CODINGS", "OBSERVERS", "print_curve", "plot_curve"]
