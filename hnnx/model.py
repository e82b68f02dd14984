"""Loading, checking and atomically saving ONNX models with hnnx nodes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, TypeVar

import onnx
from google.protobuf.message import Message
from onnx import external_data_helper

from hnnx import ops
from hnnx.errors import HnnxError, ModelError, NodeError

M = TypeVar("M", bound=Message)

PathLike = str | os.PathLike

PROTOBUF_LIMIT = 2**31
"""Bytes a serialised ONNX model may not reach (protobuf's limit): larger models keep their
tensors in an external data file."""
EXTERNAL_TENSOR_BYTES = 1024
"""Tensors of at least this many bytes go to the external data file when one is written."""
EXTERNAL_DATA_SUFFIX = ".data"
"""The external data file of ``model.onnx`` is ``model.onnx.data``, next to it."""


def load(path: PathLike, *, size_limit: int = PROTOBUF_LIMIT) -> onnx.ModelProto:
    """Read, validate and return the model at ``path``.

    Tensors stored in external data files (models over 2 GB) are read from their files,
    relative to the model's directory. hnnx nodes are validated and get fresh function
    bodies (so a model whose attributes were edited by another tool runs as its attributes
    say). Raises ModelError naming the file when it is missing, not ONNX, invalid, imports
    an hnnx opset this version does not implement, or refers to missing external data.
    ``size_limit``: models of at least this many bytes are checked from the file, as
    protobuf cannot hold them in one message (lowered by tests).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise ModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (empty graph)")
    check_opset_imports(model, str(path))
    external = any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in _tensors(model.graph))
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # missing file, short file, path outside the directory
            raise ModelError(f"{path}: cannot read its external data ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None
    try:
        ops.attach_functions(model)
    except NodeError as exc:
        raise exc.at(str(path)) from None
    except HnnxError as exc:
        raise ModelError(f"{path}: {exc}") from None
    if external and model.ByteSize() >= size_limit:
        check_file(path)  # too large for one protobuf message: the checker reads the file
    else:
        check(model, source=str(path))
    return model


def copy_except(message: M, skipped: str) -> M:
    """A copy of protobuf ``message`` without its field ``skipped`` (e.g. a model without its
    graph, a graph without its initializers): the other fields are copied, that one never is."""
    copy = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == skipped:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(copy, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(copy, descriptor.name).CopyFrom(value)
        else:
            setattr(copy, descriptor.name, value)
    return copy


def check_opset_imports(model: onnx.ModelProto, source: str = "model") -> None:
    """ModelError naming ``source`` if ``model`` imports an ``hnnx`` opset version other than
    the one this hnnx implements (:data:`hnnx.ops.OPSET_VERSION`)."""
    for opset in model.opset_import:
        if opset.domain == ops.DOMAIN and opset.version != ops.OPSET_VERSION:
            raise ModelError(f"{source}: imports the {ops.DOMAIN} opset version {opset.version}, but this hnnx "
                             f"implements version {ops.OPSET_VERSION} only")


def check(model: onnx.ModelProto, source: str = "model") -> None:
    """Run the ONNX checker (full check, with hnnx schemas); ModelError on failure."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{source}: invalid ONNX model: {_first_line(exc)}") from None
    except onnx.shape_inference.InferenceError as exc:
        raise ModelError(f"{source}: shape inference failed: {_first_line(exc)}") from None
    except NodeError as exc:  # raised by an hnnx schema's shape inference
        raise exc.at(source) from None


def check_file(path: PathLike) -> None:
    """Run the ONNX checker (full check) on the model file at ``path``, external data included:
    the way to check models too large for one protobuf message. ModelError on failure."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{path}: invalid ONNX model: {_first_line(exc)}") from None
    except onnx.shape_inference.InferenceError as exc:
        raise ModelError(f"{path}: shape inference failed: {_first_line(exc)}") from None
    except NodeError as exc:
        raise exc.at(str(path)) from None


def save(model: onnx.ModelProto, path: PathLike, *, external_data: bool | None = None,
         size_limit: int = PROTOBUF_LIMIT) -> Path:
    """Attach function bodies, check, and write ``model`` to ``path`` atomically.

    The file appears complete or not at all (written to a temporary file in the same
    directory, then renamed). A model of ``size_limit`` bytes or more (protobuf's 2 GB limit;
    lowered by tests), or any model with ``external_data=True``, is written with its tensors of
    :data:`EXTERNAL_TENSOR_BYTES` or more in ``<name>.data`` next to ``path`` (the data file
    is renamed into place first, then the model). ``model`` itself is left as it was.
    Returns the path written.
    """
    path = Path(path)
    ops.attach_functions(model)
    if external_data is None:
        external_data = model.ByteSize() >= size_limit
    if not external_data:
        check(model, source=str(path))
        write_atomic(path, model.SerializeToString())
        return path
    _check_destination(path)
    data_path = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    if data_path.is_dir():
        raise HnnxError(f"{data_path}: is a directory")
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staged_model, staged_data = staging / path.name, staging / data_path.name
        with open(staged_data, "wb") as data:
            with _tensors_moved_to(model, data, data_path.name) as small:
                staged_model.write_bytes(small.SerializeToString())
        check_file(staged_model)
        for staged in (staged_model, staged_data):
            os.chmod(staged, 0o666 & ~_umask())
        os.replace(staged_data, data_path)
        os.replace(staged_model, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


@contextlib.contextmanager
def _tensors_moved_to(model: onnx.ModelProto, data: BinaryIO, location: str) -> Iterator[onnx.ModelProto]:
    """``model`` with the raw data of its large tensors written to ``data`` and replaced by
    references to ``location`` (relative to the model's directory), restored on exit, so that
    a model over 2 GB is never copied whole."""
    moved: list[tuple[onnx.TensorProto, bytes]] = []
    try:
        for tensor in _tensors(model.graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.raw_data) < EXTERNAL_TENSOR_BYTES:
                continue
            raw = tensor.raw_data
            offset = data.tell()
            data.write(raw)
            moved.append((tensor, raw))
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        yield model
    finally:
        for tensor, raw in moved:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and attribute tensor of ``graph`` and of its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _check_destination(path: Path) -> None:
    if not path.parent.is_dir():
        raise HnnxError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise HnnxError(f"{path}: is a directory")


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename."""
    path = Path(path)
    _check_destination(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
