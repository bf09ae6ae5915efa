"""Criteo TSV bytes -> arrays: pyarrow's CSV reader splits rows into fields, numpy turns fields into values.

The rules (see dmt/data/criteo.py) are those of a line-by-line Python parser, kept exactly:

    line   = bytes up to b"\\n"; trailing b"\\r" are dropped; fields split at b"\\t"
    fields > 1 + D + S                 -> malformed ("N fields, at most W allowed")
    fewer fields                       -> the missing ones are empty
    label  = field 0 without surrounding whitespace, b"0" or b"1", else malformed
    dense  = float(field) (Python's float), whitespace-only or empty -> 0; not a number or not
             finite -> malformed; stored as log(1 + max(x, 0))
    ids    = empty -> 0; else v = int(field, 16) if that parses, else crc32(field); id = 1 + v mod (size - 1)

Fast paths cover the common shapes and hand every other field to the Python rule itself, so the
two can never disagree: a block goes through pyarrow only if pyarrow would see the same lines (no
lone b"\\r", no byte-order mark, every row of full width); otherwise a numpy tokenizer splits it
with the rules above. Dense fields that are plain decimal integers of up to 8 digits and ids of 1 to 16
hex digits are converted in numpy, 8 bytes at a time; ids holding a byte that int(, 16) never
accepts get their CRC-32 computed in numpy too, for all cells at once; anything else (floats, signs,
prefixes, spaces) goes through Python's float() / int(, 16) one field at a time.

Columns are kept as one binary array of all cells in column-major order ("cells", length
width * n): label cells, then the D dense columns, then the S sparse columns, so the ids come out
feature-major ([S, n]), the layout of a keyed jagged batch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from numpy.lib.stride_tricks import sliding_window_view

_HEX = np.full(256, 255, dtype=np.uint8)  # byte -> hex digit value, 255 = not a hex digit
_DEC = np.full(256, 255, dtype=np.uint8)  # byte -> decimal digit value
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
for _i, _c in enumerate(b"0123456789"):
    _DEC[_c] = _i
_MINUS = ord("-")
_BOM = b"\xef\xbb\xbf"
THREADED_BYTES = 1 << 23  # blocks at least this large are split by pyarrow's threads (smaller: threads cost more)


_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_ASCII_ZEROS = np.uint64(0x3030303030303030)
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_HEX_DIGITS = b"0123456789abcdefABCDEF"


def _u64(x: int) -> np.uint64:
    return np.uint64(x)


def binary_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A binary or string array of n cells -> (starts [n] int64, lengths [n] int64, data uint8).

    Null cells get length 0, so they read as empty fields.
    """
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
    wide = pa.types.is_large_binary(arr.type)
    _, offsets_buf, data_buf = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(
        offsets_buf, dtype=np.int64 if wide else np.int32, count=n + 1, offset=arr.offset * (8 if wide else 4)
    ).astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    lengths = np.diff(offsets)
    if arr.null_count:
        lengths[~arr.is_valid().to_numpy(zero_copy_only=False)] = 0
    return offsets[:-1], lengths, data


def _words(data: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """uint64 [k]: the 8 bytes before ends[i], little-endian (the cell's last byte is the highest), with
    the bytes in front of the cell's own lengths[i] <= 8 set to ASCII "0": the cell right-aligned with
    leading zeros, its first character in the lowest byte that is not a leading zero."""
    padded = np.empty(data.size + 8, dtype=np.uint8)
    padded[:8] = ord("0")
    padded[8:] = data
    words = sliding_window_view(padded, 8)[ends].view("<u8").ravel()  # a copy: one row per cell
    keep = _ALL << ((8 - lengths).astype(np.uint64) * _u64(8))
    words &= keep
    words |= _ASCII_ZEROS & ~keep
    return words


def _hex8(words: np.ndarray) -> np.ndarray:
    """Words of 8 ASCII hex digits (see `_words`) -> their values, uint64 (computed in place)."""
    scratch = np.right_shift(words, _u64(6))
    scratch &= _u64(0x0101010101010101)
    scratch *= _u64(9)  # letters: low nibble + 9
    words &= _LOW_NIBBLES
    words += scratch
    for shift, mask in ((8, 0x00FF00FF00FF00FF), (16, 0x0000FFFF0000FFFF), (32, 0x00000000FFFFFFFF)):
        np.right_shift(words, _u64(shift), out=scratch)  # the less significant half of each lane
        scratch &= _u64(mask)
        words &= _u64(mask)
        words <<= _u64(shift // 2)
        words |= scratch
    return words


def _dec8(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Words of up to 8 ASCII decimal digits (see `_words`) -> (values uint64, ok [k] bool: all digits)."""
    ok = (words & _u64(0xF0F0F0F0F0F0F0F0)) == _ASCII_ZEROS
    ok &= (((words & _LOW_NIBBLES) + _u64(0x0606060606060606)) & _u64(0x1010101010101010)) == 0  # nibble <= 9
    words &= _LOW_NIBBLES
    for shift, mask, scale in ((8, 0x00FF00FF00FF00FF, 10), (16, 0x0000FFFF0000FFFF, 100), (32, 0xFFFFFFFF, 10000)):
        low = words >> _u64(shift)
        low &= _u64(mask)
        words &= _u64(mask)
        words *= _u64(scale)
        words += low
    return words, ok


def _not_matching(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, alphabet: bytes) -> np.ndarray:
    """Indices of the cells (starts ascending) holding a byte outside `alphabet`; one bytes.translate
    over the cells' span first, so nothing more is done when there is none."""
    if not starts.size:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(starts[0]), int(starts[-1] + lengths[-1])
    if not data[lo:hi].tobytes().translate(None, alphabet):
        return np.zeros(0, dtype=np.int64)
    allowed = np.zeros(256, dtype=bool)
    allowed[np.frombuffer(alphabet, dtype=np.uint8)] = True
    outside = np.flatnonzero(~allowed[data[lo:hi]]) + lo
    cells = np.searchsorted(starts, outside, side="right") - 1
    return np.unique(cells[outside < starts[cells] + lengths[cells]])  # bytes between the cells do not count


def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC = _crc_table()  # CRC-32 (zlib's polynomial), one byte at a time
# Bytes that int(token, 16) may accept: hex digits, 0x / 0X, underscores, signs, whitespace (and, to be
# safe, every non-ASCII byte). A token with any other byte is not a number: its id is its CRC-32.
_INT_LIKE = _HEX_DIGITS + b"xX_+-\t\n\x0b\x0c\r " + bytes(range(0x80, 0x100))


def _crc32(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """zlib.crc32 of each cell [k] (uint32), all cells at once, one byte position at a time."""
    order = np.argsort(-lengths, kind="stable")  # longest first: the cells still running are a prefix
    s, n = starts[order], lengths[order]
    crc = np.full(order.size, 0xFFFFFFFF, dtype=np.uint32)
    running = order.size
    for pos in range(int(n[0]) if n.size else 0):
        while running and n[running - 1] <= pos:
            running -= 1
        c = crc[:running]
        c[:] = _CRC[(c ^ data[s[:running] + pos]) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
    out = np.empty_like(crc)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def token_value(tok: bytes) -> int:
    """The Criteo rule for one non-empty categorical field: its hex value, else the CRC-32 of its bytes."""
    try:
        return int(tok, 16)
    except ValueError:
        return zlib.crc32(tok)


def _modulo(num: np.ndarray, moduli: np.ndarray) -> None:
    """num %= moduli in place (uint64 [n], int64 [n]), one scalar division per run of equal moduli."""
    if not num.size:
        return
    cuts = np.flatnonzero(np.diff(moduli)) + 1
    for a, b in zip(np.concatenate(([0], cuts)).tolist(), np.concatenate((cuts, [num.size])).tolist(), strict=True):
        num[a:b] %= _u64(int(moduli[a]))


MEMO_ENTRIES = 1 << 20  # tokens a memo keeps


def token_ids(arr: pa.Array, moduli: np.ndarray | int, memo: dict[bytes, int] | None = None) -> np.ndarray:
    """Categorical cells [n] -> ids [n] int64: empty or null -> 0, else 1 + value mod moduli[i].

    moduli: [n] int64 (table size - 1 of each cell's column) or one int, all >= 1. A dictionary
    array (one modulus) is hashed once per dictionary entry. `memo` (one modulus only) remembers
    the ids of tokens that take the slow path (not 1-16 hex digits), across calls.
    """
    if memo is not None and not isinstance(moduli, int):
        raise TypeError("a memo needs one modulus")
    if pa.types.is_dictionary(arr.type):
        if not isinstance(moduli, int):
            raise TypeError("a dictionary array takes one modulus")
        per_entry = token_ids(arr.dictionary, moduli, memo)
        ids = per_entry[arr.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)]
        if arr.null_count:
            ids[~arr.is_valid().to_numpy(zero_copy_only=False)] = 0
        return ids
    starts, lengths, data = binary_buffers(arr)
    ends = starts + lengths
    num = np.zeros(starts.size, dtype=np.uint64)
    present = np.flatnonzero(lengths)
    lo, hi = (int(starts[0]), int(ends[-1])) if starts.size else (0, 0)
    if present.size * 8 == hi - lo and (lengths[present] == 8).all():  # the usual: 8 digits each, back to back
        num[present] = _hex8(data[lo:hi].copy().view("<u8"))
    else:
        short = np.flatnonzero((lengths >= 1) & (lengths <= 8))
        num[short] = _hex8(_words(data, ends[short], lengths[short]))
        long = np.flatnonzero((lengths > 8) & (lengths <= 16))
        if long.size:
            high = _hex8(_words(data, ends[long] - 8, lengths[long] - 8))
            num[long] = (high << _u64(32)) | _hex8(_words(data, ends[long], np.full(long.size, 8)))
    m = np.broadcast_to(np.asarray(moduli, dtype=np.int64), starts.shape)
    _modulo(num, m)
    ids = num.view(np.int64)
    ids += 1
    ids[lengths == 0] = 0
    slow = np.union1d(_not_matching(data, starts, lengths, _HEX_DIGITS), np.flatnonzero(lengths > 16))
    if slow.size:  # not plain hex: a token with a byte int(, 16) never accepts is hashed here, the rest below
        words = _not_matching(data, starts[slow], lengths[slow], _INT_LIKE)
        crc = slow[words]
        value = _crc32(data, starts[crc], lengths[crc]).astype(np.uint64)
        _modulo(value, np.ascontiguousarray(m[crc]))
        ids[crc] = value.astype(np.int64) + 1
        slow = np.delete(slow, words)
    for i in slow.tolist():
        tok = data[starts[i] : ends[i]].tobytes()
        known = memo.get(tok) if memo is not None else None
        if known is None:
            known = 1 + token_value(tok) % int(m[i])
            if memo is not None and len(memo) < MEMO_ENTRIES:
                memo[tok] = known
        ids[i] = known
    return ids


def dense_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Dense cells [n] -> (values [n] float64 as Python's float() reads them, not_number [n] bool).

    Empty, null and whitespace-only cells are 0. Non-finite values are returned as they are.
    """
    starts, lengths, data = binary_buffers(arr)
    out = np.zeros(starts.size, dtype=np.float64)
    cells = np.flatnonzero((lengths >= 1) & (lengths <= 8))
    n = lengths[cells]
    negative = (data[starts[cells]] == _MINUS) & (n >= 2) if cells.size else np.zeros(0, dtype=bool)
    words = _words(data, starts[cells] + n, n)
    words += negative.astype(np.uint64) * (_u64(3) << ((8 - n).astype(np.uint64) * _u64(8)))  # "-" + 3 = "0"
    value, ok = _dec8(words)
    x = value.astype(np.float64)
    np.negative(x, out=x, where=negative)  # "-0" is -0.0, as float("-0") is
    out[cells[ok]] = x[ok]
    bad = np.zeros(starts.size, dtype=bool)
    for i in np.concatenate((cells[~ok], np.flatnonzero(lengths > 8))).tolist():
        tok = data[starts[i] : starts[i] + lengths[i]].tobytes()
        try:
            out[i] = float(tok) if tok.strip() else 0.0
        except ValueError:
            bad[i] = True
    return out, bad


def label_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Label cells [n] -> (labels [n] float32, bad [n] bool): b"0" / b"1" after stripping whitespace."""
    starts, lengths, data = binary_buffers(arr)
    first = data[np.minimum(starts, max(data.size - 1, 0))] if data.size else np.zeros(starts.size, dtype=np.uint8)
    one_byte = lengths == 1
    labels = (one_byte & (first == ord("1"))).astype(np.float32)
    bad = ~(one_byte & ((first == ord("0")) | (first == ord("1"))))
    for i in np.flatnonzero(bad).tolist():
        tok = data[starts[i] : starts[i] + lengths[i]].tobytes().strip()
        if tok in (b"0", b"1"):
            labels[i], bad[i] = float(tok == b"1"), False
    return labels, bad


# ---- rows -> cells ----------------------------------------------------------------------------


@dataclass
class Cells:
    """A block of n lines split into fields: cells [width * n] column-major, fields per line."""

    cells: pa.Array  # binary; missing fields of short lines are empty
    n: int
    fields: np.ndarray | None  # int64 [n] fields per line where some line may be too long, else None

    def column(self, j: int, count: int = 1) -> pa.Array:
        """Cells of columns j .. j + count - 1, column after column ([count * n])."""
        return self.cells.slice(j * self.n, count * self.n)


def line_count(data: bytes) -> int:
    """Lines in data: newlines, plus a last line without one."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def split_cells(data: bytes, width: int, lines: int | None = None) -> Cells:
    """Split whole lines (`lines` of them, counted if not given) into `width` columns with the rules
    of the module docstring."""
    n = line_count(data) if lines is None else lines
    if n == 0:
        return Cells(pa.array([], pa.binary()), 0, None)
    if not data.startswith(_BOM) and (b"\r" not in data or data.count(b"\r") == data.count(b"\r\n")):
        names = [f"c{j}" for j in range(width)]
        try:
            table = pa_csv.read_csv(
                pa.py_buffer(data),
                read_options=pa_csv.ReadOptions(
                    column_names=names, use_threads=len(data) >= THREADED_BYTES, block_size=max(1 << 20, len(data) // 4)
                ),
                parse_options=pa_csv.ParseOptions(
                    delimiter="\t", quote_char=False, escape_char=False, ignore_empty_lines=False
                ),
                convert_options=pa_csv.ConvertOptions(column_types={c: pa.binary() for c in names}),
            )
        except pa.ArrowInvalid:  # a line of another width: the tokenizer below handles it
            table = None
        if table is not None and table.num_rows == n:
            cells = pa.concat_arrays([chunk for column in table.columns for chunk in column.chunks])
            return Cells(cells, n, None)
    return _split_numpy(data, width, n)


def _split_numpy(data: bytes, width: int, n: int) -> Cells:
    """The general tokenizer: any line shape, lone carriage returns, a byte-order mark."""
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], newlines + 1))[:n]
    stops = np.concatenate((newlines, [buf.size]))[:n]  # exclusive, before the newline
    ends = stops.copy()
    while True:  # drop trailing carriage returns
        strip = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
        if not strip.any():
            break
        ends[strip] -= 1
    tabs = np.flatnonzero(buf == 9)
    fields = 1 + np.bincount(np.searchsorted(starts, tabs, side="right") - 1, minlength=n).astype(np.int64)
    field_starts = np.sort(np.concatenate((starts, tabs + 1)))
    field_ends = np.sort(np.concatenate((tabs, ends)))
    lengths = field_ends - field_starts
    keep = np.ones(buf.size + 1, dtype=np.int8)  # bytes of fields: not tabs, newlines or stripped returns
    cut = np.bincount(ends, minlength=buf.size + 1) - np.bincount(stops, minlength=buf.size + 1)
    keep[:-1] = np.cumsum(cut[:-1]) == 0
    keep[tabs] = 0
    keep[newlines] = 0
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    values = pa.Array.from_buffers(
        pa.binary(), lengths.size, [None, pa.py_buffer(offsets), pa.py_buffer(buf[keep[:-1].astype(bool)].tobytes())]
    )
    first = np.concatenate(([0], np.cumsum(fields)[:-1]))  # index of each line's first field
    column = np.arange(width)[:, None]
    present = column < fields[None, :]  # [width, n]
    index = np.where(present, first[None, :] + column, 0).ravel()
    cells = values.take(pa.array(index, mask=~present.ravel()))
    return Cells(cells, n, fields)


# ---- cells -> arrays --------------------------------------------------------------------------


@dataclass
class ParsedRows:
    """The good rows of a block (malformed ones dropped) and which lines were malformed."""

    dense: np.ndarray  # float32 [n_good, D], log(1 + max(x, 0))
    ids: np.ndarray  # int64 [S, n_good], feature-major
    labels: np.ndarray  # float32 [n_good]
    bad: np.ndarray  # int64 [n_bad] line numbers (0-based, in the block) of malformed lines
    first_reason: str  # why the first malformed line is malformed ("" if none)


class CriteoTsvParser:
    """Parses blocks of whole Criteo TSV lines; see the module docstring for the rules."""

    def __init__(self, num_dense: int, num_sparse: int, table_sizes: list[int]) -> None:
        self.num_dense, self.num_sparse = num_dense, num_sparse
        self.width = 1 + num_dense + num_sparse
        sizes = table_sizes if len(table_sizes) == num_sparse else table_sizes * num_sparse
        self.moduli = np.asarray(sizes, dtype=np.int64) - 1  # [S]

    def parse(self, data: bytes, lines: int | None = None) -> ParsedRows:
        """Whole lines (`lines` of them if known; the last may lack its newline) -> ParsedRows."""
        c = split_cells(data, self.width, lines)
        n, d, s = c.n, self.num_dense, self.num_sparse
        labels, bad = label_values(c.column(0))
        dense, not_number = dense_values(c.column(1, d))
        dense = dense.reshape(d, n)
        not_number = not_number.reshape(d, n)
        bad |= not_number.any(axis=0) | ~np.isfinite(dense).all(axis=0)
        if c.fields is not None:
            bad |= c.fields > self.width
        ids = token_ids(c.column(1 + d, s), np.repeat(self.moduli, n)).reshape(s, n)
        good = ~bad
        bad_lines = np.flatnonzero(bad)
        return ParsedRows(
            dense=np.log1p(np.maximum(dense[:, good].T, 0.0)).astype(np.float32),
            ids=np.ascontiguousarray(ids[:, good]),
            labels=labels[good],
            bad=bad_lines,
            first_reason=self._reason(c, int(bad_lines[0])) if bad_lines.size else "",
        )

    def _reason(self, c: Cells, i: int) -> str:
        """Why line i is malformed, worded as the line-by-line parser words it."""
        if c.fields is not None and c.fields[i] > self.width:
            return f"{c.fields[i]} fields, at most {self.width} allowed"
        label = (c.cells[i].as_py() or b"").strip()
        if label not in (b"0", b"1"):
            return f"label {label.decode(errors='replace')!r} is not 0 or 1"
        for j in range(self.num_dense):
            tok = c.cells[(1 + j) * c.n + i].as_py() or b""
            try:
                x = float(tok) if tok.strip() else 0.0
            except ValueError:
                return f"dense column {j + 1} value {tok.decode(errors='replace')!r} is not a number"
            if not np.isfinite(x):
                return f"dense column {j + 1} value {tok.decode(errors='replace')!r} is not finite"
        raise AssertionError(f"line {i} is not malformed")
