"""The training loop: minibatches, optimiser, clip norm, KL warm-up, early stopping.

Runs in whatever thread calls it. It reports every epoch to ``callback`` (an
:class:`EpochReport`) and checks ``stop_event`` between minibatches, so a Stop
button ends training within one epoch and keeps the model as it is. It never
touches Streamlit.

What a caller may change without replacing the loop comes in as arguments, its seams
(:class:`TrainingSeams`): the module that computes a training minibatch's loss (a
data-parallel wrapper), the batch-norm synchronisation and the source of the
reparameterisation noise. :mod:`dhaka.distributed` passes all three.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from contextlib import AbstractContextManager as ContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Literal

import numpy as np
import scipy.sparse as sp
import torch

from dhaka.model import VAE

Optimizer = Literal["rmsprop", "adam"]
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class EpochReport:
    """What one finished epoch looked like; the app's live curves read these fields."""

    epoch: int
    n_epochs: int
    loss: float
    reconstruction: float
    kl: float
    val_loss: float
    beta: float
    seconds: float
    elapsed: float
    eta: float
    start: int = 0
    n_starts: int = 1
    stage: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: VAE
    history: list[EpochReport] = field(default_factory=list)
    stopped: bool = False
    best_epoch: int = 0
    early_stopped: bool = False


@dataclass(frozen=True)
class TrainingSeams:
    """The parts of :func:`fit_vae` a caller may replace, passed as its keyword arguments.

    Attributes
    ----------
    wrap_model
        ``wrap_model(model)`` is a context manager, entered around the loop, that yields the
        module whose ``loss(x, beta=, free_bits=, eps=, batch=)`` trains a minibatch (e.g. a
        data-parallel wrapper). Validation, snapshots and the result use ``model`` itself.
    batch_norm_sync
        ``batch_norm_sync(model)`` is a context manager, entered around the loop, within which
        the model's batch normalisation uses statistics of the whole (global) batch.
    noise
        ``noise(n_cells, latent_dim, device)`` draws the reparameterisation noise of a training
        minibatch; ``None`` lets the model draw its own.
    """

    wrap_model: Callable[[VAE], ContextManager[torch.nn.Module]] | None = None
    batch_norm_sync: Callable[[torch.nn.Module], ContextManager[Any]] | None = None
    noise: Callable[[int, int, torch.device], torch.Tensor] | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {"wrap_model": self.wrap_model, "batch_norm_sync": self.batch_norm_sync, "noise": self.noise}


class DivergenceError(RuntimeError):
    """Loss became NaN or infinite; ``result`` holds the last good model."""

    def __init__(self, message: str, result: TrainResult) -> None:
        super().__init__(message)
        self.result = result


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use device='auto' or 'cpu'")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)


def is_row_source(X: Any) -> bool:
    """A row source is any object with ``shape`` and ``take_rows(idx) -> float32 ndarray``.

    ``dhaka.backed.BackedRows`` (a backed .h5ad read in row batches) is one; fit_vae and
    encode then read only the rows of each minibatch.
    """
    return hasattr(X, "take_rows") and hasattr(X, "shape")


def _as_input(X: Any) -> tuple[Any, torch.Tensor | None]:
    """(matrix, dense tensor or None): CSR stays CSR, row sources stay as they are."""
    if is_row_source(X):
        return X, None
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float32), None
    X = np.ascontiguousarray(X, dtype=np.float32)
    return X, torch.from_numpy(X)


def batch_codes(batch: Any, n_rows: int, n_batch: int) -> torch.Tensor | None:
    """The rows' batch codes (integers in ``[0, n_batch)``) as a tensor, checked against the model's ``n_batch``."""
    if batch is None:
        if n_batch:
            raise ValueError(f"the model has {n_batch} batch categories: pass batch= (each row's batch code)")
        return None
    if not n_batch:
        raise ValueError("batch= was given but the model has no batch categories (build it with n_batch=)")
    codes = np.asarray(batch)
    if codes.shape != (n_rows,) or codes.dtype.kind not in "iu":
        raise ValueError(f"batch must hold one integer code per row ({n_rows}), "
                         f"got {codes.dtype} of shape {codes.shape}")
    if n_rows and (codes.min() < 0 or codes.max() >= n_batch):
        raise ValueError(f"batch codes must lie in [0, {n_batch}), got {codes.min()}..{codes.max()}")
    return torch.from_numpy(codes.astype(np.int64))


def _batches(X: Any, rows: np.ndarray, batch_size: int, device: torch.device,
             dense_t: torch.Tensor | None,
             codes: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield float32 minibatches of ``rows`` with their batch codes (``None`` without);
    a sparse matrix is densified one batch at a time."""
    pin = device.type == "cuda"
    source = is_row_source(X)
    for i in range(0, len(rows), batch_size):
        idx = rows[i:i + batch_size]
        if dense_t is not None:
            xb = dense_t[torch.from_numpy(idx)]
        elif source:
            xb = torch.from_numpy(np.asarray(X.take_rows(idx), dtype=np.float32))
        else:
            xb = torch.from_numpy(np.asarray(X[idx].toarray(), dtype=np.float32))
        if pin:
            xb = xb.pin_memory()
        yield xb.to(device, non_blocking=True), None if codes is None else codes[torch.from_numpy(idx)].to(device)


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of ``n`` rows; validation is empty when too small."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if n - n_val < 2 or n_val < 2:
        return np.sort(perm), np.array([], dtype=np.int64)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit_vae(
    X: np.ndarray | sp.spmatrix,
    *,
    model: VAE,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    clip_norm: float | None = 5.0,
    optimizer: Optimizer = "rmsprop",
    kl_warmup: int = 20,
    val_fraction: float = 0.1,
    patience: int | None = 25,
    seed: int = 0,
    device: str = "auto",
    callback: Callable[[EpochReport], None] | None = None,
    stop_event: threading.Event | None = None,
    checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 5,
    start: int = 0,
    n_starts: int = 1,
    precision: Precision = "fp32",
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
    weight_decay: float = 0.0,
    wrap_model: Callable[[VAE], ContextManager[torch.nn.Module]] | None = None,
    batch_norm_sync: Callable[[torch.nn.Module], ContextManager[Any]] | None = None,
    noise: Callable[[int, int, torch.device], torch.Tensor] | None = None,
    batch: np.ndarray | None = None,
) -> TrainResult:
    """Train ``model`` on the rows of ``X`` (cells x selected features, raw preprocessed values).

    Parameters
    ----------
    X
        Dense array or CSR matrix; only minibatches are densified.
    kl_warmup
        Epochs over which the KL weight rises linearly from 0 to 1 (0 = the paper's constant 1).
    val_fraction, patience
        Hold out this fraction of cells; stop when the validation loss has not improved for
        ``patience`` epochs after warm-up, and restore the best weights (``None`` disables).
    stop_event
        Checked between minibatches; when set, training ends and the model is kept as it is.
    checkpoint
        Called with the epoch number every ``checkpoint_every`` epochs (e.g. to save a run).
    precision
        ``"bf16"`` runs the training forward pass and loss under ``torch.autocast`` with
        bfloat16 (weights, optimiser state, validation and ``encode`` stay float32).
        Meant for GPUs; see bench/RESULTS.md for the measured speed and the latent
        difference against fp32.
    wrap_model, batch_norm_sync, noise
        The loop's seams (:class:`TrainingSeams`); ``None`` trains ``model`` in this process alone.
    batch
        Integer batch code of every row (in ``[0, model.n_batch)``) for a model with batch
        categories; the codes travel with their rows through the minibatches and the validation split.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    X, dense_t = _as_input(X)
    if dense_t is not None and dev.type == "cuda" and X.nbytes < 2 * 1024**3:
        dense_t = dense_t.to(dev)
    n = X.shape[0]
    codes = batch_codes(batch, n, model.n_batch)
    train_rows, val_rows = split_rows(n, val_fraction, seed)
    if len(train_rows) < 2:
        raise ValueError(f"need at least 2 cells to train, got {n}")
    model.to(dev)
    if optimizer == "rmsprop":
        opt: torch.optim.Optimizer = torch.optim.RMSprop(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    else:
        raise ValueError(f"optimizer must be 'rmsprop' or 'adam', got {optimizer!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng(seed + 1)
    # BatchNorm cannot normalise a batch of one cell: drop a trailing singleton batch.
    min_batch = 2 if model.batch_norm else 1

    result = TrainResult(model=model)
    with contextlib.ExitStack() as seams:
        step = seams.enter_context(wrap_model(model)) if wrap_model is not None else model
        if batch_norm_sync is not None:
            seams.enter_context(batch_norm_sync(model))
        best_val, best_state, since_best = math.inf, None, 0
        # Snapshots are copied into preallocated tensors (no per-epoch allocation of the whole model).
        good_state = _snapshot(model)
        amp = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())
        t0 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            te = time.perf_counter()
            beta = kl_weight * (min(1.0, epoch / kl_warmup) if kl_warmup > 0 else 1.0)
            model.train()
            perm = train_rows[rng.permutation(len(train_rows))]
            sums = torch.zeros(3, device=dev)
            seen = 0
            for xb, bb in _batches(X, perm, batch_size, dev, dense_t, codes):
                if stop_event is not None and stop_event.is_set():
                    break
                if xb.shape[0] < min_batch:
                    continue
                eps = noise(xb.shape[0], model.latent_dim, dev) if noise is not None else None
                with amp:
                    out = step.loss(xb, beta=beta, free_bits=free_bits, eps=eps, batch=bb)
                opt.zero_grad(set_to_none=True)
                out.total.backward()
                if clip_norm:
                    torch.nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)
                opt.step()
                nb = xb.shape[0]
                sums += torch.stack([out.total.detach(), out.reconstruction.detach(), out.kl.detach()]) * nb
                seen += nb
            if stop_event is not None and stop_event.is_set() and seen == 0:
                result.stopped = True
                break
            loss, rec, kl = (sums / max(seen, 1)).tolist()
            if not all(map(math.isfinite, (loss, rec, kl))):
                model.load_state_dict(good_state)
                model.eval()
                raise DivergenceError(
                    f"training diverged at epoch {epoch} (loss became {loss}); the last good model "
                    "(previous epoch) was kept. Try a lower learning rate or a smaller clip norm.",
                    result,
                )
            val_loss = (_evaluate(model, X, val_rows, batch_size, dev, dense_t, kl_weight=kl_weight,
                                  free_bits=free_bits, codes=codes) if len(val_rows) else float("nan"))
            _snapshot(model, into=good_state)
            elapsed = time.perf_counter() - t0
            report = EpochReport(
                epoch=epoch, n_epochs=epochs, loss=loss, reconstruction=rec, kl=kl, val_loss=val_loss,
                beta=beta, seconds=time.perf_counter() - te, elapsed=elapsed,
                eta=elapsed / epoch * (epochs - epoch), start=start, n_starts=n_starts,
            )
            result.history.append(report)
            if callback is not None:
                callback(report)
            if checkpoint is not None and checkpoint_every and epoch % checkpoint_every == 0:
                checkpoint(epoch)
            if stop_event is not None and stop_event.is_set():
                result.stopped = True
                break
            if patience is not None and len(val_rows) and epoch >= kl_warmup:
                # (best_val starts at inf, and inf - 1e-4 * inf is nan: test finiteness first)
                if not math.isfinite(best_val) or val_loss < best_val - 1e-4 * abs(best_val):
                    best_state = _snapshot(model, into=best_state)
                    best_val, since_best, result.best_epoch = val_loss, 0, epoch
                else:
                    since_best += 1
                    if since_best >= patience:
                        result.early_stopped = True
                        break
    if best_state is not None and not result.stopped:
        model.load_state_dict(best_state)
    if not result.best_epoch:
        result.best_epoch = len(result.history)
    model.eval()
    return result


@torch.no_grad()
def _snapshot(model: torch.nn.Module, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Copy of ``model.state_dict()``; reuses the tensors of ``into`` when given (no allocation)."""
    state = model.state_dict()
    if into is None:
        return {k: v.detach().clone() for k, v in state.items()}
    for k, v in state.items():
        into[k].copy_(v)
    return into


@torch.no_grad()
def _evaluate(model: VAE, X, rows: np.ndarray, batch_size: int, dev: torch.device,
              dense_t: torch.Tensor | None, *, kl_weight: float = 1.0, free_bits: float = 0.0,
              codes: torch.Tensor | None = None) -> float:
    """The training objective at full KL weight on held-out rows, with the posterior mean as z."""
    model.eval()
    total, n = 0.0, 0
    for xb, bb in _batches(X, rows, max(batch_size, 1024), dev, dense_t, codes):
        total += model.loss(xb, beta=kl_weight, free_bits=free_bits, batch=bb).total.item() * xb.shape[0]
        n += xb.shape[0]
    model.train()
    return total / max(n, 1)


@torch.no_grad()
def encode(model: VAE, X: np.ndarray | sp.spmatrix, *, batch_size: int = 2048,
           device: str | torch.device = "cpu", return_var: bool = False, batch: np.ndarray | None = None):
    """Posterior means (and optionally variances) of all rows of ``X``, batch by batch
    (``batch``: each row's batch code, for a model with batch categories)."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model.to(dev).eval()
    X, dense_t = _as_input(X)
    codes = batch_codes(batch, X.shape[0], model.n_batch)
    mus, vars_ = [], []
    for xb, bb in _batches(X, np.arange(X.shape[0]), batch_size, dev, dense_t, codes):
        mu, logvar = model.encode(model.prepare(xb), bb)
        mus.append(mu.float().cpu().numpy())
        vars_.append(logvar.exp().float().cpu().numpy())
    Z = np.concatenate(mus) if mus else np.zeros((0, model.latent_dim), np.float32)
    if return_var:
        return Z, (np.concatenate(vars_) if vars_ else np.zeros_like(Z))
    return Z
