"""Round trips, orientation detection, writers and property tests for dhaka.io."""
from __future__ import annotations

import gzip
import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dhaka.io as dio
from dhaka.io import DataError, fingerprint, read, read_metadata, to_h5ad_bytes, unzip_safe, write_latent_csv, zip_dir


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _matrix(n_cells=7, n_genes=5, seed=0, *, sparse=False):
    rng = np.random.default_rng(seed)
    X = rng.poisson(1.0, size=(n_cells, n_genes)).astype(np.float32)
    X[0, 0] = 0  # at least some zeros
    X[1, 1] = 3
    return sp.csr_matrix(X) if sparse else X


def _names(n, prefix):
    return [f"{prefix}_{i}" for i in range(n)]


def _csv_text(X, cells, genes, *, orientation="cells_x_genes", sep=",", corner="cell"):
    if orientation == "cells_x_genes":
        df = pd.DataFrame(X, index=cells, columns=genes)
    else:
        df = pd.DataFrame(X.T, index=genes, columns=cells)
    df.index.name = corner
    return df.to_csv(sep=sep)


def _dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def _write_10x(folder: Path, X_cells_x_genes, cells, genes, *, gz=True, v3=True, prefix=""):
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(X_cells_x_genes.T), field="integer")
    mtx = buf.getvalue()
    bc = "".join(f"{c}\n" for c in cells).encode()
    if v3:
        ft = "".join(f"ENSG{i:08d}\t{g}\tGene Expression\n" for i, g in enumerate(genes)).encode()
        ftname = "features.tsv"
    else:
        ft = "".join(f"ENSG{i:08d}\t{g}\n" for i, g in enumerate(genes)).encode()
        ftname = "genes.tsv"
    files = {"matrix.mtx": mtx, "barcodes.tsv": bc, ftname: ft}
    for n, data in files.items():
        if gz:
            (folder / f"{prefix}{n}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / f"{prefix}{n}").write_bytes(data)
    return folder


# --------------------------------------------------------------------------- #
# delimited text
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("orientation", ["cells_x_genes", "genes_x_cells"])
@pytest.mark.parametrize("sep,ext", [(",", ".csv"), ("\t", ".tsv"), ("\t", ".txt"), (";", ".csv")])
@pytest.mark.parametrize("gz", [False, True])
def test_table_round_trip(tmp_path, orientation, sep, ext, gz):
    X = _matrix()
    cells, genes = _names(7, "cell"), _names(5, "gene")
    text = _csv_text(X, cells, genes, orientation=orientation, sep=sep, corner="")
    data = text.encode()
    name = f"m{ext}" + (".gz" if gz else "")
    if gz:
        data = gzip.compress(data)
    (tmp_path / name).write_bytes(data)
    adata = read(tmp_path / name)  # orientation auto-detected from the names
    assert isinstance(adata.X, np.ndarray) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, X)
    assert list(adata.obs_names) == cells
    assert list(adata.var_names) == genes
    info = adata.uns["dhaka_io"]
    assert info["orientation"] == orientation
    assert info["transposed"] == (orientation == "genes_x_cells")
    assert info["filename"] == name
    # explicit orientation gives the same result
    again = read(tmp_path / name, orientation=orientation)
    np.testing.assert_array_equal(again.X, X)


def test_explicit_orientation_overrides_detection():
    X = _matrix()
    text = _csv_text(X, _names(7, "cell"), _names(5, "gene"))
    adata = read(text.encode(), filename="m.csv", orientation="genes_x_cells")
    assert adata.shape == (5, 7)
    assert adata.obs_names[0] == "gene_0"
    assert adata.uns["dhaka_io"]["orientation_reason"] == "given"


@pytest.mark.parametrize(
    "rows,cols,corner,expected",
    [
        (["AAACCTGAGAAACCAT-1", "AAACCTGAGAAACCGC-1", "AAACCTGAGAAACCTA-1"], ["CD3E", "MS4A1", "LYZ", "NKG7"], "", "cells_x_genes"),
        (["CD3E", "MS4A1", "LYZ", "NKG7"], ["AAACCTGAGAAACCAT-1", "AAACCTGAGAAACCGC-1", "AAACCTGAGAAACCTA-1"], "", "genes_x_cells"),
        (["ENSG00000141510", "ENSG00000012048", "ENSG00000157764"], ["s1", "s2", "s3", "s4"], "", "genes_x_cells"),
        (["chr1:1-100000", "chr1:100001-200000", "chr2:1-100000"], ["A1", "A2"], "", "genes_x_cells"),
        (["x1", "x2", "x3"], ["y1", "y2"], "gene", "genes_x_cells"),
        (["x1", "x2"], ["y1", "y2", "y3"], "cell_id", "cells_x_genes"),
        # no hint from names: assume more genes than cells
        (["1", "2", "3", "4", "5"], ["7", "8"], "", "genes_x_cells"),
        (["1", "2"], ["7", "8", "9"], "", "cells_x_genes"),
    ],
)
def test_orientation_auto_detection(rows, cols, corner, expected):
    X = np.arange(len(rows) * len(cols), dtype=np.float32).reshape(len(rows), len(cols))
    df = pd.DataFrame(X, index=rows, columns=cols)
    df.index.name = corner
    adata = read(df.to_csv().encode(), filename="m.csv")
    assert adata.uns["dhaka_io"]["orientation"] == expected, adata.uns["dhaka_io"]
    if expected == "cells_x_genes":
        assert list(adata.obs_names) == rows
    else:
        assert list(adata.obs_names) == cols
        np.testing.assert_array_equal(adata.X, X.T)


def test_r_style_header_without_corner_and_quotes():
    text = '"g1" "g2" "g3"\n"c1" 1 2 3\n"c2" 4 5 6\n'
    adata = read(text.encode(), filename="m.txt", orientation="cells_x_genes")
    assert list(adata.var_names) == ["g1", "g2", "g3"]
    assert list(adata.obs_names) == ["c1", "c2"]
    np.testing.assert_array_equal(adata.X, [[1, 2, 3], [4, 5, 6]])


def test_headerless_numeric_matrix_gets_generic_names():
    adata = read(b"1,2,3\n4,5,6\n", filename="m.csv", orientation="cells_x_genes")
    assert list(adata.obs_names) == ["cell_0", "cell_1"]
    assert list(adata.var_names) == ["gene_0", "gene_1", "gene_2"]


def test_crlf_bom_and_latin1_names():
    text = "\ufeffcell,g\u00e9ne1,g2\r\nc1,1,2\r\nc2,3,4\r\n"
    a = read(text.encode("utf-8"), filename="m.csv")
    assert list(a.var_names) == ["g\u00e9ne1", "g2"]
    b = read(text.replace("\ufeff", "").encode("latin-1"), filename="m.csv")
    assert list(b.var_names) == ["g\u00e9ne1", "g2"]


def test_name_that_looks_like_na_is_kept():
    a = read(b"cell,g1,g2\nNA,1,2\nc2,3,4\n", filename="m.csv")
    assert list(a.obs_names) == ["NA", "c2"]


def test_scientific_notation_and_signs():
    a = read(b"cell,g1,g2\nc1,1e-3,+2\nc2,-3.5E2,.5\n", filename="m.csv")
    np.testing.assert_allclose(a.X, [[1e-3, 2], [-350, 0.5]], rtol=1e-6)


def test_float32_overflow_is_reported():
    with pytest.raises(DataError, match="float32"):
        read(b"cell,g1,g2\nc1,1e39,2\nc2,3,4\n", filename="m.csv")


def test_counts_accept_integers():
    a = read(b"cell,g1,g2\nc1,1,2\nc2,3,0\n", filename="m.csv", expect="counts")
    assert a.X.sum() == 6


def test_bad_arguments_are_plain_value_errors():
    with pytest.raises(ValueError) as e:
        read(b"cell,g1,g2\nc1,1,2\nc2,3,4\n", filename="m.csv", orientation="sideways")
    assert not isinstance(e.value, DataError)
    with pytest.raises(ValueError):
        read(b"x", filename="m.csv", expect="positive")
    with pytest.raises(TypeError):
        read(12345)


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- #
# uploads and size limits
# --------------------------------------------------------------------------- #
class FakeUpload(io.BytesIO):
    """Looks like streamlit's UploadedFile: a BytesIO with .name (and possibly already read)."""

    def __init__(self, data, name):
        super().__init__(data)
        self.name = name


def test_upload_like_object_uses_its_name_and_rewinds():
    X = _matrix()
    up = FakeUpload(gzip.compress(_csv_text(X, _names(7, "cell"), _names(5, "gene")).encode()), "data.csv.gz")
    up.read()  # streamlit code often reads once to peek
    adata = read(up)
    np.testing.assert_array_equal(adata.X, X)
    assert adata.uns["dhaka_io"]["filename"] == "data.csv.gz"


def test_max_bytes_on_upload_path_and_bytes(tmp_path):
    data = _csv_text(_matrix(), _names(7, "cell"), _names(5, "gene")).encode()
    (tmp_path / "m.csv").write_bytes(data)
    for src, kw in ((FakeUpload(data, "m.csv"), {}), (data, {"filename": "m.csv"}), (tmp_path / "m.csv", {})):
        with pytest.raises(DataError, match="max_bytes"):
            read(src, max_bytes=len(data) - 1, **kw)
    assert read(data, filename="m.csv", max_bytes=len(data)).shape == (7, 5)


def test_gzip_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(dio.safety, "MAX_UNCOMPRESSED_BYTES", 10_000)
    text = _csv_text(np.zeros((200, 20), dtype=np.float32), _names(200, "cell"), _names(20, "gene"))
    with pytest.raises(DataError, match="bomb"):
        read(gzip.compress(text.encode()), filename="m.csv.gz")


def test_compression_ratio_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(dio.safety, "BOMB_MIN_BYTES", 1000)
    monkeypatch.setattr(dio.safety, "MAX_COMPRESSION_RATIO", 20)
    text = "cell," + ",".join(_names(50, "g")) + "\n" + "".join(f"c{i}," + ",".join(["0"] * 50) + "\n" for i in range(400))
    with pytest.raises(DataError, match="bomb"):
        read(gzip.compress(text.encode(), 9), filename="m.csv.gz")


def test_zip_total_size_limit(monkeypatch, tmp_path):
    X = _matrix(30, 20)
    folder = _write_10x(tmp_path / "tenx", X, _names(30, "AAAC"), _names(20, "G"), gz=False)
    data = zip_dir(folder)
    assert read(data, filename="tenx.zip").shape == (30, 20)
    monkeypatch.setattr(dio.safety, "MAX_UNCOMPRESSED_BYTES", 100)
    with pytest.raises(DataError, match="zip bomb"):
        read(data, filename="tenx.zip")


# --------------------------------------------------------------------------- #
# h5ad / 10x / mtx / npz / npy
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("sparse", [False, True])
def test_h5ad_round_trip(tmp_path, sparse):
    import anndata

    X = _matrix(sparse=sparse)
    a = anndata.AnnData(X=X, obs=pd.DataFrame({"label": list("aabbccd")}, index=_names(7, "cell")),
                        var=pd.DataFrame(index=_names(5, "gene")))
    data = to_h5ad_bytes(a)
    assert data.startswith(b"\x89HDF")
    (tmp_path / "a.h5ad").write_bytes(data)
    for src, kw in ((tmp_path / "a.h5ad", {}), (data, {"filename": "a.h5ad"}), (FakeUpload(data, "a.h5ad"), {})):
        b = read(src, **kw)
        assert sp.issparse(b.X) == sparse
        if sparse:
            assert isinstance(b.X, sp.csr_matrix) and b.X.dtype == np.float32
        np.testing.assert_array_equal(_dense(b.X), _dense(X))
        assert list(b.obs["label"]) == list("aabbccd")
        assert b.uns["dhaka_io"]["format"] == "h5ad"
    t = read(tmp_path / "a.h5ad", orientation="genes_x_cells")
    assert t.shape == (5, 7) and t.uns["dhaka_io"]["transposed"]
    # an unnamed h5ad is recognised by its signature
    assert read(data).shape == (7, 5)


def test_h5ad_output_of_read_can_be_written_again():
    a = read(_csv_text(_matrix(), _names(7, "cell"), _names(5, "gene")).encode(), filename="m.csv")
    b = read(to_h5ad_bytes(a), filename="b.h5ad")
    np.testing.assert_array_equal(a.X, b.X)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_hdf5_that_is_not_anndata():
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["something"] = np.arange(3)
    with pytest.raises(DataError, match="h5ad"):
        read(buf.getvalue(), filename="x.h5ad")


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("v3", [True, False])
def test_10x_folder_and_zip(tmp_path, gz, v3):
    X = _matrix(9, 6)
    cells = [f"AAACCTGAGAAAC{i:03d}-1" for i in range(9)]
    genes = [f"GENE{i}" for i in range(6)]
    folder = _write_10x(tmp_path / "filtered_feature_bc_matrix", X, cells, genes, gz=gz, v3=v3)
    for src in (folder, zip_dir(tmp_path)):
        a = read(src, filename=None if isinstance(src, Path) else "sample.zip")
        assert isinstance(a.X, sp.csr_matrix) and a.X.dtype == np.float32
        np.testing.assert_array_equal(a.X.toarray(), X)
        assert list(a.obs_names) == cells
        assert list(a.var_names) == genes
        assert a.var["gene_ids"].iloc[0] == "ENSG00000000"
        info = a.uns["dhaka_io"]
        assert info["format"] in ("10x", "10x-zip")
        assert info["orientation"] == "genes_x_cells" and info["transposed"] is True
        assert read(to_h5ad_bytes(a), filename="a.h5ad").var["gene_ids"].iloc[0] == "ENSG00000000"


def test_10x_prefixed_files_and_duplicate_symbols(tmp_path):
    X = _matrix(4, 3)
    folder = _write_10x(tmp_path / "geo", X, ["b1", "b2", "b3", "b4"], ["A", "A", "B"], prefix="GSM1_")
    a = read(folder)
    # duplicated symbols fall back to the unique gene ids
    assert list(a.var_names) == ["ENSG00000000", "ENSG00000001", "ENSG00000002"]
    assert a.uns["dhaka_io"]["var_names_from"] == "gene_ids"


def test_10x_folder_max_bytes(tmp_path):
    folder = _write_10x(tmp_path / "s", _matrix(4, 3), ["b1", "b2", "b3", "b4"], ["A", "B", "C"])
    with pytest.raises(DataError, match="max_bytes"):
        read(folder, max_bytes=50)
    assert read(folder, max_bytes=10_000).shape == (4, 3)


def test_gzipped_h5ad_and_npz_names():
    import anndata

    a = anndata.AnnData(X=_matrix(4, 3))
    data = gzip.compress(to_h5ad_bytes(a))
    assert read(data, filename="a.h5ad.gz").shape == (4, 3)
    assert read(data).shape == (4, 3)  # sniffed: gzip, then HDF5


def test_decimal_comma_hint():
    with pytest.raises(DataError, match="decimal comma"):
        read(b"cell;g1;g2\nc1;1,5;2\nc2;3;4\n", filename="m.csv")


def test_cellranger_outs_prefers_filtered_matrix(tmp_path):
    X = _matrix(4, 3)
    _write_10x(tmp_path / "outs" / "raw_feature_bc_matrix", _matrix(6, 3, seed=1), _names(6, "r"), ["A", "B", "C"])
    _write_10x(tmp_path / "outs" / "filtered_feature_bc_matrix", X, _names(4, "f"), ["A", "B", "C"])
    a = read(tmp_path)
    assert list(a.obs_names) == _names(4, "f")
    np.testing.assert_array_equal(a.X.toarray(), X)


def test_zip_holding_one_csv_is_read():
    text = _csv_text(_matrix(), _names(7, "cell"), _names(5, "gene"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("data.csv", text)
        zf.writestr("__MACOSX/._data.csv", b"junk")
    inner = buf.getvalue()
    a = read(inner, filename="data.zip")
    np.testing.assert_array_equal(a.X, _matrix())
    assert a.uns["dhaka_io"]["filename"] == "data.zip/data.csv"
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("inner.zip", inner)
    with pytest.raises(DataError, match="matrix.mtx"):  # no zip-in-zip recursion
        read(outer.getvalue(), filename="outer.zip")


def test_10x_folder_without_matrix(tmp_path):
    (tmp_path / "barcodes.tsv").write_text("a\nb\n")
    with pytest.raises(DataError, match="matrix.mtx"):
        read(tmp_path)


def test_10x_zip_inside_folder_with_macos_junk(tmp_path):
    X = _matrix(4, 3)
    folder = _write_10x(tmp_path / "x" / "s", X, ["b1", "b2", "b3", "b4"], ["A", "B", "C"])
    data = zip_dir(tmp_path / "x")
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("__MACOSX/s/._matrix.mtx.gz", b"junk")
    assert read(buf.getvalue(), filename="s.zip").shape == (4, 3)
    assert folder.exists()


@pytest.mark.parametrize("field", ["integer", "real", "pattern"])
def test_mtx_alone(field):
    X = _matrix(6, 4)
    if field == "pattern":
        X = (X > 0).astype(np.float32)
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(X.T), field=field)
    a = read(buf.getvalue(), filename="matrix.mtx")  # 10x convention: features x cells
    assert isinstance(a.X, sp.csr_matrix)
    np.testing.assert_array_equal(a.X.toarray(), X)
    assert a.uns["dhaka_io"]["transposed"] is True
    b = read(gzip.compress(buf.getvalue()), filename="matrix.mtx.gz", orientation="cells_x_genes")
    np.testing.assert_array_equal(b.X.toarray(), X.T)


def test_mtx_symmetric_and_array_layouts():
    S = np.array([[1, 2, 0], [2, 0, 3], [0, 3, 4]], dtype=np.float32)
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(S), symmetry="symmetric")
    a = read(buf.getvalue(), filename="s.mtx", orientation="cells_x_genes")
    np.testing.assert_array_equal(a.X.toarray(), S)
    D = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, D)
    b = read(buf.getvalue(), filename="d.mtx", orientation="cells_x_genes")
    assert isinstance(b.X, np.ndarray)
    np.testing.assert_array_equal(b.X, D)


_MTX_INT = "%%MatrixMarket matrix coordinate integer general\n3 3 3\n1 1 1\n"


@pytest.mark.parametrize("where", ["bytes", "gzip", "disk"])
@pytest.mark.parametrize("body,match", [
    ("2 2 0x1A\n3 3 1\n", "non-numeric value '0x1A' at line 4"),  # mmread alone would read 0
    ("2 2 1.5\n3 3 1\n", "non-integer value '1.5' at line 4"),  # ... would truncate to 1
    ("2 2 1 5\n3 3 1\n", "line 4 has 4 fields, expected 3"),  # ... would drop the 5
    ("2 2 4\n% note\n3 3 1\n", "line 5 is a comment among the entries"),
    ("2 2 nan\n3 3 1\n", "NaN at line 4"),
    ("2 9 1\n3 3 1\n", r"entry 2 \(2, 9\) is outside the declared 3 x 3 shape"),
    ("2 2 1000000\n", "declares 3 entries but the file has 2"),
])
def test_mtx_entries_mmread_would_misread_are_refused_at_their_line(tmp_path, where, body, match):
    data = (_MTX_INT + body).encode()
    if where == "disk":  # mmread parses a plain file from its path, after the checking pass
        (tmp_path / "m.mtx").write_bytes(data)
        source, name = tmp_path / "m.mtx", None
    else:
        source, name = (gzip.compress(data), "m.mtx.gz") if where == "gzip" else (data, "m.mtx")
    with pytest.raises(DataError, match=match):
        read(source, filename=name)
    good = read(_MTX_INT.encode() + b"2 2 4\n\n3 1 2  \r\n", filename="m.mtx", orientation="cells_x_genes")
    np.testing.assert_array_equal(good.X.toarray(), [[1, 0, 0], [0, 4, 0], [2, 0, 0]])


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_npz_sparse_round_trip(fmt, tmp_path):
    X = _matrix(8, 5, sparse=True).asformat(fmt)
    sp.save_npz(tmp_path / "x.npz", X)
    a = read(tmp_path / "x.npz")
    assert isinstance(a.X, sp.csr_matrix) and a.X.dtype == np.float32
    np.testing.assert_array_equal(a.X.toarray(), X.toarray())
    assert list(a.obs_names[:2]) == ["cell_0", "cell_1"] and a.var_names[0] == "gene_0"
    t = read(tmp_path / "x.npz", orientation="genes_x_cells")
    assert t.shape == (5, 8)
    # sparse arrays (not matrices) too
    sp.save_npz(tmp_path / "y.npz", sp.csr_array(X))
    assert read(tmp_path / "y.npz").shape == (8, 5)


def test_npz_dense_with_names_and_npy():
    X = _matrix(4, 3)
    buf = io.BytesIO()
    np.savez(buf, X=X, obs_names=np.array(["a", "b", "c", "d"]), var_names=np.array(["x", "y", "z"]))
    a = read(buf.getvalue(), filename="d.npz")
    assert list(a.obs_names) == ["a", "b", "c", "d"] and list(a.var_names) == ["x", "y", "z"]
    np.testing.assert_array_equal(a.X, X)
    buf = io.BytesIO()
    np.save(buf, X.astype(np.int64))
    b = read(buf.getvalue(), filename="d.npy")
    assert b.X.dtype == np.float32
    np.testing.assert_array_equal(b.X, X)


def test_npz_out_of_range_indices_refused():
    buf = io.BytesIO()
    np.savez(buf, format=np.array("csr"), shape=np.array([2, 2]), data=np.array([1.0, 2.0]),
             indices=np.array([0, 7]), indptr=np.array([0, 1, 2]))
    with pytest.raises(DataError, match="inconsistent"):
        read(buf.getvalue(), filename="x.npz")


def test_npz_huge_declared_shape_refused():
    buf = io.BytesIO()
    np.savez(buf, format=np.array("coo"), shape=np.array([10**12, 10**12]), data=np.array([1.0]),
             row=np.array([0]), col=np.array([0]))
    with pytest.raises(DataError, match="limit"):
        read(buf.getvalue(), filename="x.npz")


def test_sparse_input_is_never_densified(monkeypatch, tmp_path):
    X = _matrix(10, 6, sparse=True)
    sp.save_npz(tmp_path / "x.npz", X)

    def no(*a, **k):  # pragma: no cover - failing here is the bug
        raise AssertionError("densified")

    monkeypatch.setattr(sp.csr_matrix, "toarray", no)
    monkeypatch.setattr(sp.csr_matrix, "todense", no)
    monkeypatch.setattr(sp.coo_matrix, "toarray", no)
    a = read(tmp_path / "x.npz", expect="counts")
    assert sp.issparse(a.X)
    fp = fingerprint(a.X)
    assert fp["nnz"] == X.nnz


# --------------------------------------------------------------------------- #
# read_metadata
# --------------------------------------------------------------------------- #
def _adata():
    return read(_csv_text(_matrix(), _names(7, "cell"), _names(5, "gene")).encode(), filename="m.csv")


def test_read_metadata_join_counts_and_types():
    a = _adata()
    meta = "cell_id\tcluster\tdepth\ncell_0\tT\t1.5\ncell_1\tB\t2\ncell_2\tT\t3\nstranger\tB\t4\n"
    b = read_metadata(meta.encode(), a, filename="meta.tsv")
    assert "cluster" not in a.obs  # the input is not modified
    assert list(b.obs["cluster"][:3]) == ["T", "B", "T"]
    assert b.obs["cluster"].isna().sum() == 4
    assert isinstance(b.obs["cluster"].dtype, pd.CategoricalDtype)
    assert b.obs["depth"].dtype == float and b.obs["depth"].iloc[1] == 2.0
    m = b.uns["dhaka_io"]["metadata"]
    assert m["matched"] == 3 and m["unmatched_cells"] == 4 and m["unmatched_ids"] == 1
    assert m["columns"] == ["cluster", "depth"]
    assert b.uns["dhaka_io"]["format"] == "csv"  # the read() record is kept
    to_h5ad_bytes(b)  # still writable


def test_read_metadata_id_column_need_not_be_first():
    a = _adata()
    meta = "n,label,barcode\n1,x,cell_3\n2,y,cell_4\n"
    b = read_metadata(io.BytesIO(meta.encode()), a, filename="meta.csv")
    assert b.uns["dhaka_io"]["metadata"]["id_column"] == "barcode"
    assert b.obs.loc["cell_4", "label"] == "y"


def test_read_metadata_errors():
    a = _adata()
    with pytest.raises(DataError, match="no metadata id matches"):
        read_metadata(b"id,label\nfoo,1\nbar,2\n", a, filename="meta.csv")
    with pytest.raises(DataError, match="duplicate"):
        read_metadata(b"id,label\ncell_1,1\ncell_1,2\n", a, filename="meta.csv")
    with pytest.raises(DataError, match="empty"):
        read_metadata(b"", a, filename="meta.csv")
    with pytest.raises(DataError, match="binary"):
        read_metadata(bytes(range(256)) * 4, a, filename="meta.csv")


# --------------------------------------------------------------------------- #
# writers and utilities
# --------------------------------------------------------------------------- #
def test_write_latent_csv_all_targets(tmp_path):
    Z = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    kw = dict(obs_names=["a", "b", "c", "d"], labels=[0, 1, 1, 0], extra={"umap_1": [1, 2, 3, 4]})
    text = write_latent_csv(None, Z, **kw)
    df = pd.read_csv(io.StringIO(text), index_col=0)
    assert list(df.columns) == ["dhaka_1", "dhaka_2", "dhaka_3", "cluster", "umap_1"]
    assert df.index.name == "cell" and list(df.index) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(df[["dhaka_1", "dhaka_2", "dhaka_3"]].to_numpy(), Z)
    write_latent_csv(tmp_path / "z.csv", Z, **kw)
    assert (tmp_path / "z.csv").read_text() == text
    bbuf, sbuf = io.BytesIO(), io.StringIO()
    write_latent_csv(bbuf, Z, **kw)
    write_latent_csv(sbuf, Z, **kw)
    assert bbuf.getvalue().decode() == sbuf.getvalue() == text
    # the output reads back as a matrix (dhaka_* columns) once the cluster columns are dropped
    no_extra = write_latent_csv(None, Z, obs_names=["a", "b", "c", "d"])
    back = read(no_extra.encode(), filename="z.csv")
    np.testing.assert_allclose(back.X, Z.astype(np.float32))


def test_write_latent_csv_checks_lengths():
    Z = np.zeros((3, 2))
    with pytest.raises(ValueError, match="obs_names"):
        write_latent_csv(None, Z, obs_names=["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        write_latent_csv(None, Z, obs_names=["a", "b", "c"], labels=[1])
    with pytest.raises(ValueError, match="extra"):
        write_latent_csv(None, Z, obs_names=["a", "b", "c"], extra={"u": [1, 2]})


def test_zip_dir_unzip_safe_round_trip(tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text('{"x": 1}')
    (src / "sub" / "w.bin").write_bytes(os.urandom(1000))
    os.symlink("/etc/passwd", src / "link")  # symlinks are skipped, never followed
    data = zip_dir(src)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["a.json", "sub/w.bin"]
    out = unzip_safe(data, tmp_path / "out")
    assert out == tmp_path / "out"
    assert (out / "a.json").read_text() == '{"x": 1}'
    assert (out / "sub" / "w.bin").read_bytes() == (src / "sub" / "w.bin").read_bytes()
    assert zip_dir(src) == data  # deterministic order


def _zip_with(name, data=b"x", *, symlink=False):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,match",
    [("../escape.txt", "traversal"), ("a/../../escape.txt", "traversal"), ("/abs.txt", "absolute"),
     ("C:/win.txt", "absolute"), ("..\\win.txt", "traversal")],
)
def test_unzip_safe_refuses_traversal(tmp_path, name, match):
    with pytest.raises(DataError, match=match):
        unzip_safe(_zip_with(name), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_unzip_safe_refuses_symlinks_bombs_and_garbage(tmp_path):
    with pytest.raises(DataError, match="symbolic link"):
        unzip_safe(_zip_with("link", b"/etc/passwd", symlink=True), tmp_path / "o1")
    with pytest.raises(DataError, match="limit"):
        unzip_safe(_zip_with("big.bin", b"0" * 5000), tmp_path / "o2", max_total_bytes=1000)
    with pytest.raises(DataError, match="not a zip"):
        unzip_safe(b"hello world", tmp_path / "o3")
    with pytest.raises(DataError, match="corrupt"):
        unzip_safe(b"PK\x03\x04" + b"\x00" * 100, tmp_path / "o4")


def test_fingerprint():
    X = _matrix(6, 4, sparse=True)
    f1 = fingerprint(X)
    assert f1["shape"] == (6, 4) and f1["nnz"] == X.nnz and len(f1["sha256"]) == 64
    # same content, different storage order/format -> same digest
    coo = X.tocoo()
    perm = np.random.default_rng(0).permutation(coo.nnz)
    shuffled = sp.coo_matrix((coo.data[perm], (coo.row[perm], coo.col[perm])), shape=coo.shape)
    assert fingerprint(shuffled)["sha256"] == f1["sha256"]
    assert fingerprint(X.tocsc())["sha256"] == f1["sha256"]
    Y = X.copy()
    Y.data[0] += 1
    assert fingerprint(Y)["sha256"] != f1["sha256"]
    D = X.toarray()
    fd = fingerprint(D)
    assert fd["nnz"] == X.nnz and fd["sha256"] == fingerprint(D.copy())["sha256"]
    assert fingerprint(np.asfortranarray(D))["sha256"] == fd["sha256"]
    D2 = D.copy()
    D2[0, 0] += 1
    assert fingerprint(D2)["sha256"] != fd["sha256"]
    # a huge but nearly empty sparse matrix is hashed without densifying
    H = sp.csr_matrix(([1.0], ([5], [7])), shape=(10**6, 10**6))
    assert fingerprint(H)["nnz"] == 1
    # an AnnData is fingerprinted by its X
    ad = _adata()
    assert fingerprint(ad) == fingerprint(ad.X)


@pytest.mark.parametrize("sparse", [False, True])
def test_fingerprint_of_an_h5ad_file_matches_the_matrix_in_memory(tmp_path, sparse):
    import anndata

    X = _matrix(9, 6, sparse=sparse)
    path = tmp_path / "d.h5ad"
    anndata.AnnData(X=X, obs=pd.DataFrame(index=_names(9, "c")), var=pd.DataFrame(index=_names(6, "g"))).write_h5ad(path)
    on_disk = fingerprint(path)
    assert on_disk == fingerprint(X)  # streamed from the file, same bytes hashed as in memory
    assert fingerprint(str(path), block=7) == on_disk  # block size does not matter
    Y = _dense(X).copy()
    Y[2, 3] += 1
    anndata.AnnData(X=sp.csr_matrix(Y) if sparse else Y).write_h5ad(tmp_path / "e.h5ad")
    assert fingerprint(tmp_path / "e.h5ad")["sha256"] != on_disk["sha256"]
    with pytest.raises(DataError, match="layers/none"):
        fingerprint(path, group="layers/none")
    with pytest.raises(DataError, match="not found"):
        fingerprint(tmp_path / "missing.h5ad")


def test_one_fingerprint_behind_the_ui_digest_and_the_backed_cache_key(tmp_path):
    import anndata

    from dhaka.backed import file_fingerprint
    from dhaka.ui.tasks import digest

    X = _matrix(8, 5, sparse=True)
    assert digest(X) == fingerprint(X)["sha256"]
    anndata.AnnData(X=X).write_h5ad(tmp_path / "x.h5ad")
    assert file_fingerprint(tmp_path / "x.h5ad") == digest(X)
    labels = np.array(["a", "b", None, "a"], dtype=object)  # cluster labels: object arrays are hashed too
    assert digest(labels) == digest(labels.copy()) != digest(np.array(["a", "b", None, "b"], dtype=object))


# --------------------------------------------------------------------------- #
# h5ad layers (issue 14)
# --------------------------------------------------------------------------- #
def _scdna_h5ad(path):
    """An scDNA-style file: read counts in X, integer copy-number states in layers['state']."""
    import anndata

    rng = np.random.default_rng(3)
    counts = rng.poisson(20, size=(6, 8)).astype(np.float32)
    state = rng.integers(0, 6, size=(6, 8)).astype(np.int8)
    a = anndata.AnnData(X=counts, obs=pd.DataFrame(index=_names(6, "cell")),
                        var=pd.DataFrame(index=[f"1:{i * 500000 + 1}-{(i + 1) * 500000}" for i in range(8)]))
    a.layers["state"] = state
    a.layers["copy"] = sp.csr_matrix(state.astype(np.float32) + 0.25)
    a.write_h5ad(path)
    return path, counts, state


def test_h5ad_layers_are_listed_from_headers_without_reading_them(tmp_path, monkeypatch):
    import h5py

    path, _, _ = _scdna_h5ad(tmp_path / "cn.h5ad")
    read_paths = []
    real_getitem = h5py.Dataset.__getitem__

    def spy(self, *args, **kwargs):
        read_paths.append(self.name)
        return real_getitem(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    layers = dio.h5ad_layers(path)
    assert list(layers) == ["copy", "state"]
    assert layers["state"] == {"kind": "dense", "shape": (6, 8), "dtype": "int8", "nnz": None}
    assert layers["copy"]["kind"] == "csr" and layers["copy"]["shape"] == (6, 8)
    assert layers["copy"]["dtype"] == "float32" and layers["copy"]["nnz"] == 48
    assert not any(p.startswith(("/layers", "/X")) for p in read_paths), read_paths
    monkeypatch.undo()
    # bytes (an upload) and gzip work the same; a file without layers has none
    assert dio.h5ad_layers(path.read_bytes(), filename="cn.h5ad") == layers
    assert dio.h5ad_layers(gzip.compress(path.read_bytes()), filename="cn.h5ad.gz") == layers
    import anndata

    anndata.AnnData(X=_matrix()).write_h5ad(tmp_path / "plain.h5ad")
    assert dio.h5ad_layers(tmp_path / "plain.h5ad") == {}
    with pytest.raises(DataError, match="not an HDF5 file"):
        dio.h5ad_layers(b"cell,g1\nc1,1\n", filename="fake.h5ad")


def test_read_a_layer_and_a_clear_message_for_an_unknown_one(tmp_path):
    path, counts, state = _scdna_h5ad(tmp_path / "cn.h5ad")
    np.testing.assert_array_equal(read(path).X, counts)
    a = read(path, layer="state")
    np.testing.assert_array_equal(a.X, state.astype(np.float32))
    assert a.uns["dhaka_io"]["layer"] == "state" and a.var_names[0] == "1:1-500000"
    with pytest.raises(DataError, match=r"no layer 'State' \(layers: 'copy', 'state'; leave the layer out to read X\)"):
        read(path, layer="State")
    with pytest.raises(DataError, match=r"no layer 'nope' \(layers: 'copy', 'state'"):
        dio.estimate_read_memory(path, layer="nope")
    assert dio.estimate_read_memory(path, layer="copy")["shape"] == (6, 8)


def test_cli_reads_the_layer_given_with_dash_dash_layer(tmp_path):
    from dhaka import cli

    path, _, state = _scdna_h5ad(tmp_path / "cn.h5ad")
    for command in (["embed", str(path), "--out", "z.csv"], ["project", "model", str(path), "--out", "z.csv"]):
        args = cli.build_parser().parse_args([*command, "--layer", "state"])
        np.testing.assert_array_equal(cli._read(args).X, state.astype(np.float32))
    args = cli.build_parser().parse_args(["embed", str(path), "--out", "z.csv", "--layer", "nope"])
    with pytest.raises(DataError, match="no layer 'nope'"):
        cli._read(args)


# --------------------------------------------------------------------------- #
# property tests
# --------------------------------------------------------------------------- #
_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", min_size=1, max_size=8).filter(
    lambda s: not dio._looks_numeric(s)
)


@st.composite
def _tables(draw):
    n_rows = draw(st.integers(2, 6))
    n_cols = draw(st.integers(2, 6))
    values = draw(
        st.lists(
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32),
            min_size=n_rows * n_cols, max_size=n_rows * n_cols,
        )
    )
    X = np.array(values, dtype=np.float32).reshape(n_rows, n_cols)
    rows = draw(st.lists(_NAME, min_size=n_rows, max_size=n_rows, unique=True))
    cols = draw(st.lists(_NAME, min_size=n_cols, max_size=n_cols, unique=True))
    sep = draw(st.sampled_from([",", "\t", ";", " "]))
    orientation = draw(st.sampled_from(["cells_x_genes", "genes_x_cells"]))
    gz = draw(st.booleans())
    return X, rows, cols, sep, orientation, gz


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tables())
def test_property_table_round_trip(table):
    X, rows, cols, sep, orientation, gz = table
    lines = [sep.join(["id"] + cols)]
    lines += [sep.join([r] + [repr(float(v)) for v in X[i]]) for i, r in enumerate(rows)]
    data = ("\n".join(lines) + "\n").encode()
    ext = {",": ".csv", "\t": ".tsv", ";": ".txt", " ": ".txt"}[sep]
    if gz:
        data = gzip.compress(data)
        ext += ".gz"
    a = read(data, filename="p" + ext, orientation=orientation)
    if orientation == "cells_x_genes":
        assert list(a.obs_names) == rows and list(a.var_names) == cols
        np.testing.assert_array_equal(a.X, X)
    else:
        assert list(a.obs_names) == cols and list(a.var_names) == rows
        np.testing.assert_array_equal(a.X, X.T)


_GARBAGE_TEXT = st.text(alphabet="0123456789abcXYZ,;\t .-+eE\"'\n\r%#NaInf", max_size=300)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300), _GARBAGE_TEXT.map(str.encode)),
       ext=st.sampled_from([".csv", ".tsv", ".txt", ".csv.gz", ".mtx", ".npz", ".h5ad", ".zip", ".npy", ""]),
       orientation=st.sampled_from(["auto", "cells_x_genes", "genes_x_cells"]),
       expect=st.sampled_from(["any", "counts"]))
def test_property_garbage_only_raises_data_error(data, ext, orientation, expect):
    try:
        a = read(data, filename="g" + ext, orientation=orientation, expect=expect)
    except DataError as e:
        assert str(e)
    else:  # garbage that happens to be a valid matrix must be a valid result
        assert a.n_obs >= 2 and a.n_vars >= 2
        assert np.isfinite(a.X.data if sp.issparse(a.X) else a.X).all()


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_property_gzip_of_garbage_only_raises_data_error(payload):
    try:
        read(gzip.compress(payload), filename="g.csv.gz")
    except DataError:
        pass


def test_line_numbers_count_blank_lines_and_quoted_ids():
    with pytest.raises(DataError, match="line 4.*'x'|'x'.*line 4"):
        read(b"cell,g1,g2\n\nc1,1,2\nc2,x,4\n", filename="m.csv")
    with pytest.raises(DataError, match="non-numeric value 'y' at line 3"):
        read(b'cell,g1,g2\n"a,b",1,2\n"c,d",y,4\n', filename="m.csv")
    with pytest.raises(DataError, match="ragged rows: line 3 has 4 fields"):
        read(b"cell,g1,g2\nc1,1,2\nc2,3,4,5\nc3,1,1\n", filename="m.csv")
    with pytest.raises(DataError, match="line 3"):
        read(b"g1 g2\nc1 1 2\nc2 3 oops\n", filename="m.txt")


_BAD_TOKENS = st.sampled_from(["abc", "NaN", "NA", "", "inf", "-Infinity", "1,5", "1.2.3", "--1", "0x1F", "1e"])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=_tables(), bad=_BAD_TOKENS, where=st.tuples(st.integers(0, 5), st.integers(0, 5)))
def test_property_a_bad_value_is_reported_at_its_line(table, bad, where):
    X, rows, cols, sep, orientation, gz = table
    if (sep == " " and bad == "") or (sep == "," and bad == "1,5"):
        bad = "abc"  # an empty field has no whitespace form; "1,5" would split in a CSV
    i, j = where[0] % len(rows), where[1] % len(cols)
    body = [[repr(float(v)) for v in r] for r in X]
    body[i][j] = bad
    lines = [sep.join(["id"] + cols)] + [sep.join([r] + body[k]) for k, r in enumerate(rows)]
    data = ("\n".join(lines) + "\n").encode()
    with pytest.raises(DataError) as err:
        read(data, filename="p.txt" if sep in "; " else "p.csv", orientation=orientation)
    msg = str(err.value)
    assert f"line {i + 2}" in msg, msg
    assert f"column {j + 2}" in msg, msg
