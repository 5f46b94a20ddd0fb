"""Data page: load a demo or upload a matrix, look at it, choose the preprocessing."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dhaka import io, plots
from dhaka.estimator import Dhaka
from dhaka.preprocess import detect_kind, log_label, transform_label, trim_label
from dhaka.ui import cached, demos, entrypoint, figures, forms, messages, state, upload_worker

entrypoint.require_entrypoint()

st.title("Data")
st.caption("Load a built-in demo or your own matrix, check it, choose the preprocessing — then train on the Train page.")

limit_mb = int(st.get_option("server.maxUploadSize"))


def h5ad_layers(upload) -> dict:
    """The layers of an uploaded .h5ad (name -> kind, shape, dtype), listed once per upload; {} otherwise."""
    if upload is None or not upload.name.lower().endswith((".h5ad", ".h5ad.gz")):
        return {}
    seen = st.session_state.get("dhaka.data.layers")
    if seen is None or seen[0] != upload.file_id:
        try:  # listed in a capped child process, like every parse of an upload
            seen = (upload.file_id, upload_worker.h5ad_layers(upload))
        except Exception:  # noqa: BLE001 - a broken file: "Load file" says what is wrong with it
            seen = (upload.file_id, {})
        st.session_state["dhaka.data.layers"] = seen
    return {k: v for k, v in seen[1].items() if v["kind"] != "other"}

demo_tab, upload_tab = st.tabs(["Built-in demos", "Upload your data"])
with demo_tab:
    options = demos.available()
    key = st.selectbox("Demo dataset", [d.key for d in options], key="w.data.demo",
                       format_func=lambda k: demos.get(k).title)
    st.caption(demos.get(key).description)
    if st.button("Load demo", key="w.data.load_demo", type="primary"):
        loaded = messages.safe_call(cached.load_demo, key, what="Could not load the demo")
        if loaded is not None:
            d = demos.get(key)
            adata, second = loaded
            state.set_dataset(adata, name=d.title, source="demo", demo=d.key, truth=d.truth, mode=d.mode,
                              second=second)
            st.session_state.pop("w.prep.mode", None)  # let the demo's mode show in the form
            st.rerun()

with upload_tab:
    st.caption(f"Formats: CSV / TSV / TXT (optionally .gz; cells × genes or genes × cells), .h5ad, "
               f"10x Genomics .zip (matrix.mtx + barcodes + features), scipy sparse .npz, .npy, .mtx. "
               f"Copy number: HMMcopy / signals long tables (cell_id, chr, start, end, state), Ginkgo segment "
               f"matrices (CHR, START, END, cells; save SegCopy as .tsv) or bins named chr1:1-500000, all put "
               f"in genome order. Files up to **{limit_mb:,} MB** each.")
    up = st.file_uploader("Expression or copy-number matrix", type=list(io.READABLE_SUFFIXES), key="w.data.file")
    meta = st.file_uploader("Cell metadata (optional CSV, first column = cell id)", type=list(io.METADATA_SUFFIXES),
                            key="w.data.meta")
    orientation = st.radio("Orientation", ["auto", "cells_x_genes", "genes_x_cells"], horizontal=True,
                           key="w.data.orientation",
                           format_func={"auto": "detect", "cells_x_genes": "rows are cells",
                                        "genes_x_cells": "rows are genes"}.get)
    layers = h5ad_layers(up)
    layer = None
    if layers:
        shown = {k: f"layer {k!r}" + (f": {v['shape'][0]:,} × {v['shape'][1]:,} {v['dtype']}" if v["shape"] else "")
                 for k, v in layers.items()}
        pick = st.selectbox("Matrix to read", ["X", *layers], key="w.data.layer",
                            format_func=lambda k: "X (the main matrix)" if k == "X" else shown[k],
                            help="An .h5ad can hold other matrices beside X: raw counts, or the integer "
                                 "copy-number states of scDNA pipelines (layers['state']).")
        layer = None if pick == "X" else pick
    if st.button("Load file", key="w.data.load_file", type="primary", disabled=up is None):
        from dhaka.io.sandbox import MetadataError

        adata = None
        try:  # parsed in a child process under a memory cap the job queue admits (upload_worker)
            with st.spinner(f"Reading {up.name}…"):
                adata = upload_worker.read_upload(up, meta=meta, orientation=orientation, layer=layer)
        except MetadataError as exc:
            st.error(f"Could not read the metadata: {messages.error_message(exc)}")
        except Exception as exc:  # noqa: BLE001 - the UI never shows a traceback
            st.error(f"Could not read the file: {messages.error_message(exc)}")
        if adata is not None:
            fp = messages.safe_call(io.fingerprint, adata)
            name = up.name if layer is None else f"{up.name} (layer {layer})"
            state.set_dataset(adata, name=name, source="upload", filename=up.name, fingerprint=fp)
            st.session_state.pop("w.prep.mode", None)
            st.rerun()
        else:
            st.caption("The previously loaded dataset is still in use.")

adata = state.require_dataset()
info = state.get_dataset_info()
st.subheader(f"{info.get('name', 'Dataset')}")

X = adata.X
qc = messages.safe_call(cached.qc_stats, X, digest=info.get("digest", ""), what="QC statistics")
kind = messages.safe_call(detect_kind, X, mode=state.get_preprocess().get("mode", "expression"))
c = st.columns(5)
c[0].metric("Cells", f"{adata.n_obs:,}")
c[1].metric("Genes / bins", f"{adata.n_vars:,}")
if qc is not None:
    c[2].metric("Zeros", f"{qc['zero_fraction']:.1%}")
    c[3].metric("Value range", f"{qc['min']:.3g} … {qc['max']:.3g}")
c[4].metric("Detected kind", kind.kind if kind is not None else "?")
if kind is not None:
    st.caption(f"Detected kind: {kind.reason}")
meta_info = (adata.uns.get("dhaka_io") or {}).get("metadata") or {}
if meta_info.get("unmatched_cells"):
    st.warning(f"{meta_info['unmatched_cells']} cells have no row in {meta_info.get('filename', 'the metadata')}; "
               "their metadata is missing.")
if meta_info.get("unmatched_ids"):
    st.caption(f"{meta_info['unmatched_ids']} metadata rows match no cell and were ignored.")

with st.expander("Preview", expanded=False):
    n_show_g = min(12, adata.n_vars)
    block = X[:8, :n_show_g]
    block = block.toarray() if hasattr(block, "toarray") else block
    st.dataframe(pd.DataFrame(block, index=adata.obs_names[:8], columns=adata.var_names[:n_show_g]))
    if adata.obs.shape[1]:
        st.caption("Cell metadata")
        st.dataframe(adata.obs.head(8))

if qc is not None:
    q1, q2 = st.columns(2)
    figures.chart(plots.library_size_hist(qc["library_size"]), "qc-library-size", key="qc_lib", container=q1)
    figures.chart(plots.dropout_hist(qc["dropout"]), "qc-dropout", key="qc_drop", container=q2)

st.subheader("Preprocessing")
prep = forms.preprocess_form(adata, detected=kind.kind if kind is not None else None)
truth_opts = [None] + [str(col) for col in adata.obs.columns]
cur_truth = state.get_truth_column()
truth = st.selectbox("True labels (for ARI / NMI), if known", truth_opts,
                     index=truth_opts.index(cur_truth) if cur_truth in truth_opts else 0,
                     format_func=lambda v: "none" if v is None else v, key="w.data.truth")
state.set_truth_column(truth)

refine = state.get_train_params().get("refine", "auto")
preview = messages.safe_call(lambda: Dhaka(**prep, refine=refine).preview(adata), what="Preprocessing")
if preview is not None:
    features = "bins" if prep.get("mode") == "cnv" else "genes"
    steps = [s for s, on in ((transform_label("pearson"), preview.get("transform") == "pearson"),
                             ("normalise", preview.get("normalize")),
                             (log_label(preview.get("log_pseudocount", 1.0)), preview.get("log")),
                             (trim_label(preview.get("winsorize")), preview.get("winsorize") is not None),
                             (f"centre {features}", prep.get("relative"))) if on]
    rounds = preview.get("refine_rounds", 0)
    then = (f" The first fit uses these; {rounds} round{'s' if rounds > 1 else ''} of gene refinement then keep "
            "the genes its latent space explains (Train page › Advanced)." if rounds else "")
    st.success(f"Training matrix: **{preview['n_cells']:,} cells × {preview['n_selected']:,} {features}** "
               f"(of {preview['n_features']:,}; {' → '.join(steps) or 'used as given'}).{then} "
               "Next: the Train page.", icon=":material/check_circle:")
