"""A fixture for tests that run small torch tensors next to onnxruntime."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small tensors gain nothing from threads, and two thread pools (torch's and onnxruntime's)
    spinning on two cores slow both down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
