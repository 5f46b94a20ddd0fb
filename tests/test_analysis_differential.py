"""Differential expression: Welch / Wilcoxon with BH, sparse-safe, volcano."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from dhaka.analysis.differential import (
    benjamini_hochberg,
    differential_expression,
    figure_volcano,
    group_mask,
)


@pytest.fixture
def two_groups():
    rng = np.random.default_rng(1)
    n, g = 80, 40
    X = rng.poisson(2.0, size=(n, g)).astype(np.float32)
    X[:40, :5] += rng.poisson(8.0, size=(40, 5))  # genes 0-4 up in group A
    X[:, 30] = 0.0  # a gene that is all zero
    a = np.zeros(n, dtype=bool)
    a[:40] = True
    return X, a


def test_welch_finds_planted_genes_and_matches_scipy(two_groups):
    X, a = two_groups
    genes = [f"g{i}" for i in range(X.shape[1])]
    df = differential_expression(X, a, genes=genes, method="welch")
    assert list(df.columns) == ["gene", "mean_a", "mean_b", "log2fc", "statistic", "pvalue", "padj"]
    assert len(df) == X.shape[1]
    assert set(df.nsmallest(5, "padj")["gene"]) == {f"g{i}" for i in range(5)}
    assert (df.loc[:4, "log2fc"] > 1).all()
    ref = stats.ttest_ind(X[a], X[~a], equal_var=False)
    ok = np.isfinite(ref.pvalue)
    np.testing.assert_allclose(df["pvalue"].to_numpy()[ok], ref.pvalue[ok], rtol=1e-5)
    np.testing.assert_allclose(df["statistic"].to_numpy()[ok], ref.statistic[ok], rtol=1e-5)
    assert df.loc[30, "pvalue"] == 1.0  # constant gene: no evidence, no NaN
    assert df.attrs["n_a"] == 40 and df.attrs["n_b"] == 40


def test_sparse_equals_dense_for_both_methods(two_groups):
    X, a = two_groups
    for method in ("welch", "wilcoxon"):
        d = differential_expression(X, a, method=method)
        s = differential_expression(sp.csr_matrix(X), a, method=method, chunk_cells=500)
        pd.testing.assert_frame_equal(d, s, check_exact=False, rtol=1e-6)


def test_wilcoxon_matches_scipy(two_groups):
    X, a = two_groups
    df = differential_expression(X, np.flatnonzero(a), np.flatnonzero(~a), method="wilcoxon")
    ref = stats.mannwhitneyu(X[a].astype(float), X[~a].astype(float), axis=0, method="asymptotic")
    ok = np.isfinite(ref.pvalue)
    np.testing.assert_allclose(df["pvalue"].to_numpy()[ok], ref.pvalue[ok], rtol=1e-6)
    assert df["padj"].between(0, 1).all()
    assert (df.nsmallest(5, "padj").index < 5).all()


def test_sparse_input_is_not_densified(two_groups, monkeypatch):
    X, a = two_groups
    Xs = sp.csr_matrix(X)
    calls = []
    orig = sp.csr_matrix.toarray

    def spy(self, *args, **kw):
        calls.append(self.shape)
        return orig(self, *args, **kw)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    monkeypatch.setattr(sp.csr_matrix, "todense", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    differential_expression(Xs, a, method="welch")
    assert calls == []


def test_groups_by_name_and_rest():
    X = np.arange(24, dtype=float).reshape(6, 4)
    names = [f"c{i}" for i in range(6)]
    df = differential_expression(X, ["c0", "c1"], obs_names=names)
    np.testing.assert_allclose(df["mean_a"], X[:2].mean(0))
    np.testing.assert_allclose(df["mean_b"], X[2:].mean(0))
    assert df.attrs["n_b"] == 4


def test_bad_groups_raise_with_reason():
    X = np.ones((6, 3))
    with pytest.raises(ValueError, match="at least 2 cells"):
        differential_expression(X, [0])
    with pytest.raises(ValueError, match="share"):
        differential_expression(X, [0, 1, 2], [2, 3])
    with pytest.raises(ValueError, match="not found"):
        group_mask(["zz"], 6, obs_names=list("abcdef"))


def test_log2fc_scale():
    X = np.array([[4.0], [4.0], [1.0], [1.0]])
    lin = differential_expression(X, [0, 1], scale="linear", pseudocount=0.0)
    assert lin.loc[0, "log2fc"] == pytest.approx(2.0)
    log = differential_expression(X, [0, 1], scale="log")
    assert log.loc[0, "log2fc"] == pytest.approx(3.0)


def test_benjamini_hochberg_known_values():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    adj = benjamini_hochberg(p)
    # m=4 finite: sorted .005,.01,.03,.04 -> .02,.02,.04,.04
    np.testing.assert_allclose(adj[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(adj[4])


def test_volcano_figure(two_groups):
    X, a = two_groups
    df = differential_expression(X, a, genes=[f"g{i}" for i in range(X.shape[1])])
    fig = figure_volcano(df, n_labels=3)
    names = [t.name for t in fig.data if t.name]
    assert any(n.startswith("up") for n in names)
    text_traces = [t for t in fig.data if t.mode == "text"]
    assert len(text_traces[0].text) == 3


def test_prepare_expression_logs_counts_and_keeps_sparse(two_groups):
    from dhaka.analysis.differential import prepare_expression

    X, a = two_groups
    M, scale = prepare_expression(sp.csr_matrix(X))
    assert sp.issparse(M) and scale == "log"
    assert M.max() < 20  # log2 of normalised counts
    C, cscale = prepare_expression(X, mode="cnv")
    assert C is X and cscale == "linear"
    df = differential_expression(M, a, scale=scale)
    assert (df.loc[:4, "log2fc"] > 1).all()
