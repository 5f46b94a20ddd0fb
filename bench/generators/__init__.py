"""Data generators the Dhaka project did not design, written from their published descriptions.

They import nothing from :mod:`dhaka` (in particular not :mod:`dhaka.simulate`), so a method
tuned on the project's own simulators is judged here on data whose assumptions it never saw.

* :mod:`bench.generators.splatter` -- the Splatter model of single-cell counts (Zappia, Phipson &
  Oshlack, Genome Biology 2017), groups simulation.
* :mod:`bench.generators.cnv_tree` -- copy-number profiles of tumour cells on a clone tree with
  chromosome-arm and focal events and whole-genome doubling, after the CNAsim model (Weiner &
  Bansal, Bioinformatics 2023).
"""
from __future__ import annotations

import numpy as np


def proportions(values, name: str) -> np.ndarray:
    """``values`` (positive numbers: group or clone sizes) scaled to sum to 1; ``ValueError`` naming ``name`` else."""
    probs = np.asarray(values, dtype=float)
    if probs.ndim != 1 or probs.size < 1 or np.any(probs <= 0):
        raise ValueError(f"{name} must be positive numbers, got {values}")
    return probs / probs.sum()
