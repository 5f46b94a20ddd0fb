"""Copy-number profiles of tumour cells on a clone tree, after the CNAsim model (Weiner & Bansal 2023).

CNAsim itself (PyPI ``cnasim`` 1.3.5) was checked: its wheel installs, but it needs ``msprime``,
``pyfaidx`` and ``biopython`` for its coalescent and read modes, and its LICENSE file is the GNU
GPL v3 while its package metadata says MIT. Rather than add a GPL dependency of unclear licence to
a benchmark, this module implements the parts of its model a clone caller is judged on, from the
paper's description (CNAsim, Bioinformatics 39(7) 2023, "Simulating CNAs"):

* a diploid genome of 22 autosomes with p and q arms, cut into bins (``bin_mb`` each);
* a *founder* edge carrying clonal events: chromosome and chromosome-arm gains/losses
  (``chrom_events``) and focal events (``focal_events`` per edge) whose length is exponential
  with mean ``event_mb`` (at least one bin), copies gained geometric(``copy_param``) and
  amplification with probability ``amp_rate`` (else one copy lost);
* a random clone tree: each clone descends from the founder or an earlier clone and adds its own
  arm and focal events (so clones share ancestry, as in CNAsim's ancestral clone founders);
* whole-genome doubling (``wgd``): a ``wgd_fraction`` of each affected clone's cells has every
  state doubled (CNAsim's WGD doubles the genome of a lineage; here doubled and non-doubled cells
  of one clone coexist, as in the scDNA data the issue quotes), followed by a few private
  post-doubling losses;
* per-cell private focal events (Poisson(``private_events``)) and CNAsim's two error models:
  *boundary* (an event's breakpoint moved by a few bins, here per cell and breakpoint with
  probability ``boundary_error``) and *jitter* (each bin off by +-1 with probability ``jitter``).

The output is integer copy-number states per cell and bin (what a caller such as HMMcopy gives).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bench.generators import proportions

__all__ = ["CNVParams", "clone_tree_cnv"]

# hg38 autosome lengths (Mb) and centromere positions (Mb), rounded
_CHROM_MB = (248, 242, 198, 190, 181, 171, 159, 145, 138, 134, 135, 133, 114, 107, 102, 90, 83, 80, 59, 64, 47, 51)
_CENTRO_MB = (123, 93, 91, 50, 48, 59, 60, 45, 43, 40, 53, 35, 17, 17, 19, 36, 25, 18, 26, 28, 12, 15)


@dataclass(frozen=True)
class CNVParams:
    """Parameters of :func:`clone_tree_cnv`."""

    n_cells: int = 400
    clone_prob: tuple[float, ...] = (0.45, 0.3, 0.15, 0.1)
    bin_mb: float = 5.0
    founder_chrom_events: float = 4.0
    chrom_events: float = 1.5
    focal_events: float = 3.0
    event_mb: float = 15.0
    copy_param: float = 0.5
    amp_rate: float = 0.5
    wgd_fraction: float = 0.0
    wgd_clones: int = 0
    private_events: float = 1.0
    boundary_error: float = 0.1
    jitter: float = 0.02
    max_state: int = 12

    def as_dict(self) -> dict:
        return asdict(self)


def _genome(bin_mb: float):
    chrom, arm, start = [], [], []
    for c, (length, cen) in enumerate(zip(_CHROM_MB, _CENTRO_MB)):
        nb = max(2, int(round(length / bin_mb)))
        pos = np.arange(nb) * bin_mb
        chrom += [c + 1] * nb
        arm += list(np.where(pos < cen, 0, 1))
        start += list(pos)
    return np.asarray(chrom), np.asarray(arm), np.asarray(start)


def clone_tree_cnv(params: CNVParams = CNVParams(), *, seed: int = 0):
    """Simulate one tumour sample of copy-number profiles.

    Returns
    -------
    anndata.AnnData
        ``X`` integer states (float32, cells x bins); ``var_names`` ``"chr1:1-5000000"`` with
        ``var["chrom"]``, ``["start"]``, ``["end"]``; ``obs["clone"]`` (``"clone1"``...),
        ``obs["wgd"]`` (bool: the cell's genome was doubled), ``obs["clone_wgd"]`` (clone and
        doubling); ``uns["cnv_tree"]`` the parameters and the tree (parent of each clone).
    """
    import anndata as ad
    import pandas as pd

    p = params
    probs = proportions(p.clone_prob, "clone_prob")
    rng = np.random.default_rng(seed)
    chrom, arm, start = _genome(p.bin_mb)
    nb = chrom.size
    mean_len = max(1.0, p.event_mb / p.bin_mb)

    def copies():
        return int(rng.geometric(p.copy_param))

    def focal(profile: np.ndarray, n_events: int, *, scale: float = 1.0) -> list[tuple[int, int]]:
        bps = []
        for _ in range(n_events):
            c = rng.integers(1, 23)
            idx = np.flatnonzero(chrom == c)
            length = int(min(idx.size, max(1, round(rng.exponential(mean_len * scale)))))
            s = int(rng.integers(idx[0], idx[-1] - length + 2))
            seg = slice(s, s + length)
            if rng.random() < p.amp_rate:
                profile[seg] += copies()
            else:
                profile[seg] = np.maximum(profile[seg] - 1, 0)
            bps.append((s, s + length))
        return bps

    def chrom_level(profile: np.ndarray, n_events: int) -> list[tuple[int, int]]:
        bps = []
        for _ in range(n_events):
            c = rng.integers(1, 23)
            sel = chrom == c
            if rng.random() < 0.75:  # an arm event (CNAsim's default chromosome-arm rate)
                sel = sel & (arm == rng.integers(0, 2))
            if not sel.any():
                continue
            profile[sel] = profile[sel] + 1 if rng.random() < 0.5 else np.maximum(profile[sel] - 1, 0)
            idx = np.flatnonzero(sel)
            bps.append((int(idx[0]), int(idx[-1]) + 1))
        return bps

    founder = np.full(nb, 2, dtype=np.int64)
    bps = chrom_level(founder, rng.poisson(p.founder_chrom_events))
    bps += focal(founder, rng.poisson(p.focal_events * 3))
    k = probs.size
    parent = [-1]
    profiles = [founder.copy()]
    breakpoints = [list(bps)]
    for c in range(1, k):
        par = int(rng.integers(0, c))  # the founder clone (0) or an earlier clone
        prof = profiles[par].copy()
        b = list(breakpoints[par])
        while True:
            trial = prof.copy()
            nb_ = chrom_level(trial, rng.poisson(p.chrom_events)) + focal(trial, max(1, rng.poisson(p.focal_events)))
            if np.any(trial != prof) and all(np.any(trial != q) for q in profiles):
                break
        parent.append(par)
        profiles.append(trial)
        breakpoints.append(b + nb_)

    clone = rng.choice(k, size=p.n_cells, p=probs)
    wgd_clone = np.zeros(k, dtype=bool)
    if p.wgd_clones and p.wgd_fraction > 0:
        wgd_clone[rng.choice(k, size=min(int(p.wgd_clones), k), replace=False)] = True
    X = np.empty((p.n_cells, nb), dtype=np.int64)
    wgd = np.zeros(p.n_cells, dtype=bool)
    for j in range(p.n_cells):
        c = clone[j]
        prof = profiles[c].copy()
        # boundary error: clonal breakpoints shifted by a few bins in this cell
        if p.boundary_error > 0:
            for s, e in breakpoints[c]:
                if rng.random() < p.boundary_error:
                    shift = int(rng.integers(1, 3)) * (1 if rng.random() < 0.5 else -1)
                    lo, hi = (s, s + shift) if shift > 0 else (s + shift, s)
                    lo, hi = max(lo, 0), min(hi, nb)
                    if hi > lo:
                        src = max(s - 1, 0) if shift > 0 else min(s, nb - 1)
                        prof[lo:hi] = prof[src]
        if wgd_clone[c] and rng.random() < p.wgd_fraction:
            wgd[j] = True
            prof = prof * 2
            chrom_level(prof, rng.poisson(1.0))  # a few losses after doubling
        focal(prof, rng.poisson(p.private_events), scale=0.5)
        if p.jitter > 0:
            hit = rng.random(nb) < p.jitter
            prof[hit] = np.maximum(prof[hit] + rng.choice((-1, 1), size=int(hit.sum())), 0)
        X[j] = np.minimum(prof, p.max_state)
    names = [f"chr{c}:{int(s * 1e6) + 1}-{int((s + p.bin_mb) * 1e6)}" for c, s in zip(chrom, start)]
    var = pd.DataFrame({"chrom": [str(c) for c in chrom], "start": (start * 1e6).astype(np.int64) + 1,
                        "end": ((start + p.bin_mb) * 1e6).astype(np.int64)}, index=names)
    lab = np.array([f"clone{c + 1}" for c in clone])
    obs = pd.DataFrame({"clone": pd.Categorical(lab), "wgd": wgd,
                        "clone_wgd": pd.Categorical([f"{name}{'_wgd' if w else ''}" for name, w in zip(lab, wgd)])},
                       index=[f"cell{i + 1}" for i in range(p.n_cells)])
    a = ad.AnnData(X=X.astype(np.float32), obs=obs, var=var)
    a.uns["cnv_tree"] = {**{k_: (list(v) if isinstance(v, tuple) else v) for k_, v in p.as_dict().items()},
                         "parent": parent, "wgd_clone": wgd_clone.tolist()}
    return a
