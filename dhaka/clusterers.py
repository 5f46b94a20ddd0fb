"""Clusterers: one small protocol for calling clusters on a latent space, and the registry of them.

A clusterer is anything with a ``name`` and ``fit(Z, *, seed) -> ClusterResult``. A
:class:`ClusterResult` has ``labels`` (int, ``0..k-1``), ``k``, a ``record`` (a JSON-able dict
the UI, ``uns["dhaka"]`` and the run store show: at least ``"method"`` and ``"k"``; a BIC-based
caller adds ``"bic"`` and ``"n_components"``) and ``predict(Z)`` for new points.

Adding a clusterer is one module and one registration::

    @register("my_caller")
    @dataclass
    class MyCaller:
        k_max: int = 10
        name: str = "my_caller"
        def fit(self, Z, *, seed=0): ...

after which ``make("my_caller")``, :func:`dhaka.pipeline.run` (``clusterer="my_caller"``),
``tl.dhaka`` and the CLI's ``--clusterer`` accept it.

The pipeline, the estimator's start scoring and the app all obtain their caller through
:func:`resolve`, so the mode's policy (:func:`dhaka.cluster.latent_merge`) lives in one place.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

__all__ = ["ClusterResult", "Clusterer", "GMMBIC", "register", "make", "available", "resolve",
           "DEFAULT_CLUSTERER", "K_CEILING", "k_max_asked", "START_CRITERIA", "agreement", "check_start_criterion", "choose_start"]

_log = logging.getLogger(__name__)

#: The clusterer every entry point uses unless told otherwise (the paper's GMM with k chosen by BIC).
DEFAULT_CLUSTERER = "gmm_bic"


@runtime_checkable
class ClusterResult(Protocol):
    """What a clusterer returns (:class:`dhaka.cluster.GMMResult` is one)."""

    labels: np.ndarray
    k: int

    @property
    def record(self) -> dict[str, Any]: ...

    def predict(self, Z: Any) -> np.ndarray: ...


@runtime_checkable
class Clusterer(Protocol):
    """Calls clusters on a latent space."""

    name: str
    k_max: int

    def fit(self, Z: Any, *, seed: int = 0) -> ClusterResult: ...


_REGISTRY: dict[str, Callable[..., Clusterer]] = {}


def register(name: str) -> Callable[[Callable[..., Clusterer]], Callable[..., Clusterer]]:
    """Register a clusterer factory (a class or function taking keyword options) under ``name``."""

    def deco(factory: Callable[..., Clusterer]) -> Callable[..., Clusterer]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a clusterer named {name!r} is registered already")
        _REGISTRY[name] = factory
        return factory

    return deco


def available() -> list[str]:
    """Names of the registered clusterers."""
    return sorted(_REGISTRY)


def make(name: str = DEFAULT_CLUSTERER, /, **options: Any) -> Clusterer:
    """A clusterer by registered ``name`` with its ``options`` (e.g. ``k_max``)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown clusterer {name!r}; choose one of {', '.join(available())}") from None
    return factory(**options)


def resolve(clusterer: Clusterer | str | None = None, *, mode: str = "expression", k_max: int = 10) -> Clusterer:
    """The clusterer to use: an object as given, a registered name, or ``None`` for the default of ``mode``.

    The default for a Dhaka latent is :class:`GMMBIC` with the mode's merge rule
    (:func:`dhaka.cluster.latent_merge`).
    """
    if clusterer is None or clusterer == DEFAULT_CLUSTERER:
        from dhaka.cluster import latent_merge

        return GMMBIC(k_max=int(k_max), merge=latent_merge(mode))
    if isinstance(clusterer, str):
        return make(clusterer, k_max=int(k_max))
    if not callable(getattr(clusterer, "fit", None)):
        raise TypeError(f"a clusterer needs a fit(Z, *, seed) method; got {type(clusterer).__name__}")
    return clusterer


@register(DEFAULT_CLUSTERER)
@dataclass
class GMMBIC:
    """Gaussian mixtures with ``k`` chosen by BIC (:func:`dhaka.cluster.gmm_bic`), as in the paper.

    ``k_max`` is capped at the number of cells less one. Where BIC chooses ``k_max`` itself (its curve may
    still be falling), ``extend`` (default) sweeps once more up to twice ``k_max`` (at most
    :data:`K_CEILING`) and keeps that result (``params["k_max_asked"]`` remembers the ``k_max`` asked); a
    warning says when BIC still chose the largest ``k`` tried. The sweep runs with one BLAS thread: its
    matrices are d x d, where more threads only contend (50x slower on a busy CPU).
    """

    k_max: int = 10
    merge: bool | str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    name: str = DEFAULT_CLUSTERER
    extend: bool = True

    def fit(self, Z: Any, *, seed: int = 0):
        from threadpoolctl import threadpool_limits

        from dhaka.cluster import gmm_bic

        cap = max(1, int(np.shape(Z)[0]) - 1)
        k_max = min(int(self.k_max), cap)
        with threadpool_limits(1, user_api="blas"):
            res = gmm_bic(Z, k_max=k_max, seed=int(seed), merge=self.merge, **self.options)
            wider = min(2 * k_max, max(K_CEILING, k_max), cap)
            if self.extend and 1 < k_max < wider and res.n_components >= k_max:
                _log.info("BIC chose the largest k tried (%d): trying up to %d", k_max, wider)
                res = gmm_bic(Z, k_max=wider, seed=int(seed), merge=self.merge, **self.options)
                k_max = wider
        res.params["k_max_asked"] = int(self.k_max)
        if k_max > 1 and res.n_components >= k_max:
            warnings.warn(f"BIC chose the largest number of mixture components tried (k_max={k_max}) and may still "
                          f"be falling: try a larger k_max to see whether more clusters fit better", stacklevel=2)
        return res


#: The most mixture components :class:`GMMBIC` tries on its own when BIC chose ``k_max`` (a larger ``k_max``
#: asked for is kept as asked).
K_CEILING = 40


def k_max_asked(result: Any) -> int | None:
    """The ``k_max`` a caller was asked for (``None`` where the result does not say)."""
    params = getattr(result, "params", None) or {}
    v = params.get("k_max_asked", params.get("k_max"))
    return int(v) if v is not None else None


#: How :class:`dhaka.Dhaka` keeps one of several random starts (``start_criterion``).
START_CRITERIA = ("agreement", "silhouette")


def agreement(calls: list[np.ndarray | None]) -> np.ndarray:
    """Per call, its mean ARI with the other calls (NaN for a missing call or with fewer than two calls).

    The call that agrees best with the rest is the medoid of the calls: the partition a rerun is most likely
    to give again, which is what several starts are for.
    """
    from dhaka.cluster import ari

    out = np.full(len(calls), np.nan)
    have = [i for i, c in enumerate(calls) if c is not None]
    if len(have) < 2:
        return out
    pair = {(i, j): ari(calls[i], calls[j]) for a, i in enumerate(have) for j in have[a + 1:]}
    for i in have:
        out[i] = float(np.mean([pair[min(i, j), max(i, j)] for j in have if j != i]))
    return out


def check_start_criterion(criterion: str) -> None:
    """Refuse a ``start_criterion`` that is not one of :data:`START_CRITERIA`, naming the setting."""
    if criterion not in START_CRITERIA:
        raise ValueError(f"start_criterion must be one of {', '.join(map(repr, START_CRITERIA))}, got {criterion!r}")


def choose_start(scores: list[dict[str, Any]], calls: list[np.ndarray | None], criterion: str) -> int:
    """Index of the start to keep; adds ``"agreement"`` to each start's ``scores`` where it is defined.

    ``"agreement"``: the highest :func:`agreement` (ties and two starts, where both agree equally, go to
    the silhouette); ``"silhouette"``: the highest silhouette. A start without a score is kept only when
    no start has one.
    """
    check_start_criterion(criterion)
    sil = np.array([s.get("silhouette", np.nan) for s in scores], dtype=float)
    sil = np.where(np.isfinite(sil), sil, -np.inf)
    if criterion == "agreement" and len(scores) > 2:
        agree = agreement(calls)
        for s, a in zip(scores, agree):
            s["agreement"] = None if np.isnan(a) else float(a)
        agree = np.where(np.isfinite(agree), np.round(agree, 6), -np.inf)
        if np.isfinite(agree).any():
            best = np.flatnonzero(agree == agree.max())
            return int(best[np.argmax(sil[best])])
    return int(np.argmax(sil))
