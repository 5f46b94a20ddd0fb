"""Built-in demo datasets of Dhaka Explorer.

Every demo is a :class:`Demo` record in :data:`DEMOS` (ordered as shown in the
Data page). Simulated demos come from :mod:`dhaka.simulate` (seeded, with the
truth in ``obs``); real demos are read from ``assets/data/`` and are listed
only when their file is present (see :func:`available`).

Set the environment variable ``DHAKA_DEMO_FAST=1`` to shrink the default demo
(200 cells x 300 genes instead of 500 x 3000) and the default training
settings (shallow network, few epochs): end-to-end tests and quick looks use it.

This module does not import streamlit; the app caches :func:`load` with
``st.cache_data`` (demos are public data, safe to share between sessions).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["Demo", "DEMOS", "DEFAULT_DEMO", "ASSETS_DATA", "available", "get", "load", "demo_fast",
           "fast_train_params"]

#: Folder with the shipped real datasets.
ASSETS_DATA = Path(__file__).resolve().parents[2] / "assets" / "data"


def demo_fast() -> bool:
    """``True`` when ``DHAKA_DEMO_FAST`` is set to a true value (1, true, yes)."""
    return os.environ.get("DHAKA_DEMO_FAST", "").strip().lower() in ("1", "true", "yes", "on")


def fast_train_params() -> dict[str, Any]:
    """Training settings used as defaults when :func:`demo_fast` is on (seconds on a laptop CPU)."""
    return {"structure": "shallow", "epochs": 15, "batch_size": 64, "n_starts": 1, "kl_warmup": 3,
            "patience": None, "val_fraction": 0.1}


@dataclass(frozen=True)
class Demo:
    """One built-in dataset.

    Attributes
    ----------
    key
        Identifier (also the default dataset name).
    title
        Shown in the picker.
    description
        One paragraph: what the data is, where it comes from, licence.
    mode
        Preprocessing mode to suggest: ``"expression"`` or ``"cnv"``.
    truth
        obs column with true labels (for ARI / NMI), or ``None``.
    colour
        obs column to colour by first (e.g. the trajectory's time), or ``None``.
    path
        For real data: the file under ``assets/data``; the demo is listed only
        when it exists.
    loader
        For simulations: returns ``(adata, second)`` (``second`` is a second
        sample to project, or ``None``).
    """

    key: str
    title: str
    description: str
    mode: str = "expression"
    truth: str | None = None
    colour: str | None = None
    path: Path | None = None
    loader: Callable[[], tuple[Any, Any]] | None = field(default=None, compare=False, repr=False)

    @property
    def is_available(self) -> bool:
        """Simulations always; real data when its file exists."""
        return self.loader is not None or (self.path is not None and self.path.is_file())


def _paper() -> tuple[Any, None]:
    from dhaka import simulate

    if demo_fast():
        adata = simulate.paper(n_cells=200, n_genes=300, n_noise=50, seed=0)
    else:
        adata = simulate.load("paper")
    return adata, None


def _simulated(kind: str) -> Callable[[], tuple[Any, None]]:
    def load_it() -> tuple[Any, None]:
        from dhaka import simulate

        return simulate.load(kind), None

    return load_it


def _cnv_pair() -> tuple[Any, Any]:
    from dhaka import simulate

    first, second = simulate.cnv_pair(seed=0)
    return first, second


#: The demo a fresh session starts with.
DEFAULT_DEMO = "paper"

DEMOS: tuple[Demo, ...] = (
    Demo("paper", "Paper simulation (5 groups, 500 noise genes)",
         "500 cells in five groups of 100, 3000 genes of which 500 are pure noise: the simulation set-up of "
         "Rashid, Shah & Pandya (Dhaka, Bioinformatics 2019). log2 expression with dropout zeros. "
         "True groups in obs['group'].", truth="group", loader=_paper),
    Demo("paper_2500", "Paper simulation, hard (2500 noise genes)",
         "As the paper simulation but 2500 of the 3000 genes are noise (the paper's harder setting). "
         "True groups in obs['group'].", truth="group", loader=_simulated("paper_2500")),
    Demo("trajectory", "Branching trajectory (UMI counts)",
         "600 cells along a root that splits into two arms, with gene programmes that rise and fall along the "
         "true pseudotime; UMI counts. Truth in obs['branch'] and obs['time'].",
         truth="branch", colour="time", loader=_simulated("trajectory")),
    Demo("cnv_pair", "Copy-number pair (two tumour samples)",
         "Integer copy-number profiles over genomic bins (chromosome:start-end): a first sample with a major and a minor clone "
         "(loaded) and a later sample with the major clone only (kept as the second sample to project). "
         "Truth in obs['clone'].", mode="cnv", truth="clone", loader=_cnv_pair),
    Demo("counts", "Realistic UMI counts (2000 cells)",
         "2000 cells x 2000 genes of negative-binomial UMI counts in groups, with library-size variation "
         "and extra dropout. True groups in obs['group'].", truth="group", loader=_simulated("counts")),
    Demo("oligodendroglioma", "Oligodendroglioma (Tirosh et al. 2016; real)",
         "The study the paper analyses: 184 cells x 9450 genes (Smart-seq2, TPM-like values) from four "
         "oligodendroglioma tumours plus non-malignant oligodendrocytes and microglia, with gene positions. "
         "From the infercnvpy wheel (BSD-3-Clause); cite Tirosh et al., Nature 2016. Cell types in "
         "obs['cell_type'].", truth="cell_type",
         path=ASSETS_DATA / "oligodendroglioma.h5ad"),
    Demo("pbmc68k_reduced", "PBMC 68k, reduced (10x Genomics; real)",
         "700 peripheral blood mononuclear cells x 765 genes (log-normalised values) with 10 FACS-sorted "
         "populations in obs['bulk_labels']. From the scanpy wheel (BSD-3-Clause); cite Zheng et al., "
         "Nat. Commun. 2017.", truth="bulk_labels",
         path=ASSETS_DATA / "pbmc68k_reduced.h5ad"),
)


def available() -> list[Demo]:
    """The demos that can be loaded here (real data only when its file is shipped)."""
    return [d for d in DEMOS if d.is_available]


def get(key: str) -> Demo:
    """The demo with this key.

    Raises
    ------
    KeyError
        For an unknown key, naming the known ones.
    """
    for d in DEMOS:
        if d.key == key:
            return d
    raise KeyError(f"unknown demo {key!r}; choose one of {', '.join(d.key for d in DEMOS)}")


def load(key: str) -> tuple[anndata.AnnData, anndata.AnnData | None]:
    """Load a demo: ``(adata, second)``; ``second`` is a second sample or ``None``.

    Raises
    ------
    KeyError
        For an unknown demo.
    FileNotFoundError
        For a real demo whose file is not shipped.
    """
    demo = get(key)
    if demo.loader is not None:
        return demo.loader()
    if demo.path is None or not demo.path.is_file():
        raise FileNotFoundError(f"the {demo.title} dataset is not shipped with this installation "
                                f"(expected {demo.path})")
    from dhaka import io

    adata = io.read(demo.path)
    return adata, None
