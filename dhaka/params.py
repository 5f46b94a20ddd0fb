"""One description of :class:`dhaka.Dhaka`'s parameters: names, types, choices, bounds, defaults, help.

The Train form (:func:`dhaka.ui.forms.train_form`) and the command line (:mod:`dhaka.cli`) are
built from :data:`PARAMS`, so neither can drift from the estimator again: a test checks that
:data:`PARAMS` names exactly the parameters of ``Dhaka.__init__``, that every default and every
preset value passes :meth:`Param.check`, and that the form round-trips each of them.

Values that are not numbers are part of the description: ``"auto"`` (batch size, refinement,
gene count) and ``None`` (no clipping, no early stopping, all genes) are a parameter's
``special`` values, with the word the CLI accepts for them and the label the form shows.

>>> from dhaka.params import PARAM
>>> PARAM["batch_size"].parse("auto"), PARAM["batch_size"].parse("128")
('auto', 128)
>>> PARAM["clip_norm"].parse("off") is None
True
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

__all__ = ["Param", "PARAMS", "PARAM", "defaults", "check_params"]

Kind = Literal["int", "float", "bool", "choice", "structure", "str"]


@dataclass(frozen=True)
class Param:
    """One estimator parameter.

    Attributes
    ----------
    name
        The keyword of ``Dhaka(...)``.
    kind
        ``"int"``, ``"float"``, ``"bool"``, ``"choice"`` (one of ``choices``), ``"structure"``
        (``"deep"`` / ``"shallow"`` or a list of layer widths) or ``"str"``.
    label, help
        What the form shows (the CLI uses ``help``).
    low, high
        Inclusive bounds of a number.
    choices
        Allowed values of a ``"choice"``.
    special
        Values besides numbers: ``{value: (cli word, form label)}``, e.g. ``{"auto": ("auto",
        "automatic")}`` or ``{None: ("off", "no clipping")}``.
    step
        Step of the form's number input.
    group
        Where the form shows it: ``"network"``, ``"training"``, ``"advanced"``, ``"preprocess"``
        (the Data page's form) or ``"library"`` (library and CLI only).
    fmt
        printf-style format of the number input (e.g. ``"%.0e"``).
    """

    name: str
    kind: Kind
    label: str
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    special: dict[Any, tuple[str, str]] = field(default_factory=dict)
    step: float | None = None
    group: str = "training"
    fmt: str | None = None
    example: Any = None

    @property
    def number_default(self) -> Any:
        """The number the form shows when the value is special (``"auto"``, ``None``)."""
        return self.example if self.is_special(self.default) else self.default

    @property
    def default(self) -> Any:
        """The estimator's default (read from ``Dhaka.__init__``, never repeated here)."""
        return defaults()[self.name]

    @property
    def flag(self) -> str:
        """The command-line option, e.g. ``--batch-size``."""
        return "--" + self.name.replace("_", "-")

    def is_special(self, value: Any) -> bool:
        """``True`` for one of the non-numeric values (``"auto"``, ``None``)."""
        return any(value is s or (isinstance(s, str) and value == s) for s in self.special)

    def check(self, value: Any) -> Any:
        """``value`` coerced to the parameter's type; ``ValueError`` naming the parameter when invalid."""
        if self.is_special(value):
            return value
        allowed = self._allowed()
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError(f"{self.name} must be true or false, got {value!r}")
        if self.kind == "choice":
            if value in self.choices:
                return value
            raise ValueError(f"{self.name} must be {allowed}, got {value!r}")
        if self.kind == "structure":
            from dhaka.model import resolve_structure

            try:
                widths = resolve_structure(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{self.name}: {exc}") from None
            return value if isinstance(value, str) else [int(w) for w in widths]
        if self.kind == "str":
            if isinstance(value, str) and value:
                return value
            raise ValueError(f"{self.name} must be a non-empty text, got {value!r}")
        number = self._number(value)
        if number is None:
            raise ValueError(f"{self.name} must be {allowed}, got {value!r}")
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise ValueError(f"{self.name} must be {allowed}, got {value!r}")
        return number

    def parse(self, text: str) -> Any:
        """A command-line word -> the value (``"auto"``, ``"off"`` and so on map to the special values)."""
        word = str(text).strip()
        for value, (token, _label) in self.special.items():
            if word.lower() == token:
                return value
        if self.kind == "bool":
            low = word.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        elif self.kind == "int":
            try:
                return self.check(int(word))
            except ValueError:
                pass
        elif self.kind == "float":
            try:
                return self.check(float(word))
            except ValueError:
                pass
        elif self.kind == "choice":
            for choice in self.choices:
                if word.lower() == str(choice).lower():
                    return choice
        else:  # structure, str
            return self.check(word)
        raise ValueError(f"{self.flag} must be {self._allowed()}, got {text!r}")

    def _number(self, value: Any) -> int | float | None:
        """``value`` as the parameter's number type, or ``None`` when it is not one (bools are not)."""
        import numbers

        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None
        if self.kind == "float":
            return float(value)
        if isinstance(value, numbers.Integral) or float(value).is_integer():
            return int(value)
        return None

    def _allowed(self) -> str:
        words = [f"'{tok}'" for tok, _ in self.special.values()]
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "structure":
            return "'deep', 'shallow' or layer widths like '512,128'"
        what = "a whole number" if self.kind == "int" else "a number" if self.kind == "float" else "a text"
        if self.low is not None and self.high is not None:
            what += f" from {_fmt(self.low)} to {_fmt(self.high)}"
        elif self.low is not None:
            what += f" of at least {_fmt(self.low)}"
        return " or ".join([*words, what]) if words else what


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


AUTO = {"auto": ("auto", "automatic")}

#: Every parameter of ``Dhaka.__init__``, in the order the form and ``--help`` show them.
PARAMS: tuple[Param, ...] = (
    # ---- preprocessing (the Data page's form)
    Param("mode", "choice", "Mode", "'expression' (scRNA-seq) or 'cnv' (copy-number states: not normalised or "
          "logged; each bin trimmed to its 2nd-98th percentiles, see --winsorize)",
          choices=("expression", "cnv"), group="preprocess"),
    Param("value_transform", "choice", "Value transform",
          "'pearson': analytic Pearson residuals of raw counts (library size and the mean-variance relation taken "
          "out; genes ranked by residual variance); 'log': library-size normalisation and log; 'auto' = Pearson "
          "residuals on raw counts in expression mode held in memory, log otherwise",
          choices=("log", "pearson"), special=AUTO, group="preprocess"),
    Param("n_genes", "int", "Number of genes kept",
          "genes kept by gene_selection: 'auto' = 2000 in expression mode (all bins in cnv mode), 'all' = all",
          low=1, special={"auto": ("auto", "automatic"), None: ("all", "all genes / bins")}, step=100,
          group="preprocess", example=2000),
    Param("gene_selection", "choice", "Gene selection", "score that ranks the genes",
          choices=("cv", "entropy", "mean", "variance", "dispersion"), group="preprocess"),
    Param("normalize", "choice", "Library-size normalisation", "scale every cell to the same total",
          choices=(True, False), special=AUTO, group="preprocess"),
    Param("log", "choice", "log2(x + 1)", "log-transform the values", choices=(True, False), special=AUTO,
          group="preprocess"),
    Param("relative", "bool", "Relative expression", "centre each gene over cells (the paper's relative "
          "expression)", group="preprocess"),
    # ---- network
    Param("structure", "structure", "Encoder structure",
          "'deep' (1024-512-256, the paper's first), 'shallow' (1024, its second) or layer widths like "
          "'512,128'; the decoder mirrors them", group="network"),
    Param("latent_dim", "int", "Latent dimensions", "3 gives the rotatable 3-D view of the paper",
          low=1, high=16, group="network"),
    # ---- training
    Param("lr", "float", "Learning rate", "optimiser step size", low=1e-6, high=1.0, step=1e-4, fmt="%.0e"),
    Param("batch_size", "int", "Batch size",
          "cells per minibatch; 'auto' = the power of two nearest n_cells / 8, between 32 and 512",
          low=2, high=65536, step=32, special={"auto": ("auto", "automatic (about n_cells / 8, 32-512)")},
          example=128),
    Param("epochs", "int", "Epochs", "passes over the data in each fit (early stopping may end it sooner)",
          low=1, high=5000, step=10),
    Param("clip_norm", "float", "Clip norm", "global gradient-norm clipping ('off' = none)", low=0.01,
          high=1000.0, step=0.5, special={None: ("off", "no gradient clipping")}, example=5.0),
    Param("n_starts", "int", "Warm starts", "train the final fit from several seeds and keep one (see "
          "start_criterion). Each start is one more pass of the final fit: 3 starts take about 1.6-2x the "
          "training time; 1 is the paper's single fit, faster but its clusters move more with the seed",
          low=1, high=20),
    Param("start_criterion", "choice", "Keep the start", "'agreement': the start whose clusters agree best "
          "with the other starts' (the call a rerun is most likely to give); 'silhouette': the most compact "
          "clusters", choices=("agreement", "silhouette")),
    Param("seed", "int", "Seed", "seed of everything random", low=0, high=2**31 - 1),
    # ---- advanced
    Param("device", "str", "Device", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'", group="advanced"),
    Param("optimizer", "choice", "Optimizer", "RMSprop as in the paper, or Adam", choices=("rmsprop", "adam"),
          group="advanced"),
    Param("likelihood", "choice", "Likelihood", "reconstruction term of the loss",
          choices=("gaussian", "mse", "bernoulli"), group="advanced"),
    Param("kl_warmup", "int", "KL warm-up epochs", "epochs over which the KL weight rises from 0 (0 = off)",
          low=0, high=1000, group="advanced"),
    Param("patience", "int", "Patience (epochs)", "epochs without improvement before early stopping "
          "('off' = train every epoch)", low=1, high=1000, special={None: ("off", "no early stopping")},
          group="advanced", example=20),
    Param("val_fraction", "float", "Validation fraction", "held-out cells for early stopping",
          low=0.0, high=0.5, step=0.05, group="advanced"),
    Param("batch_norm", "bool", "Batch normalisation", "batch normalisation in the hidden layers",
          group="advanced"),
    Param("scale", "choice", "Input scaling", "'global' (one overall sd), 'gene' (unit variance), 'none', "
          "'minmax' (to [0, 1], the paper's)", choices=("global", "gene", "none", "minmax"), group="advanced"),
    Param("refine", "int", "Gene refinement rounds",
          "after a fit, keep the genes the latent space explains beyond chance and fit again; 'auto' = 2 "
          "for expression, 0 for copy number; 0 = the paper's single fit", low=0, high=10,
          special={"auto": ("auto", "automatic (2 for expression, 0 for copy number)")}, group="advanced",
          example=2),
    # ---- library and CLI only
    Param("encoder_pcs", "int", "Encoder input PCs", "the encoder reads the top principal axes of its input "
          "('off' = the paper's direct encoder)", low=1, high=10000, special={None: ("off", "off")},
          group="library", example=50),
    Param("library_axis", "choice", "Library-size axis", "raw counts: project the genes' response to log "
          "library size out of the model's input: 'remove' always, 'keep' never, 'auto' when a fit's latent "
          "follows library size within its clusters (that fit is repeated)", choices=("auto", "remove", "keep"),
          group="library"),
    Param("weight_decay", "float", "Weight decay", "L2 penalty on the weights", low=0.0, high=1.0,
          group="library"),
    Param("kl_weight", "float", "KL weight", "final weight of the KL term (beta)", low=0.0, high=100.0,
          group="library"),
    Param("free_bits", "float", "Free bits", "nats per latent dimension below which the KL is free",
          low=0.0, high=100.0, group="library"),
    Param("log_pseudocount", "float", "Log pseudocount", "the log step is log2(1 + x / this): 1 = log2(x + 1); "
          "larger values damp small counts (shifted logarithm)", low=1e-3, high=1e6,
          special={"auto": ("auto", "2 on raw counts, 1 on TPM/CPM-like values")}, group="library", example=1.0),
    Param("winsorize", "float", "Trim quantile", "trim each feature to its q and 1 - q quantiles over the "
          "training cells (events in fewer cells stop dominating); 'off' = no trim", low=0.0, high=0.49,
          special={"auto": ("auto", "0.02 for copy number, off for expression"), None: ("off", "off")},
          group="library", example=0.02),
    Param("refine_alpha", "float", "Refinement alpha", "family-wise level of the refinement's gene test",
          low=1e-12, high=0.999, group="library"),
    Param("refine_epochs", "int", "Gene-choosing fit epochs", "most epochs of each fit that only chooses "
          "genes for the next ('off' = as many as the last fit)", low=1, high=100000,
          special={None: ("off", "as many as the last fit")}, group="library", example=60),
    Param("precision", "choice", "Precision", "'bf16' trains under bfloat16 autocast (GPUs)",
          choices=("fp32", "bf16"), group="library"),    Param("n_threads", "int", "CPU threads", "threads of torch, OpenMP/BLAS and numba during a fit ('auto' = the "
          "job's share or the CPUs this process may use less those busy elsewhere: affinity, cgroup quota, "
          "DHAKA_THREADS); the same seed and thread count give the same model", low=1, high=4096,
          special={None: ("auto", "automatic (the CPU budget)")}, group="library", example=1),
)

#: name -> :class:`Param`.
PARAM: dict[str, Param] = {p.name: p for p in PARAMS}


@lru_cache(maxsize=1)
def _signature_defaults() -> tuple[tuple[str, Any], ...]:
    from dhaka.estimator import Dhaka

    sig = inspect.signature(Dhaka.__init__)
    return tuple((n, p.default) for n, p in sig.parameters.items() if n != "self")


def defaults() -> dict[str, Any]:
    """``Dhaka()``'s defaults, read from its signature."""
    return dict(_signature_defaults())


def check_params(values: dict[str, Any]) -> dict[str, Any]:
    """Every value checked (and coerced) by its :class:`Param`; unknown names raise ``ValueError``."""
    unknown = sorted(set(values) - set(PARAM))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
    return {k: PARAM[k].check(v) for k, v in values.items()}
