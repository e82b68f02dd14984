"""The native fast path: a C++ onnxruntime custom-op library for ``hnnx.LIF``.

Models always carry their function bodies and run anywhere. When the library in
``custom_ops/`` is built and registered in a session, onnxruntime runs its fused kernel
for ``hnnx.LIF`` nodes instead of inlining their bodies; the results are bit-identical.

How the library comes to be (all cached, nothing needs a network after the headers exist):

1. **Headers** — onnxruntime's C/C++ headers are not in the PyPI wheel. They come from
   ``HNNX_ORT_INCLUDE`` (a directory holding ``onnxruntime_c_api.h``), from an earlier
   fetch in the cache, or from a system install (``/usr/include/onnxruntime``).
   :func:`fetch_headers` obtains them from Debian's ``libonnxruntime-dev`` (newer suite,
   C API 21) with ``apt-get download`` from the machine's configured Debian mirror, using a
   private apt configuration so the system's apt state is untouched.
2. **Build** — the C++ compiler (``CXX`` or ``c++``/``g++``/``clang++``) compiles the
   sources into ``<cache>/native/<key>/libhnnx_ops.so``, ``<key>`` hashing the sources,
   headers, compiler and flags. Floating-point contraction is off so float results equal
   the function bodies.
3. **Check** — the library is registered in a session and a probe model runs through both
   paths; only a library that loads, runs and agrees is used.

``hnnx demo`` (the last step of the documented install) and ``hnnx doctor --build`` fetch
headers when needed; any other first use only compiles from headers already present. When
anything is missing, hnnx runs the function bodies and warns once (:func:`warn_fallback`);
``hnnx doctor`` says which path is active and why. ``HNNX_NATIVE=0`` turns the native path
off. The cache lives in ``HNNX_CACHE_DIR``, else ``$XDG_CACHE_HOME/hnnx``, else
``~/.cache/hnnx``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort

from hnnx.errors import HnnxError

LIBRARY_NAME = "libhnnx_ops.so"
SOURCE_FILES = ("hnnx_ops.cc", "lif_kernel.h")
SOURCE_DIR = Path(__file__).resolve().parents[2] / "custom_ops"
"""Where the C++ sources live: ``custom_ops/`` of the source tree (editable installs)."""

HEADER_FILES = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_cxx_inline.h")
MIN_API_VERSION = 17
"""The oldest onnxruntime C API the sources use (``KernelContext_ParallelFor``)."""

# Floating-point contraction (a·b + c fused into one rounding) would change float results.
# -fno-trapping-math only lets the compiler evaluate both sides of a select (if-conversion,
# hence vectorization); it reorders or fuses no arithmetic, so every value stays the same.
COMPILE_FLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
                 "-fno-trapping-math", "-fvisibility=hidden", "-pthread")
ARCH_FLAGS = ("-march=native",)
"""Tried first (the library is built on the machine that runs it); dropped if rejected."""

DEBIAN_PACKAGE = "libonnxruntime-dev"
DEFAULT_SUITE = "trixie"
"""The Debian suite whose libonnxruntime-dev (1.21) has C API 21; override with HNNX_DEBIAN_SUITE."""
DEBIAN_CODENAMES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                    "oldoldstable", "oldstable", "stable", "testing", "unstable"}
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_TIMEOUT_S = 600
COMPILE_TIMEOUT_S = 600
FETCH_RETRY_S = 24 * 3600
"""After a failed automatic fetch, automatic attempts wait this long (``hnnx doctor --build`` does not)."""


class NativeKernelWarning(UserWarning):
    """hnnx falls back to function bodies because the native kernels are unavailable."""


class NativeBuildError(HnnxError):
    """A step of fetching headers or building the library failed (message: one line)."""


@dataclass(frozen=True)
class Headers:
    """onnxruntime C/C++ headers: the directory holding ``onnxruntime_c_api.h``."""

    include: Path
    api_version: int
    origin: str  # where they came from, for `hnnx doctor`


@dataclass(frozen=True)
class NativeStatus:
    """Whether the native kernels are active, and why (``reason``: one line)."""

    active: bool
    reason: str
    library: Path | None = None
    details: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- locations
def cache_dir() -> Path:
    """The hnnx cache: ``HNNX_CACHE_DIR``, ``$XDG_CACHE_HOME/hnnx`` or ``~/.cache/hnnx``."""
    if os.environ.get("HNNX_CACHE_DIR"):
        return Path(os.environ["HNNX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hnnx"


def disabled() -> bool:
    """True when ``HNNX_NATIVE`` is 0/off/false/no."""
    return os.environ.get("HNNX_NATIVE", "").strip().lower() in {"0", "off", "false", "no"}


def runtime_api_version() -> int:
    """The newest C API version of the installed onnxruntime (its minor version, e.g. 32)."""
    match = re.match(r"(\d+)\.(\d+)", ort.__version__)
    return int(match.group(2)) if match and match.group(1) == "1" else 0


# --------------------------------------------------------------------------- headers
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


def _fetched_headers_root() -> Path:
    return cache_dir() / "ort-headers"


def find_headers() -> Headers:
    """The headers to build with: ``HNNX_ORT_INCLUDE``, an earlier fetch, or a system install.

    Raises NativeBuildError saying what is missing.
    """
    given = os.environ.get("HNNX_ORT_INCLUDE")
    if given:
        return _headers_at(Path(given).expanduser(), f"HNNX_ORT_INCLUDE={given}")
    fetched = sorted(_fetched_headers_root().glob("*/include"), key=lambda p: p.stat().st_mtime, reverse=True)
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


def _run(command: list[str], what: str, timeout: float, cwd: Path | None = None) -> str:
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
        _run(apt + ["update"], f"apt-get update ({suite})", APT_TIMEOUT_S)
        _run(apt + ["download", DEBIAN_PACKAGE], f"apt-get download {DEBIAN_PACKAGE} ({suite})", APT_TIMEOUT_S,
             cwd=root / "download")
        debs = sorted((root / "download").glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise NativeBuildError(f"apt-get download left no {DEBIAN_PACKAGE} package")
        version = debs[0].name.split("_")[1].replace("%3a", ":")
        _run(["dpkg-deb", "-x", str(debs[0]), str(root / "x")], "dpkg-deb -x", APT_TIMEOUT_S)
        extracted = _header_dir(root / "x" / "usr" / "include" / "onnxruntime")
        if extracted is None:
            raise NativeBuildError(f"{debs[0].name} holds no onnxruntime headers")
        target = _fetched_headers_root() / f"{DEBIAN_PACKAGE}-{version}"
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


# --------------------------------------------------------------------------- build
def find_compiler() -> list[str]:
    """The C++ compiler command: ``CXX``, else ``c++``, ``g++`` or ``clang++`` on PATH."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return [name]
    raise NativeBuildError("no C++ compiler (install g++ or set CXX)")


def _compiler_id(compiler: list[str]) -> str:
    out = _run([*compiler, "--version"], f"{compiler[0]} --version", 60)
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


def build_key(headers: Headers, compiler_id: str) -> str:
    """The cache key of a build: sources, headers, compiler, flags and CPU."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    for name in HEADER_FILES:
        digest.update((headers.include / name).read_bytes())
    for part in (compiler_id, " ".join(COMPILE_FLAGS + ARCH_FLAGS), platform.machine(), _cpu_tag()):
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
    if not all((SOURCE_DIR / name).is_file() for name in SOURCE_FILES):
        raise NativeBuildError(f"the C++ sources are not in {SOURCE_DIR} (install hnnx from a source checkout "
                               "with `pip install -e`)")
    compiler = compiler or find_compiler()
    compiler_id = _compiler_id(compiler)
    target_dir = cache_dir() / "native" / build_key(headers, compiler_id)
    library = target_dir / LIBRARY_NAME
    failed = target_dir / "build.failed"
    if library.is_file():
        return library
    with _BuildLock(cache_dir() / "native"):
        if library.is_file():  # another process built it while we waited
            return library
        if failed.is_file() and not force:
            raise NativeBuildError(failed.read_text().strip())
        target_dir.mkdir(parents=True, exist_ok=True)
        partial = target_dir / f".{LIBRARY_NAME}.{os.getpid()}"
        log = target_dir / "build.log"
        started = time.perf_counter()
        for arch in (ARCH_FLAGS, ()):  # () for a compiler without -march=native: the baseline ISA
            command = [*compiler, *arch, *COMPILE_FLAGS, f"-I{headers.include}", str(SOURCE_DIR / "hnnx_ops.cc"),
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
        info = {"compiler": compiler_id, "command": shlex.join(command), "headers": headers.origin,
                "header_dir": str(headers.include), "api_version": headers.api_version,
                "seconds": round(time.perf_counter() - started, 1), "built": time.strftime("%Y-%m-%d %H:%M:%S")}
        (target_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(partial, library)
    return library


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
_lock = threading.Lock()
_status: NativeStatus | None = None
_warned = False


def _failure_marker() -> Path:
    return cache_dir() / "native" / "fetch-failed.json"


def _recent_fetch_failure() -> str | None:
    try:
        record = json.loads(_failure_marker().read_text())
    except (OSError, ValueError):
        return None
    if time.time() - float(record.get("time", 0)) < FETCH_RETRY_S:
        return str(record.get("reason", "unknown"))
    return None


def _obtain_headers(fetch: bool, force: bool) -> Headers:
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
        marker = _failure_marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"time": time.time(), "reason": str(exc)}))
        raise


def _resolve(fetch: bool, force: bool) -> NativeStatus:
    details = {"onnxruntime": f"{ort.__version__} (C API ≤ {runtime_api_version()})", "sources": str(SOURCE_DIR),
               "cache": str(cache_dir())}
    if disabled():
        return NativeStatus(False, "turned off by HNNX_NATIVE=0", details=details)
    try:
        headers = _obtain_headers(fetch, force)
        details["headers"] = f"{headers.origin}, C API {headers.api_version} ({headers.include})"
        if headers.api_version > runtime_api_version():
            raise NativeBuildError(f"headers of C API {headers.api_version} are newer than onnxruntime "
                                   f"{ort.__version__}")
        library = build_library(headers, force=force)
        build_info = library.with_name("build.json")
        if build_info.is_file():
            info = json.loads(build_info.read_text())
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
    global _status
    with _lock:
        if _status is None or refresh or (fetch and not _status.active):
            _status = _resolve(fetch, force=refresh)
        return _status


def setup(force: bool = False) -> NativeStatus:
    """Fetch headers if needed, build, load and self-test (``hnnx demo``; ``hnnx doctor --build``
    with ``force``, which also retries a fetch or build that failed before)."""
    return status(fetch=True, refresh=force)


def warn_fallback(current: NativeStatus) -> None:
    """Warn once per process that hnnx.LIF runs on function bodies, and why."""
    global _warned
    if _warned or current.active or disabled():
        return
    _warned = True
    warnings.warn(f"hnnx: native LIF kernel unavailable: {current.reason} — running the ONNX function bodies "
                  f"(correct, slower); `hnnx doctor` explains", NativeKernelWarning, stacklevel=3)


def mark_reported() -> None:
    """The caller told the user why the native path is off: no warning follows."""
    global _warned
    _warned = True


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
