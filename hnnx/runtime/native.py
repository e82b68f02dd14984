"""The native fast path at run time: find, load, self-test and register the ``hnnx.LIF`` kernel.

Models always carry their function bodies and run anywhere. When the C++ onnxruntime
custom-op library built from ``custom_ops/`` is registered in a session, onnxruntime runs
its fused kernel for ``hnnx.LIF`` nodes instead of inlining their bodies; the results are
bit-identical.

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
    handle = ctypes.CDLL(str(library))  # the same handle onnxruntime opened: dlopen is refcounted
    handle.hnnx_native_lif_calls.restype = ctypes.c_uint64
    return int(handle.hnnx_native_lif_calls())


def _probe_model() -> tuple["onnx.ModelProto", dict[str, np.ndarray]]:
    """Two LIF nodes touching every part of the equations, float and integer, with feeds."""
    import onnx
    from onnx import TensorProto, helper

    from hnnx import ops

    nodes = [
        ops.make_node("LIF", ["x", "v0", "", "r0"], ["s", "v", "theta", "r"], name="float_probe", threshold=0.75,
                      reset_mode="soft", alpha=0.8125, beta=-0.0625, v_lower=-0.5, refractory=1,
                      theta_alpha=0.5, theta_beta=0.03125, theta_increment=0.25),
        ops.make_node("LIF", ["xi"], ["si", "vi"], name="integer_probe", mode="integer", state_bits=12,
                      threshold=300, reset_mode="soft_constant", reset_decrement=200, alpha=200 / 256, beta=-3),
    ]
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(0.3, 0.6, (9, 3, 70)).astype(np.float32),
             "v0": rng.normal(0.0, 0.3, 70).astype(np.float32),
             "r0": rng.integers(-1, 3, (3, 70)).astype(np.int32),
             "xi": rng.integers(-600, 2000, (9, 3, 70)).astype(np.int32)}
    f, i = TensorProto.FLOAT, TensorProto.INT32
    graph = helper.make_graph(
        nodes, "hnnx_native_probe",
        [helper.make_tensor_value_info(name, i if value.dtype == np.int32 else f, value.shape)
         for name, value in feeds.items()],
        [helper.make_tensor_value_info(name, elem, None)
         for name, elem in (("s", f), ("v", f), ("theta", f), ("r", i), ("si", i), ("vi", i))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)])
    return ops.attach_functions(model), feeds


def self_test(library: Path) -> None:
    """Register ``library`` in a session, run the probe model natively and through the
    function bodies, and require that the native kernel ran and agreed bit for bit.

    Raises NativeBuildError (e.g. when this onnxruntime lacks the library's C API).
    """
    model, feeds = _probe_model()
    data = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        options.register_custom_ops_library(str(library))
        native_session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        before = lif_calls(library)
        native = native_session.run(None, feeds)
        ran = lif_calls(library) - before
    except Exception as exc:  # onnxruntime raises its own exception types
        text = str(exc).strip().splitlines()
        raise NativeBuildError(f"onnxruntime {ort.__version__} cannot use the library: "
                               f"{text[0] if text else type(exc).__name__}") from None
    reference = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    if ran != 2:
        raise NativeBuildError(f"onnxruntime ran the function bodies, not the native kernel ({ran} of 2 nodes)")
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
    else:
        lines.append("hnnx.LIF runs on: the ONNX function bodies (Scan of standard ops)")
    return lines


if __name__ == "__main__":  # python -m hnnx.runtime.native: fetch headers if needed, build, report
    print("\n".join(describe(setup(force=True))))
