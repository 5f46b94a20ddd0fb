"""The Splatter model of single-cell RNA-seq counts, groups simulation (Zappia, Phipson & Oshlack 2017).

Written from the paper (Genome Biology 18:174, Fig. 1 and Methods), not from the R package's code,
and independent of :mod:`dhaka.simulate`. Steps, with Splatter's parameter names:

1. gene means ``lambda_i ~ Gamma(mean.shape, mean.rate)``; with probability ``out.prob`` a gene is
   an expression outlier, ``lambda_i = median(lambda) * LogNormal(out.facLoc, out.facScale)``;
2. library sizes ``L_j ~ LogNormal(lib.loc, lib.scale)``;
3. per group, each gene is differentially expressed with probability ``de.prob``, with factor
   ``LogNormal(de.facLoc, de.facScale)``, down-regulated (1 / factor) with probability
   ``de.downProb``; a group's gene means are ``lambda_i * factor_gi``;
4. cell means ``mu_ij = L_j * lambda_gi / sum_i lambda_gi`` (proportions times library size);
   With batches (``batchCells``), each batch ``b`` scales every gene's mean by its own factor
   ``LogNormal(batch.facLoc, batch.facScale)`` (Splatter's batch effect), applied as the DE factors are;
5. biological coefficient of variation ``BCV_ij = (bcv.common + 1 / sqrt(mu_ij)) *
   sqrt(bcv.df / chi2_{bcv.df})`` and trended means ``Gamma(shape=1/BCV^2, scale=mu_ij BCV^2)``;
6. counts ``Poisson(trended mean)``;
7. dropout (``dropout.type="experiment"``): probability ``1 / (1 + exp(-dropout.shape *
   (log(trended mean) - dropout.mid)))`` of setting a count to zero.

Defaults are the paper's / package's (mean.shape 0.6, mean.rate 0.3, lib.loc 11, lib.scale 0.2,
out.prob 0.05, out.facLoc 4, out.facScale 0.5, de.facLoc 0.1, de.facScale 0.4, bcv.common 0.1,
bcv.df 60, dropout shape -1), except where a grid cell changes them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from bench.generators import proportions

__all__ = ["SplatParams", "splat_groups"]


@dataclass(frozen=True)
class SplatParams:
    """Parameters of :func:`splat_groups` (names follow Splatter's, dots as underscores)."""

    n_cells: int = 1000
    n_genes: int = 2000
    group_prob: tuple[float, ...] = (0.35, 0.25, 0.2, 0.12, 0.08)
    mean_shape: float = 0.6
    mean_rate: float = 0.3
    lib_loc: float = 11.0
    lib_scale: float = 0.2
    out_prob: float = 0.05
    out_fac_loc: float = 4.0
    out_fac_scale: float = 0.5
    de_prob: float = 0.06
    de_down_prob: float = 0.5
    de_fac_loc: float = 0.1
    de_fac_scale: float = 0.4
    bcv_common: float = 0.1
    bcv_df: float = 60.0
    dropout: bool = True
    dropout_mid: float = 0.0
    dropout_shape: float = -1.0
    batch_cells: tuple[int, ...] = ()
    batch_fac_loc: float = 0.1
    batch_fac_scale: float = 0.1
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def splat_groups(params: SplatParams = SplatParams(), *, seed: int = 0):
    """Simulate a Splatter groups data set.

    Parameters
    ----------
    params
        Model parameters (:class:`SplatParams`).
    seed
        Seed of the random generator.

    Returns
    -------
    anndata.AnnData
        ``X`` integer counts (float32, cells x genes); ``obs["group"]`` the true group
        (``"Group1"``...), ``obs["lib_size"]``, with ``batch_cells`` ``obs["batch"]`` (``"Batch1"``...);
        ``var["de_group"]`` (the groups where the gene is
        DE, ``""`` if none), ``var["outlier"]``; ``uns["splatter"]`` the parameters.
    """
    import anndata as ad
    import pandas as pd

    p = params
    probs = proportions(p.group_prob, "group_prob")
    rng = np.random.default_rng(seed)
    n, g, k = int(p.n_cells), int(p.n_genes), probs.size

    # 1. gene means and outliers
    lam = rng.gamma(shape=p.mean_shape, scale=1.0 / p.mean_rate, size=g)
    outlier = rng.random(g) < p.out_prob
    lam[outlier] = np.median(lam) * rng.lognormal(p.out_fac_loc, p.out_fac_scale, size=int(outlier.sum()))
    # 2. library sizes
    lib = rng.lognormal(p.lib_loc, p.lib_scale, size=n)
    # 3. groups and DE factors (a cell's group drawn with group_prob, as Splatter does)
    group = rng.choice(k, size=n, p=probs)
    fac = np.ones((k, g))
    de_where = [[] for _ in range(g)]
    for gi in range(k):
        de = rng.random(g) < p.de_prob
        f = rng.lognormal(p.de_fac_loc, p.de_fac_scale, size=g)
        down = rng.random(g) < p.de_down_prob
        f = np.where(down, 1.0 / f, f)
        fac[gi, de] = f[de]
        for j in np.flatnonzero(de):
            de_where[j].append(f"Group{gi + 1}")
    gmeans = lam[None, :] * fac                                   # (k, g)
    if p.batch_cells:  # drawn only with batches: a set without them is as before
        if sum(p.batch_cells) != n:
            raise ValueError(f"batch_cells must add up to n_cells ({n}), got {p.batch_cells}")
        batch = np.repeat(np.arange(len(p.batch_cells)), p.batch_cells)
        bfac = rng.lognormal(p.batch_fac_loc, p.batch_fac_scale, size=(len(p.batch_cells), g))
        bmeans = gmeans[:, None, :] * bfac[None, :, :]             # (k, batches, g)
        props_cell = (bmeans / bmeans.sum(axis=2, keepdims=True))[group, batch]
    else:
        props_cell = (gmeans / gmeans.sum(axis=1, keepdims=True))[group]
    # 4. cell means
    mu = lib[:, None] * props_cell                                 # (n, g)
    # 5. BCV and trended means
    bcv = (p.bcv_common + 1.0 / np.sqrt(np.maximum(mu, 1e-12))) * np.sqrt(p.bcv_df / rng.chisquare(p.bcv_df, size=(n, g)))
    shape = 1.0 / bcv ** 2
    trended = rng.gamma(shape=shape, scale=mu / shape)
    # 6. counts
    counts = rng.poisson(trended).astype(np.float32)
    # 7. dropout
    if p.dropout:
        with np.errstate(divide="ignore"):
            logm = np.log(np.maximum(trended, 1e-300))
        pdrop = 1.0 / (1.0 + np.exp(-p.dropout_shape * (logm - p.dropout_mid)))
        counts[rng.random((n, g)) < pdrop] = 0.0
    obs = pd.DataFrame({"group": pd.Categorical([f"Group{i + 1}" for i in group]), "lib_size": lib},
                       index=[f"Cell{i + 1}" for i in range(n)])
    if p.batch_cells:
        obs["batch"] = pd.Categorical([f"Batch{b + 1}" for b in batch])
    var = pd.DataFrame({"de_group": [",".join(w) for w in de_where], "outlier": outlier},
                       index=[f"Gene{i + 1}" for i in range(g)])
    a = ad.AnnData(X=counts, obs=obs, var=var)
    a.uns["splatter"] = {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in p.as_dict().items()
                         if k_ != "extra"}
    a.uns["splatter"]["zero_fraction"] = float(np.mean(counts == 0))
    return a
