"""``bench/quantize.py --quick`` runs to the end and prints its three tables."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "quantize.py"
COLUMNS = (
    ("quantizer", "float", "quantized (32 calib)", "quantized (512 calib)", "target", "met"),  # accuracy
    ("quantizer", "warm", "first", "× ORT (met?)"),  # wall time
    ("quantizer", "Δ RSS 32", "Δ RSS 512", "Δ ratio", "tracemalloc 512", "met"),  # memory
)


def test_quick_quantization_benchmark_prints_its_tables() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for title in ("Accuracy on the digits test split", "Quantization wall time", "Peak memory of one quantization",
                  "targets not met:"):
        assert title in out, f"missing {title!r} in:\n{out}"
    headers = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()
               if line.startswith("| model ")]
    assert len(headers) == len(COLUMNS), out
    for header, columns in zip(headers, COLUMNS):
        assert set(columns) <= set(header), header
    # Every bundled digits model got a quantized accuracy, and onnxruntime ran on the ANN.
    for model in ("ann_cnn", "snn_mlp", "snn_conv", "hybrid_a2s", "hybrid_s2a"):
        assert re.search(rf"\| {model} +\| hnnx tianjicx/int +\| +\d+\.\d\d % +\| +\d+\.\d\d %", out), model
    assert re.search(r"\| ann_cnn +\| onnxruntime quantize_static \(QDQ int8, per-channel\) +\| +\d+\.\d\d %", out)
    assert "failed:" not in out


def test_file_reading_jobs_rerun_interleaved_and_keep_medians(monkeypatch) -> None:
    """The two file-reading jobs run alternately; each keeps its median time and highest peak."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quantize", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_quantize"] = bench
    spec.loader.exec_module(bench)
    few, own = (bench.Job(label, "hnnx", "m.onnx", "calib", "out.onnx") for label in ("few", "own"))
    times = {"few": iter([9.0, 5.0]), "own": iter([7.0, 8.0])}
    order: list[str] = []

    def fake_run(job, cap_bytes):
        order.append(job.label)
        return bench.JobResult(job, seconds=next(times[job.label]), peak=100 + len(order))

    monkeypatch.setattr(bench, "run_job", fake_run)
    monkeypatch.setattr(bench, "FILE_READING_ROUNDS", 3)
    results = [bench.JobResult(few, seconds=6.0, peak=50), bench.JobResult(own, seconds=1.0, peak=50)]
    bench._rerun_interleaved(results, ("few", "own"), 1 << 30)
    assert order == ["few", "own", "few", "own"]
    assert (results[0].seconds, results[1].seconds) == (6.0, 7.0)
    assert (results[0].peak, results[1].peak) == (103, 104)
