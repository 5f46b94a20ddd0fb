"""The paper's analyses as library functions.

Submodules (imported lazily):

- :mod:`dhaka.analysis.robustness` -- ARI / silhouette against injected dropout (paper Fig. 3, 6)
- :mod:`dhaka.analysis.structures` -- structure presets compared (paper Table 1), warm-start report
- :mod:`dhaka.analysis.copy_number` -- genome order, hierarchical order, copy-number heatmap (Fig. 8)
- :mod:`dhaka.analysis.projection` -- embed a second sample with a trained model (Fig. 7b, 8a)
- :mod:`dhaka.analysis.pseudotime` -- diffusion pseudotime on a kNN graph of the latent space
- :mod:`dhaka.analysis.differential` -- Welch / Wilcoxon tests with Benjamini-Hochberg, volcano plot
"""
from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = {"robustness", "structures", "copy_number", "projection", "pseudotime", "differential"}
_EXPORTS = {
    "dropout_curve": "robustness",
    "dropout_study": "robustness",
    "compare_structures": "structures",
    "warm_start_table": "structures",
    "genome_order": "copy_number",
    "cluster_order": "copy_number",
    "call_clones": "copy_number",
    "project": "projection",
    "diffusion_pseudotime": "pseudotime",
    "root_from_cluster": "pseudotime",
    "differential_expression": "differential",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"dhaka.analysis.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dhaka.analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dhaka.analysis' has no attribute {name!r}")
