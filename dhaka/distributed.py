"""Data-parallel training over several processes (GPUs or machines) with DistributedDataParallel.

Launched with ``torchrun``; every process runs the same code, the same
:func:`dhaka.train.fit_vae` loop and the same preprocessing, and sees the same
sequence of *global* minibatches (the loop's seeded permutation is identical on every
rank). Each rank computes the loss of its contiguous share of every global batch, and
DDP all-reduces the gradients. Backend: NCCL when CUDA is available, gloo on CPU.

What "the same result as one process" means here, and why it holds
-------------------------------------------------------------------
Single-process training on the global batch and this data-parallel run compute the
same function, up to floating-point summation order:

* **Gradients**: rank ``r`` back-propagates ``R * n_r / n`` times its mean loss (``n_r``
  of the ``n`` cells of the batch); DDP averages over the ``R`` ranks, which gives the
  gradient of the global batch mean exactly.
* **Batch normalisation** uses the statistics of the whole global batch: every
  ``BatchNorm1d`` of the VAE is switched, for the duration of the fit, to a version that
  all-reduces (differentiably) the per-feature sums and the centred sums of squares
  (what ``SyncBatchNorm`` does on GPUs; it does not run on CPU, this does). Running
  statistics are updated as ``BatchNorm1d`` would (unbiased variance, momentum).
* **Sampling noise**: the reparameterisation noise of the global batch is drawn with the
  same seeded generator on every rank and each rank takes its rows, so the ``z`` of every
  cell is the one single-process training draws.
* **Reported losses, validation and early stopping** use all-reduced global values (the
  validation pass runs whole on every rank), so every rank takes the same decisions and
  the :class:`dhaka.train.EpochReport` history equals the single-process one.

``tests/test_distributed.py`` runs ``torchrun --nproc_per_node=2`` (gloo) against a
single-process fit of the same seeded data and settings and asserts latent coordinates
within 1e-4 and loss histories within 1e-5 relative. The residual is float summation
order (two halves all-reduced instead of one sum), which chaotic training amplifies
slowly over many epochs: after hundreds of epochs expect small differences in the
coordinates, not in the clusters.

Command line (for ``python -m dhaka embed ... --distributed``, see :func:`cli_hook`)::

    torchrun --standalone --nproc_per_node=2 -m dhaka.distributed INPUT --out DIR --params '{"epochs": 50}'
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["init_from_env", "is_distributed", "is_main_process", "world", "ddp_fit_vae", "distributed_training",
           "fit_estimator_distributed", "run_distributed_fit", "torchrun_command", "cli_hook"]


# ------------------------------------------------------------------ process group
def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def init_from_env(*, backend: str | None = None, timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    Picks NCCL when CUDA is available (and pins this process to ``cuda:LOCAL_RANK``),
    gloo otherwise. Returns (rank, world size); (0, 1) when not launched by torchrun.
    """
    import datetime

    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def _split(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous share [lo, hi) of ``n`` rows for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


# ----------------------------------------------------------- global batch norm
def _sum_all_reduce(t: torch.Tensor, *, group) -> torch.Tensor:
    """Differentiable SUM all-reduce (the backward all-reduces the gradients).

    ``torch.distributed.nn.functional.all_reduce`` is marked deprecated in favour of
    ``_functional_collectives``, a private module; the public one is kept, warning silenced.
    """
    import warnings

    from torch.distributed.nn.functional import all_reduce as _all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _all_reduce(t, group=group)


class _BNState:
    """Shared between the adapter and the patched BatchNorm layers of one fit."""

    def __init__(self, group) -> None:
        self.group = group
        self.weight = 1.0  # 0.0 when this rank's rows are a placeholder (no real cells)


def _global_bn_forward(self: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d with statistics over the global batch (all ranks), differentiable."""
    st: _BNState = self._dhaka_bn_state
    if not self.training:
        return type(self).forward(self, x)
    w = st.weight
    xf = x.float()
    c = xf.shape[1]
    local = torch.cat([xf.sum(0) * w, xf.new_full((1,), float(xf.shape[0]) * w)])
    tot = _sum_all_reduce(local, group=st.group)
    count = tot[c]
    mean = tot[:c] / count
    sq = (((xf - mean) ** 2).sum(0) * w)
    var = _sum_all_reduce(sq, group=st.group) / count  # biased, as batch norm normalises with
    y = (xf - mean) * torch.rsqrt(var + self.eps)
    if self.affine:
        y = y * self.weight + self.bias
    if self.track_running_stats:
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.0
            unbiased = var * (count / (count - 1).clamp_min(1))
            self.running_mean.mul_(1 - m).add_(mean.detach() * m)
            self.running_var.mul_(1 - m).add_(unbiased.detach() * m)
            self.num_batches_tracked.add_(1)
    return y.to(x.dtype)


@contextlib.contextmanager
def _global_batch_norm(module: nn.Module, state: _BNState) -> Iterator[None]:
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn._dhaka_bn_state = state
        bn.forward = types.MethodType(_global_bn_forward, bn)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward
            del bn._dhaka_bn_state


# ---------------------------------------------------------------- DDP adapter
class _LossModule(nn.Module):
    """What DDP wraps: one rank's share of a global batch -> its loss terms (local means).

    Also returns the per-dimension KL sums of the share, which free bits need (their floor
    applies to the *global* batch mean of each dimension).
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor, beta: float, kw: dict) -> tuple[torch.Tensor, ...]:
        vae = self.vae
        seen: dict[str, torch.Tensor] = {}
        forward = vae.forward

        def capture(xx):
            out = forward(xx)
            seen["mu"], seen["logvar"] = out[1], out[2]
            return out

        vae.reparameterize = lambda mu, logvar: mu + eps.to(mu.dtype) * torch.exp(0.5 * logvar)
        vae.forward = capture
        try:
            out = vae.loss(x, beta=beta, **kw)
        finally:
            del vae.reparameterize
            del vae.forward
        mu, logvar = seen["mu"].float(), seen["logvar"].float()
        kl_dim = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())  # the model's KL, per cell and dimension
        return out.total, out.reconstruction, out.kl, kl_dim.sum(0)


class _DDPAdapter(nn.Module):
    """Looks like a :class:`dhaka.model.VAE` to ``fit_vae``; trains its rank's share through DDP.

    ``state_dict``/``load_state_dict`` are the VAE's, so fit_vae's snapshots and the
    returned model are plain VAE states.
    """

    def __init__(self, vae: nn.Module, *, device: torch.device, group) -> None:
        super().__init__()
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.vae = vae.to(device)
        self.batch_norm = getattr(vae, "batch_norm", False)
        self.latent_dim = vae.latent_dim
        self.n_input = vae.n_input
        self.rank, self.world_size = world()
        self.group = group
        self.bn_state = _BNState(group)
        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        # buffers (running stats, input centring) are computed identically on every rank
        self.ddp = DDP(_LossModule(self.vae), device_ids=ids, broadcast_buffers=False)

    def state_dict(self, *args, **kwargs):  # noqa: D102
        return self.vae.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        return self.vae.load_state_dict(state_dict, strict=strict, assign=assign)

    def encode(self, x):
        return self.vae.encode(x)

    def prepare(self, x):
        return self.vae.prepare(x)

    def flops_per_cell(self) -> int:
        return self.vae.flops_per_cell()

    def loss(self, x: torch.Tensor, *, beta: float = 1.0, **kw: Any):
        import torch.distributed as dist

        from dhaka.model import LossOutput

        if not self.training or not torch.is_grad_enabled():
            return self.vae.loss(x, beta=beta, **kw)  # validation: the whole batch on every rank, identical
        free_bits = float(kw.get("free_bits", 0.0) or 0.0)
        n = x.shape[0]
        # the global batch's noise, exactly as single-process randn_like(std) would draw it
        eps = torch.randn((n, self.latent_dim), device=x.device)
        lo, hi = _split(n, self.world_size, self.rank)
        n_local = hi - lo
        if n_local == 0:  # fewer cells than ranks: a placeholder row that counts for nothing
            lo, hi = 0, 1
        self.bn_state.weight = 1.0 if n_local else 0.0
        # free bits act on the global batch's per-dimension KL mean: the share computes plain KL
        # and the floor is applied below from all-reduced per-dimension sums
        total, rec, kl, kl_dim_sum = self.ddp(x[lo:hi], eps[lo:hi], beta, {**kw, "free_bits": 0.0})
        d = kl_dim_sum.shape[0]
        sums = torch.cat([torch.stack([rec.detach(), kl.detach()]).float() * n_local,
                          kl_dim_sum.detach().float() * (1.0 if n_local else 0.0)])
        dist.all_reduce(sums, group=self.group)
        g_rec, g_kl = sums[0] / n, sums[1] / n
        g_kl_dim = sums[2:2 + d] / n
        if free_bits > 0:
            floor = g_kl_dim <= free_bits  # dimensions held at the floor get no KL gradient
            total = total - beta * (kl_dim_sum * floor.to(kl_dim_sum.dtype)).sum() / max(n_local, 1)
            g_total = g_rec + beta * g_kl_dim.clamp(min=free_bits).sum()
        else:
            g_total = g_rec + beta * g_kl
        scale = self.world_size * n_local / n
        scaled = total * scale
        # value: the global batch mean (for reports and decisions); gradient: this rank's share
        out_total = scaled + (g_total.to(scaled.dtype) - scaled).detach()
        return LossOutput(total=out_total, reconstruction=g_rec, kl=g_kl)


@contextlib.contextmanager
def distributed_training(vae: nn.Module, *, device: torch.device | str | None = None) -> Iterator[nn.Module]:
    """Context in which ``vae`` is trained data-parallel: yields the object to hand to ``fit_vae``."""
    import torch.distributed as dist

    from dhaka.train import resolve_device

    dev = resolve_device(device or "auto") if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    group = dist.new_group(backend=dist.get_backend())  # keeps our small collectives apart from DDP's
    adapter = _DDPAdapter(vae, device=dev, group=group)
    try:
        with _global_batch_norm(vae, adapter.bn_state):
            yield adapter
    finally:
        dist.barrier()


def ddp_fit_vae(X: Any, *, model: nn.Module, device: str = "auto", **kwargs: Any):
    """:func:`dhaka.train.fit_vae` run data-parallel in the current process group.

    Call it in every rank with the same data and arguments. Returns the
    :class:`~dhaka.train.TrainResult` with ``model`` the plain (trained) VAE.
    """
    from dhaka import train

    fit = getattr(train, "_dhaka_single_fit_vae", train.fit_vae)
    if not is_distributed():
        return fit(X, model=model, device=device, **kwargs)
    with distributed_training(model, device=device) as adapter:
        result = fit(X, model=adapter, device=device, **kwargs)
    result.model = model
    model.eval()
    return result


@contextlib.contextmanager
def _fit_vae_is_distributed() -> Iterator[None]:
    """Make ``dhaka.train.fit_vae`` the data-parallel one while the block runs (this process only).

    The estimator imports ``fit_vae`` from ``dhaka.train`` when ``fit`` runs, so its whole
    pipeline (preprocessing, starts, scoring) is reused unchanged.
    """
    from dhaka import train

    original = train.fit_vae
    train._dhaka_single_fit_vae = original
    train.fit_vae = ddp_fit_vae
    try:
        yield
    finally:
        train.fit_vae = original
        del train._dhaka_single_fit_vae


def fit_estimator_distributed(est: Any, X: Any, **fit_params: Any) -> Any:
    """``est.fit(X)`` with data-parallel training; call in every rank (after :func:`init_from_env`)."""
    with _fit_vae_is_distributed():
        return est.fit(X, **fit_params)


# ------------------------------------------------------------------ entry points
def run_distributed_fit(estimator_params: dict, X_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                        backed: bool = False, save_model: bool = True) -> dict:
    """The body of one torchrun worker: join, read, fit, and (rank 0) write the results.

    Parameters
    ----------
    estimator_params
        Keyword arguments of :class:`dhaka.Dhaka`.
    X_path
        Input file (anything :func:`dhaka.io.read` reads; with ``backed=True`` an .h5ad
        trained through :func:`dhaka.backed.fit_backed`).
    out_dir
        Rank 0 writes ``latent.npy``, ``latent.csv`` (with GMM clusters), ``history.json``
        and, with ``save_model``, the model in ``model/``.

    Returns
    -------
    dict
        ``{"rank", "world_size", "backend", "n_cells", "epochs", "seconds"}``.
    """
    import time

    import torch.distributed as dist

    from dhaka.estimator import Dhaka

    rank, size = init_from_env()
    t0 = time.perf_counter()
    est = Dhaka(**estimator_params)
    if backed:
        from dhaka.backed import fit_backed, transform_backed

        with _fit_vae_is_distributed():
            est = fit_backed(X_path, estimator=est)
        Z = transform_backed(est, X_path) if rank == 0 else None
        obs_names = None
    else:
        from dhaka.io import read

        adata = read(X_path)
        fit_estimator_distributed(est, adata)
        Z = est.transform(adata) if rank == 0 else None
        obs_names = list(adata.obs_names)
    seconds = time.perf_counter() - t0
    info = {"rank": rank, "world_size": size, "backend": dist.get_backend() if dist.is_initialized() else "none",
            "n_cells": None if Z is None else int(Z.shape[0]), "epochs": len(est.history_), "seconds": seconds}
    if rank == 0:
        from dhaka.cluster import gmm_bic
        from dhaka.io import write_latent_csv

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "latent.npy", Z)
        labels = gmm_bic(Z, k_max=10, seed=int(est.seed)).labels
        write_latent_csv(out / "latent.csv", Z, obs_names=obs_names or [str(i) for i in range(len(Z))],
                         labels=labels)
        (out / "history.json").write_text(json.dumps(est.history_, default=float))
        (out / "run.json").write_text(json.dumps(info))
        if save_model:
            est.save(out / "model")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return info


def torchrun_command(nproc: int, *args: str, standalone: bool = True) -> list[str]:
    """``[python, -m, torch.distributed.run, --standalone, --nproc_per_node=N, -m, dhaka.distributed, *args]``."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if standalone:
        cmd.append("--standalone")
    return cmd + [f"--nproc_per_node={int(nproc)}", "-m", "dhaka.distributed", *args]


def cli_hook() -> str:
    """Text for the lead's CLI: how ``python -m dhaka embed ... --distributed`` calls into this module."""
    return (
        "In dhaka/cli.py embed: add `--distributed` (store_true). When set:\n"
        "    from dhaka.distributed import init_from_env, fit_estimator_distributed, is_main_process\n"
        "    init_from_env()                      # reads torchrun's RANK/WORLD_SIZE; NCCL on GPU, gloo on CPU\n"
        "    fit_estimator_distributed(est, adata) # instead of est.fit(adata)\n"
        "    if is_main_process(): write the outputs as usual\n"
        "Launch: torchrun --standalone --nproc_per_node=N -m dhaka embed INPUT --out latent.csv --distributed\n"
        "(or, without the CLI: torchrun ... -m dhaka.distributed INPUT --out DIR --params '{json}')"
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dhaka.distributed",
                                 description="Data-parallel Dhaka training; launch with torchrun.")
    ap.add_argument("input")
    ap.add_argument("--out", required=True, help="output folder (written by rank 0)")
    ap.add_argument("--params", default="{}", help="JSON object of Dhaka(...) settings")
    ap.add_argument("--backed", action="store_true", help="train out of core from an .h5ad")
    ap.add_argument("--no-save-model", action="store_true")
    a = ap.parse_args(argv)
    threads = os.environ.get("DHAKA_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    params = json.loads(a.params)
    if isinstance(params.get("structure"), list):
        params["structure"] = tuple(params["structure"])
    info = run_distributed_fit(params, a.input, a.out, backed=a.backed, save_model=not a.no_save_model)
    if info["rank"] == 0:
        print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
