"""The record kept with every result: settings, software versions, seed, clusters and CPU share.

One function builds it (:func:`uns_record`); ``tl.dhaka``, the pipeline (and so the app's
worker, the CLI and the distributed runner) and the ``.h5ad`` export all store what it returns
as ``uns["dhaka"]``, so a result read back names exactly what made it.
"""
from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from dhaka.clusterers import ClusterResult

__all__ = ["versions", "uns_record", "h5_value"]


def versions() -> dict[str, str]:
    """Versions of the software that made a result (dhaka, torch, numpy, anndata, python)."""
    from importlib.metadata import PackageNotFoundError, version

    from dhaka import __version__

    out = {"dhaka": __version__, "numpy": np.__version__, "python": platform.python_version()}
    for pkg in ("torch", "anndata", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - optional at run time
            out[pkg] = "not installed"
    return out


def h5_value(v: Any) -> Any:
    """``v`` in a form ``write_h5ad`` stores (it refuses ``None``; tuples become lists)."""
    if v is None:
        return "None"
    if isinstance(v, Mapping):
        return {str(k): h5_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, (bool, int, float, np.integer, np.floating)) for x in v):
            return np.asarray(v)
        return [str(x) for x in v]
    if isinstance(v, (bool, int, float, str, np.integer, np.floating, np.bool_, np.ndarray)):
        return v
    return str(v)


def uns_record(
    *,
    params: Mapping[str, Any] | None = None,
    clusters: ClusterResult | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``uns["dhaka"]`` record: settings, software versions, BIC curve, k and seed.

    ``params`` is kept twice: ``params`` (values as ``write_h5ad`` can store them;
    ``None`` becomes the string ``"None"``) and ``params_json`` (exact, for
    ``Dhaka(**json.loads(...))``; see :func:`params_from_uns`).

    Parameters
    ----------
    params
        The estimator's settings (``Dhaka.get_params()``).
    clusters
        The clustering (:class:`dhaka.clusterers.ClusterResult`) whose ``record`` (method, ``k``,
        BIC curve where it has one) is kept.
    seed
        Seed of the run (defaults to ``params["seed"]``).
    extra
        Further entries (e.g. ``run_id``), stored as given (``None`` as ``"None"``).
    """
    params = dict(params or {})
    rec: dict[str, Any] = {"versions": versions()}
    if params:
        rec["params"] = h5_value(params)
        rec["params_json"] = json.dumps(params, default=str)
    seed = params.get("seed") if seed is None else seed
    if seed is not None:
        rec["seed"] = int(seed)
    if clusters is not None:
        for key, value in clusters.record.items():
            rec["cluster_method" if key == "method" else str(key)] = (
                np.asarray(value, dtype=np.float64) if key == "bic" else h5_value(value))
        rec["k"] = int(clusters.k)
    for key, value in (extra or {}).items():
        rec[str(key)] = h5_value(value)
    return rec
