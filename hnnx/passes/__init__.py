"""Graph passes: small named rewrites over the ONNX graph, composed by :func:`run_passes`.

| pass | kind | what it does |
|---|---|---|
| ``infer_shapes`` | model | annotate every tensor with its type and shape |
| ``remove_identities`` | graph | bypass Identity and inference-mode Dropout |
| ``fold_constants`` | graph | precompute constant subgraphs (hnnx nodes kept) |
| ``fold_batchnorm`` | graph | fold BatchNormalization into Conv/Gemm/MatMul |
| ``fold_time`` | graph | run per-frame ops on ``[T, N, ...]`` as ``[T·N, ...]`` |

``preprocess(model)`` runs them all, in that order.
"""

from __future__ import annotations

import onnx

from hnnx.passes.batchnorm import fold_batchnorm
from hnnx.passes.cleanup import remove_identities
from hnnx.passes.constants import fold_constants, infer_shapes
from hnnx.passes.manager import GraphPass, ModelPass, Pass, model_pass, run_passes
from hnnx.passes.time import fold_time

PREPROCESS: tuple[Pass, ...] = (infer_shapes, remove_identities, fold_constants, fold_batchnorm, fold_time)
"""The pre-processing pipeline that quantization starts with."""


def preprocess(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run :data:`PREPROCESS` on ``model``; returns a new model computing the same function."""
    return run_passes(model, PREPROCESS)


__all__ = ["GraphPass", "ModelPass", "Pass", "PREPROCESS", "fold_batchnorm", "fold_constants", "fold_time",
           "infer_shapes", "model_pass", "preprocess", "remove_identities", "run_passes"]
