"""Graph passes: small named rewrites over the ONNX graph, composed by :func:`run_passes`.

Each pass declares what it works on (graph or model) and returns whether it changed anything
(:mod:`hnnx.passes.manager` states the contract).

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
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.passes.batchnorm import fold_batchnorm
from hnnx.passes.cleanup import remove_identities
from hnnx.passes.constants import fold_constants, infer_shapes
from hnnx.passes.manager import (FixedPoint, Pass, apply_passes, export_graph, fixed_point, graph_pass,
                                 import_graph, model_pass, run_passes)
from hnnx.passes.time import fold_time

PREPROCESS: tuple[Pass, ...] = (infer_shapes, remove_identities, fold_constants, fold_batchnorm, fold_time)
"""The pre-processing pipeline that quantization starts with."""


def preprocess(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run :data:`PREPROCESS` on ``model``; returns a new model computing the same function."""
    return run_passes(model, PREPROCESS)


def preprocess_graph(model: onnx.ModelProto) -> gs.Graph:
    """:data:`PREPROCESS` on ``model``, kept as the graph a pipeline goes on rewriting: the model
    passes on a copy of the protobuf, one import, the graph passes, one cleanup (no export)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    ops.attach_functions(copy)  # validates hnnx nodes
    head = [p for p in PREPROCESS if p.kind == "model"]
    for p in head:
        p(copy)
    graph = import_graph(copy)
    apply_passes(graph, [p for p in PREPROCESS if p.kind == "graph"])
    graph.cleanup(recurse_subgraphs=True).toposort()
    return graph


__all__ = ["FixedPoint", "Pass", "PREPROCESS", "apply_passes", "export_graph", "fixed_point", "fold_batchnorm",
           "fold_constants", "fold_time", "graph_pass", "import_graph", "infer_shapes", "model_pass", "preprocess",
           "preprocess_graph", "remove_identities", "run_passes"]
