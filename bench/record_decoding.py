"""Record-batch decoding alone: kafka-python's parser, the bulk decoder, and the pure-NumPy candidate.

    python bench/record_decoding.py [--records 400000] [--batch-bytes 262144] [--codec none]

Builds fetches of heart-rate messages the way the producer batches them (kafka-python's own batch builder,
`--batch-bytes` per batch, 8 MiB per fetch as the consumer asks), then times, in this one process:
1. kafka-python 3.0.12's `PartitionRecords` iterating every record (what the bare consumer pays per record);
2. `pipeline.record_batches.decode_fetch` (numba), after its first call (compilation or cache load, shown);
3. a pure-NumPy decoder (the candidate measured for the choice of tool, uncompressed batches without headers
   only): "next record start" computed where a record can start (before a zero byte: its attributes), the
   chain of record starts followed by pointer doubling, fields and values gathered per record. (The first
   version computed it at every byte: 2-3x kafka-python.)
All three produce offsets, timestamps, keys and values; the bench checks that they agree. A benchmark, not a
test: nothing here asserts beyond that agreement.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FETCH_BYTES = 8 * 1024 * 1024
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def build_fetches(records: int, batch_bytes: int, codec: int) -> list[bytes]:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    fetches, batches, size, offset = [], [], 0, 0
    rng = np.random.default_rng(1)
    t0 = 1_795_305_600_000
    while offset < records:
        b = DefaultRecordBatchBuilder(2, codec, False, -1, -1, -1, batch_size=batch_bytes)
        first = offset
        while offset < records:
            patient = int(rng.integers(2000))
            value = b'{"patient_id":"P%05d","device_id":"hr-%05d","ts":%d,"bpm":%.1f}' % (
                patient,
                patient,
                t0 + offset * 250,
                60 + rng.random() * 40,
            )
            if b.append(offset - first, t0 + offset * 250, b"P%05d" % patient, value, []) is None:
                break
            offset += 1
        data = bytearray(b.build())
        struct.pack_into(">q", data, 0, first)
        if size + len(data) > FETCH_BYTES and batches:
            fetches.append(b"".join(batches))
            batches, size = [], 0
        batches.append(bytes(data))
        size += len(data)
    fetches.append(b"".join(batches))
    return fetches


def kafka_python(fetch: bytes, fetch_offset: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    from kafka.consumer.fetcher import Fetcher
    from kafka.record.memory_records import MemoryRecords
    from kafka.structs import TopicPartition

    part = Fetcher.PartitionRecords(fetch_offset, TopicPartition("t", 0), MemoryRecords(fetch))
    recs = part.take(None)
    return (
        np.fromiter((r.offset for r in recs), np.int64, len(recs)),
        np.fromiter((r.timestamp for r in recs), np.int64, len(recs)),
        [r.key for r in recs],
        [r.value for r in recs],
    )


def bulk(fetch: bytes, fetch_offset: int):
    from pipeline.record_batches import decode_fetch

    return decode_fetch(fetch, "t", 0, fetch_offset).records


# --- the pure-NumPy candidate ----------------------------------------------------------------------------


def _varint_at(data: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zigzag varint value and byte length at each of `pos`."""
    n = len(data)
    value = np.zeros(len(pos), np.int64)
    length = np.zeros(len(pos), np.int64)
    idx, p = np.arange(len(pos)), pos.copy()
    for k in range(10):
        b = np.where(p < n, data[np.minimum(p, n - 1)], 0).astype(np.int64)
        value[idx] |= (b & 0x7F) << (7 * k)
        length[idx] += 1
        more = (b & 0x80) != 0
        if not more.any():
            break
        idx, p = idx[more], p[more] + 1
    return (value >> 1) ^ -(value & 1), length


def numpy_decode(fetch: bytes) -> tuple[np.ndarray, np.ndarray, pa.Array, pa.Array]:
    """Uncompressed v2 batches without headers only: the candidate, not a full decoder.

    A record starts with its length varint and then its attributes, which are 0, so a record can only start
    one to three bytes before a zero byte: the "next record start" (start + varint length + length) is
    computed for those candidates only (a few per record instead of every byte), each batch's last record
    links to the next batch's first, and the chain from the first record is followed by pointer doubling."""
    header = struct.Struct(">qiibIhiqqqhii")
    rows, pos = [], 0
    while len(fetch) - pos >= header.size:
        base, length, _, _, _, _, _, first_ts, _, _, _, _, count = header.unpack_from(fetch, pos)
        if pos + 12 + length > len(fetch):
            break
        rows.append((pos + header.size, pos + 12 + length, count, base, first_ts))
        pos += 12 + length
    batches = np.array(rows, np.int64)
    begins, ends = batches[:, 0], batches[:, 1]
    data = np.frombuffer(fetch, np.uint8)
    zeros = np.flatnonzero(data == 0)
    cand = np.sort(np.concatenate([zeros - 1, zeros - 2, zeros - 3, begins]))
    cand = cand[np.concatenate([[True], cand[1:] != cand[:-1]]) & (cand >= 0)]
    k = np.searchsorted(begins, cand, side="right") - 1
    cand = cand[(k >= 0) & (cand < ends[np.maximum(k, 0)])]  # inside a batch's records
    value, length = _varint_at(data, cand)
    at = np.concatenate([cand, ends])  # a batch's end links to the next batch's first record
    to = np.concatenate([cand + length + value, begins[1:], ends[-1:]])
    order = np.argsort(at, kind="stable")
    at, to = at[order], to[order]
    j = np.minimum(np.searchsorted(at, to), len(at) - 1)
    jump = np.append(np.where(at[j] == to, j, len(at)), len(at))  # len(at): off the chain
    chain = np.searchsorted(at, begins[:1])
    total = int(batches[:, 2].sum()) + len(batches)
    while len(chain) < total:  # pointer doubling: the chain's first 2^i positions, then 2^(i+1)
        chain = np.concatenate([chain, jump[chain]])
        jump = jump[jump]
    chain = np.sort(chain[chain < len(at)])
    starts = at[chain][~np.isin(at[chain], ends)][: int(batches[:, 2].sum())]
    _, p = _varint_at(data, starts)
    p = starts + p
    fields = []
    for _ in range(5):  # attributes, timestamp delta, offset delta, key length (+ key), value length (+ value)
        v, n = _varint_at(data, p)
        fields.append((v, p + n))
        p = p + n + (np.maximum(v, 0) if len(fields) in (4, 5) else 0)
    batch = np.searchsorted(begins, starts, side="right") - 1
    _, (ts_delta, _), (off_delta, _), (key_len, key_at), (value_len, value_at) = fields
    return (
        batches[batch, 3] + off_delta,
        batches[batch, 4] + ts_delta,
        _gather(data, key_at, key_len),
        _gather(data, value_at, value_len),
    )


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """The segments, in order and not overlapping, as one binary array: data[mask], the mask from +1/-1 edges."""
    size = np.maximum(lengths, 0)
    offsets = np.zeros(len(starts) + 1, np.int32)
    np.cumsum(size, out=offsets[1:])
    edge = np.zeros(len(data) + 1, np.int8)
    np.add.at(edge, starts, 1)
    np.add.at(edge, starts + size, -1)
    nulls = lengths < 0
    validity = pa.py_buffer(np.packbits(~nulls, bitorder="little")) if nulls.any() else None
    values = data[np.cumsum(edge[:-1], dtype=np.int8).view(bool)]
    return pa.Array.from_buffers(
        pa.binary(), len(starts), [validity, pa.py_buffer(offsets), pa.py_buffer(values)], int(nulls.sum())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--batch-bytes", type=int, default=262_144)
    ap.add_argument("--codec", choices=sorted(CODECS), default="none")
    args = ap.parse_args()
    fetches = build_fetches(args.records, args.batch_bytes, CODECS[args.codec])
    size = sum(len(f) for f in fetches)
    print(f"{args.records:,} records in {len(fetches)} fetches ({size / 2**20:.1f} MiB, codec {args.codec})")

    t = time.perf_counter()
    import pipeline.record_kernels  # noqa: F401  (numba's import, timed apart)

    t_import = time.perf_counter() - t
    t = time.perf_counter()
    bulk(fetches[0], 0)
    t_first = time.perf_counter() - t

    results = {}
    timings = {}
    for name, fn in (("kafka-python", kafka_python), ("bulk (numba)", bulk), ("NumPy candidate", None)):
        if fn is None and args.codec != "none":
            continue
        t = time.perf_counter()
        c = time.process_time()
        out = [numpy_decode(f) if fn is None else fn(f, 0) for f in fetches]
        timings[name] = (time.perf_counter() - t, time.process_time() - c)
        results[name] = out
    # agreement
    want = results["kafka-python"]
    for name, out in results.items():
        for w, o in zip(want, out, strict=True):
            if name == "bulk (numba)":
                got = (o.offsets, o.timestamps_ms, o.keys.to_pylist(), o.values.to_pylist())
            elif name == "NumPy candidate":
                got = (o[0], o[1], o[2].to_pylist(), o[3].to_pylist())
            else:
                got = o
            assert np.array_equal(got[0], w[0]) and np.array_equal(got[1], w[1]), name
            assert got[2] == w[2] and got[3] == w[3], name
    base = timings["kafka-python"][0]
    print(f"{'numba import / first call':<28}{t_import * 1000:>9.0f} ms / {t_first * 1000:.0f} ms")
    for name, (wall, cpu) in timings.items():
        print(
            f"{name:<28}{args.records / wall:>12,.0f} records/s   cpu {cpu:6.2f} s   {base / wall:6.1f} x kafka-python"
        )


if __name__ == "__main__":
    main()
