"""Hostile files cannot reach outside themselves, blow up memory or plant formulas (issue 11).

Every attack file is generated here, at test time, with h5py / plain bytes: no
binary of an attack is committed.
"""
from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import dhaka.io as dio
from dhaka.io import DataError, neutralize_formula, read, safe_text_frame, to_csv_safe, write_latent_csv

h5py = pytest.importorskip("h5py")
anndata = pytest.importorskip("anndata")

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"root:x:0:0:root:/root:/bin/bash\nsecret-token-1234567890\n"


# --------------------------------------------------------------------------- #
# crafted .h5ad files
# --------------------------------------------------------------------------- #
def _good_h5ad(path: Path, *, n_obs: int = 6, n_var: int = 4, dense: bool = True) -> Path:
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(n_obs, n_var)).astype(np.float32)
    a = anndata.AnnData(
        X=X if dense else sp.csr_matrix(X),
        obs=pd.DataFrame({"label": list("ab" * (n_obs // 2))}, index=[f"c{i}" for i in range(n_obs)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_var)]),
    )
    a.layers["counts"] = X * 2
    a.write_h5ad(path)
    return path


@pytest.fixture
def passwd(tmp_path) -> Path:
    """Stands in for /etc/passwd: a file of the server the uploader must never see."""
    p = tmp_path / "server" / "passwd"
    p.parent.mkdir()
    p.write_bytes(SECRET)
    return p


def _replace_x(path: Path, make) -> None:
    with h5py.File(path, "a") as f:
        attrs = dict(f["X"].attrs)
        del f["X"]
        make(f)
        if isinstance(f.get("X", getlink=True), h5py.HardLink):
            for k, v in attrs.items():
                f["X"].attrs[k] = v


def _refused(path: Path, *keywords: str) -> str:
    """read() refuses the file from a path and as upload bytes, naming every keyword."""
    msgs = []
    with pytest.raises(DataError) as err:
        read(path)
    msgs.append(str(err.value))
    with pytest.raises(DataError) as err:
        read(path.read_bytes(), filename=path.name)
    msgs.append(str(err.value))
    for msg in msgs:
        for k in keywords:
            assert k.lower() in msg.lower(), f"{k!r} missing from {msg!r}"
        assert path.name in msg
        assert "secret-token" not in msg
    return msgs[0]


def test_external_storage_x_is_refused(tmp_path, passwd):
    path = _good_h5ad(tmp_path / "ext_storage.h5ad")
    size = len(SECRET) // 4 * 4
    _replace_x(path, lambda f: f.create_dataset("X", shape=(size // 4 // 2, 2), dtype="<f4",
                                                external=[(str(passwd), 0, size)]))
    # h5py itself would happily hand over the file's bytes: the attack is real
    with h5py.File(path, "r") as f:
        assert f["X"].external and f["X"][()].tobytes() == SECRET[:size]
    _refused(path, "external storage", "'/X'", "external file")


def test_external_storage_anywhere_is_refused(tmp_path, passwd):
    path = _good_h5ad(tmp_path / "ext_uns.h5ad")
    with h5py.File(path, "a") as f:
        f["uns"].create_dataset("deep/leak", shape=(len(SECRET),), dtype="u1", external=[(str(passwd), 0, len(SECRET))])
    _refused(path, "external storage", "/uns/deep/leak")


def test_external_link_is_refused(tmp_path):
    other = _good_h5ad(tmp_path / "someone_elses_run.h5ad")
    path = _good_h5ad(tmp_path / "ext_link.h5ad")
    _replace_x(path, lambda f: f.__setitem__("X", h5py.ExternalLink(str(other), "/X")))
    _refused(path, "external link", "'/X'", "someone_elses_run.h5ad")
    deep = _good_h5ad(tmp_path / "ext_link_deep.h5ad")
    with h5py.File(deep, "a") as f:
        f["obs"]["sneaky"] = h5py.ExternalLink(str(other), "/obs")
    _refused(deep, "external link", "/obs/sneaky")


def test_soft_links_that_dangle_or_leave_the_file_are_refused(tmp_path):
    other = _good_h5ad(tmp_path / "other.h5ad")
    dangling = _good_h5ad(tmp_path / "dangling.h5ad")
    with h5py.File(dangling, "a") as f:
        f["uns"]["s"] = h5py.SoftLink("/nowhere/at/all")
    _refused(dangling, "soft link", "/uns/s", "dangling")
    through = _good_h5ad(tmp_path / "through_external.h5ad")
    with h5py.File(through, "a") as f:
        f["uns"]["door"] = h5py.ExternalLink(str(other), "/")
        f["uns"]["s"] = h5py.SoftLink("/uns/door/X")
    _refused(through, "external link", "/uns/door")
    # a soft link inside the file is fine
    ok = _good_h5ad(tmp_path / "inside.h5ad")
    with h5py.File(ok, "a") as f:
        f["uns"]["alias"] = h5py.SoftLink("/obs")
    assert read(ok).shape == (6, 4)


def test_virtual_dataset_is_refused(tmp_path):
    src = tmp_path / "server_data.h5"
    with h5py.File(src, "w") as f:
        f["data"] = np.arange(12, dtype=np.float32).reshape(6, 2)
    path = _good_h5ad(tmp_path / "virtual.h5ad", n_var=2)

    def make(f):
        layout = h5py.VirtualLayout(shape=(6, 2), dtype="f4")
        layout[:] = h5py.VirtualSource(str(src), "data", shape=(6, 2))
        f.create_virtual_dataset("X", layout)

    _replace_x(path, make)
    with h5py.File(path, "r") as f:
        assert f["X"].is_virtual
    _refused(path, "virtual dataset", "'/X'", "server_data.h5")


def test_refused_before_anndata_reads_anything(tmp_path, passwd, monkeypatch):
    path = _good_h5ad(tmp_path / "ext_storage.h5ad")
    _replace_x(path, lambda f: f.create_dataset("X", shape=(2, 2), dtype="<f4", external=[(str(passwd), 0, 16)]))
    import anndata.io

    def boom(*a, **k):  # pragma: no cover - failing here is the bug
        raise AssertionError("anndata read something before the safety check")

    monkeypatch.setattr(anndata, "read_h5ad", boom)
    monkeypatch.setattr(anndata.io, "read_elem", boom)
    with pytest.raises(DataError, match="external storage"):
        read(path)
    with pytest.raises(DataError, match="external storage"):
        dio.check_hdf5_safety(path)


def test_check_hdf5_safety_accepts_a_plain_h5ad(tmp_path):
    path = _good_h5ad(tmp_path / "fine.h5ad", dense=False)
    dio.check_hdf5_safety(path)
    with h5py.File(path, "r") as f:
        dio.check_hdf5_safety(f, name="fine.h5ad")


# --------------------------------------------------------------------------- #
# what an .h5ad holds beside X is kept, within the same limits (issue 28)
# --------------------------------------------------------------------------- #
def _with_unused_payload(path: Path, n_values: int, where: str = "uns/huge") -> Path:
    """Add a big (declared) dataset, one chunk written: the rest is declared and costs nothing on disk."""
    with h5py.File(path, "a") as f:
        f.create_dataset(where, shape=(n_values,), dtype="<f4", chunks=(min(n_values, 1 << 20),),
                         compression="gzip", fillvalue=0.0)
        f[where][:1] = 1.0
    return path


def test_extras_are_kept_raw_is_left_and_extras_false_reads_nothing_else(tmp_path, monkeypatch):
    a = anndata.read_h5ad(_good_h5ad(tmp_path / "base.h5ad"))
    a.obsm["X_pca"] = np.ones((6, 3), dtype=np.float32)
    a.varm["loadings"] = np.ones((4, 3), dtype=np.float32)
    a.obsp["distances"] = sp.eye(6, format="csr")
    a.uns["colors"] = ["red", "blue"]
    a.raw = a
    path = tmp_path / "full.h5ad"
    a.write_h5ad(path)
    read_paths = []
    real_getitem = h5py.Dataset.__getitem__

    def spy(self, *args, **kwargs):
        read_paths.append(self.name)
        return real_getitem(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    out = read(path)
    assert out.shape == (6, 4) and list(out.obs["label"]) == list("ababab")
    assert set(out.obsm) == {"X_pca"} and set(out.varm) == {"loadings"} and set(out.obsp) == {"distances"}
    assert set(out.layers) == {"counts"} and list(out.uns["colors"]) == ["red", "blue"]
    assert out.raw is None and out.uns["dhaka_io"]["left_in_file"] == ["raw"]
    assert not any(p.startswith("/raw") for p in read_paths), read_paths
    read_paths.clear()
    bare = read(path, extras=False)
    assert not any(p.startswith(("/uns", "/obsm", "/varm", "/obsp", "/raw", "/layers")) for p in read_paths), read_paths
    assert set(bare.uns) == {"dhaka_io"} and len(bare.obsm) == 0 and len(bare.layers) == 0
    assert bare.uns["dhaka_io"]["left_in_file"] == ["layers", "obsm", "obsp", "raw", "uns", "varm"]
    with pytest.raises(ValueError, match="extras"):
        read(path, extras="no")


def test_a_400mb_dataset_declared_in_uns_is_refused_as_a_bomb_at_no_memory(tmp_path):
    """The issue-11 file (23 KB, a 400 MB dataset of fill values in uns): kept members are read, so it is
    refused as a decompression bomb before anything is; extras=False reads it; neither costs memory."""
    path = _with_unused_payload(_good_h5ad(tmp_path / "uns_bomb.h5ad"), 100_000_000)
    assert path.stat().st_size < 200_000
    _refused(path, "'/uns/huge'", "declares 400,000,000 bytes", "bomb", "extras=False")
    code = textwrap.dedent(f"""
        import resource, dhaka.io as dio, anndata, h5py, scipy.sparse
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            dio.read({str(path)!r})
        except dio.DataError:
            pass
        a = dio.read({str(path)!r}, extras=False)
        assert a.shape == (6, 4)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 100, out.stdout  # MB; reading uns would cost 400


def test_a_huge_declared_obsp_is_refused_like_a_huge_x(tmp_path):
    """A few KB declaring an 8 GB obsp: refused on its headers by read, the estimate and the sandbox."""
    from dhaka.io.sandbox import read_sandboxed

    path = _good_h5ad(tmp_path / "big_obsp.h5ad")
    with h5py.File(path, "a") as f:
        g = f.require_group("obsp").create_group("connectivities")
        g.attrs["encoding-type"], g.attrs["encoding-version"], g.attrs["shape"] = "csr_matrix", "0.1.0", (6, 6)
        for k, dt in (("data", "<f4"), ("indices", "<i4")):
            g.create_dataset(k, shape=(2**30,), dtype=dt, chunks=(1 << 22,), compression="gzip", fillvalue=0)
        g.create_dataset("indptr", data=np.zeros(7, dtype=np.int64))
    assert path.stat().st_size < 200_000
    msg = _refused(path, "obsp/connectivities", "MAX_H5AD_BYTES", "refusing before reading")
    assert "8,589,934,592" in msg or "8,589,93" in msg, msg
    with pytest.raises(DataError, match="MAX_H5AD_BYTES"):
        dio.estimate_read_memory(path)
    with pytest.raises(DataError, match=r"obsp/connectivities.*MAX_H5AD_BYTES"):
        read_sandboxed(path, memory_limit=2**30, time_limit=60)


def test_kept_members_count_toward_the_same_budget(tmp_path, monkeypatch):
    a = anndata.read_h5ad(_good_h5ad(tmp_path / "base.h5ad", n_obs=40, n_var=4))
    a.obsp["connectivities"] = sp.random(40, 40, density=0.5, format="csr", random_state=0, dtype=np.float32)
    path = tmp_path / "obsp.h5ad"
    a.write_h5ad(path)
    with h5py.File(path, "r") as f:
        alone = sum(dio.h5ad._h5_declared_bytes(f[p]) for p in ("X", "obs", "var"))
    monkeypatch.setattr(dio.safety, "MAX_H5AD_BYTES", alone + 64)
    _refused(path, "X, obs, var and the members kept beside them", "largest: obsp/connectivities", "extras=False")
    assert read(path, extras=False).shape == (40, 4)


def test_a_kept_member_in_a_million_chunks_is_refused(tmp_path, monkeypatch):
    path = _good_h5ad(tmp_path / "chunky.h5ad")
    with h5py.File(path, "a") as f:
        f.create_dataset("obsm/X_pca", shape=(6, 3), dtype="<f4", chunks=(1, 1))
    monkeypatch.setattr(dio.safety, "MAX_HDF5_CHUNKS", 10)
    _refused(path, "'/obsm/X_pca'", "MAX_HDF5_CHUNKS")


def test_a_member_that_does_not_fit_the_matrix_is_refused(tmp_path):
    path = _good_h5ad(tmp_path / "misfit.h5ad")
    with h5py.File(path, "a") as f:
        f.create_dataset("obsm/X_pca", data=np.ones((5, 2), dtype=np.float32))  # 5 rows for 6 cells
    _refused(path, "obsm['X_pca']", "does not fit the 6 x 4 matrix", "5 x 2")


def test_a_member_anndata_cannot_decode_is_left_with_a_note(tmp_path, capsys):
    path = _good_h5ad(tmp_path / "odd.h5ad")
    with h5py.File(path, "a") as f:
        g = f["uns"].create_group("mystery")
        g.attrs["encoding-type"], g.attrs["encoding-version"] = "from-the-future", "9.9.9"
        f["uns"]["fine"] = np.arange(3)
    import dhaka.settings  # noqa: F401 - the 'dhaka' logger's stderr handler (dhaka.io alone does not set it up)

    out = read(path)
    assert list(out.uns["fine"]) == [0, 1, 2] and "mystery" not in out.uns
    assert out.uns["dhaka_io"]["left_in_file"] == ["uns/mystery"]
    assert "uns/mystery left in the file: it could not be read" in capsys.readouterr().err


def test_extras_follow_the_cells_and_features(tmp_path):
    """Transposed with X (orientation='genes_x_cells'), and reordered with the features when bins are put in
    genome order: obsm / obsp rows stay with their cells, varm rows and layer columns with their features."""
    bins = ["chr1:2000001-3000000", "chr1:1-1000000", "chr1:1000001-2000000"]
    X = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    a = anndata.AnnData(X=X, obs=pd.DataFrame(index=["c0", "c1"]), var=pd.DataFrame(index=bins))
    a.varm["pos"] = np.array([[3.0], [1.0], [2.0]])
    a.layers["state"] = X * 10
    a.obsm["X_pca"] = np.array([[0.5], [1.5]])
    a.obsp["d"] = sp.csr_matrix(np.array([[0, 1.0], [2.0, 0]]))
    a.write_h5ad(tmp_path / "bins.h5ad")
    out = read(tmp_path / "bins.h5ad")
    assert list(out.var_names) == [bins[1], bins[2], bins[0]]
    np.testing.assert_array_equal(out.X, X[:, [1, 2, 0]])
    np.testing.assert_array_equal(out.varm["pos"].ravel(), [1, 2, 3])
    np.testing.assert_array_equal(out.layers["state"], 10 * X[:, [1, 2, 0]])
    np.testing.assert_array_equal(out.obsm["X_pca"].ravel(), [0.5, 1.5])

    genes = anndata.AnnData(X=X.T.copy(), obs=pd.DataFrame(index=["g0", "g1", "g2"]),
                            var=pd.DataFrame(index=["c0", "c1"]))
    genes.varm["X_pca"] = np.array([[0.5], [1.5]])
    genes.varp["d"] = sp.csr_matrix(np.array([[0, 1.0], [2.0, 0]]))
    genes.obsm["loadings"] = np.arange(3.0)[:, None]
    genes.layers["counts"] = X.T * 2
    genes.write_h5ad(tmp_path / "genes.h5ad")
    t = read(tmp_path / "genes.h5ad", orientation="genes_x_cells")
    assert t.shape == (2, 3) and list(t.obs_names) == ["c0", "c1"]
    np.testing.assert_array_equal(t.obsm["X_pca"].ravel(), [0.5, 1.5])
    np.testing.assert_array_equal(t.obsp["d"].toarray(), [[0, 1], [2, 0]])
    np.testing.assert_array_equal(t.varm["loadings"].ravel(), [0, 1, 2])
    np.testing.assert_array_equal(t.layers["counts"], X * 2)


@pytest.mark.parametrize("dense", [True, False])
def test_layer_keyword(tmp_path, dense):
    path = _good_h5ad(tmp_path / "layers.h5ad", dense=dense)
    x = read(path)
    c = read(path, layer="counts")
    np.testing.assert_array_equal(np.asarray(sp.csr_matrix(c.X).todense()), 2 * np.asarray(sp.csr_matrix(x.X).todense()))
    assert c.uns["dhaka_io"]["layer"] == "counts"
    assert list(c.obs_names) == list(x.obs_names)
    with pytest.raises(DataError, match=r"no layer 'state'.*'counts'"):
        read(path, layer="state")
    with pytest.raises(DataError, match="layer"):
        read(b"cell,g1,g2\nc1,1,2\nc2,3,4\n", filename="m.csv", layer="counts")
    with pytest.raises(ValueError, match="layer"):
        read(path, layer=3)


def test_declared_sizes_are_capped(tmp_path, monkeypatch):
    path = _good_h5ad(tmp_path / "sizes.h5ad")
    monkeypatch.setattr(dio.safety, "MAX_H5AD_BYTES", 64)
    with pytest.raises(DataError, match=r"(?i)declare.*bytes.*limit"):
        read(path)
    monkeypatch.undo()
    monkeypatch.setattr(dio.safety, "MAX_DENSE_ENTRIES", 10)
    with pytest.raises(DataError, match=r"(?i)declares a dense 6 x 4"):
        read(path)


def test_h5ad_nearly_empty_huge_sparse_shape_is_refused(tmp_path):
    path = _good_h5ad(tmp_path / "wide.h5ad", dense=False)
    with h5py.File(path, "a") as f:
        f["X"].attrs["shape"] = np.array([6, 3_000_000])
    with pytest.raises(DataError, match=r"(?i)declares a 6 x 3,000,000 matrix"):
        read(path)


def test_h5ad_inconsistent_sparse_x_is_a_data_error(tmp_path):
    path = _good_h5ad(tmp_path / "bad_sparse.h5ad", dense=False)
    with h5py.File(path, "a") as f:
        idx = f["X"]["indices"][()]
        idx[0] = 99
        f["X"]["indices"][...] = idx
    with pytest.raises(DataError, match="inconsistent sparse"):
        read(path)


# --------------------------------------------------------------------------- #
# memory bombs in text and MatrixMarket
# --------------------------------------------------------------------------- #
HUGE_MTX = b"%%MatrixMarket matrix coordinate integer general\n2000000 2000000 1\n1 1 1\n"


def test_tiny_mtx_declaring_a_huge_empty_matrix_is_refused():
    assert len(HUGE_MTX) == 73
    with pytest.raises(DataError) as err:
        read(HUGE_MTX, filename="huge.mtx")
    msg = str(err.value)
    for k in ("huge.mtx", "declares", "2,000,000 x 2,000,000", "1 stored entry", "names", "MAX_EMPTY_NAMES"):
        assert k in msg
    # a sparse but sane matrix still loads
    ok = b"%%MatrixMarket matrix coordinate integer general\n3000 500 2\n1 1 1\n2 2 5\n"
    assert read(ok, filename="m.mtx").shape == (500, 3000)


def test_tiny_10x_zip_declaring_a_huge_empty_matrix_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("matrix.mtx.gz", gzip.compress(HUGE_MTX))
        zf.writestr("barcodes.tsv", b"AAAC-1\n")
        zf.writestr("features.tsv", b"G1\tG1\n")
    with pytest.raises(DataError, match=r"declares a 2,000,000 x 2,000,000 matrix with only 1 stored entry"):
        read(buf.getvalue(), filename="tiny.zip")


def test_huge_names_file_is_not_read_beyond_the_matrix():
    mtx = b"%%MatrixMarket matrix coordinate integer general\n3 2 3\n1 1 1\n2 2 4\n3 1 2\n"
    many = b"".join(b"AAAC%07d-1\n" % i for i in range(200_000))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("matrix.mtx", mtx)
        zf.writestr("barcodes.tsv", many)
        zf.writestr("features.tsv", b"A\tA\nB\tB\nC\tC\n")
    with pytest.raises(DataError, match=r"more than 3 barcodes.*must match"):
        read(buf.getvalue(), filename="names.zip")


def _peak_mb(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


def test_gzip_csv_of_zeros_parses_within_the_memory_bound(tmp_path):
    """1000 x 10000 zeros as .csv.gz (tens of KB): peak <= 3 x the float32 matrix + 200 MB."""
    n_cells, n_genes = 1000, 10_000
    row = ("," + ",".join(["0"] * n_genes)).encode()
    with gzip.open(tmp_path / "zeros.csv.gz", "wb", compresslevel=6) as g:
        g.write(("cell," + ",".join(f"g{j}" for j in range(n_genes)) + "\n").encode())
        for i in range(n_cells):
            g.write(b"c%d" % i + row + b"\n")
    peak = _peak_mb(f"""
        import resource, dhaka.io as dio, anndata, h5py, scipy.sparse
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        a = dio.read({str(tmp_path / 'zeros.csv.gz')!r})
        assert a.shape == ({n_cells}, {n_genes}) and not a.X.any()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    """)
    matrix_mb = n_cells * n_genes * 4 / 2**20
    assert peak <= 3 * matrix_mb + 200, (peak, matrix_mb)


# --------------------------------------------------------------------------- #
# streaming parser edge cases (block boundaries, careful path)
# --------------------------------------------------------------------------- #
def test_line_blocks_keep_every_line_across_block_boundaries():
    lines = ["a" * n for n in (1, 5, 40, 2, 0, 3, 100, 1)]
    text = "\n".join(lines) + "\n\n  \nlast"
    got = [ln for block in dio._line_blocks(io.StringIO(text), size=7) for ln in block]
    assert got == [ln for ln in lines if ln] + ["last"]


@pytest.mark.parametrize("orientation", ["cells_x_genes", "genes_x_cells"])
def test_many_small_blocks_give_the_same_matrix(monkeypatch, orientation):
    rng = np.random.default_rng(1)
    X = rng.poisson(1.0, size=(57, 23)).astype(np.float32)
    cells, genes = [f"cell_{i}" for i in range(57)], [f"Gene{j}" for j in range(23)]
    if orientation == "cells_x_genes":
        df = pd.DataFrame(X, index=pd.Index(cells, name="cell"), columns=genes)
    else:
        df = pd.DataFrame(X.T, index=pd.Index(genes, name="gene"), columns=cells)
    data = df.to_csv(float_format="%g").encode()
    whole = read(data, filename="m.csv")
    monkeypatch.setattr(dio.safety, "_TEXT_BLOCK_CHARS", 50)
    monkeypatch.setattr(dio.safety, "_BLOCK_VALUES", 7)
    small = read(data, filename="m.csv")
    for a in (whole, small):
        np.testing.assert_array_equal(a.X, X)
        assert list(a.obs_names) == cells and list(a.var_names) == genes


def test_quoted_names_with_delimiters_take_the_careful_path():
    text = 'cell,"g,1",g2\n"c,1",1,2\n"c 2",3,4\n'
    a = read(text.encode(), filename="q.csv")
    assert list(a.obs_names) == ["c,1", "c 2"] and list(a.var_names) == ["g,1", "g2"]
    np.testing.assert_array_equal(a.X, [[1, 2], [3, 4]])


def test_bad_value_late_in_a_big_file_is_found_with_its_line(monkeypatch):
    monkeypatch.setattr(dio.safety, "_TEXT_BLOCK_CHARS", 64)
    rows = ["cell,g1,g2,g3"] + [f"c{i},1,2,3" for i in range(200)]
    rows[150] = "c149,1,oops,3"
    with pytest.raises(DataError, match=r"non-numeric value 'oops' at line 151"):
        read(("\n".join(rows) + "\n").encode(), filename="late.csv")


def test_hexadecimal_is_not_a_number():
    with pytest.raises(DataError, match="non-numeric value '0x1A'"):
        read(b"cell,g1,g2\nc1,0x1A,2\nc2,3,4\n", filename="hex.csv")


def test_mtx_in_many_blocks(monkeypatch):
    X = sp.random(40, 30, density=0.2, random_state=0, format="coo", dtype=np.float64)
    X.data = np.round(X.data * 10) + 1
    import scipy.io

    buf = io.BytesIO()
    scipy.io.mmwrite(buf, X)
    whole = read(buf.getvalue(), filename="m.mtx")
    monkeypatch.setattr(dio.safety, "_MTX_BLOCK_LINES", 7)
    small = read(gzip.compress(buf.getvalue()), filename="m.mtx.gz")
    np.testing.assert_array_equal(whole.X.toarray(), X.T.toarray())
    np.testing.assert_array_equal(small.X.toarray(), X.T.toarray())


# --------------------------------------------------------------------------- #
# formula (CSV) injection
# --------------------------------------------------------------------------- #
EVIL = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


@pytest.mark.parametrize("value", EVIL)
def test_neutralize_formula_prefixes_a_quote(value):
    assert neutralize_formula(value) == "'" + value


@pytest.mark.parametrize("value", ["normal", "", "-1.5", "+3", "1e5", "a=b", 3, -2.5, None, np.nan])
def test_neutralize_formula_leaves_other_values(value):
    out = neutralize_formula(value)
    assert out is value or (isinstance(value, float) and np.isnan(value) and np.isnan(out))


def test_safe_text_frame_covers_index_columns_and_text_cells():
    df = pd.DataFrame(
        {"=GENE": [1.0, -2.0, 3.0], "label": ["=cmd()", "ok", "-x"],
         "cat": pd.Categorical(["@a", "b", "@a"]), "n": [-1, 2, 3], "flag": [True, False, True]},
        index=pd.Index(["+cell", "cell2", "\tcell3"], name="=name"),
    )
    before = df.copy()
    out = safe_text_frame(df)
    pd.testing.assert_frame_equal(df, before)  # the input is not modified
    assert list(out.index) == ["'+cell", "cell2", "'\tcell3"] and out.index.name == "'=name"
    assert list(out.columns) == ["'=GENE", "label", "cat", "n", "flag"]
    assert list(out["label"]) == ["'=cmd()", "ok", "'-x"]
    assert list(out["cat"]) == ["'@a", "b", "'@a"]
    assert out["'=GENE"].tolist() == [1.0, -2.0, 3.0] and out["n"].dtype.kind == "i"  # numbers stay numbers
    assert out["flag"].tolist() == [True, False, True]
    text = to_csv_safe(df)
    back = pd.read_csv(io.StringIO(text), index_col=0)
    assert not any(str(c).startswith(("=", "+", "-", "@")) for c in back.columns)
    assert back.loc["'+cell", "n"] == -1


def test_write_latent_csv_neutralises_names_labels_and_text_extras(tmp_path):
    Z = np.array([[-1.0, 2.0], [3.0, -4.0], [0.5, 0.25]])
    names = ["=HYPERLINK(\"http://evil\",\"click\")", "@cell", "plain"]
    text = write_latent_csv(None, Z, obs_names=names, labels=["=1+1", "b", "c"],
                            extra={"note": ["-cmd", "ok", "+x"], "score": [-1.0, 2.0, 3.0]})
    df = pd.read_csv(io.StringIO(text), index_col=0, keep_default_na=False)
    assert list(df.index) == ["'" + names[0], "'@cell", "plain"]
    assert list(df["cluster"]) == ["'=1+1", "b", "c"]
    assert list(df["note"]) == ["'-cmd", "ok", "'+x"]
    np.testing.assert_allclose(df[["dhaka_1", "dhaka_2"]].to_numpy(), Z)  # negative numbers stay numbers
    assert df["score"].tolist() == [-1.0, 2.0, 3.0]
    for line in text.splitlines():
        for cell in line.split(","):
            assert not cell.startswith(("=", "@", "+", "\t", "\r")) and not cell.startswith("-c")
    path = tmp_path / "latent.csv"
    write_latent_csv(path, Z, obs_names=names)
    written = path.read_text()
    assert "'=HYPERLINK" in written and "\n=" not in written and '\n"=' not in written


def test_no_import_of_streamlit():
    out = subprocess.run([sys.executable, "-c", "import sys, dhaka.io; print('streamlit' in sys.modules)"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ}, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------- #
# memory estimate from headers (for admission before parsing)
# --------------------------------------------------------------------------- #
def test_estimate_read_memory_per_format(tmp_path):
    import scipy.io

    X = sp.random(300, 40, density=0.1, random_state=3, format="csr", dtype=np.float64)
    X.data = np.round(X.data * 9) + 1
    dense = X.toarray().astype(np.float32)
    df = pd.DataFrame(dense, index=[f"cell{i}" for i in range(300)], columns=[f"G{j}" for j in range(40)])
    (tmp_path / "m.csv").write_text(df.to_csv(float_format="%g"))
    est = dio.estimate_read_memory(tmp_path / "m.csv")
    assert est["dense"] and not est["exact"] and est["shape"][1] == 40
    assert 0.8 * 300 <= est["shape"][0] <= 1.25 * 300
    assert est["peak_bytes"] >= 2 * est["matrix_bytes"]
    gz = dio.estimate_read_memory(gzip.compress((tmp_path / "m.csv").read_bytes()), filename="m.csv.gz")
    assert gz["shape"] == est["shape"]

    buf = io.BytesIO()
    scipy.io.mmwrite(buf, X.T.tocoo())
    m = dio.estimate_read_memory(buf.getvalue(), filename="matrix.mtx")
    assert m["exact"] and not m["dense"] and m["shape"] == (40, 300)
    assert m["matrix_bytes"] >= X.nnz * 8
    a = read(buf.getvalue(), filename="matrix.mtx")
    assert a.X.data.nbytes + a.X.indices.nbytes + a.X.indptr.nbytes <= m["matrix_bytes"]

    h = _good_h5ad(tmp_path / "s.h5ad", dense=False)
    e = dio.estimate_read_memory(h)
    assert e["format"] == "h5ad" and e["shape"] == (6, 4) and not e["dense"]
    e = dio.estimate_read_memory(_good_h5ad(tmp_path / "d.h5ad"), layer="counts")
    assert e["dense"] and e["matrix_bytes"] == 6 * 4 * 4


def test_estimate_read_memory_refuses_what_read_refuses(tmp_path, passwd):
    with pytest.raises(DataError, match="declares a 2,000,000 x 2,000,000"):
        dio.estimate_read_memory(HUGE_MTX, filename="huge.mtx")
    path = _good_h5ad(tmp_path / "ext.h5ad")
    _replace_x(path, lambda f: f.create_dataset("X", shape=(2, 2), dtype="<f4", external=[(str(passwd), 0, 16)]))
    with pytest.raises(DataError, match="external storage"):
        dio.estimate_read_memory(path)


def test_escaped_quotes_in_names_are_unescaped():
    a = read(b'cell,g1,g2\n"a""b",1,2\nc2,3,4\n', filename="q.csv")
    assert list(a.obs_names) == ['a"b', "c2"]


def test_hdf5_with_too_many_objects_is_refused(tmp_path, monkeypatch):
    path = _good_h5ad(tmp_path / "many.h5ad")
    with h5py.File(path, "a") as f:
        for i in range(30):
            f["uns"].create_group(f"g{i}")
    monkeypatch.setattr(dio.safety, "MAX_HDF5_LINKS", 25)
    with pytest.raises(DataError, match="more than 25 objects"):
        read(path)


@pytest.mark.parametrize("member", ["matrix.mtx", "data.csv"])
def test_corrupt_zip_member_is_a_data_error(member):
    rng = np.random.default_rng(4)
    if member == "matrix.mtx":
        lines = "".join(f"{rng.integers(1, 300)} {rng.integers(1, 200)} 1\n" for _ in range(5000))
        members = {"matrix.mtx": f"%%MatrixMarket matrix coordinate integer general\n300 200 5000\n{lines}",
                   "barcodes.tsv": "".join(f"b{i}\n" for i in range(200)),
                   "features.tsv": "".join(f"g{i}\tG{i}\n" for i in range(300))}
    else:
        members = {"data.csv": "cell," + ",".join(f"g{j}" for j in range(50)) + "\n"
                   + "".join(f"c{i}," + ",".join(str(v) for v in rng.integers(0, 99, 50)) + "\n" for i in range(2000))}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, text in members.items():
            zf.writestr(n, text)
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    mid = start + info.compress_size // 2
    data[mid:mid + 64] = bytes(64)  # damage the middle of the compressed member
    with pytest.raises(DataError, match=rf"damaged.zip: corrupt zip member '{member}'"):
        read(bytes(data), filename="damaged.zip")


def test_metadata_far_longer_than_the_dataset_is_refused(monkeypatch):
    a = read(b"cell,g1,g2\nc1,1,2\nc2,3,4\n", filename="m.csv")
    monkeypatch.setattr(dio.safety, "MAX_METADATA_ROWS_PER_CELL", 1)
    rows = "".join(f"x{i},v\n" for i in range(1100))
    with pytest.raises(DataError, match=r"more than 1,002 rows for a dataset of 2 cells"):
        dio.read_metadata(("id,label\nc1,a\n" + rows).encode(), a, filename="meta.csv")
    ok = dio.read_metadata(gzip.compress(b"id,label\nc1,a\nc2,b\n"), a, filename="meta.csv.gz")
    assert list(ok.obs["label"]) == ["a", "b"]
