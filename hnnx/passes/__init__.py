"""Graph passes: small named rewrites over the ONNX graph, composed by :func:`run_passes`.

Each pass declares what it works on (graph or model) and returns whether it changed anything
(:mod:`hnnx.passes.manager` states the contract).

| pass | kind | what it does |
|---|---|---|
| ``infer_shapes`` | model | annotate every tensor with its type and shape |
| ``remove_identities`` | graph | bypass Identity and inference-mode Dropout |
| ``fold_neurons`` | graph | a custom ``hnnx.Neuron`` whose step is an ``hnnx.LIF`` becomes that LIF |
| ``fold_constants`` | graph | precompute constant subgraphs (hnnx nodes kept) |
| ``fold_batchnorm`` | graph | fold BatchNormalization into Conv/Gemm/MatMul |
| ``decompose_batchnorm`` | graph | the BatchNormalizations left become a per-channel ``Mul`` + ``Add`` |
| ``fold_time`` | graph | run per-frame ops on ``[T, N, ...]`` as ``[T·N, ...]`` |
| ``stepwise`` | model | the stateful form: K steps per call, every node's state a graph input/output |
| ``event_driven(rates, mode)`` | graph | spike-input layers become ``hnnx.SpikeMatMul``/``hnnx.SpikeConv`` where the firing rate pays (not in ``preprocess``: simulation applies it) |
| ``integer_as_float(keep)`` | graph | integer layers whose sums stay below 2^24 run as exact float layers (simulation) |
| ``hoist_repeated(keep)`` | graph | a Conv/dense layer on a frame repeated over time (direct coding: ``Expand``, or an A2S whose steps are all the same) runs once per frame, its result repeated — or, for a LIF reading it, given as one step's current (``steps``) (simulation; ``time.repeated_currents`` undoes the latter) |

``preprocess(model)`` runs them all, in that order, after the intake passes
(:mod:`hnnx.passes.intake`: hnnx opset check, initializers listed as inputs, opset upgrade,
symbolic batch; :func:`intake_passes`).
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.passes.batchnorm import decompose_batchnorm, fold_batchnorm
from hnnx.passes.events import event_driven, integer_as_float
from hnnx.passes.cleanup import remove_identities
from hnnx.passes.constants import fold_constants, infer_shapes
from hnnx.passes.intake import (Notes, check_hnnx_opset, drop_initializer_inputs, make_batch_symbolic, standard_opset,
                                upgrade_opset)
from hnnx.passes.manager import (FixedPoint, Pass, apply_passes, export_graph, fixed_point, graph_pass,
                                 import_graph, model_pass, run_passes)
from hnnx.passes.neurons import fold_neurons
from hnnx.passes.stepwise import stepwise, stepwise_parts
from hnnx.passes.time import fold_time, hoist_repeated

PREPROCESS: tuple[Pass, ...] = (infer_shapes, remove_identities, fold_neurons, fold_constants, fold_batchnorm,
                                decompose_batchnorm, fold_time)
"""The pre-processing pipeline that quantization starts with (after :func:`intake_passes`)."""


def intake_passes(min_opset: int | None = None, notes: Notes | None = None) -> list[Pass]:
    """The model passes that make other tools' files fit the pipeline, in the order they run:
    ``check_hnnx_opset``, ``drop_initializer_inputs``, ``upgrade_opset`` (to ``min_opset``;
    None: never) and ``make_batch_symbolic``. ``notes`` receives what the parametrised ones did,
    in words, by pass name."""
    return [check_hnnx_opset, drop_initializer_inputs, upgrade_opset(min_opset, notes), make_batch_symbolic(notes)]


def preprocess(model: onnx.ModelProto, *, min_opset: int | None = None, changes: dict[str, bool] | None = None,
               notes: Notes | None = None) -> onnx.ModelProto:
    """Run :func:`intake_passes` and :data:`PREPROCESS` on ``model``; returns a new model computing
    the same function (for data of any batch size when the batch was made symbolic).
    ``changes``/``notes``: receive each pass's flag and what the intake passes did."""
    return run_passes(model, [*intake_passes(min_opset, notes), *PREPROCESS], changes)


def preprocess_graph(model: onnx.ModelProto, *, min_opset: int | None = None, changes: dict[str, bool] | None = None,
                     notes: Notes | None = None, in_place: bool = False) -> gs.Graph:
    """:func:`preprocess`, kept as the graph a pipeline goes on rewriting: the model passes on a
    copy of the protobuf, one import, the graph passes, one cleanup (no export). ``in_place``:
    the model passes change ``model`` itself and the graph shares its tensors (no copy of the
    weights, for a caller that owns the model and is done with it)."""
    if in_place:
        copy = model
    else:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    check_hnnx_opset(copy)  # before the hnnx nodes are read
    ops.attach_functions(copy)  # validates hnnx nodes
    changes = {} if changes is None else changes
    steps = [*intake_passes(min_opset, notes), *PREPROCESS]
    for p in [p for p in steps if p.kind == "model"]:
        changes[p.name] = p(copy)
    graph = import_graph(copy)
    changes.update(apply_passes(graph, [p for p in steps if p.kind == "graph"]))
    graph.cleanup(recurse_subgraphs=True).toposort()
    return graph


__all__ = ["FixedPoint", "Notes", "Pass", "PREPROCESS", "apply_passes", "check_hnnx_opset", "decompose_batchnorm",
           "drop_initializer_inputs", "export_graph", "fixed_point", "fold_batchnorm", "fold_constants", "fold_neurons",
           "fold_time",
           "graph_pass", "import_graph", "infer_shapes", "intake_passes", "make_batch_symbolic", "model_pass",
           "preprocess", "preprocess_graph", "remove_identities", "run_passes", "standard_opset", "stepwise", "stepwise_parts",
           "upgrade_opset", "event_driven", "integer_as_float", "hoist_repeated"]
