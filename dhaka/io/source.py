"""Inputs: a path, bytes, an upload, a gzip stream or a zip member, streamed from the start as often as needed.
"""
from __future__ import annotations

import gzip
import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Union

import numpy as np

from . import safety as _s
from .safety import (
    _GZIP_MAGIC,
    _ZIP_MAGICS,
    DataError,
    _check_member_name,
    _check_ratio,
    _describe_magic,
    _q,
)

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes]]


class _GzipStream(io.RawIOBase):
    """A gzip stream decompressed on the fly, refusing bombs, truncation and corruption.

    Errors are raised as :class:`DataError` from ``readinto`` and remembered in
    ``error`` (a parser that swallows the exception cannot hide it).
    """

    def __init__(self, raw: IO[bytes], name: str, compressed_size: int):
        self._raw = raw
        self._g = gzip.GzipFile(fileobj=raw, mode="rb")
        self._name = name
        self._compressed = max(int(compressed_size), 1)
        self._limit = _s.MAX_UNCOMPRESSED_BYTES
        self.total = 0
        self.error: DataError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.error is not None:
            raise self.error
        name = self._name
        try:
            n = self._g.readinto(b)
        except EOFError:
            err = DataError(
                f"{name}: gzip stream is truncated (ended before the end-of-stream marker); "
                "the file was probably cut short during download or upload"
            )
        except DataError as e:  # from a guarded inner stream (a zip member)
            err = e
        except (OSError, zlib.error) as e:
            err = DataError(f"{name}: corrupt gzip data ({e})")
        else:
            self.total += n
            if self.total > self._limit:
                err = DataError(
                    f"{name}: decompresses to more than {self._limit:,} bytes (limit); "
                    "refusing a possible gzip bomb"
                )
            else:
                try:
                    _check_ratio(name, self._compressed, self.total)
                    return n
                except DataError as e:
                    err = e
        self.error = err
        raise err

    def close(self) -> None:
        try:
            self._g.close()
            self._raw.close()
        finally:
            super().close()


class _GuardedStream(io.RawIOBase):
    """A stream whose read errors (a corrupt zip member, say) become one :class:`DataError`."""

    def __init__(self, fh: IO[bytes], describe: Callable[[Exception], str]):
        self._fh = fh
        self._describe = describe
        self.error: DataError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.error is not None:
            raise self.error
        try:
            data = self._fh.read(len(b))
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the underlying stream
            self.error = DataError(self._describe(e))
            raise self.error from None
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            super().close()


class _LineGuard(io.RawIOBase):
    """A binary text stream that refuses a line longer than ``MAX_LINE_BYTES`` as soon as it is read.

    Readers hold a line whole (a text table's block carries a line across reads, ``readline`` and
    pandas buffer it), so one line with no newline, decompressed from a few MB of gzip, would
    otherwise become gigabytes of one string.  Each chunk is scanned for line ends at C speed; the
    :class:`DataError` names the line (counted in ``\\n``, or in ``\\r`` for a file with only those)
    and the limit.  A UTF-8 byte-order mark at the start is dropped with ``strip_bom``.
    """

    def __init__(self, fh: IO[bytes], name: str, *, strip_bom: bool = False, limit: int | None = None):
        self._fh = fh
        self._name = name
        self._limit = _s.MAX_LINE_BYTES if limit is None else int(limit)
        self._run = 0  # bytes of the line being read so far
        self._lf = 0
        self._cr = 0
        self._pending = b""  # bytes read ahead (to look for a byte-order mark), served first
        if strip_bom:
            while len(self._pending) < 3 and (more := fh.read(3 - len(self._pending))):
                self._pending += more
            if self._pending == b"\xef\xbb\xbf":
                self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._pending:
            data, self._pending = self._pending[:len(b)], self._pending[len(b):]
        else:
            data = self._fh.read(len(b))
        if data:
            self._check(data)
        n = len(data)
        b[:n] = data
        return n

    def _check(self, data: bytes) -> None:
        buf = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero((buf == 10) | (buf == 13))
        if ends.size == 0:
            longest, at = self._run + len(data), 0
            self._run += len(data)
        else:
            gaps = np.diff(ends) - 1
            first = self._run + int(ends[0])
            longest, at = first, 0
            if gaps.size and int(gaps.max()) > longest:
                at = int(np.argmax(gaps)) + 1
                longest = int(gaps[at - 1])
            tail = len(data) - int(ends[-1]) - 1
            if tail > longest:
                longest, at = tail, ends.size
            self._run = tail
        if longest > self._limit:
            cut = int(ends[at - 1]) + 1 if at else 0
            lf = self._lf + data.count(b"\n", 0, cut)
            cr = self._cr + data.count(b"\r", 0, cut)
            line = (lf if lf or b"\n" in data else cr) + 1
            raise DataError(
                f"{self._name}: line {line:,} is longer than {self._limit:,} bytes (MAX_LINE_BYTES); "
                "refused before it is held in memory (a file with no line breaks, or not a text table?)")
        self._lf += data.count(b"\n")
        self._cr += data.count(b"\r")

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            super().close()


def _lines_guarded(fh: IO[bytes], name: str, *, strip_bom: bool = False) -> IO[bytes]:
    """``fh`` read through a :class:`_LineGuard`, buffered in 1 MB reads."""
    return io.BufferedReader(_LineGuard(fh, name, strip_bom=strip_bom), 1 << 20)


class _Input:
    """Raw input: a name and a way to stream its bytes (again) from the start.

    Backed by a path, by bytes already in memory, or by an ``opener`` (a gzip
    stream, a zip member) that returns a fresh raw stream each time.  ``data``
    loads everything at once and is only used by the formats that need it
    (.npy, .npz, an .h5ad given as bytes).
    """

    def __init__(self, *, name: str, data: bytes | None = None, path: Path | None = None,
                 max_bytes: int | None = None, opener: Callable[[], IO[bytes]] | None = None,
                 size: int | None = None):
        self.name = name
        self.max_bytes = max_bytes
        self.path = path
        self._data = data
        self._opener = opener
        self._size = size

    @property
    def on_disk(self) -> bool:
        """True for a plain file on disk (not a gzip or zip stream, not bytes)."""
        return self.path is not None and self._data is None and self._opener is None

    def _cannot(self, e: OSError) -> DataError:
        return DataError(f"{self.name}: cannot read file ({e.strerror or e})")

    def open(self) -> IO[bytes]:
        """A fresh buffered binary stream positioned at the start."""
        if self._data is not None:
            return io.BytesIO(self._data)
        if self._opener is not None:
            return io.BufferedReader(self._opener(), 1 << 20)
        assert self.path is not None
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise self._cannot(e) from None

    @property
    def data(self) -> bytes:
        if self._data is None:
            if self.on_disk:
                try:
                    self._data = self.path.read_bytes()
                except OSError as e:
                    raise self._cannot(e) from None
            else:
                with self.open() as fh:
                    self._data = fh.read()
            self._size = len(self._data)
        return self._data

    def head(self, n: int = 4096) -> bytes:
        if self._data is not None:
            return self._data[:n]
        with self.open() as fh:
            try:
                return fh.read(n)
            except OSError as e:
                raise self._cannot(e) from None

    def size(self) -> int:
        """Size in bytes (for a gzip stream: decompressed, counted by one streaming pass)."""
        if self._size is None:
            if self._data is not None:
                self._size = len(self._data)
            elif self.on_disk:
                self._size = self.path.stat().st_size
            else:
                total = 0
                with self.open() as fh:
                    while chunk := fh.read(1 << 20):
                        total += len(chunk)
                self._size = total
        return self._size

    def gunzipped(self) -> "_Input":
        """The decompressed stream of this (gzip) input, with the bomb limits."""
        compressed = self.size()
        return _Input(name=self.name, opener=lambda: _GzipStream(self.open(), self.name, compressed))

    def maybe_gunzipped(self) -> "_Input":
        return self.gunzipped() if self.head(2) == _GZIP_MAGIC else self


def _open_source(source: Source, filename: str | None, max_bytes: int | None) -> _Input:
    if max_bytes is not None and max_bytes < 0:
        raise ValueError("max_bytes must be None or >= 0")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = filename or path.name or str(path)
        if not path.exists():
            raise DataError(f"{name}: file or folder not found ({path})")
        if path.is_dir():
            return _Input(name=name, path=path, max_bytes=max_bytes)
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise DataError(
                f"{name}: file is {size:,} bytes, above the size limit of {max_bytes:,} bytes (max_bytes)"
            )
        return _Input(name=name, path=path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = filename or "<bytes>"
    elif hasattr(source, "read"):
        name = filename or os.path.basename(str(getattr(source, "name", "") or "")) or "<upload>"
        try:
            if hasattr(source, "seek"):
                try:
                    source.seek(0)
                except (OSError, ValueError):
                    pass
            data = source.read() if max_bytes is None else source.read(max_bytes + 1)
        except Exception as e:  # noqa: BLE001 - any read failure is an input problem
            raise DataError(f"{name}: cannot read upload ({e})") from None
        if isinstance(data, str):
            data = data.encode("utf-8")
        data = bytes(data)
    else:
        raise TypeError(
            f"source must be a path, bytes or a binary file-like object, not {type(source).__name__}"
        )
    if max_bytes is not None and len(data) > max_bytes:
        raise DataError(
            f"{name}: input is more than {max_bytes:,} bytes, above the size limit (max_bytes)"
        )
    return _Input(name=name, data=data)


def _split_ext(name: str) -> tuple[str, bool]:
    """Return (extension of the inner file, gzip-compressed?) from a file name."""
    lower = name.lower()
    gz = lower.endswith(".gz")
    if gz:
        lower = lower[:-3]
    return os.path.splitext(lower)[1], gz


def _open_zip(source: "bytes | _Input", label: str, *, max_total_bytes: int | None = None) -> zipfile.ZipFile:
    """Open and vet a zip archive: names, symlinks, entry count, sizes.

    ``source`` is the archive's bytes or an input; a file on disk is read in
    place (members are streamed from it, the archive is never loaded whole).
    """
    limit = _s.MAX_UNCOMPRESSED_BYTES if max_total_bytes is None else max_total_bytes
    if isinstance(source, _Input):
        head = source.head(16)
        fileobj: Any = source.path if source.on_disk else io.BytesIO(source.data)
    else:
        head = source[:16]
        fileobj = io.BytesIO(source)
    if not head:
        raise DataError(f"{label}: zip file is empty")
    if not head.startswith(_ZIP_MAGICS):
        what = _describe_magic(head)
        raise DataError(
            f"{label}: not a zip archive (bad signature" + (f"; this is {what})" if what else ")")
        )
    try:
        zf = zipfile.ZipFile(fileobj)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"{label}: corrupt or invalid zip archive ({e})") from None
    if len(infos) > _s.MAX_ZIP_ENTRIES:
        zf.close()
        raise DataError(f"{label}: zip has {len(infos):,} members, above the limit of {_s.MAX_ZIP_ENTRIES:,}")
    total = 0
    try:
        for info in infos:
            _check_member_name(info, label)
            total += info.file_size
            if not info.is_dir():
                _check_ratio(f"{label}: {info.filename}", info.compress_size, info.file_size)
        if total > limit:
            raise DataError(
                f"{label}: zip members total {total:,} bytes uncompressed, above the limit of {limit:,} "
                "bytes; refusing a possible zip bomb"
            )
    except DataError:
        zf.close()
        raise
    return zf


def _zip_input(zf: zipfile.ZipFile, name: str, label: str, *, display: str | None = None) -> _Input:
    """A zip member as an input streamed from the archive (decompressed on the fly)."""
    info = zf.getinfo(name)

    def describe(e: Exception) -> str:
        return f"{label}: corrupt zip member {_q(name)} ({e})"

    def opener() -> IO[bytes]:
        try:
            fh = zf.open(info)
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise DataError(describe(e)) from None
        return _GuardedStream(fh, describe)

    return _Input(name=display or name, opener=opener, size=info.file_size)
