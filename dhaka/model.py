"""The Dhaka variational autoencoder (torch only).

Shape follows pytorch/examples ``vae/main.py``: ``encode``, ``reparameterize``,
``decode``, ``forward``, and a loss whose terms are the two parts of the
evidence lower bound (Kingma & Welling 2014, eq. 10)::

    loss = E_q(z|x)[-log p(x|z)]  +  beta * KL(q(z|x) || N(0, I))

Differences from the paper's literal description, and why (see docs/model.md):

* ``likelihood="gaussian"`` (default) models the centred log expression with a
  per-gene learned variance. The paper's sigmoid/Bernoulli output on [0, 1]
  scaled data (``likelihood="bernoulli"``, kept for the "paper" preset)
  collapses on realistic count data: the decoder learns the gene means and the
  posterior falls back onto the prior.
* Optional batch normalisation after each hidden linear layer keeps the ReLU
  units alive with RMSprop at learning rates where the plain network stalls.
* The input affine (per-gene centre and scale: the paper's relative
  expression) lives in the model as buffers, so a saved model carries it.
* Batch correction (beyond the paper, optional): with ``n_batch`` categories each cell's one-hot
  batch is appended to the encoder's input (after the input projection) and to the decoder's
  input (the latent), a conditional VAE as in scVI (Lopez et al. 2018), so the latent need not
  carry what the batch explains. Without batches nothing of the model changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import math

import torch
from torch import nn
from torch.nn import functional as F

PRESETS: dict[str, tuple[int, ...]] = {
    "deep": (1024, 512, 256),   # the paper's Input-1024-512-256-latent
    "shallow": (1024,),         # the paper's Input-1024-latent
}

Likelihood = Literal["gaussian", "mse", "bernoulli"]
_LOG_2PI = math.log(2.0 * math.pi)


def resolve_structure(structure: str | Sequence[int]) -> tuple[int, ...]:
    """Hidden-layer widths from a preset name or an explicit list."""
    if isinstance(structure, str):
        key = structure.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        parts = [p for p in key.replace(";", ",").replace("-", ",").split(",") if p.strip()]
        try:
            widths = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"structure {structure!r} is neither a preset ({', '.join(PRESETS)}) "
                "nor a comma-separated list of layer widths such as '512,128'"
            ) from None
    else:
        widths = tuple(int(w) for w in structure)
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"structure needs at least one hidden layer of positive width, got {structure!r}")
    return widths


@dataclass
class LossOutput:
    """Per-cell mean of the loss terms of one minibatch (tensors)."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    #: KL of every cell and latent dimension (cells x latent), before the batch mean.
    kl_terms: torch.Tensor | None = None


def _mlp(sizes: Sequence[int], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers.append(nn.Linear(n_in, n_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Fully connected VAE with a Gaussian posterior q(z|x) = N(mu, diag(exp(logvar))).

    Parameters
    ----------
    n_input
        Number of input features (selected genes or copy-number bins).
    hidden
        Widths of the encoder's hidden layers; the decoder mirrors them.
    latent_dim
        Dimension of the latent space (3 in the paper).
    likelihood
        ``"gaussian"`` (learned per-feature variance), ``"mse"`` (unit variance)
        or ``"bernoulli"`` (sigmoid output, the paper's choice; inputs in [0, 1]).
    batch_norm
        Batch normalisation after each hidden linear layer.
    n_pcs
        Width of the fixed projection the encoder reads its input through (``None``: none).
    nuisance_axis
        Whether the model holds a unit feature axis that :meth:`prepare` projects out.
    n_batch
        Number of batch categories (0: none); every pass then takes each cell's batch code.
    """

    def __init__(
        self,
        n_input: int,
        *,
        hidden: Sequence[int] = PRESETS["deep"],
        latent_dim: int = 3,
        likelihood: Likelihood = "gaussian",
        batch_norm: bool = True,
        n_pcs: int | None = None,
        nuisance_axis: bool = False,
        n_batch: int = 0,
    ) -> None:
        super().__init__()
        if likelihood not in ("gaussian", "mse", "bernoulli"):
            raise ValueError(f"likelihood must be 'gaussian', 'mse' or 'bernoulli', got {likelihood!r}")
        self.n_input = int(n_input)
        self.hidden = tuple(int(h) for h in hidden)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood
        self.batch_norm = bool(batch_norm)
        self.register_buffer("center", torch.zeros(n_input))
        self.register_buffer("scale", torch.ones(n_input))
        # Optional fixed linear projection of the encoder's input onto principal axes
        # (filled by set_projection); the decoder still reconstructs every input feature.
        self.n_pcs = int(n_pcs) if n_pcs else None
        if self.n_pcs:
            self.register_buffer("projection", torch.zeros(n_input, self.n_pcs))
        # Optional unit feature axis removed from the prepared values (filled by set_nuisance_axis):
        # neither the encoder reads nor the decoder reconstructs variation along it.
        self.nuisance_axis = bool(nuisance_axis)
        if self.nuisance_axis:
            self.register_buffer("nuisance", torch.zeros(n_input))
        self.n_batch = int(n_batch)
        self.encoder = _mlp(((self.n_pcs or n_input) + self.n_batch, *self.hidden), batch_norm)
        self.mu = nn.Linear(self.hidden[-1], latent_dim)
        self.logvar = nn.Linear(self.hidden[-1], latent_dim)
        self.decoder = _mlp((latent_dim + self.n_batch, *reversed(self.hidden)), batch_norm)
        self.out = nn.Linear(self.hidden[0], n_input)
        # Per-feature log variance of p(x|z) for the Gaussian likelihood.
        self.out_logvar = nn.Parameter(torch.zeros(n_input), requires_grad=likelihood == "gaussian")

    def set_input_affine(self, center: torch.Tensor, scale: torch.Tensor) -> None:
        """Store the per-feature centre and scale applied to raw inputs."""
        self.center.copy_(torch.as_tensor(center, dtype=self.center.dtype))
        self.scale.copy_(torch.as_tensor(scale, dtype=self.scale.dtype))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (preprocessed, selected) input -> the centred/scaled values the VAE models
        (with the nuisance axis projected out when the model has one)."""
        y = (x - self.center) / self.scale
        if self.nuisance_axis:
            y = y - (y @ self.nuisance)[:, None] * self.nuisance
        return y

    def set_nuisance_axis(self, axis: torch.Tensor) -> None:
        """Store the unit feature axis that :meth:`prepare` projects out."""
        self.nuisance.copy_(torch.as_tensor(axis, dtype=self.nuisance.dtype))

    def set_projection(self, loadings: torch.Tensor) -> None:
        """Store the (n_input x n_pcs) principal axes the encoder reads its input through."""
        self.projection.copy_(torch.as_tensor(loadings, dtype=self.projection.dtype))

    def with_batch(self, h: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        """``h`` with each cell's one-hot batch appended (``batch``: integer codes; ``None`` without batches)."""
        if not self.n_batch:
            if batch is not None:
                raise ValueError("this model was trained without batch correction; leave the batch out")
            return h
        if batch is None:
            raise ValueError(f"this model was trained with batch correction ({self.n_batch} batches): "
                             "pass each cell's batch")
        return torch.cat([h, F.one_hot(batch.long(), self.n_batch).to(h.dtype)], dim=1)

    def encode(self, x: torch.Tensor, batch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self.with_batch(x @ self.projection if self.n_pcs else x, batch))
        return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = mu + eps * sigma; ``eps`` standard normal noise, drawn here unless given."""
        std = torch.exp(0.5 * logvar)
        if eps is None:
            return mu + torch.randn_like(std) * std
        return mu + eps.to(mu.dtype) * std

    def decode(self, z: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x|z) (logits for the Bernoulli likelihood)."""
        return self.out(self.decoder(self.with_batch(z, batch)))

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None,
                batch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, batch)
        z = self.reparameterize(mu, logvar, eps) if self.training else mu
        return self.decode(z, batch), mu, logvar

    def loss(self, x_raw: torch.Tensor, *, beta: float = 1.0, free_bits: float = 0.0,
             eps: torch.Tensor | None = None, batch: torch.Tensor | None = None) -> LossOutput:
        """Negative ELBO per cell for a minibatch of raw (selected) inputs.

        ``eps`` is the reparameterisation noise (cells x latent) when the caller draws it
        (data-parallel training draws the global batch's); by default the model draws it.
        ``batch``: the cells' batch codes, for a model with ``n_batch`` categories.

        ``free_bits`` (nats per latent dimension, Kingma et al. 2016) stops the optimiser from
        pushing a dimension's batch-mean KL below that floor: with weak signal in many noise
        genes, the plain ELBO prefers to switch the latent off (posterior collapse).
        The reported ``kl`` is always the true KL.
        """
        x = self.prepare(x_raw)
        recon, mu, logvar = self(x, eps, batch)
        if self.likelihood == "bernoulli":
            rec = F.binary_cross_entropy_with_logits(recon, x.clamp(0.0, 1.0), reduction="none").sum(1)
        elif self.likelihood == "mse":
            rec = 0.5 * ((x - recon) ** 2).sum(1)
        else:
            lv = self.out_logvar.clamp(-7.0, 5.0)
            rec = 0.5 * (((x - recon) ** 2) * torch.exp(-lv) + lv + _LOG_2PI).sum(1)
        # KL(N(mu, sigma^2) || N(0, 1)), Kingma & Welling 2014, Appendix B.
        kl_dim = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())
        rec_m, kl_m = rec.mean(), kl_dim.sum(1).mean()
        kl_opt = kl_dim.mean(0).clamp(min=free_bits).sum() if free_bits > 0 else kl_m
        return LossOutput(total=rec_m + beta * kl_opt, reconstruction=rec_m, kl=kl_m, kl_terms=kl_dim)

    def flops_per_cell(self) -> int:
        """Multiply-add FLOPs of one training step per cell (forward + backward ~ 3x forward)."""
        sizes = [(self.n_pcs or self.n_input) + self.n_batch, *self.hidden]
        enc = (self.n_input * self.n_pcs if self.n_pcs else 0) + sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) + 2 * self.hidden[-1] * self.latent_dim
        dec_sizes = [self.latent_dim + self.n_batch, *reversed(self.hidden), self.n_input]
        dec = sum(a * b for a, b in zip(dec_sizes[:-1], dec_sizes[1:]))
        return 2 * 3 * (enc + dec)
