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
* **Batch normalisation** uses the statistics of the whole global batch: for the duration of
  the fit, every ``BatchNorm1d`` layer of the VAE is swapped for a :class:`GlobalBatchNorm1d`
  sharing its weights and running statistics, which all-reduces (differentiably) the
  per-feature sums and the centred sums of squares (what ``SyncBatchNorm`` does on GPUs; it
  does not run on CPU, this does). Running statistics are updated as ``BatchNorm1d`` would
  (unbiased variance, momentum).
* **Sampling noise**: the reparameterisation noise of the global batch is drawn with the
  same seeded generator on every rank and each rank takes its rows, so the ``z`` of every
  cell is the one single-process training draws.

None of this replaces a library function: :func:`data_parallel_seams` returns the three
seams of :func:`dhaka.train.fit_vae` (the DDP wrapper, the batch-norm synchronisation, the
noise source) and the estimator hands them to every ``fit_vae`` of a fit
(``Dhaka.fit(X, seams=...)``). Other threads of the process train as before.
* **Reported losses, validation and early stopping** use all-reduced global values (the
  validation pass runs whole on every rank), so every rank takes the same decisions and
  the :class:`dhaka.train.EpochReport` history equals the single-process one.

``tests/test_distributed.py`` runs ``torchrun --nproc_per_node=2`` (gloo) against a
single-process fit of the same seeded data and settings and asserts latent coordinates
within 1e-4 and loss histories within 1e-5 relative. The residual is float summation
order (two halves all-reduced instead of one sum), which chaotic training amplifies
slowly over many epochs: after hundreds of epochs expect small differences in the
coordinates, not in the clusters.

Command line (``python -m dhaka embed ... --distributed`` runs :func:`fit_estimator_distributed`)::

    torchrun --standalone --nproc_per_node=2 -m dhaka.distributed INPUT --out DIR --params '{"epochs": 50}'
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["init_from_env", "is_distributed", "is_main_process", "world", "shutdown", "ddp_fit_vae", "data_parallel_seams",
           "GlobalBatchNorm1d", "fit_estimator_distributed", "run_distributed_fit", "torchrun_command"]


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


def shutdown() -> None:
    """Wait for every rank, then destroy the process groups (the default one and each fit's).

    Call it in every rank before the process ends: a rank that exits with its gloo groups
    alive can abort in their destructors ("terminate called without an active exception",
    SIGABRT) while another rank still works, and torchrun then fails the whole job.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


class _Shared:
    """What the seams of one data-parallel fit share: its process group and this rank's weight."""

    def __init__(self) -> None:
        self.group = None
        self.weight = 1.0  # 0.0 when this rank's rows are a placeholder (no real cells)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d with statistics over the global batch (all ranks), differentiable.

    Built from a ``BatchNorm1d`` by :func:`global_batch_norm`, sharing its parameters and
    running buffers, so training it trains the original layer. In eval mode it is BatchNorm1d.
    """

    def __init__(self, bn: nn.BatchNorm1d, shared: _Shared) -> None:
        super().__init__(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats, device=bn.running_mean.device
                         if bn.running_mean is not None else None)
        if bn.affine:
            self.weight, self.bias = bn.weight, bn.bias
        if bn.track_running_stats:
            self.running_mean, self.running_var = bn.running_mean, bn.running_var
            self.num_batches_tracked = bn.num_batches_tracked
        self.train(bn.training)
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        st = self.shared
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
def global_batch_norm(module: nn.Module, *, shared: _Shared) -> Iterator[None]:
    """Within the block, ``module``'s BatchNorm1d layers are :class:`GlobalBatchNorm1d` views of
    themselves (same parameters and buffers); the original layers are put back afterwards.
    Only this model instance changes: the fit's own copy, no shared class or function."""
    swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm1d:
                parent.add_module(name, GlobalBatchNorm1d(child, shared))
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            parent.add_module(name, child)


def global_noise(n: int, latent_dim: int, device: torch.device) -> torch.Tensor:
    """The global batch's reparameterisation noise, as single-process ``randn_like(std)`` draws it."""
    return torch.randn((n, latent_dim), device=device)


# ---------------------------------------------------------------- DDP wrapper
class _LossModule(nn.Module):
    """What DDP wraps: one rank's share of a global batch -> its loss terms (local means).

    Also returns the per-dimension KL sums of the share, which free bits need (their floor
    applies to the *global* batch mean of each dimension).
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor, beta: float, kw: dict) -> tuple[torch.Tensor, ...]:
        out = self.vae.loss(x, beta=beta, eps=eps, **kw)
        return out.total, out.reconstruction, out.kl, out.kl_terms.float().sum(0)


class _DataParallelLoss(nn.Module):
    """The training-step module :func:`dhaka.train.fit_vae` calls ``loss`` on: it trains this
    rank's share of each global batch through DDP and reports global batch means."""

    def __init__(self, vae: nn.Module, *, device: torch.device, shared: _Shared) -> None:
        super().__init__()
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.latent_dim = vae.latent_dim
        self.rank, self.world_size = world()
        self.shared = shared
        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        # buffers (running stats, input centring) are computed identically on every rank
        self.ddp = DDP(_LossModule(vae.to(device)), device_ids=ids, broadcast_buffers=False)

    def loss(self, x: torch.Tensor, *, beta: float = 1.0, free_bits: float = 0.0, eps: torch.Tensor | None = None,
             batch: torch.Tensor | None = None):
        import torch.distributed as dist

        from dhaka.model import LossOutput

        n = x.shape[0]
        if eps is None:
            eps = global_noise(n, self.latent_dim, x.device)
        lo, hi = _split(n, self.world_size, self.rank)
        n_local = hi - lo
        if n_local == 0:  # fewer cells than ranks: a placeholder row that counts for nothing
            lo, hi = 0, 1
        self.shared.weight = 1.0 if n_local else 0.0
        # free bits act on the global batch's per-dimension KL mean: the share computes plain KL
        # and the floor is applied below from all-reduced per-dimension sums
        kw = {"free_bits": 0.0, **({"batch": batch[lo:hi]} if batch is not None else {})}  # the share's batch codes
        total, rec, kl, kl_dim_sum = self.ddp(x[lo:hi], eps[lo:hi], beta, kw)
        d = kl_dim_sum.shape[0]
        sums = torch.cat([torch.stack([rec.detach(), kl.detach()]).float() * n_local,
                          kl_dim_sum.detach().float() * (1.0 if n_local else 0.0)])
        dist.all_reduce(sums, group=self.shared.group)
        g_rec, g_kl = sums[0] / n, sums[1] / n
        g_kl_dim = sums[2:2 + d] / n
        free_bits = float(free_bits or 0.0)
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
def _data_parallel(vae: nn.Module, *, shared: _Shared, device: str | torch.device) -> Iterator[nn.Module]:
    """The ``wrap_model`` seam: a process group for this fit and the DDP training-step module."""
    import torch.distributed as dist

    from dhaka.train import resolve_device

    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    shared.group = dist.new_group(backend=dist.get_backend())  # keeps our small collectives apart from DDP's
    try:
        yield _DataParallelLoss(vae, device=dev, shared=shared)
    finally:
        dist.barrier()


def data_parallel_seams(*, device: str | torch.device = "auto") -> Any:
    """The :class:`dhaka.train.TrainingSeams` that make ``fit_vae`` train data-parallel in the
    current process group (call ``fit_vae`` / ``Dhaka.fit`` with them in every rank)."""
    from dhaka.train import TrainingSeams

    shared = _Shared()
    return TrainingSeams(wrap_model=functools.partial(_data_parallel, shared=shared, device=device),
                         batch_norm_sync=functools.partial(global_batch_norm, shared=shared),
                         noise=global_noise)


def ddp_fit_vae(X: Any, *, model: nn.Module, device: str = "auto", **kwargs: Any):
    """:func:`dhaka.train.fit_vae` run data-parallel in the current process group.

    Call it in every rank with the same data and arguments. Returns the
    :class:`~dhaka.train.TrainResult` with ``model`` the plain (trained) VAE.
    """
    from dhaka.train import fit_vae

    if not is_distributed():
        return fit_vae(X, model=model, device=device, **kwargs)
    return fit_vae(X, model=model, device=device, **kwargs, **data_parallel_seams(device=device).as_kwargs())


def fit_estimator_distributed(est: Any, X: Any, **fit_params: Any) -> Any:
    """``est.fit(X)`` with data-parallel training; call in every rank (after :func:`init_from_env`)."""
    if not is_distributed():
        return est.fit(X, **fit_params)
    return est.fit(X, seams=data_parallel_seams(device=est.device), **fit_params)


# ------------------------------------------------------------------ entry points
def run_distributed_fit(estimator_params: dict, X_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                        backed: bool = False, save_model: bool = True, batch_key: str | None = None) -> dict:
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
    batch_key
        Correct for the batch in this ``obs`` column (:func:`dhaka.pipeline.run`; in-memory input only).

    Returns
    -------
    dict
        ``{"rank", "world_size", "backend", "n_cells", "epochs", "seconds"}``.
    """
    import time

    import torch.distributed as dist

    from dhaka.estimator import Dhaka
    from dhaka.pipeline import run

    rank, size = init_from_env()
    t0 = time.perf_counter()
    est = Dhaka(**estimator_params)
    seams = data_parallel_seams(device=est.device) if is_distributed() else None
    if backed:
        data, obs_names = X_path, None
    else:
        from dhaka.io import read

        data = read(X_path)
        obs_names = list(data.obs_names)
    result = run(data, estimator=est, backed=backed, seams=seams, main_process=rank == 0, batch_key=batch_key)
    Z = result.latent
    seconds = time.perf_counter() - t0
    info = {"rank": rank, "world_size": size, "backend": dist.get_backend() if dist.is_initialized() else "none",
            "n_cells": None if Z is None else int(Z.shape[0]), "epochs": len(est.history_), "seconds": seconds}
    if rank == 0:
        from dhaka.io import write_latent_csv

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "latent.npy", Z)
        write_latent_csv(out / "latent.csv", Z, obs_names=obs_names or [str(i) for i in range(len(Z))],
                         labels=result.labels)
        (out / "history.json").write_text(json.dumps(est.history_, default=float))
        (out / "run.json").write_text(json.dumps(info))
        if save_model:
            est.save(out / "model")
    shutdown()
    return info


def torchrun_command(nproc: int, *args: str, standalone: bool = True) -> list[str]:
    """``[python, -m, torch.distributed.run, --standalone, --nproc_per_node=N, -m, dhaka.distributed, *args]``."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if standalone:
        cmd.append("--standalone")
    return cmd + [f"--nproc_per_node={int(nproc)}", "-m", "dhaka.distributed", *args]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dhaka.distributed",
                                 description="Data-parallel Dhaka training; launch with torchrun.")
    ap.add_argument("input")
    ap.add_argument("--out", required=True, help="output folder (written by rank 0)")
    ap.add_argument("--params", default="{}", help="JSON object of Dhaka(...) settings")
    ap.add_argument("--backed", action="store_true", help="train out of core from an .h5ad")
    ap.add_argument("--no-save-model", action="store_true")
    ap.add_argument("--batch-key", metavar="COLUMN", default=None, help="correct for the batch in this obs column")
    a = ap.parse_args(argv)
    threads = os.environ.get("DHAKA_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    params = json.loads(a.params)
    if isinstance(params.get("structure"), list):
        params["structure"] = tuple(params["structure"])
    info = run_distributed_fit(params, a.input, a.out, backed=a.backed, save_model=not a.no_save_model,
                               batch_key=a.batch_key)
    if info["rank"] == 0:
        print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
