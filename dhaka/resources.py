"""Resource guards: estimate a training's memory and refuse it before the container is killed.

The estimate models the two peaks of a training and takes the larger:

* **preprocessing**: library-size normalisation, log, gene statistics and
  selection each make full-size temporaries of the data matrix; measured on
  the estimator (2026-11, dense and CSR input) the peak is about
  :data:`PREPROCESS_FACTOR` times the matrix as stored;
* **training**: the matrix as stored (the caller still holds it), the
  selected matrix as dense float32 in a few copies (numpy, torch, the
  train/validation split), the model's parameters four times over (weights,
  gradients, Adam's two moments), and one minibatch's activations kept for
  the backward pass;

then applies a safety factor and adds a fixed allowance for torch's own
buffers.  Python, torch and Streamlit themselves (a few hundred MB, already
resident) are not in the estimate; pass what the process already uses as
``used=`` to :func:`check_memory` (see :func:`process_rss`).

What is free *now* (:func:`available_memory`: the machine's
``MemAvailable``, the cgroup's limit less its use, ``DHAKA_MEMORY_LIMIT``
less this process's resident memory, whichever is smallest) is what
:class:`dhaka.jobs.JobManager` checks a job's estimate against when the job
starts, less the estimates of the jobs already running.

Measured peak (above an idle process with torch imported) against the
estimate, one thread, batch 256, latent 3::

    data                   selected  net      peak     estimate
    5000 x 3000 dense      2000      deep     0.46 GB  0.61 GB
    20000 x 5000 dense     2000      deep     2.6 GB   3.4 GB
    20000 x 20000 CSR 10%  2000      deep     1.8 GB   2.7 GB
    2000 x 20000 dense     20000     shallow  1.8 GB   2.0 GB
    20000 x 5000 dense     500       shallow  2.6 GB   3.4 GB
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ResourceError",
    "available_memory",
    "check_memory",
    "estimate_training_memory",
    "env_size",
    "format_bytes",
    "memory_limit",
    "parse_size",
    "process_rss",
    "trim_heap",
]

#: Multiplier applied to the larger of the two peaks.
SAFETY_FACTOR = 1.25
#: Peak of preprocessing, in multiples of the data matrix as stored (measured).
PREPROCESS_FACTOR = 7.0
#: Dense copies of the selected matrix alive during training.
SELECTED_COPIES = 4
#: Fixed allowance for torch's first-use buffers and allocator slack, bytes.
OVERHEAD = 128 * 1024**2
#: Share of physical RAM used as the limit when neither env nor cgroup sets one.
RAM_FRACTION = 0.8
#: Files read for a cgroup memory limit (v2, then v1).
CGROUP_FILES: tuple[str, ...] = (
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
)
_FLOAT = 4  # float32


class ResourceError(RuntimeError):
    """A job would need more of a resource (memory) than is allowed."""


_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def env_positive_float(name: str, *, unit: str = "") -> float | None:
    """The environment setting ``name`` as a positive finite number, or ``None`` when unset.

    Raises ``ValueError`` naming the setting (and ``unit``, e.g. ``"seconds"``) for anything else.
    """
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    try:
        value = float(env)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number{' of ' + unit if unit else ''}, got {env!r}")
    return value


def parse_size(text: str | int) -> int:
    """Parse a memory size such as ``"4G"``, ``"512m"``, ``"1.5GiB"`` or ``"1000000"``.

    Units are binary, as Docker's ``--memory`` reads them (``4G`` = 4 x 1024^3 bytes).

    Raises
    ------
    ValueError
        If the text is not a positive size.
    """
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"memory size must be positive, got {text}")
        return text
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a memory size (examples: 4G, 512M, 1.5GiB)")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return value


def env_size(name: str) -> int | None:
    """The size in environment variable ``name`` (``"3G"``, ``"512M"``, bytes), or ``None`` when unset.

    Raises
    ------
    ValueError
        Naming the variable, when it is set but not a size.
    """
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    try:
        return parse_size(env)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def format_bytes(n: float) -> str:
    """Human-readable size with binary steps: ``format_bytes(6.2 * 2**30) == "6.2 GB"``."""
    n = float(n)
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def estimate_training_memory(
    n_cells: int,
    n_genes: int,
    *,
    hidden: Sequence[int],
    latent_dim: int,
    batch_size: int,
    sparse: bool,
    density: float | None = None,
    n_selected: int | None = None,
    dense_pool: int = 0,
) -> int:
    """Estimate the peak memory of training one VAE, in bytes.

    Parameters
    ----------
    n_cells, n_genes
        Shape of the data matrix as loaded.
    hidden
        Encoder layer widths, e.g. ``(1024, 512, 256)``; the decoder mirrors them.
    latent_dim
        Size of the latent space.
    batch_size
        Cells per minibatch.
    sparse
        Whether the loaded matrix is stored as CSR.
    density
        Fraction of non-zero entries of a sparse matrix (default 0.1 when
        ``sparse`` and not given).
    n_selected
        Genes the model is trained on after gene selection (default: all).
    dense_pool
        Genes held as a dense float32 matrix through the whole fit (Pearson residuals' gene pool,
        :meth:`dhaka.preprocess.Preprocessor.pool_size`; 0: none).

    Returns
    -------
    int
        Bytes: the larger of the preprocessing and training peaks, times
        :data:`SAFETY_FACTOR`, plus :data:`OVERHEAD`.
    """
    n_cells, n_genes = int(n_cells), int(n_genes)
    if n_cells < 0 or n_genes < 0:
        raise ValueError("n_cells and n_genes must be non-negative")
    n_in = int(n_selected) if n_selected is not None else n_genes
    n_in = min(n_in, n_genes) if n_genes else n_in
    hidden = [int(h) for h in hidden]
    batch = max(1, min(int(batch_size), max(n_cells, 1)))

    # data as stored
    if sparse:
        d = 0.1 if density is None else float(density)
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density}")
        nnz = d * n_cells * n_genes
        index_bytes = 4 if nnz < 2**31 else 8
        stored = nnz * (_FLOAT + index_bytes) + (n_cells + 1) * index_bytes
    else:
        stored = n_cells * n_genes * _FLOAT
    # preprocessing: full-size temporaries of the stored matrix
    preprocess_peak = PREPROCESS_FACTOR * stored
    # the selected matrix, dense float32, in a few copies (numpy, torch, split)
    selected = SELECTED_COPIES * n_cells * n_in * _FLOAT

    # parameters: encoder n_in -> h1 -> ... -> hk -> (mu, logvar); decoder mirrors
    widths_enc = [n_in, *hidden]
    n_params = 0
    for a, b in zip(widths_enc[:-1], widths_enc[1:]):
        n_params += a * b + b + 2 * b  # weight, bias, normalisation scale/shift
    last = hidden[-1] if hidden else n_in
    n_params += 2 * (last * latent_dim + latent_dim)
    widths_dec = [latent_dim, *reversed(hidden), n_in]
    for a, b in zip(widths_dec[:-1], widths_dec[1:]):
        n_params += a * b + b + 2 * b
    params = 4 * n_params * _FLOAT  # weights, grads, Adam m and v

    # activations of one batch: each layer's output, kept for backward, with its
    # gradient and normalisation/activation buffers (~4 copies)
    act_width = sum(widths_enc) + 2 * latent_dim + sum(widths_dec)
    activations = 4 * batch * act_width * _FLOAT

    pool = int(dense_pool) * n_cells * _FLOAT  # held from preprocessing to the end of the fit
    preprocess_peak += pool
    training_peak = stored + pool + selected + params + activations
    return int(max(preprocess_peak, training_peak) * SAFETY_FACTOR + OVERHEAD)


def _cgroup_limit(files: Sequence[str]) -> int | None:
    for name in files:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if not text or text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        if value <= 0 or value >= 2**60:  # cgroup v1 "no limit" is a huge number
            return None
        return value
    return None


def _physical_ram() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover
        return None


def memory_limit() -> int | None:
    """The memory a training may use, in bytes.

    In order: ``DHAKA_MEMORY_LIMIT`` (e.g. ``"4G"``); the container's cgroup
    limit (``/sys/fs/cgroup/memory.max``, or cgroup v1's
    ``memory.limit_in_bytes``), capped at physical RAM; else
    :data:`RAM_FRACTION` of physical RAM.  ``None`` if nothing is known.

    Raises
    ------
    ValueError
        If ``DHAKA_MEMORY_LIMIT`` is set but unreadable.
    """
    env = env_size("DHAKA_MEMORY_LIMIT")
    if env is not None:
        return env
    ram = _physical_ram()
    cgroup = _cgroup_limit(CGROUP_FILES)
    if cgroup is not None:
        return min(cgroup, ram) if ram else cgroup
    if ram:
        return int(ram * RAM_FRACTION)
    return None


def process_rss() -> int:
    """Resident memory of this process in bytes (0 where unknown)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        pass
    try:  # pragma: no cover - non-Linux
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if os.uname().sysname == "Darwin" else rss * 1024)
    except Exception:  # pragma: no cover
        return 0


def _meminfo_available(path: str | os.PathLike[str]) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, IndexError, ValueError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None  # "max": no limit


def _stat_field(path: Path, names: Sequence[str]) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in names:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available(root: str | os.PathLike[str]) -> int | None:
    """Bytes the cgroup may still take: its limit less what it holds, reclaimable page cache excluded."""
    base = Path(root)
    for limit_f, usage_f, stat_names in (
        ("memory.max", "memory.current", ("inactive_file",)),  # v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", ("total_inactive_file",)),  # v1
    ):
        limit = _read_int(base / limit_f)
        usage = _read_int(base / usage_f)
        if limit is None or usage is None or limit <= 0 or limit >= 2**60:
            continue
        stat = base / Path(limit_f).parent / "memory.stat"
        inactive = _stat_field(stat, stat_names)
        return max(0, limit - max(0, usage - inactive))
    return None


def available_memory(
    *,
    meminfo: str | os.PathLike[str] = "/proc/meminfo",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
    rss: int | None = None,
) -> int | None:
    """Bytes a new job could take *now*, counting everything already in use.

    The smallest of what is known: the machine's ``MemAvailable``
    (``/proc/meminfo``: free memory plus reclaimable caches); the container's
    cgroup limit less its current use (reclaimable page cache excluded); and,
    when ``DHAKA_MEMORY_LIMIT`` is set, that limit less this process's
    resident memory.  ``None`` when none of them can be read (not Linux).

    Parameters
    ----------
    meminfo, cgroup_root
        Where to read (tests point them at fake files).
    rss
        This process's resident bytes (default :func:`process_rss`).
    """
    known: list[int] = []
    avail = _meminfo_available(meminfo)
    if avail is not None:
        known.append(avail)
    cgroup = _cgroup_available(cgroup_root)
    if cgroup is not None:
        known.append(cgroup)
    env = os.environ.get("DHAKA_MEMORY_LIMIT", "").strip()
    if env:
        try:
            limit = parse_size(env)
        except ValueError as exc:
            raise ValueError(f"DHAKA_MEMORY_LIMIT: {exc}") from None
        known.append(max(0, limit - (process_rss() if rss is None else int(rss))))
    return min(known) if known else None


def trim_heap() -> bool:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``), so it counts as available.

    A finished training frees its arrays, but the C allocator may keep the
    pages; :func:`available_memory` would then under-count.  Safe to call at
    any time (no Python code runs).  Returns ``False`` where unsupported.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def check_memory(
    estimate: int,
    limit: int | str | None = None,
    *,
    used: int = 0,
    what: str = "Training",
) -> int:
    """Refuse a job whose memory estimate does not fit under the limit.

    Parameters
    ----------
    estimate
        Bytes the job needs (from :func:`estimate_training_memory`).
    limit
        Bytes (or a size string such as ``"4G"``); default :func:`memory_limit`.
    used
        Bytes already in use (this process, other running jobs), subtracted
        from the limit.
    what
        What needs the memory, for the message (``"Training"``, ``"Reading data.csv"``).

    Returns
    -------
    int
        Bytes left under the limit after the job.

    Raises
    ------
    ResourceError
        With a message such as ``"Training would need about 6.2 GB but the
        limit is 4.0 GB; ..."``.
    """
    if limit is None:
        limit = memory_limit()
        if limit is None:
            return 0
    limit_bytes = parse_size(limit)
    available = limit_bytes - max(0, int(used))
    if estimate > available:
        in_use = f" ({format_bytes(used)} of it already in use)" if used > 0 else ""
        raise ResourceError(
            f"{what} would need about {format_bytes(estimate)} but the limit is "
            f"{format_bytes(limit_bytes)}{in_use}; select fewer genes, use a smaller "
            "batch size or a shallower network, subsample cells, wait for other jobs "
            "to finish, or raise DHAKA_MEMORY_LIMIT (or the container's memory)."
        )
    return available - int(estimate)
