"""The settings forms: Data page preprocessing and Train page training choices -> keyword arguments of
:class:`dhaka.Dhaka`, and the one-line summary of a training's settings.

Widget values are kept in :mod:`dhaka.ui.state` dicts (``PREPROCESS``, ``TRAIN_PARAMS``) and copied into
the widget keys only when those keys are missing, so settings survive switching pages (Streamlit forgets
the state of widgets that a page does not draw).  The training fields come from :data:`dhaka.params.PARAMS`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import streamlit as st

from dhaka.params import PARAM, PARAMS
from dhaka.params import defaults as estimator_defaults
from dhaka.ui import state
from dhaka.ui.messages import error_message, plain

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["PRESET_LABELS", "STRUCTURE_PRESETS", "apply_train_preset", "batch_choice", "preprocess_form",
           "settings_summary", "train_form"]

#: Label -> ``structure`` value of :class:`dhaka.Dhaka`.
STRUCTURE_PRESETS = {"Paper deep (1024-512-256)": "deep", "Paper shallow (1024)": "shallow",
                     "Custom layer list": None}


def _seed(key: str, value: Any) -> None:
    """Give widget ``key`` a starting value unless it already has one."""
    if key not in st.session_state:
        st.session_state[key] = value


_TRI = {"auto": "auto (from the detected kind)", True: "yes", False: "no"}

#: How the Data page names a setting's values; the values themselves come from :data:`dhaka.params.PARAMS`
#: (a value without a label here is shown as it is, so a new choice appears without an edit here).
CHOICE_LABELS: dict[str, dict[Any, str]] = {
    "mode": {"expression": "Expression (scRNA-seq)", "cnv": "Copy number"},
    "value_transform": {"auto": "auto (Pearson residuals on raw counts, else log)", "log": "normalise and log",
                        "pearson": "Pearson residuals (raw counts)"},
    "gene_selection": {"cv": "coefficient of variation", "entropy": "entropy", "mean": "mean expression",
                       "variance": "variance", "dispersion": "dispersion (binned by mean, as Seurat v1)"},
}


def _options(name: str) -> list[Any]:
    """The values the estimator accepts for ``name``: its special ones (``"auto"``) first, then its choices."""
    p = PARAM[name]
    return [*p.special, *p.choices]


def _label(name: str) -> Any:
    return lambda v: CHOICE_LABELS.get(name, {}).get(v, str(v))


def preprocess_form(adata: anndata.AnnData, *, detected: str | None = None) -> dict[str, Any]:
    """Preprocessing choices -> keyword arguments of :class:`dhaka.Dhaka` (also stored in state).

    Parameters
    ----------
    adata
        The loaded dataset (bounds the number of genes).
    detected
        The detected input kind, shown next to the "auto" options.
    """
    cur = state.get_preprocess()
    n_vars = int(adata.n_vars)
    _seed("w.prep.mode", cur.get("mode", "expression"))
    _seed("w.prep.value_transform", cur.get("value_transform", "auto"))
    _seed("w.prep.normalize", cur.get("normalize", "auto"))
    _seed("w.prep.log", cur.get("log", "auto"))
    _seed("w.prep.relative", bool(cur.get("relative", True)))
    _seed("w.prep.gene_selection", cur.get("gene_selection", "cv"))
    n_cur = cur.get("n_genes", "auto")
    _seed("w.prep.all_genes", n_cur is None or (n_cur == "auto" and cur.get("mode") == "cnv"))
    _seed("w.prep.n_genes", int(min(n_vars, 2000 if n_cur in ("auto", None) else int(n_cur))))
    if st.session_state["w.prep.n_genes"] > n_vars:
        st.session_state["w.prep.n_genes"] = n_vars

    c1, c2 = st.columns(2)
    with c1:
        mode = st.radio("Mode", _options("mode"), key="w.prep.mode", horizontal=True, format_func=_label("mode"),
                        help="Copy-number profiles are not normalised or logged; each bin is trimmed to its 2-98 % "
                             "quantiles over the cells, so events of fewer than ~2 % of the cells (private "
                             "events, state-call errors) do not dominate.")
        cnv = mode == "cnv"
        auto_label = f"auto (detected: {detected})" if detected else _TRI["auto"]
        fmt = lambda v: auto_label if v == "auto" else _TRI[v]  # noqa: E731
        value_transform = st.selectbox(
            "Value transform", _options("value_transform"), key="w.prep.value_transform", disabled=cnv,
            format_func=_label("value_transform"),
            help="Pearson residuals (Lause et al. 2021) take library size and the mean-variance relation out of raw "
                 "counts and rank genes by residual variance; on independent simulated data they kept groups "
                 "the log lost. Normalised or log input always takes the log steps.")
        pearson = value_transform == "pearson"
        normalize = st.selectbox("Library-size normalisation", ["auto", True, False], key="w.prep.normalize",
                                 format_func=fmt, disabled=cnv or pearson,
                                 help="Scale every cell to the same total (counts per 10k).")
        log = st.selectbox("log2(x + 1)", ["auto", True, False], key="w.prep.log", format_func=fmt,
                           disabled=cnv or pearson)
        relative = st.checkbox("Relative expression (centre each gene over cells)", key="w.prep.relative",
                               help="The paper's relative expression: subtract each gene's mean.")
    with c2:
        gene_selection = st.selectbox(
            "Gene selection", _options("gene_selection"), key="w.prep.gene_selection",
            format_func=_label("gene_selection"),
            help="Score that ranks the genes of log or TPM-like values. Under Pearson residuals genes are ranked by "
                 "residual variance (the coefficient of variation means nothing on residuals).")
        all_genes = st.checkbox("Use all genes / bins", key="w.prep.all_genes")
        n_genes = st.number_input("Number of genes kept", min_value=1, max_value=max(1, n_vars), step=100,
                                  key="w.prep.n_genes", disabled=all_genes)
    params: dict[str, Any] = {"mode": mode, "value_transform": value_transform, "normalize": normalize, "log": log,
                              "relative": bool(relative), "gene_selection": gene_selection,
                              "n_genes": None if all_genes else int(n_genes)}
    state.set_preprocess(params)
    return params


def _structure_label(structure: Any) -> str:
    for label, value in STRUCTURE_PRESETS.items():
        if value is not None and structure == value:
            return label
    return "Custom layer list"


#: Labels of the estimator's named presets (``dhaka.estimator.PRESETS``).
PRESET_LABELS = {"default": "Library defaults (robust)", "paper": "The paper's exact settings",
                 "fast": "Quick look (shallow, few epochs)"}


def apply_train_preset(name: str) -> None:
    """Replace the training (and, where the preset says, preprocessing) choices with a named preset; rerun."""
    from dhaka.estimator import PRESETS

    values = {**estimator_defaults(), **PRESETS[name]}
    prep_keys = tuple(p.name for p in PARAMS if p.group == "preprocess")
    train = {k: v for k, v in values.items() if k not in prep_keys}
    state.set_train_params(train)
    prep = state.get_preprocess()
    for k in prep_keys:
        if k in PRESETS[name] and k != "mode":
            prep[k] = PRESETS[name][k]
            st.session_state.pop(f"w.prep.{k}", None)
    state.set_preprocess(prep)
    for key in [k for k in st.session_state if str(k).startswith("w.train.") and k != "w.train.preset"]:
        del st.session_state[key]
    st.rerun()


def _param_widget(p: Any, cur: Any, *, options: list[Any] | None = None) -> Any:
    """One estimator parameter as a widget (key ``w.train.<name>``); returns the value it stands for.

    A number with special values (``"auto"``, ``None``) is a checkbox for the special value
    (key ``w.train.<name>.special``) above a number input, disabled while the box is ticked,
    so every value the estimator accepts can be expressed.
    """
    key = f"w.train.{p.name}"
    label = p.label
    if p.kind == "bool":
        _seed(key, bool(cur))
        return bool(st.checkbox(label, key=key, help=p.help))
    if p.kind in ("choice", "str"):
        opts = list(options if options is not None else [*p.special, *p.choices])
        if cur not in opts:
            opts.append(cur)
        _seed(key, cur)
        if st.session_state[key] not in opts:
            st.session_state[key] = cur
        return st.selectbox(label, opts, key=key, help=p.help,
                            format_func=lambda v: p.special[v][1] if p.is_special(v) else str(v))
    special = next(iter(p.special), "__none__")
    is_special = p.is_special(cur)
    number = p.number_default if is_special else cur
    cast = int if p.kind == "int" else float
    if p.special:
        _seed(key + ".special", is_special)
    _seed(key, cast(number))
    ticked = bool(st.checkbox(p.special[special][1].capitalize(), key=key + ".special")) if p.special else False
    kw: dict[str, Any] = {"min_value": cast(p.low) if p.low is not None else None,
                          "max_value": cast(p.high) if p.high is not None else None}
    if p.step is not None:
        kw["step"] = cast(p.step)
    if p.fmt:
        kw["format"] = p.fmt
    value = st.number_input(label, key=key, disabled=ticked, help=p.help, **kw)
    return special if ticked else cast(value)


def train_form(*, defaults: dict[str, Any] | None = None, cuda: bool = False) -> dict[str, Any]:
    """Training choices -> keyword arguments of :class:`dhaka.Dhaka` (also stored in state).

    The fields come from :data:`dhaka.params.PARAMS` (groups ``network``, ``training`` and
    ``advanced``): names, bounds, special values, defaults and help are the estimator's own.

    Parameters
    ----------
    defaults
        Starting values for a fresh session (e.g. fast demo settings).
    cuda
        Whether a CUDA device is available (offers ``"cuda"``).

    Raises nothing: an invalid custom layer list is reported with ``st.error``
    and the form returns ``{}``.
    """
    from dhaka.estimator import PRESETS

    p1, p2, _ = st.columns([2, 1, 3], vertical_alignment="bottom")
    preset = p1.selectbox("Start from", list(PRESETS), key="w.train.preset", format_func=PRESET_LABELS.get,
                          help="Fills the form below with a named set of settings; change anything afterwards.")
    if p2.button("Apply", key="w.train.apply_preset"):
        apply_train_preset(preset)
    cur = {**estimator_defaults(), **(defaults or {}), **state.get_train_params()}
    structure = cur["structure"]
    _seed("w.train.structure", _structure_label(structure))
    _seed("w.train.custom", structure if isinstance(structure, str) and structure not in ("deep", "shallow")
          else ",".join(str(w) for w in structure) if not isinstance(structure, str) else "512,128")

    params: dict[str, Any] = {}
    c1, c2, c3 = st.columns(3)
    with c1:
        label = st.selectbox("Encoder structure", list(STRUCTURE_PRESETS), key="w.train.structure",
                             help=PARAM["structure"].help)
        custom = st.text_input("Layer widths (comma-separated)", key="w.train.custom",
                               disabled=STRUCTURE_PRESETS[label] is not None)
        params["latent_dim"] = _param_widget(PARAM["latent_dim"], cur["latent_dim"])
    training = [p for p in PARAMS if p.group == "training"]
    half = (len(training) + 1) // 2
    for col, group in ((c2, training[:half]), (c3, training[half:])):
        with col:
            for p in group:
                params[p.name] = _param_widget(p, cur[p.name])
    with st.expander("Advanced"):
        advanced = [p for p in PARAMS if p.group == "advanced"]
        devices = ["auto", "cpu"] + (["cuda"] if cuda else [])
        cols = st.columns(3)
        for i, p in enumerate(advanced):
            with cols[i * 3 // len(advanced)]:
                params[p.name] = _param_widget(p, cur[p.name], options=devices if p.name == "device" else None)

    preset_structure = STRUCTURE_PRESETS[label]
    if preset_structure is None:
        try:
            from dhaka.model import resolve_structure

            params["structure"] = list(resolve_structure(custom))
        except Exception as exc:  # noqa: BLE001
            st.error(f"Layer widths: {error_message(exc)}")
            return {}
    else:
        params["structure"] = preset_structure
    # library-only settings (e.g. the paper preset's encoder_pcs=None) are kept as the preset set them
    hidden = {p.name: cur[p.name] for p in PARAMS if p.group == "library"}
    changed = {k: v for k, v in hidden.items() if v != estimator_defaults()[k]}
    if changed:
        st.caption("Also set (library settings): " + ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    params.update(hidden)
    state.set_train_params(params)
    return params


#: The "Correct for batch" option that means no batch correction.
NO_BATCH = "(none)"


def batch_choice(adata: anndata.AnnData) -> str | None:
    """"Correct for batch": ``(none)`` or an obs column of categories (:func:`dhaka.batch.candidate_columns`);
    returns the column or ``None`` (also stored in state, :func:`dhaka.ui.state.get_batch_key`)."""
    from dhaka.batch import candidate_columns

    options = [NO_BATCH, *candidate_columns(adata.obs)]
    cur = state.get_batch_key()
    _seed("w.train.batch_key", cur if cur in options else NO_BATCH)
    if st.session_state["w.train.batch_key"] not in options:  # another dataset since
        st.session_state["w.train.batch_key"] = NO_BATCH
    choice = st.selectbox("Correct for batch", options, key="w.train.batch_key",
                          help="An obs column naming each cell's sample, donor or sequencing run: the model is "
                               "conditioned on it (as scVI's batch_key), so the latent space need not separate "
                               "the batches. Columns with 2-50 categories are offered.")
    key = None if choice == NO_BATCH else str(choice)
    state.set_batch_key(key)
    return key


def settings_summary(params: dict[str, Any]) -> str:
    """The training settings in one line (the Train page shows it in place of the form while a training runs).

    The network and training fields are always listed, an advanced or library setting only when it
    differs from the estimator's default; special values read as the form labels them ("automatic").
    """
    base = estimator_defaults()
    parts = [f"encoder: {_structure_label(params.get('structure', base['structure'])).split(' (')[0].lower()} "
             f"{_widths(params.get('structure', base['structure']))}"]
    for p in PARAMS:
        if p.name == "structure" or p.group == "preprocess" or p.name not in params:
            continue
        value = params[p.name]
        if p.group in ("advanced", "library") and value == base.get(p.name):
            continue
        shown = p.special[value][1] if p.is_special(value) else f"{value:g}" if isinstance(value, float) else value
        parts.append(f"{p.label.lower()}: {shown}")
    return plain(" · ".join(str(x) for x in parts))


def _widths(structure: Any) -> str:
    try:
        from dhaka.model import resolve_structure

        return "(" + "-".join(str(w) for w in resolve_structure(structure)) + ")"
    except (TypeError, ValueError):
        return ""
