"""Delimited text tables (CSV, TSV, whitespace), parsed as a stream in blocks of rows.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
import warnings
from collections import Counter
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from . import safety as _s
from .matrix import Expect, Orientation, _corner_hint, _decide_orientation, _finish
from .safety import _NUM_RE, DataError, _describe_magic, _plural, _q
from .source import _Input, _lines_guarded

#: What parses the rows of a table (named in bench/io_memory.py's figures).  Issue 28 measured a reader on
#: ``pyarrow.csv.open_csv`` against it (bench/RESULTS.md, section io-memory): it kept every refusal but
#: needed about 100 MB more for small tables, took 1.45x as long on a 30,000-gene table, and its peak made
#: the sandbox refuse an upload this reader takes; so rows are parsed here.
PARSER = "hand-written (pandas blocks)"

_NAN_TOKENS = {"nan", "-nan", "+nan", "na", "n/a", "#n/a", "null", "none", "nat", "."}
_INF_TOKENS = {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_F32_MAX = float(np.finfo(np.float32).max)


def _is_number(token: str) -> bool:
    return bool(_NUM_RE.match(token))


def _looks_numeric(token: str) -> bool:
    """Number, NaN or infinity spelled out (used to tell a header from data)."""
    t = token.strip().lower()
    return _is_number(t) or t in _INF_TOKENS or (t in _NAN_TOKENS and t != "")


# --------------------------------------------------------------------------- #
# delimited text
# --------------------------------------------------------------------------- #
def _first_lines(text: str, n: int = 30) -> list[str]:
    out = []
    for line in text[: 1 << 20].split("\n"):
        if line.strip():
            out.append(line.rstrip("\r"))
            if len(out) >= n:
                break
    return out


def _sniff_delimiter(lines: list[str], ext: str) -> str | None:
    """Return the delimiter (``None`` for runs of whitespace)."""
    preferred = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(ext)
    best, best_score = None, (0.0, 0)
    for d in (",", "\t", ";", "|"):
        counts = [len(next(csv.reader([ln], delimiter=d))) for ln in lines]
        if counts[0] < 2 and (len(counts) < 2 or counts[1] < 2):
            continue
        mode, freq = Counter(counts).most_common(1)[0]
        if mode < 2:
            continue
        score = (freq / len(counts), mode)
        if d == preferred and freq / len(counts) >= 0.8:
            return d
        if score > best_score:
            best, best_score = d, score
    if best is not None:
        return best
    if any(len(ln.split()) >= 2 for ln in lines[:2]):
        return None
    raise DataError(
        "has only one column (no delimiter found: expected comma, tab, semicolon or spaces); "
        "a matrix file needs an id column and at least 2 value columns"
    )


def _iter_rows(text: str, delim: str | None):
    """Yield (line number, stripped fields) for non-blank lines."""
    if delim is None:
        for i, line in enumerate(text.split("\n"), 1):
            fields = [f.strip('"') for f in line.split()]
            if fields:
                yield i, fields
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            yield reader.line_num, [f.strip() for f in fields]
    except csv.Error as e:
        raise DataError(f"malformed text at line {reader.line_num + 1} ({e})") from None


_NUM_PAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"


def _diagnose_table(
    lines: Iterable[str], delim: str | None, *, start_line: int, n_fields: int, has_index: bool,
    col_names: Sequence[str] | None, name: str,
) -> None:
    """Walk the data rows and raise a DataError at the first problem found.

    A compiled regular expression accepts well-formed lines at C speed; only a
    line it rejects is split and checked field by field.
    """
    n_rest = n_fields - 1
    if delim is None:
        first = r"\s*\S+" if has_index else rf"\s*{_NUM_PAT}"
        pat = first + rf"(?:\s+{_NUM_PAT}){{{n_rest}}}\s*"
    else:
        d = re.escape(delim)
        first = rf"[^{d}\"]*" if has_index else rf"\s*{_NUM_PAT}\s*"
        pat = first + rf"(?:{d}\s*{_NUM_PAT}\s*){{{n_rest}}}"
    well_formed = re.compile(pat).fullmatch
    for line_no, line in enumerate(lines, 1):
        if line_no <= start_line or not line.strip() or well_formed(line):
            continue
        if delim is None:
            fields = [f.strip('"') for f in line.split()]
        else:
            try:
                fields = [f.strip() for f in next(csv.reader([line], delimiter=delim))]
            except (csv.Error, StopIteration):
                raise DataError(f"{name}: malformed text (quotes) at line {line_no}") from None
        _check_fields(fields, line_no, n_fields=n_fields, has_index=has_index, col_names=col_names, name=name)


def _check_fields(
    fields: list[str], line_no: int, *, n_fields: int, has_index: bool,
    col_names: Sequence[str] | None, name: str,
) -> None:
    """Raise a DataError for the first bad field of one data line."""
    if len(fields) != n_fields:
        raise DataError(
            f"{name}: ragged rows: line {line_no} has {len(fields)} fields but "
            f"{n_fields} were expected (from the header/first row)"
        )
    offset = 1 if has_index else 0
    row_id = fields[0] if has_index else None
    for j in range(offset, n_fields):
        tok = fields[j]
        low = tok.lower()
        col = f"column {j + 1}"
        if col_names is not None:
            col += f" ({_q(col_names[j - offset])})"
        at = f"line {line_no}, {col}" + (f", row {_q(row_id)}" if row_id is not None else "")
        if tok == "":
            raise DataError(f"{name}: missing (empty) value at {at}; NaN/missing values are not allowed")
        if low in _NAN_TOKENS:
            raise DataError(f"{name}: NaN (missing value {_q(tok)}) at {at}; NaN/missing values are not allowed")
        if low in _INF_TOKENS:
            raise DataError(f"{name}: infinite value {_q(tok)} at {at}; inf is not allowed")
        if not _is_number(tok):
            hint = ""
            if re.match(r"^[+-]?\d+,\d+$", tok):
                hint = " (decimal comma? use a dot as the decimal separator)"
            raise DataError(f"{name}: non-numeric value {_q(tok)} at {at}{hint}")
        if abs(float(tok)) > _F32_MAX:
            raise DataError(f"{name}: value {tok} at {at} is too large (beyond float32 range, infinite)")


def _text_encoding(inp: _Input) -> str:
    """Refuse binary data and pick the encoding of a text input, in one streaming pass.

    UTF-16 (with a byte-order mark) and UTF-8 (BOM optional) are decoded as such;
    text that is not valid UTF-8 but has few control characters is read as
    latin-1; anything else is binary data.  Also refuses text that is only blanks.
    """
    name = inp.name
    sample = inp.head(65536)
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        enc = "utf-16"
    else:
        what = _describe_magic(sample)
        if what is not None and what != "a MatrixMarket file":
            raise DataError(f"{name}: this is {what}, not a text table (binary data)")
        if b"\x00" in sample:
            raise DataError(f"{name}: binary data (contains NUL bytes), not a text table")
        enc = "utf-8-sig"
    dec = codecs.getincrementaldecoder(enc)()
    offset, blank = 0, True
    with _lines_guarded(inp.open(), name) as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                text = dec.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                if enc == "utf-16":
                    raise DataError(f"{name}: invalid UTF-16 text") from None
                ctrl = sum(1 for b in sample if b < 9 or 13 < b < 32 or b == 127)
                if ctrl > 0.01 * max(len(sample), 1) or ctrl > 20:
                    at = offset - (len(e.object) - len(chunk)) + e.start
                    raise DataError(
                        f"{name}: binary data, not a text table (invalid UTF-8 at byte {at})"
                    ) from None
                enc = "latin-1"
                blank = blank and not chunk.strip()
                while blank and (chunk := fh.read(1 << 20)):
                    blank = not chunk.strip()
                break
            blank = blank and not text.strip()
            offset += len(chunk)
            if not chunk:
                break
    if blank:
        raise DataError(f"{name}: file is empty (no text)")
    return enc


def _open_text(inp: _Input, enc: str, *, newline: str | None = None) -> IO[str]:
    """The input as text, universal newlines by default (CRLF and CR become LF).

    A line longer than ``MAX_LINE_BYTES`` is refused as it is read, and a UTF-8 byte-order mark is
    dropped whatever the encoding (a latin-1 file that starts with one would otherwise keep it in
    its first cell, and the header corner's orientation hint would be lost).
    """
    raw = _lines_guarded(inp.open(), inp.name, strip_bom=enc not in ("utf-8-sig", "utf-16"))
    return io.TextIOWrapper(raw, encoding=enc, newline=newline)


def _text_lines(inp: _Input, enc: str) -> Iterator[str]:
    """Every line of the text (without its line end), streamed."""
    with _open_text(inp, enc) as fh:
        for line in fh:
            yield line[:-1] if line.endswith("\n") else line


def _read_head(fh: IO[str], *, max_chars: int = 1 << 20, want: int = 30) -> str:
    """The first lines of a text stream: ``want`` non-blank lines, or about
    ``max_chars`` characters once at least 4 non-blank lines are in."""
    parts, n_chars, n_lines = [], 0, 0
    while True:
        line = fh.readline()
        if not line:
            break
        parts.append(line)
        n_chars += len(line)
        if line.strip():
            n_lines += 1
            if n_lines >= want or (n_chars >= max_chars and n_lines >= 4):
                break
    return "".join(parts)


def _read_table(inp: _Input, *, ext: str, orientation: Orientation, expect: Expect):
    """Read a delimited text table as a stream, in blocks of rows, into float32."""
    name = inp.name
    enc = _text_encoding(inp)
    with _open_text(inp, enc) as fh:
        text = _read_head(fh)
    lines = _first_lines(text)
    try:
        delim = _sniff_delimiter(lines, ext)
    except DataError as e:
        raise DataError(f"{name}: {e}") from None
    rows = _iter_rows(text, delim)
    head_row = next(rows, None)
    if head_row is None:
        raise DataError(f"{name}: file is empty (only blank lines)")
    first_line, first = head_row
    second = next(rows, None)
    third = next(rows, None)
    corner = first[0]
    has_header = (
        corner == ""
        or any(not _looks_numeric(f) for f in first[1:])
        or _corner_hint(corner) is not None
    )
    if not has_header:
        data_rows = [first] + [t[1] for t in (second, third) if t is not None]
        header_end_line = first_line - 1
        n_fields = len(first)
        has_index = any(not _looks_numeric(r[0]) for r in data_rows)
        col_names = None
    else:
        header_end_line = first_line
        if second is None:
            raise DataError(
                f"{name}: header only: line {first_line} looks like a header "
                f"({_plural(len(first), 'field')}) but there are no data rows"
            )
        header = first
        data_first = second[1]
        if len(header) == len(data_first) - 1:  # R write.table style: no corner cell
            n_fields = len(data_first)
            has_index = True
            col_names = header
            corner = None
        else:
            n_fields = len(header)
            has_index = (
                header[0] == ""
                or _corner_hint(header[0]) is not None
                or not _looks_numeric(data_first[0])
            )
            col_names = header[1:] if has_index else header
    del text, rows, lines
    n_values = n_fields - (1 if has_index else 0)
    if n_values < 1:
        raise DataError(
            f"{name}: has only one column (an id column and no values); a matrix file needs an "
            "id column and at least 2 value columns"
        )
    dtypes = {i: np.float32 for i in range(1 if has_index else 0, n_fields)}
    if has_index:
        dtypes[0] = str
    kwargs: dict[str, Any] = dict(
        header=None, names=list(range(n_fields)), index_col=0 if has_index else None,
        dtype=dtypes, na_filter=False, engine="c", skipinitialspace=True,
        sep=r"\s+" if delim is None else delim,
    )
    diag = dict(start_line=header_end_line, n_fields=n_fields, has_index=has_index,
                col_names=col_names, name=name)

    def diagnose() -> None:
        _diagnose_table(_text_lines(inp, enc), delim, **diag)

    # the text is streamed in blocks of lines: only one block of text and its float32
    # values are in memory at a time; a block pandas cannot parse is diagnosed
    blocks: list[np.ndarray] = []
    row_names: list[str] | None = [] if has_index else None
    with _open_text(inp, enc) as fh:
        for _ in range(header_end_line):
            fh.readline()
        for lines in _line_blocks(fh):
            got = _parse_block_fast(lines, delim, has_index=has_index, n_values=n_values)
            if got is None:
                got = _parse_block(lines, kwargs, n_values=n_values, diagnose=diagnose, name=name)
            block, names = got
            if not np.isfinite(block).all():
                diagnose()
            blocks.append(block)
            if row_names is not None:
                row_names.extend(names)
            del block, names, got, lines
    n_rows = sum(b.shape[0] for b in blocks)
    if n_rows == 0:
        raise DataError(f"{name}: header only: no data rows after line {header_end_line}")
    col_names = [str(s).strip().strip('"') for s in col_names] if col_names is not None else None
    file_orient, reason = _decide_orientation(
        orientation, row_names=row_names, col_names=col_names, shape=(n_rows, n_values),
        corner=corner if (has_header and has_index) else None,
    )
    transposed = file_orient == "genes_x_cells"
    obs_names, var_names = (col_names, row_names) if transposed else (row_names, col_names)
    X = _stack_blocks(blocks, n_rows, n_values, transpose=transposed)
    fmt = {".tsv": "tsv", ".tab": "tsv", ".txt": "txt", ".csv": "csv"}.get(ext, "text")
    return _finish(
        X, obs_names, var_names, name=name, fmt=fmt, file_orientation=file_orient,
        transposed=transposed, expect=expect, reason=reason,
        extra={"delimiter": "whitespace" if delim is None else delim},
    )


def _line_blocks(fh: IO[str], size: int | None = None) -> Iterator[list[str]]:
    """Non-blank lines of a text stream in blocks of about ``size`` characters."""
    size = _s._TEXT_BLOCK_CHARS if size is None else size
    carry: list[str] = []
    while True:
        chunk = fh.read(size)
        if not chunk:
            tail = "".join(carry)
            if tail.strip():
                yield [ln for ln in tail.split("\n") if ln.strip()]
            return
        cut = chunk.rfind("\n")
        if cut < 0:  # a line longer than the block: keep reading
            carry.append(chunk)
            continue
        text = "".join(carry) + chunk[:cut]
        carry = [chunk[cut + 1:]]
        lines = [ln for ln in text.split("\n") if ln.strip()]
        del text
        if lines:
            yield lines


_ONE_FIELD_SEP = "\x1f"  # ASCII unit separator: never in a table we accept the fast way


def _parse_block_fast(lines: list[str], delim: str | None, *, has_index: bool, n_values: int):
    """(float32 block, row names) of well-formed lines, or None to take the careful path.

    Every value goes on its own line and pandas' C parser reads one float32
    column: no per-column cost (a DataFrame of 100,000 columns a block would
    take minutes).  Every line's field count is checked first (a block's total
    alone would let a short row and a long row cancel out, moving values
    between cells).  Any oddity (quotes around a delimiter, a missing or extra
    field, a non-number) returns None.
    """
    if not lines:
        return np.empty((0, n_values), dtype=np.float32), []
    text = "\n".join(lines)
    if _ONE_FIELD_SEP in text or '""' in text:  # (doubled quotes: an escaped quote in a name)
        return None
    names: list[str] = []
    if has_index:
        rest = []
        for ln in lines:
            parts = ln.split(delim, 1) if delim is not None else ln.split(None, 1)
            if len(parts) != 2:
                return None
            names.append(parts[0].strip().strip('"'))
            rest.append(parts[1])
        if not _fields_agree(rest, delim, n_values):
            return None
        text = "\n".join(rest)
        del rest
    elif not _fields_agree(lines, delim, n_values):
        return None
    if delim is None:
        text = text.replace(" ", "\n").replace("\t", "\n")
    else:
        text = text.replace(delim, "\n")
    try:
        with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            col = pd.read_csv(
                io.BytesIO(text.encode("utf-8")), header=None, names=[0], sep=_ONE_FIELD_SEP,
                dtype=np.float32, na_filter=False, engine="c", skipinitialspace=True,
            )[0].to_numpy()
    except Exception:  # noqa: BLE001 - the careful path says what is wrong
        return None
    if col.size != len(lines) * n_values or col.dtype != np.float32:
        return None
    return col.reshape(len(lines), n_values), names


def _fields_agree(lines: list[str], delim: str | None, n_values: int) -> bool:
    """Whether every line (ids already cut off) holds ``n_values`` fields.

    Delimiters are counted per line by ``str.count`` (C speed, no copy of the
    block); for runs of whitespace the line's tokens are counted.
    """
    if delim is not None:
        want = n_values - 1
        return all(ln.count(delim) == want for ln in lines)
    return all(len(ln.split()) == n_values for ln in lines)


def _parse_block(lines: list[str], kwargs: dict, *, n_values: int, diagnose: Callable[[], None], name: str):
    """(float32 block, row names) through pandas' full CSV parser (quotes and all)."""
    try:
        with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            df = pd.read_csv(io.StringIO("\n".join(lines)), **kwargs)
    except Exception as e:  # noqa: BLE001
        diagnose()
        raise DataError(f"{name}: could not parse as a numeric table ({e})") from None
    if df.shape[1] != n_values:
        diagnose()
        raise DataError(f"{name}: expected {n_values} value columns, parsed {df.shape[1]}")
    names = [str(s).strip().strip('"') for s in df.index] if kwargs.get("index_col") == 0 else []
    return df.to_numpy(dtype=np.float32), names


def _stack_blocks(blocks: list[np.ndarray], n_rows: int, n_cols: int, *, transpose: bool) -> np.ndarray:
    """One C-contiguous float32 matrix (transposed if asked) from row blocks.

    Blocks are released as they are copied, so the peak is one matrix plus the
    blocks (about twice the matrix), never three copies.
    """
    if len(blocks) == 1 and not transpose:
        return np.ascontiguousarray(blocks.pop(), dtype=np.float32)
    out = np.empty((n_cols, n_rows) if transpose else (n_rows, n_cols), dtype=np.float32)
    pos = 0
    blocks.reverse()
    while blocks:
        b = blocks.pop()
        k = b.shape[0]
        if transpose:
            out[:, pos:pos + k] = b.T
        else:
            out[pos:pos + k] = b
        pos += k
        del b
    return out
