"""Reusable Streamlit pieces: settings forms that return plain kwargs dicts,
the colour control, figure downloads, error boxes, the sidebar and the
hand-over of a finished training job into the session.

Widget values are kept in :mod:`dhaka.ui.state` dicts (``PREPROCESS``,
``TRAIN_PARAMS``) and copied into the widget keys only when those keys are
missing, so settings survive switching pages (Streamlit forgets the state of
widgets that a page does not draw).
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import numpy as np
import streamlit as st

from dhaka.ui import state

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["safe_call", "error_message", "preprocess_form", "train_form", "ColorChoice", "color_control",
           "sidebar", "collect_finished_job", "show_notices", "job_is_active",
           "STRUCTURE_PRESETS", "PLOTLY_CONFIG", "require_entrypoint", "entrypoint", "navigation",
           "start_views", "views_progress", "selected_points", "offer_latest_run"]
REFINE_CHOICES: list[Any] = ["auto", 0, 1, 2, 3]  # rounds of latent-guided gene refinement

T = TypeVar("T")

#: Plotly config for every chart: PNG export at twice the screen resolution, no logo.
PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}

#: Label -> ``structure`` value of :class:`dhaka.Dhaka`.
STRUCTURE_PRESETS = {"Paper deep (1024-512-256)": "deep", "Paper shallow (1024)": "shallow",
                     "Custom layer list": None}
ACTIVE = ("queued", "running")


# ------------------------------------------------------------------- errors
def plain(text: Any) -> str:
    """``text`` with Markdown's special characters escaped, for names and messages that come from files
    or other people (shown by ``st.error`` / ``st.caption``, which render Markdown)."""
    import re

    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", str(text))


def error_message(exc: BaseException) -> str:
    """A one-line user-facing message for an exception (no traceback)."""
    msg = str(exc).strip()
    if isinstance(exc, KeyError) and msg.startswith(("'", '"')):
        msg = msg[1:-1]
    return msg or type(exc).__name__


def safe_call(fn: Callable[..., T], *args: Any, what: str | None = None, **kwargs: Any) -> T | None:
    """Call a library function; on any exception show ``st.error`` and return ``None``.

    Parameters
    ----------
    fn
        The function to call.
    what
        Prefix of the error message, e.g. ``"Could not read the file"``.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the UI never shows a traceback
        msg = error_message(exc)
        st.error(f"{what}: {msg}" if what else msg)
        return None


# ---------------------------------------------------------------- persistence
def _seed(key: str, value: Any) -> None:
    """Give widget ``key`` a starting value unless it already has one."""
    if key not in st.session_state:
        st.session_state[key] = value


_TRI = {"auto": "auto (from the detected kind)", True: "yes", False: "no"}


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
        mode = st.radio("Mode", ["expression", "cnv"], key="w.prep.mode", horizontal=True,
                        format_func={"expression": "Expression (scRNA-seq)", "cnv": "Copy number"}.get,
                        help="Copy-number profiles are not normalised or logged; each bin is trimmed to its 2-98 % "
                             "quantiles over the cells, so events of fewer than ~2 % of the cells (private "
                             "events, state-call errors) do not dominate.")
        cnv = mode == "cnv"
        auto_label = f"auto (detected: {detected})" if detected else _TRI["auto"]
        fmt = lambda v: auto_label if v == "auto" else _TRI[v]  # noqa: E731
        value_transform = st.selectbox(
            "Value transform", ["auto", "log", "pearson"], key="w.prep.value_transform", disabled=cnv,
            format_func={"auto": "auto (Pearson residuals on raw counts, else log)",
                         "log": "normalise and log", "pearson": "Pearson residuals (raw counts)"}.get,
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
            "Gene selection", ["cv", "entropy", "mean", "variance"], key="w.prep.gene_selection",
            format_func={"cv": "coefficient of variation", "entropy": "entropy", "mean": "mean expression",
                         "variance": "variance"}.get,
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
    from dhaka.params import PARAMS, defaults

    values = {**defaults(), **PRESETS[name]}
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
    from dhaka.params import PARAM, PARAMS
    from dhaka.params import defaults as estimator_defaults

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


def settings_summary(params: dict[str, Any]) -> str:
    """The training settings in one line (the Train page shows it in place of the form while a training runs).

    The network and training fields are always listed, an advanced or library setting only when it
    differs from the estimator's default; special values read as the form labels them ("automatic").
    """
    from dhaka.params import PARAMS
    from dhaka.params import defaults as estimator_defaults

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


# ------------------------------------------------------------------- colour
@dataclass
class ColorChoice:
    """What the colour control picked: one value per cell (or ``None``), its name and kind."""

    values: Any
    name: str
    kind: str  # "categorical" | "continuous" | "auto"


def color_control(adata: anndata.AnnData, *, clusters: np.ndarray | None, key: str = "w.colour") -> ColorChoice:
    """One colour control for every view: GMM cluster, an obs column, or a gene's expression."""
    options: list[str] = []
    if clusters is not None:
        options.append("GMM cluster")
    annotations = state.get_annotations()
    options += [f"annotation: {a}" for a in annotations]
    options += [f"obs: {c}" for c in adata.obs.columns]
    options += ["Gene expression", "None"]
    truth = state.get_truth_column()
    default = "GMM cluster" if clusters is not None else (f"obs: {truth}" if truth else options[0])
    if st.session_state.get(key) not in options:
        st.session_state[key] = default
    c1, c2 = st.columns([2, 2])
    with c1:
        choice = st.selectbox("Colour cells by", options, key=key)
    if choice == "GMM cluster":
        return ColorChoice(np.asarray(clusters).astype(int), "cluster", "categorical")
    if choice == "None":
        return ColorChoice(None, "", "auto")
    if choice.startswith("annotation: "):
        name = choice[len("annotation: "):]
        return ColorChoice(annotations[name], name, "categorical")
    if choice.startswith("obs: "):
        col = choice[5:]
        return ColorChoice(adata.obs[col].to_numpy(), col, "auto")
    genes = [str(g) for g in adata.var_names]
    with c2:
        gene = st.selectbox("Gene", genes, key=key + ".gene", help="Type to search.")
    j = genes.index(gene)
    import scipy.sparse as sp

    col_values = adata.X[:, j]
    col_values = col_values.toarray().ravel() if sp.issparse(col_values) else np.asarray(col_values).ravel()
    return ColorChoice(col_values.astype(np.float64), gene, "continuous")


def selected_points(key: str) -> np.ndarray:
    """Cell positions of the box / lasso selection of the chart drawn with ``key`` (``on_select="rerun"``).

    The points' ``customdata`` is read (:func:`dhaka.plots.selection_scatter` puts each cell's row
    position there); the selection's ``point_indices`` are the fallback.
    """
    ev = st.session_state.get(key) or {}
    sel = (ev.get("selection") if isinstance(ev, dict) else getattr(ev, "selection", None)) or {}
    pts = sel.get("points") or []
    idx = [p["customdata"] for p in pts if isinstance(p, dict) and "customdata" in p]
    if not idx:
        idx = sel.get("point_indices") or []
    return np.unique(np.asarray(idx, dtype=int).ravel()) if len(idx) else np.array([], dtype=int)


# ------------------------------------------------------------------ job glue
def analysis_job_status(job: Any, *, key: str, what: str, start_message: str = "starting…",
                        default_total: int = 1) -> dict[str, Any]:
    """Queue position + Cancel, progress bar + Stop, or the failure of a background analysis job.

    Returns the job's snapshot so the page can add what is its own (rows so far, results).
    Widget keys are ``f"{key}.cancel"`` and ``f"{key}.stop"``.
    """
    job.touch()  # the person is still here
    snap = job.snapshot()
    prog = snap.get("progress") or {}
    if snap["status"] == "queued":
        st.info(f"Queued (position {snap.get('queue_position') or '?'}): waits for a free job slot.")
        st.button("Cancel", key=f"{key}.cancel", on_click=job.cancel)
    elif snap["status"] == "running":
        done, total = prog.get("done", 0), prog.get("total") or max(default_total, 1)
        st.progress(min(1.0, done / total), text=prog.get("message", start_message))
        if not snap.get("stop_requested"):
            st.button("Stop", key=f"{key}.stop", on_click=job.cancel, icon=":material/stop:")
    elif snap["status"] == "failed":
        st.error(f"The {what} failed: {snap.get('error')}")
    return snap


def job_is_active(snapshot: dict[str, Any] | None) -> bool:
    """``True`` while a job snapshot says queued or running."""
    return snapshot is not None and snapshot.get("status") in ACTIVE


def collect_finished_job() -> None:
    """Take a finished training job's result into the session (once per job).

    Called on every app run (from ``app.py``): when this session's job has
    ended since the last run, its result becomes the one in use (if it was
    trained on the dataset still loaded) and a notice says what happened.
    """
    job = state.get_job()
    if job is None or not job.done or st.session_state.get(state.COLLECTED_JOB) == job.id:
        return
    st.session_state[state.COLLECTED_JOB] = job.id
    snap = job.snapshot()
    status = snap["status"]
    out = job.result
    if status == "done" and out is None:  # freed while the person was away (dhaka.jobs abandoned sweep)
        run_id = (snap.get("progress") or {}).get("run_id", "?")
        state.push_notice("info", f"Training finished while you were away; its result is stored as run {run_id} "
                                  "(open it from the Runs page).")
        return
    if status == "failed" or out is None:
        msg = snap.get("error") or "training stopped before a model was made"
        state.push_notice("error", f"Training failed: {msg}")
        return
    if out.dataset_key != state.get_dataset_key():
        state.push_notice("warning", f"Training finished on the previously loaded dataset; it is stored as run "
                                     f"{out.run_id} (open it from the Runs page after loading that dataset).")
        return
    state.set_result(out.estimator, out.latent, gmm=out.gmm, run_id=out.run_id, source="job",
                     status=out.status, latent_digest=out.latent_digest, obs_names=out.obs_names)
    state.set_model_input(out.model_input, out.model_input_digest)
    start_views()
    if out.status == "stopped":
        state.push_notice("warning", f"Training stopped early; the model as it was is kept (run {out.run_id}).")
    else:
        k = out.metrics.get("k")
        extra = f", {k} GMM clusters" if k else ""
        state.push_notice("success", f"Training finished (run {out.run_id}{extra}). Open Explore to see it.")


def start_views(*, n_components: int = 2) -> None:
    """Compute the comparison views (PCA, t-SNE, UMAP) of the result in use in a background job.

    Explore shows each view as soon as it is ready (:func:`views_progress`); a view already
    computed is not computed again.
    """
    from dhaka.ui import cached, tasks

    model_input = state.get_model_input()
    if model_input is None:
        return
    seed = int(state.get_estimator_params().get("seed", 0))
    after = None
    if not tasks.train_in_thread():
        from dhaka.ui import train_worker

        after = train_worker.prestart  # the next training's spare process, once the views are done
    task = tasks.ViewsTask(model_input[0], digest=model_input[1], n_components=n_components, seed=seed,
                           done=tuple(state.get_embeddings()), run=cached.views_worker().run, after=after)
    if not task.methods:
        return
    previous = state.get_views_job()
    if previous is not None:
        previous[0].cancel()  # the views of the result this session no longer shows
    try:
        from dhaka.ui import owner

        job = cached.job_manager().submit(task, owner=owner.owner_key(), name="comparison views", kind="views")
    except Exception as exc:  # noqa: BLE001 - the views can still be computed from the Explore page
        state.push_notice("warning", f"The comparison views were not started ({error_message(exc)}); "
                                     "compute them on the Explore page.")
        return
    state.set_views_job(job, task)


def views_progress() -> None:
    """Take finished background views into the session; say what is still running (Explore page)."""
    from dhaka.ui import tasks

    views = state.get_views_job()
    if views is None:
        return
    job, task = views
    running = not job.done

    @st.fragment(run_every=1.0 if running else None)
    def _poll() -> None:
        have = state.get_embeddings()
        new = {k: v for k, v in list(task.results.items()) if k not in have}
        for name, coords in new.items():
            state.set_embedding(name, coords)
        snap = job.snapshot(history=False)
        if new or (running and job.done):
            st.rerun()  # the whole page: draw the new views (and stop polling when the job has ended)
        left = [tasks.VIEW_LABELS[m] for m in task.methods if f"{m}_{task.n_components}d" not in task.results]
        if snap["status"] in ("queued", "running") and left:
            prog = snap.get("progress") or {}
            what = prog.get("message") if snap["status"] == "running" else "Waiting for a free job slot"
            st.info(f"{what}… still to come: {', '.join(left)}. The views appear here as they finish.",
                    icon=":material/hourglass:")
        elif snap["status"] == "failed":
            st.warning(f"The comparison views failed: {snap.get('error')}. Use the Compute buttons below.")

    _poll()


def show_notices() -> None:
    """Show and clear the session's one-shot messages."""
    for level, text in state.pop_notices():
        getattr(st, level if level in ("info", "success", "warning", "error") else "info")(text)


def _job_line(snap: dict[str, Any]) -> str:
    status = snap["status"]
    prog = snap.get("progress") or {}
    if status == "queued":
        return f"Training queued (position {snap.get('queue_position') or '?'})"
    if status == "running":
        ep, n = prog.get("epoch"), prog.get("n_epochs")
        if ep and n:
            return f"Training: epoch {ep}/{n}"
        return f"Training: {prog.get('message', 'starting')}"
    return {"done": "Last training: finished", "cancelled": "Last training: stopped",
            "failed": "Last training: failed"}.get(status, status)


_ENTRY = threading.local()
#: The app's entry script (``streamlit run app.py``).
APP_SCRIPT = Path(__file__).resolve().parents[2] / "app.py"


@contextlib.contextmanager
def entrypoint() -> Iterator[None]:
    """``app.py`` runs the selected page inside this: :func:`require_entrypoint` then lets it through."""
    _ENTRY.active = True
    try:
        yield
    finally:
        _ENTRY.active = False


def require_entrypoint() -> None:
    """First line of every page: make sure the page runs inside ``app.py``'s navigation.

    Streamlit runs a session in its legacy ``pages/`` mode while its class flag
    ``PagesManager.uses_pages_directory`` is set (it starts as "a pages/ folder exists" on a server's
    first session, and AppTest sets it again on every run); only ``st.navigation`` clears it. A URL
    such as ``/train`` then runs ``pages/train.py`` on its own, without the app's state, sidebar and
    job hand-over. Such a run (one not inside :func:`entrypoint`) runs ``app.py`` in its place, in
    the same script run, so that widget events of this run (a button click) are not lost, and stops.
    """
    if getattr(_ENTRY, "active", False):
        return
    import runpy

    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None or Path(ctx.pages_manager.main_script_path).resolve() != APP_SCRIPT:
        return  # the page itself is the script being run (a test of one page), not a page of the app

    PagesManager.uses_pages_directory = False
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()


def navigation(pages: dict[str, list[Any]]) -> None:
    """The sidebar's page links, by section (the app's ``st.navigation`` runs with ``position="hidden"``)."""
    for section, items in pages.items():
        st.caption(section)
        for p in items:
            st.page_link(p, label=p.title, icon=p.icon)


def sidebar(pages: dict[str, list[Any]] | None = None, *, job_status: bool = True) -> None:
    """The shared sidebar: page links, current dataset and this session's job status (live while it runs).

    ``job_status=False`` leaves the job line out (the Train page shows the job itself, and a second
    poll would only slow the training down).
    """
    with st.sidebar:
        if pages:
            navigation(pages)
            st.divider()
        info = state.get_dataset_info()
        adata = state.get_dataset()
        if adata is None:
            st.caption("No dataset loaded")
        else:
            st.markdown(f"**Dataset:** {info.get('name', 'unnamed')}  \n"
                        f"{adata.n_obs:,} cells × {adata.n_vars:,} genes")
        res = state.get_result_info()
        if state.results_match_dataset():
            st.caption(f"Model: run {res.get('run_id') or '(unsaved)'}"
                       + (f" · {state.get_cluster_k()} clusters" if state.get_cluster_k() else ""))
        job = state.get_job()
        active = job is not None and not job.done
        if not job_status:
            return

        @st.fragment(run_every=5.0 if active else None)
        def _status() -> None:
            j = state.get_job()
            if j is None:
                return
            j.touch()  # the person is still here (the sidebar polls on every page)
            snap = j.snapshot()
            line = _job_line(snap)
            if job_is_active(snap):
                st.info(line, icon=":material/model_training:")
            elif snap["status"] == "failed":
                st.error(line, icon=":material/error:")
            else:
                st.caption(line)
            if active and not job_is_active(snap):
                st.rerun()

        _status()


# -------------------------------------------------------------------- runs
def offer_latest_run() -> None:
    """A button that opens this person's newest finished run of the loaded dataset (Explore after a reload).

    A reload or a page opened by its URL starts a new session, which holds no model; the runs are kept.
    Shows nothing when there is no such run.
    """
    from dhaka.ui import owner

    view = owner.run_store()
    name = state.get_dataset_info().get("name")
    runs = [i for i in (safe_call(view.list, include_shared=False, what="Cannot list runs") or [])
            if i.data_name == name and i.status in ("done", "stopped")]
    if not runs:
        return
    newest = max(runs, key=lambda i: (i.created is not None, i.created or 0))
    when = newest.created.strftime("%Y-%m-%d %H:%M") if newest.created else "?"
    if st.button(f"Open your latest run of this dataset ({newest.id}, {newest.status}, {when})", type="primary",
                 key="w.exp.open_latest", icon=":material/history:",
                 help="This page was reloaded or opened by its address, which starts a new session; "
                      "every training is kept as a run (Runs page)."):
        if open_run(newest.id, store=view):
            st.rerun()


def open_run(run_id: str, *, store: Any = None) -> bool:
    """Load a stored run (final model or last checkpoint) as the session's result.

    The run's cells must be the loaded dataset's: matched by cell id when the
    run has latent coordinates, else by the data fingerprint (then the latent
    space is computed from the checkpoint). When the run was trained on a
    built-in demo that is not loaded, the demo is loaded first. Problems are
    shown with ``st.error``.

    Returns
    -------
    bool
        ``True`` when the run is now the result in use.
    """
    from dhaka.estimator import Dhaka
    from dhaka.runs import RunError
    from dhaka.ui import cached, demos, owner, tasks

    store = store if store is not None else owner.run_store()
    try:
        run = store.open(run_id)
        record = run.record
        data = record.get("data") or {}
        info = state.get_dataset_info()
        if data.get("name") and data.get("name") != info.get("name"):
            demo = next((d for d in demos.available() if d.title == data["name"]), None)
            if demo is not None:
                adata, second = cached.load_demo(demo.key)
                state.set_dataset(adata, name=demo.title, source="demo", demo=demo.key, truth=demo.truth,
                                  mode=demo.mode, second=second)
        adata = state.get_dataset()
        if adata is None:
            st.error(f"Run {run_id} was trained on {plain(repr(data.get('name')))}: load that dataset first (Data page).")
            return False
        est = Dhaka.load(run.model_dir())
        files = record.get("files") or {}
        cell_ids = [str(o) for o in adata.obs_names]
        emb = None  # the model's input and latent, when computed here (preprocessed once)
        if files.get("latent"):
            lat = run.load_latent()
            lat.index = lat.index.astype(str)
            if set(lat.index) != set(cell_ids) or len(lat) != len(cell_ids):
                st.error(f"Run {run_id} was trained on {plain(repr(data.get('name')))} "
                         f"({len(lat):,} cells); the loaded dataset has other cells. Load that dataset first.")
                return False
            lat = lat.loc[cell_ids]
            Z = lat[[c for c in lat.columns if c.startswith("dhaka_")]].to_numpy(dtype=np.float32)
        else:
            fp = data.get("fingerprint") or {}
            mine = tasks.data_fingerprint(adata)
            if fp.get("sha256") and fp.get("sha256") != mine.get("sha256"):
                st.error(f"Run {run_id} was trained on {plain(repr(data.get('name')))} with shape {fp.get('shape')}; "
                         "the loaded dataset differs. Load that dataset first.")
                return False
            emb = est.embed(adata)
            Z = np.asarray(emb.latent)
        seed = int(est.get_params().get("seed", 0))
        z_digest = tasks.digest(Z)
        gmm = cached.clusters(Z, digest=z_digest, k_max=10, seed=seed, mode=est.get_params().get("mode", "expression"))
        state.set_result(est, Z, gmm=gmm, run_id=run_id, source="run", status=run.status,
                         latent_digest=z_digest, obs_names=cell_ids)
        from dhaka.ui import annotate

        for problem in annotate.load_from_run(run, cell_ids, taken=[str(c) for c in adata.obs.columns]):
            state.push_notice("warning", plain(f"Run {run_id}: {problem}."))
        S = emb.model_input if emb is not None else est.align(adata)[0]
        state.set_model_input(S, tasks.digest(S))
        start_views()
        state.push_notice("success", f"Opened run {run_id} ({run.status}"
                          + (f", checkpoint of epoch {record.get('last_checkpoint_epoch')}" if not files.get("model")
                             else "") + ").")
        return True
    except (RunError, Exception) as exc:  # noqa: BLE001
        st.error(f"Could not open run {run_id}: {error_message(exc)}")
        return False
