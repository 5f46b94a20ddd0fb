"""Dhaka on data the project did not generate (issue 12).

Three parts, each runnable alone (``--part``), embeddings cached under ``bench/out/independent/``
so a rerun only re-scores (``--refit`` recomputes):

* ``expression`` -- the Splatter model (:mod:`bench.generators.splatter`) over a difficulty grid:
  fraction of DE genes, effect size, group-size imbalance, number of groups, dropout, library-size
  spread;
* ``cnv`` -- clone-tree copy-number profiles (:mod:`bench.generators.cnv_tree`, after CNAsim) over
  clone count, clone sizes down to 5 %, event sizes, noise and whole-genome doubling;
* ``real`` -- the labelled data shipped in ``assets/data`` (oligodendroglioma cell types, pbmc68k
  FACS labels).

Methods: default ``Dhaka`` 3-D latent, PCA-3, PCA-10 and UMAP-3 on the input of Dhaka's first fit
(its preprocessor: Pearson residuals of the raw counts, top 2000 genes by residual variance, gene-centred;
TPM-like or log values: normalised / logged, top 2000 by CV; copy number: the states trimmed per bin, centred); for copy
number also the same methods on states relative to each cell's ploidy
(:func:`dhaka.analysis.copy_number.relative_ploidy`, suffix ``/ploidy``). Every embedding is
clustered by four callers of :mod:`dhaka.cluster`: ``default`` (as the app clusters: a Dhaka latent with
``gmm_bic(merge=latent_merge(mode))``, the other views with ``gmm_bic()``),
``merge`` / ``plain`` (``gmm_bic`` with the merge step forced on / off: plain is the paper's
GMM-BIC) and ``oracle`` (``gmm_fixed_k`` with the true k: the latent's quality without the choice
of k). ``python -m bench.independent --write`` records the tables in ``bench/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import (add_variant_option, command_line, machine_description, markdown_table, parse_variants,
                          set_threads, write_section)

OUT = Path(__file__).resolve().parent / "out" / "independent"
METHODS = ("dhaka", "pca3", "pca10", "umap3")
CALLERS = ("default", "merge", "plain", "oracle")


# ----------------------------------------------------------------------------- grids
def expression_grid() -> dict[str, tuple[str, Any]]:
    """Splatter grid cells: name -> (description, SplatParams)."""
    from bench.generators.splatter import SplatParams

    base = dict(n_cells=500, n_genes=1500, lib_loc=9.0, group_prob=(0.35, 0.25, 0.2, 0.12, 0.08),
                de_prob=0.1, de_fac_loc=0.5, de_fac_scale=0.4)
    cells = {
        "base": ("500 cells x 1500 genes, 5 groups 35/25/20/12/8 %, 10 % DE/group, DE loc 0.5, lib 9 (~8k UMI)", {}),
        "few_de": ("4 % DE genes per group", dict(de_prob=0.04)),
        "weak_effect": ("DE factor loc 0.3 / scale 0.3", dict(de_fac_loc=0.3, de_fac_scale=0.3)),
        "imbalanced": ("groups 55/25/10/7/3 % (a 3 % rare group)", dict(group_prob=(0.55, 0.25, 0.1, 0.07, 0.03))),
        "many_groups": ("9 groups, 4-20 %", dict(group_prob=(0.2, 0.16, 0.14, 0.12, 0.1, 0.09, 0.08, 0.07, 0.04))),
        "dropout": ("heavy dropout (midpoint 2: ~2x the zeros)", dict(dropout_mid=2.0)),
        "lib_spread": ("library sizes lognormal sd 0.8 (20x range)", dict(lib_scale=0.8)),
    }
    return {k: (d, SplatParams(**{**base, **kw})) for k, (d, kw) in cells.items()}


def cnv_grid() -> dict[str, tuple[str, Any]]:
    """Clone-tree CNV grid cells: name -> (description, CNVParams)."""
    from bench.generators.cnv_tree import CNVParams

    base = dict(n_cells=300, clone_prob=(0.45, 0.3, 0.15, 0.1))
    cells = {
        "base": ("4 clones 45/30/15/10 %, arm + focal events (15 Mb), jitter 2 %", {}),
        "many_clones": ("8 clones, smallest 5 %", dict(clone_prob=(0.25, 0.17, 0.14, 0.12, 0.1, 0.08, 0.09, 0.05))),
        "small_events": ("focal events only, mean 5 Mb, no arm events below the founder",
                         dict(chrom_events=0.0, event_mb=5.0, focal_events=2.0)),
        "noisy": ("jitter 10 %, boundary error 30 %, 3 private events per cell",
                  dict(jitter=0.10, boundary_error=0.3, private_events=3.0)),
        "wgd": ("4 clones, 2 of them with 40 % of cells doubled", dict(wgd_fraction=0.4, wgd_clones=2)),
        "wgd_many": ("6 clones down to 5 %, 3 with 50 % doubled",
                     dict(clone_prob=(0.35, 0.2, 0.15, 0.15, 0.1, 0.05), wgd_fraction=0.5, wgd_clones=3)),
    }
    return {k: (d, CNVParams(**{**base, **kw})) for k, (d, kw) in cells.items()}


REAL = {
    "oligodendroglioma": ("cell_type", "Tirosh 2016, 184 cells x 9450 genes, 6 cell types (4 tumours + 2 normal)"),
    "pbmc68k_reduced": ("bulk_labels", "Zheng 2017, 700 cells x 765 genes, 10 FACS labels"),
}


# ----------------------------------------------------------------------------- embeddings
def _baseline_input(adata, mode: str) -> np.ndarray:
    """What the default Dhaka's first fit reads (:func:`dhaka.analysis.robustness.baseline_input` with its
    gene rule: raw counts as Pearson residuals, top 2000 genes by residual variance; other expression values
    normalised / logged, top 2000 by CV; copy number trimmed per bin), centred."""
    from dhaka.analysis.robustness import baseline_input

    return np.asarray(baseline_input(adata.X, mode=mode, n_genes="auto"), dtype=np.float64)


def _embed(adata, method: str, mode: str, seed: int, params: dict | None = None) -> tuple[np.ndarray, float, dict]:
    """Embedding by ``method``; ``params`` are a Dhaka variant's settings (``--variant``)."""
    from bench.common import embed_baseline

    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    method = method.partition("/")[0]  # "/ploidy": the caller passes the ploidy-relative profiles
    if method.startswith("dhaka"):
        from dhaka import Dhaka

        est = Dhaka(mode=mode, seed=seed, **(params or {})).fit(adata)
        Z = est.transform(adata)
        info = {"epochs": len(est.history_), "refinement": [r.get("genes") for r in est.refinement_],
                "library": [{k: v for k, v in r.items() if k.startswith("library")} for r in est.refinement_]}
    else:
        S = _baseline_input(adata, mode)
        if method == "pca3":
            Z = embed_baseline(S, "pca", n_components=3, seed=seed)
        elif method == "pca10":
            Z = embed_baseline(S, "pca", n_components=10, seed=seed)
        elif method == "umap3":
            Z = embed_baseline(S, "umap", n_components=3, seed=seed)
        else:
            raise ValueError(method)
    return np.asarray(Z, dtype=np.float64), time.perf_counter() - t0, info


def code_version() -> str:
    """``git describe`` of the checkout (``+dirty`` when it has changes), or "unknown" outside git."""
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cached_embedding(key: str, adata, method: str, mode: str, seed: int, *, refit: bool = False,
                     params: dict | None = None):
    """Embedding of ``adata`` by ``method``, from ``OUT/key__method__s{seed}.npz`` when present.

    A variant's cache is named by the variant (``dhaka-NAME``) and records its settings: a cache of the same name
    made with other settings is refitted, not re-read.
    """
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{key}__{method.replace('/', '+')}__s{seed}.npz"
    if path.exists() and not refit:
        f = np.load(path, allow_pickle=False)
        info = json.loads(str(f["info"]))
        if params is None or info.get("params") == params:
            return f["Z"], float(f["seconds"]), info
    Z, sec, info = _embed(adata, method, mode, seed, params)
    info["code"] = code_version()  # a cache says which code made it (it is not part of the key)
    if params is not None:
        info["params"] = params
    np.savez(path, Z=Z, seconds=sec, info=json.dumps(info))
    return Z, sec, info


# ----------------------------------------------------------------------------- callers
def call(Z: np.ndarray, caller: str, k_true: int, seed: int, mode: str = "expression", dhaka: bool = True) -> np.ndarray:
    from dhaka.cluster import gmm_bic, gmm_fixed_k, latent_merge

    if caller == "default":  # as the app clusters: a Dhaka latent by latent_merge, the other views by gmm_bic's default
        return gmm_bic(Z, seed=seed, merge=latent_merge(mode) if dhaka else "auto").labels
    if caller == "merge":
        return gmm_bic(Z, seed=seed, merge=True, min_cluster_size="auto").labels
    if caller == "plain":
        return gmm_bic(Z, seed=seed, merge=False, min_cluster_size=None).labels
    if caller == "oracle":
        return gmm_fixed_k(Z, k_true, seed=seed).labels
    raise ValueError(caller)


def score_all(Z: np.ndarray, truth: np.ndarray, seed: int, callers=CALLERS, mode: str = "expression",
              dhaka: bool = True) -> dict[str, Any]:
    from dhaka.cluster import ari

    k_true = int(np.unique(truth).size)
    out: dict[str, Any] = {}
    for c in callers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lab = call(Z, c, k_true, seed, mode, dhaka)
        out[c] = (ari(truth, lab), int(np.unique(lab).size))
    return out


# ----------------------------------------------------------------------------- parts
def _datasets(part: str, quick: bool, only: list[str] | None):
    if part == "expression":
        from bench.generators.splatter import splat_groups

        for name, (desc, p) in expression_grid().items():
            if quick and name not in ("base", "imbalanced"):
                continue
            if only and name not in only:
                continue
            yield f"expr_{name}", desc, (lambda s, p=p: splat_groups(p, seed=s)), "group", "expression", METHODS
    elif part == "cnv":
        from bench.generators.cnv_tree import clone_tree_cnv

        for name, (desc, p) in cnv_grid().items():
            if quick and name not in ("base", "wgd"):
                continue
            if only and name not in only:
                continue
            yield (f"cnv_{name}", desc, (lambda s, p=p: clone_tree_cnv(p, seed=s)), "clone", "cnv",
                   METHODS + tuple(m + "/ploidy" for m in METHODS))
    elif part == "real":
        import anndata as ad

        root = Path(__file__).resolve().parents[1] / "assets" / "data"
        for name, (col, desc) in REAL.items():
            if only and name not in only:
                continue
            if not (root / f"{name}.h5ad").exists():
                print(f"skipping {name}: {root / (name + '.h5ad')} not found")
                continue
            yield (f"real_{name}", f"{desc}; truth obs['{col}']",
                   (lambda s, f=root / f"{name}.h5ad": ad.read_h5ad(f)), col, "expression", METHODS)
    else:
        raise ValueError(f"unknown part {part!r}")


def _ploidy_view(adata):
    from dhaka.analysis.copy_number import relative_ploidy

    rp = relative_ploidy(adata.X)
    b = adata.copy()
    b.X = rp.relative.astype(np.float32)
    return b, rp


def run_part(part: str, *, seeds=(0,), quick: bool = False, only=None, refit: bool = False,
             cached_only: bool = False, variants: dict[str, dict] | None = None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Embed and score every data set of ``part``; ``variants`` (name -> Dhaka settings) add rows ``dhaka-NAME``."""
    rows: list[dict[str, Any]] = []
    variants = variants or {}
    for key, desc, make, col, mode, methods in _datasets(part, quick, only):
        methods = (*methods, *(f"dhaka-{name}" for name in variants))
        for seed in seeds:
            adata = make(seed)
            truth = adata.obs[col].astype(str).to_numpy()
            k_true = int(np.unique(truth).size)
            view, rp = (_ploidy_view(adata) if mode == "cnv" else (None, None))
            extra: dict[str, Any] = {}
            if rp is not None and "wgd" in adata.obs:

                true_wgd = adata.obs["wgd"].to_numpy(bool)
                extra["wgd_called"] = f"{int(rp.doubled.sum())}/{int(true_wgd.sum())}"
                extra["wgd_acc"] = float(np.mean(rp.doubled == true_wgd))
            for method in methods:
                base, _, ploidy = method.partition("/")
                data = view if ploidy else adata
                if cached_only and not (OUT / f"{key}__{method.replace('/', '+')}__s{seed}.npz").exists():
                    continue
                Z, sec, info = cached_embedding(key, data, method, mode, seed, refit=refit,
                                                params=variants.get(base.removeprefix("dhaka-")))
                sc = score_all(Z, truth, seed, mode=mode, dhaka=base.startswith("dhaka"))
                row = {"data": key, "seed": seed, "method": method, "k_true": k_true, "seconds": sec, **extra}
                for c, (a, k) in sc.items():
                    row[f"{c}_ari"], row[f"{c}_k"] = a, k
                row["epochs"] = info.get("epochs")
                rows.append(row)
                log(f"{key} s{seed} {method:14s} " + "  ".join(f"{c} {a:.2f} (k={k})" for c, (a, k) in sc.items())
                    + f"  [{sec:.0f}s]")
            with open(OUT / "descriptions.json", "a") as f:
                f.write(json.dumps({"data": key, "desc": desc}) + "\n")
    return rows


# ----------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    cols = ["data", "method", "k_true", "default_ari", "default_k", "merge_ari", "merge_k", "plain_ari", "plain_k",
            "oracle_ari", "seconds"]
    if any("wgd_called" in r for r in rows):
        cols.append("wgd_called")
    return markdown_table([{c: r.get(c, "") for c in cols} for r in rows], cols)


def checks(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, one line per data set."""
    out = []
    for key in dict.fromkeys(r["data"] for r in rows):
        rs = {r["method"]: r for r in rows if r["data"] == key}
        best = lambda r: max(r["default_ari"], r["merge_ari"], r["plain_ari"])  # noqa: E731
        worst = max(rs.values(), key=lambda r: max(r["merge_ari"], r["plain_ari"]) - r["default_ari"])
        gap = max(worst["merge_ari"], worst["plain_ari"]) - worst["default_ari"]
        line = f"- {key}: largest caller gap (better of merge/plain - default) {gap:+.2f} ({worst['method']})"
        if not rs:
            continue
        if "dhaka" in rs and "pca10" in rs:
            line += f"; dhaka {best(rs['dhaka']):.2f} vs PCA-10 {best(rs['pca10']):.2f} (best caller)"
        for m in ("dhaka/ploidy",):
            if m in rs and "pca3" in rs and "umap3" in rs:
                line += f"; dhaka/ploidy {rs[m]['default_ari']:.2f} vs PCA-3 {rs['pca3']['default_ari']:.2f}, UMAP-3 {rs['umap3']['default_ari']:.2f} (default caller)"
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("expression", "cnv", "real", "all"), default="all")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="two grid cells per part")
    ap.add_argument("--only", nargs="*", help="grid cell names to run")
    ap.add_argument("--refit", action="store_true", help="recompute cached embeddings")
    ap.add_argument("--cached-only", action="store_true", help="score only embeddings already cached")
    add_variant_option(ap)  # rows dhaka-NAME
    ap.add_argument("--write", action="store_true", help="record the tables in bench/RESULTS.md")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    variants = parse_variants(args.variant)
    machine = machine_description()
    parts = ("expression", "cnv", "real") if args.part == "all" else (args.part,)
    for part in parts:
        t0 = time.perf_counter()
        rows = run_part(part, seeds=tuple(range(args.seeds)), quick=args.quick, only=args.only, refit=args.refit,
                        cached_only=args.cached_only, variants=variants)
        text = table(rows)
        lines = checks(rows)
        print(text)
        print("\n".join(lines))
        with open(OUT / f"{part}_rows.json", "w") as f:
            json.dump(rows, f, default=float)
        if args.write:
            head = (f"This run: {(time.perf_counter() - t0) / 60:.1f} min (cached embeddings are re-scored, their "
                    f"`seconds` are from when they were computed). Seeds: {args.seeds}.\n\n")
            write_section(f"independent-{part}", head + text + "\n" + "\n".join(lines) + "\n",
                          title=f"Independent data, {part}", machine=machine,
                          command=command_line("python -m bench.independent", argv))


if __name__ == "__main__":
    main()
