"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One CPU thread for the test: CPU results are the same bytes only at the same thread count (torchrun
    gives each of its processes one), and tiny networks run fastest on one thread anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
