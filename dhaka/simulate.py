"""Seeded synthetic data sets with known truth, for demos, benchmarks and tests.

Every generator draws from one :class:`numpy.random.Generator` seeded by
``seed``, so the same arguments always give the same data, and returns an
:class:`anndata.AnnData` whose ``obs`` holds the truth (group, time, branch,
clone, ...) and whose ``uns["simulation"]`` records the parameters.

Generators
----------
paper
    The set-up of Rashid, Shah & Pandya (Dhaka, Bioinformatics 2019): 500 cells in
    five groups of 100 and 3000 genes, of which 500 or 2500 are pure noise.
    log2 expression with dropout zeros.
counts
    Realistic scRNA-seq UMI counts: gamma-Poisson (negative binomial), log-normal
    gene means, group fold changes, library-size variation and extra dropout.
trajectory
    A branching trajectory (root splitting into two arms) with smooth gene
    programmes along the true pseudotime; UMI counts.
cnv_pair
    Integer copy-number profiles of two samples of one tumour: a first sample
    with a major and a minor clone, a later sample with the major clone only.
load
    Dispatcher by name for the CLI and the app.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["paper", "counts", "trajectory", "cnv_pair", "load", "CHROM_LENGTHS_HG19"]

#: Lengths (bp) of the hg19 autosomes chr1..chr22, used to lay out copy-number bins.
CHROM_LENGTHS_HG19: dict[str, int] = {
    "1": 249250621, "2": 243199373, "3": 198022430, "4": 191154276, "5": 180915260,
    "6": 171115067, "7": 159138663, "8": 146364022, "9": 141213431, "10": 135534747,
    "11": 135006516, "12": 133851895, "13": 115169878, "14": 107349540, "15": 102531392,
    "16": 90354753, "17": 81195210, "18": 78077248, "19": 59128983, "20": 63025520,
    "21": 48129895, "22": 51304566,
}


def _anndata(X, obs: pd.DataFrame, var: pd.DataFrame, params: dict) -> "anndata.AnnData":
    import anndata

    adata = anndata.AnnData(X=X, obs=obs, var=var)
    adata.uns["simulation"] = params
    return adata


def _split_sizes(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Integer group sizes summing to ``n`` in the given proportions (largest remainder)."""
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or f.size == 0 or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"group proportions must be non-negative and not all zero, got {fractions!r}")
    f = f / f.sum()
    raw = f * n
    sizes = np.floor(raw).astype(int)
    rest = n - sizes.sum()
    if rest > 0:
        sizes[np.argsort(-(raw - sizes), kind="stable")[:rest]] += 1
    return sizes


def _cell_names(n: int) -> list[str]:
    return [f"cell_{i:05d}" for i in range(n)]


def _gene_names(n: int, prefix: str = "gene") -> list[str]:
    return [f"{prefix}_{i:05d}" for i in range(n)]


# --------------------------------------------------------------------------- paper
def paper(
    *,
    n_cells: int = 500,
    n_groups: int = 5,
    n_genes: int = 3000,
    n_noise: int = 500,
    seed: int = 0,
    de_fraction: float = 0.1,
    effect: float = 0.9,
    dropout_midpoint: float = 1.5,
) -> "anndata.AnnData":
    """Simulated log2 expression in the set-up of the Dhaka paper.

    ``n_cells`` cells in ``n_groups`` equal groups (500 cells, five groups of 100 by
    default) and ``n_genes`` genes, of which the last ``n_noise`` are pure noise genes
    (no group effect) and the first ``n_genes - n_noise`` are informative: each group
    is shifted up or down in its own random subset (``de_fraction``) of the
    informative genes by a modest effect (log2 fold change ~ ``effect`` x Gamma(4, 1/4)).

    Values are log2 expression: a gene baseline (Gamma distributed, mean ~3) plus the
    group effect plus Gaussian cell-to-cell noise (gene-wise s.d. 0.6-1.2), clipped at
    zero, then expression-dependent dropout (probability ``1 / (1 + exp(2 (x - m)))``
    with ``m = dropout_midpoint``) sets values to exactly zero.

    The defaults make the task non-trivial: with ``n_noise=500`` PCA-3 + GMM recovers
    the groups almost perfectly, with ``n_noise=2500`` it does not (the paper reported
    an ARI of 0.71 for its own best method there).

    Parameters
    ----------
    n_cells, n_groups, n_genes, n_noise
        Sizes; ``0 <= n_noise < n_genes``.
    seed
        Seed of the random generator.
    de_fraction
        Fraction of the informative genes that each group changes.
    effect
        Typical absolute log2 effect of a group on one of its genes.
    dropout_midpoint
        log2 expression at which half of the values drop out.

    Returns
    -------
    anndata.AnnData
        ``X`` dense float32 (cells x genes); ``obs["group"]`` categorical
        ("group_1".."group_k"); ``var["informative"]`` bool; ``uns["simulation"]``.
    """
    if not 0 <= n_noise < n_genes:
        raise ValueError(f"n_noise must be in [0, n_genes), got n_noise={n_noise}, n_genes={n_genes}")
    if n_groups < 1 or n_cells < n_groups:
        raise ValueError(f"need n_cells >= n_groups >= 1, got n_cells={n_cells}, n_groups={n_groups}")
    rng = np.random.default_rng(seed)
    n_inf = n_genes - n_noise
    sizes = _split_sizes(n_cells, [1.0] * n_groups)
    group = np.repeat(np.arange(n_groups), sizes)

    base = rng.gamma(2.0, 1.5, size=n_genes)              # log2 baseline, mean 3
    sd = rng.uniform(0.6, 1.2, size=n_genes)              # cell-to-cell noise per gene
    eff = np.zeros((n_groups, n_genes))
    for g in range(n_groups):
        de = rng.random(n_inf) < de_fraction
        sign = rng.choice([-1.0, 1.0], size=n_inf)
        size = effect * rng.gamma(4.0, 0.25, size=n_inf)
        eff[g, :n_inf] = np.where(de, sign * size, 0.0)

    X = base[None, :] + eff[group] + rng.normal(size=(n_cells, n_genes)) * sd[None, :]
    np.clip(X, 0.0, None, out=X)
    p_drop = 1.0 / (1.0 + np.exp(2.0 * (X - dropout_midpoint)))
    X[rng.random(X.shape) < p_drop] = 0.0

    obs = pd.DataFrame(
        {"group": pd.Categorical([f"group_{g + 1}" for g in group],
                                 categories=[f"group_{g + 1}" for g in range(n_groups)])},
        index=_cell_names(n_cells),
    )
    var = pd.DataFrame({"informative": np.arange(n_genes) < n_inf}, index=_gene_names(n_genes))
    params = dict(generator="paper", n_cells=n_cells, n_groups=n_groups, n_genes=n_genes,
                  n_noise=n_noise, seed=seed, de_fraction=de_fraction, effect=effect,
                  dropout_midpoint=dropout_midpoint, values="log2 expression")
    return _anndata(X.astype(np.float32), obs, var, params)


# -------------------------------------------------------------------------- counts
def _gamma_poisson(rng: np.random.Generator, mu: np.ndarray, bcv: np.ndarray) -> np.ndarray:
    """Negative-binomial draws with mean ``mu`` and biological CV ``bcv`` (gamma-Poisson)."""
    shape = 1.0 / np.maximum(bcv, 1e-6) ** 2
    lam = rng.gamma(shape, mu / shape)
    return rng.poisson(lam)


def counts(
    *,
    n_cells: int = 2000,
    n_genes: int = 2000,
    group_sizes: Sequence[float] = (0.4, 0.25, 0.15, 0.12, 0.08),
    seed: int = 0,
    de_fraction: float = 0.08,
    de_logfc: float = 1.5,
    dropout_midpoint: float = -0.5,
) -> "anndata.AnnData":
    """Realistic scRNA-seq UMI counts in groups of unequal size (splatter-like).

    Gene-wise mean expression ~ LogNormal(0, 1.5) scaled to ~1 UMI per gene and
    cell on average; each group up- or down-regulates its own random subset
    (``de_fraction``) of genes by a log-normal fold change (log fold change
    ~ ``de_logfc`` x Gamma(4, 1/4)); cells get log-normal size factors
    (s.d. 0.4 on the natural log scale); counts are gamma-Poisson with biological
    coefficient of variation ``min(0.2 + 1 / sqrt(1 + mean), 1)``; then extra
    technical dropout removes counts with probability ``1 / (1 + exp(log(mu) - m))``,
    ``m = dropout_midpoint`` (strongest in lowly expressed genes).

    Parameters
    ----------
    n_cells, n_genes
        Matrix size.
    group_sizes
        Proportions of the groups (normalised to sum to one).
    seed
        Seed of the random generator.
    de_fraction, de_logfc
        Fraction of genes each group changes, and the typical absolute log fold change.
    dropout_midpoint
        log mean at which half of a gene's counts drop out.

    Returns
    -------
    anndata.AnnData
        ``X`` :class:`scipy.sparse.csr_matrix` float32 holding integer counts;
        ``obs["group"]`` categorical, ``obs["library_size"]`` (total counts per cell),
        ``obs["size_factor"]`` (the true size factor); ``var["de"]`` bool
        (changed in at least one group); ``uns["simulation"]``.
    """
    rng = np.random.default_rng(seed)
    sizes = _split_sizes(n_cells, group_sizes)
    k = len(sizes)
    group = np.repeat(np.arange(k), sizes)
    rng.shuffle(group)

    gene_mean = rng.lognormal(0.0, 1.5, size=n_genes)
    gene_mean *= 1.0 / np.mean(gene_mean)                       # ~1 UMI per gene per cell
    logfc = np.zeros((k, n_genes))
    for g in range(k):
        de = rng.random(n_genes) < de_fraction
        sign = rng.choice([-1.0, 1.0], size=n_genes)
        logfc[g] = np.where(de, sign * de_logfc * rng.gamma(4.0, 0.25, size=n_genes), 0.0)
    size_factor = rng.lognormal(0.0, 0.4, size=n_cells)

    mu = size_factor[:, None] * gene_mean[None, :] * np.exp(logfc[group])
    bcv = np.minimum(0.2 + 1.0 / np.sqrt(1.0 + mu), 1.0)
    C = _gamma_poisson(rng, mu, bcv).astype(np.float64)
    p_drop = 1.0 / (1.0 + np.exp(np.log(mu) - dropout_midpoint))
    C[rng.random(C.shape) < p_drop] = 0.0

    X = sparse.csr_matrix(C.astype(np.float32))
    names = [f"group_{g + 1}" for g in range(k)]
    obs = pd.DataFrame(
        {"group": pd.Categorical([names[g] for g in group], categories=names),
         "library_size": np.asarray(X.sum(axis=1)).ravel().astype(np.float64),
         "size_factor": size_factor},
        index=_cell_names(n_cells),
    )
    var = pd.DataFrame({"de": np.any(logfc != 0, axis=0), "true_mean": gene_mean},
                       index=_gene_names(n_genes))
    params = dict(generator="counts", n_cells=n_cells, n_genes=n_genes,
                  group_sizes=[float(s) for s in group_sizes], seed=seed, de_fraction=de_fraction,
                  de_logfc=de_logfc, dropout_midpoint=dropout_midpoint, values="counts")
    return _anndata(X, obs, var, params)


# ---------------------------------------------------------------------- trajectory
def trajectory(
    *,
    n_cells: int = 600,
    n_genes: int = 500,
    seed: int = 0,
    branch_time: float = 0.35,
) -> "anndata.AnnData":
    """A branching trajectory: a root that splits into two arms, as UMI counts.

    True pseudotime ``t`` is uniform on [0, 1]; cells with ``t < branch_time`` are on
    the root, the others go to ``arm_a`` or ``arm_b`` with equal probability. Each
    gene follows a smooth programme of ``t`` on the log scale (one of: constant,
    rising or falling sigmoid along the whole trajectory, a transient bump, or
    rising only on one arm after the branch point, which is zero at the branch so
    the arms leave the root continuously); counts are gamma-Poisson around
    ``size_factor * exp(log mean)``.

    Parameters
    ----------
    n_cells, n_genes
        Matrix size.
    seed
        Seed of the random generator.
    branch_time
        Pseudotime of the branch point, in (0, 1).

    Returns
    -------
    anndata.AnnData
        ``X`` :class:`scipy.sparse.csr_matrix` float32 of integer **counts**;
        ``obs["time"]`` (true pseudotime in [0, 1]), ``obs["branch"]`` categorical
        ("root", "arm_a", "arm_b"), ``obs["library_size"]``; ``var["programme"]``;
        ``uns["simulation"]``.
    """
    if not 0.0 < branch_time < 1.0:
        raise ValueError(f"branch_time must be in (0, 1), got {branch_time}")
    rng = np.random.default_rng(seed)
    t = np.sort(rng.random(n_cells))
    on_root = t < branch_time
    arm = rng.random(n_cells) < 0.5
    branch = np.where(on_root, "root", np.where(arm, "arm_a", "arm_b"))

    kinds = np.array(["constant", "rising", "falling", "bump", "arm_a", "arm_b"])
    prog = rng.choice(kinds, size=n_genes, p=[0.3, 0.12, 0.12, 0.12, 0.17, 0.17])
    base = rng.normal(-0.5, 1.0, size=n_genes)              # log mean at rest
    amp = rng.uniform(1.0, 3.0, size=n_genes)               # log-scale amplitude
    centre = rng.uniform(0.15, 0.85, size=n_genes)
    width = rng.uniform(0.05, 0.12, size=n_genes)

    def sig(x):
        return 1.0 / (1.0 + np.exp(-x))

    T = t[:, None]
    after = np.clip(T - branch_time, 0.0, None) / (1.0 - branch_time)   # 0 at the branch point
    arm_centre = rng.uniform(0.2, 0.6, size=n_genes)
    arm_curve = sig((after - arm_centre) / width) - sig(-arm_centre / width)
    arm_curve = np.clip(arm_curve, 0.0, None)
    prof = np.zeros((n_cells, n_genes))
    prof += np.where(prog == "rising", sig((T - centre) / width), 0.0)
    prof += np.where(prog == "falling", 1.0 - sig((T - centre) / width), 0.0)
    prof += np.where(prog == "bump", np.exp(-0.5 * ((T - centre) / (1.5 * width)) ** 2), 0.0)
    is_a = (branch == "arm_a")[:, None]
    is_b = (branch == "arm_b")[:, None]
    prof += np.where((prog == "arm_a") & is_a, arm_curve, 0.0)
    prof += np.where((prog == "arm_b") & is_b, arm_curve, 0.0)

    size_factor = rng.lognormal(0.0, 0.3, size=n_cells)
    mu = size_factor[:, None] * np.exp(base[None, :] + amp[None, :] * prof)
    C = _gamma_poisson(rng, mu, np.full(mu.shape, 0.3))
    X = sparse.csr_matrix(C.astype(np.float32))
    obs = pd.DataFrame(
        {"time": t,
         "branch": pd.Categorical(branch, categories=["root", "arm_a", "arm_b"]),
         "library_size": np.asarray(X.sum(axis=1)).ravel().astype(np.float64)},
        index=_cell_names(n_cells),
    )
    var = pd.DataFrame({"programme": pd.Categorical(prog, categories=list(kinds))},
                       index=_gene_names(n_genes))
    params = dict(generator="trajectory", n_cells=n_cells, n_genes=n_genes, seed=seed,
                  branch_time=branch_time, values="counts")
    return _anndata(X, obs, var, params)


# ------------------------------------------------------------------------ cnv_pair
def _bins(n_bins: int) -> pd.DataFrame:
    total = sum(CHROM_LENGTHS_HG19.values())
    size = max(int(round(total / max(n_bins, 22), -5)), 100_000)
    rows = []
    for chrom, length in CHROM_LENGTHS_HG19.items():
        for start in range(1, length + 1, size):
            rows.append((chrom, start, min(start + size - 1, length)))
    df = pd.DataFrame(rows, columns=["chrom", "start", "end"])
    df.index = [f"chr{c}:{s}-{e}" for c, s, e in rows]
    df["chrom"] = pd.Categorical(df["chrom"], categories=list(CHROM_LENGTHS_HG19))
    return df


def _random_segment(rng: np.random.Generator, chrom_slices: list[slice], *, min_len: int,
                    max_frac: float) -> slice:
    """A random run of bins inside one chromosome (an arm-level or focal event)."""
    sl = chrom_slices[rng.integers(len(chrom_slices))]
    n = sl.stop - sl.start
    length = int(rng.integers(min(min_len, n), max(min(min_len, n), int(max_frac * n)) + 1))
    start = sl.start + int(rng.integers(0, n - length + 1))
    return slice(start, start + length)


def cnv_pair(
    *,
    n_cells: tuple[int, int] = (300, 200),
    n_bins: int = 600,
    minor_fraction: float = 0.3,
    seed: int = 0,
    n_clonal_events: int = 3,
    private_events: float = 2.0,
    state_noise: float = 0.03,
    max_state: int = 8,
) -> tuple["anndata.AnnData", "anndata.AnnData"]:
    """Copy-number profiles of two samples of one tumour (major clone + minor clone, then major only).

    The genome (hg19 autosomes) is cut into about ``n_bins`` equal bins. A diploid
    baseline (state 2) gets truncal events shared by both clones, then each clone
    gets ``n_clonal_events`` gains/losses of its own (segments of 10%-60% of a
    chromosome, redrawn until the two clones differ in at least 5% of the bins).
    The first sample has ``n_cells[0]`` cells, a ``minor_fraction`` of them from
    the minor clone; the second (later) sample has ``n_cells[1]`` cells of the
    major clone only.

    Realism: each cell also carries private events (Poisson(``private_events``)
    random segments, 1 bin to 40% of a chromosome, changed by +-1 or +-2) and
    state-call noise (a ``state_noise`` fraction of bins off by +-1). States are
    clipped to ``0..max_state``. These heavy tails are what make GMM-BIC over-split.

    Parameters
    ----------
    n_cells
        Cells in the first and second sample.
    n_bins
        Approximate number of genomic bins (bin size rounded to 100 kb).
    minor_fraction
        Fraction of the first sample from the minor clone.
    seed
        Seed of the random generator.
    n_clonal_events, private_events, state_noise, max_state
        Event counts and noise, see above.

    Returns
    -------
    first, second : anndata.AnnData
        ``X`` dense float32 integer copy-number states (cells x bins);
        ``var_names`` like ``"chr1:1-5000000"`` with ``var["chrom"]``, ``["start"]``,
        ``["end"]``; ``obs["clone"]`` ("major"/"minor") and ``obs["sample"]``
        ("first"/"second"); ``uns["simulation"]`` (with the clone profiles).
    """
    if not 0.0 <= minor_fraction <= 1.0:
        raise ValueError(f"minor_fraction must be in [0, 1], got {minor_fraction}")
    rng = np.random.default_rng(seed)
    var = _bins(n_bins)
    nb = len(var)
    codes = var["chrom"].cat.codes.to_numpy()
    bounds = np.flatnonzero(np.diff(np.r_[-1, codes, 99]))
    chrom_slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def add_events(profile: np.ndarray, n_events: int, *, min_len: int, max_frac: float,
                   steps=(-1, 1, 1, 2)) -> None:
        for _ in range(n_events):
            seg = _random_segment(rng, chrom_slices, min_len=min_len, max_frac=max_frac)
            profile[seg] += rng.choice(steps)

    ancestor = np.full(nb, 2, dtype=np.int64)
    add_events(ancestor, 3, min_len=10, max_frac=0.6)
    major = ancestor.copy()
    minor = ancestor.copy()
    # clone-specific events must set the clones clearly apart (>= 5% of the bins); redraw until they do
    need = max(5, int(0.05 * nb)) if n_clonal_events > 0 else 1
    for _ in range(1000):
        major = ancestor.copy()
        minor = ancestor.copy()
        add_events(major, n_clonal_events, min_len=10, max_frac=0.6)
        add_events(minor, n_clonal_events, min_len=10, max_frac=0.6)
        if (np.clip(major, 0, max_state) != np.clip(minor, 0, max_state)).sum() >= need:
            break
    major = np.clip(major, 0, max_state)
    minor = np.clip(minor, 0, max_state)

    def cells(profile: np.ndarray, n: int) -> np.ndarray:
        out = np.repeat(profile[None, :], n, axis=0)
        for i in range(n):
            add_events(out[i], int(rng.poisson(private_events)), min_len=1, max_frac=0.4,
                       steps=(-2, -1, -1, 1, 1, 2))
        noise = rng.random(out.shape) < state_noise
        out[noise] += rng.choice([-1, 1], size=int(noise.sum()))
        return np.clip(out, 0, max_state)

    n1, n2 = n_cells
    n_minor = int(round(minor_fraction * n1))
    clone1 = np.array(["major"] * (n1 - n_minor) + ["minor"] * n_minor)
    clone1 = clone1[rng.permutation(n1)]
    X1 = np.empty((n1, nb), dtype=np.int64)
    for name, prof in (("major", major), ("minor", minor)):
        idx = np.flatnonzero(clone1 == name)
        X1[idx] = cells(prof, idx.size)
    X2 = cells(major, n2)

    params = dict(generator="cnv_pair", n_cells=list(n_cells), n_bins=nb, minor_fraction=minor_fraction,
                  seed=seed, n_clonal_events=n_clonal_events, private_events=private_events,
                  state_noise=state_noise, max_state=max_state, values="copy-number states",
                  clone_profiles={"major": major.tolist(), "minor": minor.tolist()})
    cats = ["major", "minor"]
    first = _anndata(
        X1.astype(np.float32),
        pd.DataFrame({"clone": pd.Categorical(clone1, categories=cats),
                      "sample": pd.Categorical(["first"] * n1, categories=["first", "second"])},
                     index=[f"first_{i:05d}" for i in range(n1)]),
        var.copy(), dict(params),
    )
    second = _anndata(
        X2.astype(np.float32),
        pd.DataFrame({"clone": pd.Categorical(["major"] * n2, categories=cats),
                      "sample": pd.Categorical(["second"] * n2, categories=["first", "second"])},
                     index=[f"second_{i:05d}" for i in range(n2)]),
        var.copy(), dict(params),
    )
    return first, second


# ---------------------------------------------------------------------------- load
DatasetKind = Literal["paper", "paper_2500", "counts", "trajectory", "cnv_pair"]


def load(kind: DatasetKind, *, seed: int = 0) -> "anndata.AnnData":
    """A simulated data set by name, with default sizes (for the CLI and the app).

    Parameters
    ----------
    kind
        ``"paper"`` (500 noise genes), ``"paper_2500"`` (2500 noise genes), ``"counts"``,
        ``"trajectory"`` or ``"cnv_pair"`` (both samples concatenated, first then
        second; ``obs["sample"]`` tells them apart).
    seed
        Seed of the random generator.

    Returns
    -------
    anndata.AnnData
        ``uns["simulation"]["kind"]`` is ``kind``.
    """
    if kind == "paper":
        adata = paper(n_noise=500, seed=seed)
    elif kind == "paper_2500":
        adata = paper(n_noise=2500, seed=seed)
    elif kind == "counts":
        adata = counts(seed=seed)
    elif kind == "trajectory":
        adata = trajectory(seed=seed)
    elif kind == "cnv_pair":
        import anndata

        first, second = cnv_pair(seed=seed)
        adata = anndata.concat([first, second], axis=0, merge="same")
        adata.uns["simulation"] = dict(first.uns["simulation"])
    else:
        raise ValueError(
            f"unknown simulated data set {kind!r}; choose one of "
            "'paper', 'paper_2500', 'counts', 'trajectory', 'cnv_pair'"
        )
    adata.uns["simulation"] = {**adata.uns["simulation"], "kind": kind}
    return adata
