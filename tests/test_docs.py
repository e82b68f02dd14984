"""The docs are generated from the op declarations and the README example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hnnx
from hnnx import ops

ROOT = Path(__file__).resolve().parents[1]


def test_ops_reference_is_generated_from_declarations() -> None:
    written = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    assert ops.op_reference_markdown() in written, "docs/ops.md is stale: run python -m hnnx.ops > docs/ops.md"


def test_readme_op_table_matches_declarations() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- ops:begin -->\n(.*?)<!-- ops:end -->", readme, re.S)
    assert table is not None
    assert table.group(1) == ops.op_summary_markdown()


def test_every_declared_attribute_is_documented() -> None:
    reference = ops.op_reference_markdown()
    for decl in ops.REGISTRY.values():
        for attr in decl.attributes:
            assert f"| `{attr.name}` |" in reference, (decl.name, attr.name)


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for index, code in enumerate(blocks):
        namespace: dict[str, object] = {}
        exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    assert (tmp_path / "lif.onnx").is_file() and (tmp_path / "net.onnx").is_file()
    exported = hnnx.load(tmp_path / "net.onnx")
    assert [node.op_type for node in ops.hnnx_nodes(exported.graph)] == ["A2S", "LIF", "S2A"]
