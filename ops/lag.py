"""Consumer lag for the operators: per topic-partition, messages in Kafka beyond the state checkpoint.

Measured against the state checkpoint's offsets (what a restart resumes from), not the group's committed
ones, which may trail by a batch. End offsets come from ListOffsets; on brokers that report the start of
the last produced batch there (the embedded broker does, see sim/broker.py) this is a lower bound by at most one batch.
"""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from pipeline.errors import BrokerUnavailable
from pipeline.kafka_settings import KafkaSettings


def consumer_lag(settings: KafkaSettings, offsets: dict[str, int]) -> dict[str, int]:
    """{"topic:partition": messages not yet processed} for the partitions this consumer has checkpointed
    offsets for (a scaled-out instance: its own share), or every partition of the four topics if none."""
    try:
        consumer = KafkaConsumer(**settings.client_config(), enable_auto_commit=False)  # no group: reads nothing
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"Kafka broker {settings.bootstrap} unreachable: {exc}") from exc
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in settings.topics()
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = consumer.end_offsets(partitions) if partitions else {}
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot read end offsets from {settings.bootstrap}: {exc}") from exc
    finally:
        consumer.close()
    lag = {
        f"{tp.topic}:{tp.partition}": max(0, int(end) - offsets.get(f"{tp.topic}:{tp.partition}", 0))
        for tp, end in sorted(ends.items())
    }
    return {k: v for k, v in lag.items() if k in offsets} if offsets else lag
