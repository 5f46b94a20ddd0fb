"""Copy-number inputs read by dhaka.io.read: long tables, Ginkgo matrices, bins named chr:start-end (issue 14)."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

import dhaka.io.copy_number as cn
from dhaka.io import DataError, read

GENOME = ["1", "2", "10", "X", "Y"]  # 10 after 2 (numeric order), then X, Y


def _bins(prefix: str = "chr", n: int = 3, size: int = 500_000) -> list[tuple[str, int, int]]:
    return [(prefix + c, i * size + 1, (i + 1) * size) for c in GENOME for i in range(n)]


def _long_table(cells=("c0", "c1", "c2", "c3"), *, prefix="chr", seed=0) -> pd.DataFrame:
    """HMMcopy-style reads table: one row per cell and bin, shuffled as pipelines may write it."""
    rng = np.random.default_rng(seed)
    rows = [(ch, s, e, int(rng.integers(20, 200)), round(float(rng.random() * 5), 3), int(rng.integers(0, 6)), c)
            for c in cells for ch, s, e in _bins(prefix)]
    df = pd.DataFrame(rows, columns=["chr", "start", "end", "reads", "copy", "state", "cell_id"])
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _expected(df: pd.DataFrame, value: str, cells, bins) -> np.ndarray:
    wide = df.pivot(index="cell_id", columns=["chr", "start", "end"], values=value)
    return wide.loc[list(cells), bins].to_numpy(dtype=np.float32)


def test_long_table_is_pivoted_to_cells_by_bins_in_genome_order(tmp_path):
    df = _long_table()
    path = tmp_path / "reads.csv"
    df.to_csv(path, index=False)
    a = read(path)
    cells = list(dict.fromkeys(df["cell_id"]))  # order of first appearance
    assert list(a.obs_names) == cells
    assert list(a.var_names) == [f"{c}:{s}-{e}" for c, s, e in _bins()]
    assert list(dict.fromkeys(a.var["chr"])) == GENOME  # prefix dropped; 1, 2, 10, X, Y
    assert a.var["start"].tolist() == [s for _, s, _ in _bins()]
    np.testing.assert_array_equal(a.X, _expected(df, "state", cells, _bins()))
    info = a.uns["dhaka_io"]
    assert info["value_column"] == "state" and info["bins"] == {"n_bins": 15, "dropped_incomplete": 0,
                                                                "genome_ordered": True}
    b = read(path, value="copy")  # another value column
    np.testing.assert_allclose(b.X, _expected(df, "copy", cells, _bins()), rtol=1e-6)


@pytest.mark.parametrize("prefix", ["", "chr"])
def test_long_table_tsv_gz_in_small_blocks_with_or_without_chr_prefix(tmp_path, monkeypatch, prefix):
    df = _long_table(prefix=prefix, seed=1)
    data = gzip.compress(df.to_csv(sep="\t", index=False).encode())
    monkeypatch.setattr(cn, "_LONG_BLOCK_ROWS", 7)  # many blocks: cells and bins met across blocks
    a = read(data, filename="hmmcopy_reads.tsv.gz")
    cells = list(dict.fromkeys(df["cell_id"]))
    np.testing.assert_array_equal(a.X, _expected(df, "state", cells, _bins(prefix)))
    assert list(dict.fromkeys(a.var["chr"])) == GENOME


def test_bins_missing_for_some_cell_are_dropped_and_counted():
    df = _long_table()
    df = df[~((df["cell_id"] == "c1") & (df["chr"] == "chr2") & (df["start"] == 1))]  # no row
    df.loc[(df["cell_id"] == "c2") & (df["chr"] == "chrX") & (df["start"] == 1), "state"] = np.nan  # NA
    a = read(df.to_csv(index=False).encode(), filename="reads.csv")
    assert a.n_vars == 13 and "chr2:1-500000" not in a.var_names and "chrX:1-500000" not in a.var_names
    assert a.uns["dhaka_io"]["bins"]["dropped_incomplete"] == 2


@pytest.mark.parametrize("drop,match", [
    ("cell_id", r"missing column cell id"),
    ("start", r"missing column start"),
])
def test_long_table_with_a_missing_column_names_it(drop, match):
    df = _long_table().drop(columns=[drop])
    with pytest.raises(DataError, match=match):
        read(df.to_csv(index=False).encode(), filename="reads.csv", format="long")


def test_long_table_refusals_name_the_problem():
    df = _long_table()
    with pytest.raises(DataError, match=r"cell 'c\d' has more than one row for bin chr\w+:\d+-\d+"):
        read(pd.concat([df, df.iloc[:1]]).to_csv(index=False).encode(), filename="reads.csv")
    overlap = df.copy()
    overlap.loc[(overlap["chr"] == "chr2") & (overlap["start"] == 500_001), "start"] = 400_001
    with pytest.raises(DataError, match=r"bins chr2:1-500000 and chr2:400001-1000000 overlap"):
        read(overlap.to_csv(index=False).encode(), filename="reads.csv")
    with pytest.raises(DataError, match=r"no column 'gc'"):
        read(df.to_csv(index=False).encode(), filename="reads.csv", value="gc")
    with pytest.raises(DataError, match=r"without a 'state' or 'copy' column"):
        read(df.drop(columns=["state", "copy"]).to_csv(index=False).encode(), filename="reads.csv")
    bad = df.astype({"state": object})
    bad.loc[3, "state"] = "deleted"
    with pytest.raises(DataError, match=r"must hold numbers"):
        read(bad.to_csv(index=False).encode(), filename="reads.csv")
    with pytest.raises(DataError, match=r"value='copy' applies to long copy-number tables"):
        read(b"cell,g1,g2\nc1,1,2\nc2,3,4\n", filename="m.csv", value="copy")
    with pytest.raises(DataError, match=r"format='long' was given, but an .h5ad"):
        read(b"\x89HDF\r\n\x1a\n" + b"\0" * 100, filename="x.h5ad", format="long")


def test_ginkgo_segment_matrix_is_transposed_and_ordered():
    rng = np.random.default_rng(2)
    bins = _bins()
    M = rng.integers(0, 6, size=(len(bins), 4))
    g = pd.DataFrame({"CHR": [c for c, _, _ in bins], "START": [s for _, s, _ in bins],
                      "END": [e for *_, e in bins]})
    for j in range(4):
        g[f"SRR{j}.bam"] = M[:, j]
    shuffled = g.sample(frac=1.0, random_state=3)
    a = read(shuffled.to_csv(sep="\t", index=False).encode(), filename="SegCopy")  # Ginkgo's name, no extension
    assert a.shape == (4, len(bins)) and list(a.obs_names) == [f"SRR{j}.bam" for j in range(4)]
    np.testing.assert_array_equal(a.X, M.T.astype(np.float32))  # genome order restored
    assert a.uns["dhaka_io"]["format"] == "ginkgo" and a.uns["dhaka_io"]["transposed"] is True
    assert list(dict.fromkeys(a.var["chr"])) == GENOME
    twice = pd.concat([g, g.iloc[:1]])
    with pytest.raises(DataError, match=r"bin chr1:1-500000 is listed twice"):
        read(twice.to_csv(sep="\t", index=False).encode(), filename="SegCopy")
    with pytest.raises(DataError, match=r"not a Ginkgo segment matrix"):
        read(b"cell,g1,g2\nc1,1,2\nc2,3,4\n", filename="m.csv", format="ginkgo")


def test_matrix_with_bins_named_chr_start_end_gets_coordinates_and_genome_order():
    rng = np.random.default_rng(4)
    names = [f"{c}:{s}-{e}" for c, s, e in _bins(prefix="")]
    X = pd.DataFrame(rng.integers(0, 6, size=(5, len(names))), index=[f"cell{i}" for i in range(5)], columns=names)
    backwards = X[names[::-1]]
    a = read(backwards.to_csv().encode(), filename="cn.csv", orientation="cells_x_genes")
    assert list(a.var_names) == names
    np.testing.assert_array_equal(a.X, X.to_numpy(dtype=np.float32))
    assert a.var["end"].tolist() == [e for *_, e in _bins()]
    # genes are left alone
    g = read(b"cell,TP53,BRCA1\nc1,1,2\nc2,3,4\n", filename="m.csv")
    assert "bins" not in g.uns["dhaka_io"] and list(g.var.columns) == []
    with pytest.raises(DataError, match="overlap"):
        read(b"cell,chr1:1-100,chr1:50-150\nc1,1,2\nc2,3,4\n", filename="m.csv")


def test_a_long_table_read_gives_the_heatmap_its_chromosome_boundaries():
    from dhaka.analysis.copy_number import figure_heatmap

    a = read(_long_table().to_csv(index=False).encode(), filename="reads.csv")
    fig = figure_heatmap(a.X, var=a.var, order="none")
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == len(GENOME) - 1  # one boundary between each pair of neighbouring chromosomes
    assert list(fig.layout.xaxis2.ticktext) == GENOME
