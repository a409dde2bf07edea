"""The bulk record-batch decoder against kafka-python's own parser, on generated fetches.

The oracle is kafka-python 3.0.12's `Fetcher.PartitionRecords` (what the consumer used before): the same
records (offset, timestamp, key, value, headers), the same next fetch offset, and the same errors, raised
after the same records. Fetches are built with kafka-python's own batch builders: every codec, null keys,
empty and null values, headers, legacy v0/v1 message sets, control batches, a fetch that starts inside a
batch, a partial batch at the end, and damaged bytes.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError, KafkaError
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from pipeline.record_batches import decode_fetch

TP = TopicPartition("vitals.heart_rate", 2)
CODECS = [0, 1, 2, 3, 4]  # none, gzip, snappy, lz4, zstd: the codecs kafka-python supports
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))

record = st.tuples(
    st.integers(min_value=0, max_value=2**41),  # timestamp ms
    st.one_of(st.none(), st.binary(max_size=12)),  # key
    st.one_of(st.none(), st.just(b""), st.binary(min_size=1, max_size=300)),  # value
    st.lists(st.tuples(st.text(max_size=6), st.one_of(st.none(), st.binary(max_size=8))), max_size=2),  # headers
)
batch = st.fixed_dictionaries(
    {
        "magic": st.sampled_from([2, 2, 2, 2, 1, 0]),
        "codec": st.sampled_from(CODECS),
        "records": st.lists(record, min_size=1, max_size=40),
        "gap": st.integers(min_value=0, max_value=3),  # offsets skipped before the batch (compaction)
        "control": st.booleans(),
        "log_append_time": st.booleans(),
    }
)


def build_batch(spec: dict, offset: int) -> tuple[bytes, int]:
    """One batch's bytes (kafka-python's builders) and the offset after it."""
    magic, codec = spec["magic"], spec["codec"]
    if magic < 2:
        codec = min(codec, 3) if magic == 1 else min(codec, 2)  # legacy formats: gzip, snappy (v1: lz4)
        builder = MemoryRecordsBuilder(magic, codec, batch_size=1 << 20, offset=offset)
        for ts, key, value, _ in spec["records"]:
            builder.append(ts if magic else None, key, value)
        builder.close()
        return bytes(builder.buffer()), offset + len(spec["records"])
    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, (ts, key, value, headers) in enumerate(spec["records"]):
        b.append(i, ts, key, value, headers)
    data = bytearray(b.build())
    struct.pack_into(">q", data, 0, offset)
    attrs = struct.unpack_from(">h", data, 21)[0]
    attrs |= (0x20 if spec["control"] else 0) | (0x08 if spec["log_append_time"] else 0)
    struct.pack_into(">h", data, 21, attrs)
    struct.pack_into(">I", data, 17, calc_crc32c(memoryview(data)[21:]))
    return bytes(data), offset + len(spec["records"])


def oracle(buf: bytes, fetch_offset: int, take: int | None = None):
    """kafka-python's own reading: (records, next fetch offset, error text or None)."""
    part = Fetcher.PartitionRecords(fetch_offset, TP, MemoryRecords(buf))
    out = []
    error = None
    try:
        while part:
            got = part.take(take)
            if not got and not part:
                break
            # a v0 message has no timestamp: None to kafka-python, -1 (Kafka's NO_TIMESTAMP) in a column
            out.extend((r.offset, _ts(r.timestamp), r.key, r.value, list(r.headers)) for r in got)
            if not got:
                break
    except (KafkaError, AssertionError, struct.error, TypeError) as exc:  # TypeError: its ControlRecord on garbage
        error = exc
    return out, part.next_fetch_offset, error


def _ts(timestamp: int | None) -> int:
    return -1 if timestamp is None else timestamp


def bulk(buf: bytes, fetch_offset: int):
    d = decode_fetch(buf, TP.topic, TP.partition, fetch_offset)
    r = d.records
    keys, values = r.keys.to_pylist(), r.values.to_pylist()
    out = [
        (int(r.offsets[i]), int(r.timestamps_ms[i]), keys[i], values[i], r.headers.get(i, [])) for i in range(len(r))
    ]
    return out, d.next_offset, d.error


def compare(buf: bytes, fetch_offset: int) -> None:
    want, want_next, want_error = oracle(buf, fetch_offset)
    got, got_next, got_error = bulk(buf, fetch_offset)
    if got_error is not None and "unknown record batch format" in str(got_error):
        assert got == want[: len(got)]  # kafka-python reads a magic above 2 as v2; we stop there, as Kafka does
        return
    assert got == want
    if want_error is None:
        assert got_error is None
        assert got_next == want_next
    else:
        # Same records handed out first; then an error of the same kind. kafka-python sometimes lets a raw
        # struct or assertion error through on garbage: ours is always a CorruptRecordError naming the place.
        assert isinstance(got_error, KafkaError)
        if isinstance(want_error, CorruptRecordError):
            assert isinstance(got_error, CorruptRecordError)
        assert f"{TP.topic}-{TP.partition}" in str(got_error)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(batch, min_size=1, max_size=5),
    start=st.integers(min_value=0, max_value=10**9),
    skip_into_first=st.integers(min_value=0, max_value=45),
    cut=st.one_of(st.none(), st.integers(min_value=1, max_value=200)),
    damage=st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255))),
)
def test_bulk_decoder_matches_kafka_python(batches, start, skip_into_first, cut, damage) -> None:
    parts, offset = [], start
    for spec in batches:
        offset += spec["gap"]
        data, offset = build_batch(spec, offset)
        parts.append(data)
    buf = bytearray(b"".join(parts))
    if cut is not None:  # the fetch ends inside its last batch: that batch is for the next fetch
        buf = buf[: max(0, len(buf) - cut)]
    if damage is not None and buf:
        at, flip = damage
        buf[at % len(buf)] ^= flip
    compare(bytes(buf), start + batches[0]["gap"] + skip_into_first)


def test_null_keys_empty_values_and_headers() -> None:
    spec = {
        "magic": 2,
        "codec": 0,
        "records": [(1, None, b""), (2, b"p1", None), (3, b"", b'{"x":1}')],
        "gap": 0,
        "control": False,
        "log_append_time": False,
    }
    spec["records"] = [(*r, [("h", b"v"), ("n", None)] if i == 1 else []) for i, r in enumerate(spec["records"])]
    data, _ = build_batch(spec, 100)
    got, next_offset, error = bulk(data, 100)
    assert error is None and next_offset == 103
    assert got == [
        (100, 1, None, b"", []),
        (101, 2, b"p1", None, [("h", b"v"), ("n", None)]),
        (102, 3, b"", b'{"x":1}', []),
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec(codec: int) -> None:
    spec = {
        "magic": 2,
        "codec": codec,
        "records": [(i, f"p{i}".encode(), b'{"bpm":%d}' % i, []) for i in range(500)],
        "gap": 0,
        "control": False,
        "log_append_time": False,
    }
    data, _ = build_batch(spec, 7)
    compare(data, 7)
    assert len(bulk(data, 7)[0]) == 500


def test_corrupt_batch_is_an_error_naming_topic_partition_and_offset_after_the_records_before_it() -> None:
    spec = {"magic": 2, "codec": 0, "gap": 0, "control": False, "log_append_time": False}
    first, nxt = build_batch({**spec, "records": [(1, b"k", b"v", [])] * 3}, 40)
    second, _ = build_batch({**spec, "records": [(2, b"k", b"w", [])] * 2}, nxt)
    damaged = bytearray(second)
    damaged[-1] ^= 0xFF
    d = decode_fetch(first + bytes(damaged), TP.topic, TP.partition, 40)
    assert d.records.offsets.tolist() == [40, 41, 42]
    assert isinstance(d.error, CorruptRecordError)
    assert "vitals.heart_rate-2" in str(d.error) and "offset 43" in str(d.error)
    assert d.next_offset == 43


def test_control_batches_are_skipped_and_move_the_position() -> None:
    spec = {"magic": 2, "codec": 0, "gap": 0, "log_append_time": False}
    data, nxt = build_batch({**spec, "control": False, "records": [(1, b"k", b"v", [])] * 2}, 0)
    control, end = build_batch({**spec, "control": True, "records": [(1, b"\x00\x00\x00\x01", b"", [])]}, nxt)
    compare(data + control, 0)
    got, next_offset, error = bulk(data + control, 0)
    assert [r[0] for r in got] == [0, 1] and next_offset == end == 3 and error is None
