"""Shared test fixtures: tiny seeded data, one torch thread, fast settings."""
from __future__ import annotations

import os

import numpy as np
import pytest

# In tests an error on any page fails the test: app.py re-raises instead of showing its catch-all banner
# (AppTest reports it as an exception; the browser test's server shows Streamlit's exception box).
os.environ.setdefault("DHAKA_RAISE_ERRORS", "1")
os.environ.setdefault("DHAKA_HOME", os.path.join(os.path.dirname(__file__), "..", "test-output", "dhaka-runs"))
# Fits use one thread (as torch is set below), so two fits of one seed agree whatever else runs on the machine;
# the CPU budget itself is tested with explicit settings (tests/test_cpu.py).
os.environ.setdefault("DHAKA_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow tests, opt in with -m slow")
    config.addinivalue_line("markers", "e2e: real-browser end-to-end tests")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def _blobs_counts():
    rng = np.random.default_rng(0)
    n_per, n_genes, k = 40, 60, 3
    base = rng.gamma(2.0, 2.0, size=n_genes)
    X, y = [], []
    for g in range(k):
        mu = base.copy()
        mu[g * 15:(g + 1) * 15] *= 6.0
        X.append(rng.poisson(mu, size=(n_per, n_genes)))
        y += [g] * n_per
    return np.vstack(X).astype(np.float32), np.array(y)


@pytest.fixture
def blobs_counts(_blobs_counts):
    """120 cells x 60 genes of Poisson counts in three groups; returns fresh copies."""
    X, y = _blobs_counts
    return X.copy(), y.copy()
