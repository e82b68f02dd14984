"""``bench/sparse.py --quick`` runs to the end: a table per layer and mode, integer layers
bit-identical to onnxruntime's dense integer layers, float ones within rounding."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_native import library  # noqa: F401  (the fixture is used by name)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "sparse.py"


def test_quick_sparse_benchmark_checks_every_rate(library: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    titles = re.findall(r"^### (Linear|Conv) .* — (float|integer)$", out, re.M)
    assert titles == [("Linear", "float"), ("Linear", "integer"), ("Conv", "float"), ("Conv", "integer")], out
    rows = [line for line in out.splitlines() if re.match(r"\| \d+ % ", line)]
    assert len(rows) == 4 * 6, out
    for row in rows[6:12] + rows[18:24]:  # integer: exact
        assert row.rstrip(" |").endswith("bit-identical"), row
    for row in rows[:6] + rows[12:18]:  # float: another summation order
        assert float(re.search(r"max \|Δ\| ([0-9.e+-]+)", row).group(1)) < 1e-4, row
    assert len(re.findall(r"crossover at", out)) == 8  # four verdicts, repeated in the summary
