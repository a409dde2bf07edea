"""The hook into kafka-python's fetcher: it still matches the pinned kafka-python, `take(n)` moves the position
as kafka-python's own PartitionRecords does, and a real consumer on the embedded broker hands out columns."""

from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.errors import KafkaError
from kafka.record.memory_records import MemoryRecords
from test_record_batches import EXAMPLES, TP, batch, build_batch

from pipeline import kafka_fetch
from pipeline.kafka_io import StreamConsumer, ensure_topics
from pipeline.kafka_publish import producer
from pipeline.kafka_settings import KafkaSettings
from pipeline.record_batches import RecordColumns
from sim.broker import EmbeddedBroker


def takes(part: Fetcher.PartitionRecords, n: int) -> list[tuple]:
    """What the fetcher sees over successive `take(n)` calls: (records, next fetch offset, leader epoch, error)."""
    seen = []
    for _ in range(200):
        if not part:
            break
        try:
            got = part.take(n)
            count = len(got)
            offsets = [r.offset for r in got] if count and not isinstance(got, kafka_fetch.RecordChunk) else None
            if isinstance(got, kafka_fetch.RecordChunk):
                (cols,) = list(got)
                offsets = cols.offsets.tolist()
            seen.append((offsets, part.next_fetch_offset, part.leader_epoch, None))
            if not count and part:
                seen.append(("stuck",))
                break
        except KafkaError as exc:
            seen.append((None, part.next_fetch_offset, part.leader_epoch, type(exc).__name__))
            break
    return seen


@settings(max_examples=max(EXAMPLES // 2, 20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(batch, min_size=1, max_size=4),
    n=st.integers(min_value=1, max_value=60),
    skip_into_first=st.integers(min_value=0, max_value=10),
    cut=st.one_of(st.none(), st.integers(min_value=1, max_value=100)),
    damage_last=st.booleans(),
)
def test_take_moves_the_position_as_kafka_python_does(batches, n, skip_into_first, cut, damage_last) -> None:
    parts, offset = [], 1000
    for spec in batches:
        offset += spec["gap"]
        data, offset = build_batch(spec, offset)
        parts.append(data)
    if damage_last:
        last = bytearray(parts[-1])
        last[-1] ^= 0x5A
        parts[-1] = bytes(last)
    buf = b"".join(parts)
    if cut is not None:
        buf = buf[: max(0, len(buf) - cut)]
    fetch_offset = 1000 + batches[0]["gap"] + skip_into_first
    theirs = takes(Fetcher.PartitionRecords(fetch_offset, TP, MemoryRecords(buf)), n)
    ours = takes(kafka_fetch.BulkPartitionRecords(fetch_offset, TP, MemoryRecords(buf)), n)
    # kafka-python's own generator gets stuck after an error (it never raises again and never drains);
    # ours raises again at every take. Compare up to and including the first error.
    assert ours[: len(theirs)] == theirs or (theirs[-1] == ("stuck",) and ours[: len(theirs) - 1] == theirs[:-1])


def test_the_hook_matches_the_pinned_kafka_python(session_broker: EmbeddedBroker) -> None:
    """Fails loudly when a kafka-python upgrade changes what the hook relies on."""
    consumer = KafkaConsumer(bootstrap_servers=[session_broker.bootstrap], enable_auto_commit=False)
    try:
        assert kafka_fetch.hook_problems(consumer._fetcher) == []
        responses = kafka_fetch.install(consumer)
        assert issubclass(consumer._fetcher.PartitionRecords, kafka_fetch.BulkPartitionRecords)
        assert responses.count == 0
    finally:
        consumer.close()


def test_install_refuses_a_fetcher_it_does_not_know() -> None:
    class NotAConsumer:
        _fetcher = object()

    with pytest.raises(kafka_fetch.BulkDecodingUnavailable, match="VITALSTREAM_KAFKA_BULK_DECODE=false"):
        kafka_fetch.install(NotAConsumer())


@pytest.mark.parametrize("compression", [None, "gzip", "lz4", "zstd", "snappy"])
def test_bulk_and_kafka_python_consumers_hand_out_the_same_batches(
    session_broker: EmbeddedBroker, compression: str | None
) -> None:
    """On the real broker: null keys, empty values, headers and compressed batches come back as the same
    RawBatch columns from the bulk decoder as from kafka-python's per-record parser."""
    s = KafkaSettings(
        session_broker.bootstrap, topic_prefix=f"kf{uuid.uuid4().hex[:8]}.", partitions=2, instance=(0, 1)
    )
    ensure_topics(s)
    prod = KafkaProducer(
        bootstrap_servers=[session_broker.bootstrap], compression_type=compression, linger_ms=5, batch_size=4096
    )
    topic = s.topic("heart_rate")
    sent = 0
    for i in range(300):
        headers = [("trace", b"%d" % i), ("empty", b"")] if i % 17 == 0 else []
        key = None if i % 11 == 0 else f"P{i % 7}".encode()
        value = b"" if i % 13 == 0 else b'{"patient_id":"P%d","bpm":%d}' % (i % 7, 60 + i % 40)
        prod.send(topic, key=key, value=value, headers=headers, timestamp_ms=1_795_305_600_000 + i)
        sent += 1
    prod.flush()
    prod.close()

    def read(bulk: bool) -> dict[tuple[int, int], tuple]:
        consumer = StreamConsumer(
            KafkaSettings(**{**s.__dict__, "bulk_decode": bulk}), group=f"g{uuid.uuid4().hex[:6]}"
        )
        rows: dict[tuple[int, int], tuple] = {}
        try:
            consumer.wait_for_assignment(timeout_s=10)
            deadline = time.monotonic() + 20
            while len(rows) < sent and time.monotonic() < deadline:
                for b in consumer.poll_batch(timeout_ms=300):
                    keys, values = b.keys.to_pylist(), b.values.to_pylist()
                    for i in range(len(b)):
                        rows[(int(b.partitions[i]), int(b.offsets[i]))] = (
                            keys[i],
                            values[i],
                            int(b.timestamps_ms[i]),
                            b.headers.get(i, []),
                        )
            assert consumer.lagging() == set()
            positions = {tp.partition: consumer.consumer.position(tp) for tp in consumer.consumer.assignment()}
        finally:
            consumer.close()
        assert len(rows) == sent
        return rows | {("positions", 0): tuple(sorted(positions.items()))}

    assert read(bulk=True) == read(bulk=False)


def test_poll_returns_record_columns_on_the_bulk_path(session_broker: EmbeddedBroker) -> None:
    """The hook is live in StreamConsumer (the default): poll() hands out RecordColumns, not records."""
    s = KafkaSettings(session_broker.bootstrap, topic_prefix=f"kf{uuid.uuid4().hex[:8]}.", partitions=1)
    ensure_topics(s)
    prod = producer(s)
    prod.send(s.topic("glucose"), key=b"P1", value=b"{}")
    prod.flush()
    prod.close()
    consumer = StreamConsumer(KafkaSettings(**{**s.__dict__, "instance": (0, 1)}), group=f"g{uuid.uuid4().hex[:6]}")
    try:
        consumer.wait_for_assignment(timeout_s=10)
        deadline = time.monotonic() + 10
        got: dict = {}
        while not got and time.monotonic() < deadline:
            got = consumer.consumer.poll(timeout_ms=300)
        (chunks,) = got.values()
        assert all(isinstance(c, RecordColumns) for c in chunks)
        assert consumer.consumer.position(TopicPartition(s.topic("glucose"), 0)) == 1
    finally:
        consumer.close()


def test_a_fetch_split_across_micro_batches_hands_each_batch_only_its_own_bytes(session_broker: EmbeddedBroker) -> None:
    """max_batch_records smaller than a fetch: each RawBatch holds its own messages' bytes, not the fetch's
    (pickling an Arrow slice carries its whole buffer to the pipeline process)."""
    s = KafkaSettings(
        session_broker.bootstrap, topic_prefix=f"kf{uuid.uuid4().hex[:8]}.", partitions=1, instance=(0, 1)
    )
    ensure_topics(s)
    prod = producer(s)
    for i in range(2000):
        prod.send(s.topic("respiration"), key=b"P1", value=b'{"n":%06d,"pad":"%s"}' % (i, b"x" * 80))
    prod.flush()
    prod.close()
    consumer = StreamConsumer(s, group=f"g{uuid.uuid4().hex[:6]}", max_batch_records=300)
    got = []
    try:
        consumer.wait_for_assignment(timeout_s=10)
        deadline = time.monotonic() + 15
        while sum(len(b) for b in got) < 2000 and time.monotonic() < deadline:
            got += consumer.poll_batch(timeout_ms=300)
    finally:
        consumer.close()
    assert [int(o) for b in got for o in b.offsets] == list(range(2000))
    for b in got:
        assert len(b) <= 300
        assert b.values.offset == 0 and b.values.buffers()[2].size == sum(len(v) for v in b.values.to_pylist())
