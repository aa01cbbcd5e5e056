"""Fixtures for the gnn tests."""

import numpy as np
import pytest
import torch
from gnn_synth import make_cohort


@pytest.fixture(scope="session")
def cohort():
    return make_cohort()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (restored after): graphs of a few dozen nuclei gain nothing from
    threads, and on a shared machine torch's spinning threads made a small training 12x slower (63 s
    against 5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
