"""Optional packages of the extras (``hnnx[ray]``, ``hnnx[plot]``): tests that need one skip without it,
unless ``HNNX_REQUIRE_EXTRAS=1`` (set by CI, which installs the extras), where they fail."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRED = os.environ.get("HNNX_REQUIRE_EXTRAS", "") == "1"


def require(module: str, extra: str) -> ModuleType:
    """``module`` imported; a skip (a failure under ``HNNX_REQUIRE_EXTRAS=1``) naming ``hnnx[extra]`` without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{module} is not installed (pip install 'hnnx[{extra}]')"
        if REQUIRED:
            pytest.fail(f"HNNX_REQUIRE_EXTRAS=1 but {message}")
        pytest.skip(message, allow_module_level=True)
        raise  # unreachable: pytest.skip raises
