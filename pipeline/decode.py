"""Bytes to Arrow: one stream's micro-batch of Kafka messages decoded in bulk.

The hot path hands the whole batch to Arrow's JSON reader (C++) as newline-delimited JSON; a vectorised
scan first routes out messages that could break the line alignment, so equal row and message counts prove
that rows and messages line up. When the reader stops at a bad message it names the row: the rows before
it are kept, that message is decoded exactly (to name its fault), and reading resumes after it. Both
paths produce the same table; rules about values (missing fields,
ranges, key mismatch, clock skew) are the expectation suites' job in `validate`, not the decoder's.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pipeline.batch import Decoded, RawBatch
from pipeline.contract import StreamContract

MAX_MESSAGE_BYTES = 64 * 1024
FALLBACK_CHUNK = 256
_ISO_EXTRA_DIGITS = r"(\.\d{3})\d+"

META_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
        ("src", pa.int32()),
    ]
)


def decoded_batch(batch: RawBatch, contract: StreamContract) -> Decoded:
    """The batch's decoded messages: what the consumer process decoded ahead (RawBatch.decoded), else decoded
    now. `decode` is a pure function of the batch's bytes, so both give the same tables."""
    return batch.decoded if batch.decoded is not None else decode(batch, contract)


def decode(batch: RawBatch, contract: StreamContract) -> Decoded:
    n = len(batch)
    ok_mask, is_iso = _scan(batch.values, contract)
    pieces: list[tuple[pa.Table, np.ndarray]] = []
    slow: list[np.ndarray] = [np.flatnonzero(~ok_mask).astype(np.int32)]
    for ts_type, mask in ((pa.string(), is_iso & ok_mask), (pa.int64(), ~is_iso & ok_mask)):
        if mask.any():
            lines = pc.binary_join_element_wise(batch.values.filter(pa.array(mask)), b"", b"\n")  # each + "\n"
            _decode_bulk(lines, np.flatnonzero(mask).astype(np.int32), contract.wire_schema(ts_type), pieces, slow)

    rows: list[dict[str, Any]] = []
    rows_src: list[int] = []
    rej_src: list[int] = []
    rej_reason: list[str] = []
    rej_detail: list[str] = []
    for i in np.sort(np.concatenate(slow)).tolist():
        parsed, reason, detail = _decode_one(batch.values[i].as_py(), contract)
        if parsed is None:
            rej_src.append(i)
            rej_reason.append(reason)
            rej_detail.append(detail)
        else:
            rows.append(parsed)
            rows_src.append(i)
    if rows:
        table = pa.Table.from_pylist(rows, schema=contract.wire_schema(pa.string()))
        pieces.append((table, np.asarray(rows_src, dtype=np.int32)))
    groups: dict[str, list[tuple[pa.Table, np.ndarray]]] = {}
    for t, s in pieces:  # one table per wire schema: the steps below cost per call, not per row
        groups.setdefault(str(t.schema), []).append((t, s))
    pieces = [(pa.concat_tables([t for t, _ in g]), np.concatenate([s for _, s in g])) for g in groups.values()]
    for k, (t, s) in enumerate(pieces):
        bad, field_name = _non_finite(t)
        if bad.any():
            rej_src.extend(s[bad].tolist())
            rej_reason.extend(["not_finite"] * int(bad.sum()))
            rej_detail.extend(field_name[bad].tolist())
            pieces[k] = (t.filter(pa.array(~bad)), s[~bad])
    parts = [_normalise(t, s, batch, contract) for t, s in pieces]
    table = (
        pa.concat_tables(parts)
        if parts
        else _normalise(contract.wire_schema(pa.string()).empty_table(), np.empty(0, np.int32), batch, contract)
    )
    if len(table) + len(rej_src) != n:
        raise AssertionError("decoder lost track of messages")  # an invariant, not an input error
    return Decoded(
        table=table,
        rejected_src=np.asarray(rej_src, dtype=np.int32),
        rejected_reason=rej_reason,
        rejected_detail=rej_detail,
    )


def _scan(arr: pa.Array, contract: StreamContract) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised pre-checks over the raw bytes: which messages the bulk reader may take, and which carry
    an ISO `ts` string. Empty, oversized or multi-line messages, or ones that are not an object, go to the
    exact path. Every other line starts with "{", so it yields at least one row or a parse error: a row
    count equal to the line count proves that rows and messages line up one to one. Messages the reader
    would stop at, as far as a byte scan can tell (not ending in "}", a field twice, a string where the
    contract wants a number or a boolean), go to the exact path too: each stop costs the reader a pass."""
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if n and arr.buffers()[2] else np.zeros(0, np.uint8)
    data = data[offsets[0] : offsets[-1]]  # a slice of a larger array (the consumer's chunks) sees its own bytes
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    ok = (lengths > 0) & (lengths <= MAX_MESSAGE_BYTES)
    if arr.null_count:
        ok &= np.asarray(arr.is_valid())
    starts = offsets[:-1]
    ok[ok] &= data[starts[ok]] == ord("{")
    ok[ok] &= data[offsets[1:][ok] - 1] == ord("}")  # a truncated message does not end its object
    # One pass finds the rare bytes: control characters (a raw line break would split a message) and
    # non-ASCII ones. Arrow's reader does not check UTF-8 inside strings: messages with non-ASCII bytes are
    # checked here in one cast (which validates UTF-8); only if that fails one by one, and the invalid ones
    # go to the exact path, which names the fault.
    rare = np.flatnonzero((data - np.uint8(32)) >= 96)  # below 32 or above 127, in one comparison
    breaks = rare[(data[rare] == 10) | (data[rare] == 13)]
    ok[np.searchsorted(offsets, breaks, side="right") - 1] = False
    non_ascii = np.unique(np.searchsorted(offsets, rare[data[rare] >= 0x80], side="right") - 1)
    suspects = non_ascii[ok[non_ascii]]
    if len(suspects):
        try:
            arr.take(pa.array(suspects)).cast(pa.string())
        except pa.ArrowInvalid:
            for i in suspects.tolist():
                try:
                    data[offsets[i] : offsets[i + 1]].tobytes().decode("utf-8")
                except UnicodeDecodeError:
                    ok[i] = False
    colons = np.flatnonzero(data == ord(":"))
    key_ends = colons[(colons >= 4) & (colons + 1 < len(data))]
    key_ends = key_ends[data[key_ends - 1] == ord('"')]  # `":` ends every key (and the odd string value)
    tails = sum(data[key_ends - k].astype(np.uint32) << (8 * (k - 1)) for k in (1, 2, 3))
    is_iso = np.zeros(n, dtype=bool)
    for name, kind in contract.fields.items():
        at = _key(data, key_ends, tails, name.encode())
        string_value = data[at + 1] == ord('"')
        msg = np.searchsorted(offsets, at, side="right") - 1
        ok[msg[np.bincount(msg, minlength=n)[msg] > 1]] = False  # a field twice: the reader refuses it
        if kind == "timestamp":
            is_iso[msg[string_value]] = True
        elif kind != "string":
            ok[msg[string_value]] = False  # a string where the contract wants a number or a boolean
    return ok, is_iso


def _key(data: np.ndarray, colons: np.ndarray, tails: np.ndarray, name: bytes) -> np.ndarray:
    """Those of `colons` (each after a quote) that end the key `"name"`; `tails` holds the three bytes before
    each colon, so one integer comparison per colon does most of the work."""
    quoted = b'"' + name + b'"'
    at = colons[tails == int.from_bytes(quoted[-3:], "big")]
    at = at[at >= len(quoted)]
    for k in range(4, len(quoted) + 1):
        at = at[data[at - k] == quoted[-k]]
    return at


def _non_finite(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Arrow's reader accepts NaN and Infinity literals; the contract does not (JSON has no such numbers)."""
    bad = np.zeros(len(table), dtype=bool)
    name = np.full(len(table), "", dtype=object)
    for col_name in table.column_names:
        col = table.column(col_name)
        if pa.types.is_floating(col.type):
            values = col.to_numpy(zero_copy_only=False)
            here = ~np.isfinite(values) & ~np.asarray(col.is_null().to_numpy(zero_copy_only=False))
            name[here & ~bad] = col_name
            bad |= here
    return bad, name


def _decode_bulk(
    lines: pa.Array,
    src: np.ndarray,
    wire: pa.Schema,
    out: list[tuple[pa.Table, np.ndarray]],
    slow: list[np.ndarray],
) -> None:
    """Read newline-delimited messages in bulk. Arrow's reader stops at the first bad message and names its
    row: the rows before it are read in bulk, that one message goes to the exact path, and reading resumes
    after it, so a batch with k bad messages costs about two bulk passes plus k exact decodes. Should an
    error not name a usable row, fall back to chunks of FALLBACK_CHUNK (the exact path decides in the end)."""
    if not len(lines):
        return
    data, begins, ends = _newline_delimited(lines)
    lo, n = 0, len(lines)
    span = n  # lines per attempt: all at first; after an error, about twice the gap between errors
    while lo < n:
        hi = min(n, lo + span)
        table, bad = _read_range(data, int(begins[lo]), int(ends[hi - 1]), wire)
        if table is not None and len(table) == hi - lo:
            out.append((table, src[lo:hi]))
            lo, span = hi, span * 2
            continue
        if bad is None or not 0 <= bad < hi - lo:
            _decode_chunked(lines[lo:hi], src[lo:hi], wire, out, slow)
            lo = hi
            continue
        if bad:
            prefix, _ = _read_range(data, int(begins[lo]), int(ends[lo + bad - 1]), wire)
            if prefix is not None and len(prefix) == bad:
                out.append((prefix, src[lo : lo + bad]))
            else:
                _decode_chunked(lines[lo : lo + bad], src[lo : lo + bad], wire, out, slow)
        slow.append(src[lo + bad : lo + bad + 1])
        lo += bad + 1
        span = max(1024, 2 * (bad + 1))


def _newline_delimited(lines: pa.Array) -> tuple[pa.Buffer, np.ndarray, np.ndarray]:
    """The data buffer of a binary array whose items end in a newline, with each item's [begin, end)."""
    raw = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    offsets = raw.astype(np.int64) - int(raw[0])
    data = lines.buffers()[2].slice(int(raw[0]), int(offsets[-1]))
    return data, offsets[:-1], offsets[1:]


def _decode_chunked(
    lines: pa.Array,
    src: np.ndarray,
    wire: pa.Schema,
    out: list[tuple[pa.Table, np.ndarray]],
    slow: list[np.ndarray],
) -> None:
    data, begins, ends = _newline_delimited(lines)
    for start in range(0, len(lines), FALLBACK_CHUNK):
        stop = min(start + FALLBACK_CHUNK, len(lines))
        table, _ = _read_range(data, int(begins[start]), int(ends[stop - 1]), wire)
        if table is not None and len(table) == stop - start:
            out.append((table, src[start : start + FALLBACK_CHUNK]))
        else:
            slow.append(src[start : start + FALLBACK_CHUNK])


_ERROR_ROW = re.compile(r" in row (\d+)\s*$")


def _read_range(data: pa.Buffer, begin: int, end: int, wire: pa.Schema) -> tuple[pa.Table | None, int | None]:
    """Parse data[begin:end] as one block; on failure return (None, the failing row if the error names it)."""
    view = data.slice(begin, end - begin)
    try:
        table = pj.read_json(
            pa.BufferReader(view),
            read_options=pj.ReadOptions(block_size=view.size + 1, use_threads=False),
            parse_options=pj.ParseOptions(explicit_schema=wire, unexpected_field_behavior="ignore"),
        )
        return table, None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        m = _ERROR_ROW.search(str(exc))
        return None, int(m.group(1)) if m else None


def _decode_one(value: bytes | None, contract: StreamContract) -> tuple[dict[str, Any] | None, str, str]:
    """Decode one message the slow, exact way; returns (row, "", "") or (None, reason, detail)."""
    if not value:
        return None, "empty_message", ""
    if len(value) > MAX_MESSAGE_BYTES:
        return None, "oversized_message", f"{len(value)} bytes > {MAX_MESSAGE_BYTES}"
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "not_utf8", ""
        try:
            obj = json.loads(text)  # accepts NaN and Infinity, which are then reported as such below
        except ValueError:
            return None, "invalid_json", str(exc)[:200]
    if not isinstance(obj, dict):
        return None, "not_an_object", type(obj).__name__
    row: dict[str, Any] = {}
    for name, kind in contract.fields.items():
        v = obj.get(name)
        if v is None:
            row[name] = None
        elif kind == "timestamp":
            if isinstance(v, bool) or not isinstance(v, int | str):
                return None, "wrong_type", name
            if isinstance(v, int) and not -(2**62) < v < 2**62:
                return None, "wrong_type", name
            row[name] = str(v)
        elif kind == "string":
            if not isinstance(v, str):
                return None, "wrong_type", name
            row[name] = v
        elif kind == "boolean":
            if not isinstance(v, bool):
                return None, "wrong_type", name
            row[name] = v
        else:  # number / integer
            if isinstance(v, bool) or not isinstance(v, int | float):
                return None, "wrong_type", name
            if isinstance(v, float) and not math.isfinite(v):
                return None, "not_finite", name
            row[name] = float(v) if kind == "number" else v
    return row, "", ""


def parse_event_time(ts: pa.Array) -> pa.Array:
    """`ts` strings (epoch-ms digits or ISO-8601 with an offset) to timestamp[ms, UTC]; unparseable -> null."""
    ts = ts.combine_chunks() if isinstance(ts, pa.ChunkedArray) else ts
    out_type = pa.timestamp("ms", tz="UTC")
    if len(ts) == 0:
        return pa.array([], out_type)
    is_int = pc.fill_null(pc.match_substring_regex(ts, r"^-?\d{1,18}$"), False)
    as_int = pc.cast(pc.if_else(is_int, ts, pa.scalar(None, pa.string())), pa.int64()).cast(out_type)
    iso = pc.if_else(is_int, pa.scalar(None, pa.string()), ts)
    iso = pc.replace_substring_regex(iso, _ISO_EXTRA_DIGITS, r"\1")  # Arrow parses at most milliseconds
    try:
        as_iso = pc.cast(iso, out_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        as_iso = pa.array([_parse_iso(s) for s in iso.to_pylist()], out_type)
    return pc.coalesce(as_int, as_iso)


def _parse_iso(s: str | None) -> datetime | None:
    if s is None:
        return None
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else None  # the contract requires an offset


def _normalise(table: pa.Table, src: np.ndarray, batch: RawBatch, contract: StreamContract) -> pa.Table:
    """Add the canonical value, event time, the Kafka key and provenance columns."""
    ts = table.column("ts")
    event_time = pc.cast(ts, pa.timestamp("ms", tz="UTC")) if pa.types.is_integer(ts.type) else parse_event_time(ts)
    table = table.drop_columns(["ts"])
    kafka_ts = pa.array(batch.timestamps_ms[src], pa.int64())
    skew_s = pc.divide(pc.subtract(kafka_ts, event_time.cast(pa.int64())).cast(pa.float64()), 1000.0)
    for alt, factor in contract.alternatives.items():
        i = table.schema.get_field_index(contract.value_field)
        converted = pc.coalesce(table.column(contract.value_field), pc.multiply(table.column(alt), factor))
        table = table.set_column(i, contract.value_field, converted)
    return (
        table.append_column("key", batch.key_array().take(src))
        .append_column("event_time", event_time)
        .append_column("clock_skew_s", skew_s)
        .append_column("topic", pa.repeat(pa.scalar(batch.topic, pa.string()), len(src)))
        .append_column("partition", pa.array(batch.partitions[src], pa.int32()))
        .append_column("offset", pa.array(batch.offsets[src], pa.int64()))
        .append_column("kafka_timestamp", kafka_ts.cast(pa.timestamp("ms", tz="UTC")))
        .append_column("src", pa.array(src, pa.int32()))
    )
