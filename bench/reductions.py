"""Seconds of the other views at scale: PCA, t-SNE (openTSNE vs scikit-learn) and UMAP.

At 5k / 20k / 100k cells (issue 6). PCA: randomized PCA of cells x 5000 genes to 50
components (scikit-learn ``svd_solver="randomized"``). t-SNE and UMAP run on the 50
principal components, 2-D: openTSNE with FFT-accelerated interpolation (its default
``negative_gradient_method="fft"``), scikit-learn's Barnes-Hut ``TSNE``, and umap-learn
with its approximate nearest neighbours (NN-descent); plus 3-D at the smallest size
(openTSNE's FFT method is 2-D only, so its 3-D uses Barnes-Hut). A method whose
predicted time at the next size (from its n log n scaling) exceeds ``--budget``
seconds is run on a subsample of the size that fits, and the table says so.

Run::

    python bench/reductions.py --cells 5000 20000 100000 --write
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as _machine  # noqa: E402  (the machine helpers live in common.py)


def synthetic(n: int, *, genes: int = 5000, n_groups: int = 10, seed: int = 0, chunk: int = 10000) -> np.ndarray:
    """Log-expression-like dense cells x genes with ``n_groups`` groups (float32), built in chunks."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, (n_groups, 40)) * 1.5
    load = rng.normal(0, 1.0, (40, genes)).astype(np.float32) / np.sqrt(40)
    groups = rng.integers(0, n_groups, n)
    X = np.empty((n, genes), dtype=np.float32)
    for a in range(0, n, chunk):
        g = groups[a:a + chunk]
        lat = (centers[g] + rng.normal(0, 0.6, (g.size, 40))).astype(np.float32)
        X[a:a + chunk] = lat @ load + rng.normal(0, 1.0, (g.size, genes)).astype(np.float32)
    return X


def t_pca(X, seed=0):
    from sklearn.decomposition import PCA

    return PCA(50, svd_solver="randomized", random_state=seed).fit_transform(X)


def t_opentsne(P, dim=2, seed=0):
    from openTSNE import TSNE

    method = "fft" if dim <= 2 else "bh"
    return np.asarray(TSNE(n_components=dim, negative_gradient_method=method, n_jobs=2,
                           random_state=seed).fit(P))


def t_sklearn_tsne(P, dim=2, seed=0):
    from sklearn.manifold import TSNE

    return TSNE(n_components=dim, init="pca", random_state=seed, n_jobs=2).fit_transform(P)


def t_umap(P, dim=2, seed=None):
    import umap

    # random_state=None keeps umap-learn's parallel (non-reproducible) layout: the speed a user sees
    return umap.UMAP(n_components=dim, random_state=seed, n_jobs=2).fit_transform(P)


METHODS = {
    "openTSNE (FFT)": t_opentsne,
    "scikit-learn t-SNE (Barnes-Hut)": t_sklearn_tsne,
    "UMAP (NN-descent)": t_umap,
}


def _nlogn(n: int) -> float:
    return n * math.log(max(n, 2))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[5000, 20000, 100000])
    ap.add_argument("--budget", type=float, default=300.0, help="seconds a single run may take (predicted)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-3d", action="store_true")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))
    import torch  # noqa: F401  (only for the machine line)

    torch.set_num_threads(a.threads)
    machine = _machine.describe(a.threads)
    # numba compile of UMAP once, outside the timings
    t = time.perf_counter()
    t_umap(np.random.default_rng(0).normal(size=(300, 10)).astype(np.float32))
    umap_compile = time.perf_counter() - t
    print(f"UMAP first call (numba compile) {umap_compile:.0f} s", flush=True)
    rows = []
    last: dict[str, tuple[int, float]] = {}
    for n in sorted(a.cells):
        X = synthetic(n)
        t = time.perf_counter()
        P = t_pca(X).astype(np.float32)
        rows.append(["PCA randomized (5000 genes -> 50)", f"{n:,}", f"{n:,}", 2, time.perf_counter() - t, ""])
        print(rows[-1], flush=True)
        del X
        for name, fn in METHODS.items():
            m = n
            note = ""
            if name in last:
                n0, s0 = last[name]
                pred = s0 * _nlogn(n) / _nlogn(n0)
                if s0 > a.budget:  # even the previous size did not fit: report the prediction only
                    rows.append([name, f"{n:,}", "0", 2, float("nan"),
                                 f"not run: predicted {pred:.0f} s from {s0:.0f} s at {n0:,} cells"])
                    print(rows[-1], flush=True)
                    continue
                if pred > a.budget:
                    # largest subsample predicted to fit the budget
                    lo, hi = n0, n
                    while hi - lo > 1000:
                        mid = (lo + hi) // 2
                        lo, hi = (mid, hi) if s0 * _nlogn(mid) / _nlogn(n0) <= a.budget else (lo, mid)
                    m = lo
                    note = f"predicted {pred:.0f} s on all {n:,} cells; ran on a random {m:,}-cell subsample"
            sub = P if m == n else P[np.sort(np.random.default_rng(0).choice(n, m, replace=False))]
            t = time.perf_counter()
            fn(sub, 2)
            sec = time.perf_counter() - t
            last[name] = (m, sec)
            rows.append([name, f"{n:,}", f"{m:,}", 2, sec, note])
            print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)
        if not a.no_3d and n == min(a.cells):
            for name, fn in METHODS.items():
                t = time.perf_counter()
                fn(P, 3)
                rows.append([name.replace("(FFT)", "(Barnes-Hut, 3-D)"), f"{n:,}", f"{n:,}", 3,
                             time.perf_counter() - t, ""])
                print(rows[-1], flush=True)
    md_table = _machine.markdown_table(["method", "cells", "cells run", "dims", "seconds", "note"], rows)
    md = "\n".join([
        "Synthetic data: 10 groups in a 40-D latent mapped to 5000 genes plus noise. "
        "t-SNE and UMAP on the 50 principal components; openTSNE and scikit-learn with their defaults "
        "(perplexity 30), 2 threads; UMAP with `random_state=None` (parallel layout). "
        f"UMAP's one-time numba compilation ({umap_compile:.0f} s here) is excluded. "
        f"A run predicted (n log n from the previous size) to exceed {a.budget:.0f} s is done on the largest "
        "subsample predicted to fit, as the app does for its t-SNE/UMAP views above a size.",
        "",
        md_table,
    ])
    print(md)
    if a.write:
        _machine.write_section("reductions", md, title="PCA, t-SNE and UMAP at scale", machine=machine,
                               command=_machine.command_line("python bench/reductions.py", argv))


if __name__ == "__main__":
    main()
