"""The C++ sources of the native kernels ship in the wheel and are found after a plain install.

The sources live in the top-level ``custom_ops/``; ``hnnx/native/custom_ops`` links to it
and pyproject's package data puts its files in the wheel. Here a wheel is built from a copy
of the tree (so the working tree gets no ``build/``), its contents are checked against
``custom_ops/``, and it is installed (not editable) into a fresh virtual environment whose
Python must find the sources through :func:`hnnx.native.build.find_sources` — the lookup of
``hnnx doctor --build`` — inside that environment. Nothing is compiled.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hnnx.native import NativeBuildError
from hnnx.native import build as native_build

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_SOURCES = ROOT / "custom_ops"
BUILD_INPUTS = ("pyproject.toml", "README.md", "hnnx", "custom_ops", "setup.py", "setup.cfg", "MANIFEST.in",
                "LICENSE")
"""What setuptools reads to build the wheel (the optional ones are copied when present)."""


def packaged_path() -> str:
    """Where the lookup expects the sources inside an installed tree, e.g. ``hnnx/native/custom_ops``."""
    return native_build.PACKAGED_SOURCE_DIR.relative_to(ROOT).as_posix()


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for pip and the installed Python: no index, nothing of this checkout on the path."""
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", **extra)
    return env


def run(command: list[str], cwd: Path, **extra_env: str) -> str:
    done = subprocess.run(command, cwd=cwd, env=offline_env(**extra_env), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# ---------------------------------------------------------------------------------------------
# The lookup order, in this checkout
# ---------------------------------------------------------------------------------------------
def test_checkout_link_points_at_custom_ops() -> None:
    assert native_build.PACKAGED_SOURCE_DIR.is_symlink()
    assert native_build.PACKAGED_SOURCE_DIR.resolve() == CHECKOUT_SOURCES.resolve()
    assert native_build.find_sources() == CHECKOUT_SOURCES.resolve()


def test_lookup_tries_package_data_then_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    packaged = tmp_path / "packaged"
    packaged.mkdir()
    for name in native_build.SOURCE_FILES:
        (packaged / name).write_text(f"// {name}\n")
    monkeypatch.setattr(native_build, "PACKAGED_SOURCE_DIR", packaged)
    assert native_build.find_sources() == packaged.resolve()
    (packaged / native_build.SOURCE_FILES[-1]).unlink()  # incomplete package data: the checkout
    assert native_build.find_sources() == CHECKOUT_SOURCES.resolve()
    monkeypatch.setattr(native_build, "CHECKOUT_SOURCE_DIR", tmp_path / "nowhere")
    with pytest.raises(NativeBuildError, match=r"C\+\+ sources .* neither in .*packaged nor in .*nowhere"):
        native_build.find_sources()


# ---------------------------------------------------------------------------------------------
# The wheel and a non-editable install
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this tree, built offline with the installed setuptools from a copy of the build inputs."""
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("building a wheel offline needs pip and setuptools in this Python")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            # symlinks=True keeps hnnx/native/custom_ops a link, now to the copy's custom_ops
            shutil.copytree(path, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
        elif path.is_file():
            shutil.copy2(path, source / name)
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(work / "dist")], cwd=source)
    wheels = sorted((work / "dist").glob("hnnx-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_the_sources_where_the_lookup_looks(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in native_build.SOURCE_FILES:
            member = f"{packaged_path()}/{name}"
            assert member in names, f"{wheel.name} lacks {member}"
            assert archive.read(member) == (CHECKOUT_SOURCES / name).read_bytes(), f"{member} differs from custom_ops/"
        assert Path(native_build.__file__).relative_to(ROOT).as_posix() in names


def test_plain_install_finds_the_sources_in_its_package(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    # Without pip of its own (fast); this Python's pip, run by the environment's Python, installs into it.
    created = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
                             capture_output=True, text=True, timeout=60)
    if created.returncode != 0:
        pytest.skip(f"no virtual environments in this Python: {created.stderr.strip().splitlines()[-1:]}")
    python = env_dir / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--ignore-installed", "-q",
         str(wheel)], cwd=tmp_path)
    probe = ("import json, hnnx, hnnx.native.build as b; "
             "print(json.dumps({'package': hnnx.__file__, 'sources': str(b.find_sources())}))")
    found = json.loads(run([str(python), "-c", probe], cwd=tmp_path))
    package = Path(found["package"]).parent
    assert package.is_relative_to(env_dir), f"imported hnnx from {package}, not the installed wheel"
    sources = Path(found["sources"])
    assert sources == package.parent / packaged_path()
    for name in native_build.SOURCE_FILES:
        assert (sources / name).read_bytes() == (CHECKOUT_SOURCES / name).read_bytes()
    # hnnx doctor --build reports the same place (HNNX_NATIVE=0: it stops before fetching or compiling).
    doctor = run([str(env_dir / "bin" / "hnnx"), "doctor", "--build"], cwd=tmp_path, HNNX_NATIVE="0",
                 HNNX_CACHE_DIR=str(tmp_path / "cache"))
    assert f"  sources:     {sources}\n" in doctor, doctor
    assert "turned off by HNNX_NATIVE=0" in doctor
