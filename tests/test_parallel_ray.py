"""Data-parallel simulation and calibration on a Ray cluster (a local one of 2 CPUs, started once for
this module): identical to one process, in-memory data through the object store and files read by the
workers, a killed worker retried and reported. Skipped without ray, required in CI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from optional import require

ray = require("ray", "ray")

import hnnx  # noqa: E402
from hnnx import models  # noqa: E402
from hnnx.runtime.parallel import FAIL_SHARD_ENV, WorkerError, WorkerWarning  # noqa: E402
from parallel_cases import assert_same_result, digits  # noqa: E402

PROBES = ["hidden_lif.spikes", "out_lif.spikes"]


@pytest.fixture(scope="module", autouse=True)
def local_cluster() -> Iterator[None]:
    """A Ray cluster on this machine only: 2 CPUs, no dashboard, no usage reports."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_process() -> hnnx.SimulationResult:
    return hnnx.simulate(models.path("hybrid_a2s"), digits(), batch_size=50, probes=PROBES)


def test_arrays_through_the_object_store_and_files_read_by_workers_equal_one_process(
        tmp_path: Path, one_process: hnnx.SimulationResult) -> None:
    np.savez(tmp_path / "digits.npz", **digits())

    in_memory = hnnx.simulate(models.path("hybrid_a2s"), digits(), batch_size=50, probes=PROBES, ray=True)
    from_files = hnnx.simulate(models.path("hybrid_a2s"), tmp_path / "digits.npz", batch_size=50, probes=PROBES,
                               ray=True, workers=3)

    assert_same_result(in_memory, one_process)
    assert_same_result(from_files, one_process)
    assert in_memory.workers == "2 Ray workers" and from_files.workers == "3 Ray workers"


def test_quantization_on_ray_writes_the_same_model_and_report(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits.npz", **digits())
    options = {"observer": "mse", "num_samples": 200, "batch_size": 32}

    one, one_report = hnnx.quantize(models.path("hybrid_a2s"), tmp_path / "digits.npz", **options)
    two, two_report = hnnx.quantize(models.path("hybrid_a2s"), tmp_path / "digits.npz", ray=True, **options)

    assert two.SerializeToString() == one.SerializeToString()
    assert two_report.to_json() == one_report.to_json()


def test_a_killed_ray_worker_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch,
                                                      one_process: hnnx.SimulationResult) -> None:
    monkeypatch.setenv(FAIL_SHARD_ENV, "0")
    with pytest.warns(WorkerWarning, match=r"shard 1 of 2 \(samples 0:200\): the worker died"):
        retried = hnnx.simulate(models.path("hybrid_a2s"), digits(), batch_size=50, probes=PROBES, ray=True)
    assert_same_result(retried, one_process)

    monkeypatch.setenv(FAIL_SHARD_ENV, "1:2")
    with pytest.warns(WorkerWarning), pytest.raises(WorkerError, match=r"^shard 2 of 2 \(samples 200:359\): the "
                                                                       r"worker died twice .*the run stopped without "
                                                                       r"a result$"):
        hnnx.simulate(models.path("hybrid_a2s"), digits(), batch_size=50, ray=True)
