"""The docs are generated from the op declarations and the README example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    assert (tmp_path / "lif.onnx").is_file()
    rates = namespace["result"].firing_rates  # type: ignore[attr-defined]
    assert 0.0 < rates["lif1"] < 1.0
