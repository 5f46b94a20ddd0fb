"""Scale benchmarks (issue 6): peak memory out of core, and training throughput at 4k-100k cells.

``memory``: 100,000 cells x 20,000 genes at 5 % density (a synthetic .h5ad written in
chunks, never held in memory), end to end through ``dhaka.backed``: read backed ->
gene statistics in chunks -> select 5000 genes (cached preprocessed CSR) -> train one
epoch -> embed every cell. Each stage's seconds and the process's peak RSS
(``VmHWM``), in a fresh process so nothing else inflates it. Target: < 4 GB.

``throughput``: cells/s and GFLOP/s of ``fit_vae`` (deep structure, estimator defaults,
batch 512) at 4k / 20k / 100k cells x 5000 genes, from a dense array and from CSR
(densified per batch), beside the plain loop of ``bench/_plain.py`` on the same
matrix, and scvi-tools' SCVI on the same cells' counts when ``--scvi-python`` is given.

Run::

    python bench/scale.py memory --write
    python bench/scale.py throughput --cells 4000 20000 100000 --write --scvi-python /tmp/scvi-venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import common as _machine  # noqa: E402  (the machine helpers live in common.py)
from _plain import flops_per_cell, plain_epochs  # noqa: E402


# ------------------------------------------------------------------ data
def write_sparse_h5ad(path: str | os.PathLike, n_cells: int, n_genes: int, *, density: float = 0.05,
                      n_groups: int = 5, seed: int = 0, chunk: int = 1000) -> dict:
    """Write a synthetic counts .h5ad (CSR X, cells x genes) chunk by chunk; never all in memory.

    Every gene has its own detection rate (mean ``density``), a fifth of the genes are
    more often detected and higher in one group, values are 1 + Poisson.
    """
    import anndata
    import h5py
    import pandas as pd

    rng = np.random.default_rng(seed)
    p = np.clip(rng.gamma(1.0, density, n_genes), 0.0, 0.9)
    groups = rng.integers(0, n_groups, n_cells)
    marker = rng.integers(0, n_groups * 4, n_genes)  # a quarter of the genes mark one group each
    is_marker = marker < n_groups
    for _ in range(20):  # scale the detection rates so that the expected density is `density`
        boosted = np.minimum(0.9, p * 4 + 0.1)
        expected = np.where(is_marker, (1 - 1 / n_groups) * p + boosted / n_groups, p).mean()
        p = np.clip(p * density / expected, 0.0, 0.9)
    mu = rng.gamma(1.0, 1.5, n_genes)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        X = f.create_group("X")
        X.attrs["encoding-type"] = "csr_matrix"
        X.attrs["encoding-version"] = "0.1.0"
        X.attrs["shape"] = np.array([n_cells, n_genes])
        data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
        indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        pos = 0
        for a in range(0, n_cells, chunk):
            b = min(n_cells, a + chunk)
            gr = groups[a:b]
            boost = (marker[None, :] == gr[:, None])
            prob = np.where(boost, np.minimum(0.9, p * 4 + 0.1), p)
            mask = rng.random((b - a, n_genes), dtype=np.float32) < prob
            r, c = np.nonzero(mask)
            lam = mu[c] * np.where(boost[r, c], 4.0, 1.0)
            vals = (1 + rng.poisson(lam)).astype(np.float32)
            k = vals.size
            data.resize((pos + k,))
            indices.resize((pos + k,))
            data[pos:pos + k] = vals
            indices[pos:pos + k] = c.astype(np.int32)
            counts = np.bincount(r, minlength=b - a)
            indptr[a + 1:b + 1] = pos + np.cumsum(counts)
            pos += k
        X.create_dataset("indptr", data=indptr)
        write_elem = getattr(anndata, "io", anndata.experimental).write_elem
        write_elem(f, "obs", pd.DataFrame({"group": groups.astype(str)}, index=[f"cell{i}" for i in range(n_cells)]))
        write_elem(f, "var", pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    return {"nnz": int(pos), "density": pos / (n_cells * n_genes), "bytes": os.path.getsize(path)}


# ---------------------------------------------------------------- memory
def _memory_worker(path: str, n_genes: int, epochs: int, cache_root: str, structure: str, gmm: bool) -> dict:
    """Runs in a fresh process: the end-to-end pipeline, with stage timings and peak RSS."""
    import torch

    from dhaka.backed import fit_backed, transform_backed
    from dhaka.cluster import gmm_bic

    torch.set_num_threads(int(os.environ.get("DHAKA_THREADS", "2")))
    out: dict = {"rss_start_mb": _machine.peak_rss_mb()}
    t = time.perf_counter()
    est = fit_backed(path, cache_root=cache_root, n_genes=n_genes, epochs=epochs, structure=structure,
                     device="cpu", patience=None)
    out["fit_s"] = time.perf_counter() - t
    out["prepare_s"] = est.prepared_["seconds"]
    out["in_memory"] = est.prepared_["in_memory"]
    out["train_s"] = est.train_seconds_  # all fits (gene refinement runs several)
    out["fits"] = len(getattr(est, "refinement_", [None]))
    out["rss_after_fit_mb"] = _machine.peak_rss_mb()
    _stage("fit (prepare + train)", out)
    t = time.perf_counter()
    Z = transform_backed(est, path)
    out["embed_s"] = time.perf_counter() - t
    _stage("embed", out)
    out["gmm_s"], out["k"] = float("nan"), None
    if gmm:
        t = time.perf_counter()
        res = gmm_bic(Z, k_max=8, seed=0, n_jobs=2)
        out["gmm_s"] = time.perf_counter() - t
        out["k"] = int(res.k)
    out["n_cells"], out["latent"] = int(Z.shape[0]), int(Z.shape[1])
    out["peak_rss_mb"] = _machine.peak_rss_mb()
    _stage("gmm", out)
    # a second fit would take its preprocessed matrix from the disk cache: time that part
    from dhaka.backed import prepare

    est = None
    t = time.perf_counter()
    again = prepare(path, n_genes=n_genes, cache_root=cache_root)
    out["refit_prepare_s"] = again.seconds
    out["refit_from_cache"] = again.from_cache
    out["refit_s"] = time.perf_counter() - t
    out["peak_rss_mb_after_refit"] = _machine.peak_rss_mb()
    return out


def _stage(name: str, out: dict) -> None:
    """Progress on stderr (the parent shows it), with the peak RSS so far."""
    print(f"[memory] after {name}: peak RSS {_machine.peak_rss_mb() / 1024:.2f} GB, "
          f"{time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)


def run_memory(a) -> str:
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        path = os.path.join(tmp, "big.h5ad")
        t = time.perf_counter()
        info = write_sparse_h5ad(path, a.cells, a.genes, density=a.density)
        gen_s = time.perf_counter() - t
        print(f"wrote {path}: {info['nnz']:,} stored values ({info['density']:.3f} density), "
              f"{info['bytes'] / 1e9:.2f} GB on disk in {gen_s:.0f} s", flush=True)
        cmd = [sys.executable, __file__, "_memory_worker", path, str(a.select), str(a.epochs),
               os.path.join(tmp, "cache"), a.structure, "1" if a.gmm else "0"]
        env = {**os.environ, "DHAKA_THREADS": str(a.threads)}
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # stderr: progress
        if proc.returncode != 0:
            raise SystemExit(f"memory worker failed (rc {proc.returncode})")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))
    pr = res["prepare_s"]
    gb = res["peak_rss_mb"] / 1024
    machine = _machine.describe(a.threads)
    md = "\n".join([
        f"Synthetic counts .h5ad (CSR, {info['nnz']:,} stored values, {info['bytes'] / 1e9:.2f} GB on disk), "
        f"read backed through `dhaka.backed.fit_backed` / `transform_backed`: select {a.select} genes (cv), "
        f"train {a.epochs} epoch of the `{a.structure}` structure (estimator defaults otherwise), embed all "
        f"cells{', GMM-BIC (k <= 8, fitted on a 20k subsample, 2 threads)' if a.gmm else ''}. Fresh process; "
        "peak RSS = its VmHWM.",
        "",
        _machine.markdown_table(
            ["stage", "seconds"],
            [["content fingerprint (sha256 of X)", pr.get("fingerprint", float("nan"))],
             ["pass 1: library sizes, range, kind", pr.get("pass1", float("nan"))],
             ["pass 2: per-gene moments, selection", pr.get("pass2", float("nan"))],
             ["pass 3: write selected CSR to the cache", pr.get("pass3", float("nan"))],
             [f"train {a.epochs} epoch per fit x {res.get('fits', 1)} fits (gene refinement; selected CSR "
              f"{'in memory' if res['in_memory'] else 'streamed'})", res["train_s"]],
             ["embed all cells (streamed)", res["embed_s"]],
             *([["GMM-BIC", res["gmm_s"]]] if a.gmm else []),
             ["second fit: preprocessed matrix from the cache (fingerprint + load)", res["refit_s"]]]),
        "",
        f"**Peak RSS: {gb:.2f} GB** (target < 4 GB; {res['peak_rss_mb_after_refit'] / 1024:.2f} GB after the "
        "cached refit). The raw matrix alone would be "
        f"{info['nnz'] * 8 / 1e9:.2f} GB as CSR in memory and {a.cells * a.genes * 4 / 1e9:.1f} GB dense.",
    ])
    print(md)
    if a.write:
        _machine.write_section("scale-memory", md, machine=machine, command=_machine.command_line("python bench/scale.py"),
                               title=f"Peak memory out of core, {a.cells:,} cells x {a.genes:,} genes, "
                                     f"{info['density']:.1%} density")
    return md


# ------------------------------------------------------------- throughput
class _TimedRows:
    """Row source for fit_vae that times the training steps and stops after ``max_batches``.

    The time between the second and the last ``take_rows`` call covers ``max_batches - 2``
    whole training steps (batch read, forward, backward, clip, optimiser) and nothing else:
    not the first step, not the validation pass.
    """

    def __init__(self, X, stop, max_batches: int, device: str = "cpu") -> None:
        import scipy.sparse as sp
        import torch

        from dhaka.train import resolve_device

        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.X, self.stop, self.max_batches = X, stop, max_batches
        self.sparse = sp.issparse(X)
        self.shape = X.shape
        self.calls, self.cells, self.t0, self.t1 = 0, 0, None, None

    def take_rows(self, idx):
        import time as _t

        self.calls += 1
        if self.device.type == "cuda" and (self.calls == 2 or self.calls >= self.max_batches):
            import torch

            torch.cuda.synchronize()  # the previous steps have really finished
        now = _t.perf_counter()
        if self.calls == 2:  # the first step (optimiser state, lazy initialisation) is not timed
            self.t0 = now
        elif self.calls > 2:
            self.cells += self.last
        self.last = len(idx)
        if self.calls >= self.max_batches:
            self.t1 = now
            self.stop.set()
        return self.X[idx].toarray() if self.sparse else self.X[idx]

    def cells_per_s(self) -> float:
        return self.cells / (self.t1 - self.t0) if self.t1 else float("nan")


def _fit_vae_rate(X, *, batch_size: int, max_batches: int, device: str = "cpu") -> float:
    """Steady-state training cells/s of dhaka.train.fit_vae (estimator defaults, deep structure)."""
    import threading

    import torch

    from dhaka.model import PRESETS, VAE
    from dhaka.preprocess import column_moments
    from dhaka.train import fit_vae

    torch.manual_seed(0)
    model = VAE(X.shape[1], hidden=PRESETS["deep"], latent_dim=3)
    mean, var = column_moments(X[:5000])
    model.set_input_affine(torch.from_numpy(mean.astype(np.float32)),
                           torch.full((X.shape[1],), float(np.sqrt(var.mean()))))
    stop = threading.Event()
    src = _TimedRows(X, stop, max_batches, device)
    fit_vae(src, model=model, epochs=1, batch_size=batch_size, lr=1e-3, clip_norm=5.0, kl_warmup=20,
            val_fraction=0.0, patience=None, seed=0, device=device, stop_event=stop)
    return src.cells_per_s()


def _plain_rate(X, *, batch_size: int, max_batches: int, device: str = "cpu") -> float:
    rows = np.random.default_rng(0).permutation(X.shape[0])[:batch_size * max_batches]
    secs, _ = plain_epochs(X, batch_size=batch_size, epochs=1, rows=rows, device=device)
    return len(rows) / secs[0]


def run_throughput(a) -> str:
    import scipy.sparse as sp
    import torch

    from speed import run_scvi, synthetic_counts

    torch.set_num_threads(a.threads)
    peak = _machine.matmul_peak(device=a.device)
    fpc = flops_per_cell(a.genes)
    rows = []
    for n in a.cells:
        counts, logx = synthetic_counts(n, a.genes)
        csr = sp.csr_matrix(logx)
        k = min(a.batches, max(2, n // a.batch - 2))
        for kind, X in (("dense", logx), ("sparse (CSR)", csr)):
            rate = _fit_vae_rate(X, batch_size=a.batch, max_batches=k + 2, device=a.device)
            prate = _plain_rate(X, batch_size=a.batch, max_batches=k, device=a.device)
            rows.append([f"{n:,}", kind, f"{csr.nnz / (n * a.genes):.0%}", rate, fpc * rate / 1e9,
                         100 * fpc * rate / 1e9 / peak, 0.9 * n / rate, prate, prate / rate])
            print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)
        if a.scvi_python and n <= a.scvi_max_cells and a.device == "cpu":
            r = run_scvi(a.scvi_python, counts, epochs=2 if n < 50_000 else 1, threads=a.threads)
            if "error" in r:
                print("SCVI failed:", r["error"])
                rows.append([f"{n:,}", f"SCVI: {r['error'][:60]}", "", *[float("nan")] * 6])
            else:
                sec = _machine.median(r["seconds_per_epoch"])
                rows.append([f"{n:,}", f"SCVI {r['version']} (its defaults, counts)", "", 0.9 * n / sec,
                             float("nan"), float("nan"), sec, float("nan"), float("nan")])
            print(rows[-1], flush=True)
        del logx, csr, X, counts
    md_table = _machine.markdown_table(
        ["cells", "input", "density", "fit_vae cells/s", "GFLOP/s", "% of peak", "s/epoch (90 % train)",
         "plain cells/s", "plain / fit_vae"], rows)
    md = "\n".join([
        f"Measured fp32 matmul peak {peak:.0f} GFLOP/s. "
        f"Steady-state training throughput of `dhaka.train.fit_vae` (RMSprop, clip norm 5, batch {a.batch}, what "
        "`batch_size=\"auto\"` picks above ~4k cells), timed over up to "
        f"{a.batches} minibatches after the first (no validation pass: bench/speed.py measures that at 4k), "
        "through a row source that hands fit_vae the same rows a dense array or a CSR matrix would. "
        "\"sparse\" = the same log-expression values as CSR, densified one batch at a time. s/epoch = 90 % of "
        "the cells / cells/s. Plain loop: `bench/_plain.py` over the same number of cells. SCVI: scvi-tools' "
        "own defaults (1 x 128 hidden, 10 latent, batch 128) on the counts of the same cells, a much smaller "
        "network: the field's reference point, not a like-for-like FLOP comparison.",
        "",
        md_table,
    ])
    print(md)
    if a.write:
        _machine.write_section("scale-throughput" + ("" if a.device == "cpu" else f"-{a.device}"), md,
                               title=f"Training throughput at scale, deep structure x {a.genes} genes, {a.device}",
                               command=_machine.command_line("python bench/scale.py"),
                               machine=_machine.describe(a.threads))
    return md


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_memory_worker":
        path, n_genes, epochs, cache_root, structure, gmm = argv[1:7]
        print(json.dumps(_memory_worker(path, int(n_genes), int(epochs), cache_root, structure, gmm == "1"),
                         default=float))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--cells", type=int, default=100_000)
    m.add_argument("--genes", type=int, default=20_000)
    m.add_argument("--density", type=float, default=0.05)
    m.add_argument("--select", type=int, default=5000)
    m.add_argument("--epochs", type=int, default=1)
    m.add_argument("--structure", default="shallow", help="the estimator's default is shallow")
    m.add_argument("--tmp", default=None)
    m.add_argument("--gmm", action="store_true", help="also cluster the latent (GMM-BIC, 20k-cell subsample fit)")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--write", action="store_true")
    t = sub.add_parser("throughput")
    t.add_argument("--cells", type=int, nargs="+", default=[4000, 20_000, 100_000])
    t.add_argument("--genes", type=int, default=5000)
    t.add_argument("--batch", type=int, default=512)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--batches", type=int, default=20, help="timed minibatches per measurement")
    t.add_argument("--device", default="cpu", help="cpu or cuda (the GPU table)")
    t.add_argument("--scvi-python", default=None)
    t.add_argument("--scvi-max-cells", type=int, default=100_000)
    t.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "memory":
        run_memory(a)
    else:
        run_throughput(a)


if __name__ == "__main__":
    main()
