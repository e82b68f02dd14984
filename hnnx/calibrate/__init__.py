"""Calibration: stream data through a model and collect the statistics quantization needs.

This package only *measures*; the graph passes in :mod:`hnnx.passes` turn the statistics into
quantization parameters (the split of onnxruntime.quantization's calibrators and quantizers).

* :mod:`~hnnx.calibrate.readers` — :func:`batches` streams validated feeds from ``.npz``/``.npy``
  files or folders (memory-mapped), dicts of arrays, generators and torch DataLoaders;
* :mod:`~hnnx.calibrate.observers` — :class:`MinMaxObserver`, :class:`PercentileObserver`,
  :class:`EntropyObserver` and :class:`MSEObserver`, per tensor or per channel, whose state does
  not grow with the number of samples (fixed-size histograms of ``|x|``, no kept samples);
* :mod:`~hnnx.calibrate.collect` — :func:`calibrate` runs the model in onnxruntime with the
  chosen tensors probed, feeds one observer per tensor, and records the input-current range and
  firing rate of every LIF layer.

Example::

    from hnnx.calibrate import calibrate

    result = calibrate(model, "calib.npz", ["conv1_out", "fc_out"], observer="percentile",
                       observer_options={"percentile": 99.99}, per_channel={"conv1_out": 1})
    result.absmax("fc_out")          # clip threshold T > 0: float, or an array per channel
"""

from hnnx.calibrate.collect import CalibrationResult, calibrate
from hnnx.calibrate.observers import (OBSERVERS, EntropyObserver, HistogramObserver, MinMaxObserver, MSEObserver,
                                      Observer, PercentileObserver, make_observer)
from hnnx.calibrate.readers import BatchStream, batches

__all__ = [
    "calibrate", "CalibrationResult",
    "Observer", "HistogramObserver", "MinMaxObserver", "PercentileObserver", "EntropyObserver", "MSEObserver",
    "OBSERVERS", "make_observer",
    "batches", "BatchStream",
]
