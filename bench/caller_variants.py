"""Variants of the GMM caller's merge step on every embedding cached by bench.independent (no refits).

Run ``python -m bench.independent`` first (it caches the embeddings in bench/out/independent), then
``python -m bench.caller_variants``. Prints each embedding's ARI under each variant and, per variant, the
cells where it is more than 0.05 below the better of merge / plain. This is the study behind
``gmm_bic(merge="auto")`` and :func:`dhaka.cluster.latent_merge` (bench/RESULTS.md, "Independent data",
updates of 2026-12-03).
"""
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import independent as B  # noqa: E402
from dhaka.cluster import ari, gmm_bic  # noqa: E402

VARIANTS = {
    "plain": dict(merge=False, min_cluster_size=None),
    "merge": dict(merge=True),
    "auto": dict(merge="auto"),  # the default since 2026-12-03: merged only where the silhouette rises
    "cnv-only": "type",          # the rule before: merge for copy number, plain for expression
    "min5": dict(merge=True, min_cluster_size=lambda n: max(5, int(np.ceil(0.01 * n)))),
    "tol95": dict(merge=True, merge_tol=0.95),
    "tol95+min5": dict(merge=True, merge_tol=0.95, min_cluster_size=lambda n: max(5, int(np.ceil(0.01 * n)))),
    "tol99+min5": dict(merge=True, merge_tol=0.99, min_cluster_size=lambda n: max(5, int(np.ceil(0.01 * n)))),
}
rows = []
for part in ("expression", "cnv", "real"):
    for key, desc, make, col, mode, methods in B._datasets(part, False, None):
        adata = make(0)
        truth = adata.obs[col].astype(str).to_numpy()
        for m in methods:
            p = B.OUT / f"{key}__{m.replace('/', '+')}__s0.npz"
            if not p.exists():
                continue
            Z = np.load(p)["Z"]
            n = Z.shape[0]
            r = {"data": key, "method": m}
            for name, kw in VARIANTS.items():
                if kw == "type":
                    kw = VARIANTS["merge" if mode == "cnv" else "plain"]
                kw = {k: (v(n) if callable(v) else v) for k, v in kw.items()}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    g = gmm_bic(Z, seed=0, **kw)
                r[name] = (round(ari(truth, g.labels), 3), int(np.unique(g.labels).size))
            rows.append(r)
            print(r, flush=True)


def best(r):
    return max(r["plain"][0], r["merge"][0])


print("\nvariant: cells > 0.05 below max(plain, merge) | mean ARI | cells   (all embeddings, then Dhaka latents)")
for name in VARIANTS:
    gaps = [best(r) - r[name][0] for r in rows]
    bad = [f"{r['data']}/{r['method']}({g:+.2f})" for r, g in zip(rows, gaps) if g > 0.05]
    print(f"{name:15s} {len(bad):2d} | {np.mean([r[name][0] for r in rows]):.3f} | {', '.join(bad)}")
dh = [r for r in rows if r["method"].startswith("dhaka")]
for name in VARIANTS:
    bad = [f"{r['data']}/{r['method']}({best(r) - r[name][0]:+.2f})" for r in dh if best(r) - r[name][0] > 0.05]
    print(f"dhaka {name:9s} {len(bad):2d} | {np.mean([r[name][0] for r in dh]):.3f} | {', '.join(bad)}")
