"""Compiling the native kernels into the hnnx cache.

:func:`build_library` compiles ``hnnx_ops.cc`` (which includes ``lif_kernel.h``) with the
C++ compiler (``CXX``, else ``c++``/``g++``/``clang++``) against onnxruntime headers
(:mod:`hnnx.native.headers`) into ``<cache>/native/<key>/libhnnx_ops.so``, ``<key>``
hashing the sources, headers, compiler, flags and CPU (:func:`build_key`). Next to the
library: ``build.json`` (compiler, command, headers, seconds), ``build.log`` and, after a
failed compile, ``build.failed`` (not retried for the same key unless forced). A lock on
``<cache>/native`` makes concurrent processes build once.

The sources ship as package data in ``hnnx/native/custom_ops/`` (in a source checkout a
link to the top-level ``custom_ops/``); :func:`find_sources` tries that first, then
``custom_ops/`` of the source checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hnnx.native import NativeBuildError, native_cache_dir, run_tool
from hnnx.native.headers import HEADER_FILES, Headers

LIBRARY_NAME = "libhnnx_ops.so"
SOURCE_FILES = ("hnnx_ops.cc", "ort_support.h", "lif_kernel.h", "lif_op.h", "hybrid_kernels.h", "hybrid_ops.h",
                "spike_layers.h", "spike_layer_ops.h")
PACKAGED_SOURCE_DIR = Path(__file__).parent / "custom_ops"
"""The sources as installed package data (in a source checkout, a link to ``custom_ops/``)."""
CHECKOUT_SOURCE_DIR = Path(__file__).resolve().parents[2] / "custom_ops"
"""``custom_ops/`` of the source checkout this module sits in (tried second)."""

# Floating-point contraction (a·b + c fused into one rounding) would change float results.
# -fno-trapping-math only lets the compiler evaluate both sides of a select (if-conversion,
# hence vectorization); it reorders or fuses no arithmetic, so every value stays the same.
COMPILE_FLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
                 "-fno-trapping-math", "-fvisibility=hidden", "-pthread")
ARCH_FLAGS = ("-march=native",)
"""Tried first (the library is built on the machine that runs it); dropped if rejected."""
COMPILE_TIMEOUT_S = 600


def find_sources() -> Path:
    """The directory holding every file of SOURCE_FILES: the installed package data first,
    then the source checkout's ``custom_ops/`` (symbolic links resolved).

    Raises NativeBuildError naming both places when neither holds them.
    """
    for candidate in (PACKAGED_SOURCE_DIR, CHECKOUT_SOURCE_DIR):
        if all((candidate / name).is_file() for name in SOURCE_FILES):
            return candidate.resolve()
    raise NativeBuildError(f"the C++ sources ({', '.join(SOURCE_FILES)}) are neither in {PACKAGED_SOURCE_DIR} "
                           f"nor in {CHECKOUT_SOURCE_DIR} (reinstall hnnx)")


def find_compiler() -> list[str]:
    """The C++ compiler command: ``CXX``, else ``c++``, ``g++`` or ``clang++`` on PATH."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return [name]
    raise NativeBuildError("no C++ compiler (install g++ or set CXX)")


def compiler_id(compiler: list[str]) -> str:
    """The first line of ``compiler --version`` (part of the build key)."""
    out = run_tool([*compiler, "--version"], f"{compiler[0]} --version", 60)
    return out.strip().splitlines()[0] if out.strip() else compiler[0]


def _cpu_tag() -> str:
    """What -march=native depends on: the CPU's feature flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return hashlib.sha256(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key(headers: Headers, identity: str, sources: Path | None = None) -> str:
    """The cache key of a build (16 hex digits): the contents of the sources (in ``sources``,
    default :func:`find_sources`) and headers, the compiler's ``identity`` (its
    :func:`compiler_id`), the flags, the machine and the CPU."""
    sources = sources or find_sources()
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + b"\0" + (sources / name).read_bytes())
    for name in HEADER_FILES:
        digest.update((headers.include / name).read_bytes())
    for part in (identity, " ".join(COMPILE_FLAGS + ARCH_FLAGS), platform.machine(), _cpu_tag()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


class _BuildLock:
    """An exclusive lock on the native cache, so concurrent processes build once (POSIX;
    elsewhere builds are not serialised, and the atomic rename still keeps them whole)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(directory / ".lock", "w")
        try:
            import fcntl

            self._fcntl = fcntl
        except ImportError:
            self._fcntl = None

    def __enter__(self) -> "_BuildLock":
        if self._fcntl is not None:
            self._fcntl.flock(self._file, self._fcntl.LOCK_EX)
        return self

    def __exit__(self, *_: object) -> None:
        if self._fcntl is not None:
            self._fcntl.flock(self._file, self._fcntl.LOCK_UN)
        self._file.close()


def build_library(headers: Headers, compiler: list[str] | None = None, force: bool = False) -> Path:
    """Compile the sources against ``headers`` into the cache (reused when already built).

    Returns the library path; raises NativeBuildError (the compiler's log is kept next to
    where the library would be). A failed build is not retried for the same key unless
    ``force``.
    """
    sources = find_sources()
    compiler = compiler or find_compiler()
    identity = compiler_id(compiler)
    target_dir = native_cache_dir() / build_key(headers, identity, sources)
    library = target_dir / LIBRARY_NAME
    failed = target_dir / "build.failed"
    if library.is_file():
        return library
    with _BuildLock(native_cache_dir()):
        if library.is_file():  # another process built it while we waited
            return library
        if failed.is_file() and not force:
            raise NativeBuildError(failed.read_text().strip())
        target_dir.mkdir(parents=True, exist_ok=True)
        partial = target_dir / f".{LIBRARY_NAME}.{os.getpid()}"
        log = target_dir / "build.log"
        started = time.perf_counter()
        for arch in (ARCH_FLAGS, ()):  # () for a compiler without -march=native: the baseline ISA
            command = [*compiler, *arch, *COMPILE_FLAGS, f"-I{headers.include}", str(sources / "hnnx_ops.cc"),
                       "-o", str(partial)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
            log.write_text(shlex.join(command) + "\n" + done.stdout + done.stderr)
            if done.returncode == 0:
                break
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line), "see the log")
            message = f"compiling the native kernels failed: {first.strip()} (log: {log})"
            failed.write_text(message + "\n")
            raise NativeBuildError(message)
        failed.unlink(missing_ok=True)
        info = {"compiler": identity, "command": shlex.join(command), "headers": headers.origin,
                "header_dir": str(headers.include), "api_version": headers.api_version,
                "seconds": round(time.perf_counter() - started, 1), "built": time.strftime("%Y-%m-%d %H:%M:%S")}
        (target_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(partial, library)
    return library


def build_info(library: Path) -> dict[str, Any] | None:
    """The ``build.json`` record next to a library built by :func:`build_library` (None if absent)."""
    record = library.with_name("build.json")
    if not record.is_file():
        return None
    return json.loads(record.read_text())
