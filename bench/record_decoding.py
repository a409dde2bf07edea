"""Record-batch decoding alone: kafka-python's parser, the bulk decoder, and the pure-NumPy candidate.

    python bench/record_decoding.py [--records 400000] [--batch-bytes 262144] [--codec none]

Builds fetches of heart-rate messages the way the producer batches them (kafka-python's own batch builder,
`--batch-bytes` per batch, 8 MiB per fetch as the consumer asks), then times, in this one process:
1. kafka-python 3.0.12's `PartitionRecords` iterating every record (what the bare consumer pays per record);
2. `pipeline.record_batches.decode_fetch` (numba), after its first call (compilation or cache load, shown);
3. a pure-NumPy decoder (the candidate measured for the choice of tool, uncompressed batches without headers
   only): a varint decoded at every byte, "next record start" per byte, the chain of record starts from the
   first by pointer doubling (O(bytes x log records)), fields and values gathered per record.
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


def _varints(data: np.ndarray, width: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Zigzag varint value and byte length starting at every position (up to `width` bytes)."""
    n = len(data)
    padded = np.concatenate([data, np.zeros(width, np.uint8)]).astype(np.int64)
    value = np.zeros(n, np.int64)
    length = np.ones(n, np.int64)
    going = np.ones(n, bool)
    for k in range(width):
        b = padded[k : k + n]
        value |= np.where(going, (b & 0x7F) << (7 * k), 0)
        cont = going & (b >= 0x80)
        length += cont if k < width - 1 else 0
        going = cont
    return (value >> 1) ^ -(value & 1), length


def numpy_decode(fetch: bytes) -> tuple[np.ndarray, np.ndarray, pa.Array, pa.Array]:
    """Uncompressed v2 batches without headers only: the candidate, not a full decoder."""
    header = struct.Struct(">qiibIhiqqqhii")
    offsets_out, stamps_out, keys_out, values_out = [], [], [], []
    pos = 0
    while len(fetch) - pos >= 61:
        base, length, _, _, _, _, _, first_ts, _, _, _, _, count = header.unpack_from(fetch, pos)
        end = pos + 12 + length
        data = np.frombuffer(fetch, np.uint8, end - pos - 61, pos + 61)
        val, vlen = _varints(data)
        n = len(data)
        nxt = np.minimum(np.arange(n) + vlen + val, n)  # next record start if a record started here
        nxt = np.append(nxt, n)  # sentinel
        starts = np.array([0])
        jump = nxt
        while len(starts) < count:  # pointer doubling: starts holds the first 2^j records of the chain
            starts = np.concatenate([starts, jump[starts]])
            jump = jump[jump]
        starts = np.sort(starts)[:count]
        p = starts + vlen[starts]  # after the length
        p = p + vlen[p]  # attributes
        ts_delta, p = val[p], p + vlen[p]
        off_delta, p = val[p], p + vlen[p]
        key_len, p = val[p], p + vlen[p]
        key_start = p
        p = p + np.maximum(key_len, 0)
        value_len, p = val[p], p + vlen[p]
        value_start = p
        offsets_out.append(base + off_delta)
        stamps_out.append(first_ts + ts_delta)
        keys_out.append(_gather(data, key_start, key_len))
        values_out.append(_gather(data, value_start, value_len))
        pos = end
    return (
        np.concatenate(offsets_out),
        np.concatenate(stamps_out),
        pa.concat_arrays(keys_out),
        pa.concat_arrays(values_out),
    )


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    lengths = np.maximum(lengths, 0)
    offsets = np.zeros(len(starts) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.Array.from_buffers(pa.binary(), len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(data[index])])


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
