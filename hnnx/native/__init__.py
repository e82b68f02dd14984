"""Building the native kernels: onnxruntime's headers and the C++ compiler.

The C++ sources of the ``hnnx`` custom-op library live in ``custom_ops/`` and ship as
package data (``hnnx/native/custom_ops/``). This package turns them into
``libhnnx_ops.so`` in the hnnx cache:

- :mod:`hnnx.native.headers` finds onnxruntime's C/C++ headers (``HNNX_ORT_INCLUDE``, an
  earlier fetch, a system install) or fetches them from Debian's ``libonnxruntime-dev``
  with a private apt configuration (``HNNX_DEBIAN_SUITE``).
- :mod:`hnnx.native.build` finds the sources (package data, else the source checkout) and
  the compiler (``CXX``), computes the build key and compiles into the cache under a lock.

Loading, self-testing and registering the library, and the status ``hnnx doctor`` reports,
are the runtime's (:mod:`hnnx.runtime.native`). Nothing in this package imports the
runtime or onnxruntime.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hnnx.errors import HnnxError


class NativeBuildError(HnnxError):
    """A step of fetching headers, building or loading the library failed (message: one line)."""


def cache_dir() -> Path:
    """The hnnx cache: ``HNNX_CACHE_DIR``, ``$XDG_CACHE_HOME/hnnx`` or ``~/.cache/hnnx``."""
    if os.environ.get("HNNX_CACHE_DIR"):
        return Path(os.environ["HNNX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hnnx"


def native_cache_dir() -> Path:
    """Where built libraries and the build and fetch records live: ``<cache>/native``."""
    return cache_dir() / "native"


def run_tool(command: list[str], what: str, timeout: float, cwd: Path | None = None) -> str:
    """Run an external tool (apt-get, dpkg-deb, the compiler) and return its stdout.

    Raises NativeBuildError naming ``what`` with the tool's last error line (apt's ``E:``
    lines first) when it is missing, times out (``timeout`` in seconds) or fails.
    """
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise NativeBuildError(f"{what}: {command[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise NativeBuildError(f"{what}: timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        errors = [line for line in (done.stderr or done.stdout).splitlines() if line.startswith("E:")]
        detail = (errors or (done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
        raise NativeBuildError(f"{what} failed: {detail.strip()}")
    return done.stdout
