"""Training speed of the deep structure: ``dhaka.train.fit_vae`` against a plain PyTorch loop.

Issue 2 (Speed): seconds per epoch of the 1024-512-256 / latent-3 VAE on 4347 cells x
5000 genes (synthetic log expression), at the estimator's default settings (RMSprop
1e-3, clip norm 5, KL warm-up, 10 % held out for early stopping, ``batch_size="auto"``
= 512 here) and at batch sizes 100 / 256 / 512, beside a hand-written loop of the same
network, optimiser and batch size (``bench/_plain.py``) in the same run, interleaved so
both see the same machine load. Also: achieved GFLOP/s against this machine's measured
fp32 matmul peak, optional bf16 autocast and ``torch.compile`` figures for the plain loop,
and scvi-tools' SCVI (its defaults) on the same cells when a Python with scvi-tools is given.

Run::

    python bench/speed.py                       # table only
    python bench/speed.py --write --repeats 5   # and write the section of bench/RESULTS.md
    python bench/speed.py --scvi-python /tmp/scvi-venv/bin/python --compile --bf16
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common as _machine  # noqa: E402  (the machine helpers live in common.py)
from _plain import flops_per_cell, plain_epochs  # noqa: E402


def synthetic_counts(n_cells: int, n_genes: int, *, n_groups: int = 5, seed: int = 0, chunk: int = 5000):
    """Gamma-Poisson counts with ``n_groups`` groups (CSR float32) and log2(CP-median+1) of them (dense).

    Generated in row chunks so that 100k cells need no float64 matrix of the full size.
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    base = rng.gamma(0.6, 1.0, n_genes)
    groups = rng.integers(0, n_groups, n_cells)
    eff = np.ones((n_groups, n_genes))
    for g in range(n_groups):
        sel = rng.choice(n_genes, n_genes // 20, replace=False)
        eff[g, sel] = rng.lognormal(1.0, 0.5, sel.size)
    lib = rng.lognormal(0.0, 0.3, n_cells)[:, None]
    parts = []
    for a in range(0, n_cells, chunk):
        lam = base[None, :] * eff[groups[a:a + chunk]] * lib[a:a + chunk]
        parts.append(sp.csr_matrix(rng.poisson(rng.gamma(2.0, lam / 2.0)).astype(np.float32)))
    counts = sp.vstack(parts, format="csr")
    sizes = np.asarray(counts.sum(1)).ravel()
    target = np.median(sizes)
    logx = np.empty((n_cells, n_genes), dtype=np.float32)
    for a in range(0, n_cells, chunk):
        block = counts[a:a + chunk].toarray()
        logx[a:a + chunk] = np.log2(block / np.maximum(sizes[a:a + chunk, None], 1) * target + 1)
    return counts, logx


def time_fit_vae(X, *, batch_size: int, epochs: int, val_fraction: float = 0.1, seed: int = 0,
                 device: str = "cpu") -> tuple[list[float], int]:
    """Seconds of each epoch after the first, from fit_vae's own EpochReports; and trained cells."""
    import torch

    from dhaka.model import VAE, PRESETS
    from dhaka.train import fit_vae, split_rows

    torch.manual_seed(seed)
    model = VAE(X.shape[1], hidden=PRESETS["deep"], latent_dim=3)
    X = np.asarray(X)
    mean = X.mean(0)
    sd = float(np.sqrt(X.var(0).mean()))
    model.set_input_affine(torch.from_numpy(mean), torch.full((X.shape[1],), sd))
    secs: list[float] = []
    fit_vae(X, model=model, epochs=epochs + 1, batch_size=batch_size, lr=1e-3, clip_norm=5.0,
            optimizer="rmsprop", kl_warmup=20, val_fraction=val_fraction, patience=20, seed=seed,
            device=device, callback=lambda r: secs.append(r.seconds))
    n_train = len(split_rows(X.shape[0], val_fraction, seed)[0])
    return secs[1:], n_train


def default_batch_size(n_cells: int) -> int:
    from dhaka.estimator import Dhaka

    return Dhaka().resolved_batch_size(n_cells)


def run_scvi(python: str, counts, *, epochs: int, threads: int) -> dict:
    import scipy.sparse as sp

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "counts.npz")
        sp.save_npz(path, counts)
        proc = subprocess.run([python, str(Path(__file__).with_name("_scvi_run.py")), path,
                               "--epochs", str(epochs), "--threads", str(threads)],
                              capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def precision_check(*, seeds=(0, 1, 2), device: str = "cpu") -> tuple[str, list]:
    """fp32 vs bf16 autocast through the estimator on simulate.counts: ARI, loss, time, latent agreement.

    "Does not change results beyond a stated tolerance": a bf16 run follows a different
    stochastic trajectory, so its coordinates are not the fp32 ones; what must not
    change is what the latent space is used for. Compared per seed: ARI of GMM-BIC
    clusters against the truth, the final validation loss, and the agreement of the two
    latent spaces (mean canonical correlation of the 3 coordinates after a linear map).
    """
    from dhaka import Dhaka, simulate
    from dhaka.cluster import ari, gmm_bic

    ad = simulate.counts(seed=0)
    truth = np.asarray(ad.obs["group"])
    rows = []
    for seed in seeds:
        Zs = {}
        for prec in ("fp32", "bf16"):
            est = Dhaka(seed=seed, precision=prec, device=device)
            t = time.perf_counter()
            Z = est.fit_transform(ad)
            sec = time.perf_counter() - t
            Zs[prec] = Z
            res = gmm_bic(Z, k_max=10, seed=0)
            rows.append([seed, prec, len(est.history_), est.history_[-1]["val_loss"], ari(truth, res.labels), res.k,
                         sec / len(est.history_)])
            print(rows[-1], flush=True)
        A, B = (Zs["fp32"] - Zs["fp32"].mean(0)), (Zs["bf16"] - Zs["bf16"].mean(0))
        qa, _ = np.linalg.qr(A)
        qb, _ = np.linalg.qr(B)
        cc = np.linalg.svd(qa.T @ qb, compute_uv=False)
        rows[-1].append(float(cc.mean()))
        rows[-2].append(float("nan"))
    md = _machine.markdown_table(["seed", "precision", "epochs", "final val loss", "ARI (GMM-BIC vs truth)", "k",
                                  "s/epoch", "latent canonical corr. with fp32"], rows)
    return md, rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=4347)
    ap.add_argument("--genes", type=int, default=5000)
    ap.add_argument("--batch", type=int, nargs="+", default=[100, 256, 512])
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per repeat (after one warm-up epoch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also time the plain loop under torch.compile")
    ap.add_argument("--bf16", action="store_true", help="also time the plain loop under bf16 autocast")
    ap.add_argument("--no-decomposition", action="store_true",
                    help="skip the fit_vae(val_fraction=0) vs plain-on-all-cells pair (halves the run time)")
    ap.add_argument("--scvi-python", default=None, help="a Python with scvi-tools installed")
    ap.add_argument("--scvi-epochs", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the speed section of bench/RESULTS.md")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of --precision-check")
    ap.add_argument("--precision-check", action="store_true",
                    help="only compare fp32 and bf16 autocast training (quality and speed) and write that section")
    a = ap.parse_args(argv)
    if a.precision_check:
        import torch

        torch.set_num_threads(a.threads)
        md, _ = precision_check(device=a.device, seeds=tuple(a.seeds))
        body = "\n".join([
            f"Device {a.device}. "
            "`Dhaka(precision=...)` with default settings on `simulate.counts(seed=0)` (2000 cells, 5 groups of "
            "unequal size), one row per training seed. A bf16 run follows its own stochastic trajectory, so the "
            "tolerance is stated on what the latent space is used for: clusters (ARI against the truth), the "
            "held-out loss, and agreement of the two 3-D spaces up to a linear map (mean canonical correlation).",
            "", md])
        print(body)
        if a.write:
            _machine.write_section(f"precision-{a.device}", body, title=f"bf16 autocast vs fp32, {a.device}",
                                   command=_machine.command_line("python bench/speed.py", argv),
                                   machine=_machine.describe(a.threads))
        return

    import torch

    torch.set_num_threads(a.threads)
    dev = a.device
    peak = _machine.matmul_peak(device=dev)
    machine = _machine.describe(a.threads)
    counts, X = synthetic_counts(a.cells, a.genes)
    fpc = flops_per_cell(a.genes)
    default_bs = default_batch_size(a.cells)
    from dhaka.train import split_rows

    train_rows = split_rows(a.cells, 0.1, 0)[0]
    print(machine)
    print(f"fp32 matmul peak (best 2048^3 sgemm): {peak:.0f} GFLOP/s; {fpc / 1e6:.1f} MFLOP per cell per step; "
          f"default batch size for {a.cells} cells: {default_bs}")

    rows = []
    for bs in a.batch:
        res: dict[str, list[float]] = {"fit": [], "fit_noval": [], "plain": [], "plain_all": [], "bf16": []}
        n_train = len(train_rows)
        for r in range(a.repeats):
            # interleaved so that both loops see the same load
            s, n_train = time_fit_vae(X, batch_size=bs, epochs=a.epochs, device=dev)
            res["fit"] += s
            s, _ = plain_epochs(X, batch_size=bs, epochs=a.epochs, rows=train_rows, device=dev)
            res["plain"] += s
            if not a.no_decomposition:
                s, _ = time_fit_vae(X, batch_size=bs, epochs=a.epochs, val_fraction=0.0, device=dev)
                res["fit_noval"] += s
                s, _ = plain_epochs(X, batch_size=bs, epochs=a.epochs, device=dev)
                res["plain_all"] += s
            if a.bf16:
                s, _ = plain_epochs(X, batch_size=bs, epochs=a.epochs, device=dev, amp="bf16")
                res["bf16"] += s
            print(f"  batch {bs} repeat {r + 1}/{a.repeats}: load {os.getloadavg()[0]:.1f}", flush=True)
        m = {k: _machine.median(v) for k, v in res.items()}
        comp = (float("nan"), float("nan"))
        if a.compile:
            s, first = plain_epochs(X, batch_size=bs, epochs=max(2, a.epochs), device=dev, compile=True)
            comp = (_machine.median(s), first)
        gf = lambda cells, sec: fpc * cells / sec / 1e9  # noqa: E731
        rows.append({
            "batch": bs, "default": bs == default_bs,
            "fit_s": m["fit"], "plain_s": m["plain"], "ratio": m["fit"] / m["plain"],
            "fit_noval_s": m["fit_noval"], "plain_all_s": m["plain_all"], "ratio_noval": m["fit_noval"] / m["plain_all"],
            "fit_gflops": gf(n_train, m["fit"]), "plain_gflops": gf(a.cells, m["plain_all"]),
            "bf16_s": m["bf16"], "compile_s": comp[0], "compile_first_s": comp[1],
            "n": len(res["fit"]),
        })

    scvi = None
    if a.scvi_python:
        print("running scvi-tools SCVI ...", flush=True)
        scvi = run_scvi(a.scvi_python, counts, epochs=a.scvi_epochs, threads=a.threads)

    header = ["batch", "fit_vae s/epoch (defaults, 10% val)", "plain s/epoch (same 90%)", "ratio",
              "fit_vae s/epoch (no val)", "plain s/epoch (all cells)", "ratio", "fit_vae GFLOP/s", "% of peak",
              "plain GFLOP/s", "% of peak"]
    if a.bf16:
        header += ["plain bf16 s/epoch"]
    if a.compile:
        header += ["plain compiled s/epoch", "compile s"]
    table = []
    for r in rows:
        row = [f"{r['batch']}{' (default)' if r['default'] else ''}", r["fit_s"], r["plain_s"], r["ratio"],
               r["fit_noval_s"], r["plain_all_s"], r["ratio_noval"], r["fit_gflops"],
               100 * r["fit_gflops"] / peak, r["plain_gflops"], 100 * r["plain_gflops"] / peak]
        if a.bf16:
            row += [r["bf16_s"]]
        if a.compile:
            row += [r["compile_s"], r["compile_first_s"]]
        table.append(row)
    md = _machine.markdown_table(header, table)
    print(md)
    scvi_line = ""
    if scvi is not None:
        if "error" in scvi:
            scvi_line = f"scvi-tools SCVI: could not run ({scvi['error']})."
        else:
            sec = scvi["seconds_per_epoch"]
            scvi_line = (f"scvi-tools {scvi['version']} SCVI with its defaults (1 hidden layer of 128, 10 latent, "
                         f"ZINB, batch 128, 90 % train) on the same {a.cells} cells' counts: "
                         f"**{_machine.median(sec[1:] or sec):.2f} s/epoch** (median of epochs 2..{len(sec)}; "
                         f"all: {', '.join(f'{s:.2f}' for s in sec)}).")
        print(scvi_line)
    if a.write:
        body = "\n".join([
            f"Measured fp32 matmul peak: **{peak:.0f} GFLOP/s** (best 2048^3 sgemm, "
            f"{a.threads} threads). Network 5000-1024-512-256-3 (+ mirror), {fpc / 1e6:.1f} MFLOP per cell "
            "per training step (`VAE.flops_per_cell`). Medians of "
            f"{rows[0]['n']} timed epochs ({a.repeats} interleaved repeats x {a.epochs} epochs, after one "
            "warm-up epoch each).",
            "",
            "\"fit_vae (defaults)\" is `dhaka.train.fit_vae` exactly as the estimator calls it: RMSprop 1e-3, "
            "clip norm 5, KL warm-up, 10 % held out and evaluated every epoch, best-state snapshot; its "
            "seconds include the validation pass. It is compared with the plain loop over the same 90 % "
            "training cells; \"no val\" compares fit_vae with `val_fraction=0` against the plain loop over "
            "all cells (pure loop overhead). GFLOP/s count training cells only.",
            "",
            md, "", scvi_line,
        ])
        _machine.write_section("speed" if dev == "cpu" else f"speed-{dev}", body,
                               title=f"Training speed, deep structure, {a.cells} cells x {a.genes} genes, {dev}",
                               command=_machine.command_line("python bench/speed.py", argv), machine=machine)
        print("wrote bench/RESULTS.md (speed section)")


if __name__ == "__main__":
    main()
