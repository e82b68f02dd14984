"""Loading, checking and atomically saving ONNX models with hnnx nodes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from hnnx import ops
from hnnx.errors import HnnxError, ModelError, NodeError

PathLike = str | os.PathLike


def load(path: PathLike) -> onnx.ModelProto:
    """Read, validate and return the model at ``path``.

    hnnx nodes are validated and get fresh function bodies (so a model whose attributes
    were edited by another tool runs as its attributes say). Raises ModelError naming the
    file when it is missing, not ONNX, or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types
        raise ModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (empty graph)")
    try:
        ops.attach_functions(model)
    except NodeError as exc:
        raise exc.at(str(path)) from None
    except HnnxError as exc:
        raise ModelError(f"{path}: {exc}") from None
    check(model, source=str(path))
    return model


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


def save(model: onnx.ModelProto, path: PathLike) -> Path:
    """Attach function bodies, check, and write ``model`` to ``path`` atomically.

    The file appears complete or not at all (written to a temporary file in the same
    directory, then renamed). Returns the path written.
    """
    path = Path(path)
    ops.attach_functions(model)
    check(model, source=str(path))
    write_atomic(path, model.SerializeToString())
    return path


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise HnnxError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise HnnxError(f"{path}: is a directory")
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
