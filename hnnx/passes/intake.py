"""Intake: the model passes that make the ONNX files other tools write fit hnnx's pipeline.

Run before the pre-processing passes (:func:`hnnx.passes.intake_passes`), in this order:

| pass | what it does |
|---|---|
| ``check_hnnx_opset`` | refuse a model importing an ``hnnx`` opset this version does not know |
| ``drop_initializer_inputs`` | initializers also listed as graph inputs (IR < 4) stop being inputs |
| ``upgrade_opset`` | a standard opset below what the target needs is raised with onnx's version converter |
| ``make_batch_symbolic`` | a batch dimension fixed by the exporter becomes symbolic where the graph allows it |

The parametrised passes are made by factories that also take a ``notes`` dict: what each pass
changed, in words (``"ai.onnx 9 → 13"``), for the quantization report.
"""

from __future__ import annotations

from typing import MutableMapping

import numpy as np
import onnx
from onnx import TensorProto

from hnnx.errors import ModelError
from hnnx.model import check_opset_imports
from hnnx.passes.manager import Pass, model_pass
from hnnx.runtime.data import spec_of

Notes = MutableMapping[str, str]
"""Pass name → what it changed, in words."""

BATCH_DIM_NAME = "N"
"""The name a fixed batch dimension gets when it is made symbolic."""
_DATA_TYPES_FOR_SHAPES = (TensorProto.INT64, TensorProto.INT32)
"""Initializers shape inference may read values of (Reshape targets, Slice bounds, …); the
others only need their type and shape."""


@model_pass
def check_hnnx_opset(model: onnx.ModelProto) -> bool:
    """Refuse (ModelError) a model importing an ``hnnx`` opset version this hnnx does not
    implement; never changes the model."""
    check_opset_imports(model, "model")
    return False


@model_pass
def drop_initializer_inputs(model: onnx.ModelProto) -> bool:
    """Initializers listed among the graph inputs (the IR < 4 convention) are removed from the
    inputs, so that they are weights, not data the caller must feed.

    onnxruntime treats such inputs as overridable defaults; hnnx's passes and calibration treat
    graph inputs as data, so the weights would be folded nowhere and calibrated as inputs.
    """
    weights = {init.name for init in model.graph.initializer}
    kept = [vi for vi in model.graph.input if vi.name not in weights]
    if len(kept) == len(model.graph.input):
        return False
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)  # from IR 4 on, initializers need not be inputs
    return True


def upgrade_opset(minimum: int | None, notes: Notes | None = None) -> Pass:
    """A model pass raising the standard (``ai.onnx``) opset to ``minimum`` with
    ``onnx.version_converter`` when the model imports an older one (None: never). Writes
    ``"ai.onnx 9 → 13"`` to ``notes["upgrade_opset"]``; ModelError when the converter cannot
    convert the model (naming the opsets)."""

    @model_pass
    def upgrade_opset(model: onnx.ModelProto) -> bool:
        version = standard_opset(model)
        if minimum is None or version >= minimum:
            return False
        unknown = next((node for node in model.graph.node if node.domain in ("", "ai.onnx")
                        and not onnx.defs.has(node.op_type)), None)
        if unknown is not None:  # the converter's own message does not name it
            raise ModelError(f"model: node {unknown.name or unknown.output[0]!r} has op type {unknown.op_type!r}, "
                             f"which is no ai.onnx op: cannot convert the model from opset {version} to {minimum}")
        try:
            converted = onnx.version_converter.convert_version(model, minimum)
        except Exception as exc:  # the converter raises RuntimeError/ValueError/… with C++ messages
            text = str(exc).strip().splitlines()
            raise ModelError(f"model: cannot convert from ai.onnx opset {version} to {minimum} "
                             f"({type(exc).__name__}: {text[0] if text else ''})") from None
        model.CopyFrom(converted)
        if notes is not None:
            notes["upgrade_opset"] = f"ai.onnx {version} → {minimum}"
        return True

    return upgrade_opset


def standard_opset(model: onnx.ModelProto) -> int:
    """The ``ai.onnx`` opset version ``model`` imports (1 when it imports none, as ONNX reads it)."""
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 1)


def make_batch_symbolic(notes: Notes | None = None) -> Pass:
    """A model pass turning a batch dimension fixed by the exporter into the symbol ``N``.

    Graph inputs whose sample axis (axis 0, or 1 for time-major inputs) has a fixed size B
    get ``N`` there if shape inference then carries ``N`` to the sample axis of every graph
    output. A ``Reshape`` whose constant target starts with B while its input starts with the
    batch (an exporter's folded ``x.view(x.size(0), -1)``) gets 0 there — "copy the input's
    dimension" — first. Where the graph does not allow it the model is left unchanged and
    data is fed B samples at a time (:func:`hnnx.calibrate.batches`). Writes what it did to
    ``notes["make_batch_symbolic"]``.
    """

    @model_pass
    def make_batch_symbolic(model: onnx.ModelProto) -> bool:
        fixed = _fixed_batch_inputs(model)
        if not fixed:
            return False
        sizes = set(fixed.values())
        names = ", ".join(repr(name) for name in fixed)
        if len(sizes) > 1:
            _note(notes, f"batch stays fixed: inputs {names} fix different batch sizes {sorted(sizes)}")
            return False
        batch = sizes.pop()
        trial = shape_skeleton(model)
        _set_batch_dims(trial, fixed)
        _infer(trial)
        reshapes = _batch_leading_reshapes(trial, batch)
        if reshapes:
            _copy_batch_in_reshapes(trial, reshapes)
            _infer(trial)
        blocking = _outputs_without_batch(trial)
        if blocking:
            _note(notes, f"batch stays fixed at {batch}: output {blocking[0]!r} does not follow the batch of "
                         f"inputs {names}; samples are fed {batch} at a time")
            return False
        _set_batch_dims(model, fixed)
        if reshapes:
            _copy_batch_in_reshapes(model, reshapes)
        inferred = {vi.name: vi for vi in trial.graph.output}
        for vi in model.graph.output:
            vi.type.CopyFrom(inferred[vi.name].type)
        del model.graph.value_info[:]  # stale: they hold the fixed batch
        fixes = f"; {len(reshapes)} Reshape target(s) now copy the batch" if reshapes else ""
        _note(notes, f"batch of inputs {names} was fixed at {batch}, now {BATCH_DIM_NAME}{fixes}")
        return True

    return make_batch_symbolic


def _note(notes: Notes | None, text: str) -> None:
    """Record what ``make_batch_symbolic`` found."""
    if notes is not None:
        notes["make_batch_symbolic"] = text


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    weights = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in weights]


def _fixed_batch_inputs(model: onnx.ModelProto) -> dict[str, int]:
    """Data inputs whose sample axis has a fixed size: name → size."""
    fixed = {}
    for vi in _data_inputs(model):
        spec = spec_of(vi)
        if spec.dims is not None and spec.batch_axis < len(spec.dims):
            size = spec.dims[spec.batch_axis]
            if isinstance(size, int) and size > 0:
                fixed[vi.name] = size
    return fixed


def _set_batch_dims(model: onnx.ModelProto, fixed: dict[str, int]) -> None:
    for vi in model.graph.input:
        if vi.name in fixed:
            dim = vi.type.tensor_type.shape.dim[spec_of(vi).batch_axis]
            dim.Clear()
            dim.dim_param = BATCH_DIM_NAME


def shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` for shape inference (see :func:`_infer`): float initializers become graph inputs
    of their type and shape (their values are never needed for shapes, and copying them is what
    costs), and output and intermediate shapes are left out so that inference decides them."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph, source = skeleton.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    declared = {vi.name for vi in source.input}
    for init in source.initializer:
        if init.data_type in _DATA_TYPES_FOR_SHAPES:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    graph.output.extend(source.output)
    return skeleton


def _infer(skeleton: onnx.ModelProto) -> None:
    """Replace the skeleton's intermediate and output shapes by inferred ones."""
    del skeleton.graph.value_info[:]
    for vi in skeleton.graph.output:
        vi.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:  # shapes unknown: the check below then finds no batch and keeps the model
        return
    del skeleton.graph.value_info[:]
    skeleton.graph.value_info.extend(inferred.graph.value_info)
    del skeleton.graph.output[:]
    skeleton.graph.output.extend(inferred.graph.output)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    shapes = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        spec = spec_of(vi)
        if spec.dims is not None:
            shapes[vi.name] = list(spec.dims)
    return shapes


def _batch_leading_reshapes(skeleton: onnx.ModelProto, batch: int) -> list[str]:
    """Reshape nodes (by output name) whose constant target starts with ``batch`` while their
    input starts with the symbolic batch."""
    shapes = _shapes(skeleton)
    targets = _constant_int_tensors(skeleton)
    found = []
    for node in skeleton.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        allow_zero = any(a.name == "allowzero" and a.i for a in node.attribute)
        target = targets.get(node.input[1])
        source = shapes.get(node.input[0])
        if (not allow_zero and target is not None and len(target) > 0 and target[0] == batch
                and source and source[0] == BATCH_DIM_NAME):
            found.append(node.output[0])
    return found


def _copy_batch_in_reshapes(model: onnx.ModelProto, reshape_outputs: list[str]) -> None:
    """Give each listed Reshape a target of its own whose first entry is 0 (copy the input's)."""
    targets = _constant_int_tensors(model)
    wanted = set(reshape_outputs)
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.output[0] in wanted:
            name = f"{node.output[0]}.batch_shape"
            target = np.asarray([0, *targets[node.input[1]][1:]], dtype=np.int64)
            model.graph.initializer.append(onnx.numpy_helper.from_array(target, name))
            node.input[1] = name


def _constant_int_tensors(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Integer initializers and Constant-node values of the top graph, as lists."""
    values = {}
    for init in model.graph.initializer:
        if init.data_type in _DATA_TYPES_FOR_SHAPES:
            values[init.name] = onnx.numpy_helper.to_array(init).reshape(-1).tolist()
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _DATA_TYPES_FOR_SHAPES:
                    values[node.output[0]] = onnx.numpy_helper.to_array(attr.t).reshape(-1).tolist()
                elif attr.name == "value_ints":
                    values[node.output[0]] = list(attr.ints)
    return values


def _outputs_without_batch(skeleton: onnx.ModelProto) -> list[str]:
    """Graph outputs whose inferred sample axis is not the symbolic batch."""
    blocking = []
    for vi in skeleton.graph.output:
        spec = spec_of(vi)
        if spec.dims is None or spec.batch_axis >= len(spec.dims) or spec.dims[spec.batch_axis] != BATCH_DIM_NAME:
            blocking.append(vi.name)
    return blocking
