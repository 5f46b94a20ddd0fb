"""Clustering of a latent space: Gaussian mixtures with the number of clusters chosen by BIC.

The paper (Rashid, Shah & Pandya) clusters Dhaka's 3-D latent space with a Gaussian
mixture whose number of components minimises the Bayesian information criterion.
:func:`gmm_bic` does that robustly (infeasible ``k`` skipped and reported, float64,
regularisation scaled to the data, subsampled fitting for many cells, parallel sweep)
and can merge components that belong to one cluster (``merge=True``), which matters
for heavy-tailed data such as copy-number profiles, where BIC spends extra Gaussian
components on the tails of one clone.

Also here: :func:`ari`, :func:`nmi` and :func:`silhouette` (``nan`` when undefined).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp

__all__ = ["GMMResult", "gmm_bic", "latent_merge", "gmm_fixed_k", "merge_components", "merge_stability", "nesting_offset", "ridge_ratio", "ari", "nmi",
           "silhouette"]

CovarianceType = Literal["full", "tied", "diag", "spherical"]


@dataclass
class GMMResult:
    """Outcome of :func:`gmm_bic` / :func:`gmm_fixed_k`.

    Attributes
    ----------
    k
        Number of clusters in ``labels`` (after merging, if any).
    labels
        Cluster of every cell (int64, ``0..k-1``, 0 the largest cluster).
    bic
        BIC of the mixture with ``i + 1`` components at index ``i`` (length ``k_max``);
        ``nan`` where ``k`` was skipped or not tried. Lower is better.
    ks
        The ``k`` that were fitted.
    skipped
        The ``k`` that were not feasible or whose fit failed.
    skip_reasons
        ``{k: reason}`` for every skipped ``k``.
    model
        The fitted :class:`sklearn.mixture.GaussianMixture` of the selected ``k``
        (``None`` only when no mixture could be fitted at all).
    merged
        ``None`` when no components were merged; otherwise a dict with
        ``"n_components"``, ``"groups"`` (component indices per cluster), ``"steps"``
        (each merge with its criterion value) and the settings used.
    n_components
        Components of the selected mixture (before merging).
    component_map
        Cluster of each mixture component (length ``n_components``).
    icl
        Integrated completed likelihood (BIC + 2 x classification entropy) per ``k``.
    criterion
        ``"bic"`` or ``"icl"``: what chose ``n_components``.
    n_fit
        Cells the mixtures were fitted on (a random subsample when above ``max_fit_cells``).
    params
        The settings of the call.
    merge_choice
        With ``merge="auto"``: ``"chosen"`` (``"merge"`` or ``"plain"``) and the subsample stabilities
        (:func:`merge_stability`) and cluster counts it was decided on; ``None`` otherwise.
    """

    k: int
    labels: np.ndarray
    bic: np.ndarray
    ks: list[int]
    skipped: list[int]
    skip_reasons: dict[int, str]
    model: Any
    merged: dict | None = None
    n_components: int = 1
    component_map: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    icl: np.ndarray | None = None
    criterion: str = "bic"
    n_fit: int = 0
    params: dict = field(default_factory=dict)
    merge_choice: dict | None = None

    @property
    def record(self) -> dict[str, Any]:
        """What a run records of this clustering (:class:`dhaka.clusterers.ClusterResult`'s ``record``)."""
        return {"method": "gmm_bic", "k": int(self.k), "bic": np.asarray(self.bic, dtype=np.float64),
                "n_components": int(self.n_components), "cluster_params": dict(self.params or {})}

    def predict(self, Z) -> np.ndarray:
        """Cluster labels of new points ``Z`` (same columns as the fitted data)."""
        Z = _as_2d(Z)
        if self.model is None:
            return np.zeros(Z.shape[0], dtype=np.int64)
        return _labels_from_map(self.model, Z, self.component_map, self.k)


# ----------------------------------------------------------------------------- helpers
def _as_2d(Z) -> np.ndarray:
    if hasattr(Z, "toarray"):
        Z = Z.toarray()
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2:
        raise ValueError(f"expected a 1-D or 2-D array of points, got shape {Z.shape}")
    return Z


def _check(Z) -> np.ndarray:
    Z = _as_2d(Z)
    if Z.shape[0] == 0:
        raise ValueError("cannot cluster an empty set of points (0 rows)")
    if Z.shape[1] == 0:
        raise ValueError("cannot cluster points with 0 dimensions")
    if not np.all(np.isfinite(Z)):
        bad = int((~np.isfinite(Z)).any(axis=1).sum())
        raise ValueError(f"{bad} point(s) contain NaN or infinite coordinates")
    return Z


def _n_unique(Z: np.ndarray, cap: int) -> int:
    """Distinct rows of ``Z``, counted exactly up to ``cap`` (enough to judge feasibility)."""
    try:
        return int(np.unique(Z, axis=0).shape[0])
    except (TypeError, ValueError):  # pragma: no cover
        return cap


def _full_covariances(model) -> np.ndarray:
    """Covariances of every component as (K, d, d), whatever ``covariance_type``."""
    K, d = model.means_.shape
    ct = model.covariance_type
    cov = model.covariances_
    if ct == "full":
        return np.asarray(cov, dtype=np.float64)
    if ct == "tied":
        return np.repeat(np.asarray(cov, dtype=np.float64)[None], K, axis=0)
    if ct == "diag":
        return np.stack([np.diag(c) for c in np.asarray(cov, dtype=np.float64)])
    return np.stack([np.eye(d) * float(c) for c in np.asarray(cov, dtype=np.float64)])


def _labels_from_map(model, Z: np.ndarray, cmap: np.ndarray, k: int) -> np.ndarray:
    logp = model._estimate_weighted_log_prob(Z)            # (n, K): log w_j + log N(x | j)
    if k == cmap.size and np.array_equal(cmap, np.arange(k)):
        return np.argmax(logp, axis=1).astype(np.int64)
    out = np.full((Z.shape[0], k), -np.inf)
    for c in range(k):
        cols = np.flatnonzero(cmap == c)
        if cols.size:
            out[:, c] = logsumexp(logp[:, cols], axis=1)
    return np.argmax(out, axis=1).astype(np.int64)


def _entropy(model, Z: np.ndarray) -> float:
    resp = model.predict_proba(Z)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(resp > 0, resp * np.log(resp), 0.0))
    return float(ent)


def _fit_one(Z: np.ndarray, k: int, *, seed: int, covariance_type: str, reg: float,
             n_init: int, max_iter: int):
    """Fit one mixture; on a numerical failure retry once with 1000x the regularisation."""
    from sklearn.mixture import GaussianMixture

    last: Exception | None = None
    for factor in (1.0, 1e3):
        gm = GaussianMixture(n_components=k, covariance_type=covariance_type, reg_covar=reg * factor,
                             n_init=n_init, max_iter=max_iter, random_state=seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # ConvergenceWarning on tiny / degenerate data
                gm.fit(Z)
            bic = float(gm.bic(Z))
            if not np.isfinite(bic):
                raise FloatingPointError("BIC is not finite")
            return gm, bic, None
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as err:
            last = err
    return None, np.nan, f"fit failed: {last}"


# ----------------------------------------------------------------------------- merging
def _logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x | mean, cov) for the rows of ``x``."""
    d = mean.size
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        L = np.linalg.cholesky(cov + np.eye(d) * 1e-9 * max(np.trace(cov) / d, 1e-12))
    sol = np.linalg.solve(L, (x - mean).T)
    return -0.5 * (np.sum(sol ** 2, axis=0) + d * np.log(2 * np.pi)) - np.sum(np.log(np.diag(L)))


def ridge_ratio(w1, m1, S1, w2, m2, S2, *, n_points: int = 200) -> float:
    """How unimodal the two-component mixture ``w1 N(m1, S1) + w2 N(m2, S2)`` is.

    Evaluates the mixture density along the ridgeline of Ray & Lindsay (2005),
    ``x(a) = [(1-a) S1^-1 + a S2^-1]^-1 [(1-a) S1^-1 m1 + a S2^-1 m2]``, ``a`` in [0, 1],
    which passes through every mode of the mixture. Returns 1 when the density has a
    single maximum there (the union is unimodal), else the ratio of the lowest density
    between the outermost maxima to the second-highest maximum (0 = two clearly separate
    clusters). This is Hennig's (2010) *ridge.ratio* criterion.
    """
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    P1, P2 = np.linalg.pinv(S1), np.linalg.pinv(S2)
    a = np.linspace(0.0, 1.0, n_points)
    pts = np.empty((n_points, m1.size))
    for t, ai in enumerate(a):
        A = (1 - ai) * P1 + ai * P2
        b = (1 - ai) * P1 @ m1 + ai * P2 @ m2
        try:
            pts[t] = np.linalg.solve(A, b)
        except np.linalg.LinAlgError:
            pts[t] = np.linalg.lstsq(A, b, rcond=None)[0]
    logf = np.logaddexp(np.log(w1) + _logpdf(pts, m1, S1), np.log(w2) + _logpdf(pts, m2, S2))
    padded = np.r_[-np.inf, logf, -np.inf]
    peaks = np.flatnonzero((padded[1:-1] >= padded[:-2]) & (padded[1:-1] >= padded[2:]) &
                           ~((padded[1:-1] == padded[:-2]) & (padded[1:-1] == padded[2:])))
    # plateaus (identical means) count as one peak
    if peaks.size < 2:
        return 1.0
    lo = float(np.min(logf[peaks[0]:peaks[-1] + 1]))
    second = float(np.sort(logf[peaks])[-2])
    return float(np.exp(min(lo - second, 0.0)))


def nesting_offset(m1, S1, m2, S2) -> float:
    """Mahalanobis distance of the narrower component's mean from the wider one's, in the wider metric.

    The wider of ``N(m1, S1)`` and ``N(m2, S2)`` is the one with the larger covariance determinant.
    About 0 for a heavy tail wrapped around a core; about the separation in standard deviations
    for two side-by-side groups.
    """
    m1, m2 = np.asarray(m1, float), np.asarray(m2, float)
    S1, S2 = np.asarray(S1, float), np.asarray(S2, float)
    wide = S1 if np.linalg.slogdet(S1)[1] >= np.linalg.slogdet(S2)[1] else S2
    diff = m1 - m2
    return float(np.sqrt(max(diff @ np.linalg.lstsq(wide, diff, rcond=None)[0], 0.0)))


def merge_components(
    model,
    Z,
    *,
    tol: float = 0.9,
    min_cluster_size: int | float | None = None,
    max_offset: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Merge the components of a fitted Gaussian mixture into clusters.

    Two steps, both optional:

    1. Unimodal unions (Hennig 2010, "Methods for merging Gaussian mixture
       components", *ridge.ratio*): for every pair of components the two-component
       mixture is evaluated along its ridgeline (:func:`ridge_ratio`); pairs whose
       density dips by less than ``1 - tol`` between their modes (ratio >= ``tol``;
       1 = unimodal) describe one cluster, and clusters are the connected groups of
       such pairs. A narrow core and the wide components BIC adds for its heavy tails
       form unimodal unions and are merged; real groups, even overlapping ones, keep a
       density dip and are not. ``tol > 1`` switches this step off.
    2. ``min_cluster_size`` (a count, or a fraction of the cells when < 1): clusters
       holding fewer cells are merged, smallest first, into the cluster under which
       their cells are most likely (mean log density). Clusters owning no cell are
       always folded in.

    With ``max_offset`` a unimodal pair is joined only when it is *nested*: the mean of the
    narrower component (smaller covariance determinant) lies within ``max_offset`` Mahalanobis
    units of the wider one's mean, in the wider one's metric (:func:`nesting_offset`). A heavy
    tail is a wide component around a cluster's core (offset near 0); a small group on the
    flank of a large one can leave no density dip (a "shoulder") yet sits off its centre.

    Parameters
    ----------
    model
        A fitted :class:`sklearn.mixture.GaussianMixture`.
    Z
        The points (n, d) used to count cells per cluster.
    tol
        Ridgeline ratio from which two components are one cluster.
    min_cluster_size
        Smallest cluster kept, or ``None``.
    max_offset
        Largest nesting offset of a joined pair, or ``None`` (unimodality alone decides).

    Returns
    -------
    component_map : np.ndarray
        Cluster index (0 = largest) of each component.
    info : dict
        ``"groups"`` (components per cluster), ``"steps"`` (list of dicts),
        ``"ridge_ratio"`` (K x K matrix) and the settings.
    """
    Z = _check(Z)
    w = np.asarray(model.weights_, dtype=np.float64)
    m = np.asarray(model.means_, dtype=np.float64)
    S = _full_covariances(model)
    K = w.size
    steps: list[dict] = []
    R = np.eye(K)
    parent = list(range(K))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    offsets = np.zeros((K, K))
    if tol <= 1.0:
        for i in range(K):
            for j in range(i + 1, K):
                R[i, j] = R[j, i] = ridge_ratio(w[i], m[i], S[i], w[j], m[j], S[j])
                offsets[i, j] = offsets[j, i] = nesting_offset(m[i], S[i], m[j], S[j])
        for i, j in sorted(((i, j) for i in range(K) for j in range(i + 1, K)), key=lambda p: -R[p]):
            nested = max_offset is None or offsets[i, j] <= max_offset
            if R[i, j] >= tol and nested and find(i) != find(j):
                steps.append({"rule": "unimodal", "components": [i, j], "ridge_ratio": float(R[i, j]),
                              "offset": float(offsets[i, j])})
                parent[find(j)] = find(i)
    roots = sorted({find(i) for i in range(K)})
    groups: list[list[int]] = [[j for j in range(K) if find(j) == r] for r in roots]

    logp = model._estimate_weighted_log_prob(Z)            # (n, K)

    def cluster_logp(gs):
        return np.column_stack([logsumexp(logp[:, g], axis=1) for g in gs])

    n = Z.shape[0]
    min_n = 0
    if min_cluster_size is not None:
        min_n = int(np.ceil(min_cluster_size * n)) if 0 < min_cluster_size < 1 else int(min_cluster_size)
    while len(groups) > 1:
        lp = cluster_logp(groups)
        lab = np.argmax(lp, axis=1)
        sizes = np.bincount(lab, minlength=len(groups))
        small = int(np.argmin(sizes))
        if sizes[small] >= max(min_n, 1):
            break
        members = lab == small
        if members.any():
            score = lp[members].mean(axis=0)
        else:  # owns no cell: fold into the heaviest other cluster
            score = np.array([logsumexp(np.log(w[g])) for g in groups])
        score[small] = -np.inf
        big = sizes >= max(min_n, 1)
        if big.any():  # into the nearest cluster that is kept, not into another small one
            score[~big] = -np.inf
        target = int(np.argmax(score))
        steps.append({"rule": "min_cluster_size" if sizes[small] else "empty",
                      "merged": [list(groups[small]), list(groups[target])], "cells": int(sizes[small])})
        groups[target] = groups[target] + groups[small]
        del groups[small]

    # order clusters by size, largest first
    lab = np.argmax(cluster_logp(groups), axis=1)
    sizes = np.bincount(lab, minlength=len(groups))
    order = np.argsort(-sizes, kind="stable")
    groups = [sorted(groups[i]) for i in order]
    cmap = np.empty(K, dtype=np.int64)
    for c, g in enumerate(groups):
        cmap[g] = c
    info = {"method": "ridgeline", "n_components": K, "groups": groups, "steps": steps, "tol": tol,
            "min_cluster_size": min_cluster_size, "max_offset": max_offset, "ridge_ratio": R.tolist(),
            "offset": offsets.tolist()}
    return cmap, info


# ----------------------------------------------------------------------------- GMM-BIC
#: Subsample mixtures behind ``merge="auto"``'s choice (see :func:`merge_stability`).
MERGE_STABILITY_BOOT = 8
#: Share of the cells in each of those subsamples.
MERGE_STABILITY_FRACTION = 0.8
#: At most this many cells enter the stability check (a random subset of the fitted ones).
MERGE_STABILITY_MAX_CELLS = 5000
#: Where merging leaves one cluster, it stands when its stability (the share of subsamples that
#: also merge into one) reaches this.
MERGE_ONE_CLUSTER_STABILITY = 0.5
#: The merged clusters are kept while their stability is within this of the plain ones' (fewer clusters when
#: both reproduce about as well: 8 subsamples do not resolve differences of 0.01). With 0 (ties only) the
#: copy-number trim's latents missed on 3 of 40 (merged 0.700 vs plain 0.710, 0.914 vs 0.920, 0.649 vs 0.650;
#: ARI 0.33, 0.12, 0.14 lost); 0.01-0.03 missed on none (bench/RESULTS.md, "Independent data").
MERGE_STABILITY_TOL = 0.02


def merge_stability(Z, model, plain, merged, *, merge_tol: float = 0.9, min_cluster_size: float | None = None,
                    max_offset: float | None = None, n_boot: int = MERGE_STABILITY_BOOT,
                    fraction: float = MERGE_STABILITY_FRACTION, seed: int = 0) -> tuple[float, float]:
    """How well subsamples reproduce the plain and the merged clusters of ``model`` on ``Z``.

    ``n_boot`` mixtures with ``model``'s number of components are fitted on random subsamples of
    ``fraction`` of the cells; each is turned into plain clusters (one per component) and into
    merged ones (:func:`merge_components` with the same settings), and every cell of ``Z`` is
    labelled by them. Returns the mean adjusted Rand index of those labels against ``plain``
    and ``merged`` (the labels of ``Z``'s cells from the full-data mixture). Components that
    split one cluster move from subsample to subsample and lower the plain score; real groups
    stay (clustering stability: Ben-Hur et al. 2002, Lange et al. 2004).

    ``min_cluster_size`` is a fraction of the cells here (``None``: off).
    """
    from sklearn.mixture import GaussianMixture

    Z = _check(Z)
    n = Z.shape[0]
    K = int(model.n_components)
    if K == 1:
        return 1.0, 1.0
    var = float(np.mean(np.var(Z, axis=0)))
    reg = 1e-6 * var if var > 0 else 1e-6
    rng = np.random.default_rng(seed + 1000)
    m = max(K * (Z.shape[1] + 1), int(fraction * n))
    s_plain, s_merged = [], []
    for b in range(n_boot):
        idx = np.sort(rng.choice(n, size=min(n, m), replace=False))
        try:
            gm = GaussianMixture(K, covariance_type=model.covariance_type, n_init=1, reg_covar=reg,
                                 random_state=seed + b).fit(Z[idx])
        except (ValueError, np.linalg.LinAlgError):  # a degenerate subsample: it reproduces nothing
            s_plain.append(0.0)
            s_merged.append(0.0)
            continue
        s_plain.append(ari(plain, gm.predict(Z)))
        mcs = None if min_cluster_size is None else max(1, int(np.ceil(min_cluster_size * idx.size)))
        cmap, _ = merge_components(gm, Z[idx], tol=merge_tol, min_cluster_size=mcs, max_offset=max_offset)
        s_merged.append(ari(merged, _labels_from_map(gm, Z, cmap, int(cmap.max()) + 1)))
    return float(np.mean(s_plain)), float(np.mean(s_merged))


def latent_merge(mode: str) -> Literal["auto"]:
    """The ``merge`` rule for clustering a Dhaka latent of ``mode`` data: ``"auto"`` for every mode.

    A fixed rule per data type missed on data the project did not generate, where ``merge="auto"``
    (merged or plain, whichever subsamples reproduce better) held (bench/RESULTS.md, "Why the defaults
    are what they are"). It stays a function so a rule per data type has one place to live;
    :func:`dhaka.clusterers.resolve` is its one caller in the library.
    """
    return "auto"


def gmm_bic(
    Z,
    *,
    k_max: int = 10,
    seed: int = 0,
    covariance_type: CovarianceType = "full",
    min_cluster_size: int | float | Literal["auto"] | None = "auto",
    merge: bool | Literal["auto"] = "auto",
    merge_tol: float = 0.9,
    merge_offset: float | None = None,
    criterion: Literal["bic", "icl"] = "bic",
    max_fit_cells: int = 20000,
    n_init: int = 3,
    max_iter: int = 200,
    reg_covar: float = 1e-6,
    n_jobs: int = 1,
) -> GMMResult:
    """Gaussian-mixture clustering with the number of components chosen by BIC.

    Fits mixtures with ``k = 1..k_max`` components and keeps the one with the lowest
    BIC (or ICL), as in the Dhaka paper. Robust on small and degenerate data:

    * a ``k`` is skipped (and listed in ``skipped`` with a reason) when it has fewer
      than ``d + 1`` cells per component (``k > n / (d + 1)``), more components than
      distinct points, or when its fit fails even after a retry with 1000x the
      regularisation; ``k = 1`` is always tried;
    * computation is in float64 and ``reg_covar`` is relative to the mean variance of
      the columns, so latents of any scale are regularised alike;
    * constant columns, duplicate points and 1-D input are accepted;
    * ``n_init`` restarts per ``k`` for stability.

    On many cells the mixtures are fitted on a random subsample of ``max_fit_cells``
    cells (BIC is compared on that subsample) and every cell is then labelled by the
    chosen mixture. With ``n_jobs != 1`` the ``k`` sweep runs in parallel threads.

    Merging (``merge=True``) then combines mixture components that
    describe one cluster (see :func:`merge_components`): components whose two-component
    union is unimodal along the ridgeline (ratio >= ``merge_tol``) are joined, and
    clusters smaller than ``min_cluster_size`` are folded into the nearest kept
    cluster. ``min_cluster_size="auto"`` means ``max(10 cells, 1% of cells)`` with
    merging and nothing without; ``None`` or 0 switches it off.
    ``result.n_components`` is the BIC choice, ``result.k`` the clusters after merging;
    ``merge=False, min_cluster_size=None`` is the paper's plain GMM-BIC.

    ``merge="auto"`` (the default) decides from the data: it keeps whichever of the merged and the
    plain BIC clusters subsamples reproduce better (:func:`merge_stability`; merging is kept while it is
    within :data:`MERGE_STABILITY_TOL` of the plain clusters), so
    a split of one cluster into overlapping components is undone and real groups are kept apart;
    where merging leaves one cluster, it stands when at least :data:`MERGE_ONE_CLUSTER_STABILITY` of
    the subsamples merge into one too (a sample of one clone, as the paper's later xenograft sample:
    there BIC's 8 components are dominated by one and look stable by ARI); ``result.merge_choice``
    records both scores and the choice. No fixed rule (always, never, a silhouette gain) was right on
    every embedding of data the project did not generate; merging is needed at all because BIC spends
    extra components on heavy-tailed clusters (bench/RESULTS.md).

    Heavy-tailed clusters (copy-number profiles with private events and state-call
    noise) make BIC spend components on the tails; the ridgeline rule joins those
    (unimodal unions, ratios 0.96-1.0) and keeps real groups apart (ratios <= 0.76 on
    the expression sets), and the small-cluster rule absorbs the 1-5-cell outlier
    groups BIC fits on 300 cells. A fixed 5% minimum would also find the clones but
    swallowed the 3% rare group, hence the small ``"auto"`` size.

    Parameters
    ----------
    Z
        Points, (n, d) or (n,); dense or scipy sparse.
    k_max
        Largest number of components tried.
    seed
        Random state of the mixtures and of the subsample.
    covariance_type
        As in :class:`sklearn.mixture.GaussianMixture`.
    min_cluster_size
        Clusters with fewer cells (count, or fraction of cells when < 1) are merged
        into the kept cluster under which their cells are most likely; ``"auto"``:
        ``max(10, 1% of cells)`` when ``merge`` else off; ``None``: off.
    merge
        Merge components whose union is unimodal (see above); ``"auto"``: where subsamples reproduce
        the merged clusters at least as well as the plain ones.
    merge_tol
        Ridgeline ratio (:func:`ridge_ratio`) from which two components are one cluster.
    merge_offset
        Join a unimodal pair only when it is nested (:func:`nesting_offset` at most this);
        ``None`` (default): unimodality alone decides. Not the default because on
        ``simulate.cnv_pair`` heavy-tail components of one clone sat 1-20 units apart
        (issue 12, bench/RESULTS.md "Independent data").
    criterion
        ``"bic"`` (the paper) or ``"icl"`` (BIC plus twice the classification
        entropy, which penalises overlapping components).
    max_fit_cells
        Fit on a random subsample of this many cells when there are more.
    n_init, max_iter
        Restarts and EM iterations per ``k``.
    reg_covar
        Regularisation added to covariance diagonals, relative to the mean column variance.
    n_jobs
        Parallel threads for the ``k`` sweep (``-1``: all cores).

    Returns
    -------
    GMMResult
    """
    Z = _check(Z)
    n, d = Z.shape
    if k_max < 1:
        raise ValueError(f"k_max must be at least 1, got {k_max}")
    if isinstance(merge, str) and merge != "auto":
        raise ValueError(f"merge must be True, False or 'auto', got {merge!r}")
    auto_merge = isinstance(merge, str)
    auto_size = isinstance(min_cluster_size, str)
    if isinstance(min_cluster_size, str):
        if min_cluster_size != "auto":
            raise ValueError(f"min_cluster_size must be a number, None or 'auto', got {min_cluster_size!r}")
        min_cluster_size = max(10, int(np.ceil(0.01 * n))) if merge else None
    elif min_cluster_size is not None and min_cluster_size <= 0:
        min_cluster_size = None
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=max_fit_cells, replace=False)) if n > max_fit_cells else None
    Zf = Z if fit_idx is None else Z[fit_idx]
    nf = Zf.shape[0]
    var = float(np.mean(np.var(Zf, axis=0)))
    reg = reg_covar * var if var > 0 else reg_covar
    n_unique = _n_unique(Zf, k_max)

    skip_reasons: dict[int, str] = {}
    todo: list[int] = []
    for k in range(1, k_max + 1):
        if k > 1 and k * (d + 1) > nf:
            skip_reasons[k] = f"too few cells: {nf} cells < k x (d + 1) = {k * (d + 1)}"
        elif k > 1 and k > n_unique:
            skip_reasons[k] = f"only {n_unique} distinct points"
        else:
            todo.append(k)

    def run(k):
        return _fit_one(Zf, k, seed=seed, covariance_type=covariance_type, reg=reg,
                        n_init=n_init, max_iter=max_iter)

    from threadpoolctl import threadpool_limits

    # EM on (n, d) with small d gains nothing from multi-threaded BLAS and loses a lot
    # to oversubscription (measured: 13.6 s vs 0.23 s for k=8 on 200 x 3 on a busy machine)
    with threadpool_limits(limits=1, user_api="blas"):
        if n_jobs != 1 and len(todo) > 1:
            from joblib import Parallel, delayed

            fits = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(run)(k) for k in todo)
        else:
            fits = [run(k) for k in todo]

    bic = np.full(k_max, np.nan)
    icl = np.full(k_max, np.nan)
    models: dict[int, Any] = {}
    for k, (gm, b, err) in zip(todo, fits):
        if gm is None:
            skip_reasons[k] = err or "fit failed"
            continue
        models[k] = gm
        bic[k - 1] = b
        icl[k - 1] = b + 2.0 * _entropy(gm, Zf)
    ks = sorted(models)
    params = dict(k_max=k_max, seed=seed, covariance_type=covariance_type, min_cluster_size=min_cluster_size,
                  merge=merge, merge_tol=merge_tol, merge_offset=merge_offset, criterion=criterion, max_fit_cells=max_fit_cells,
                  n_init=n_init, reg_covar=reg_covar)
    skipped = sorted(skip_reasons)
    if not ks:  # nothing could be fitted (e.g. a single point): one cluster
        return GMMResult(k=1, labels=np.zeros(n, dtype=np.int64), bic=bic, ks=[], skipped=skipped,
                         skip_reasons=skip_reasons, model=None, icl=icl, criterion=criterion,
                         n_fit=nf, params=params)
    score = icl if criterion == "icl" else bic
    best = int(np.nanargmin(score)) + 1
    mcs_fit = None  # the minimum size counted on the cells the mixture was fitted on
    if min_cluster_size is not None:
        frac = min_cluster_size if min_cluster_size < 1 else min_cluster_size / n
        mcs_fit = max(1, int(np.ceil(frac * nf)))
    kw = dict(bic=bic, icl=icl, ks=ks, skipped=skipped, skip_reasons=skip_reasons, merge_tol=merge_tol,
              criterion=criterion, params=params, max_offset=merge_offset)
    merged = _finish(Z, Zf, models[best], merge=bool(merge), min_cluster_size=mcs_fit, **kw)
    if not auto_merge:
        return merged
    # "auto": the plain BIC clusters unless merging makes them clearly more compact and separated
    plain = _finish(Z, Zf, models[best], merge=False, min_cluster_size=None if auto_size else mcs_fit, **kw)
    if merged.k == plain.k:
        merged.merge_choice = {"chosen": "merge", "reason": "nothing to merge"}
        return merged
    on_fit = (lambda lab: lab) if fit_idx is None else (lambda lab: lab[fit_idx])  # labels of Zf's cells
    sub = np.arange(nf)
    if nf > MERGE_STABILITY_MAX_CELLS:
        sub = np.sort(np.random.default_rng(seed + 7).choice(nf, size=MERGE_STABILITY_MAX_CELLS, replace=False))
    with threadpool_limits(limits=1, user_api="blas"):
        st_plain, st_merged = merge_stability(
            Zf[sub], models[best], on_fit(plain.labels)[sub], on_fit(merged.labels)[sub], merge_tol=merge_tol,
            min_cluster_size=None if mcs_fit is None else mcs_fit / nf, max_offset=merge_offset, seed=seed)
    # one cluster: the plain partition's ARI is dominated by its largest component and says little;
    # one population stands where most subsamples also merge into one (the xenograft's later sample)
    use = (st_merged >= MERGE_ONE_CLUSTER_STABILITY if merged.k == 1
           else st_merged >= st_plain - MERGE_STABILITY_TOL)
    out = merged if use else plain
    out.merge_choice = {"chosen": "merge" if use else "plain", "stability_merged": st_merged,
                        "stability_plain": st_plain, "n_boot": MERGE_STABILITY_BOOT,
                        "k_merged": merged.k, "k_plain": plain.k}
    return out


def _finish(Z, Zf, gm, *, bic, icl, ks, skipped, skip_reasons, merge, merge_tol, min_cluster_size,
            criterion, params, max_offset: float | None = None) -> GMMResult:
    K = gm.n_components
    cmap = np.arange(K, dtype=np.int64)
    merged = None
    if merge or min_cluster_size is not None:
        cmap, info = merge_components(gm, Zf, tol=merge_tol if merge else 2.0, min_cluster_size=min_cluster_size,
                                      max_offset=max_offset)
        if len(info["groups"]) < K:
            merged = info
    k = int(cmap.max()) + 1
    labels = _labels_from_map(gm, Z, cmap, k)
    if merged is None:  # relabel by size, largest first, so colours are stable
        sizes = np.bincount(labels, minlength=k)
        order = np.argsort(-sizes, kind="stable")
        rank = np.empty(k, dtype=np.int64)
        rank[order] = np.arange(k)
        cmap = rank[cmap]
        labels = rank[labels]
    # a cluster can end up owning no cell; compact the labels
    present = np.unique(labels)
    if present.size < k:
        remap = np.full(k, -1, dtype=np.int64)
        remap[present] = np.arange(present.size)
        labels = remap[labels]
        cmap = np.where(remap[cmap] >= 0, remap[cmap], 0)
        k = int(present.size)
    return GMMResult(k=k, labels=labels, bic=bic, ks=ks, skipped=skipped, skip_reasons=skip_reasons,
                     model=gm, merged=merged, n_components=K, component_map=cmap, icl=icl,
                     criterion=criterion, n_fit=Zf.shape[0], params=params)


def gmm_fixed_k(
    Z,
    k: int,
    *,
    seed: int = 0,
    covariance_type: CovarianceType = "full",
    max_fit_cells: int = 20000,
    n_init: int = 3,
    reg_covar: float = 1e-6,
) -> GMMResult:
    """A Gaussian mixture with a user-chosen number of components.

    When ``k`` is not feasible (fewer than ``d + 1`` cells per component, more
    components than distinct points, or the fit fails) the largest feasible smaller
    ``k`` is used instead, and ``skipped`` / ``skip_reasons`` say why.

    Parameters
    ----------
    Z
        Points, (n, d) or (n,).
    k
        Number of components wanted (>= 1).
    seed, covariance_type, max_fit_cells, n_init, reg_covar
        As in :func:`gmm_bic`.

    Returns
    -------
    GMMResult
        ``bic`` has length ``k`` with the value of the fitted ``k`` filled in.
    """
    Z = _check(Z)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n, d = Z.shape
    rng = np.random.default_rng(seed)
    Zf = Z[np.sort(rng.choice(n, size=max_fit_cells, replace=False))] if n > max_fit_cells else Z
    var = float(np.mean(np.var(Zf, axis=0)))
    reg = reg_covar * var if var > 0 else reg_covar
    n_unique = _n_unique(Zf, k)
    skip_reasons: dict[int, str] = {}
    bic = np.full(k, np.nan)
    params = dict(k=k, seed=seed, covariance_type=covariance_type, max_fit_cells=max_fit_cells, n_init=n_init,
                  reg_covar=reg_covar)
    for kk in range(k, 0, -1):
        if kk > 1 and kk * (d + 1) > Zf.shape[0]:
            skip_reasons[kk] = f"too few cells: {Zf.shape[0]} cells < k x (d + 1) = {kk * (d + 1)}"
            continue
        if kk > 1 and kk > n_unique:
            skip_reasons[kk] = f"only {n_unique} distinct points"
            continue
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            gm, b, err = _fit_one(Zf, kk, seed=seed, covariance_type=covariance_type, reg=reg, n_init=n_init,
                                  max_iter=200)
        if gm is None:
            skip_reasons[kk] = err or "fit failed"
            continue
        bic[kk - 1] = b
        return _finish(Z, Zf, gm, bic=bic, icl=None, ks=[kk], skipped=sorted(skip_reasons),
                       skip_reasons=skip_reasons, merge=False, merge_tol=2.0, min_cluster_size=None,
                       criterion="fixed", params=params)
    return GMMResult(k=1, labels=np.zeros(n, dtype=np.int64), bic=bic, ks=[], skipped=sorted(skip_reasons),
                     skip_reasons=skip_reasons, model=None, criterion="fixed", n_fit=Zf.shape[0], params=params)


# ----------------------------------------------------------------------------- scores
def _labels(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        a = a.ravel()
    return a


def ari(a, b) -> float:
    """Adjusted Rand index between two labelings (1 = identical partitions, ~0 = chance)."""
    from sklearn.metrics import adjusted_rand_score

    a, b = _labels(a), _labels(b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length: {a.shape[0]} vs {b.shape[0]}")
    return float(adjusted_rand_score(a, b))


def nmi(a, b) -> float:
    """Normalised mutual information between two labelings (arithmetic normalisation)."""
    from sklearn.metrics import normalized_mutual_info_score

    a, b = _labels(a), _labels(b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length: {a.shape[0]} vs {b.shape[0]}")
    return float(normalized_mutual_info_score(a, b))


def silhouette(Z, labels, *, sample_size: int | None = 5000, seed: int = 0) -> float:
    """Mean silhouette width of ``labels`` in ``Z``; ``nan`` when undefined, never raises.

    Undefined: fewer than 3 points, a single cluster, every point its own cluster,
    mismatched lengths or non-finite coordinates. Above ``sample_size`` points the
    score is estimated on a seeded random sample.
    """
    try:
        from sklearn.metrics import silhouette_score

        Z = _as_2d(Z)
        lab = _labels(labels)
        n = Z.shape[0]
        if n < 3 or lab.shape[0] != n or not np.all(np.isfinite(Z)):
            return float("nan")
        if sample_size is not None and n > sample_size:
            idx = np.random.default_rng(seed).choice(n, size=sample_size, replace=False)
            Z, lab = Z[idx], lab[idx]
            n = sample_size
        n_lab = np.unique(lab).size
        if n_lab < 2 or n_lab > n - 1:
            return float("nan")
        return float(silhouette_score(Z, lab))
    except Exception:  # noqa: BLE001 - documented: never raises
        return float("nan")
