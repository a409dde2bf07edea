"""Kafka record batches to columns: one partition's fetched bytes decoded in bulk, no Python object per record.

A fetch response holds one partition's log as consecutive record batches (the v2 format, "magic 2", since
Kafka 0.11; legacy v0/v1 message sets before). `decode_fetch` walks the batches in Python (a few per fetch:
producers batch hundreds of records), checks each batch's CRC-32C, decompresses it with kafka-python's codecs,
and hands the records of every run of plain batches to one compiled loop (numba) that reads the record
fields, then to a second that gathers the keys and values into contiguous buffers: two Arrow binary columns,
plus offsets and timestamps as NumPy arrays.

What it keeps from kafka-python's own consumer (`Fetcher.PartitionRecords._unpack_records`, 3.0.12), so
that positions advance exactly as they did:
- a partial batch at the end of the fetch is left for the next fetch; records before the fetch offset (a
  fetch may start inside a batch) are dropped;
- control batches and, under read_committed, aborted transactions are skipped; legacy v0/v1 message sets
  are read by kafka-python's own parser (a broker older than 0.11 or an old-format log; rare and small);
- a batch that fails its CRC, whose records do not parse, or whose format (magic) is unknown, is a
  `CorruptRecordError` naming topic, partition and offset (kafka-python would read a magic above 2 as v2).
  The records before it are handed out first, the error comes after them: never skipped, never a gap;
- the next fetch offset is the last record's offset + 1, or past the last batch once the fetch is used up
  (v2 keeps a batch's last offset even when compaction removed its last records).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError

# v2 batch header (DefaultRecordBatch.HEADER_STRUCT): base offset, length, leader epoch, magic, CRC,
# attributes, last offset delta, first timestamp, max timestamp, producer id, producer epoch, base
# sequence, record count.
_HEADER = struct.Struct(">qiibIhiqqqhii")
_LOG_OVERHEAD = 12  # base offset + length: the part of every batch (any magic) before `length` counts
_MIN_BATCH = _LOG_OVERHEAD + 14  # kafka-python's smallest legal slice (a v0 record's overhead)
_CRC_FROM = 21  # the CRC covers attributes .. end
_CODEC_MASK, _LOG_APPEND_TIME, _TRANSACTIONAL, _CONTROL = 0x07, 0x08, 0x10, 0x20

_RECORD_ERRORS = {
    1: "found invalid record structure (a field runs past the end of the batch)",
    2: "found invalid number of record headers",
    3: "invalid negative header key size",
    4: "invalid record size: the record's length does not match its fields",
    5: "unconsumed bytes after all records consumed",
    6: "header key is not UTF-8",
}


@dataclass
class RecordColumns:
    """Records of one partition as columns. `headers` maps a position to its Kafka headers (rare)."""

    offsets: np.ndarray  # int64
    timestamps_ms: np.ndarray  # int64
    keys: pa.Array  # binary, null for a null key
    values: pa.Array  # binary, null for a null value
    headers: dict[int, list[tuple[str, bytes | None]]] = field(default_factory=dict)
    sizes: np.ndarray | None = None  # int64 bytes per record (kafka-python's `size_in_bytes`), for metrics

    def __len__(self) -> int:
        return len(self.offsets)

    def slice(self, start: int, stop: int) -> RecordColumns:
        return RecordColumns(
            offsets=self.offsets[start:stop],
            timestamps_ms=self.timestamps_ms[start:stop],
            keys=self.keys.slice(start, stop - start),
            values=self.values.slice(start, stop - start),
            headers={i - start: h for i, h in self.headers.items() if start <= i < stop},
            sizes=None if self.sizes is None else self.sizes[start:stop],
        )

    @staticmethod
    def concat(parts: Sequence[RecordColumns]) -> RecordColumns:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return _empty()
        headers: dict[int, list[tuple[str, bytes | None]]] = {}
        start = 0
        for p in parts:
            headers.update({start + i: h for i, h in p.headers.items()})
            start += len(p)
        return RecordColumns(
            offsets=np.concatenate([p.offsets for p in parts]),
            timestamps_ms=np.concatenate([p.timestamps_ms for p in parts]),
            keys=pa.concat_arrays([p.keys for p in parts]),
            values=pa.concat_arrays([p.values for p in parts]),
            headers=headers,
            sizes=np.concatenate([p.sizes if p.sizes is not None else np.zeros(len(p), np.int64) for p in parts]),
        )


@dataclass
class DecodedFetch:
    """What a fetch held: its records, the fetch offset once they are all consumed, and the error that
    stopped decoding (raised after the records before it have been handed out), if any."""

    records: RecordColumns
    next_offset: int
    error: KafkaError | None = None  # CorruptRecordError, or UnsupportedCodecError as kafka-python raises
    # base offset and leader epoch of every v2 batch read, in order (the consumer's position carries the epoch)
    batch_base_offsets: list[int] = field(default_factory=list)
    batch_leader_epochs: list[int] = field(default_factory=list)

    @property
    def last_leader_epoch(self) -> int | None:
        return self.batch_leader_epochs[-1] if self.batch_leader_epochs else None


def decode_fetch(
    buffer: bytes | bytearray | memoryview,
    topic: str,
    partition: int,
    fetch_offset: int,
    check_crcs: bool = True,
    read_committed: bool = False,
    aborted_transactions: Sequence[Any] = (),
) -> DecodedFetch:
    """Decode one partition's fetched bytes. `aborted_transactions` are the fetch response's
    (producer_id, first_offset) entries, used under read_committed."""
    view = memoryview(buffer).cast("B") if not isinstance(buffer, bytes) else buffer
    data = np.frombuffer(view, dtype=np.uint8)
    where = f"{topic}-{partition}"
    pieces: list[RecordColumns] = []
    group = _Group(data)
    cursor = fetch_offset  # kafka-python's next_fetch_offset, as its record generator would leave it
    aborted_queue = sorted(aborted_transactions, key=lambda t: t.first_offset)
    aborted_producers: set[int] = set()
    error: KafkaError | None = None
    last_magic, last_next_offset = -1, -1
    bases: list[int] = []
    epochs: list[int] = []
    pos, end_of_data = 0, len(data)

    def flush() -> CorruptRecordError | None:
        nonlocal cursor
        cols, err = group.decode(where)
        if len(cols):
            pieces.append(cols)
            cursor = int(cols.offsets[-1]) + 1
        return err

    while end_of_data - pos >= _LOG_OVERHEAD:
        (length,) = struct.unpack_from(">i", view, pos + 8)
        end = pos + _LOG_OVERHEAD + length
        if end > end_of_data:
            break  # a partial batch: the next fetch starts at it
        base_offset = int(struct.unpack_from(">q", view, pos)[0])
        try:
            if end - pos < _MIN_BATCH:
                raise _corrupt(where, base_offset, "record size is less than the minimum record overhead")
            magic = view[pos + 16]
            if magic <= 1 or magic >= 128:  # legacy v0/v1 (a negative magic is legacy to kafka-python too)
                if err := flush():
                    raise err
                cols, err, cursor = _legacy(view[pos:end], magic, where, check_crcs, cursor)
                if len(cols):
                    pieces.append(cols)
                last_magic = magic
                if err:
                    raise err
                pos = end
                continue
            if magic != 2:  # kafka-python would read it as v2; Kafka itself refuses it (the CRC does not cover it)
                raise _corrupt(where, base_offset, f"unknown record batch format (magic {magic})")
            if end - pos < _HEADER.size:
                raise _corrupt(where, base_offset, "record batch shorter than its header")
            (_, _, epoch, _, crc, attributes, last_delta, first_ts, max_ts, producer_id, _, _, count) = (
                _HEADER.unpack_from(view, pos)
            )
            if check_crcs and _crc32c(view[pos + _CRC_FROM : end]) != crc:
                raise CorruptRecordError(f"Record batch for partition {where} at offset {base_offset} failed crc check")
            last_magic = magic
            bases.append(base_offset)
            epochs.append(epoch)
            next_offset = last_next_offset = base_offset + last_delta + 1
            skip = bool(attributes & _CONTROL)
            if read_committed and producer_id > -1:
                while aborted_queue and aborted_queue[0].first_offset <= base_offset + last_delta:
                    aborted_producers.add(aborted_queue.pop(0).producer_id)
                if attributes & _CONTROL and _is_abort_marker(view[pos:end], where, base_offset):
                    aborted_producers.discard(producer_id)
                elif attributes & _TRANSACTIONAL and producer_id in aborted_producers:
                    skip = True
            if skip:  # skipped batches end a run, so that the cursor moves in the same order as kafka-python's
                if err := flush():
                    raise err
                cursor = next_offset
            else:
                try:
                    group.add(view, pos + _HEADER.size, end, attributes, count, base_offset, first_ts, max_ts)
                except UnsupportedCodecError:
                    raise  # no library for the codec: as kafka-python says it
                except Exception as exc:  # a codec's own error on a damaged payload
                    raise _corrupt(where, base_offset, f"cannot decompress: {exc!r}") from exc
        except KafkaError as exc:
            error = flush() or exc  # the records before the bad batch first
            break
        pos = end
    if error is None:
        error = flush()
        if error is None and last_magic == 2:
            # the generator's `else:` after the last batch: past the batch, even if compaction emptied its end
            cursor = last_next_offset
    records = RecordColumns.concat(pieces)
    reached = records.offsets >= fetch_offset  # kafka-python's dropwhile: leading records before the fetch offset
    first = int(np.argmax(reached)) if reached.any() else len(records)
    if first:
        records = records.slice(first, len(records))
    return DecodedFetch(records, cursor, error, bases, epochs)


class _Group:
    """A run of plain v2 batches, decoded by one call of the compiled loop."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.rows: list[tuple[int, int, int, int, int, int, int]] = []  # start, end, count, base, first, max, log
        self.payloads: list[tuple[int, bytes]] = []  # (row, decompressed records) for compressed batches

    def add(
        self,
        view: Any,
        start: int,
        end: int,
        attributes: int,
        count: int,
        base: int,
        first_ts: int,
        max_ts: int,
    ) -> None:
        if codec := attributes & _CODEC_MASK:
            payload = _decompress(codec, view[start:end])
            self.payloads.append((len(self.rows), payload))
            start, end = 0, len(payload)
        self.rows.append((start, end, count, base, first_ts, max_ts, int(bool(attributes & _LOG_APPEND_TIME))))

    def decode(self, where: str) -> tuple[RecordColumns, CorruptRecordError | None]:
        if not self.rows:
            return _empty(), None
        rows = np.array(self.rows, dtype=np.int64)
        data = self.data
        if self.payloads:  # one buffer: the uncompressed batches' bytes and the decompressed payloads
            payload_of = dict(self.payloads)
            chunks: list[bytes | memoryview] = []
            at = 0
            for i in range(len(rows)):
                chunk = payload_of[i] if i in payload_of else data[rows[i, 0] : rows[i, 1]].data
                chunks.append(chunk)
                rows[i, 0], rows[i, 1] = at, at + len(chunk)
                at += len(chunk)
            data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        from pipeline import record_kernels as k

        fields, n, err, err_row = k.parse_records(_read_only(data), rows)
        cols, bad_header = _columns(data, fields, n)
        error = _corrupt(where, int(rows[err_row, 3]), _RECORD_ERRORS[err]) if err else None
        if bad_header is not None:  # kafka-python decodes header keys as UTF-8: a CorruptRecordError there too
            n_ok, offset = bad_header
            cols = cols.slice(0, n_ok)
            error = _corrupt(where, offset, _RECORD_ERRORS[6])
        self.rows, self.payloads = [], []
        return cols, error


def _columns(data: np.ndarray, fields: np.ndarray, n: int) -> tuple[RecordColumns, tuple[int, int] | None]:
    """The compiled loop's per-record fields (see record_kernels.parse_records) as columns; and the
    (position, offset) of the first record whose header key is not UTF-8, if any."""
    from pipeline import record_kernels as k

    f = fields[:n]
    keys = _binary(data, f[:, k.KEY_START], f[:, k.KEY_LEN])
    values = _binary(data, f[:, k.VALUE_START], f[:, k.VALUE_LEN])
    headers: dict[int, list[tuple[str, bytes | None]]] = {}
    cols = RecordColumns(
        offsets=np.ascontiguousarray(f[:, k.OFFSET]),
        timestamps_ms=np.ascontiguousarray(f[:, k.TIMESTAMP]),
        keys=keys,
        values=values,
        headers=headers,
        sizes=np.ascontiguousarray(f[:, k.SIZE]),
    )
    for i in np.flatnonzero(f[:, k.HEADER_COUNT]).tolist():
        try:
            headers[i] = _headers(data, int(f[i, k.HEADER_START]), int(f[i, k.HEADER_COUNT]))
        except UnicodeDecodeError:
            return cols, (i, int(f[i, k.OFFSET]))
    return cols, None


def _binary(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A binary Arrow array of data[start : start + length] per row; a negative length is null."""
    from pipeline import record_kernels as k

    offsets, out = k.gather(_read_only(data), np.ascontiguousarray(starts), np.ascontiguousarray(lengths))
    n = len(starts)
    nulls = lengths < 0
    null_count = int(nulls.sum())
    validity = pa.py_buffer(np.packbits(~nulls, bitorder="little")) if null_count else None
    return pa.Array.from_buffers(pa.binary(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(out)], null_count)


def _headers(data: np.ndarray, pos: int, count: int) -> list[tuple[str, bytes | None]]:
    """Headers are rare: read in Python (the compiled loop has checked their structure)."""
    from kafka.record.util import decode_varint

    buf = data.data
    out = []
    for _ in range(count):
        key_len, pos = decode_varint(buf, pos)
        key = bytes(buf[pos : pos + key_len]).decode("utf-8")
        pos += key_len
        value_len, pos = decode_varint(buf, pos)
        value = bytes(buf[pos : pos + value_len]) if value_len >= 0 else None
        pos += max(value_len, 0)
        out.append((key, value))
    return out


def _legacy(
    batch_bytes: Any, magic: int, where: str, check_crcs: bool, cursor: int
) -> tuple[RecordColumns, CorruptRecordError | None, int]:
    """A v0/v1 message set through kafka-python's own parser (per record in Python: legacy logs only)."""
    from kafka.record.legacy_records import LegacyRecordBatch

    offsets, stamps, keys, values, sizes = [], [], [], [], []
    error: CorruptRecordError | None = None
    try:
        batch = LegacyRecordBatch(batch_bytes, magic)
    except (AssertionError, ValueError, IndexError, struct.error) as exc:  # kafka-python's own checks
        return _empty(), _corrupt(where, cursor, f"invalid legacy message set ({exc!r})"), cursor
    if check_crcs and not batch.validate_crc():
        error = CorruptRecordError(f"Record batch for partition {where} at offset {batch.base_offset} failed crc check")
    else:
        try:
            for record in batch:
                if check_crcs and not record.validate_crc():
                    error = _corrupt(where, record.offset, "record failed crc check")
                    break
                offsets.append(record.offset)
                stamps.append(record.timestamp if record.timestamp is not None else -1)
                keys.append(record.key)
                values.append(record.value)
                sizes.append(record.size_in_bytes)
                cursor = record.offset + 1
        except CorruptRecordError as exc:
            error = _corrupt(where, cursor, str(exc))
        except (AssertionError, ValueError, IndexError, struct.error) as exc:
            error = _corrupt(where, cursor, f"invalid legacy message ({exc!r})")
    cols = RecordColumns(
        offsets=np.asarray(offsets, dtype=np.int64),
        timestamps_ms=np.asarray(stamps, dtype=np.int64),
        keys=pa.array(keys, pa.binary()),
        values=pa.array(values, pa.binary()),
        sizes=np.asarray(sizes, dtype=np.int64),
    )
    return cols, error, cursor


def _is_abort_marker(batch_bytes: Any, where: str, base_offset: int) -> bool:
    """A control batch's record says whether its transaction aborted (read_committed only)."""
    from kafka.record.default_records import DefaultRecordBatch

    try:
        record = next(iter(DefaultRecordBatch(batch_bytes)), None)
    except (ValueError, IndexError, struct.error) as exc:
        raise _corrupt(where, base_offset, f"invalid control record ({exc!r})") from exc
    return bool(record is not None and record.abort)


def _decompress(codec: int, payload: Any) -> bytes:
    import kafka.codec as codecs

    checks = {1: ("gzip", codecs.has_gzip), 2: ("snappy", codecs.has_snappy), 3: ("lz4", codecs.has_lz4)}
    checks[4] = ("zstd", codecs.has_zstd)
    if codec not in checks:
        raise UnsupportedCodecError(f"Unrecognized compression type: {codec}")
    name, available = checks[codec]
    if not available():
        raise UnsupportedCodecError(f"Libraries for {name} compression codec not found")
    if codec == 1:
        return bytes(codecs.gzip_decode(payload))
    decode = {2: codecs.snappy_decode, 3: codecs.lz4_decode, 4: codecs.zstd_decode}[codec]
    return bytes(decode(bytes(payload)))


def _read_only(data: np.ndarray) -> np.ndarray:
    """The compiled loops take one array type (read-only, contiguous bytes), so they compile once."""
    if data.flags.writeable:
        data = data.view()
        data.flags.writeable = False
    return data


def warm_up() -> None:
    """Compile (the first time on a machine: seconds) or load from numba's cache the decoder's loops."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, batch_size=1024)
    builder.append(0, 0, b"k", b"v", [])
    decode_fetch(bytes(builder.build()), "warm-up", 0, 0)


def _crc32c(data: Any) -> int:
    from kafka.record.util import calc_crc32c

    return int(calc_crc32c(data))


def _corrupt(where: str, offset: int, what: str) -> CorruptRecordError:
    return CorruptRecordError(f"Record batch for partition {where} at offset {offset}: {what}")


def _empty() -> RecordColumns:
    return RecordColumns(
        offsets=np.empty(0, np.int64),
        timestamps_ms=np.empty(0, np.int64),
        # pa.nulls, not pa.array([]): pyarrow imports pandas (0.2 s of CPU) the first time it converts Python
        # objects, and an empty fetch is all a consumer process sees in a run that finds nothing
        keys=pa.nulls(0, pa.binary()),
        values=pa.nulls(0, pa.binary()),
        sizes=np.empty(0, np.int64),
    )
