"""Dhaka Explorer: a variational autoencoder that projects single cells into a small latent space.

The public entry point is :class:`dhaka.Dhaka`, a scikit-learn style estimator::

    from dhaka import Dhaka
    est = Dhaka(mode="expression", latent_dim=3, seed=0)
    Z = est.fit_transform(X)

Submodules are imported lazily so that ``import dhaka`` stays light (no torch,
umap, openTSNE or anndata until they are needed).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Dhaka", "__version__"]

_SUBMODULES = {
    "io", "preprocess", "model", "train", "estimator", "reduce", "cluster", "clusterers", "pipeline", "record",
    "settings", "simulate", "plots", "figure_export", "jobs", "runs", "resources", "cpu", "analysis", "cli", "tl",
}

if TYPE_CHECKING:  # pragma: no cover
    from dhaka.estimator import Dhaka


def __getattr__(name: str) -> Any:
    if name == "Dhaka":
        from dhaka.estimator import Dhaka

        return Dhaka
    if name in _SUBMODULES:
        return importlib.import_module(f"dhaka.{name}")
    raise AttributeError(f"module 'dhaka' has no attribute {name!r}")
