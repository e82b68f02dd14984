"""Running passes: one onnx-graphsurgeon import, the passes, one cleanup and export.

A *graph pass* is ``fn(graph: gs.Graph) -> None`` editing the graph in place; a *model
pass* is ``fn(model: onnx.ModelProto) -> onnx.ModelProto``. :func:`run_passes` groups
consecutive graph passes on one imported graph, so a pipeline costs one import, one
``cleanup().toposort()`` and one export per group, not per pass.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import onnx
import onnx_graphsurgeon as gs

from hnnx import ops
from hnnx.errors import HnnxError

GraphPass = Callable[[gs.Graph], None]
ModelPass = Callable[[onnx.ModelProto], onnx.ModelProto]
Pass = Union[GraphPass, ModelPass]

_MODEL_PASSES: set[str] = set()


def model_pass(fn: ModelPass) -> ModelPass:
    """Mark ``fn`` as a pass over the ModelProto (not the graphsurgeon graph)."""
    _MODEL_PASSES.add(fn.__name__)
    fn.is_model_pass = True  # type: ignore[attr-defined]
    return fn


def run_passes(model: onnx.ModelProto, passes: Sequence[Pass]) -> onnx.ModelProto:
    """Apply ``passes`` in order; returns a new model with function bodies attached
    (``model`` itself is not modified)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = ops.attach_functions(copy)  # validates hnnx nodes and imports the hnnx opset
    pending: list[GraphPass] = []
    for p in passes:
        if getattr(p, "is_model_pass", False):
            model = _run_graph_passes(model, pending)
            pending = []
            model = p(model)  # type: ignore[arg-type]
        else:
            pending.append(p)  # type: ignore[arg-type]
    return _run_graph_passes(model, pending, force=True)


def _run_graph_passes(model: onnx.ModelProto, passes: Sequence[GraphPass], force: bool = False) -> onnx.ModelProto:
    if not passes and not force:
        return model
    graph = gs.import_onnx(model)
    for p in passes:
        try:
            p(graph)
        except HnnxError:
            raise
        except Exception as exc:
            raise HnnxError(f"pass {p.__name__} failed: {type(exc).__name__}: {exc}") from exc
    graph.cleanup().toposort()
    out = export_like(graph, model)
    out.producer_name = model.producer_name
    out.producer_version = model.producer_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return ops.attach_functions(out)


def export_like(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` with the IR version and opset imports of the model it came from."""
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = source.ir_version
    del out.opset_import[:]
    out.opset_import.extend(source.opset_import)
    return out
