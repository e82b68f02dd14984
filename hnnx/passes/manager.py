"""The rewrite contract: what a pass is and how a pipeline of passes runs.

A pass is a named rewrite that declares what it works on and returns whether it changed
anything:

* a **graph pass** (:func:`graph_pass`) edits an onnx-graphsurgeon ``gs.Graph`` in place. It
  also runs on every subgraph (the bodies of ``Loop``/``If``/``Scan``) unless declared with
  ``subgraphs=False`` (a pass that recurses by itself);
* a **model pass** (:func:`model_pass`) edits an ``onnx.ModelProto`` in place: for work that
  needs the protobuf form, such as ONNX shape inference.

:func:`run_passes` runs a pipeline on a model: the model passes at its head on the protobuf,
then **one** import, every graph pass on that one graph, one ``cleanup().toposort()`` and
**one** export (a model pass placed between graph passes costs one more export and import).
:func:`fixed_point` groups graph passes that are repeated until none of them changes
anything. A pipeline that keeps working on the graph afterwards (quantization) calls
:func:`import_graph`, :func:`apply_passes` and :func:`export_graph` itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence, Union

import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.errors import HnnxError

log = logging.getLogger("hnnx.passes")

GRAPH = "graph"
MODEL = "model"


@dataclass(frozen=True)
class Pass:
    """A named rewrite: ``run(target) -> changed`` over a ``gs.Graph`` (``kind = "graph"``) or an
    ``onnx.ModelProto`` (``kind = "model"``), editing it in place."""

    name: str
    kind: Literal["graph", "model"]
    run: Callable[..., bool]
    subgraphs: bool = True
    doc: str = ""

    def __call__(self, target: gs.Graph | onnx.ModelProto) -> bool:
        return bool(self.run(target))


@dataclass(frozen=True)
class FixedPoint:
    """Graph passes run in order, again and again, until a round changes nothing (at most
    ``max_rounds`` rounds; reaching the limit is an error, as it means two passes undo each other)."""

    passes: tuple[Pass, ...]
    max_rounds: int = 8
    name: str = field(default="")
    kind: Literal["graph"] = GRAPH

    def __post_init__(self) -> None:
        if any(p.kind != GRAPH for p in self.passes):
            raise HnnxError("a fixed-point group holds graph passes only")
        if not self.name:
            object.__setattr__(self, "name", "fixed_point(" + ", ".join(p.name for p in self.passes) + ")")


Step = Union[Pass, FixedPoint]


def graph_pass(fn: Callable[[gs.Graph], bool] | None = None, *, subgraphs: bool = True
               ) -> Pass | Callable[[Callable[[gs.Graph], bool]], Pass]:
    """Declare ``fn(graph) -> changed`` a graph pass (usable as ``@graph_pass`` or
    ``@graph_pass(subgraphs=False)``)."""

    def declare(function: Callable[[gs.Graph], bool]) -> Pass:
        return Pass(function.__name__, GRAPH, function, subgraphs, (function.__doc__ or "").strip())

    return declare(fn) if fn is not None else declare


def model_pass(fn: Callable[[onnx.ModelProto], bool]) -> Pass:
    """Declare ``fn(model) -> changed`` a model pass (editing the ModelProto in place)."""
    return Pass(fn.__name__, MODEL, fn, False, (fn.__doc__ or "").strip())


def fixed_point(*passes: Pass, max_rounds: int = 8) -> FixedPoint:
    """A group of graph passes repeated until none changes anything."""
    return FixedPoint(tuple(passes), max_rounds)


def apply_passes(graph: gs.Graph, steps: Sequence[Step]) -> dict[str, bool]:
    """Run graph passes (and fixed-point groups) on ``graph`` and its subgraphs, in place.

    Returns, per pass name, whether it changed anything. Does not clean up or sort: the
    caller does that once, when the pipeline is done.
    """
    changed: dict[str, bool] = {}
    for step in steps:
        _check_declared(step)
        if isinstance(step, FixedPoint):
            for _ in range(step.max_rounds):
                round_changed = apply_passes(graph, step.passes)
                for name, flag in round_changed.items():
                    changed[name] = changed.get(name, False) or flag
                if not any(round_changed.values()):
                    break
            else:
                raise HnnxError(f"{step.name} did not settle within {step.max_rounds} rounds")
            continue
        if step.kind != GRAPH:
            raise HnnxError(f"pass {step.name} works on the model, not on a graph")
        targets = [graph, *graph.subgraphs(recursive=True)] if step.subgraphs else [graph]
        flag = False
        for target in targets:
            flag = _run_one(step, target) or flag
        changed[step.name] = changed.get(step.name, False) or flag
        log.debug("pass %s: %s", step.name, "changed" if flag else "no change")
    return changed


def run_passes(model: onnx.ModelProto, steps: Sequence[Step], changes: dict[str, bool] | None = None
               ) -> onnx.ModelProto:
    """Apply a pipeline of passes; returns a new model with function bodies attached
    (``model`` itself is not modified).

    ``changes``: a dict that receives, per pass name, whether the pass changed anything.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = ops.attach_functions(copy)  # validates hnnx nodes and imports the hnnx opset
    changes = {} if changes is None else changes
    graph: gs.Graph | None = None
    for step in steps:
        _check_declared(step)
        if step.kind == MODEL:
            if graph is not None:  # a model pass after graph passes: back to the protobuf
                model = export_graph(graph, model)
                graph = None
            changes[step.name] = changes.get(step.name, False) or _run_one(step, model)  # type: ignore[arg-type]
            continue
        if graph is None:
            graph = import_graph(model)
        for name, flag in apply_passes(graph, [step]).items():
            changes[name] = changes.get(name, False) or flag
    return export_graph(graph if graph is not None else import_graph(model), model)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """The onnx-graphsurgeon graph of ``model`` (the one import of a pipeline).

    The hnnx function bodies are dropped from the graph: they are derived data, attached
    anew from the nodes' attributes at export (and sorting them would cost more than the graph).
    """
    graph = gs.import_onnx(model)
    graph.functions = [f for f in graph.functions if f.domain != ops.DOMAIN]
    return graph


def export_graph(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` cleaned up, sorted and exported with the IR version, opset imports, producer and
    metadata of the model it came from, function bodies attached (the one export of a pipeline)."""
    graph.cleanup(recurse_subgraphs=True).toposort()
    out = export_like(graph, source)
    out.producer_name = source.producer_name
    out.producer_version = source.producer_version
    del out.metadata_props[:]
    out.metadata_props.extend(source.metadata_props)
    return ops.attach_functions(out)


def export_like(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` with the IR version and opset imports of the model it came from (the
    standard opset is the graph's own: an intake pass may have raised it)."""
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = source.ir_version
    del out.opset_import[:]
    out.opset_import.extend(source.opset_import)
    for opset in out.opset_import:
        if opset.domain in ("", "ai.onnx") and graph.opset is not None:
            opset.version = max(opset.version, int(graph.opset))
    return out


def _check_declared(step: object) -> None:
    if not isinstance(step, (Pass, FixedPoint)):
        name = getattr(step, "__name__", repr(step))
        raise HnnxError(f"{name} is not a declared pass: declare it with @graph_pass or @model_pass")


def _run_one(step: Pass, target: gs.Graph | onnx.ModelProto) -> bool:
    try:
        return step(target)
    except HnnxError:
        raise
    except Exception as exc:
        raise HnnxError(f"pass {step.name} failed: {type(exc).__name__}: {exc}") from exc
