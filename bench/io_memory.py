"""Peak memory of ``dhaka.io.read`` per input format and size (issue 11).

    python bench/io_memory.py                      # 10,000 and 100,000 cells x 2,000 genes
    python bench/io_memory.py --cells 10000 --formats csv h5ad
    python bench/io_memory.py --write              # also write the table into bench/RESULTS.md

It also reads the three memory bombs of issue 11 (a 97 KB csv.gz of 3000 x
10000 zeros, a 73-byte mtx declaring 2,000,000 x 2,000,000, a small .h5ad with
a 400 MB dataset in ``uns``); ``--no-attacks`` skips them.

And the hostile uploads of issue 25 (``--hostile-only`` runs only those; ``--no-hostile``
skips them): a gzipped CSV of one 1 GB line, an .h5ad whose 2,000 x 2,000 X is stored in
1 x 1 chunks, a 10x zip whose barcodes.tsv.gz is one 1 GB line, a copy-number long table of
22,000 cells that share no bin, and a gzipped CSV whose first rows are long so that its
header-based estimate is 4x low.  Each is read twice, in fresh processes: by
``dhaka.io.read`` (the peak of that process), and as the app reads an upload, by a small
"server" process calling ``dhaka.io.sandbox.read_sandboxed`` (``--cap``, default 1 GiB): the
server's peak growth (``VmHWM`` - ``VmRSS`` after the imports) and the parsing child's peak
(``RUSAGE_CHILDREN``'s ``ru_maxrss``: the child's whole resident peak, its imports included).

For each size, one matrix of sparse counts (``--genes`` genes, ``--density`` of the
entries non-zero, values 1..9) is written to a temporary folder as CSV, gzipped
CSV, TSV, a bare MatrixMarket ``.mtx``, a 10x folder (``matrix.mtx.gz`` +
``barcodes.tsv.gz`` + ``features.tsv.gz``), the same 10x files zipped, and
``.h5ad``.  Each file is read by ``dhaka.io.read`` in a fresh Python process,
which reports its peak resident memory (``VmHWM`` of ``/proc/self/status``)
minus its resident memory after the imports (the baseline, ``VmRSS``).
(``getrusage``'s ``ru_maxrss`` is not used: on Linux it survives ``exec``, so a
child started from this big parent process would report the parent's size.)

The bound (issue 11) is **3 x the resulting float32 matrix + 200 MB**, where the
matrix is what ``read`` returns: dense float32 for text tables (cells x genes x
4 bytes), CSR (data + indices + indptr bytes) for mtx, 10x and h5ad, so the
sparse formats are held to a tighter bound than their dense size would give.

``--repeats N`` reads each file N times (median peak; seconds as median and range); ``--json FILE``
keeps a run's rows, and ``--compare FILE ...`` puts the text rows of such runs (another text parser,
measured from a copy of the tree that has it) beside this run's, one column per parser (issue 28).

Text files hold counts 0..9 (one character a value) so that a 100,000 x 2,000
dense CSV (an 800 MB float32 matrix, 400 MB of text) is written in seconds;
``--text-genes`` uses fewer genes for the text formats if that is still too slow.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORMATS = ("csv", "csv.gz", "tsv", "mtx", "10x-dir", "10x-zip", "h5ad")

_CHILD = r"""
import json, resource, sys, time
import numpy as np, pandas, scipy.sparse as sp, anndata, h5py, anndata.io
import dhaka.io as dio


def status_kb(key):
    # VmRSS (resident now) or VmHWM (peak resident) of this process, in kB; not ru_maxrss,
    # which on Linux survives exec (a child of a big parent would report the parent's size)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(key + " not found")


base = status_kb("VmRSS")  # resident memory after the imports
t = time.perf_counter()
try:
    a = dio.read(sys.argv[1])
except dio.DataError as e:
    print(json.dumps({"refused": str(e), "peak_mb": (status_kb("VmHWM") - base) / 1024,
                      "seconds": time.perf_counter() - t}))
    sys.exit(0)
seconds = time.perf_counter() - t
peak = status_kb("VmHWM")
X = a.X
if sp.issparse(X):
    nbytes, kind = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes, "csr"
else:
    nbytes, kind = X.nbytes, "dense"
print(json.dumps({"shape": list(a.shape), "nnz": int(X.nnz) if sp.issparse(X) else int(np.count_nonzero(X)),
                  "matrix_bytes": int(nbytes), "kind": kind, "dtype": str(X.dtype),
                  "peak_mb": (peak - base) / 1024, "baseline_mb": base / 1024, "seconds": seconds}))
"""


_SERVER = r"""
import json, resource, sys, time
import numpy as np, scipy.sparse as sp, anndata, h5py
import dhaka.io as dio
from dhaka.io.sandbox import read_sandboxed


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(key + " not found")


base = status_kb("VmRSS")
t = time.perf_counter()
out = {}
try:
    a = read_sandboxed(sys.argv[1], memory_limit=int(sys.argv[2]))
    X = a.X
    out["shape"] = list(a.shape)
    out["matrix_bytes"] = int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) if sp.issparse(X) else int(X.nbytes)
except dio.DataError as e:
    out["refused"] = str(e)
out.update(seconds=time.perf_counter() - t, server_peak_mb=(status_kb("VmHWM") - base) / 1024,
           child_peak_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- data
def counts(n_cells: int, n_genes: int, density: float, seed: int = 0) -> sp.csr_matrix:
    """Sparse counts 1..9 (cells x genes), about ``density`` of the entries non-zero."""
    rng = np.random.default_rng(seed)
    nnz = int(round(n_cells * n_genes * density))
    flat = np.unique(rng.integers(0, n_cells * n_genes, size=nnz, dtype=np.int64))
    rows, cols = np.divmod(flat, n_genes)
    vals = np.minimum(rng.geometric(0.5, size=flat.size), 9).astype(np.float32)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_cells, n_genes))


def cell_names(n: int) -> list[str]:
    return [f"AAACCTGA{i:08d}-1" for i in range(n)]


def gene_names(n: int) -> list[str]:
    return [f"Gene{j:05d}" for j in range(n)]


def write_text(path: Path, X: sp.csr_matrix, *, sep: str, gz: bool = False) -> None:
    """Cells x genes text table, one character a value (counts 0..9), written block by block."""
    n_cells, n_genes = X.shape
    opener = (lambda p: gzip.open(p, "wb", compresslevel=1)) if gz else (lambda p: open(p, "wb"))
    s = ord(sep)
    names = cell_names(n_cells)
    with opener(path) as out:
        out.write(("cell" + sep + sep.join(gene_names(n_genes)) + "\n").encode())
        step = max(1, 4_000_000 // n_genes)
        for a in range(0, n_cells, step):
            dense = X[a:a + step].toarray().astype(np.uint8)
            buf = np.empty((dense.shape[0], 2 * n_genes), dtype=np.uint8)
            buf[:, 0::2] = dense + ord("0")
            buf[:, 1::2] = s
            buf[:, -1] = ord("\n")
            out.write(b"".join(names[a + i].encode() + bytes([s]) + buf[i].tobytes() for i in range(dense.shape[0])))


def write_mtx(path: Path, X: sp.csr_matrix) -> None:
    """Bare MatrixMarket, 10x convention (features x cells)."""
    import scipy.io

    scipy.io.mmwrite(str(path), sp.coo_matrix(X.T).astype(np.int64), field="integer")


def write_10x(folder: Path, X: sp.csr_matrix, mtx: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(mtx, "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    with gzip.open(folder / "barcodes.tsv.gz", "wb") as f:
        f.write(("\n".join(cell_names(X.shape[0])) + "\n").encode())
    with gzip.open(folder / "features.tsv.gz", "wb") as f:
        f.write("".join(f"ENSG{j:011d}\t{g}\tGene Expression\n" for j, g in enumerate(gene_names(X.shape[1]))).encode())


def write_10x_zip(path: Path, folder: Path) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"sample/{f.name}")


def write_h5ad(path: Path, X: sp.csr_matrix) -> None:
    import anndata
    import pandas as pd

    a = anndata.AnnData(X=X.astype(np.float32), obs=pd.DataFrame(index=cell_names(X.shape[0])),
                        var=pd.DataFrame(index=gene_names(X.shape[1])))
    a.write_h5ad(path)


def attack_files(folder: Path) -> dict[str, Path]:
    """The three memory bombs of issue 11, at the sizes it reports."""
    n_cells, n_genes = 3000, 10_000
    with gzip.open(folder / "zeros.csv.gz", "wb", compresslevel=9) as g:
        g.write(("cell," + ",".join(gene_names(n_genes)) + "\n").encode())
        row = ("," + ",".join(["0"] * n_genes) + "\n").encode()
        for name in cell_names(n_cells):
            g.write(name.encode() + row)
    (folder / "huge.mtx").write_bytes(b"%%MatrixMarket matrix coordinate integer general\n2000000 2000000 1\n1 1 1\n")
    import h5py

    write_h5ad(folder / "uns_bomb.h5ad", counts(50, 20, 0.3))
    with h5py.File(folder / "uns_bomb.h5ad", "a") as f:
        f["uns"].create_dataset("unused", shape=(100_000_000,), dtype="<f4", chunks=(1 << 20,),
                                compression="gzip", fillvalue=0.0)
        f["uns"]["unused"][:1] = 1.0
    return {"csv.gz of zeros (3000 x 10000)": folder / "zeros.csv.gz",
            "mtx declaring 2M x 2M, 1 entry": folder / "huge.mtx",
            "h5ad with 400 MB unused in uns": folder / "uns_bomb.h5ad"}


def _gzip_one_line(path: Path, base: bytes, sprinkle: bytes, total: int, *, density: float = 0.01,
                   head: bytes = b"") -> None:
    """A gzip of ``head`` then one line of about ``total`` bytes: ``base`` repeated, 1 % of its first
    bytes replaced by random ones from ``sprinkle`` (so it compresses about 60:1, below the bomb
    ratio, as a real tool's output would), written in 4 MB blocks; no newline."""
    rng = np.random.default_rng(0)
    unit = np.frombuffer(base, dtype=np.uint8)
    with gzip.open(path, "wb", compresslevel=6) as g:
        g.write(head)
        done = len(head)
        while done < total:
            block = np.tile(unit, (4 << 20) // unit.size)
            first = block[0::unit.size]
            hit = rng.random(first.size) < density
            first[hit] = rng.choice(np.frombuffer(sprinkle, dtype=np.uint8), int(hit.sum()))
            block[0::unit.size] = first
            g.write(block.tobytes())
            done += block.size


def hostile_files(folder: Path) -> dict[str, Path]:
    """The hostile uploads of issue 25 (the same constructions, at the sizes given in its table or below)."""
    import h5py
    import pandas as pd

    out: dict[str, Path] = {}
    _gzip_one_line(folder / "one_line.csv.gz", b"0,", b"123456789", 3 << 29, head=b"cell,")
    out["csv.gz of one 1.5 GB line"] = folder / "one_line.csv.gz"

    import anndata

    n = 2000
    path = folder / "tiny_chunks.h5ad"
    anndata.AnnData(X=sp.csr_matrix((n, n), dtype=np.float32), obs=pd.DataFrame(index=cell_names(n)),
                    var=pd.DataFrame(index=gene_names(n))).write_h5ad(path)
    with h5py.File(path, "a") as f:
        del f["X"]
        f.create_dataset("X", shape=(n, n), dtype="<f4", chunks=(1, 1))[0, 0] = 1.0
    out["h5ad, 2000 x 2000 X in 1 x 1 chunks"] = path

    barcodes = folder / "barcodes.tsv.gz"
    _gzip_one_line(barcodes, b"A", b"CGT", 1 << 30)
    with zipfile.ZipFile(folder / "long_barcodes.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("matrix.mtx", "%%MatrixMarket matrix coordinate integer general\n3 2 2\n1 1 1\n2 2 4\n")
        zf.write(barcodes, "barcodes.tsv.gz")
        zf.writestr("features.tsv", "G1\tG1\tGene Expression\nG2\tG2\tGene Expression\nG3\tG3\tGene Expression\n")
    barcodes.unlink()
    out["10x zip, barcodes.tsv.gz one 1 GB line"] = folder / "long_barcodes.zip"

    rows = "".join(f"cell{i},chr1,{i * 1000 + 1},{(i + 1) * 1000},2\n" for i in range(22_000))
    with gzip.open(folder / "no_shared_bins.csv.gz", "wb", compresslevel=9) as g:
        g.write(("cell_id,chr,start,end,state\n" + rows).encode())
    out["copy-number long table, 22000 cells, no shared bin"] = folder / "no_shared_bins.csv.gz"

    long = ("," + ",".join(["1.00000000000000"] * 1000) + "\n").encode()
    short = ("," + ",".join(["0"] * 1000) + "\n").encode()
    with gzip.open(folder / "underestimated.csv.gz", "wb", compresslevel=1) as g:
        g.write(("cell," + ",".join(gene_names(1000)) + "\n").encode())
        g.write(b"".join(f"a{i}".encode() + long for i in range(200)))
        for b in range(30):
            g.write(b"".join(f"c{b}_{i}".encode() + short for i in range(1000)))
    out["csv.gz, estimate 4x low (30200 x 1000)"] = folder / "underestimated.csv.gz"
    return out


def measure_sandboxed(path: Path, cap: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", _SERVER, str(path), str(cap)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"reading {path} in the sandbox failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _outcome(r: dict) -> str:
    if "refused" in r:
        return "refused: " + r["refused"].split(": ", 1)[-1][:60] + "..."
    return f"read {r['shape'][0]} x {r['shape'][1]} ({r['matrix_bytes'] / 2**20:.0f} MB)"


def run_hostile(tmp: str | None, cap: int) -> list[dict]:
    folder = Path(tempfile.mkdtemp(prefix="io_memory_hostile_", dir=tmp))
    rows = []
    try:
        for what, path in hostile_files(folder).items():
            direct = measure(path)
            boxed = measure_sandboxed(path, cap)
            matrix_mb = boxed.get("matrix_bytes", 0) / 2**20
            size = size_on_disk(path)
            rows.append({
                "upload": what, "on disk": f"{size / 1024:,.0f} KB" if size < 2**20 else f"{size / 2**20:,.1f} MB",
                "dhaka.io.read": _outcome(direct), "read peak MB": f"{direct['peak_mb']:.0f}",
                "read s": f"{direct['seconds']:.1f}",
                "app (sandbox)": _outcome(boxed), "server peak MB": f"{boxed['server_peak_mb']:.0f}",
                "child peak RSS MB": f"{boxed['child_peak_mb']:.0f}", "sandbox s": f"{boxed['seconds']:.1f}",
                "target": "pass" if boxed["server_peak_mb"] <= matrix_mb + 600 else "FAIL",
            })
            print(_row_line(rows[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def run_attacks(tmp: str | None) -> list[dict]:
    folder = Path(tempfile.mkdtemp(prefix="io_memory_attacks_", dir=tmp))
    rows = []
    try:
        for what, path in attack_files(folder).items():
            r = measure(path)
            if "refused" in r:
                outcome, bound = "refused: " + r["refused"].split(": ", 1)[1][:70] + "...", 200.0
            else:
                matrix_mb = r["matrix_bytes"] / 2**20
                bound = 3 * matrix_mb + 200
                outcome = f"read {r['shape'][0]} x {r['shape'][1]} ({r['kind']}, {matrix_mb:.1f} MB)"
            size = size_on_disk(path)
            rows.append({"file": what, "size": f"{size:,} B" if size < 10_000 else f"{size / 1024:,.0f} KB",
                         "outcome": outcome,
                         "peak MB": f"{r['peak_mb']:.1f}", "bound MB": f"{bound:.1f}",
                         "seconds": f"{r['seconds']:.1f}", "pass": "pass" if r["peak_mb"] <= bound else "FAIL"})
            print(_row_line(rows[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def make_files(folder: Path, n_cells: int, n_genes: int, text_genes: int, density: float,
               formats: tuple[str, ...]) -> dict[str, Path]:
    X = counts(n_cells, n_genes, density)
    Xt = X if text_genes == n_genes else X[:, :text_genes].tocsr()
    out: dict[str, Path] = {}
    if "csv" in formats:
        write_text(folder / "m.csv", Xt, sep=",")
        out["csv"] = folder / "m.csv"
    if "csv.gz" in formats:
        write_text(folder / "m.csv.gz", Xt, sep=",", gz=True)
        out["csv.gz"] = folder / "m.csv.gz"
    if "tsv" in formats:
        write_text(folder / "m.tsv", Xt, sep="\t")
        out["tsv"] = folder / "m.tsv"
    if {"mtx", "10x-dir", "10x-zip"} & set(formats):
        write_mtx(folder / "matrix.mtx", X)
        if "mtx" in formats:
            out["mtx"] = folder / "matrix.mtx"
        if {"10x-dir", "10x-zip"} & set(formats):
            write_10x(folder / "tenx", X, folder / "matrix.mtx")
            if "10x-dir" in formats:
                out["10x-dir"] = folder / "tenx"
            if "10x-zip" in formats:
                write_10x_zip(folder / "tenx.zip", folder / "tenx")
                out["10x-zip"] = folder / "tenx.zip"
    if "h5ad" in formats:
        write_h5ad(folder / "m.h5ad", X)
        out["h5ad"] = folder / "m.h5ad"
    return {f: out[f] for f in formats if f in out}


# --------------------------------------------------------------------------- measure
def measure(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"reading {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def run(cells: list[int], *, genes: int, text_genes: int, density: float, formats: tuple[str, ...],
        tmp: str | None, repeats: int = 1) -> list[dict]:
    rows = []
    for n in cells:
        folder = Path(tempfile.mkdtemp(prefix=f"io_memory_{n}_", dir=tmp))
        try:
            t = time.perf_counter()
            files = make_files(folder, n, genes, text_genes, density, formats)
            print(f"# {n:,} cells: files written in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            for fmt, path in files.items():
                runs = [measure(path) for _ in range(max(1, repeats))]
                r = runs[0]
                peak = float(np.median([x["peak_mb"] for x in runs]))
                secs = sorted(x["seconds"] for x in runs)
                matrix_mb = r["matrix_bytes"] / 2**20
                bound = 3 * matrix_mb + 200
                rows.append({
                    "format": fmt, "cells": r["shape"][0], "genes": r["shape"][1],
                    "file MB": f"{size_on_disk(path) / 2**20:.1f}",
                    "result": r["kind"],
                    "matrix float32 MB": f"{matrix_mb:.1f}",
                    "peak MB": f"{peak:.1f}",
                    "bound MB": f"{bound:.1f}",
                    "peak / matrix": f"{peak / max(matrix_mb, 1e-9):.2f}",
                    "seconds": _seconds(secs),
                    "pass": "pass" if max(x["peak_mb"] for x in runs) <= bound else "FAIL",
                })
                print(_row_line(rows[-1]), file=sys.stderr)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def _seconds(secs: list[float]) -> str:
    """One reading's seconds, or the median and range of several (sorted)."""
    if len(secs) == 1:
        return f"{secs[0]:.1f}"
    return f"{float(np.median(secs)):.1f} ({secs[0]:.1f}-{secs[-1]:.1f})"


def compare_table(runs: list[dict]) -> str:
    """The rows measured by more than one text parser, side by side: peak MB and seconds per parser.

    ``runs``: ``{"label", "rows"}`` records (this run first, then the ``--json`` files of earlier runs); for
    each format and size, the first run of each label that measured it counts.
    """
    from bench.common import markdown_table

    labels: list[str] = []
    cells: dict[tuple, dict[str, dict]] = {}
    for run in runs:
        if run["label"] not in labels:
            labels.append(run["label"])
        for r in run["rows"]:
            if r["format"] in ("csv", "csv.gz", "tsv"):
                cells.setdefault((r["format"], r["cells"], r["genes"]), {}).setdefault(run["label"], r)
    out = []
    for (fmt, n, genes), by in cells.items():
        if len(by) < 2:
            continue
        row = {"format": fmt, "cells": n, "genes": genes,
               "matrix float32 MB": next(iter(by.values()))["matrix float32 MB"]}
        for key in ("peak MB", "seconds"):
            for label in labels:
                row[f"{key}: {label}"] = by[label][key] if label in by else ""
        out.append(row)
    if not out:
        return ""
    base, ratios = labels[0], []
    for label in labels[1:]:
        pairs = [(by[label], by[base]) for by in cells.values() if label in by and base in by]
        if pairs:
            peak = [float(o["peak MB"]) / max(float(b["peak MB"]), 1e-9) for o, b in pairs]
            secs = [float(o["seconds"].split()[0]) / max(float(b["seconds"].split()[0]), 1e-9) for o, b in pairs]
            ratios.append(f"{label} against {base}: peak x{min(peak):.2f} to x{max(peak):.2f}, median seconds "
                          f"x{min(secs):.2f} to x{max(secs):.2f} over {len(pairs)} files")
    return markdown_table(out) + "\n" + "".join(f"\n- {r}" for r in ratios) + ("\n" if ratios else "")


def compare_hostile(runs: list[dict]) -> str:
    """The hostile text uploads (issue 25) as each parser read them: outcome, peak MB and seconds of ``read``."""
    from bench.common import markdown_table

    out = []
    for run in runs:
        for r in run.get("hostile", []):
            if "csv" in r["upload"]:
                out.append({"parser": run["label"], "upload": r["upload"], "dhaka.io.read": r["dhaka.io.read"],
                            "read peak MB": r["read peak MB"], "read s": r["read s"],
                            "app (sandbox)": r["app (sandbox)"], "child peak RSS MB": r["child peak RSS MB"]})
    return markdown_table(out) if len({r["parser"] for r in out}) > 1 else ""


def _row_line(r: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in r.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--text-genes", type=int, default=None,
                   help="genes in the text formats (csv, csv.gz, tsv); default --genes")
    p.add_argument("--density", type=float, default=0.07)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--tmp", default=None, help="folder for the temporary files (default: the system's)")
    p.add_argument("--no-attacks", action="store_true", help="skip the three memory bombs of issue 11")
    p.add_argument("--no-hostile", action="store_true", help="skip the hostile uploads of issue 25")
    p.add_argument("--hostile-only", action="store_true", help="only the hostile uploads of issue 25")
    p.add_argument("--cap", default="1G", help="the sandbox's memory cap for the hostile uploads (default 1G)")
    p.add_argument("--repeats", type=int, default=1,
                   help="read each file this many times, each in a fresh process (median peak, median and range "
                        "of seconds)")
    p.add_argument("--label", default=None,
                   help="name of the text parser measured (default: dhaka.io.text.PARSER)")
    p.add_argument("--json", default=None, help="also save the rows as JSON here (for a later --compare)")
    p.add_argument("--compare", nargs="+", default=[],
                   help="--json files of earlier runs (another text parser, say): add a table of the text rows "
                        "measured by more than one parser")
    p.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = p.parse_args(argv)
    text_genes = args.text_genes or args.genes
    t0 = time.perf_counter()
    from dhaka.resources import parse_size

    cap = parse_size(args.cap)
    hostile = [] if args.no_hostile else run_hostile(args.tmp, cap)
    if args.hostile_only:
        from bench.common import markdown_table

        print(markdown_table(hostile))
        ok = all(r["target"] == "pass" for r in hostile)
        print("every hostile upload within the target" if ok else "SOME HOSTILE UPLOADS MISS THE TARGET")
        return 0 if ok else 1
    rows = run(args.cells, genes=args.genes, text_genes=text_genes, density=args.density,
               formats=tuple(args.formats), tmp=args.tmp, repeats=args.repeats)
    attacks = [] if args.no_attacks else run_attacks(args.tmp)
    from bench.common import machine_description, markdown_table, write_section

    import dhaka.io.text

    label = args.label or getattr(dhaka.io.text, "PARSER", "hand-written")
    if args.json:
        Path(args.json).write_text(json.dumps({"label": label, "machine": machine_description(), "rows": rows,
                                               "attacks": attacks, "hostile": hostile}, indent=1))
    table = markdown_table(rows)
    print(table)
    comparison = hostile_comparison = ""
    earlier = [json.loads(Path(f).read_text()) for f in args.compare]
    if earlier:
        this = {"label": label, "rows": rows, "hostile": hostile}
        comparison = compare_table([this, *earlier])
        hostile_comparison = compare_hostile([this, *earlier])
        print(comparison)
        print(hostile_comparison)
    if attacks:
        print(markdown_table(attacks))
    if hostile:
        print(markdown_table(hostile))
    ok = all(r["pass"] == "pass" for r in rows + attacks) and all(r["target"] == "pass" for r in hostile)
    print("all within the bound" if ok else "SOME FORMATS EXCEED THE BOUND")
    if args.write:
        from bench.common import command_line

        text = (
            f"Whole run: {(time.perf_counter() - t0) / 60:.1f} min. Text parser: {label}.\n\n"
            f"Data: sparse counts, {args.genes:,} genes ({text_genes:,} in the text formats), "
            f"{args.density:.0%} of entries non-zero, values 1..9; each file read by `dhaka.io.read` in a "
            f"fresh process ({args.repeats} time{'s' if args.repeats > 1 else ''}: median peak; seconds as the "
            "median and range); peak = the child's peak resident memory (VmHWM) after the read minus its resident "
            "memory (VmRSS) after the imports. "
            "Matrix = what `read` returns (dense float32 for text tables, CSR data + indices + indptr "
            "for mtx / 10x / h5ad). Bound (issue 11): 3 x matrix + 200 MB.\n\n"
            + table + "\n"
            + ("The text tables read by each parser measured (issue 28: the streamed reader on "
               "`pyarrow.csv.open_csv` against the hand-written one), each run by this command's text rows "
               "with the same `--repeats`; the other runs' machines: "
               + "; ".join(f"{k}: {v}" for k, v in {e["label"]: e.get("machine", "?") for e in reversed(earlier)}.items())
               + ":\n\n" + comparison + "\n" if comparison else "")
            + ("The hostile text uploads of issue 25 as each parser reads them:\n\n" + hostile_comparison + "\n"
               if hostile_comparison else "")
            + ("The memory bombs of issue 11 (before that change: about 1 GB, 0.5 GB and 0.4 GB); "
               "the bound of a refused file is the 200 MB allowance:\n\n" + markdown_table(attacks) + "\n"
               if attacks else "")
            + (f"The hostile uploads of issue 25 (sandbox cap {args.cap}; target: server peak within the "
               "admitted matrix + 600 MB):\n\n" + markdown_table(hostile) + "\n" if hostile else "")
            + ("Every format is within the bound.\n" if ok else "**Some formats exceed the bound.**\n")
        )
        write_section("io-memory", text, title="Reading memory per format (issues 11, 25, 28)",
                      command=command_line("python bench/io_memory.py"), machine=machine_description())
        print("wrote bench/RESULTS.md (section io-memory)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
