"""The Kafka edge: settings, the fail-fast reachability check, topics, producing and consuming RawBatches, and
the dead-letter topic, against the session's embedded broker (each test on its own topic prefix)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import defaultdict

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from pipeline.batch import RawBatch
from pipeline.contract import STREAMS
from pipeline.errors import BrokerUnavailable
from pipeline.kafka_io import StreamConsumer, ensure_topics
from pipeline.kafka_publish import DeadLetters, LiveTopics, produce, producer
from pipeline.kafka_settings import KafkaSettings, check_reachable
from pipeline.quarantine import quarantine_rows
from sim.broker import EmbeddedBroker, free_port

T0 = 1_795_305_600_000


def prefix() -> str:
    """A topic prefix of this test's own: tests share one broker for the session."""
    return f"kio{uuid.uuid4().hex[:8]}."


def settings(broker: EmbeddedBroker, partitions: int = 2, instance: tuple[int, int] | None = None) -> KafkaSettings:
    return KafkaSettings(
        broker.bootstrap, topic_prefix=prefix(), partitions=partitions, connect_timeout_s=5, instance=instance
    )


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 15.0) -> list:
    """Every record of `topic`, from the beginning, once `expected` have arrived (or the timeout passed)."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                records.extend(recs)
        return records
    finally:
        consumer.close()


# --- settings and the reachability check (no broker) -------------------------------------------------------


def test_settings_name_the_topics_and_the_dead_letter_topic() -> None:
    s = KafkaSettings("127.0.0.1:9092")
    assert s.topics() == [f"vitals.{stream}" for stream in STREAMS]
    assert s.topic("glucose") == "vitals.glucose" and s.stream_of("vitals.glucose") == "glucose"
    assert s.dead_letter_topic() == "vitals.dlq"
    other = KafkaSettings("127.0.0.1:9092", topic_prefix="ward7.")
    assert other.topics() == [f"ward7.{stream}" for stream in STREAMS] and other.dead_letter_topic() == "ward7.dlq"
    assert KafkaSettings("127.0.0.1:9092", dlq_topic="quarantine-topic").dead_letter_topic() == "quarantine-topic"
    # live outputs and acknowledgements follow the prefix unless named
    assert (other.risk_topic(), other.alerts_topic(), other.ack_topic()) == (
        "ward7.risk",
        "ward7.alerts",
        "ward7.alerts.ack",
    )
    assert other.input_topics() == [*other.topics(), "ward7.alerts.ack"]
    named = KafkaSettings("127.0.0.1:9092", risk_topic_name="icu-risk", alerts_topic_name="icu-alerts")
    assert (named.risk_topic(), named.alerts_topic()) == ("icu-risk", "icu-alerts")


def test_client_config_splits_the_bootstrap_list_and_passes_security_options_through() -> None:
    security = {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "/etc/ca.pem",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "vitalstream",
        "sasl_plain_password": "secret",
    }
    cfg = KafkaSettings("k1:9092,k2:9093", connect_timeout_s=2.5, security=security).client_config()
    assert cfg["bootstrap_servers"] == ["k1:9092", "k2:9093"]
    assert cfg["bootstrap_timeout_ms"] == 2500 and cfg["request_timeout_ms"] == 30_000
    assert {k: cfg[k] for k in security} == security
    assert KafkaSettings("k:1", connect_timeout_s=60).client_config()["request_timeout_ms"] == 60_000
    assert "security_protocol" not in KafkaSettings("k:1").client_config()


def test_a_closed_port_is_broker_unavailable_in_one_line_naming_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as err:
        check_reachable(KafkaSettings(address, connect_timeout_s=0.3))
    message = str(err.value)
    assert address in message and "\n" not in message
    assert time.monotonic() - started < 5
    two = f"{address},127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailable) as err:
        check_reachable(KafkaSettings(two, connect_timeout_s=0.3))
    assert all(a in str(err.value) for a in two.split(","))  # each address with its own error


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:abc", ":9092", "kafka,127.0.0.1:9092"])
def test_a_malformed_address_is_broker_unavailable_in_one_line(address: str) -> None:
    with pytest.raises(BrokerUnavailable, match="bad Kafka bootstrap address") as err:
        check_reachable(KafkaSettings(address, connect_timeout_s=0.3))
    assert "\n" not in str(err.value) and "host:port" in str(err.value)


# --- with the embedded broker -------------------------------------------------------------------------------


def test_check_reachable_accepts_a_listening_broker(session_broker: EmbeddedBroker) -> None:
    check_reachable(KafkaSettings(session_broker.bootstrap, connect_timeout_s=1))
    # any one address that answers will do
    check_reachable(KafkaSettings(f"127.0.0.1:{free_port()},{session_broker.bootstrap}", connect_timeout_s=0.3))


def test_ensure_topics_creates_the_input_dead_letter_and_live_topics(session_broker: EmbeddedBroker) -> None:
    s = settings(session_broker, partitions=3)
    ensure_topics(s)
    ensure_topics(s)  # a second time: nothing to do, no error
    admin = KafkaAdminClient(bootstrap_servers=[session_broker.bootstrap])
    try:
        mine = {t for t in admin.list_topics() if t.startswith(s.topic_prefix)}
    finally:
        admin.close()
    assert mine == {*s.input_topics(), s.dead_letter_topic(), s.risk_topic(), s.alerts_topic()}
    consumer = KafkaConsumer(bootstrap_servers=[session_broker.bootstrap])
    try:
        assert {t: len(consumer.partitions_for_topic(t) or ()) for t in mine} == dict.fromkeys(mine, 3)
    finally:
        consumer.close()


def test_ensure_topics_on_an_unreachable_broker_is_broker_unavailable() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailable, match=address):
        ensure_topics(KafkaSettings(address, connect_timeout_s=0.5))


def test_produced_messages_come_back_as_raw_batches_per_topic(session_broker: EmbeddedBroker) -> None:
    s = settings(session_broker, partitions=2, instance=(0, 1))  # instance 0 of 1: assigned every partition
    ensure_topics(s)
    sent = [
        (stream, f"P{i % 5}".encode(), f'{{"n": {i}}}'.encode(), T0 + i * 1000)
        for i in range(60)
        for stream in ("heart_rate", "glucose")
        if stream == "heart_rate" or i % 3 == 0
    ]
    prod = producer(s)
    try:
        assert produce(prod, s, sent) == len(sent)
    finally:
        prod.close()

    consumer = StreamConsumer(s, group=f"g-{s.topic_prefix}")
    try:
        assigned = consumer.wait_for_assignment(timeout_s=10)
        assert {(tp.topic, tp.partition) for tp in assigned} == {(t, p) for t in s.input_topics() for p in (0, 1)}
        got: list[RawBatch] = []
        deadline = time.monotonic() + 15
        while sum(len(b) for b in got) < len(sent) and time.monotonic() < deadline:
            got += consumer.poll_batch(timeout_ms=500)
        assert consumer.lagging() == set()
        assert consumer.poll_batch(timeout_ms=100) == []  # nothing more
    finally:
        consumer.close()

    by_topic: dict[str, list[tuple]] = defaultdict(list)
    for b in got:
        assert b.topic == s.topic(b.stream)
        assert len(b.keys) == len(b.values) == len(b.partitions) == len(b.offsets) == len(b.timestamps_ms) == len(b)
        for key, value, part, offset, ts in zip(
            b.keys.to_pylist(), b.values.to_pylist(), b.partitions, b.offsets, b.timestamps_ms, strict=True
        ):
            by_topic[b.topic].append((key, value, int(part), int(offset), int(ts)))
    assert set(by_topic) == {s.topic("heart_rate"), s.topic("glucose")}
    for stream in ("heart_rate", "glucose"):
        rows = by_topic[s.topic(stream)]
        expected = [(k, v, ts) for st, k, v, ts in sent if st == stream]
        assert sorted((k, v, ts) for k, v, _, _, ts in rows) == sorted(expected)
        partition_of: dict[bytes, int] = {}
        for key, _, part, _, _ in rows:
            assert partition_of.setdefault(key, part) == part  # a patient's messages share a partition
        for part in (0, 1):
            in_part = sorted((offset, value) for _, value, p, offset, _ in rows if p == part)
            assert [o for o, _ in in_part] == list(range(len(in_part)))  # offsets 0..n-1, none missing
            produced_order = [v for k, v, _ in expected if partition_of.get(k) == part]
            assert [v for _, v in in_part] == produced_order  # offsets follow the order of production


@pytest.mark.parametrize("after_join", [False, True], ids=["before-the-join", "after-the-join"])
def test_resume_from_starts_each_partition_at_the_checkpointed_offset(
    session_broker: EmbeddedBroker, after_join: bool
) -> None:
    """Offsets given before the join apply on assignment; given after it (a consumer process started early
    joins before the state checkpoint is read), they seek the partitions already assigned."""
    s = settings(session_broker, partitions=1, instance=(0, 1))
    ensure_topics(s)
    prod = producer(s)
    try:
        produce(prod, s, [("respiration", b"P1", b"%d" % i, T0 + i) for i in range(10)])
    finally:
        prod.close()
    consumer = StreamConsumer(s, group=f"g-{s.topic_prefix}")
    try:
        if after_join:
            consumer.wait_for_assignment(timeout_s=10)
        consumer.resume_from({f"{s.topic('respiration')}:0": 6})
        consumer.wait_for_assignment(timeout_s=10)
        got: list[RawBatch] = []
        deadline = time.monotonic() + 15
        while sum(len(b) for b in got) < 4 and time.monotonic() < deadline:
            got += consumer.poll_batch(timeout_ms=500)
    finally:
        consumer.close()
    assert [int(o) for b in got for o in b.offsets] == [6, 7, 8, 9]
    assert [v for b in got for v in b.values.to_pylist()] == [b"6", b"7", b"8", b"9"]


def test_dead_letters_carry_the_original_message_and_why_and_where_it_came_from(
    session_broker: EmbeddedBroker,
) -> None:
    s = settings(session_broker, partitions=2)
    ensure_topics(s)
    batch = RawBatch(
        stream="heart_rate",
        topic=s.topic("heart_rate"),
        keys=[b"P1", b"P2", b"P3", None],
        values=[b'{"ok": 1}', b"{broken", None, b"[1]"],
        partitions=np.array([1, 1, 0, 1], dtype=np.int32),
        offsets=np.array([40, 41, 17, 42], dtype=np.int64),
        timestamps_ms=np.array([T0, T0 + 1000, T0 + 2000, T0 + 3000], dtype=np.int64),
        headers={1: [("trace-id", b"abc"), ("origin", b"ward-7")]},
    )
    table = quarantine_rows(batch, np.array([1, 2, 3]), ["invalid_json", "empty_message", "not_an_object"], "")
    dead = DeadLetters(s)
    try:
        assert dead.send(table.slice(0, 0), timeout_s=10) == 0  # nothing to send: no producer, no error
        assert dead.send(table, timeout_s=10) == 3
    finally:
        dead.close()

    records = read_topic(session_broker.bootstrap, s.dead_letter_topic(), expected=3)
    assert len(records) == 3
    by_source = {dict(r.headers)["vitalstream.source"].decode(): r for r in records}
    topic = s.topic("heart_rate")
    assert set(by_source) == {f"{topic}:1:41", f"{topic}:0:17", f"{topic}:1:42"}

    broken = by_source[f"{topic}:1:41"]
    assert (broken.key, broken.value, broken.timestamp) == (b"P2", b"{broken", T0 + 1000)
    assert broken.headers[:2] == [("trace-id", b"abc"), ("origin", b"ward-7")]  # the original headers first
    assert dict(broken.headers)["vitalstream.reason"] == b"invalid_json"

    empty = by_source[f"{topic}:0:17"]
    assert (empty.key, empty.value, empty.timestamp) == (b"P3", None, T0 + 2000)
    assert dict(empty.headers)["vitalstream.reason"] == b"empty_message"
    assert "trace-id" not in dict(empty.headers)

    keyless = by_source[f"{topic}:1:42"]
    assert (keyless.key, keyless.value) == (None, b"[1]")
    assert dict(keyless.headers)["vitalstream.reason"] == b"not_an_object"


def test_live_topics_publish_every_row_chunk_by_chunk(session_broker: EmbeddedBroker) -> None:
    """Chunks smaller than the tables: every risk row and alert event arrives once, keyed by patient."""
    import pyarrow as pa
    from conftest import read_topic

    kafka = KafkaSettings(session_broker.bootstrap, topic_prefix=f"chunks{uuid.uuid4().hex[:6]}.", partitions=2)
    ensure_topics(kafka)
    risk = pa.table({"patient_id": [f"P{i}" for i in range(11)], "risk_score": [i / 10 for i in range(11)]})
    alerts = pa.table({"patient_id": ["P1", "P2", "P3", "P4"], "state": ["raised"] * 4})
    live = LiveTopics(kafka)
    live.chunk = 3
    try:
        assert live.publish(risk, alerts, timeout_s=30) == 15
    finally:
        live.close()
    got = read_topic(session_broker.bootstrap, kafka.risk_topic(), at_least=11)
    assert sorted((k, v["patient_id"], v["risk_score"]) for k, v in got) == sorted(
        (f"P{i}", f"P{i}", i / 10) for i in range(11)
    )
    events = read_topic(session_broker.bootstrap, kafka.alerts_topic(), at_least=4)
    assert sorted(k for k, _ in events) == ["P1", "P2", "P3", "P4"]


def test_an_empty_poll_that_the_broker_answered_proves_it_reachable_without_asking_again(
    session_broker: EmbeddedBroker,
) -> None:
    s = settings(session_broker, partitions=1, instance=(0, 1))
    ensure_topics(s)
    consumer = StreamConsumer(s, group=f"g-{s.topic_prefix}")
    try:
        consumer.wait_for_assignment(timeout_s=10)
        assert consumer.poll_batch(timeout_ms=500) == []

        def no_request(*args: object, **kwargs: object) -> None:
            raise AssertionError("reachable() asked the broker again")

        consumer.consumer.end_offsets = no_request  # type: ignore[method-assign]
        consumer.consumer.topics = no_request  # type: ignore[method-assign]
        assert consumer.reachable()
    finally:
        consumer.close()


def test_an_empty_poll_ends_once_every_partition_has_answered_with_nothing_to_read(
    session_broker: EmbeddedBroker,
) -> None:
    """Not a timing test: a poll whose timeout is a minute must come back once the broker has answered for both
    partitions (fetches wait 100 ms here), with messages when there are some and empty when caught up, instead
    of fetching again until the minute is over (what kafka-python's own poll does)."""
    s = dataclasses.replace(settings(session_broker, partitions=2, instance=(0, 1)), fetch_max_wait_ms=100)
    ensure_topics(s)
    consumer = StreamConsumer(s, group=f"g-{s.topic_prefix}")
    try:
        consumer.wait_for_assignment(timeout_s=10)
        t0 = time.monotonic()
        assert consumer.poll_batch(timeout_ms=60_000) == []
        assert consumer.lagging() == set()
        prod = producer(s)
        try:
            produce(prod, s, [("heart_rate", f"P{i}".encode(), b"{}", T0 + i) for i in range(6)])
        finally:
            prod.close()
        got: list[RawBatch] = []
        while sum(len(b) for b in got) < 6:
            got += consumer.poll_batch(timeout_ms=60_000)
        # the high-water marks of the fetches, for the lag after a run, without asking `lagging` first
        assert sum(consumer.high_water().values()) == 6 and len(consumer.high_water()) == len(s.input_topics()) * 2
        assert consumer.lag({}) == consumer.high_water() and sum(consumer.lag(next_offsets(got)).values()) == 0
        assert consumer.poll_batch(timeout_ms=60_000) == []
        assert time.monotonic() - t0 < 30  # three polls with a minute's timeout each
    finally:
        consumer.close()


def next_offsets(batches: list[RawBatch]) -> dict[str, int]:
    """The next offset to read per "topic:partition", past every message in `batches`."""
    out: dict[str, int] = {}
    for b in batches:
        for part, offset in zip(b.partitions.tolist(), b.offsets.tolist(), strict=True):
            key = f"{b.topic}:{part}"
            out[key] = max(out.get(key, 0), offset + 1)
    return out
