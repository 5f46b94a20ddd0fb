"""Issue 4's benchmark tables: the dropout curve (paper Fig. 3 / 6) and the structure table (paper Table 1).

Both on ``simulate.paper(n_noise=2500)`` (500 cells, five groups, 3000 genes of which 2500 noise).

* **Dropout curve**: 0, 10, 20, 30 and 50 % extra dropout (a seeded fraction of each cell's
  non-zero values set to zero, ``dhaka.preprocess.inject_dropout``); at each level Dhaka
  (defaults) and PCA-3 / t-SNE-3 / UMAP-3 re-embed the data, GMM-BIC clusters each embedding;
  ARI against the true groups and the number of GMM clusters.
* **Structure table**: Dhaka with the deep (1024-512-256) and shallow (1024) structures, and
  t-SNE (2-D, as in the paper's table), on the same data: ARI, silhouette of the GMM clusters,
  runtime.

Uses ``dhaka.analysis.robustness.dropout_curve`` and ``dhaka.analysis.structures.compare_structures``
(baselines on ``dhaka.analysis.robustness.baseline_input``, i.e. Dhaka's own Preprocessor, via
``dhaka.reduce``).

Run ``python -m bench.dropout_structures`` (``--help``); tables go to stdout and to the
``dropout`` and ``structures`` sections of ``bench/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.common import (command_line, machine_description, markdown_table, mean_sd, set_threads,
                          write_section)

LEVELS = (0.0, 0.1, 0.2, 0.3, 0.5)
METHODS = ("dhaka", "pca", "tsne", "umap")


def dropout_table(adata, truth: np.ndarray, *, seed: int, levels: Sequence[float], methods: Sequence[str],
                  params: dict[str, Any]) -> pd.DataFrame:
    """``level, method, ari, n_clusters, silhouette, seconds`` for one seed."""
    from dhaka.analysis.robustness import dropout_curve

    return dropout_curve(adata, levels=levels, methods=methods, labels=truth,
                         estimator_params={**params, "seed": seed}, seed=seed)


def structure_table(adata, truth: np.ndarray, *, seed: int, structures: Sequence[str],
                    params: dict[str, Any]) -> pd.DataFrame:
    """``structure, ari, silhouette, n_clusters, seconds`` for one seed."""
    from dhaka.analysis.structures import compare_structures

    return compare_structures(adata, structures=structures, include_tsne=True, labels=truth,
                              estimator_params={**params, "seed": seed}, seed=seed)


def _summarise(df: pd.DataFrame, keys: list[str], metrics: list[str]) -> list[dict]:
    rows = []
    for key, g in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        if "level" in row:
            row["level"] = f"{float(row['level']):.0%}"
        for m in metrics:
            if m == "n_clusters":
                row["GMM k"] = "/".join(str(int(v)) for v in g[m])
            else:
                row[m] = mean_sd(g[m], 1 if m == "seconds" else 2)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from dhaka import simulate

    ap = argparse.ArgumentParser(prog="python -m bench.dropout_structures", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--levels", default=",".join(str(v) for v in LEVELS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--structures", default="deep,shallow")
    ap.add_argument("--only", choices=["dropout", "structures"], default=None)
    ap.add_argument("--params", default="{}", help="JSON of Dhaka settings shared by all runs (default: defaults)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-noise", type=int, default=2500,
                    help="noise genes of simulate.paper (default 2500, the issue's table; 500 is the easier base "
                         "of the paper's Fig. 3 curve, written to its own section dropout-500)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import json

    set_threads(args.threads)
    machine = machine_description()
    print(machine, flush=True)
    params = json.loads(args.params)
    levels = [float(v) for v in args.levels.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    structures = [s for s in args.structures.split(",") if s]
    via = "dhaka.analysis.robustness.dropout_curve / dhaka.analysis.structures.compare_structures"
    setting = f"Dhaka settings: {json.dumps(params) if params else 'defaults'}."
    drop, struct = [], []
    t_drop = t_struct = 0.0
    for seed in range(args.seeds):
        adata = simulate.paper(n_noise=args.n_noise, seed=seed)
        truth = adata.obs["group"].astype(str).to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if args.only in (None, "dropout"):
                t0 = time.perf_counter()
                d = dropout_table(adata, truth, seed=seed, levels=levels, methods=methods, params=params)
                t_drop += time.perf_counter() - t0
                drop.append(d.assign(seed=seed))
            if args.only in (None, "structures"):
                t0 = time.perf_counter()
                s = structure_table(adata, truth, seed=seed, structures=structures, params=params)
                t_struct += time.perf_counter() - t0
                struct.append(s.assign(seed=seed))
    command = command_line("python -m bench.dropout_structures", argv)
    head = (f"Data: `simulate.paper(n_noise={args.n_noise})` (500 cells, 5 groups, 3000 genes, "
            f"{args.n_noise} noise), seeds 0..{args.seeds - 1} (mean ± sd; GMM k per seed). {setting} Computed with {via}. "
            "Clusters: `dhaka.cluster.gmm_bic` (k = 1..10).")
    if drop:
        df = pd.concat(drop, ignore_index=True)
        df["_order"] = df["method"].map({m: i for i, m in enumerate(METHODS)})
        df = df.sort_values(["level", "_order"], kind="stable").drop(columns="_order")
        table = markdown_table(_summarise(df, ["level", "method"], ["ari", "n_clusters", "silhouette", "seconds"]))
        print("\n" + table, flush=True)
        if not args.no_write:
            suffix = "" if args.n_noise == 2500 else f"-{args.n_noise}"
            write_section(f"dropout{suffix}", f"{head} Extra dropout: that fraction of each cell's non-zero "
                          f"values set to 0 (`inject_dropout`, seed + level index). Whole run: {t_drop / 60:.1f} "
                          f"min.\n\n{table}", title=f"Dropout curve (issue 4), paper(n_noise={args.n_noise})",
                          command=command, machine=machine)
    if struct:
        df = pd.concat(struct, ignore_index=True)
        table = markdown_table(_summarise(df, ["structure"], ["ari", "silhouette", "n_clusters", "seconds"]))
        print("\n" + table, flush=True)
        if not args.no_write and args.n_noise == 2500:
            write_section("structures", f"{head} deep = 1024-512-256, shallow = 1024; t-SNE is 2-D on the same "
                          f"preprocessed genes. Whole run: {t_struct / 60:.1f} min.\n\n{table}",
                          title="Structure comparison (paper Table 1)", command=command, machine=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
