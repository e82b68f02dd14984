"""hnnx.load and hnnx.save: validation, atomic writes, function bodies and edited attributes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import hnnx
from hnnx import ops
from hnnx.errors import HnnxError, ModelError, NodeError

from builders import lif_hard_reset

STEPS = 4
SAMPLES = 6


def lif_model(attach: bool = True, name: str = "lif_tm", **lif_attributes: float) -> onnx.ModelProto:
    """u [T, N, 3] → hnnx.LIF → s [T, N, 3]."""
    nodes = [ops.make_node("LIF", ["u"], ["s"], name=name, **lif_attributes)]
    graph = helper.make_graph(nodes, "lif", [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["T", "N", 3])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["T", "N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model) if attach else model



def set_lif_attribute(model: onnx.ModelProto, name: str, value: float) -> None:
    """Edit a float attribute of the model's LIF node the way a generic ONNX tool would."""
    (node,) = [n for n in model.graph.node if n.op_type == "LIF"]
    (attribute,) = [a for a in node.attribute if a.name == name]
    attribute.f = value


def tree(root: Path) -> list[str]:
    """Every file and directory below ``root``, hidden ones included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def current() -> np.ndarray:
    # Multiples of 1/4: float32 sums and halvings are exact, so results compare bit for bit.
    return (np.random.default_rng(3).integers(0, 5, size=(STEPS, SAMPLES, 3)) / 4).astype(np.float32)


@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    return hnnx.save(lif_model(alpha=0.5), tmp_path / "lif.onnx")


# --------------------------------------------------------------------------- load
def test_load_returns_a_checked_model_with_function_bodies(saved_model: Path) -> None:
    model = hnnx.load(saved_model)

    assert isinstance(model, onnx.ModelProto)
    (node,) = model.graph.node
    assert (node.domain, node.op_type, node.name) == ("hnnx", "LIF", "lif_tm")
    assert [(f.domain, f.name, f.overload) for f in model.functions] == [("hnnx", "LIF", node.overload)]
    assert {op.domain: op.version for op in model.opset_import} == {"": ops.ONNX_OPSET, "hnnx": ops.OPSET_VERSION}
    onnx.checker.check_model(model, full_check=True)


def test_load_accepts_a_string_path(saved_model: Path) -> None:
    assert hnnx.load(str(saved_model)).graph.node[0].name == "lif_tm"


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"absent\.onnx: no such model file"):
        hnnx.load(tmp_path / "absent.onnx")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        hnnx.load(tmp_path)


@pytest.mark.parametrize("payload", [b"\x00\xff\x13 garbage \x99" * 8, b"this is plain text, not protobuf\n"],
                         ids=["binary", "text"])
def test_load_garbage_bytes(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(payload)
    with pytest.raises(ModelError, match=r"garbage\.onnx: not an ONNX model"):
        hnnx.load(path)


def test_load_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.onnx: not an ONNX model \(empty graph\)"):
        hnnx.load(path)


def test_load_npz_file_as_model(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", x=np.zeros(3))
    with pytest.raises(ModelError, match=r"data\.npz: not an ONNX model"):
        hnnx.load(tmp_path / "data.npz")


def test_load_model_failing_the_checker(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "broken", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match=r"broken\.onnx: invalid ONNX model"):
        hnnx.load(tmp_path / "broken.onnx")


def test_load_model_with_unknown_hnnx_op(tmp_path: Path) -> None:
    node = helper.make_node("Spiral", ["u"], ["s"], domain="hnnx")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("u", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("hnnx", 1)])
    onnx.save(model, tmp_path / "spiral.onnx")
    with pytest.raises(ModelError, match=r"spiral\.onnx: unknown hnnx op 'Spiral'"):
        hnnx.load(tmp_path / "spiral.onnx")


def test_load_model_with_invalid_lif_attribute_names_file_and_node(saved_model: Path) -> None:
    model = onnx.load(str(saved_model))
    set_lif_attribute(model, "alpha", 2.0)
    onnx.save(model, saved_model)

    with pytest.raises(ModelError) as caught:
        hnnx.load(saved_model)

    message = str(caught.value)
    assert str(saved_model) in message
    assert "lif_tm" in message and "'alpha' must lie in [0, 1]" in message


def test_load_model_whose_lif_gets_int_current(tmp_path: Path) -> None:
    nodes = [ops.make_node("LIF", ["u"], ["s"], name="lif_int")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("u", TensorProto.INT32, ["T", "N", 3])],
                              [helper.make_tensor_value_info("s", TensorProto.INT32, ["T", "N", 3])])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    onnx.save(model, tmp_path / "int.onnx")
    with pytest.raises(HnnxError, match="lif_int.*float mode needs float current, got int32"):
        hnnx.load(tmp_path / "int.onnx")


def test_load_attaches_missing_function_bodies(tmp_path: Path, current: np.ndarray) -> None:
    onnx.save(lif_model(attach=False, alpha=0.5), tmp_path / "bare.onnx")
    assert not onnx.load(str(tmp_path / "bare.onnx")).functions

    model = hnnx.load(tmp_path / "bare.onnx")

    assert [f.name for f in model.functions] == ["LIF"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (spikes,) = session.run(None, {"u": current})
    np.testing.assert_array_equal(spikes, lif_hard_reset(current, alpha=0.5))


# --------------------------------------------------------------------------- stale overloads
@pytest.mark.parametrize("attribute, old, new", [("alpha", 1.0, 0.5), ("threshold", 1.0, 0.5),
                                                 ("beta", 0.0, -0.25)])
def test_load_follows_attributes_edited_by_another_tool(tmp_path: Path, current: np.ndarray, attribute: str,
                                                         old: float, new: float) -> None:
    path = hnnx.save(lif_model(**{attribute: old}), tmp_path / "lif.onnx")
    edited = onnx.load(str(path))
    set_lif_attribute(edited, attribute, new)
    onnx.save(edited, path)  # the stored function bodies still describe the old attributes
    expected = lif_hard_reset(current, **{attribute: new})
    assert not np.array_equal(expected, lif_hard_reset(current, **{attribute: old}))

    model = hnnx.load(path)
    result = hnnx.simulate(model, {"u": current}, batch_size=4)
    from_path = hnnx.simulate(path, {"u": current})

    np.testing.assert_array_equal(result.outputs["s"], expected)
    np.testing.assert_array_equal(from_path.outputs["s"], expected)
    (node,) = model.graph.node
    assert [f.overload for f in model.functions] == [node.overload]


def test_load_replaces_the_stale_body_when_the_leak_is_switched_on(tmp_path: Path, current: np.ndarray) -> None:
    path = hnnx.save(lif_model(alpha=1.0), tmp_path / "lif.onnx")
    stale_overload = onnx.load(str(path)).graph.node[0].overload
    edited = onnx.load(str(path))
    set_lif_attribute(edited, "alpha", 0.5)
    onnx.save(edited, path)

    model = hnnx.load(path)

    assert model.graph.node[0].overload != stale_overload
    assert stale_overload not in [f.overload for f in model.functions]
    assert "leak" in model.graph.node[0].overload


# --------------------------------------------------------------------------- save
def test_save_returns_the_path_and_round_trips(tmp_path: Path, current: np.ndarray) -> None:
    target = tmp_path / "model.onnx"

    written = hnnx.save(lif_model(alpha=0.5, beta=-0.25), str(target))

    assert written == target and target.is_file()
    result = hnnx.simulate(hnnx.load(target), {"u": current})
    np.testing.assert_array_equal(result.outputs["s"], lif_hard_reset(current, alpha=0.5, beta=-0.25))
    assert tree(tmp_path) == ["model.onnx"]


def test_save_overwrites_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old contents")

    hnnx.save(lif_model(alpha=0.5), target)

    assert hnnx.load(target).graph.node[0].name == "lif_tm"
    assert tree(tmp_path) == ["model.onnx"]


def test_save_with_a_bare_file_name_writes_to_the_working_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    hnnx.save(lif_model(), "here.onnx")
    assert tree(tmp_path) == ["here.onnx"]


def test_saved_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    # A saved model should be as readable as one written by open(): 0o666 minus the umask.
    umask = os.umask(0o022)
    try:
        path = hnnx.save(lif_model(), tmp_path / "model.onnx")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"")
    finally:
        os.umask(umask)
    assert oct(path.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == oct(0o644)


def test_save_attaches_functions_so_plain_onnxruntime_runs_the_file(tmp_path: Path, current: np.ndarray) -> None:
    model = lif_model(attach=False, alpha=0.5, beta=-0.25)
    assert not model.functions
    path = hnnx.save(model, tmp_path / "model.onnx")
    np.save(tmp_path / "current.npy", current)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        (spikes,) = session.run(None, {{"u": np.load({str(tmp_path / 'current.npy')!r})}})
        np.save({str(tmp_path / 'spikes.npy')!r}, spikes)
        assert not any(name == "hnnx" or name.startswith("hnnx.") for name in sys.modules), "hnnx was imported"
    """)

    # A fresh interpreter: the hnnx schemas registered in this process must not help.
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=60)

    np.testing.assert_array_equal(np.load(tmp_path / "spikes.npy"), lif_hard_reset(current, alpha=0.5, beta=-0.25))


def test_saved_file_declares_the_hnnx_opset_and_one_body_per_overload(tmp_path: Path) -> None:
    nodes = [ops.make_node("LIF", ["u"], ["s1"], name="a", alpha=0.5),
             ops.make_node("LIF", ["s1"], ["s2"], name="b", alpha=0.25),
             ops.make_node("LIF", ["s2"], ["s"], name="c")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["T", "N", 3])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["T", "N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ops.ONNX_OPSET)])
    path = hnnx.save(model, tmp_path / "three.onnx")

    stored = onnx.load(str(path))

    assert {op.domain for op in stored.opset_import} >= {"hnnx"}
    overloads = sorted(f.overload for f in stored.functions)
    assert overloads == sorted({n.overload for n in stored.graph.node}) and len(overloads) == 2


def _checker_failure() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "broken", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _invalid_lif_attribute() -> onnx.ModelProto:
    model = lif_model()
    set_lif_attribute(model, "alpha", 2.0)  # past make_node's validation, as an editor could
    return model


def _lif_with_int_current() -> onnx.ModelProto:
    nodes = [ops.make_node("LIF", ["u"], ["s"], name="lif_int")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("u", TensorProto.INT32, ["T", "N", 3])],
                              [helper.make_tensor_value_info("s", TensorProto.INT32, ["T", "N", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


FAILING_MODELS = {
    "checker": (_checker_failure, ModelError, "invalid ONNX model"),
    "lif-attribute": (_invalid_lif_attribute, NodeError, "'alpha' must lie in \\[0, 1\\]"),
    "lif-type": (_lif_with_int_current, NodeError, "float mode needs float current"),
}


@pytest.mark.parametrize("case", FAILING_MODELS)
def test_failed_save_writes_nothing(tmp_path: Path, case: str) -> None:
    build, error, message = FAILING_MODELS[case]
    with pytest.raises(error, match=message):
        hnnx.save(build(), tmp_path / "model.onnx")
    assert tree(tmp_path) == []


@pytest.mark.parametrize("case", FAILING_MODELS)
def test_failed_save_leaves_an_existing_file_untouched(tmp_path: Path, case: str) -> None:
    build, error, _ = FAILING_MODELS[case]
    target = hnnx.save(lif_model(alpha=0.5), tmp_path / "model.onnx")
    before = target.read_bytes()

    with pytest.raises(error):
        hnnx.save(build(), target)

    assert target.read_bytes() == before
    assert tree(tmp_path) == ["model.onnx"]


def test_save_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(HnnxError, match="directory .*missing does not exist"):
        hnnx.save(lif_model(), tmp_path / "missing" / "model.onnx")
    assert tree(tmp_path) == []


def test_save_onto_a_directory_cleans_up_its_temporary_file(tmp_path: Path) -> None:
    # The rename is the step that fails here, after the temporary file has been written.
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises((HnnxError, OSError)):
        hnnx.save(lif_model(), tmp_path / "model.onnx")
    assert tree(tmp_path) == ["model.onnx"]
