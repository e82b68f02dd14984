"""``bench/chip.py --quick`` runs to the end, prints its table and checks bit-exactness."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "chip.py"


def test_quick_chip_benchmark_prints_its_table() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    header = next(line for line in out.splitlines() if line.startswith("| model "))
    for column in ("cores", "map (s)", "chip sim (s)", "ORT int (s)", "× ORT", "bit-exact", "µs/inf", "µJ/inf"):
        assert column in header, header
    for model in ("hybrid_a2s", "ann_residual"):
        assert re.search(rf"\| {model} +\| +tianjicx +\| +\d+/160 .*\| +yes +\|", out), out
    assert re.search(r"target: chip simulator ≤ 10× onnxruntime on hybrid_a2s/tianjicx: \d+\.\d×", out), out
    assert "assumed figures in the estimates" in out
