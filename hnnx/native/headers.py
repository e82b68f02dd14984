"""onnxruntime's C/C++ headers for building the native kernels: find them, or fetch them.

The headers are not in onnxruntime's PyPI wheel. :func:`find_headers` takes them from
``HNNX_ORT_INCLUDE`` (a directory holding ``onnxruntime_c_api.h``), from an earlier fetch in
``<cache>/ort-headers/``, or from a system install (``/usr/include/onnxruntime``).
:func:`fetch_headers` obtains Debian's ``libonnxruntime-dev`` of the newer suite
(``HNNX_DEBIAN_SUITE``, default trixie: onnxruntime 1.21, C API 21) with ``apt-get download``
from the Debian mirror of the machine's apt sources, using private source lists, package
lists and cache in a temporary directory, so the system's apt state is untouched.
:func:`obtain_headers` is the policy the runtime uses: find, else fetch when allowed, and
after a failed fetch wait :data:`FETCH_RETRY_S` before fetching again automatically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hnnx.native import NativeBuildError, cache_dir, native_cache_dir, run_tool

HEADER_FILES = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_cxx_inline.h")
MIN_API_VERSION = 17
"""The oldest onnxruntime C API the sources use (``KernelContext_ParallelFor``)."""

DEBIAN_PACKAGE = "libonnxruntime-dev"
DEFAULT_SUITE = "trixie"
"""The Debian suite whose libonnxruntime-dev (1.21) has C API 21; override with HNNX_DEBIAN_SUITE."""
DEBIAN_CODENAMES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                    "oldoldstable", "oldstable", "stable", "testing", "unstable"}
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_TIMEOUT_S = 600
FETCH_RETRY_S = 24 * 3600
"""After a failed automatic fetch, automatic attempts wait this long (``hnnx doctor --build`` does not)."""


@dataclass(frozen=True)
class Headers:
    """onnxruntime C/C++ headers: the directory holding ``onnxruntime_c_api.h``."""

    include: Path
    api_version: int
    origin: str  # where they came from, for `hnnx doctor`


# --------------------------------------------------------------------------- finding
def _api_version_of(include: Path) -> int:
    text = (include / "onnxruntime_c_api.h").read_text(errors="replace")
    match = re.search(r"#define\s+ORT_API_VERSION\s+(\d+)", text)
    if not match:
        raise NativeBuildError(f"{include / 'onnxruntime_c_api.h'}: no ORT_API_VERSION")
    return int(match.group(1))


def _header_dir(path: Path) -> Path | None:
    """``path`` or ``path/onnxruntime`` if it holds every needed header."""
    for candidate in (path, path / "onnxruntime"):
        if all((candidate / name).is_file() for name in HEADER_FILES):
            return candidate
    return None


def _headers_at(path: Path, origin: str) -> Headers:
    include = _header_dir(path)
    if include is None:
        raise NativeBuildError(f"{origin}: {path} holds no {' / '.join(HEADER_FILES)}")
    api = _api_version_of(include)
    if api < MIN_API_VERSION:
        raise NativeBuildError(f"{origin}: headers of C API {api}; the kernels need ≥ {MIN_API_VERSION}")
    return Headers(include, api, origin)


def fetched_headers_root() -> Path:
    """Where fetched headers are kept: ``<cache>/ort-headers/<package>-<version>/include``."""
    return cache_dir() / "ort-headers"


def find_headers() -> Headers:
    """The headers to build with: ``HNNX_ORT_INCLUDE``, an earlier fetch, or a system install.

    Raises NativeBuildError saying what is missing.
    """
    given = os.environ.get("HNNX_ORT_INCLUDE")
    if given:
        return _headers_at(Path(given).expanduser(), f"HNNX_ORT_INCLUDE={given}")
    fetched = sorted(fetched_headers_root().glob("*/include"), key=lambda p: p.stat().st_mtime, reverse=True)
    for include in fetched:
        origin = include.parent / "ORIGIN.txt"
        try:
            label = origin.read_text().split(" (")[0].strip() if origin.is_file() else f"fetched {include.parent.name}"
            return _headers_at(include, label)
        except (NativeBuildError, OSError):
            continue
    for system in (Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")):
        if _header_dir(system) is not None:
            try:
                return _headers_at(system, f"system {system}")
            except NativeBuildError:
                continue
    raise NativeBuildError("no onnxruntime C/C++ headers (set HNNX_ORT_INCLUDE or run `hnnx doctor --build`)")


# --------------------------------------------------------------------------- apt sources
@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry of the apt sources: a mirror URI, its suites and keyring."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()


def apt_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """The ``deb`` entries of ``sources.list``, ``sources.list.d/*.list`` and ``*.sources``."""
    found: list[AptSource] = []
    lists = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            options = re.search(r"\[([^\]]*)\]", line)
            words = re.sub(r"\[[^\]]*\]", " ", line).split()
            if len(words) < 4 or words[0] != "deb":
                continue
            signed = re.search(r"signed-by=(\S+)", options.group(1)) if options else None
            found.append(AptSource(words[1], (words[2],), tuple(words[3:]), signed.group(1) if signed else None))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for para in _deb822_paragraphs(path.read_text(errors="replace")):
            if "deb" not in para.get("types", "").split() or para.get("enabled", "yes").lower() == "no":
                continue
            signed = para.get("signed-by")
            keyring = signed if signed and "\n" not in signed and not signed.startswith("-----") else None
            for uri in para.get("uris", "").split():
                found.append(AptSource(uri, tuple(para.get("suites", "").split()),
                                       tuple(para.get("components", "").split()), keyring))
    return found


def debian_mirror(sources: list[AptSource] | None = None) -> AptSource:
    """The machine's configured Debian mirror: the first ``deb`` entry of a plain Debian
    suite (not ``-security``/``-updates``) with the ``main`` component."""
    for source in apt_sources() if sources is None else sources:
        if "main" in source.components and any(suite in DEBIAN_CODENAMES for suite in source.suites):
            return source
    raise NativeBuildError("no Debian mirror in the apt sources (/etc/apt/sources.list*)")


# --------------------------------------------------------------------------- fetching
def fetch_headers(suite: str | None = None) -> Headers:
    """Download Debian's ``libonnxruntime-dev`` from the configured mirror and keep its headers
    in the cache. apt runs with private source lists, package lists and cache (in a temporary
    directory), so the system's apt state is untouched. Raises NativeBuildError."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise NativeBuildError("fetching headers needs apt-get and dpkg-deb (Debian); set HNNX_ORT_INCLUDE instead")
    suite = suite or os.environ.get("HNNX_DEBIAN_SUITE") or DEFAULT_SUITE
    mirror = debian_mirror()
    keyring = mirror.signed_by or (str(DEFAULT_KEYRING) if DEFAULT_KEYRING.is_file() else None)
    with tempfile.TemporaryDirectory(prefix="hnnx-apt-") as tmp:
        root = Path(tmp)
        for sub in ("sources.list.d", "lists/partial", "cache/archives/partial", "download"):
            (root / sub).mkdir(parents=True)
        option = f"[signed-by={keyring}] " if keyring else ""
        (root / "sources.list").write_text(f"deb {option}{mirror.uri} {suite} main\n")
        (root / "status").write_text("")
        user = _current_user()
        apt = ["apt-get", "-q", "-o", f"Dir::Etc::sourcelist={root / 'sources.list'}",
               "-o", f"Dir::Etc::sourceparts={root / 'sources.list.d'}", "-o", f"Dir::State::Lists={root / 'lists'}",
               "-o", f"Dir::Cache={root / 'cache'}", "-o", f"Dir::State::status={root / 'status'}",
               "-o", "Debug::NoLocking=1", "-o", "Acquire::Languages=none",
               *(["-o", f"APT::Sandbox::User={user}"] if user else [])]
        run_tool(apt + ["update"], f"apt-get update ({suite})", APT_TIMEOUT_S)
        run_tool(apt + ["download", DEBIAN_PACKAGE], f"apt-get download {DEBIAN_PACKAGE} ({suite})", APT_TIMEOUT_S,
                 cwd=root / "download")
        debs = sorted((root / "download").glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise NativeBuildError(f"apt-get download left no {DEBIAN_PACKAGE} package")
        version = debs[0].name.split("_")[1].replace("%3a", ":")
        run_tool(["dpkg-deb", "-x", str(debs[0]), str(root / "x")], "dpkg-deb -x", APT_TIMEOUT_S)
        extracted = _header_dir(root / "x" / "usr" / "include" / "onnxruntime")
        if extracted is None:
            raise NativeBuildError(f"{debs[0].name} holds no onnxruntime headers")
        target = fetched_headers_root() / f"{DEBIAN_PACKAGE}-{version}"
        staging = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(extracted, staging / "include")
        (staging / "ORIGIN.txt").write_text(f"Debian {suite} {DEBIAN_PACKAGE} {version} ({debs[0].name})\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return _headers_at(target / "include", f"Debian {suite} {DEBIAN_PACKAGE} {version}")


def _current_user() -> str | None:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return None


def _fetch_failure_marker() -> Path:
    return native_cache_dir() / "fetch-failed.json"


def _recent_fetch_failure() -> str | None:
    """The reason of a fetch that failed less than FETCH_RETRY_S ago, else None."""
    try:
        record = json.loads(_fetch_failure_marker().read_text())
    except (OSError, ValueError):
        return None
    if time.time() - float(record.get("time", 0)) < FETCH_RETRY_S:
        return str(record.get("reason", "unknown"))
    return None


def obtain_headers(fetch: bool, force: bool) -> Headers:
    """:func:`find_headers`; when none are found and ``fetch`` is set (and ``HNNX_ORT_INCLUDE``
    is not), :func:`fetch_headers` — unless a fetch failed within FETCH_RETRY_S and not
    ``force``. A failed fetch is recorded in the cache. Raises NativeBuildError."""
    try:
        return find_headers()
    except NativeBuildError:
        if not fetch or os.environ.get("HNNX_ORT_INCLUDE"):
            raise
    previous = None if force else _recent_fetch_failure()
    if previous is not None:
        raise NativeBuildError(f"no onnxruntime headers; fetching them failed earlier: {previous} "
                               f"(retry: `hnnx doctor --build`)")
    try:
        return fetch_headers()
    except NativeBuildError as exc:
        marker = _fetch_failure_marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"time": time.time(), "reason": str(exc)}))
        raise
