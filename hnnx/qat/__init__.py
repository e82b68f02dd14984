"""Training hnnx graphs in torch: quantization-aware fine-tuning from the ONNX graph itself.

:func:`to_torch` builds a trainable :class:`GraphModule` from a float or ``tianjicx`` fake-quant
hnnx graph — standard ops as torch kernels with straight-through estimators for the fake-quant
nodes, hnnx nodes through their declarations' torch forward (surrogate gradients) — and
:meth:`GraphModule.write_back` writes the trained weights into the same graph; :func:`finetune` is
the training loop of ``hnnx finetune``.
"""

from hnnx.qat.finetune import LOSSES, EpochRecord, FinetuneResult, finetune
from hnnx.qat.module import GraphModule, to_torch

__all__ = ["GraphModule", "to_torch", "finetune", "FinetuneResult", "EpochRecord", "LOSSES"]
