"""Consumer lag: messages in Kafka beyond the state checkpoint's offsets, per partition, on the embedded broker."""

from __future__ import annotations

import uuid

import pytest

from ops.lag import consumer_lag
from pipeline.errors import BrokerUnavailable
from pipeline.kafka_io import ensure_topics
from pipeline.kafka_publish import producer
from pipeline.kafka_settings import KafkaSettings
from sim.broker import EmbeddedBroker, free_port


def test_lag_is_the_end_offset_minus_the_checkpointed_offset_per_partition(session_broker: EmbeddedBroker) -> None:
    s = KafkaSettings(session_broker.bootstrap, topic_prefix=f"lag{uuid.uuid4().hex[:8]}.", partitions=2)
    ensure_topics(s)
    hr, glucose = s.topic("heart_rate"), s.topic("glucose")
    prod = producer(s)
    try:
        # One message per produce request: the embedded broker reports the end offset as the start of the
        # last batch plus one (ops/lag.py), which is exact only for one-message batches.
        for topic, partition, n in ((hr, 1, 7), (glucose, 0, 3)):
            for i in range(n):
                prod.send(topic, key=b"P1", value=b"%d" % i, partition=partition)
                prod.flush()
    finally:
        prod.close()

    everything = consumer_lag(s, {})  # no checkpoint yet: every partition of the four topics, all unread
    assert everything == {
        **{f"{t}:{p}": 0 for t in s.topics() for p in (0, 1)},
        f"{hr}:1": 7,
        f"{glucose}:0": 3,
    }
    checkpoint = {f"{hr}:1": 5, f"{hr}:0": 0, f"{glucose}:0": 3}
    assert consumer_lag(s, checkpoint) == {f"{hr}:1": 2, f"{hr}:0": 0, f"{glucose}:0": 0}  # only its partitions
    assert consumer_lag(s, {f"{hr}:1": 9}) == {f"{hr}:1": 0}  # never negative


def test_an_unreachable_broker_is_broker_unavailable() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailable, match=address):
        consumer_lag(KafkaSettings(address, connect_timeout_s=0.5), {"vitals.heart_rate:0": 3})
