"""Fixtures for the gnn tests."""

import numpy as np
import pytest
from gnn_synth import make_cohort


@pytest.fixture(scope="session")
def cohort():
    return make_cohort()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
