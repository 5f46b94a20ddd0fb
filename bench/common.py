"""Shared helpers of the benchmark scripts: machine description, fp32 matmul peak and peak memory,
tables, RESULTS.md sections, the baselines (PCA / t-SNE / UMAP on the input of Dhaka's first fit)
and scoring.

Several benchmark scripts write into one ``bench/RESULTS.md``; each owns the text between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and :func:`write_section` replaces only that, so
the file holds one current section per benchmark (superseded runs live in git's history).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
Baseline = Literal["pca", "tsne", "umap"]


# ----------------------------------------------------------------------------- machine
def set_threads(n: int = 2) -> None:
    """Every fit of this benchmark (and of its child processes) with ``n`` threads, whatever the load.

    Sets torch's count and ``DHAKA_THREADS=n`` with ``DHAKA_THREADS_ADAPT=0``: a fit given no thread count
    otherwise gives up a thread per core kept busy elsewhere (:func:`dhaka.cpu.choose_threads`), and a
    seed's latent depends on the count, so quality tables would move with the machine's load.
    """
    import os

    import torch

    os.environ["DHAKA_THREADS"] = str(int(n))
    os.environ["DHAKA_THREADS_ADAPT"] = "0"
    torch.set_num_threads(int(n))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description() -> str:
    """One line describing where the numbers were measured."""
    import torch

    from dhaka import cpu

    usable = min(cpu.affinity_count(), cpu.quota_cpus() or cpu.affinity_count())  # the machine, not DHAKA_THREADS
    try:
        load = "load average %.1f / %.1f / %.1f" % os.getloadavg()
    except OSError:  # pragma: no cover
        load = "load unknown"
    return (f"{cpu_model()}, {usable} usable cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}; {load} at start "
            f"(other processes share the CPU, so timings are indicative); "
            f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover
        return (float("nan"),) * 3


def describe(threads: int | None = None) -> str:
    """One line for the speed / scale / reductions figures: CPU, cores, RAM, GPU, torch threads, load.

    This box is shared, so every figure says how busy the machine was when it was measured.
    """
    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):  # pragma: no cover
        mem = float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    la = load_average()
    from dhaka import cpu

    return (f"{cpu_model()}, {cpu.affinity_count()} usable cores (budget {cpu.budget()}), {mem:.0f} GB RAM, {gpu}; "
            f"torch {torch.__version__} "
            f"with {threads or torch.get_num_threads()} threads; load average {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} "
            f"(1/5/15 min) at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def matmul_peak(*, n: int = 2048, repeats: int = 7, device: str = "cpu") -> float:
    """Measured fp32 matmul throughput in GFLOP/s: best of ``repeats`` n x n sgemm runs.

    The best (not the median) run is the peak: on a shared machine the others are
    slowed by neighbours. Uses the current ``torch.get_num_threads()``.
    """
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    torch.mm(a, b, out=c)  # warm up
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def median(xs) -> float:
    """Median of the values that are not NaN (NaN when none are left)."""
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB).

    ``VmHWM`` from /proc/self/status where available: getrusage's ``ru_maxrss`` survives
    fork + exec on Linux, so a child started by a big parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- tables
def mean_sd(values: Iterable[float], digits: int = 2) -> str:
    """``"0.93 ± 0.02"`` (``nan`` values are dropped; a single value is shown alone)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]] | Sequence[str], columns: Sequence[Any] | None = None) -> str:
    """A GitHub markdown table.

    ``markdown_table(rows, columns=None)``: ``rows`` are dicts (``columns``: which keys, in order),
    floats shown with 3 decimals, columns padded. ``markdown_table(header, rows)``: a header of
    strings and rows of values (the speed / scale / reductions tables), floats with 3 significant
    digits, NaN as "–".
    """
    if rows and isinstance(rows[0], str):
        return _grid_table(list(rows), list(columns or []))
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())

    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return "n/a" if not np.isfinite(x) else f"{x:.3f}"
        return str(x)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out) + "\n"


def _grid_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            if v != v:
                return "–"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def command_line(prog: str, argv: Sequence[str] | None = None) -> str:
    """The command as it was run: ``prog`` and the arguments (``sys.argv[1:]`` unless given), shell-quoted.

    What a section of RESULTS.md shows as the command that regenerates it.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([prog, *(shlex.quote(str(a)) for a in args)])


def _marker(name: str, which: str) -> re.Pattern:
    # '-' and '_' spell the same section (io-memory / io_memory), so a renamed writer finds its old section
    parts = (re.escape(p) for p in re.split(r"[-_]", name))
    return re.compile(r"<!-- " + "[-_]".join(parts) + rf":{which} -->")


def write_section(name: str, text: str, *, title: str | None = None, command: str | None = None,
                  machine: str | None = None, path: str | os.PathLike = RESULTS) -> Path:
    """Make ``text`` the section ``name`` of ``path``: everything between ``<!-- name:start -->`` and
    ``<!-- name:end -->`` is replaced, the rest of the file is left as it is.

    With ``title`` the section opens with the standard head: ``## name: title``, then
    ``Command: `command``` (the one command that regenerates it, see :func:`command_line`) and
    ``Machine: machine`` (:func:`machine_description` or :func:`describe`, which end with the date).
    A rerun replaces the whole section, a reading written by hand under the table included; git
    keeps the old one. The section is appended when its markers are absent and the file created
    when missing; further copies of the section (left by a writer that appended) are removed.
    ``-`` and ``_`` in ``name`` are the same character.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"section names are letters, digits, '-' and '_', got {name!r}")
    head = []
    if title is not None:
        head.append(f"## {name}: {title}")
        if command:
            head.append(f"Command: `{command}`")
        if machine:
            head.append(f"Machine: {machine.rstrip('.')}.")
    body = "\n\n".join([*head, text.strip()]) if head else text.strip()
    block = f"<!-- {name}:start -->\n{body}\n<!-- {name}:end -->"
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start, end = _marker(name, "start"), _marker(name, "end")
    spans = []
    pos = 0
    while (m := start.search(old, pos)) and (e := end.search(old, m.end())):
        spans.append((m.start(), e.end()))
        pos = e.end()
    if not spans:
        new = old.rstrip() + "\n\n" + block + "\n"
    else:
        new, last = old[:spans[0][0]] + block, spans[0][1]
        for a, b in spans[1:]:  # later copies go, with the blank lines before them
            new += old[last:a].rstrip("\n")
            last = b
        new += old[last:]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- embeddings
def preprocessed(est, X, *, refined: bool = False) -> np.ndarray:
    """The baselines' input: what a fitted Dhaka saw before gene refinement, dense and gene-centred.

    That is its normalisation and log (as detected or set) and its top-N genes by
    ``est.gene_selection``, the input of Dhaka's first fit, so that the baselines get the
    field's standard preprocessing and not the genes Dhaka's own latent chose.
    ``refined=True`` gives the genes of Dhaka's final fit instead (``est.align(X)``), to show
    how much of Dhaka's result the refined genes alone explain.
    """
    from dhaka.analysis.robustness import baseline_input
    from dhaka.estimator import _as_matrix
    from dhaka.preprocess import Preprocessor

    if not refined:
        M, _, _ = _as_matrix(X)
        p = est.get_params()
        return baseline_input(M, mode=p["mode"], n_genes=p["n_genes"], gene_selection=p["gene_selection"],
                              normalize=p["normalize"], log=p["log"]).astype(np.float64)
    S, _ = est.align(X)
    return Preprocessor(relative=True, scale="none").fit_affine(S).standardize(S, dtype=np.float64)


def _pca(S: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    try:
        from dhaka import reduce

        return np.asarray(reduce.pca(S, n_components=n_components, random_state=seed))
    except (ImportError, AttributeError):
        from sklearn.decomposition import PCA

        return PCA(n_components=n_components, random_state=seed).fit_transform(S)


def _tsne(P: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    try:
        from dhaka import reduce

        return np.asarray(reduce.tsne(P, n_components=n_components, random_state=seed))
    except (ImportError, AttributeError):
        from openTSNE import TSNE

        return np.asarray(TSNE(n_components=n_components, random_state=seed, n_jobs=1,
                               negative_gradient_method="bh" if n_components > 2 else "auto").fit(P))


def _umap(P: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    try:
        from dhaka import reduce

        return np.asarray(reduce.umap(P, n_components=n_components, random_state=seed))
    except (ImportError, AttributeError):
        import umap

        return umap.UMAP(n_components=n_components, random_state=seed, n_jobs=1).fit_transform(P)


def embed_baseline(S: np.ndarray, method: Baseline, *, n_components: int = 3, seed: int = 0) -> np.ndarray:
    """PCA / t-SNE / UMAP of the centred matrix ``S`` (``dhaka.reduce`` when it exists).

    t-SNE and UMAP run on the first 50 principal components (the usual practice, and what
    the app does) when there are more features.
    """
    if method == "pca":
        return _pca(S, n_components, seed)
    P = _pca(S, 50, seed) if S.shape[1] > 50 and S.shape[0] > 50 else S
    if method == "tsne":
        return _tsne(P, n_components, seed)
    if method == "umap":
        return _umap(P, n_components, seed)
    raise ValueError(f"unknown baseline {method!r}")


def score(Z: np.ndarray, truth: np.ndarray | None, *, seed: int = 0, k_max: int = 10) -> dict[str, Any]:
    """GMM-BIC clusters of ``Z`` (``dhaka.cluster.gmm_bic``) and their ARI against ``truth``."""
    from dhaka.cluster import ari, gmm_bic, silhouette

    res = gmm_bic(np.asarray(Z, dtype=np.float64), k_max=k_max, seed=seed)
    return {"ari": ari(truth, res.labels) if truth is not None else float("nan"), "k": int(res.k),
            "silhouette": float(silhouette(Z, res.labels)), "labels": np.asarray(res.labels)}


def latent_sd(Z: np.ndarray) -> float:
    """Smallest per-dimension standard deviation of a latent space (posterior collapse -> ~0)."""
    return float(np.min(np.std(np.asarray(Z, dtype=np.float64), axis=0)))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def add_variant_option(ap: Any) -> None:
    """``--variant NAME=JSON`` (repeatable): extra Dhaka rows ``NAME`` with these settings, defaults unchanged."""
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="extra Dhaka row NAME with these settings, e.g. 'nolib={\"library_axis\": \"remove\"}'")


def parse_variants(values: list[str]) -> dict[str, dict]:
    """The ``--variant`` values as ``{NAME: settings}``."""
    return {v.partition("=")[0]: json.loads(v.partition("=")[2]) for v in values}
