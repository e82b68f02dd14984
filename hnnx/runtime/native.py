"""The native fast path at run time: find, load, self-test and register the native hnnx kernels.

Models always carry their function bodies and run anywhere. When the C++ onnxruntime
custom-op library built from ``custom_ops/`` is registered in a session, onnxruntime runs
its kernels for the ops of :data:`NATIVE_OPS` instead of inlining their bodies: the fused
``hnnx.LIF``, the hybrid units ``hnnx.A2S``/``hnnx.S2A`` (bit-identical to their bodies) and
the event-driven spike-input layers ``hnnx.SpikeMatMul``/``hnnx.SpikeConv`` (bit-identical to
their numpy references; integer ones also to their dense bodies).

How the library comes to be (all cached, nothing needs a network after the headers exist):

1. **Headers** — :mod:`hnnx.native.headers`: ``HNNX_ORT_INCLUDE``, an earlier fetch in the
   cache, a system install, or a fetch of Debian's ``libonnxruntime-dev`` (newer suite,
   C API 21; ``HNNX_DEBIAN_SUITE``) with a private apt configuration.
2. **Build** — :mod:`hnnx.native.build`: the C++ compiler (``CXX`` or ``c++``/``g++``/
   ``clang++``) compiles the sources (package data, else the source checkout) into
   ``<cache>/native/<key>/libhnnx_ops.so``, ``<key>`` hashing the sources, headers, compiler,
   flags and CPU. Floating-point contraction is off so float results equal the function bodies.
3. **Check** — here: the library is registered in a session and a probe model runs through
   both paths; only a library that loads, runs and agrees is used.

This module imports the build tooling only when it resolves the status. ``hnnx demo`` (the
last step of the documented install) and ``hnnx doctor --build`` fetch headers when needed;
any other first use only compiles from headers already present. When anything is missing,
hnnx runs the function bodies and warns once (:func:`warn_fallback`); ``hnnx doctor`` says
which path is active and why. ``HNNX_NATIVE=0`` turns the native path off. The cache lives
in ``HNNX_CACHE_DIR``, else ``$XDG_CACHE_HOME/hnnx``, else ``~/.cache/hnnx``.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from hnnx.native import NativeBuildError, cache_dir

if TYPE_CHECKING:
    import onnx

NATIVE_OPS = ("LIF", "A2S", "S2A", "SpikeMatMul", "SpikeConv")
"""The hnnx ops the native library has kernels for."""


class NativeKernelWarning(UserWarning):
    """hnnx falls back to function bodies because the native kernels are unavailable."""


@dataclass(frozen=True)
class NativeStatus:
    """Whether the native kernels are active, and why (``reason``: one line)."""

    active: bool
    reason: str
    library: Path | None = None
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class NativeStatusCache:
    """What this process knows of the native kernels: the status, resolved once, and
    whether the user was told why they are off (the module's only mutable state)."""

    status: NativeStatus | None = None
    warned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


status_cache = NativeStatusCache()


def disabled() -> bool:
    """True when ``HNNX_NATIVE`` is 0/off/false/no."""
    return os.environ.get("HNNX_NATIVE", "").strip().lower() in {"0", "off", "false", "no"}


def runtime_api_version() -> int:
    """The newest C API version of the installed onnxruntime (its minor version, e.g. 32)."""
    match = re.match(r"(\d+)\.(\d+)", ort.__version__)
    return int(match.group(2)) if match and match.group(1) == "1" else 0


# --------------------------------------------------------------------------- check
def lif_calls(library: Path) -> int:
    """How many times the library's LIF kernel has run in this process."""
    return kernel_calls(library, "LIF")


def kernel_calls(library: Path, op: str) -> int:
    """How many times the library's kernel of hnnx op ``op`` (one of :data:`NATIVE_OPS`) has run in
    this process."""
    handle = ctypes.CDLL(str(library))  # the same handle onnxruntime opened: dlopen is refcounted
    handle.hnnx_native_calls.restype = ctypes.c_uint64
    handle.hnnx_native_calls.argtypes = [ctypes.c_char_p]
    return int(handle.hnnx_native_calls(op.encode()))


def _probe_model() -> tuple["onnx.ModelProto", dict[str, np.ndarray]]:
    """Nodes of every native op touching their variants (LIF float and integer; A2S rate coding
    in calls and integer; S2A streaming windows and integer global; spike-input layers float and
    integer, whose outputs are exact here: dyadic float values), with feeds."""
    import onnx
    from onnx import TensorProto, helper

    from hnnx import ops

    nodes = [
        ops.make_node("LIF", ["x", "v0", "", "r0"], ["s", "v", "theta", "r"], name="float_probe", threshold=0.75,
                      reset_mode="soft", alpha=0.8125, beta=-0.0625, v_lower=-0.5, refractory=1,
                      theta_alpha=0.5, theta_beta=0.03125, theta_increment=0.25),
        ops.make_node("LIF", ["xi"], ["si", "vi"], name="integer_probe", mode="integer", state_bits=12,
                      threshold=300, reset_mode="soft_constant", reset_decrement=200, alpha=200 / 256, beta=-3),
        ops.make_node("A2S", ["v", "", "", "offset", "count"], ["coded", "end"], name="a2s_probe", steps=9,
                      coding="rate", seed=77, activation="relu"),
        ops.make_node("A2S", ["pixels"], ["coded_i"], name="a2s_integer_probe", steps=5, coding="rate",
                      mode="integer", seed=3),
        ops.make_node("S2A", ["s", "", "", "buffer0", "filled0"], ["rates", "buffer", "filled"], name="s2a_probe",
                      window=4, kernel=3, stride=1),
        ops.make_node("S2A", ["si"], ["counts"], name="s2a_integer_probe", decoding="global", mode="integer"),
        ops.make_node("SpikeMatMul", ["s", "w", "b"], ["dense"], name="matmul_probe"),
        ops.make_node("SpikeConv", ["planes", "k", "kb"], ["conv"], name="conv_probe", mode="integer", pad_top=1,
                      pad_left=1, pad_bottom=1, pad_right=1, stride_w=2),
    ]
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(0.3, 0.6, (9, 3, 70)).astype(np.float32),
             "v0": rng.normal(0.0, 0.3, 70).astype(np.float32),
             "r0": rng.integers(-1, 3, (3, 70)).astype(np.int32),
             "xi": rng.integers(-600, 2000, (9, 3, 70)).astype(np.int32),
             "offset": np.array(2, np.int64), "count": np.array(6, np.int64),
             "pixels": rng.integers(-128, 128, (3, 2, 9)).astype(np.int8),
             "buffer0": rng.integers(0, 2, (4, 3, 70)).astype(np.float32), "filled0": np.array(3, np.int64),
             "w": (rng.integers(-64, 65, (70, 11)) / 64).astype(np.float32),
             "b": (rng.integers(-64, 65, 11) / 64).astype(np.float32),
             "planes": rng.integers(0, 2, (4, 6, 5, 7)).astype(np.int8),
             "k": rng.integers(-128, 128, (5, 6, 3, 3)).astype(np.int8),
             "kb": rng.integers(-1000, 1000, 5).astype(np.int32)}
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
            np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int8): TensorProto.INT8}
    produced = [name for node in nodes for name in node.output]
    graph = helper.make_graph(
        nodes, "hnnx_native_probe",
        [helper.make_tensor_value_info(name, elem[value.dtype], value.shape) for name, value in feeds.items()],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in produced])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)])
    ops.attach_functions(model)
    inferred = onnx.shape_inference.infer_shapes(model)  # typed outputs
    typed = {vi.name: vi for vi in inferred.graph.output}
    del model.graph.output[:]
    model.graph.output.extend(typed[name] for name in produced)
    return model, feeds


def self_test(library: Path) -> None:
    """Register ``library`` in a session, run the probe model natively and through the
    function bodies, and require that every native kernel ran and agreed bit for bit.

    Raises NativeBuildError (e.g. when this onnxruntime lacks the library's C API).
    """
    from hnnx import ops

    model, feeds = _probe_model()
    data = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    expected = {op: sum(node.op_type == op for node in ops.hnnx_nodes(model.graph)) for op in NATIVE_OPS}
    try:
        options.register_custom_ops_library(str(library))
        native_session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        before = {op: kernel_calls(library, op) for op in NATIVE_OPS}
        native = native_session.run(None, feeds)
        ran = {op: kernel_calls(library, op) - before[op] for op in NATIVE_OPS}
    except Exception as exc:  # onnxruntime raises its own exception types
        text = str(exc).strip().splitlines()
        raise NativeBuildError(f"onnxruntime {ort.__version__} cannot use the library: "
                               f"{text[0] if text else type(exc).__name__}") from None
    reference = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    for op, count in expected.items():
        if ran[op] != count:
            raise NativeBuildError(f"onnxruntime ran the function bodies, not the native {op} kernel "
                                   f"({ran[op]} of {count} nodes)")
    for name, a, b in zip([o.name for o in model.graph.output], native, reference):
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            raise NativeBuildError(f"self-test: native output {name!r} differs from the function body")


# --------------------------------------------------------------------------- status
def _resolve(fetch: bool, force: bool) -> NativeStatus:
    from hnnx.native import build, headers as ort_headers  # the build tooling, needed only here

    details = {"onnxruntime": f"{ort.__version__} (C API ≤ {runtime_api_version()})"}
    try:
        details["sources"] = str(build.find_sources())
    except NativeBuildError as exc:
        details["sources"] = str(exc)
    details["cache"] = str(cache_dir())
    if disabled():
        return NativeStatus(False, "turned off by HNNX_NATIVE=0", details=details)
    try:
        headers = ort_headers.obtain_headers(fetch, force)
        details["headers"] = f"{headers.origin}, C API {headers.api_version} ({headers.include})"
        if headers.api_version > runtime_api_version():
            raise NativeBuildError(f"headers of C API {headers.api_version} are newer than onnxruntime "
                                   f"{ort.__version__}")
        library = build.build_library(headers, force=force)
        info = build.build_info(library)
        if info is not None:
            details["compiler"] = f"{info.get('compiler')} ({info.get('command', '').split(' -I')[0]})"
        details["library"] = str(library)
        self_test(library)
    except NativeBuildError as exc:
        return NativeStatus(False, str(exc), details=details)
    except (OSError, subprocess.SubprocessError) as exc:
        return NativeStatus(False, f"{type(exc).__name__}: {exc}", details=details)
    return NativeStatus(True, "built, loaded and self-tested: native and function-body outputs agree bit for bit",
                        library, details)


def status(*, fetch: bool = False, refresh: bool = False) -> NativeStatus:
    """The native-kernel status, resolved once per process (``refresh`` resolves again).

    Builds from headers already present; ``fetch`` also downloads missing headers (network).
    """
    with status_cache.lock:
        current = status_cache.status
        if current is None or refresh or (fetch and not current.active):
            current = status_cache.status = _resolve(fetch, force=refresh)
        return current


def setup(force: bool = False) -> NativeStatus:
    """Fetch headers if needed, build, load and self-test (``hnnx demo``; ``hnnx doctor --build``
    with ``force``, which also retries a fetch or build that failed before)."""
    return status(fetch=True, refresh=force)


def warn_fallback(current: NativeStatus) -> None:
    """Warn once per process that hnnx.LIF runs on function bodies, and why."""
    if status_cache.warned or current.active or disabled():
        return
    status_cache.warned = True
    warnings.warn(f"hnnx: native LIF kernel unavailable: {current.reason} — running the ONNX function bodies "
                  f"(correct, slower); `hnnx doctor` explains", NativeKernelWarning, stacklevel=3)


def mark_reported() -> None:
    """The caller told the user why the native path is off: no warning follows."""
    status_cache.warned = True


def register(options: ort.SessionOptions, *, required: bool = False) -> bool:
    """Register the native kernels in ``options``; True if they are active.

    With ``required`` a missing library raises NativeBuildError; otherwise hnnx warns once
    and the session runs the function bodies.
    """
    current = status()
    if current.active and current.library is not None:
        try:
            options.register_custom_ops_library(str(current.library))
            return True
        except Exception as exc:  # onnxruntime's own exception types; the self-test passed, so unexpected
            current = NativeStatus(False, f"registering {current.library} failed: {exc}")
    if required:
        raise NativeBuildError(f"native LIF kernel unavailable: {current.reason}")
    warn_fallback(current)
    return False


def describe(current: NativeStatus) -> list[str]:
    """The lines ``hnnx doctor`` prints for ``current``."""
    lines = [f"native kernels: {'active' if current.active else 'unavailable'} — {current.reason}"]
    lines += [f"  {key + ':':<12} {value}" for key, value in current.details.items()]
    if current.active:
        lines.append("hnnx.LIF runs on: the native fused kernel (function bodies stay in every model as the "
                     "portable path)")
        lines.append(f"native kernels for: {', '.join('hnnx.' + op for op in NATIVE_OPS)}")
    else:
        lines.append("hnnx.LIF runs on: the ONNX function bodies (Scan of standard ops)")
    return lines


if __name__ == "__main__":  # python -m hnnx.runtime.native: fetch headers if needed, build, report
    print("\n".join(describe(setup(force=True))))
