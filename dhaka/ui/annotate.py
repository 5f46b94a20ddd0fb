"""Annotations: a person's own labels of the cells, kept as ``obs``-style columns with the run.

Two ways to make them on the Explore page (:func:`panel`):

* **name clusters**: one name per cluster in use; clusters given the same name are merged;
* **label a selection**: a box or lasso on a 2-D view of the cells, then a label.

They live in :data:`dhaka.ui.state.ANNOTATIONS` (``name -> one label or None per cell``), are saved
with the run in the run store (:meth:`dhaka.runs.RunStore.save_annotations`) so that opening the run
brings them back, colour the Explore views, serve as groups for differential expression and go out
with the latent CSV download.

Names and labels come from people: they are capped in length, may not hold control characters or
``<`` / ``>``, are written to CSV through the formula-neutralising writer (:func:`dhaka.io.to_csv_safe`)
and are shown as plain text (:func:`dhaka.ui.messages.plain` for Markdown).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from dhaka import plots
from dhaka.ui import owner, state
from dhaka.ui.figures import PLOTLY_CONFIG, selected_points
from dhaka.ui.messages import error_message, plain

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["MAX_ANNOTATIONS", "MAX_NAME_CHARS", "MAX_LABEL_CHARS", "MAX_LABELS", "AnnotationError",
           "check_text", "check_new_name", "relabel_clusters", "label_cells", "to_frame", "from_frame",
           "set_annotation", "delete_annotation", "save", "load_from_run", "group_columns", "panel"]

#: Most annotations one result keeps.
MAX_ANNOTATIONS = 20
#: Longest annotation name (a column name in the downloads).
MAX_NAME_CHARS = 40
#: Longest label.
MAX_LABEL_CHARS = 60
#: Most distinct labels in one annotation.
MAX_LABELS = 200
_RESERVED = ("cell", "cluster", "dhaka_cluster")


class AnnotationError(ValueError):
    """A name or label that cannot be used; the message says why."""


def check_text(text: Any, *, what: str = "The label", max_chars: int = MAX_LABEL_CHARS) -> str:
    """``text`` stripped, or :class:`AnnotationError` naming the problem.

    Refused: empty text, text longer than ``max_chars``, control or format characters (line breaks,
    bidirectional overrides), ``<`` and ``>`` (figure legends render a few HTML tags).
    """
    raw = str(text)
    if any(unicodedata.category(c)[0] == "C" for c in raw):
        raise AnnotationError(f"{what} contains control characters; use letters, digits and punctuation.")
    s = " ".join(raw.split())
    if not s:
        raise AnnotationError(f"{what} is empty.")
    if len(s) > max_chars:
        raise AnnotationError(f"{what} is {len(s)} characters long; the limit is {max_chars}.")
    if "<" in s or ">" in s:
        raise AnnotationError(f"{what} cannot contain < or >.")
    return s


def check_new_name(name: Any, *, taken: Sequence[str] = (), existing: Mapping[str, Any] | None = None) -> str:
    """A valid name for a new annotation (:func:`check_text`, not a dataset column, not reserved).

    Parameters
    ----------
    name
        What the person typed.
    taken
        Column names it may not take (the dataset's ``obs`` columns).
    existing
        The annotations so far (their count is capped at :data:`MAX_ANNOTATIONS`; re-using a name
        replaces that annotation and is allowed).
    """
    s = check_text(name, what="The annotation name", max_chars=MAX_NAME_CHARS)
    if s.lower() in _RESERVED or s.lower().startswith("dhaka_"):
        raise AnnotationError(f"{s!r} is reserved for the downloads' own columns; choose another name.")
    if s in {str(t) for t in taken}:
        raise AnnotationError(f"{s!r} is already a column of the dataset; choose another name.")
    existing = existing or {}
    if s not in existing and len(existing) >= MAX_ANNOTATIONS:
        raise AnnotationError(f"There are already {MAX_ANNOTATIONS} annotations, the most kept; delete one first.")
    return s


def _check_labels(labels: np.ndarray) -> np.ndarray:
    distinct = {v for v in labels if v is not None}
    if len(distinct) > MAX_LABELS:
        raise AnnotationError(f"An annotation holds at most {MAX_LABELS} distinct labels, this one {len(distinct)}.")
    return labels


def relabel_clusters(clusters: Any, names: Mapping[Any, Any]) -> np.ndarray:
    """One label per cell from a name per cluster; clusters without a name keep their number.

    Clusters given the same name become one group (a merge).

    Raises
    ------
    AnnotationError
        When a name is not a valid label (:func:`check_text`).
    """
    c = np.asarray(clusters)
    out = np.empty(len(c), dtype=object)
    for k in np.unique(c):
        raw = names.get(k, names.get(str(k), ""))
        label = str(k) if raw is None or not str(raw).strip() else check_text(raw, what=f"The name of cluster {k}")
        out[c == k] = label
    return _check_labels(out)


def label_cells(labels: Any | None, n_cells: int, positions: Any, label: str | None) -> np.ndarray:
    """A copy of ``labels`` (or a new unlabelled annotation) with the cells at ``positions`` set to ``label``.

    ``label=None`` unlabels them.
    """
    out = np.full(n_cells, None, dtype=object) if labels is None else np.array(labels, dtype=object, copy=True)
    if len(out) != n_cells:
        raise AnnotationError(f"The annotation has {len(out)} labels for {n_cells} cells.")
    pos = np.asarray(positions, dtype=int).ravel()
    if len(pos) and (pos.min() < 0 or pos.max() >= n_cells):
        raise AnnotationError("The selection names cells that are not in the dataset.")
    out[pos] = None if label is None else check_text(label)
    return _check_labels(out)


def to_frame(annotations: Mapping[str, Any], obs_names: Sequence[str]) -> pd.DataFrame:
    """The annotations as a table: index = cell ids, one column per annotation (missing = unlabelled)."""
    import pandas as pd

    idx = pd.Index([str(o) for o in obs_names], name="cell")
    return pd.DataFrame({name: pd.Series(np.asarray(v, dtype=object), index=idx) for name, v in annotations.items()},
                        index=idx)


def from_frame(table: pd.DataFrame, obs_names: Sequence[str], *,
               taken: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], list[str]]:
    """Annotations read back from a run: aligned to ``obs_names`` and checked again.

    Returns
    -------
    annotations, problems
        The valid columns (cells missing from ``table`` are unlabelled) and one message per column
        that was left out.
    """
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    ids = [str(o) for o in obs_names]
    table = table.copy()
    table.index = table.index.astype(str)
    for col in list(table.columns)[:MAX_ANNOTATIONS]:
        try:
            name = check_new_name(col, taken=taken, existing=out)
            values = table[col].reindex(ids).to_numpy(dtype=object)
            labels = np.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else check_text(v)
                               for v in values], dtype=object)
            out[name] = _check_labels(labels)
        except AnnotationError as exc:
            problems.append(f"annotation {str(col)[:MAX_NAME_CHARS]!r} left out: {exc}")
    if len(table.columns) > MAX_ANNOTATIONS:
        problems.append(f"only the first {MAX_ANNOTATIONS} annotations were kept")
    return out, problems


# ----------------------------------------------------------- session + store
def save() -> str | None:
    """Keep the session's annotations with the run in use; the reason when they could not be.

    Returns
    -------
    str or None
        ``None`` when saved; otherwise a message (no run, someone else's run, a disk problem): the
        annotations then stay in this session only.
    """
    run_id = state.get_result_info().get("run_id")
    if not run_id:
        return "This result is not stored as a run, so the annotations are kept in this session only."
    obs_names = state.get_result_info().get("obs_names") or [str(o) for o in state.get_dataset().obs_names]
    try:
        owner.run_store().save_annotations(run_id, to_frame(state.get_annotations(), obs_names))
    except Exception as exc:  # noqa: BLE001 - the labels stay in the session; say why they were not kept
        return f"The annotations are kept in this session only: {error_message(exc)}"
    return None


def set_annotation(name: str, labels: np.ndarray) -> str | None:
    """Add or replace one annotation and keep it with the run; see :func:`save` for the return value."""
    ann = state.get_annotations()
    ann[name] = np.asarray(labels, dtype=object)
    state.set_annotations(ann)
    return save()


def delete_annotation(name: str) -> str | None:
    """Remove one annotation (also from the run); see :func:`save` for the return value."""
    ann = state.get_annotations()
    ann.pop(name, None)
    state.set_annotations(ann)
    return save()


def load_from_run(run: Any, obs_names: Sequence[str], *, taken: Sequence[str] = ()) -> list[str]:
    """Take a run's annotations into the session (after :func:`dhaka.ui.state.set_result`).

    Returns
    -------
    list of str
        Problems met (columns left out); empty when all came back.
    """
    try:
        table = run.load_annotations()
    except Exception as exc:  # noqa: BLE001 - the run still opens without its labels
        return [f"its annotations could not be read ({error_message(exc)})"]
    ann, problems = from_frame(table, obs_names, taken=taken)
    state.set_annotations(ann)
    return problems


def group_columns(adata: Any, *, max_groups: int = 50) -> dict[str, np.ndarray]:
    """Columns whose values can split cells into groups: annotations first, then ``obs`` columns.

    Each is ``name -> one text label per cell`` (``None`` where an annotation leaves a cell unlabelled);
    a column qualifies with 2 to ``max_groups`` distinct values.
    """
    out: dict[str, np.ndarray] = {}
    for name, labels in state.get_annotations().items():
        if 2 <= len({v for v in labels if v is not None}) <= max_groups:
            out[name] = np.asarray(labels, dtype=object)
    for col in adata.obs.columns:
        s = adata.obs[col]
        if str(col) not in out and 2 <= s.nunique() <= max_groups:
            out[str(col)] = s.astype(str).to_numpy(dtype=object)
    return out


# ------------------------------------------------------------------------ UI
def _report(problem: str | None, *, done: str) -> None:
    if problem is None:
        state.push_notice("success", plain(done + " (kept with the run)."))
    else:
        state.push_notice("warning", plain(done + ". " + problem))


def _name_clusters(clusters: np.ndarray, taken: Sequence[str], *, key: str) -> None:
    """One text box per cluster in a form; saving makes (or replaces) an annotation."""
    ks = sorted(np.unique(clusters).tolist())
    with st.form(f"{key}.form", border=False):
        name = st.text_input("Annotation name", "cell_type", key=f"{key}.name", max_chars=MAX_NAME_CHARS)
        cols = st.columns(4)
        names = {k: cols[i % 4].text_input(f"Cluster {k} ({int((clusters == k).sum()):,} cells)",
                                           key=f"{key}.c{k}", max_chars=MAX_LABEL_CHARS,
                                           placeholder=str(k)) for i, k in enumerate(ks)}
        submitted = st.form_submit_button("Save cluster names", type="primary", icon=":material/label:",
                                          key=f"{key}.save")
    st.caption("Give clusters the same name to merge them; a cluster left empty keeps its number.")
    if submitted:
        try:
            col = check_new_name(name, taken=taken, existing=state.get_annotations())
            labels = relabel_clusters(clusters, names)
        except AnnotationError as exc:
            st.error(plain(exc))
            return
        _report(set_annotation(col, labels), done=f"Annotation '{col}' saved")
        st.rerun()


def _label_selection(views: Mapping[str, tuple[np.ndarray, tuple[str, str]]], obs_names: Sequence[str],
                     taken: Sequence[str], *, key: str) -> None:
    """A box / lasso on a 2-D view, then a label for the selected cells."""
    if not views:
        st.caption("No 2-D view of the cells to select on.")
        return
    ann = state.get_annotations()
    new = "(new annotation)"
    if f"{key}.next_target" in st.session_state:  # set by the last labelling (the widget was drawn then)
        st.session_state[f"{key}.target"] = st.session_state.pop(f"{key}.next_target")
    c1, c2, c3 = st.columns(3)
    view = c1.selectbox("View", list(views), key=f"{key}.view")
    target = c2.selectbox("Annotation", [*ann, new], key=f"{key}.target")
    name = c3.text_input("New annotation name", "selection", key=f"{key}.name", max_chars=MAX_NAME_CHARS,
                         disabled=target != new)
    coords, axes = views[view]
    current = ann.get(target)
    fig = plots.selection_scatter(coords, groups=current, group_name=target if current is not None else "label",
                                  cell_ids=obs_names, axis_titles=axes,
                                  title="Draw a box or lasso around cells, then label them")
    st.plotly_chart(fig, key=f"{key}.chart", on_select="rerun", selection_mode=("box", "lasso"),
                    config=PLOTLY_CONFIG)
    picked = selected_points(f"{key}.chart")
    l1, l2, l3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    label = l1.text_input("Label", key=f"{key}.label", max_chars=MAX_LABEL_CHARS,
                          help=f"{len(picked):,} cells selected.")
    apply = l2.button("Label selected cells", key=f"{key}.apply", type="primary", disabled=not len(picked))
    clear = l3.button("Unlabel selected cells", key=f"{key}.clear", disabled=not len(picked) or current is None)
    st.caption(f"{len(picked):,} cells selected.")
    if not (apply or clear):
        return
    try:
        col = target if target != new else check_new_name(name, taken=taken, existing=ann)
        labels = label_cells(ann.get(col), len(obs_names), picked, None if clear else label)
    except AnnotationError as exc:
        st.error(plain(exc))
        return
    st.session_state[f"{key}.next_target"] = col
    _report(set_annotation(col, labels), done=f"{len(picked):,} cells {'un' if clear else ''}labelled in '{col}'")
    st.rerun()


def _manage(*, key: str) -> None:
    """The annotations so far (cells labelled, labels) with a Delete."""
    import pandas as pd

    ann = state.get_annotations()
    if not ann:
        st.caption("No annotations yet.")
        return
    rows = [{"annotation": k, "labelled cells": int(sum(v is not None for v in a)),
             "labels": len({v for v in a if v is not None})} for k, a in ann.items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"{key}.table")
    d1, d2 = st.columns([2, 1], vertical_alignment="bottom")
    gone = d1.selectbox("Annotation to delete", list(ann), key=f"{key}.del_name")
    if d2.button("Delete annotation", key=f"{key}.delete", icon=":material/delete:"):
        _report(delete_annotation(gone), done=f"Annotation '{gone}' deleted")
        st.rerun()


def panel(*, clusters: np.ndarray | None, views: Mapping[str, tuple[np.ndarray, tuple[str, str]]],
          obs_names: Sequence[str], taken: Sequence[str], key: str = "w.ann") -> None:
    """The Explore page's annotation tools: name clusters, label a selection, list and delete.

    Parameters
    ----------
    clusters
        The clusters in use (``None``: no cluster naming).
    views
        2-D coordinates to select on, by name, with their axis titles.
    obs_names
        Cell ids.
    taken
        Names an annotation may not take (the dataset's ``obs`` columns).
    key
        Prefix of the widget keys.
    """
    tabs = st.tabs(["Name clusters", "Label a selection", "Annotations"])
    with tabs[0]:
        if clusters is None:
            st.caption("No clusters in use.")
        else:
            _name_clusters(np.asarray(clusters), taken, key=f"{key}.clusters")
    with tabs[1]:
        _label_selection(views, obs_names, taken, key=f"{key}.sel")
    with tabs[2]:
        _manage(key=f"{key}.manage")
