"""A plain, hand-written PyTorch VAE loop: the yardstick for ``dhaka.train.fit_vae``.

Same network as :class:`dhaka.model.VAE` (Linear -> BatchNorm -> ReLU blocks, mu and
log-variance heads, mirrored decoder, Gaussian likelihood with a learned per-gene
log-variance), same optimiser (RMSprop, foreach) and the same minibatch size, but
nothing else: no validation pass, no clipping, no reporting, no state snapshots.
It is written from scratch (not importing dhaka.model) on purpose.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


def _block(sizes):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class PlainVAE(nn.Module):
    def __init__(self, n_input: int, hidden=(1024, 512, 256), latent: int = 3) -> None:
        super().__init__()
        self.enc = _block((n_input, *hidden))
        self.mu = nn.Linear(hidden[-1], latent)
        self.lv = nn.Linear(hidden[-1], latent)
        self.dec = _block((latent, *reversed(hidden)))
        self.out = nn.Linear(hidden[0], n_input)
        self.out_lv = nn.Parameter(torch.zeros(n_input))

    def forward(self, x):
        h = self.enc(x)
        mu, lv = self.mu(h), self.lv(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * lv)
        r = self.out(self.dec(z))
        rec = 0.5 * (((x - r) ** 2) * torch.exp(-self.out_lv) + self.out_lv + math.log(2 * math.pi)).sum(1)
        kl = -0.5 * (1 + lv - mu.pow(2) - lv.exp()).sum(1)
        return (rec + kl).mean()


def plain_epochs(X, *, batch_size: int, epochs: int, hidden=(1024, 512, 256), latent: int = 3,
                 lr: float = 1e-3, seed: int = 0, device: str = "cpu", compile: bool = False,
                 rows: np.ndarray | None = None, amp: str | None = None) -> tuple[list[float], float]:
    """Train ``epochs`` epochs; returns (seconds of each epoch, compile/first-step seconds).

    ``X`` is a dense float32 array or a CSR matrix (densified one batch at a time, the
    obvious way); ``rows`` restricts training to those rows (e.g. fit_vae's training split).
    ``amp="bf16"`` runs forward and loss under ``torch.autocast(dtype=torch.bfloat16)``.
    """
    import contextlib

    def ctx():
        if amp == "bf16":
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = PlainVAE(X.shape[1], hidden, latent).to(dev)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.RMSprop(model.parameters(), lr=lr, foreach=True)
    rows = np.arange(X.shape[0]) if rows is None else np.asarray(rows)
    dense = None if sp.issparse(X) else torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    if dense is not None and dev.type == "cuda":
        dense = dense.to(dev)
    Xc = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else None
    rng = np.random.default_rng(seed)

    def batch(idx):
        if dense is not None:
            return dense[torch.from_numpy(idx)].to(dev, non_blocking=True)
        return torch.from_numpy(Xc[idx].toarray()).to(dev, non_blocking=True)

    t = time.perf_counter()
    warm = rows[:batch_size]
    if len(warm) >= 2:  # first step outside the timing (compilation, allocator warm-up)
        with ctx():
            loss = step_model(batch(warm))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t
    secs = []
    for _ in range(epochs):
        t = time.perf_counter()
        perm = rows[rng.permutation(len(rows))]
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:
                continue
            with ctx():
                loss = step_model(batch(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t)
    return secs, first


def flops_per_cell(n_input: int, hidden=(1024, 512, 256), latent: int = 3) -> int:
    """Same accounting as ``dhaka.model.VAE.flops_per_cell`` (2 x MACs x 3 for fwd + bwd)."""
    sizes = [n_input, *hidden]
    enc = sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) + 2 * hidden[-1] * latent
    dec_sizes = [latent, *reversed(hidden), n_input]
    dec = sum(a * b for a, b in zip(dec_sizes[:-1], dec_sizes[1:]))
    return 2 * 3 * (enc + dec)
