"""The native ``hnnx.LIF`` kernel (custom_ops/) against the ONNX function bodies.

1. Every LIF test case of test_lif.py runs again here, with each model it builds also run
   by a session that has the native library registered: the native outputs must equal the
   function-body outputs bit for bit, and the native kernel must have run for every node.
2. Native-only cases: many neuron blocks over several threads, strided broadcasting of
   initial states, errors, onnxruntime preferring the kernel over a model's function.
3. Plumbing: Simulator/simulate flags, the one fallback warning, ``hnnx doctor``, the apt
   source parsing, the header fetch policy and the build cache (:mod:`hnnx.native`).

Without the native library (no compiler or headers) the tests that need it are skipped,
unless ``HNNX_REQUIRE_NATIVE=1`` (set by CI), where they fail.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import hnnx
import hnnx.ops
import test_lif
from conftest import assert_same_array, run_onnxruntime
from hnnx import models
from hnnx.cli import main
from hnnx.native import NativeBuildError
from hnnx.native import build as native_build
from hnnx.native import headers as ort_headers
from hnnx.runtime import native

# ---------------------------------------------------------------------------------------------
# The library
# ---------------------------------------------------------------------------------------------
REQUIRED = os.environ.get("HNNX_REQUIRE_NATIVE", "") == "1"


@pytest.fixture(scope="module")
def library() -> Path:
    """The built, self-tested native library (skip, or fail under HNNX_REQUIRE_NATIVE=1)."""
    current = native.status()
    if not current.active or current.library is None:
        if REQUIRED:
            pytest.fail(f"HNNX_REQUIRE_NATIVE=1 but the native kernel is unavailable: {current.reason}")
        pytest.skip(f"native kernel unavailable: {current.reason}")
    return current.library


def native_session(model: onnx.ModelProto, library: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def lif_node_count(model: onnx.ModelProto) -> int:
    return sum(node.op_type == "LIF" for node in hnnx.ops.hnnx_nodes(model.graph))


def run_native(model: onnx.ModelProto, feeds: dict[str, np.ndarray], library: Path, threads: int = 0
               ) -> list[np.ndarray]:
    """Outputs of ``model`` with the native library registered; asserts the kernel ran once per LIF node."""
    session = native_session(model, library, threads)
    before = native.lif_calls(library)
    outputs = session.run(None, feeds)
    assert native.lif_calls(library) - before == lif_node_count(model), "onnxruntime did not run the native kernel"
    return outputs


def assert_native_equals_bodies(model: onnx.ModelProto, feeds: dict[str, np.ndarray], library: Path,
                                threads: int = 0) -> list[np.ndarray]:
    """Native and function-body outputs are equal (dtype, shape, bits); returns them."""
    bodies = run_onnxruntime(model, feeds)
    for name, got, expected in zip([o.name for o in model.graph.output], run_native(model, feeds, library, threads),
                                   bodies):
        assert_same_array(got, expected, f"native kernel vs function body, output {name!r}")
        assert got.tobytes() == expected.tobytes(), f"output {name!r}: equal values, different bits (signed zero?)"
    return bodies


# ---------------------------------------------------------------------------------------------
# 1. Every LIF test case of test_lif.py, through both paths
# ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _lif_models_also_run_natively(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """For the test_lif tests collected here: every model test_lif runs also runs natively."""
    if getattr(request.function, "__module__", None) != test_lif.__name__:
        return
    lib = request.getfixturevalue("library")
    original = test_lif.run_model_both_ways

    def both_ways_and_native(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = original(model, feeds)  # onnxruntime bodies == onnx.reference
        for name, got, expected in zip([o.name for o in model.graph.output], run_native(model, feeds, lib), outputs):
            assert_same_array(got, expected, f"native kernel vs function body, output {name!r}")
        return outputs

    monkeypatch.setattr(test_lif, "run_model_both_ways", both_ways_and_native)


LIF_TESTS = {name: test for name, test in vars(test_lif).items() if name.startswith("test_") and callable(test)}
globals().update(LIF_TESTS)  # collected here too, with the fixture above


def test_every_test_lif_case_is_rerun_here() -> None:
    assert len(LIF_TESTS) >= 30 and "test_random_configurations_agree_on_all_paths" in LIF_TESTS


# ---------------------------------------------------------------------------------------------
# 2. Native-only cases
# ---------------------------------------------------------------------------------------------
def one_node_model(node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A model of one LIF node with graph inputs typed like ``feeds`` and outputs of unknown shape."""
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    compute = elem[feeds["current"].dtype]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, elem[v.dtype], v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(name, TensorProto.INT32 if index == 3 else compute, None)
         for index, name in enumerate(node.output) if name])
    return hnnx.ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def wide_case(integer: bool, reset_mode: str, seed: int, steps: int = 7, neuron_shape: tuple[int, ...] = (3, 1500),
              initial_shape: tuple[int, ...] | None = (3, 1)) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A LIF layer of several neuron blocks (4,500 neurons = 2 full blocks + a partial one)
    using every part of the equations, with initial states broadcast from ``initial_shape``."""
    rng = np.random.default_rng(seed)
    if integer:
        attrs: dict[str, Any] = {"mode": "integer", "state_bits": 16, "threshold": 900, "v_reset": -50,
                                 "reset_decrement": 700, "alpha": 230 / 256, "beta": -7, "v_lower": -3000,
                                 "refractory": 2, "theta_alpha": 200 / 256, "theta_beta": 3, "theta_increment": 150}
        current = rng.integers(-2000, 4000, (steps, *neuron_shape)).astype(np.int32)
        draw = lambda shape, lo, hi: rng.integers(lo, hi, shape).astype(np.int32)  # noqa: E731
    else:
        attrs = {"threshold": 0.9, "v_reset": -0.05, "reset_decrement": 0.7, "alpha": 0.85, "beta": -0.01,
                 "v_lower": -1.5, "refractory": 2, "theta_alpha": 0.8, "theta_beta": 0.003, "theta_increment": 0.15}
        current = rng.normal(0.4, 0.9, (steps, *neuron_shape)).astype(np.float32)
        draw = lambda shape, lo, hi: rng.uniform(lo / 1000, hi / 1000, shape).astype(np.float32)  # noqa: E731
    feeds = {"current": current}
    inputs = ["current"]
    if initial_shape is not None:
        feeds.update(v0=draw(initial_shape, -800, 800), theta0=draw(initial_shape, -100, 100),
                     refractory0=rng.integers(-1, 3, initial_shape).astype(np.int32))
        inputs += ["v0", "theta0", "refractory0"]
    node = hnnx.ops.make_node("LIF", inputs, ["spikes", "v", "theta", "refractory"], name="wide",
                              reset_mode=reset_mode, **attrs)
    return one_node_model(node, feeds), feeds


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reset_mode", test_lif.RESET_MODES)
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_many_blocks_over_threads_equal_bodies(library: Path, integer: bool, reset_mode: str, threads: int) -> None:
    model, feeds = wide_case(integer, reset_mode, seed=3)
    outputs = assert_native_equals_bodies(model, feeds, library, threads)
    assert 0.02 < outputs[0].mean() < 0.98  # spikes and silence in every block


@pytest.mark.parametrize("initial_shape", [(), (1,), (1500,), (3, 1), (1, 1500), (1, 3, 1500), (1, 1, 1)],
                         ids=str)
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_initial_states_broadcast_across_blocks(library: Path, integer: bool, initial_shape: tuple[int, ...]) -> None:
    model, feeds = wide_case(integer, "soft", seed=11, steps=3, initial_shape=initial_shape)
    assert_native_equals_bodies(model, feeds, library, threads=2)


@pytest.mark.parametrize("steps", [0, 1])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_zero_and_one_step_over_many_blocks(library: Path, integer: bool, steps: int) -> None:
    model, feeds = wide_case(integer, "hard", seed=5, steps=steps)
    outputs = assert_native_equals_bodies(model, feeds, library, threads=2)
    assert outputs[0].shape == (steps, 3, 1500)


@pytest.mark.parametrize("shape", [(4, 0), (0, 0), (3, 2, 0, 5)], ids=str)
def test_empty_neuron_dims(library: Path, shape: tuple[int, ...]) -> None:
    node = hnnx.ops.make_node("LIF", ["current"], ["spikes", "v", "theta", "refractory"], alpha=0.5, refractory=1)
    feeds = {"current": np.zeros(shape, np.float32)}
    assert_native_equals_bodies(one_node_model(node, feeds), feeds, library)


def test_long_window_small_layer(library: Path) -> None:
    """The open-neuromorphic shape (batch 16, T = 500, 512 neurons), default attributes but a leak."""
    current = np.random.default_rng(2).normal(0.3, 0.6, (500, 16, 512)).astype(np.float32)
    node = hnnx.ops.make_node("LIF", ["current"], ["spikes", "v"], alpha=0.9)
    assert_native_equals_bodies(one_node_model(node, {"current": current}), {"current": current}, library, 2)


def test_native_kernel_wins_over_the_model_function(library: Path) -> None:
    """With the library registered onnxruntime runs the kernel, whatever the function body
    (here a body that outputs its input) and the node's overload field say."""
    current = np.array([[0.6], [0.6]], np.float32)
    node = hnnx.ops.make_node("LIF", ["current"], ["spikes"], name="lif")
    model = one_node_model(node, {"current": current})
    assert node.overload and model.functions[0].overload == model.graph.node[0].overload
    body = model.functions[0]
    del body.node[:]
    body.node.append(helper.make_node("Identity", ["current"], ["spikes"]))
    assert_same_array(run_onnxruntime(model, {"current": current})[0], current, "the bogus body")
    assert_same_array(run_native(model, {"current": current}, library)[0], np.array([[0], [1]], np.float32),
                      "native spikes")


def test_bad_initial_shape_is_a_one_line_error_naming_node_and_input(library: Path) -> None:
    node = hnnx.ops.make_node("LIF", ["current", "v0"], ["spikes"], name="lif_bad_v0")
    feeds = {"current": np.zeros((2, 3, 4), np.float32), "v0": np.zeros((2, 4), np.float32)}
    session = native_session(one_node_model(node, feeds), library)
    with pytest.raises(Exception, match=r"hnnx\.LIF node 'lif_bad_v0': input v0 of shape \[2, 4\] does not "
                                        r"broadcast to the neuron shape \[3, 4\]"):
        session.run(None, feeds)


def test_model_without_hnnx_validation_is_checked_by_the_kernel(library: Path) -> None:
    node = helper.make_node("LIF", ["current"], ["spikes"], name="raw", domain="hnnx", mode="integer", threshold=0.5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("current", TensorProto.INT32, [2, 3])],
                              [helper.make_tensor_value_info("spikes", TensorProto.INT32, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("hnnx", 1)])
    with pytest.raises(Exception, match="threshold must be an integer"):
        native_session(model, library)


def test_registering_twice_and_many_sessions(library: Path) -> None:
    model, feeds = wide_case(False, "soft", seed=1, steps=2, neuron_shape=(5,), initial_shape=None)
    first = [run_native(model, feeds, library)[0] for _ in range(3)]
    for other in first[1:]:
        assert_same_array(other, first[0], "repeated sessions")


# ---------------------------------------------------------------------------------------------
# 3. Plumbing
# ---------------------------------------------------------------------------------------------
def digits_model() -> onnx.ModelProto:
    return hnnx.load(models.path("snn_mlp"))


def test_simulator_native_flag(library: Path) -> None:
    from hnnx.datasets import load_digits
    from hnnx.models import input_layout

    pixels = load_digits().x_test[:40].reshape(-1, *input_layout("snn_mlp"))
    results = {}
    for flag in (None, True, False):
        simulator = hnnx.Simulator(digits_model(), native=flag, threads=2)
        assert simulator.native is (flag is not False)
        before = native.lif_calls(library)
        outputs, counts = simulator.run({"pixels": pixels})
        assert (native.lif_calls(library) > before) is (flag is not False)
        results[flag] = (outputs, counts)
    for flag in (True, False):
        assert results[flag][1] == results[None][1]
        for name, value in results[None][0].items():
            assert_same_array(results[flag][0][name], value, f"{name} (native={flag})")


def test_simulate_passes_the_flag(library: Path) -> None:
    from hnnx.datasets import load_digits
    from hnnx.models import input_layout

    data = load_digits()
    pixels = data.x_test[:50].reshape(-1, *input_layout("snn_mlp"))
    on = hnnx.simulate(digits_model(), {"pixels": pixels}, labels=data.y_test[:50], native=True)
    off = hnnx.simulate(digits_model(), {"pixels": pixels}, labels=data.y_test[:50], native=False)
    assert on.accuracy == off.accuracy and on.firing_rates == off.firing_rates


@pytest.fixture
def unavailable(monkeypatch: pytest.MonkeyPatch) -> Iterator[native.NativeStatus]:
    """Pretend the native kernel cannot be built; the warning may be given again."""
    fake = native.NativeStatus(False, "no C++ compiler (install g++ or set CXX)")
    monkeypatch.setattr(native.status_cache, "status", fake)
    monkeypatch.setattr(native.status_cache, "warned", False)
    monkeypatch.delenv("HNNX_NATIVE", raising=False)
    yield fake


def test_fallback_warns_once_and_runs_the_bodies(unavailable: native.NativeStatus) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        simulators = [hnnx.Simulator(digits_model()) for _ in range(2)]
    assert [s.native for s in simulators] == [False, False]
    assert len(caught) == 1 and caught[0].category is native.NativeKernelWarning
    assert "no C++ compiler" in str(caught[0].message) and "hnnx doctor" in str(caught[0].message)


def test_required_native_raises_when_unavailable(unavailable: native.NativeStatus) -> None:
    with pytest.raises(hnnx.HnnxError, match="native LIF kernel unavailable: no C\\+\\+ compiler"):
        hnnx.Simulator(digits_model(), native=True)


def test_models_without_lif_never_warn(unavailable: native.NativeStatus) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simulator = hnnx.Simulator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert simulator.native is False


def test_hnnx_native_0_turns_the_native_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HNNX_NATIVE", "0")
    current = native.status(refresh=True)
    try:
        assert not current.active and "HNNX_NATIVE=0" in current.reason
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert hnnx.Simulator(digits_model()).native is False
    finally:
        monkeypatch.delenv("HNNX_NATIVE")
        native.status(refresh=True)


def test_doctor_says_which_path_and_why(library: Path) -> None:
    result = CliRunner().invoke(main, ["doctor", "--require-native"])
    assert result.exit_code == 0, result.output
    assert "native kernels: active" in result.stdout
    assert str(library) in result.stdout
    assert "hnnx.LIF runs on: the native fused kernel" in result.stdout


def test_doctor_reports_the_fallback(unavailable: native.NativeStatus) -> None:
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0
    assert "native kernels: unavailable — no C++ compiler" in result.stdout
    assert "hnnx.LIF runs on: the ONNX function bodies" in result.stdout
    assert CliRunner().invoke(main, ["doctor", "--require-native"]).exit_code == 1


def test_debian_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# old style\ndeb [arch=amd64] http://mirror.invalid/other stable-updates main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n")
    (etc / "sources.list.d" / "disabled.sources").write_text(
        "Enabled: no\nTypes: deb\nURIs: http://elsewhere.invalid/debian\nSuites: trixie\nComponents: main\n")
    sources = ort_headers.apt_sources(etc)
    assert [s.uri for s in sources] == ["http://mirror.invalid/other", "http://mirror.invalid/debian",
                                        "http://mirror.invalid/debian-security"]
    mirror = ort_headers.debian_mirror(sources)
    assert mirror.uri == "http://mirror.invalid/debian"
    assert mirror.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    with pytest.raises(NativeBuildError, match="no Debian mirror"):
        ort_headers.debian_mirror(sources[:1] + sources[2:])


def test_headers_from_the_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HNNX_ORT_INCLUDE", str(tmp_path))
    with pytest.raises(NativeBuildError, match="HNNX_ORT_INCLUDE=.*holds no onnxruntime_c_api.h"):
        ort_headers.find_headers()
    for name in ort_headers.HEADER_FILES:
        (tmp_path / "onnxruntime").mkdir(exist_ok=True)
        (tmp_path / "onnxruntime" / name).write_text("#define ORT_API_VERSION 21\n")
    found = ort_headers.find_headers()
    assert found.include == tmp_path / "onnxruntime" and found.api_version == 21


def test_failed_fetch_is_recorded_and_not_retried_automatically(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """No headers anywhere and no apt-get on PATH (so no network): the fetch fails, is recorded
    in the cache, later automatic fetches give the recorded reason, and ``force`` tries again."""
    def no_headers() -> ort_headers.Headers:
        raise NativeBuildError("no onnxruntime C/C++ headers")

    monkeypatch.setattr(ort_headers, "find_headers", no_headers)
    monkeypatch.delenv("HNNX_ORT_INCLUDE", raising=False)
    monkeypatch.setenv("HNNX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(NativeBuildError, match="no onnxruntime C/C"):
        ort_headers.obtain_headers(fetch=False, force=False)
    with pytest.raises(NativeBuildError, match="^fetching headers needs apt-get and dpkg-deb"):
        ort_headers.obtain_headers(fetch=True, force=False)
    marker = tmp_path / "cache" / "native" / "fetch-failed.json"
    assert "needs apt-get" in marker.read_text()
    with pytest.raises(NativeBuildError, match="fetching them failed earlier: fetching headers needs apt-get.*"
                                               r"\(retry: `hnnx doctor --build`\)"):
        ort_headers.obtain_headers(fetch=True, force=False)
    with pytest.raises(NativeBuildError, match="^fetching headers needs apt-get"):
        ort_headers.obtain_headers(fetch=True, force=True)
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "time": record["time"] - ort_headers.FETCH_RETRY_S - 1}))
    with pytest.raises(NativeBuildError, match="^fetching headers needs apt-get"):  # old failure: fetch again
        ort_headers.obtain_headers(fetch=True, force=False)


def test_build_key_follows_sources_headers_and_compiler(library: Path) -> None:
    headers = ort_headers.find_headers()
    key = native_build.build_key(headers, "g++ 12")
    assert key == native_build.build_key(headers, "g++ 12") != native_build.build_key(headers, "clang++ 16")
    identity = native_build.compiler_id(native_build.find_compiler())
    assert library.parent.name == native_build.build_key(headers, identity)


def fake_compiler(directory: Path) -> Path:
    """A 'compiler' that reports a version and fails every compile, counting its attempts."""
    script = directory / "fake-c++"
    script.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "fake c++ 1.0"; exit 0; fi\n'
                      f'echo x >> {directory / "attempts"}\necho "hnnx_ops.cc:1: error: boom" >&2\nexit 1\n')
    script.chmod(0o755)
    return script


def test_build_into_an_empty_cache_then_reuse(library: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    headers = ort_headers.find_headers()
    monkeypatch.setenv("HNNX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HNNX_ORT_INCLUDE", str(headers.include))
    built = native_build.build_library(ort_headers.find_headers())
    assert built.is_file() and built.parent.parent == tmp_path / "cache" / "native"
    assert "-ffp-contract=off" in (built.parent / "build.json").read_text()
    native.self_test(built)
    modified = built.stat().st_mtime_ns
    assert native_build.build_library(ort_headers.find_headers()) == built and built.stat().st_mtime_ns == modified


def test_failed_build_falls_back_and_is_not_retried(library: Path, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    headers = ort_headers.find_headers()
    monkeypatch.setenv("HNNX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HNNX_ORT_INCLUDE", str(headers.include))
    monkeypatch.setenv("CXX", str(fake_compiler(tmp_path)))
    current = native._resolve(fetch=False, force=False)
    assert not current.active and "compiling the native kernels failed" in current.reason and "boom" in current.reason
    attempts = tmp_path / "attempts"
    assert attempts.read_text().count("x") == 2  # with -march=native, then without
    with pytest.raises(NativeBuildError, match="boom"):
        native_build.build_library(ort_headers.find_headers())  # the recorded failure, without compiling again
    assert attempts.read_text().count("x") == 2
    with pytest.raises(NativeBuildError, match="boom"):
        native_build.build_library(ort_headers.find_headers(), force=True)  # hnnx doctor --build retries
    assert attempts.read_text().count("x") == 4
