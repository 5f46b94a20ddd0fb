"""A corpus of broken (and a few borderline) input files for ``dhaka.io.read``.

Reusable by the library tests and the app tests::

    from tests.badfiles import make_bad_corpus, EXPECTED, LOADS_OK
    corpus = make_bad_corpus(tmp_path)            # name -> Path
    for name, path in corpus.items():
        keywords, kwargs = EXPECTED[name]
        ...   # read(path, **kwargs) raises DataError whose message contains every keyword
              # (case-insensitive), except names in LOADS_OK, which load fine.

Everything is generated from fixed bytes or a fixed seed (the hostile .h5ad
files with h5py, at run time: no attack binary is committed), so the corpus is
the same on every run; generating it takes a fraction of a second.
"""
from __future__ import annotations

import gzip
import io
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["make_bad_corpus", "EXPECTED", "LOADS_OK", "READS_AS", "message_ok", "LONG_LINE_BYTES"]

#: Length of the one-line files (``long_line_gz``, ``tenx_long_barcode_line``): past the reader's line limit
#: (``dhaka.io.MAX_LINE_BYTES``, 16 MiB), a few KB of gzip.
LONG_LINE_BYTES = 17 * 2**20

#: name -> (keywords every error message must contain (case-insensitive), read() kwargs)
EXPECTED: dict[str, tuple[tuple[str, ...], dict]] = {
    "empty": (("empty",), {}),
    "blank_lines": (("empty",), {}),
    "header_only": (("header only",), {}),
    "one_column": (("one column",), {}),
    "non_numeric": (("non-numeric", "line 3", "'abc'", "g2"), {}),
    "ragged_rows": (("ragged", "line 3"), {}),
    "nan": (("nan", "line 2"), {}),
    "empty_value": (("missing", "line 3"), {}),
    "inf": (("infinite", "line 3"), {}),
    "negative_counts": (("negative", "expect='counts'"), {"expect": "counts"}),
    "negative_nonnegative": (("negative",), {"expect": "nonnegative"}),
    "non_integer_counts": (("non-integer", "2.5"), {"expect": "counts"}),
    "duplicate_cells": (("duplicate", "'c1'"), {}),
    "duplicate_genes": (("duplicate", "'g2'"), {}),
    "one_cell": (("1 cell", "at least 2", "2x2"), {}),
    "one_gene": (("1 feature", "at least 2", "2x2"), {}),
    "two_by_two": ((), {}),
    "binary_garbage_csv": (("binary",), {}),
    "zip_named_csv": (("zip archive",), {}),
    "truncated_gz": (("truncated",), {}),
    "corrupt_gz": (("corrupt gzip",), {}),
    "corrupt_zip": (("corrupt",), {}),
    "zip_without_matrix": (("matrix.mtx",), {}),
    "zip_traversal": (("traversal", "../"), {}),
    "zip_absolute": (("absolute",), {}),
    "zip_symlink": (("symbolic link",), {}),
    "zip_bomb": (("bomb",), {}),
    "zip_10x_mismatch": (("barcodes", "must match"), {}),
    "h5ad_not_hdf5": (("not an hdf5",), {}),
    "pickle_npz": (("pickle", "refused"), {}),
    "pickle_h5ad": (("pickle", "refused"), {}),
    "npz_object_array": (("pickle",), {}),
    "npz_not_zip": (("not a valid .npz",), {}),
    "mtx_huge_shape": (("declares", "limit"), {}),
    "mtx_nnz_too_many": (("declares", "entries"), {}),
    "mtx_missing_entries": (("declares 4 entries", "has 3"), {}),
    "mtx_out_of_bounds": (("outside",), {}),
    "mtx_no_banner": (("matrixmarket",), {}),
    "npy_forged_shape": (("declares shape",), {}),
    "too_large": (("max_bytes",), {"max_bytes": 16}),
    # files that reach outside themselves or declare absurd sizes (issue 11)
    "h5ad_external_storage": (("external storage", "'/X'"), {}),
    "h5ad_external_link": (("external link", "'/X'"), {}),
    "h5ad_virtual_dataset": (("virtual dataset", "'/X'"), {}),
    "h5ad_dangling_soft_link": (("soft link", "dangling", "/uns/ghost"), {}),
    "mtx_absurd_shape": (("declares", "2,000,000 x 2,000,000", "names"), {}),
    # read with values moved, summed or transposed, or at a cost out of all proportion (issue 25)
    "ragged_rows_cancel": (("ragged", "line 3", "has 2 fields", "3 were expected"), {}),
    "ragged_rows_cancel_tsv": (("ragged", "line 4", "has 4 fields", "3 were expected"), {}),
    "long_line_gz": (("line 1", "longer than", "MAX_LINE_BYTES"), {}),
    "tenx_long_barcode_line": (("barcodes.tsv.gz", "line 1", "longer than", "MAX_LINE_BYTES"), {}),
    "mtx_duplicate_entry": (("duplicate", "(1, 1)", "entries 1 and 3"), {}),
    "h5ad_many_chunks": (("'/X'", "chunks", "MAX_HDF5_CHUNKS"), {}),
    "cn_long_no_shared_bins": (("every bin lacks", "300 cells", "300 bins"), {}),
    "bom_latin1_corner": ((), {}),
}

#: corpus entries that must load (they sit exactly at a limit)
LOADS_OK = frozenset({"two_by_two", "bom_latin1_corner"})

#: corpus entries that load, with what they must read as: (obs_names, var_names, X as nested lists)
READS_AS: dict[str, tuple[list[str], list[str], list[list[float]]]] = {
    "two_by_two": (["c1", "c2"], ["g1", "g2"], [[1, 2], [3, 4]]),
    # a UTF-8 byte-order mark before latin-1 names: the BOM goes, so the corner 'cell' says rows are cells
    "bom_latin1_corner": (["p\u00e9re", "q", "r"], ["x", "y"], [[1, 2], [3, 4], [5, 6]]),
}


def message_ok(name: str, message: str) -> bool:
    """True if ``message`` contains every keyword expected for corpus entry ``name``."""
    low = message.lower()
    return all(k.lower() in low for k in EXPECTED[name][0])


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return buf.getvalue()


_MTX = b"%%MatrixMarket matrix coordinate integer general\n3 2 3\n1 1 1\n2 2 4\n3 1 2\n"
_BARCODES = b"AAACCTGA-1\nAAACCTGC-1\n"
_FEATURES = b"ENSG01\tGeneA\tGene Expression\nENSG02\tGeneB\tGene Expression\nENSG03\tGeneC\tGene Expression\n"


def _forge_declared_size(zip_data: bytes, size: int) -> bytes:
    """Rewrite every uncompressed-size field (local and central headers) to ``size``."""
    b = bytearray(zip_data)
    pos = 0
    while (pos := b.find(b"PK\x03\x04", pos)) >= 0:  # local header: size at +22
        b[pos + 22: pos + 26] = size.to_bytes(4, "little")
        pos += 4
    pos = 0
    while (pos := b.find(b"PK\x01\x02", pos)) >= 0:  # central header: size at +24
        b[pos + 24: pos + 28] = size.to_bytes(4, "little")
        pos += 4
    return bytes(b)


def _hostile_h5ads(server: Path) -> dict[str, tuple[str, bytes]]:
    """.h5ad files whose X reads another file of the server (built with h5py at run time).

    ``server`` receives the files they point at (a stand-in for /etc/passwd and
    another user's data); those are not corpus entries.
    """
    import anndata
    import h5py
    import pandas as pd

    server.mkdir(parents=True, exist_ok=True)
    secret = server / "passwd"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    other = server / "other_user.h5"
    with h5py.File(other, "w") as f:
        f["X"] = np.arange(8, dtype=np.float32).reshape(4, 2)
    base = server / "base.h5ad"
    anndata.AnnData(X=np.ones((4, 2), dtype=np.float32), obs=pd.DataFrame(index=list("abcd")),
                    var=pd.DataFrame(index=["g1", "g2"])).write_h5ad(base)

    def variant(make) -> bytes:
        path = server / "variant.h5ad"
        path.write_bytes(base.read_bytes())
        with h5py.File(path, "a") as f:
            make(f)
        return path.read_bytes()

    def external_storage(f):
        del f["X"]
        f.create_dataset("X", shape=(4, 2), dtype="<f4", external=[(str(secret), 0, 32)])

    def external_link(f):
        del f["X"]
        f["X"] = h5py.ExternalLink(str(other), "/X")

    def virtual(f):
        del f["X"]
        layout = h5py.VirtualLayout(shape=(4, 2), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "X", shape=(4, 2))
        f.create_virtual_dataset("X", layout)

    def dangling(f):
        f["uns"]["ghost"] = h5py.SoftLink("/nowhere")

    return {
        "h5ad_external_storage": ("external_storage.h5ad", variant(external_storage)),
        "h5ad_external_link": ("external_link.h5ad", variant(external_link)),
        "h5ad_virtual_dataset": ("virtual.h5ad", variant(virtual)),
        "h5ad_dangling_soft_link": ("dangling.h5ad", variant(dangling)),
    }


def _many_chunks_h5ad(server: Path) -> bytes:
    """An .h5ad whose X (2,000 x 2,000) is stored in 1 x 1 chunks: 4,000,000 chunks, only one written.

    Reading such a dataset whole costs HDF5 a few KB of bookkeeping per chunk (gigabytes here) while
    the file stays a few KB.
    """
    import anndata
    import h5py
    import pandas as pd

    import scipy.sparse as sp

    server.mkdir(parents=True, exist_ok=True)
    path = server / "chunks.h5ad"
    n = 2000
    anndata.AnnData(X=sp.csr_matrix((n, n), dtype=np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
                    var=pd.DataFrame(index=[f"g{j}" for j in range(n)])).write_h5ad(path)
    with h5py.File(path, "a") as f:
        del f["X"]
        f.create_dataset("X", shape=(n, n), dtype="<f4", chunks=(1, 1))[0, 0] = 1.0
    return path.read_bytes()


def make_bad_corpus(tmpdir) -> dict[str, Path]:
    """Write the corpus into ``tmpdir`` and return ``{name: path}`` (see :data:`EXPECTED`)."""
    d = Path(tmpdir)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[str, bytes]] = {}

    def put(name: str, filename: str, data: bytes | str) -> None:
        files[name] = (filename, data.encode() if isinstance(data, str) else data)

    good = "cell,g1,g2,g3\nc1,1,2,3\nc2,4,5,6\nc3,7,8,9\n"
    put("empty", "empty.csv", b"")
    put("blank_lines", "blank.csv", "\n\n  \n")
    put("header_only", "header_only.csv", "cell,g1,g2,g3\n")
    put("one_column", "one_column.csv", "1\n2\n3\n4\n")
    put("non_numeric", "non_numeric.csv", "cell,g1,g2,g3\nc1,1,2,3\nc2,4,abc,6\n")
    put("ragged_rows", "ragged.csv", "cell,g1,g2,g3\nc1,1,2,3\nc2,4,5\nc3,7,8,9\n")
    put("nan", "nan.csv", "cell,g1,g2,g3\nc1,1,NaN,3\nc2,4,5,6\n")
    put("empty_value", "empty_value.csv", "cell,g1,g2,g3\nc1,1,2,3\nc2,4,,6\n")
    put("inf", "inf.tsv", "cell\tg1\tg2\tg3\nc1\t1\t2\t3\nc2\t4\tinf\t6\n")
    put("negative_counts", "negative.csv", "cell,g1,g2,g3\nc1,1,2,3\nc2,4,-5,6\n")
    put("negative_nonnegative", "negative2.csv", "cell,g1,g2,g3\nc1,1,2,3\nc2,4,-0.5,6\n")
    put("non_integer_counts", "fractional.csv", "cell,g1,g2,g3\nc1,1,2,3\nc2,4,2.5,6\n")
    put("duplicate_cells", "dup_cells.csv", "cell,g1,g2,g3\nc1,1,2,3\nc2,4,5,6\nc1,7,8,9\n")
    put("duplicate_genes", "dup_genes.csv", "cell,g1,g2,g2\nc1,1,2,3\nc2,4,5,6\n")
    put("one_cell", "one_cell.csv", "cell,g1,g2,g3\nc1,1,2,3\n")
    put("one_gene", "one_gene.csv", "cell,g1\nc1,1\nc2,2\nc3,3\n")
    put("two_by_two", "two_by_two.csv", "cell,g1,g2\nc1,1,2\nc2,3,4\n")
    rng = np.random.default_rng(0)
    put("binary_garbage_csv", "garbage.csv", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    put("zip_named_csv", "actually_zip.csv", _zip_bytes({"a.csv": good.encode()}))
    gz = gzip.compress(good.encode() * 50)
    put("truncated_gz", "truncated.csv.gz", gz[: len(gz) // 2])
    put("corrupt_gz", "corrupt.csv.gz", gz[:10] + b"\xff" * 40 + gz[50:])
    put("corrupt_zip", "corrupt.zip", b"PK\x03\x04" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    put("zip_without_matrix", "no_matrix.zip", _zip_bytes({"README.txt": b"hello", "barcodes.tsv": _BARCODES}))
    put("zip_traversal", "traversal.zip", _zip_bytes({
        "../evil.txt": b"x", "matrix.mtx": _MTX, "barcodes.tsv": _BARCODES, "features.tsv": _FEATURES}))
    put("zip_absolute", "absolute.zip", _zip_bytes({
        "/tmp/evil.txt": b"x", "matrix.mtx": _MTX, "barcodes.tsv": _BARCODES, "features.tsv": _FEATURES}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, data in {"matrix.mtx": _MTX, "barcodes.tsv": _BARCODES}.items():
            zf.writestr(n, data)
        link = zipfile.ZipInfo("features.tsv")
        link.create_system = 3  # unix
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    put("zip_symlink", "symlink.zip", buf.getvalue())
    put("zip_bomb", "bomb.zip", _forge_declared_size(
        _zip_bytes({"matrix.mtx": _MTX, "barcodes.tsv": _BARCODES, "features.tsv": _FEATURES}), 0xFFFFFFF0))
    put("zip_10x_mismatch", "mismatch.zip", _zip_bytes({
        "sample/matrix.mtx": _MTX, "sample/barcodes.tsv": _BARCODES + b"AAACCTGG-1\nAAACCTGT-1\n",
        "sample/features.tsv": _FEATURES}))
    put("h5ad_not_hdf5", "not_hdf5.h5ad", good)
    harmless = pickle.dumps({"X": [[1, 2], [3, 4]]}, protocol=4)
    put("pickle_npz", "pickle.npz", harmless)
    put("pickle_h5ad", "pickle.h5ad", harmless)
    obj = io.BytesIO()
    np.savez(obj, X=np.array([[1, 2], [3, 4]], dtype=object))
    put("npz_object_array", "objects.npz", obj.getvalue())
    put("npz_not_zip", "not_zip.npz", good)
    put("mtx_huge_shape", "huge.mtx",
        "%%MatrixMarket matrix coordinate integer general\n100000000000 100000000000 3\n1 1 1\n2 2 1\n3 3 1\n")
    put("mtx_nnz_too_many", "many.mtx",
        "%%MatrixMarket matrix coordinate integer general\n1000 1000 900000\n1 1 1\n2 2 1\n3 3 1\n")
    put("mtx_missing_entries", "missing.mtx",
        "%%MatrixMarket matrix coordinate integer general\n4 4 4\n1 1 100\n2 2 100\n3 3 100\n")
    put("mtx_out_of_bounds", "oob.mtx",
        "%%MatrixMarket matrix coordinate integer general\n3 3 3\n1 1 1\n2 9 1\n3 3 1\n")
    put("mtx_no_banner", "nobanner.mtx", "3 3 3\n1 1 1\n2 2 1\n3 3 1\n")
    npy = io.BytesIO()
    np.save(npy, np.ones((2, 2), dtype=np.float32))
    raw = npy.getvalue()
    header_end = raw.index(b"\n") + 1
    header = raw[:header_end]
    new = header.replace(b"(2, 2)", b"(99999, 99999)")
    new = new[: len(header) - 1] + b"\n"  # drop as many padding spaces as were added
    forged = new + raw[header_end:]
    put("npy_forged_shape", "forged.npy", forged)
    put("too_large", "too_large.csv", good)
    put("mtx_absurd_shape", "absurd.mtx",  # 73 bytes; would cost 4M names
        "%%MatrixMarket matrix coordinate integer general\n2000000 2000000 1\n1 1 1\n")
    for name, (filename, data) in _hostile_h5ads(d / "server").items():
        put(name, filename, data)
    # issue 25: short and long rows that cancel out in a block's total; one endless line; a summed duplicate
    put("ragged_rows_cancel", "shifted.csv", "cell,g1,g2\nc1,1,2\nc2,3\nc3,4,5,6\n")
    put("ragged_rows_cancel_tsv", "shifted.tsv", "cell\tg1\tg2\nc1\t1\t2\nc2\t3\t4\nc3\t5\t6\t7\nc4\t8\n")
    long_line = b"0," * (LONG_LINE_BYTES // 2)
    put("long_line_gz", "one_line.csv.gz", gzip.compress(long_line, compresslevel=6))
    put("tenx_long_barcode_line", "long_barcodes.zip", _zip_bytes({
        "matrix.mtx": _MTX, "barcodes.tsv.gz": gzip.compress(b"A" * LONG_LINE_BYTES, compresslevel=6),
        "features.tsv": _FEATURES}))
    put("mtx_duplicate_entry", "duplicate.mtx",
        "%%MatrixMarket matrix coordinate integer general\n3 2 3\n1 1 5\n2 2 1\n1 1 6\n")
    put("h5ad_many_chunks", "tiny_chunks.h5ad", _many_chunks_h5ad(d / "server"))
    rows = "".join(f"cell{i},chr1,{i * 1000 + 1},{(i + 1) * 1000},2\n" for i in range(300))
    put("cn_long_no_shared_bins", "no_shared_bins.csv.gz",
        gzip.compress(("cell_id,chr,start,end,state\n" + rows).encode()))
    put("bom_latin1_corner", "bom_latin1.csv", b"\xef\xbb\xbf" + "cell,x,y\np\u00e9re,1,2\nq,3,4\nr,5,6\n".encode("latin-1"))

    missing = set(EXPECTED) - set(files)
    assert not missing, f"corpus entries without files: {missing}"
    out = {}
    for name, (filename, data) in files.items():
        p = d / filename
        p.write_bytes(data)
        out[name] = p
    return out
