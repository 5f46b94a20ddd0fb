"""The public estimator: ``Dhaka(...).fit_transform(X)``, scikit-learn style.

``__init__`` only stores parameters; ``get_params()`` is therefore the exact
record of a run's settings. Learned attributes end in ``_``. One fitted object
holds everything needed to embed new cells: preprocessing constants, selected
genes (by name when names exist), the model weights and the input centring.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from dhaka import __version__, cpu
from dhaka.batch import codes_for, fit_codes
from dhaka.clusterers import check_start_criterion, choose_start, resolve
from dhaka.library_axis import LIBRARY_R2, covariate_axis, deflated, within_clusters
from dhaka.progress import fit_progress
from dhaka.preprocess import LEGACY_SETTINGS, PREPROCESSOR_FORMAT, Preprocessor, PreparedRows
from dhaka.store import MODEL_FILES, atomic_write_dir, check_model_dir, is_occupied  # noqa: F401 - MODEL_FILES re-exported

# Settings of the paper as we read it (Rashid et al.): sigmoid/Bernoulli output on [0, 1]-scaled
# log expression, no normalisation layers, no KL warm-up, no early stopping, RMSprop 1e-4.
# Kept for reproduction; on realistic count data it collapses (bench/RESULTS.md).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": dict(structure="deep", likelihood="bernoulli", scale="minmax", relative=False, batch_norm=False,
                  encoder_pcs=None,
                  kl_warmup=0, patience=None, val_fraction=0.0, lr=1e-4, batch_size=50, epochs=100, clip_norm=2.0,
                  refine=0, winsorize=None, log_pseudocount=1.0, value_transform="log", n_starts=1),
    "fast": dict(structure="shallow", epochs=40, patience=10, kl_warmup=5, n_starts=1),
}



_log = logging.getLogger(__name__)


def _as_matrix(X: Any) -> tuple[Any, list[str] | None, list[str] | None]:
    """(matrix, cell names, feature names) from AnnData, DataFrame, ndarray or sparse."""
    if hasattr(X, "obs_names") and hasattr(X, "var_names") and hasattr(X, "X"):
        return X.X, [str(s) for s in X.obs_names], [str(s) for s in X.var_names]
    if hasattr(X, "columns") and hasattr(X, "index") and hasattr(X, "to_numpy"):
        return X.to_numpy(dtype=np.float32), [str(s) for s in X.index], [str(s) for s in X.columns]
    return X, None, None


def warn_missing(missing: Sequence[str], n_selected: int) -> None:
    """Warn, naming a few, when new cells lack some of a model's selected features (filled with the training mean)."""
    if missing:
        warnings.warn(f"{len(missing)} of {n_selected} selected features are missing from the new data "
                      f"(e.g. {', '.join(missing[:5])}); they were filled with the training mean", stacklevel=3)


@dataclasses.dataclass(frozen=True)
class Embedding:
    """What :meth:`Dhaka.embed` returns: latent coordinates, the encoder's input and the missing features."""

    latent: np.ndarray
    model_input: Any
    missing: list[str]


class Dhaka(TransformerMixin, BaseEstimator):
    """Variational autoencoder embedding of single cells (Dhaka, Rashid et al.).

    Parameters
    ----------
    mode
        ``"expression"`` (scRNA-seq; counts or normalised or log values) or ``"cnv"``
        (copy-number states per bin: not normalised or logged, trimmed per bin, see ``winsorize``).
    latent_dim
        Dimension of the latent space.
    structure
        ``"shallow"`` (1024, the paper's second structure; default because on a few hundred
        cells the deep one over-fits and clusters worse, bench/RESULTS.md), ``"deep"``
        (1024-512-256, the paper's first), or a list of widths.
    n_genes
        Number of features kept by ``gene_selection``; ``"auto"`` = 2000 in expression mode
        (or all if fewer), all bins in copy-number mode; ``None`` = all.
    gene_selection
        ``"cv"`` (coefficient of variation), ``"entropy"``, ``"mean"``, ``"variance"`` or ``"dispersion"``
        (variance over mean, z-scored within bins of mean expression, Satija et al. 2015); under Pearson residuals
        genes are ranked by residual variance.
    value_transform
        ``"auto"`` (default): analytic Pearson residuals (Lause et al. 2021) on raw counts in expression
        mode, which take library size and the mean-variance relation out of the values (on independent
        Splatter data they kept groups the log lost: bench/RESULTS.md); other input (TPM-like, log, copy
        number) gets the normalise / log steps. ``"log"``: those steps for raw counts too; ``"pearson"``:
        the residuals, refused with a reason on other input.
        :func:`dhaka.preprocess.resolve_transform`.
    normalize, log
        ``"auto"`` follows :func:`dhaka.preprocess.detect_kind`; ``True``/``False`` force.
    log_pseudocount
        The log step computes log2(1 + x / log_pseudocount): 1 is log2(x + 1); a larger value is the
        shifted logarithm (Ahlmann-Eltze & Huber 2023), which damps the noise of small counts.
        ``"auto"`` (default): 2 on raw counts in expression mode, 1 on anything else (TPM/CPM-like
        values, copy number); :func:`dhaka.preprocess.resolve_pseudocount`.
    winsorize
        Trim each feature to its q and 1 - q quantiles over the training cells (after the log step;
        new cells get the training bounds); ``None`` = off. ``"auto"`` (default): 0.02 in copy-number
        mode, where events carried by fewer than ~2 % of the cells (private events, state-call errors,
        single-cell amplifications) otherwise dominate the input while every clone of more than 2 %
        keeps its states; off for expression. :func:`dhaka.preprocess.resolve_winsorize`.
    relative
        Centre each gene over cells (the paper's relative expression).
    scale
        ``"global"`` divides all genes by one overall standard deviation (keeps their relative
        weight), ``"gene"`` gives each gene unit variance, ``"none"``, or ``"minmax"`` to [0, 1]
        (the paper's, for the Bernoulli likelihood).
    likelihood
        ``"gaussian"`` with per-gene learned variance (default), ``"mse"`` or ``"bernoulli"``.
    batch_norm
        Batch normalisation in the hidden layers.
    encoder_pcs
        The encoder reads its input through the top principal axes of the (centred, scaled)
        training matrix, a fixed linear layer saved with the model; the decoder still
        reconstructs every selected gene. With weak group signal spread over many noisy genes
        the paper's direct encoder (``None``) learns noise instead of groups (bench/RESULTS.md).
    library_axis
        On raw counts (where the pipeline normalises library sizes), the gene axis along which
        the model's input follows the cells' log library size (each gene's regression
        coefficient on it) can be projected out of what the encoder reads and the decoder
        reconstructs (the encoder's principal axes are then orthogonal to it): normalisation then
        log leaves library size in the data wherever dropout depends on depth, and a 3-D latent
        can spend a dimension on it. ``"remove"`` always, ``"keep"`` never, ``"auto"`` (default)
        repeats a fit with the axis removed when its latent explains more than
        :data:`LIBRARY_R2` of the log library size both overall and within its own clusters
        (a depth gradient; groups that differ in library size do not count), for that fit and
        the ones after it (``refinement_`` records ``library_r2``, ``library_r2_within`` and
        ``library_axis``). Normalised or log input is used as it is (no library size to read), and
        so are prepared rows (:class:`dhaka.preprocess.PreparedRows`, out of core).
        bench/RESULTS.md, independent data.
    epochs, batch_size, lr, optimizer, clip_norm
        Training settings (RMSprop as in the paper; global gradient-norm clipping).
        ``batch_size="auto"`` takes the power of two nearest n_cells / 8, between 32 and 512:
        small data sets get enough optimiser steps per epoch, large ones keep the matrix
        multiplications big enough to run near the machine's peak.
    weight_decay
        L2 penalty on the weights (optimiser weight decay).
    kl_warmup
        Epochs over which the KL weight rises from 0 to ``kl_weight`` (0 disables).
    kl_weight
        Final weight of the KL term (beta; 1 is the plain ELBO).
    free_bits
        Floor, in nats per latent dimension, below which the KL is not penalised (prevents
        posterior collapse when the signal is weak among many noise genes).
    val_fraction, patience
        Held-out fraction for early stopping, and epochs without improvement before stopping.
    refine
        Rounds of latent-guided gene refinement after the first fit: the genes whose variance
        the latent space explains beyond chance (linear R^2 against its Beta null, Bonferroni at
        ``refine_alpha``; :func:`dhaka.preprocess.select_by_latent`) are chosen among *all*
        features and the model is refitted on them. ``"auto"`` = 2 in expression mode, 0 in
        copy-number mode (all bins are kept there). On the paper's simulation with 2500 noise
        genes it lifts ARI from 0.24 to ~1.0 (bench/RESULTS.md). Stops early when the selection
        no longer changes or nothing is significant. 0 = the paper's single fit.
    refine_alpha
        Family-wise significance level of the refinement's gene test.
    refine_epochs
        Most epochs of each fit that only chooses genes for the next one (every fit but the last);
        ``None``: ``epochs``. Where such a fit's selection turns out final (unchanged, or nothing
        significant), the last fit is trained in full on the same genes.
    n_starts
        Random starts of the final fit (refinement rounds train one start each); ``start_criterion``
        chooses the one kept. The default, 3 starts kept by agreement, is what the seed-stability tables of
        bench/RESULTS.md (section ``stability``) support: on real data one start gave ARI 0.54-0.82 over five
        seeds, three kept the spread within about 0.1 at about 1.6-2x the training time.
    start_criterion
        How the kept start is chosen among ``n_starts``: ``"agreement"``, the start whose cluster call
        agrees best (mean ARI) with the other starts' calls, the medoid of the calls (with two starts,
        where agreement cannot tell them apart, silhouette decides); ``"silhouette"``, the start whose
        GMM clusters have the best silhouette (compact clusters rather than true ones).
    seed
        Seed of everything random (splits, initialisation, minibatch order).
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    precision
        ``"bf16"`` trains under bfloat16 autocast (for GPUs; weights and the latent stay float32).
    n_threads
        CPU threads of torch, OpenMP/BLAS and numba for the duration of ``fit`` (restored after;
        :func:`dhaka.cpu.limit_threads`). ``None``: the job's share in the app, else
        ``DHAKA_THREADS``, else the CPUs this process may use (affinity and cgroup quota) less the
        cores other programs keep busy at the start. The count used is ``n_threads_``; the same
        seed and count give the same model bit for bit.
    """

    def __init__(
        self,
        mode: Literal["expression", "cnv"] = "expression",
        latent_dim: int = 3,
        structure: str | Sequence[int] = "shallow",
        n_genes: int | Literal["auto"] | None = "auto",
        gene_selection: Literal["cv", "entropy", "mean", "variance", "dispersion"] = "cv",
        normalize: bool | Literal["auto"] = "auto",
        log: bool | Literal["auto"] = "auto",
        log_pseudocount: float | Literal["auto"] = "auto",
        winsorize: float | Literal["auto"] | None = "auto",
        value_transform: Literal["auto", "log", "pearson"] = "auto",
        relative: bool = True,
        scale: Literal["global", "gene", "none", "minmax"] = "global",
        likelihood: Literal["gaussian", "mse", "bernoulli"] = "gaussian",
        batch_norm: bool = True,
        encoder_pcs: int | None = 50,
        library_axis: Literal["auto", "remove", "keep"] = "auto",
        epochs: int = 200,
        batch_size: int | Literal["auto"] = "auto",
        lr: float = 1e-3,
        optimizer: Literal["rmsprop", "adam"] = "rmsprop",
        clip_norm: float | None = 5.0,
        weight_decay: float = 0.0,
        kl_warmup: int = 20,
        kl_weight: float = 1.0,
        free_bits: float = 0.0,
        val_fraction: float = 0.1,
        patience: int | None = 20,
        refine: int | Literal["auto"] = "auto",
        refine_alpha: float = 0.01,
        refine_epochs: int | None = None,
        n_starts: int = 3,
        start_criterion: Literal["agreement", "silhouette"] = "agreement",
        seed: int = 0,
        device: str = "auto",
        precision: Literal["fp32", "bf16"] = "fp32",
        n_threads: int | None = None,
    ) -> None:
        self.mode = mode
        self.latent_dim = latent_dim
        self.structure = structure
        self.n_genes = n_genes
        self.gene_selection = gene_selection
        self.normalize = normalize
        self.log = log
        self.log_pseudocount = log_pseudocount
        self.winsorize = winsorize
        self.value_transform = value_transform
        self.relative = relative
        self.scale = scale
        self.likelihood = likelihood
        self.batch_norm = batch_norm
        self.encoder_pcs = encoder_pcs
        self.library_axis = library_axis
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.weight_decay = weight_decay
        self.kl_warmup = kl_warmup
        self.kl_weight = kl_weight
        self.free_bits = free_bits
        self.val_fraction = val_fraction
        self.patience = patience
        self.refine = refine
        self.refine_alpha = refine_alpha
        self.refine_epochs = refine_epochs
        self.n_starts = n_starts
        self.start_criterion = start_criterion
        self.seed = seed
        self.device = device
        self.precision = precision
        self.n_threads = n_threads

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: Literal["default", "paper", "fast"], **overrides: Any) -> "Dhaka":
        """An estimator with a named set of settings (``"paper"`` reproduces the publication's)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = False
        tags.transformer_tags.preserves_dtype = ["float32"]  # latent coordinates are float32
        return tags

    # ------------------------------------------------------------ preprocessing
    def validate_params(self) -> None:
        """Refuse settings that cannot work, naming the setting (``fit`` calls it first)."""
        self.make_preprocessor()
        if int(self.latent_dim) < 1:
            raise ValueError(f"latent_dim must be at least 1, got {self.latent_dim}")
        if int(self.n_starts) < 1:
            raise ValueError(f"n_starts must be at least 1, got {self.n_starts}")
        check_start_criterion(self.start_criterion)
        if not (self.refine == "auto" or (isinstance(self.refine, (int, np.integer))
                                          and not isinstance(self.refine, bool) and self.refine >= 0)):
            raise ValueError(f"refine must be 'auto' or a number of rounds >= 0, got {self.refine!r}")
        if self.library_axis not in ("auto", "remove", "keep"):
            raise ValueError(f"library_axis must be 'auto', 'remove' or 'keep', got {self.library_axis!r}")
        if not 0 < float(self.refine_alpha) < 1:
            raise ValueError(f"refine_alpha must be in (0, 1), got {self.refine_alpha}")
        if self.refine_epochs is not None and (isinstance(self.refine_epochs, bool)
                                               or not isinstance(self.refine_epochs, (int, np.integer))
                                               or self.refine_epochs < 1):
            raise ValueError(f"refine_epochs must be None or a number of epochs >= 1, got {self.refine_epochs!r}")
        from dhaka.model import resolve_structure

        resolve_structure(self.structure)  # a bad structure fails before the data is read

    def make_preprocessor(self) -> Preprocessor:
        """An unfitted :class:`dhaka.preprocess.Preprocessor` with this estimator's settings."""
        return Preprocessor.from_params(self.get_params())

    def _refine_rounds(self) -> int:
        if self.refine == "auto":
            return 0 if self.mode == "cnv" else 2
        return int(self.refine)

    def _validate(self, M: Any, *, reset: bool | None) -> Any:
        """Check values; ``reset=True`` records n_features_in_, ``False`` checks it, ``None`` neither."""
        kw = dict(accept_sparse="csr", dtype=np.float32, ensure_min_samples=2 if reset else 1,
                  ensure_all_finite=True)
        if reset is None:
            M = check_array(M, input_name="X", **kw)
        else:
            M = validate_data(self, M, reset=reset, **kw)
        if sp.issparse(M):
            M = sp.csr_matrix(M, dtype=np.float32)
        return M

    def preview(self, X: Any) -> dict[str, Any]:
        """What :meth:`fit` would do to ``X``, without training: detected kind, first-fit matrix size and
        the number of gene-refinement rounds that follow (their gene counts depend on the fits)."""
        M, _, _ = _as_matrix(X)
        return {**self.make_preprocessor().plan(M), "refine_rounds": self._refine_rounds()}

    # the fitted preprocessor's constants, under the names fitted models have always had
    input_kind_ = property(lambda self: self.preprocessor_.kind_, doc="Detected input kind (an InputKind).")
    normalize_ = property(lambda self: self.preprocessor_.normalize_, doc="Whether cells were normalised.")
    log_ = property(lambda self: self.preprocessor_.log_, doc="Whether log2(x+1) was applied.")
    target_sum_ = property(lambda self: self.preprocessor_.target_sum_, doc="Normalisation target.")
    gene_indices_ = property(lambda self: self.preprocessor_.gene_indices_, doc="Selected feature indices.")

    def _principal_axes(self, S: Any, center: np.ndarray, scale: np.ndarray,
                        nuisance: np.ndarray | None = None) -> np.ndarray | None:
        """Top principal axes (genes x n_pcs, float32) of (S - center) / scale, sparse-safe.

        With a unit gene axis ``nuisance`` they are the axes of the input with it projected out
        (what the model reads, :meth:`dhaka.model.VAE.prepare`), so they are orthogonal to it.
        """
        if not self.encoder_pcs:
            return None
        n, g = S.shape
        k = int(min(int(self.encoder_pcs), g, max(n - 1, 1)))
        if k >= g or k < 1:
            return None  # projecting onto all axes changes nothing
        from scipy.sparse.linalg import LinearOperator, svds

        c = (center / scale).astype(np.float64)
        inv = (1.0 / scale).astype(np.float64)
        w = nuisance
        if sp.issparse(S):
            A = LinearOperator((n, g), dtype=np.float64,
                               matvec=lambda v: S @ (inv * np.ravel(v)) - c @ np.ravel(v),
                               rmatvec=lambda u: inv * (S.T @ np.ravel(u)) - c * np.ravel(u).sum())
            if w is not None:
                A = deflated(A, w)
        else:
            A = (np.asarray(S, dtype=np.float64) * inv) - c
            if w is not None:
                A = A - np.outer(A @ w, w)
        if not sp.issparse(S) and min(n, g) <= 3000:
            _, _, vt = np.linalg.svd(A, full_matrices=False)
            return np.ascontiguousarray(vt[:k].T, dtype=np.float32)
        rng = np.random.default_rng(int(self.seed))
        _, _, vt = svds(A, k=min(k, min(n, g) - 1), v0=rng.standard_normal(min(n, g)), random_state=int(self.seed))
        order = np.arange(vt.shape[0])[::-1]  # svds returns ascending singular values
        return np.ascontiguousarray(vt[order].T, dtype=np.float32)

    def _library_covariate(self, M: Any, pre: Preprocessor) -> np.ndarray | None:
        """Log library size of each cell of the raw matrix ``M`` when its axis is to be removed, else ``None``.

        Only where the pipeline normalises library sizes (raw counts): normalised or log input
        carries no library size to read. Empty cells get the mean of the others.
        """
        if self.library_axis == "keep" or not pre.normalize_:
            return None
        from dhaka.preprocess import library_size

        sizes = library_size(M)
        positive = sizes > 0
        if positive.sum() < 2:
            return None
        logs = np.log(np.where(positive, sizes, 1.0))
        logs[~positive] = logs[positive].mean()
        return logs

    # -------------------------------------------------------------------- fit
    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        batch: Any = None,
        callback: Callable[[Any], None] | None = None,
        stop_event: threading.Event | None = None,
        checkpoint: Callable[[Callable[[str | os.PathLike], None], int], None] | None = None,
        checkpoint_every: int = 5,
        seams: Any = None,
        clusterer: Any = None,
    ) -> "Dhaka":
        """Preprocess ``X``, select genes, train the VAE (``n_starts`` times), keep the best start.

        Parameters
        ----------
        X
            Cells x features: AnnData, DataFrame, ndarray or scipy.sparse (kept sparse).
        batch
            Batch label of every cell (sample, donor, run) to correct for (:mod:`dhaka.batch`): the model
            is conditioned on it; its categories are kept in ``batch_categories_`` (``None`` without).
        callback
            Called after every epoch with a :class:`dhaka.train.EpochReport` (from this thread).
        stop_event
            When set, training ends within one epoch; the model is kept as it is.
        checkpoint
            ``checkpoint(save_fn, epoch)`` every ``checkpoint_every`` epochs; ``save_fn(path)``
            writes a loadable model directory (see :meth:`save`).
        seams
            A :class:`dhaka.train.TrainingSeams` handed to every :func:`dhaka.train.fit_vae` of
            the fit (e.g. :func:`dhaka.distributed.data_parallel_seams` for data-parallel training).
        clusterer
            The :class:`dhaka.clusterers.Clusterer` (or registered name) that scores the random starts and
            finds the clusters the library-depth check looks within; ``None``: the mode's default
            (:func:`dhaka.clusterers.resolve`). :func:`dhaka.pipeline.run` passes the caller it clusters with.
        """
        self.validate_params()
        clusterer = resolve(clusterer, mode=self.mode)
        with cpu.limit_threads(self.n_threads) as n_threads, fit_progress(callback) as callback:
            self.n_threads_ = n_threads
            if isinstance(X, PreparedRows):
                self.batch_categories_, codes = fit_codes(batch, X.matrix.shape[0])
                return self._fit_prepared(X, batch=codes, callback=callback, stop_event=stop_event,
                                          checkpoint=checkpoint, checkpoint_every=checkpoint_every, seams=seams,
                                          clusterer=clusterer)
            M, _, names = _as_matrix(X)
            M = self._validate(M, reset=True)
            _log.info("fitting %d cells x %d %s (mode %s, seed %s, %d thread%s)", M.shape[0], M.shape[1],
                      "bins" if self.mode == "cnv" else "features", self.mode, self.seed, n_threads,
                      "" if n_threads == 1 else "s")
            self.feature_names_ = names
            self.batch_categories_, codes = fit_codes(batch, M.shape[0])
            pre = self.make_preprocessor()
            P, columns = pre.fit_values(M)  # columns: the residuals' gene pool (None: P holds every feature)
            pre.fit_genes(P, columns=columns)
            self._fit_rounds(P, pre, names=names, rounds=self._refine_rounds(),
                             max_genes=pre.n_select(M.shape[1]), columns=columns,
                             covariate=self._library_covariate(M, pre), batch=codes, callback=callback,
                             stop_event=stop_event,
                             checkpoint=checkpoint, checkpoint_every=checkpoint_every, seams=seams,
                             clusterer=clusterer)
        return self

    def _fit_prepared(self, X: PreparedRows, **train_kw: Any) -> "Dhaka":
        """Fit on rows a fitted preprocessor already produced (in memory, or a row source).

        Gene refinement chooses among the prepared genes (the other features are not at hand);
        rows streamed from a row source are not held in memory, so there the first fit stands.
        """
        from dhaka.train import is_row_source

        pre = X.preprocessor
        S = X.matrix
        self.n_features_in_ = int(pre.n_features_in_)
        self.feature_names_ = None if X.feature_names is None else list(X.feature_names)
        streamed = is_row_source(S)
        self.prepared_ = {**X.describe(), "in_memory": not streamed}
        genes = np.asarray(pre.gene_indices_)
        self._fit_rounds(S, pre, names=self.feature_names_, columns=genes,
                         rounds=0 if streamed else self._refine_rounds(), max_genes=S.shape[1], **train_kw)
        if streamed and self._refine_rounds():
            self.refinement_[0]["note"] = "streamed from disk: gene refinement skipped"
        return self

    def _fit_rounds(self, P: Any, pre: Preprocessor, *, names: Sequence[str] | None, rounds: int,
                    max_genes: int | None, columns: np.ndarray | None = None,
                    covariate: np.ndarray | None = None, **train_kw: Any) -> None:
        """Train on the genes ``pre`` chose among the columns of ``P``, then refine them ``rounds`` times.

        ``P`` holds every feature (value steps applied), or, for prepared rows, only the prepared
        genes (``columns`` = their feature indices). Each round keeps the genes of ``P`` the
        current latent explains (:meth:`_refined_genes`) and refits ``pre``'s affine on them; it
        stops early when nothing is significant or the selection no longer changes; warm starts
        (``n_starts``) run in the last fit. ``covariate`` (per cell, or ``None``) defines the gene
        axis each fit's model projects out (:func:`_covariate_axis`). ``train_kw`` goes to :meth:`_train`.
        """
        t0 = time.perf_counter()
        self.preprocessor_ = pre
        try:
            self._refine_loop(P, pre, names=names, rounds=rounds, max_genes=max_genes, columns=columns,
                              covariate=covariate, **train_kw)
        finally:
            self.train_seconds_ = time.perf_counter() - t0  # every fit and the gene tests between them

    def _refine_loop(self, P: Any, pre: Preprocessor, *, names, rounds, max_genes, columns, covariate,
                     **train_kw: Any) -> None:
        """The body of :meth:`_fit_rounds`."""
        from dhaka.train import is_row_source

        base = np.arange(P.shape[1]) if columns is None else np.asarray(columns)
        pos = {int(f): i for i, f in enumerate(base)}
        idx = np.array([pos[int(f)] for f in pre.gene_indices_], dtype=np.int64)  # columns of P
        self.refinement_: list[dict[str, Any]] = [
            {"fit": 1, "genes": int(len(idx)), "selected_by": pre.selected_by}]
        remove = covariate is not None and self.library_axis == "remove"
        r = 0
        while True:
            final = r == rounds
            feat = pre.gene_indices_
            pre.genes_ = [str(names[i]) for i in feat] if names is not None else None  # what new cells match by
            self.genes_ = pre.genes_ if names is not None else [str(i) for i in feat]
            S = P if np.array_equal(idx, np.arange(P.shape[1])) else P[:, idx]
            nuisance = covariate_axis(S, 1.0 / pre.scale_, covariate) if remove else None
            loadings = None if is_row_source(S) else self._principal_axes(S, pre.center_, pre.scale_, nuisance)
            label = f"fit {r + 1}/{rounds + 1} ({len(idx)} genes)" if rounds else ""
            epochs = int(self.epochs) if final or self.refine_epochs is None else min(int(self.epochs),
                                                                                      int(self.refine_epochs))
            self._train(S, pre.center_, pre.scale_, loadings=loadings, nuisance=nuisance,
                        n_starts=int(self.n_starts) if final else 1, epochs=epochs,
                        pass_offset=r, n_passes=rounds + int(self.n_starts), stage=label, **train_kw)
            shortened = epochs < int(self.epochs)
            if nuisance is not None:
                self.refinement_[-1]["library_axis"] = "removed"
            if covariate is not None and not remove and self.library_axis == "auto" and not self.stopped_:
                share = self._library_share(S, covariate, train_kw["clusterer"], train_kw.get("batch"))
                self.refinement_[-1].update(share)
                if share.get("library_r2_within", 0.0) > LIBRARY_R2:  # a depth gradient: this fit again, without it
                    remove = True
                    self.refinement_.append({"fit": len(self.refinement_) + 1, "genes": int(len(idx)),
                                             "selected_by": "repeated without the library axis"})
                    continue
            if final or self.stopped_:
                return
            new = self._refined_genes(P, S, max_genes, train_kw.get("batch"))
            self.refinement_[-1].update({k: v for k, v in new.items() if k != "indices"})
            _log.info("gene refinement after fit %d: %s genes the latent explains (of %d)", r + 1,
                      new.get("n_significant"), len(idx))
            r += 1
            if new["indices"] is None or np.array_equal(new["indices"], idx):
                # nothing significant, or the selection is stable: the current fit stands,
                # unless warm starts were asked for or it was a shortened gene-choosing fit
                # (then the last fit runs once more on the same genes)
                self.refinement_[-1]["converged"] = True
                if int(self.n_starts) == 1 and not shortened:
                    return
                rounds = r
                self.refinement_.append({"fit": len(self.refinement_) + 1, "genes": int(len(idx)),
                                         "selected_by": "unchanged"})
                continue
            idx = new["indices"]
            pre.fit_genes(P, indices=idx, columns=columns)
            self.refinement_.append({"fit": len(self.refinement_) + 1, "genes": int(len(idx)),
                                     "selected_by": "latent R^2"})

    def _library_share(self, S: Any, covariate: np.ndarray, clusterer: Any, batch: Any) -> dict[str, float]:
        """How much of ``covariate`` (per cell) the current latent of ``S`` explains, as rank 0 sees it.

        ``library_r2``: R^2 of a linear fit on the latent; where it exceeds :data:`LIBRARY_R2`,
        also ``library_r2_within``: the same within the latent's clusters (called by ``clusterer``), i.e. the share of a gradient inside clusters rather than of differences between
        them (cell types may differ in library size; that is kept).
        """
        from dhaka.preprocess import latent_r2
        from dhaka.train import encode

        Z = encode(self.model_, S, device="cpu", batch=batch).astype(np.float64)
        c = np.asarray(covariate, dtype=np.float64)[:, None]
        out = {"library_r2": float(latent_r2(c, Z)[0])}
        if out["library_r2"] > LIBRARY_R2:
            labels = clusterer.fit(Z, seed=int(self.seed)).labels
            out["library_r2_within"] = float(latent_r2(within_clusters(c, labels), within_clusters(Z, labels))[0])
        return _from_rank0(out)

    def _refined_genes(self, P: Any, S: Any, n_select: int | None, batch: np.ndarray | None) -> dict[str, Any]:
        """Genes of ``P`` the current latent explains (:func:`select_by_latent`), or ``None``."""
        from dhaka.preprocess import select_by_latent
        from dhaka.train import encode

        Z = encode(self.model_, S, device="cpu", batch=batch)
        sel = select_by_latent(P, Z, alpha=float(self.refine_alpha), min_genes=min(100, P.shape[1]),
                               max_genes=n_select)
        out = {"n_significant": sel.n_significant, "r2_threshold": sel.threshold,
               "indices": sel.indices if sel.n_significant > 0 else None}
        return _from_rank0(out)

    def _train(self, S: Any, center: np.ndarray, scale: np.ndarray, *, loadings: np.ndarray | None,
               epochs: int, nuisance: np.ndarray | None = None, callback=None, stop_event=None, checkpoint=None,
               checkpoint_every: int = 5,
               n_starts: int | None = None, pass_offset: int = 0, n_passes: int | None = None,
               stage: str = "", seams: Any = None, clusterer: Any = None, batch: np.ndarray | None = None) -> None:
        """Train ``n_starts`` models on the selected matrix ``S`` and keep the best start.

        ``loadings``: the encoder's principal axes; ``nuisance``: the unit gene axis the models
        project out of their input (both ``None`` when not used); ``epochs``: this fit's most epochs
        (``refine_epochs`` shortens the gene-choosing fits); ``batch``: the rows' batch codes (or ``None``).

        ``S`` is a matrix or a row source (prepared rows, e.g. out of core). ``pass_offset`` / ``n_passes`` place
        these starts among all training passes of a fit (refinement rounds + starts), so the
        callback's ``start`` / ``n_starts`` / ``eta`` cover the whole fit; ``stage`` labels them.
        """
        import torch

        from dhaka.model import VAE, resolve_structure
        from dhaka.train import fit_vae, resolve_device

        hidden = resolve_structure(self.structure)
        dev = resolve_device(self.device)
        self.device_ = str(dev)

        self.start_scores_: list[dict[str, Any]] = []
        self.start_calls_: list[np.ndarray | None] = []  # each start's cluster call (not saved with the model)
        self.stopped_ = False
        trained: list[tuple[Any, list[dict]]] = []
        n_starts = int(self.n_starts) if n_starts is None else int(n_starts)
        n_passes = n_starts if n_passes is None else int(n_passes)
        for s in range(n_starts):
            seed = int(self.seed) + 1000 * s
            torch.manual_seed(seed)
            model = VAE(S.shape[1], hidden=hidden, latent_dim=int(self.latent_dim),
                        likelihood=self.likelihood, batch_norm=bool(self.batch_norm),
                        n_pcs=loadings.shape[1] if loadings is not None else None,
                        nuisance_axis=nuisance is not None, n_batch=len(self.batch_categories_ or ()))
            model.set_input_affine(torch.from_numpy(center), torch.from_numpy(scale))
            if nuisance is not None:
                model.set_nuisance_axis(torch.from_numpy(nuisance.astype(np.float32)))
            if loadings is not None:
                model.set_projection(torch.from_numpy(loadings))
            self.model_ = model

            def save_fn(path, _m=model):
                self._save_model(path, _m, history=None)

            tag = ", ".join(t for t in (stage, f"start {s + 1}/{n_starts}" if n_starts > 1 else "") if t)
            cb = self._wrap_callback(callback, pass_index=pass_offset + s, n_passes=n_passes, stage=tag)
            ck = (lambda epoch, _f=save_fn: checkpoint(_f, epoch)) if checkpoint is not None else None
            try:
                res = fit_vae(
                    S, model=model, epochs=int(epochs), batch_size=self.resolved_batch_size(S.shape[0]),
                    lr=float(self.lr),
                    clip_norm=self.clip_norm, optimizer=self.optimizer, kl_warmup=int(self.kl_warmup),
                    val_fraction=float(self.val_fraction), patience=self.patience, seed=seed, device=self.device,
                    callback=cb, stop_event=stop_event, checkpoint=ck, checkpoint_every=checkpoint_every,
                    start=s, n_starts=n_starts, precision=self.precision,
                    kl_weight=float(self.kl_weight), free_bits=float(self.free_bits),
                    weight_decay=float(self.weight_decay), batch=batch,
                    **(seams.as_kwargs() if seams is not None else {}),
                )
            except Exception:
                self.history_ = []
                raise
            score, call = self._score_start(model, S, seed, clusterer, batch) if n_starts > 1 else (
                {"silhouette": float("nan"), "k": None}, None)
            hist = [r.as_dict() for r in res.history]
            final = hist[-1]["loss"] if hist else float("nan")
            vals = [h["val_loss"] for h in hist if h.get("val_loss") is not None and np.isfinite(h["val_loss"])]
            self.start_scores_.append({"start": s, "seed": seed, **score, "final_loss": final,
                                       "val_loss": float(min(vals)) if vals else float("nan"),
                                       "epochs": len(hist), "best_epoch": res.best_epoch, "kept": False})
            trained.append((model, hist))
            self.start_calls_.append(call)
            if res.stopped:
                self.stopped_ = True
                break
        kept = choose_start(self.start_scores_, self.start_calls_, self.start_criterion)
        model, hist = trained[kept]
        self.start_scores_[kept]["kept"] = True
        if len(trained) > 1:
            _log.info("kept start %d of %d by %s (silhouette %s)", kept + 1, len(trained), self.start_criterion,
                      ", ".join(f"{sc['silhouette']:.3f}" for sc in self.start_scores_))
        self.best_start_ = kept
        self.model_ = model.cpu().eval()
        self.history_ = hist

    def resolved_batch_size(self, n_cells: int) -> int:
        """The minibatch size a fit on ``n_cells`` cells uses (``"auto"`` resolved)."""
        if self.batch_size == "auto":
            n_train = max(1.0, n_cells * (1.0 - float(self.val_fraction)))
            return int(min(512, max(32, 2 ** round(np.log2(max(n_train / 8, 1.0))))))
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1 or 'auto', got {self.batch_size}")
        return int(self.batch_size)

    @staticmethod
    def _wrap_callback(callback, *, pass_index: int, n_passes: int, stage: str = ""):
        """Report epochs with ``start`` = the pass among all of the fit's passes, and a whole-fit ETA."""
        if callback is None:
            return None

        def cb(report):
            per_pass = report.elapsed / report.epoch * report.n_epochs
            eta = report.eta + (n_passes - pass_index - 1) * per_pass
            callback(dataclasses.replace(report, eta=eta, start=pass_index, n_starts=n_passes, stage=stage))

        return cb

    def _score_start(self, model, S, seed: int, clusterer: Any, batch) -> tuple[dict[str, Any], np.ndarray | None]:
        """The silhouette and k of a start's cluster call, and the call (``None`` where it failed)."""
        from dhaka.cluster import silhouette
        from dhaka.train import encode

        Z = encode(model, S, device="cpu", batch=batch)
        try:
            res = clusterer.fit(Z, seed=int(self.seed))  # one caller seed: starts differ by their latents alone
            labels = np.asarray(res.labels)
            return {"silhouette": float(silhouette(Z, labels)), "k": int(res.k)}, labels
        except Exception as exc:  # a degenerate start must not kill the others
            warnings.warn(f"could not score start (seed {seed}): {exc}")
            return {"silhouette": float("nan"), "k": None}, None

    # -------------------------------------------------------------- transform
    def align(self, X: Any) -> tuple[Any, list[str]]:
        """``X`` as the encoder reads it, and the names of the model's features it lacks.

        The fitted :class:`~dhaka.preprocess.Preprocessor` does the work (:meth:`~dhaka.preprocess.Preprocessor.transform`):
        features are matched by name when both the training data and ``X`` have names; features absent from
        ``X`` are filled with the training mean (so they contribute nothing). Prepared rows
        (:class:`dhaka.preprocess.PreparedRows`) give their columns of the model's genes.
        """
        check_is_fitted(self, "model_")
        if isinstance(X, PreparedRows):
            return _prepared_columns(X, self.gene_indices_), []
        M, _, names = _as_matrix(X)
        by_name = self.feature_names_ is not None and names is not None
        M = self._validate(M, reset=None if by_name else False)
        return self.preprocessor_.align(M, names=names if by_name else None, fill=self.model_.center.numpy())

    def embed(self, X: Any, *, batch: Any = None) -> Embedding:
        """The cells of ``X`` matched to the model's features, preprocessed once, and their latent coordinates.

        Returns an :class:`Embedding`: ``latent`` (posterior means), ``model_input`` (the selected,
        preprocessed matrix the encoder read) and ``missing`` (model features absent from ``X``,
        filled with the training mean). :meth:`transform` is its ``latent``. A batch-trained model
        needs each cell's ``batch``, one of ``batch_categories_`` (:func:`dhaka.batch.codes_for`).
        """
        from dhaka.train import encode

        S, missing = self.align(X)
        codes = codes_for(getattr(self, "batch_categories_", None), batch, S.shape[0])
        return Embedding(latent=encode(self.model_, S, device="cpu", batch=codes), model_input=S, missing=list(missing))

    def transform(self, X: Any, *, batch: Any = None) -> np.ndarray:
        """Latent coordinates (posterior means) of the cells in ``X`` (a warning names missing features);
        ``batch``: their batch labels, for a model fitted with ``batch``."""
        out = self.embed(X, batch=batch)
        warn_missing(out.missing, len(self.genes_))
        return out.latent

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        return self.fit(X, y, **fit_params).transform(X, batch=fit_params.get("batch"))

    # ------------------------------------------------------------ save / load
    def _config(self, model) -> dict[str, Any]:
        import torch

        params = self.get_params()
        if not isinstance(params["structure"], str):
            params["structure"] = list(params["structure"])
        return {
            "format": "dhaka-model/1", "dhaka_version": __version__, "torch_version": torch.__version__,
            "params": params,
            "model": {"n_input": model.n_input, "hidden": list(model.hidden), "latent_dim": model.latent_dim,
                      "likelihood": model.likelihood, "batch_norm": model.batch_norm, "n_pcs": model.n_pcs,
                      "nuisance_axis": model.nuisance_axis, **({"n_batch": model.n_batch} if model.n_batch else {})},
            "n_features_in": int(self.n_features_in_), "has_feature_names": self.feature_names_ is not None,
            "gene_indices": [int(i) for i in self.gene_indices_],
            "start_scores": getattr(self, "start_scores_", []), "device": getattr(self, "device_", "cpu"),
            "stopped": bool(getattr(self, "stopped_", False)),
            "refinement": getattr(self, "refinement_", []),
            **({"batch_categories": self.batch_categories_} if getattr(self, "batch_categories_", None) else {}),
        }

    def _save_model(self, path: str | os.PathLike, model, *, history: list | None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path / "weights.safetensors"))
        (path / "config.json").write_text(json.dumps(self._config(model), indent=2, default=float))
        (path / "genes.txt").write_text("\n".join(self.genes_) + "\n")
        (path / "preprocess.json").write_text(json.dumps(self.preprocessor_.to_dict(), indent=2))
        if history is not None:
            (path / "history.json").write_text(json.dumps(history, default=float))

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write weights (safetensors), settings, selected genes and history to a directory, atomically.

        A folder that exists and is not empty is refused unless ``overwrite=True`` (then it is
        replaced in one step).
        """
        check_is_fitted(self, "model_")
        path = Path(path)
        if not overwrite and is_occupied(path):
            raise FileExistsError(f"{path} exists and is not an empty folder; choose a new one or pass overwrite=True")
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_dir(path, lambda tmp: self._save_model(tmp, self.model_, history=self.history_))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Dhaka":
        """Load a directory written by :meth:`save` (no code execution: JSON + safetensors only)."""
        import torch
        from safetensors.torch import load_file

        from dhaka.model import VAE

        path = Path(path)
        check_model_dir(path)
        try:
            cfg = json.loads((path / "config.json").read_text())
            pre = json.loads((path / "preprocess.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a readable Dhaka model directory: {exc}") from None
        if cfg.get("format") != "dhaka-model/1":
            raise ValueError(f"{path}/config.json is not a Dhaka model (format {cfg.get('format')!r})")
        params = {**LEGACY_SETTINGS, **cfg["params"]}  # settings saved before they existed: what the code did
        if isinstance(params.get("structure"), list):
            params["structure"] = tuple(params["structure"])
        est = cls(**params)
        m = cfg["model"]
        model = VAE(m["n_input"], hidden=m["hidden"], latent_dim=m["latent_dim"], likelihood=m["likelihood"],
                    batch_norm=m["batch_norm"], n_pcs=m.get("n_pcs"), nuisance_axis=m.get("nuisance_axis", False),
                    n_batch=m.get("n_batch", 0))
        state = load_file(str(path / "weights.safetensors"))
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        est.model_ = model.eval()
        est.genes_ = [g for g in (path / "genes.txt").read_text().split("\n") if g != ""]
        est.n_features_in_ = int(cfg["n_features_in"])
        est.feature_names_ = est.genes_ if cfg.get("has_feature_names") else None
        if "format" not in pre:  # written before models carried their Preprocessor: rebuild it
            pre = _upgrade_preprocess_json(pre, cfg, model)
        est.preprocessor_ = Preprocessor.from_dict(pre)
        est.preprocessor_.genes_ = est.feature_names_  # the chosen genes' names (genes.txt), for matching new cells
        est.start_scores_ = cfg.get("start_scores", [])
        est.stopped_ = bool(cfg.get("stopped", False))
        est.refinement_ = cfg.get("refinement", [])
        est.batch_categories_ = cfg.get("batch_categories")
        est.device_ = "cpu"
        hist_path = path / "history.json"
        est.history_ = json.loads(hist_path.read_text()) if hist_path.exists() else []
        return est


def _from_rank0(value: Any) -> Any:
    """``value`` as rank 0 computed it when training data-parallel (every rank takes one decision), else itself."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _prepared_columns(X: PreparedRows, genes: np.ndarray) -> Any:
    """The columns of prepared rows that hold ``genes`` (feature indices), in that order."""
    pos = {int(f): i for i, f in enumerate(X.preprocessor.gene_indices_)}
    missing = [int(f) for f in genes if int(f) not in pos]
    if missing:
        raise ValueError(f"the prepared rows lack {len(missing)} of the model's features (e.g. feature "
                         f"{missing[0]}); transform the original matrix instead")
    cols = np.array([pos[int(f)] for f in genes], dtype=np.int64)
    if np.array_equal(cols, np.arange(X.matrix.shape[1])):
        return X.matrix
    if not hasattr(X.matrix, "tocsr") and not isinstance(X.matrix, np.ndarray):
        raise ValueError("these prepared rows are read from disk and hold other genes than the model's; "
                         "transform the original matrix instead (e.g. dhaka.backed.transform_backed)")
    return X.matrix[:, cols]


def _upgrade_preprocess_json(old: dict[str, Any], cfg: dict[str, Any], model: Any) -> dict[str, Any]:
    """A preprocess.json of the first model format (steps only) as :meth:`Preprocessor.to_dict` writes it.

    The settings come from the saved parameters, the genes from config.json and the input
    affine from the model's ``center`` / ``scale`` buffers, which held it all along.
    """
    pre = Preprocessor.from_params(cfg["params"])
    return {**old, "format": PREPROCESSOR_FORMAT, "settings": pre.settings(),
            "n_features_in": int(cfg["n_features_in"]), "gene_indices": list(cfg["gene_indices"]),
            "center": model.center.tolist(), "scale": model.scale.tolist()}
