"""Untrusted bytes parsed in a child process under a hard memory cap and a time limit.

A server that parses an upload in its own process bets its memory on an estimate, and an estimate
can be 60x low (a file of 1 x 1 HDF5 chunks, one endless line in a gzip).  Here the parse runs in a
fresh ``python -m dhaka.io.sandbox`` whose data segment the operating system caps
(``resource.setrlimit(RLIMIT_DATA)``: every heap and anonymous mapping numpy, pandas, h5py and the
interpreter allocate counts; measured to stop numpy, ``bytearray`` and ``str.split`` alike), so an
upload that needs more fails *in the child* with ``MemoryError`` and the caller's process never
grows.  The child is killed when the time limit passes.

The exchange never unpickles anything:

1. the caller writes the upload to a private temporary folder (``tmp_dir``) and a JSON request;
2. the child imports its readers, sets the cap (the bytes it may add to what the imports took),
   sizes the file from its headers (:func:`dhaka.io.estimate_read_memory`) and prints that one JSON
   line; the caller *admits* it (``admit(need)``: a job queue's memory check, say) and answers ``go``
   or stops the child;
3. the child reads the file with :func:`dhaka.io.read` (and joins the metadata table, if any) and
   writes the result as ``.h5ad`` (anndata's writer: numbers and strings, no pickle; what the reader
   kept of an .h5ad's obsm, obsp, layers, uns ... goes with it) with its ``uns["dhaka_io"]`` record in
   JSON beside it; the caller reads those back and removes the folder.

Every failure is a :class:`~dhaka.io.DataError` naming the file: the reader's own message, or the
cap (``... needed more than the 2.0 GB memory cap for reading this upload``) or the time limit.
Nothing here imports streamlit.
"""
from __future__ import annotations

import json
import os
import re
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dhaka.resources import format_bytes

from .safety import DataError
from .source import Source

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["SandboxLimitError", "MetadataError", "read_sandboxed", "h5ad_layers_sandboxed"]

_ROOT = Path(__file__).resolve().parents[2]
#: Bytes the child may use beyond its imports to list an .h5ad's layers (headers only).
_LAYERS_CAP = 512 * 2**20
#: The smallest cap a parse gets, whatever its estimate: room for the readers' blocks and names.
_MIN_CAP = 256 * 2**20
#: Threads of the numeric libraries in the child: one (each thread's stack and arena count against the cap).
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}


class SandboxLimitError(DataError):
    """The parse needed more memory than its cap, or more time than its limit (the message names which)."""


class MetadataError(DataError):
    """The matrix was read, but the metadata table given with it could not be joined."""


# --------------------------------------------------------------------------- #
# the caller's side
# --------------------------------------------------------------------------- #
def read_sandboxed(
    source: Source,
    *,
    filename: str | None = None,
    memory_limit: int,
    time_limit: float = 300.0,
    admit: Callable[[int], None] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    metadata: Source | None = None,
    metadata_filename: str | None = None,
    **read_options: Any,
) -> "anndata.AnnData":
    """:func:`dhaka.io.read` of ``source`` in a child process capped at ``memory_limit`` bytes.

    Parameters
    ----------
    source
        A path, ``bytes`` or a binary file-like object (an upload); anything but a path is written
        to ``tmp_dir`` first.
    filename
        The name for messages and for picking the format (default: the path's or ``source.name``).
    memory_limit
        Bytes the parse may allocate beyond the child's imports (its data segment is capped there).
        The estimate from the file's headers lowers it to what the file should need (2x the
        estimated peak when the shape is exact, 4x for text tables whose rows are extrapolated,
        at least 256 MB), so the bytes admitted are the bytes enforced.
    time_limit
        Seconds the child may take, from its start to its result; then it is killed.
    admit
        Called in this process with the bytes the child may use (its cap) before any parsing;
        raising refuses the upload (the child is stopped).  Without an estimate (a header the
        estimate cannot size), the whole ``memory_limit`` is asked for: admission fails closed.
    tmp_dir
        Where the private temporary folder goes (the run store's, in the app); removed afterwards.
    metadata, metadata_filename
        A per-cell table joined by :func:`dhaka.io.read_metadata` in the same child.
    **read_options
        ``orientation``, ``expect``, ``layer``, ``format``, ``value``, ``max_bytes`` of :func:`read`.

    Raises
    ------
    SandboxLimitError
        Over the memory cap or the time limit (the message names the file and the limit).
    MetadataError
        The matrix was fine, the metadata table was not.
    DataError
        The reader's own message for any other problem with the file.
    """
    name = filename or _name_of(source)
    request = {"task": "read", "filename": name, "options": read_options}
    if metadata is not None:
        request["metadata_filename"] = metadata_filename or _name_of(metadata) or "metadata.csv"
    with _Workspace(tmp_dir) as ws:
        request["input"] = ws.put(source, "input")
        if metadata is not None:
            request["metadata"] = ws.put(metadata, "metadata")
        result = _run_child(ws, request, name=name, memory_limit=memory_limit, time_limit=time_limit, admit=admit)
        return _load_result(ws.path, result)


def h5ad_layers_sandboxed(
    source: Source, *, filename: str | None = None, memory_limit: int = _LAYERS_CAP, time_limit: float = 60.0,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> dict[str, dict]:
    """:func:`dhaka.io.h5ad_layers` of ``source`` in a capped child process (see :func:`read_sandboxed`)."""
    name = filename or _name_of(source)
    with _Workspace(tmp_dir) as ws:
        request = {"task": "layers", "filename": name, "input": ws.put(source, "input")}
        result = _run_child(ws, request, name=name, memory_limit=memory_limit, time_limit=time_limit, admit=None)
    return {k: {**v, "shape": tuple(v["shape"]) if v.get("shape") is not None else None}
            for k, v in result["layers"].items()}


def _name_of(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return os.path.basename(str(getattr(source, "name", "") or "")) or "upload"


class _Workspace:
    """A private temporary folder (mode 0700) for one parse, removed on exit."""

    def __init__(self, tmp_dir: str | os.PathLike[str] | None) -> None:
        if tmp_dir is not None:
            Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="dhaka-upload-", dir=tmp_dir))

    def __enter__(self) -> "_Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def put(self, source: Source, stem: str) -> str:
        """The path the child reads: a path as given, anything else written here first."""
        if isinstance(source, (str, os.PathLike)):
            return str(Path(source).resolve())
        dest = self.path / stem
        if isinstance(source, (bytes, bytearray, memoryview)):
            dest.write_bytes(source)
        else:
            if hasattr(source, "seek"):
                source.seek(0)
            with open(dest, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        return str(dest)


def _run_child(ws: _Workspace, request: dict, *, name: str, memory_limit: int, time_limit: float,
               admit: Callable[[int], None] | None) -> dict:
    memory_limit = int(memory_limit)
    if memory_limit <= 0:
        raise ValueError(f"memory_limit must be positive, got {memory_limit}")
    request = {**request, "memory_limit": memory_limit, "out": str(ws.path)}
    (ws.path / "request.json").write_text(json.dumps(request))
    env = {**os.environ, **_CHILD_ENV,
           "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    deadline = time.monotonic() + float(time_limit)
    with open(ws.path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dhaka.io.sandbox", str(ws.path / "request.json")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=str(_ROOT), env=env)
    try:
        first = _line_before(proc, deadline)
        if first is None:
            return _outcome(proc, ws, name=name, memory_limit=memory_limit, time_limit=time_limit, deadline=deadline)
        cap, why = _cap_from_estimate(first, memory_limit, name)
        if admit is not None:
            admit(cap)
        assert proc.stdin is not None
        proc.stdin.write(f"{json.dumps({'go': True, 'cap': cap})}\n".encode())
        proc.stdin.flush()
        return _outcome(proc, ws, name=name, memory_limit=cap, time_limit=time_limit, deadline=deadline, why=why)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _line_before(proc: subprocess.Popen, deadline: float) -> dict | None:
    """The child's one line (its estimate), or None when it ended or the time ran out first."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > 1 << 16:
            return None
    try:
        line = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def _cap_from_estimate(line: dict, memory_limit: int, name: str) -> tuple[int, str]:
    """The child's cap and what it came from: a margin over the estimated peak, within ``memory_limit``.

    Twice the estimate when the headers give the shape exactly (.h5ad, mtx, 10x), four times when
    the rows are extrapolated from the first lines (text tables), at least 256 MB.  No estimate
    (the headers could not size the file): the whole ``memory_limit``.  An estimate beyond
    ``memory_limit`` refuses the file at once, before any parsing.
    """
    peak = line.get("peak_bytes")
    if not isinstance(peak, int) or isinstance(peak, bool) or peak < 0:
        return memory_limit, ""
    if peak > memory_limit:
        raise SandboxLimitError(
            f"{name}: reading it would need about {format_bytes(peak)} (estimated from its header), more than "
            f"the {format_bytes(memory_limit)} memory cap for reading an upload; upload a smaller or sparse file "
            "(.h5ad, .mtx, 10x) or subsample the cells")
    margin = 2 if line.get("exact") is True else 4
    cap = max(margin * peak, _MIN_CAP)
    if cap >= memory_limit:
        return memory_limit, ""
    return cap, f" ({margin}x the {format_bytes(peak)} its header suggests)"


def _outcome(proc: subprocess.Popen, ws: _Workspace, *, name: str, memory_limit: int, time_limit: float,
             deadline: float, why: str = "") -> dict:
    """The child's result record, or the error it stands for."""
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SandboxLimitError(
            f"{name}: reading took longer than {time_limit:,.0f} s, the time limit for reading an upload; "
            "refused (upload a smaller or sparse file: .h5ad, .mtx, 10x)") from None
    path = ws.path / "result.json"
    result = None
    if path.exists():
        try:
            result = json.loads(path.read_text())
        except ValueError:
            result = None
    if not isinstance(result, dict):
        # no record: the child died on its way (a C library aborting when an allocation failed)
        code = proc.returncode
        how = f"was stopped by signal {-code}" if code < 0 else f"exited with status {code}"
        raise SandboxLimitError(
            f"{name}: the reader {how} before finishing, most likely for want of memory under the "
            f"{format_bytes(memory_limit)} memory cap for reading this upload{why}; refused")
    if result.get("memory"):
        raise SandboxLimitError(
            f"{name}: reading it needed more than the {format_bytes(memory_limit)} memory cap for reading this "
            f"upload{why}; refused (upload a smaller or sparse file: .h5ad, .mtx, 10x, or subsample the cells)")
    if "error" in result:
        cls = MetadataError if result.get("stage") == "metadata" else DataError
        raise cls(str(result["error"]))
    return result


def _load_result(folder: Path, result: dict) -> "anndata.AnnData":
    """The AnnData the child wrote (``result.h5ad`` and its ``uns`` record in JSON)."""
    import anndata

    adata = anndata.read_h5ad(folder / "result.h5ad")
    adata.uns["dhaka_io"] = result.get("dhaka_io", {})
    return adata


# --------------------------------------------------------------------------- #
# the child's side
# --------------------------------------------------------------------------- #
def _vm_data() -> int:
    """This process's data segment in bytes (``VmData``: what ``RLIMIT_DATA`` caps).

    Without ``/proc`` (not Linux), the peak resident size stands in for it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _cap_memory(limit: int) -> None:
    """Cap this process's data segment at ``limit`` bytes (soft and hard: the parse cannot lift it)."""
    resource.setrlimit(resource.RLIMIT_DATA, (int(limit), int(limit)))


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


#: How C libraries word a failed allocation in the exceptions they raise: pandas' tokenizer, HDF5
#: (through h5py) and the C library's ENOMEM (numpy raises MemoryError itself).
_OOM_WORDING = re.compile(r"^error tokenizing data\. c error: out of memory|\(memory allocation failed|^\[errno 12\]",
                         re.IGNORECASE)


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it came from) is a failed allocation: the cap was reached.

    A library's own exception is judged by its wording too; a :class:`DataError` only by what it
    came from, since its message may quote the file's contents.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MemoryError) or (not isinstance(exc, DataError)  # (a DataError may quote the file)
                                            and _OOM_WORDING.search(str(exc)) is not None):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _child(request_path: str) -> int:
    import anndata  # noqa: F401 - imported before the cap, as every reader's dependency
    import h5py  # noqa: F401

    from . import estimate_read_memory, h5ad_layers, read, read_metadata

    request = json.loads(Path(request_path).read_text())
    out = Path(request["out"])
    name, src = request["filename"], request["input"]

    def finish(record: dict) -> int:
        (out / "result.json").write_text(json.dumps(_jsonable(record)))
        return 0

    base, most = _vm_data(), int(request["memory_limit"])
    _cap_memory(base + most)
    stage = "read"
    try:
        if request["task"] == "layers":
            return finish({"layers": h5ad_layers(src, filename=name)})
        options = request.get("options") or {}
        try:
            estimate = estimate_read_memory(src, filename=name, layer=options.get("layer"),
                                            extras=options.get("extras", True))
            peak = int(estimate["peak_bytes"])
            line = {"peak_bytes": peak, "exact": bool(estimate.get("exact"))}
        except Exception as e:  # noqa: BLE001 - the read below gives the reader's own message
            if _out_of_memory(e):
                return finish({"memory": True})
            line = {"estimate_error": str(e)[:500]}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        answer = json.loads(sys.stdin.readline() or "{}")
        if not answer.get("go"):
            return 1
        cap = answer.get("cap")
        if isinstance(cap, int) and not isinstance(cap, bool) and 0 < cap < most:
            _cap_memory(base + cap)  # the bytes the caller admitted
        adata = read(src, filename=name, **options)
        if request.get("metadata"):
            stage = "metadata"
            adata = read_metadata(request["metadata"], adata, filename=request["metadata_filename"])
        record = {"dhaka_io": dict(adata.uns.pop("dhaka_io", {}))}  # in JSON: anndata cannot write a None
        adata.write_h5ad(out / "result.h5ad", convert_strings_to_categoricals=False)
        return finish(record)
    except DataError as e:
        if _out_of_memory(e):
            return finish({"memory": True})
        return finish({"error": str(e), "stage": stage})
    except MemoryError:
        return finish({"memory": True})


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dhaka.io.sandbox REQUEST.json", file=sys.stderr)
        return 2
    return _child(argv[0])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
