"""Line length, field counts, byte-order marks, duplicate coordinates, chunk grids and copy-number bins (issue 25).

The bad-file corpus holds one file per case with its message; these tests pin the details around them
(line numbers, line endings, the fast path's per-row check, what still reads).
"""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

import dhaka.io as dio
from dhaka.io import DataError, read


@pytest.fixture
def small_lines(monkeypatch):
    """A 64-byte line limit, so the tests' files stay tiny."""
    monkeypatch.setattr(dio.safety, "MAX_LINE_BYTES", 64)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_long_line_is_refused_with_its_number(small_lines, newline):
    lines = ["cell,g1,g2", "c1,1,2", "c2," + "1" * 100 + ",2", "c3,5,6"]
    data = newline.join(lines).encode()
    with pytest.raises(DataError, match=r"long\.csv: line 3 is longer than 64 bytes \(MAX_LINE_BYTES\)"):
        read(data, filename="long.csv")


def test_a_long_line_in_a_gzip_and_an_mtx(small_lines):
    with pytest.raises(DataError, match=r"line 1 is longer than 64 bytes"):
        read(gzip.compress(b"x" * 1000), filename="one.csv.gz")
    mtx = b"%%MatrixMarket matrix coordinate integer general\n% " + b"c" * 100 + b"\n2 2 1\n1 1 1\n"
    with pytest.raises(DataError, match=r"c\.mtx: line 2 is longer than 64 bytes"):
        read(mtx, filename="c.mtx")


def test_lines_under_the_limit_read(small_lines):
    adata = read(b"cell,g1,g2\r\nc1,1,2\r\nc2,3,4\r\n", filename="ok.csv")
    assert adata.X.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("data, line, got", [
    (b"cell,g1,g2\nc1,1,2\nc2,3\nc3,4,5,6\n", 3, 2),          # short then long: the block's total agrees
    (b"cell,g1,g2\nc1,1,2\nc2,3,4,5\nc3,6\n", 3, 4),          # long then short
    (b"cell g1 g2\nc1  1   2\nc2 3\nc3 4 5 6\n", 3, 2),       # runs of whitespace
    (b"1,2,3\n4,5\n6,7,8,9\n", 2, 2),                         # no header, no ids
])
def test_rows_whose_field_counts_cancel_out_are_refused(data, line, got):
    name = "t.txt" if b" " in data else "t.csv"
    with pytest.raises(DataError, match=rf"ragged rows: line {line} has {got} fields"):
        read(data, filename=name)


def test_the_fast_path_still_reads_wide_tables():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 9, size=(50, 300)).astype(np.float32)
    df = pd.DataFrame(X, index=[f"c{i}" for i in range(50)], columns=[f"g{j}" for j in range(300)])
    for sep, name in ((",", "w.csv"), ("\t", "w.tsv"), (" ", "w.txt")):
        text = df.to_csv(sep=sep, index_label="cell", float_format="%g").encode()
        np.testing.assert_array_equal(read(text, filename=name).X, X)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_a_utf8_bom_is_dropped_whatever_the_encoding(encoding):
    data = b"\xef\xbb\xbf" + "cell,x,y\nr\u00e9a,1,2\nq,3,4\nr,5,6\n".encode(encoding)
    adata = read(data, filename="bom.csv")
    assert adata.obs_names[0] == "r\u00e9a" and list(adata.var_names) == ["x", "y"]
    assert adata.uns["dhaka_io"]["orientation_reason"] == "header corner 'cell'"


def test_duplicate_coordinates_are_named_and_distinct_ones_read():
    head = b"%%MatrixMarket matrix coordinate integer general\n3 3 4\n"
    with pytest.raises(DataError, match=r"duplicate MatrixMarket coordinate \(2, 3\): entries 2 and 4"):
        read(head + b"1 1 1\n2 3 5\n3 3 1\n2 3 6\n", filename="d.mtx")
    X = read(head + b"1 1 1\n2 3 5\n3 3 1\n3 2 6\n", filename="ok.mtx").X.toarray()
    assert X.sum() == 13 and X.max() == 6  # nothing summed


def test_an_hdf5_chunk_grid_over_the_limit_is_refused_and_ordinary_chunks_read(tmp_path, monkeypatch):
    import anndata

    X = np.arange(40 * 30, dtype=np.float32).reshape(40, 30)
    a = anndata.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]),
                        var=pd.DataFrame(index=[f"g{j}" for j in range(30)]))
    a.write_h5ad(tmp_path / "gz.h5ad", compression="gzip")  # chunked by h5py
    np.testing.assert_array_equal(read(tmp_path / "gz.h5ad").X, X)
    monkeypatch.setattr(dio.safety, "MAX_HDF5_CHUNKS", 0)
    with pytest.raises(DataError, match=r"gz\.h5ad: HDF5 dataset '/X' .* chunks .*MAX_HDF5_CHUNKS"):
        read(tmp_path / "gz.h5ad")
    with pytest.raises(DataError, match="MAX_HDF5_CHUNKS"):
        dio.estimate_read_memory(tmp_path / "gz.h5ad")


def test_a_long_table_keeps_the_bins_every_cell_has():
    rows = ["cell_id,chr,start,end,state"]
    for c in ("a", "b", "c"):
        rows += [f"{c},chr1,1,1000,2", f"{c},chr1,1001,2000,3"]
    rows += ["a,chr2,1,1000,4", "b,chr2,1001,2000,1"]  # bins only some cells have
    adata = read("\n".join(rows).encode(), filename="cn.csv")
    assert list(adata.var_names) == ["chr1:1-1000", "chr1:1001-2000"]
    assert adata.X.tolist() == [[2, 3]] * 3
    assert adata.uns["dhaka_io"]["bins"]["dropped_incomplete"] == 2
