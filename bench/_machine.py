"""Machine description and fp32 matmul peak for the speed/scale benchmarks.

Used by ``bench/speed.py``, ``bench/scale.py`` and ``bench/reductions.py`` so every
figure in ``bench/RESULTS.md`` says which machine, how many threads and how busy
the machine was when it was measured (this box is shared: load average matters).
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", text)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover
        return (float("nan"),) * 3


def describe(threads: int | None = None) -> str:
    """One line: CPU, cores, RAM, torch version and threads, current load, GPU if any."""
    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):  # pragma: no cover
        mem = float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    la = load_average()
    return (f"{cpu_model()}, {os.cpu_count()} cores, {mem:.0f} GB RAM, {gpu}; torch {torch.__version__} "
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


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in RESULTS.md.

    The section is appended when the markers are absent, so several benchmarks (and
    several people) can own different sections of one file.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in text and end in text:
        pre, rest = text.split(start, 1)
        _, post = rest.split(end, 1)
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            if v != v:
                return "–"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
