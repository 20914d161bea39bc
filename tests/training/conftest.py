"""Shared set-up of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread for every training test module, whatever ``OMP_NUM_THREADS`` says: the tiny models gain
    nothing from two, and on a shared 2-core machine OpenMP threads waiting for a busy core made these tests
    8-30x slower."""
    try:
        import torch
    except ImportError:  # the modules skip themselves without torch
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
