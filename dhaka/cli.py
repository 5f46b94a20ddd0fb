"""Command line: ``python -m dhaka embed | project | simulate``.

Examples::

    python -m dhaka simulate paper --out paper.csv
    python -m dhaka embed paper.csv --out latent.csv --save-model model/
    python -m dhaka project model/ second.csv --out second_latent.csv

Problems with the input end the program with exit status 2 and one line that
names the problem (no traceback).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from dhaka.store import is_occupied


def _add_read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--orientation", choices=["auto", "cells_x_genes", "genes_x_cells"], default="auto",
                   help="orientation of a CSV/TSV matrix (default: detect)")
    p.add_argument("--layer", default=None,
                   help="read this layer of an .h5ad (e.g. counts, or state for copy-number files) instead of X")
    p.add_argument("--metadata", help="CSV/TSV of per-cell annotations keyed by cell id (joined into obs)")
    p.add_argument("--batch-key", metavar="COLUMN", default=None,
                   help="correct for the batch (sample, donor, run) in this obs column, e.g. from --metadata: "
                        "the model is conditioned on it, as scVI's batch_key (project: the cells' batches, "
                        "known to the model)")


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    from dhaka.clusterers import DEFAULT_CLUSTERER, available

    p.add_argument("--k-max", type=int, default=10, help="largest number of clusters tried (BIC picks k)")
    p.add_argument("--clusterer", choices=available(), default=DEFAULT_CLUSTERER,
                   help="how clusters are called (dhaka.clusterers; default: GMM with k by BIC)")
    p.add_argument("--merge", action="store_true",
                   help="always merge overlapping GMM components (default: decided from the data, merged "
                        "clusters are kept where subsamples reproduce them better; dhaka.cluster.gmm_bic merge='auto')")
    p.add_argument("--h5ad", help="also write an .h5ad with obsm['X_dhaka'] and obs['dhaka_cluster']")


def build_parser() -> argparse.ArgumentParser:
    from dhaka import __version__

    # the installed command says its own name; python -m dhaka says that
    prog = "dhaka" if Path(sys.argv[0]).name == "dhaka" else "python -m dhaka"
    parser = argparse.ArgumentParser(prog=prog, description="Dhaka: VAE latent spaces of single cells.")
    parser.add_argument("--version", action="version", version=f"dhaka {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("embed", help="train a model on INPUT and write latent coordinates + GMM clusters",
                       description="Train Dhaka on a matrix (CSV/TSV[.gz], .h5ad, 10x dir/.zip, .mtx, .npz) and "
                                   "write latent coordinates with GMM-BIC cluster calls.")
    e.add_argument("input")
    e.add_argument("--out", required=True, help="output CSV: cell, dhaka_1..dhaka_d, cluster")
    e.add_argument("--save-model", metavar="DIR", help="write the trained model directory here")
    e.add_argument("--preset", choices=["default", "paper", "fast"], default="default",
                   help="named settings; 'paper' reproduces the publication's (collapses on count data)")
    _add_estimator_options(e)
    e.add_argument("--distributed", action="store_true",
                   help="data-parallel training; launch with torchrun --nproc_per_node=N -m dhaka embed ...")
    e.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _add_read_options(e)
    _add_cluster_options(e)

    pr = sub.add_parser("project", help="embed INPUT with a trained model (genes aligned by name)",
                        description="Project a second sample into the latent space of a saved model.")
    pr.add_argument("model_dir")
    pr.add_argument("input")
    pr.add_argument("--out", required=True, help="output CSV of latent coordinates (+ clusters)")
    _add_read_options(pr)
    _add_cluster_options(pr)

    s = sub.add_parser("simulate", help="write a seeded simulated data set with known truth",
                       description="Kinds: paper (500 noise genes), paper_2500, counts, trajectory, cnv_pair.")
    s.add_argument("kind", choices=["paper", "paper_2500", "counts", "trajectory", "cnv_pair"])
    s.add_argument("--out", required=True, help=".csv (matrix; truth in <name>.obs.csv) or .h5ad")
    s.add_argument("--seed", type=int, default=0)
    return parser


def _add_estimator_options(p: argparse.ArgumentParser) -> None:
    """One option per parameter of :class:`dhaka.Dhaka`, from :data:`dhaka.params.PARAMS`."""
    from dhaka.params import PARAMS

    group = p.add_argument_group("model and training settings (default: the estimator's, or the preset's)")
    for prm in PARAMS:
        words = [tok for tok, _ in prm.special.values()]
        if prm.kind == "choice":
            words += [str(c).lower() if isinstance(c, bool) else str(c) for c in prm.choices]
        if prm.kind == "bool":
            words = ["true", "false"]
        metavar = "{" + ",".join(words) + "}" if prm.kind in ("choice", "bool") else (
            "/".join([*words, prm.kind.upper()]) if words else prm.kind.upper())
        default = prm.default
        shown = prm.special[default][0] if prm.is_special(default) else default
        group.add_argument(prm.flag, dest=prm.name, metavar=metavar, default=argparse.SUPPRESS,
                           help=f"{prm.help} (default: {shown})")


def _estimator_params(args: argparse.Namespace) -> dict:
    """The settings given on the command line, each parsed and checked by its :class:`dhaka.params.Param`."""
    from dhaka.params import PARAMS

    return {p.name: p.parse(getattr(args, p.name)) for p in PARAMS if hasattr(args, p.name)}


def _read(args: argparse.Namespace):
    from dhaka import io
    from dhaka.batch import check_obs_column

    adata = io.read(args.input, orientation=args.orientation, layer=args.layer)
    if args.metadata:
        adata = io.read_metadata(args.metadata, adata)
    if args.batch_key is not None:  # before any training
        try:
            check_obs_column(adata, args.batch_key)
        except ValueError as exc:
            raise ValueError(str(exc).replace(f"batch_key {args.batch_key!r}", f"--batch-key {args.batch_key}",
                                              1)) from None
    return adata


def _progress(quiet: bool) -> None:
    """Progress and log lines on stderr (``dhaka.settings``): a bar with the loss and ETA, info lines; none with --quiet.

    Returns the fit's callback: ``None``, so the fit draws its own progress bar (:mod:`dhaka.progress`).
    """
    from dhaka import settings

    settings.set_verbosity(0 if quiet else 2)
    return None


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any training, outputs that could not be written (each named by its flag)."""
    if args.k_max < 1:
        raise ValueError(f"--k-max must be at least 1, got {args.k_max}")
    for flag, value in (("--out", args.out), ("--h5ad", getattr(args, "h5ad", None))):
        if value and not Path(value).resolve().parent.is_dir():
            raise ValueError(f"{flag} {value}: the folder {Path(value).resolve().parent} does not exist")
    save = getattr(args, "save_model", None)
    if save and is_occupied(save):
        raise ValueError(f"--save-model {save}: exists and is not an empty folder; choose a new one")


def _check_settings(est) -> None:
    """The estimator's settings checked as a fit would check them, before any data is read, each named by its flag."""
    import re

    from dhaka.params import PARAMS
    from dhaka.train import resolve_device

    try:
        est.validate_params()
        resolve_device(str(est.device))
    except ValueError as exc:
        msg = str(exc)
        for p in sorted(PARAMS, key=lambda q: -len(q.name)):
            msg = re.sub(rf"\b{p.name}='?([^'\s,;)]*)'?", rf"{p.flag} \1", msg)
            msg = re.sub(rf"^{p.name}\b", p.flag, msg)
        raise ValueError(msg) from None


def _clusterer(args: argparse.Namespace, mode: str):
    from dhaka.clusterers import GMMBIC, resolve

    if args.merge:
        return GMMBIC(k_max=args.k_max, merge=True)
    return resolve(args.clusterer, mode=mode, k_max=args.k_max)


def _write_result(args: argparse.Namespace, result, adata, *, extra_meta: dict) -> None:
    """Write the latent CSV (and the .h5ad) of a pipeline result."""
    from dhaka import io

    Z = result.latent
    if getattr(args, "save_model", None):
        result.estimator.save(args.save_model)
        print(f"saved model to {args.save_model}", file=sys.stderr)
    io.write_latent_csv(args.out, Z, obs_names=list(adata.obs_names), labels=result.labels)
    c = result.clusters
    if c is None:
        called = f"no clusters ({result.metrics.get('cluster_error', 'not called')})"
    else:
        skipped = getattr(c, "skipped", None)
        called = f"{c.record.get('method', 'clusterer')} chose k={c.k}" + (
            f" (skipped k: {', '.join(map(str, skipped))})" if skipped else "")
    print(f"wrote {args.out}: {Z.shape[0]} cells x {Z.shape[1]} latent dims, {called}", file=sys.stderr)
    if args.h5ad:
        from dhaka.tl import to_anndata

        meta = {**{k: result.record[k] for k in ("batch_key", "batch_categories") if k in result.record},
                **extra_meta}
        out = to_anndata(adata, latent=Z, clusters=result.labels, params=result.estimator.get_params(),
                         cluster_result=c, extra={**meta, **({"gmm_k": int(c.k)} if c is not None else {})})
        Path(args.h5ad).write_bytes(io.to_h5ad_bytes(out))
        print(f"wrote {args.h5ad}", file=sys.stderr)


def cmd_embed(args: argparse.Namespace) -> int:
    from dhaka import Dhaka
    from dhaka.pipeline import run

    params = _estimator_params(args)  # check the settings and outputs before reading a large file
    _check_outputs(args)
    est = Dhaka.from_preset(args.preset, **params)
    _check_settings(est)
    adata = _read(args)
    clusterer = _clusterer(args, est.mode)
    if args.distributed:
        from dhaka.distributed import data_parallel_seams, init_from_env, is_distributed, is_main_process, shutdown

        init_from_env()
        try:
            main_rank = is_main_process()
            result = run(adata, estimator=est, clusterer=clusterer, batch_key=args.batch_key,
                         callback=_progress(args.quiet or not main_rank),
                         seams=data_parallel_seams(device=est.device) if is_distributed() else None,
                         main_process=main_rank)
            if main_rank:  # rank 0 writes the results; the others wait for it in shutdown()
                _write_result(args, result, adata, extra_meta={})
        finally:
            shutdown()
        return 0
    result = run(adata, estimator=est, clusterer=clusterer, batch_key=args.batch_key, callback=_progress(args.quiet))
    _write_result(args, result, adata, extra_meta={})
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from dhaka import Dhaka
    from dhaka.pipeline import embed_cluster

    _check_outputs(args)
    est = Dhaka.load(args.model_dir)
    adata = _read(args)
    result = embed_cluster(est, adata, clusterer=_clusterer(args, est.mode), batch_key=args.batch_key)
    if result.missing:
        print(f"warning: {len(result.missing)} of {len(est.genes_)} model features are missing from {args.input} "
              f"(e.g. {', '.join(result.missing[:5])}); filled with the training mean", file=sys.stderr)
    _write_result(args, result, adata, extra_meta={"model": str(args.model_dir), "missing": result.missing})
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import pandas as pd
    import scipy.sparse as sp

    from dhaka import io, simulate

    adata = simulate.load(args.kind, seed=args.seed)
    out = Path(args.out)
    if out.suffix == ".h5ad":
        out.write_bytes(io.to_h5ad_bytes(adata))
    else:
        X = adata.X.toarray() if sp.issparse(adata.X) else adata.X
        sep = "\t" if out.suffix in (".tsv", ".txt") else ","
        io.to_csv_safe(pd.DataFrame(X, index=adata.obs_names, columns=adata.var_names), out, sep=sep)
        io.to_csv_safe(adata.obs, out.with_name(out.name.split(".")[0] + ".obs.csv"))
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} features ({args.kind}, seed {args.seed})",
          file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"embed": cmd_embed, "project": cmd_project, "simulate": cmd_simulate}[args.command]
    from dhaka import settings

    before = settings.verbosity  # --quiet lowers it for this command only (main may be called in-process)
    try:
        return handler(args)
    except (ValueError, OSError, RuntimeError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        settings.set_verbosity(before)
