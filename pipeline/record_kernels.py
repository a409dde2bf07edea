"""The compiled loops behind `record_batches`: Kafka v2 records' fields, and a gather into one buffer.

numba compiles them on first use and caches the machine code beside this file (`cache=True`), so only the
first run on a machine pays the compilation (about a second); later runs load it in milliseconds. Imported
only by the consumer when it decodes a fetch: a run that finds nothing never imports numba.

Record (v2) = length varint, attributes varint, timestamp delta varint, offset delta varint, key length
varint + key, value length varint + value, header count varint + headers (key length varint + key, value
length varint + value). Varints are zigzag-encoded, as kafka-python's `decode_varint` reads them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Columns of the per-record int64 field table returned by parse_records.
OFFSET, TIMESTAMP, KEY_START, KEY_LEN, VALUE_START, VALUE_LEN, HEADER_START, HEADER_COUNT, SIZE = range(9)
N_FIELDS = 9

# Error codes (record_batches._RECORD_ERRORS has the words).
OK, OUT_OF_BOUNDS, BAD_HEADER_COUNT, BAD_HEADER_KEY, BAD_LENGTH, TRAILING_BYTES = 0, 1, 2, 3, 4, 5


@njit(cache=True, nogil=True)
def _varint(data: np.ndarray, pos: int, end: int) -> tuple[int, int]:
    """(value, next position); next position -1 when the varint runs past `end` or past 64 bits."""
    result = 0
    shift = 0
    while pos < end:
        b = int(data[pos])
        pos += 1
        if shift == 63 and (b & 0x7F) > 1:
            return 0, -1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift >= 64:
            return 0, -1
    return 0, -1


@njit(cache=True, nogil=True)
def parse_records(data: np.ndarray, batches: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """Read every record of the given batches. `batches` rows: (records start, records end, record count,
    base offset, first timestamp, max timestamp, log-append-time flag). Returns (fields, records read,
    error code, batch row of the error); on an error the records before it are valid."""
    total = 0
    for i in range(batches.shape[0]):  # a record takes at least 7 bytes: a corrupt count cannot over-allocate
        total += max(min(batches[i, 2], (batches[i, 1] - batches[i, 0]) // 7 + 1), 0)
    fields = np.empty((total, N_FIELDS), dtype=np.int64)
    n = 0
    for i in range(batches.shape[0]):
        pos, end, count = batches[i, 0], batches[i, 1], batches[i, 2]
        base, first_ts, max_ts, log_append = batches[i, 3], batches[i, 4], batches[i, 5], batches[i, 6]
        for _ in range(count):
            length, pos = _varint(data, pos, end)
            if pos < 0:
                return fields, n, OUT_OF_BOUNDS, i
            start = pos
            _, pos = _varint(data, pos, end)  # attributes (unused in v2 records)
            if pos < 0:
                return fields, n, OUT_OF_BOUNDS, i
            ts_delta, pos = _varint(data, pos, end)
            if pos < 0:
                return fields, n, OUT_OF_BOUNDS, i
            offset_delta, pos = _varint(data, pos, end)
            if pos < 0:
                return fields, n, OUT_OF_BOUNDS, i
            key_len, pos = _varint(data, pos, end)
            if pos < 0:
                return fields, n, OUT_OF_BOUNDS, i
            key_start = pos
            if key_len > end - pos:
                return fields, n, OUT_OF_BOUNDS, i
            if key_len > 0:
                pos += key_len
            value_len, pos = _varint(data, pos, end)
            if pos < 0:
                return fields, n, OUT_OF_BOUNDS, i
            value_start = pos
            if value_len > end - pos:
                return fields, n, OUT_OF_BOUNDS, i
            if value_len > 0:
                pos += value_len
            header_count, pos = _varint(data, pos, end)
            if pos < 0:
                return fields, n, OUT_OF_BOUNDS, i
            if header_count < 0:
                return fields, n, BAD_HEADER_COUNT, i
            header_start = pos
            for _h in range(header_count):
                h_key_len, pos = _varint(data, pos, end)
                if pos < 0:
                    return fields, n, OUT_OF_BOUNDS, i
                if h_key_len < 0:
                    return fields, n, BAD_HEADER_KEY, i
                if h_key_len > end - pos:
                    return fields, n, OUT_OF_BOUNDS, i
                pos += h_key_len
                h_value_len, pos = _varint(data, pos, end)
                if pos < 0:
                    return fields, n, OUT_OF_BOUNDS, i
                if h_value_len > end - pos:
                    return fields, n, OUT_OF_BOUNDS, i
                if h_value_len > 0:
                    pos += h_value_len
            if pos - start != length:
                return fields, n, BAD_LENGTH, i
            fields[n, OFFSET] = base + offset_delta
            fields[n, TIMESTAMP] = max_ts if log_append else first_ts + ts_delta
            fields[n, KEY_START] = key_start
            fields[n, KEY_LEN] = key_len
            fields[n, VALUE_START] = value_start
            fields[n, VALUE_LEN] = value_len
            fields[n, HEADER_START] = header_start
            fields[n, HEADER_COUNT] = header_count
            fields[n, SIZE] = length
            n += 1
        if pos != end:
            return fields, n, TRAILING_BYTES, i
    return fields, n, OK, 0


@njit(cache=True, nogil=True)
def gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arrow binary layout of data[start : start + length] per row: (int32 offsets, bytes); a negative
    length (a null) takes no bytes."""
    n = starts.shape[0]
    offsets = np.empty(n + 1, dtype=np.int32)
    offsets[0] = 0
    total = 0
    for i in range(n):
        if lengths[i] > 0:
            total += lengths[i]
        offsets[i + 1] = total
    out = np.empty(total, dtype=np.uint8)
    at = 0
    for i in range(n):
        length = lengths[i]
        if length > 0:
            s = starts[i]
            out[at : at + length] = data[s : s + length]
            at += length
    return offsets, out
