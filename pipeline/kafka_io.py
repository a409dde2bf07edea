"""Kafka at the edge: topics, a batching producer, and a consumer that yields per-topic RawBatches.

The same kafka-python code runs against the embedded broker and any Kafka cluster. Settings that design
around the embedded broker's quirks (short session timeout for fast group joins, `highwater()` rather
than `end_offsets()` to decide "caught up") are also right for a real cluster.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.contract import STREAMS
from pipeline.decode import RawBatch
from pipeline.errors import BrokerUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    topic_prefix: str = "vitals."
    partitions: int = 3
    replication_factor: int = 1
    connect_timeout_s: float = 10.0
    security: dict[str, Any] = field(default_factory=dict)  # passed through: security_protocol, ssl_*, sasl_*

    def topic(self, stream: str) -> str:
        return f"{self.topic_prefix}{stream}"

    def topics(self) -> list[str]:
        return [self.topic(s) for s in STREAMS]

    def stream_of(self, topic: str) -> str:
        return topic.removeprefix(self.topic_prefix)

    def client_config(self) -> dict[str, Any]:
        timeout_ms = int(self.connect_timeout_s * 1000)
        return {
            "bootstrap_servers": self.bootstrap.split(","),
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 30_000),
            **self.security,
        }


def _unreachable(settings: KafkaSettings, exc: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(f"Kafka broker {settings.bootstrap} unreachable: {exc}")


def check_reachable(settings: KafkaSettings) -> None:
    """Fail fast, in one line, when no bootstrap address accepts a TCP connection."""
    errors = []
    deadline = time.monotonic() + settings.connect_timeout_s
    for address in settings.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit():
            raise BrokerUnavailable(f"bad Kafka bootstrap address {address!r}: expected host:port")
        while True:
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
                    return
            except OSError as exc:
                last = exc.strerror or str(exc)
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        errors.append(f"{address}: {last}")
    raise BrokerUnavailable(
        f"cannot reach Kafka broker at {settings.bootstrap} within {settings.connect_timeout_s:.0f} s "
        f"({'; '.join(errors)})"
    )


def ensure_topics(settings: KafkaSettings) -> None:
    """Create the four topics when missing, all with the same partition count (co-partitioned by key)."""
    try:
        admin = KafkaAdminClient(**settings.client_config())
    except (KafkaError, OSError) as exc:
        raise _unreachable(settings, exc) from exc
    try:
        existing = set(admin.list_topics())
        missing = [t for t in settings.topics() if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(t, settings.partitions, settings.replication_factor) for t in missing],
                    timeout_ms=int(settings.connect_timeout_s * 1000),
                )
    finally:
        admin.close()


def producer(settings: KafkaSettings) -> KafkaProducer:
    try:
        return KafkaProducer(
            **settings.client_config(),
            batch_size=262_144,
            linger_ms=20,
            compression_type=None,
            acks=1,
            # An idempotent producer fails for good after the embedded broker restarts; keys and offsets,
            # not producer ids, make our pipeline's output effectively-once.
            enable_idempotence=False,
            max_request_size=4 * 1024 * 1024,
        )
    except (KafkaError, OSError) as exc:
        raise _unreachable(settings, exc) from exc


def produce(
    prod: KafkaProducer,
    settings: KafkaSettings,
    messages: Iterable[tuple[str, bytes | None, bytes | None, int]],
) -> int:
    """Send (stream, key, value, timestamp_ms) tuples; returns how many were sent (after a flush)."""
    n = 0
    send = prod.send
    for stream, key, value, ts in messages:
        send(settings.topic(stream), key=key, value=value, timestamp_ms=ts)
        n += 1
    prod.flush()
    return n


class StreamConsumer:
    """One consumer in a group over the four topics, yielding micro-batches as RawBatches per topic."""

    def __init__(self, settings: KafkaSettings, group: str, max_batch_records: int = 200_000) -> None:
        self.settings = settings
        self.max_batch_records = max_batch_records
        try:
            self.consumer = KafkaConsumer(
                **settings.client_config(),
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=6000,
                heartbeat_interval_ms=1500,
                max_poll_records=50_000,
                max_partition_fetch_bytes=8 * 1024 * 1024,
                fetch_max_bytes=64 * 1024 * 1024,
                max_poll_interval_ms=600_000,
            )
        except (KafkaError, OSError) as exc:
            raise _unreachable(settings, exc) from exc
        self.consumer.subscribe(settings.topics())
        self._seek_to: dict[TopicPartition, int] = {}

    def resume_from(self, offsets: dict[str, int]) -> None:
        """Offsets from the state checkpoint win over the group's committed ones (they match the state)."""
        for key, offset in offsets.items():
            topic, _, part = key.rpartition(":")
            self._seek_to[TopicPartition(topic, int(part))] = offset

    def wait_for_assignment(self, timeout_s: float = 30.0) -> set[TopicPartition]:
        deadline = time.monotonic() + timeout_s
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"no partitions assigned by {self.settings.bootstrap} within {timeout_s:.0f} s "
                    "(group stuck in a rebalance, or topics missing?)"
                )
            self.consumer.poll(timeout_ms=200, max_records=1, update_offsets=False)
        self._apply_seeks()
        return set(self.consumer.assignment())

    def _apply_seeks(self) -> None:
        for tp in self.consumer.assignment():
            if tp in self._seek_to:
                self.consumer.seek(tp, self._seek_to[tp])

    def poll_batch(self, timeout_ms: int = 500) -> list[RawBatch]:
        """Poll until `max_batch_records` or the input runs dry; one RawBatch per topic."""
        by_topic: dict[str, list[Any]] = {}
        total = 0
        while total < self.max_batch_records:
            got = self.consumer.poll(
                timeout_ms=timeout_ms if total == 0 else 0, max_records=self.max_batch_records - total
            )
            if not got:
                break
            for tp, records in got.items():
                by_topic.setdefault(tp.topic, []).extend(records)
                total += len(records)
        return [self._raw(topic, recs) for topic, recs in by_topic.items()]

    def _raw(self, topic: str, recs: list[Any]) -> RawBatch:
        n = len(recs)
        return RawBatch(
            stream=self.settings.stream_of(topic),
            topic=topic,
            keys=pa.array([r.key for r in recs], pa.binary()),
            values=pa.array([r.value for r in recs], pa.binary()),
            partitions=np.fromiter((r.partition for r in recs), dtype=np.int32, count=n),
            offsets=np.fromiter((r.offset for r in recs), dtype=np.int64, count=n),
            timestamps_ms=np.fromiter((r.timestamp for r in recs), dtype=np.int64, count=n),
        )

    def lagging(self) -> set[str]:
        """Assigned partitions ("topic:partition") whose position is behind their high-water mark."""
        out = set()
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                # No fetch response yet for this partition: it may simply be empty. Ask the broker.
                high = self.consumer.end_offsets([tp]).get(tp, 0)
            if self.consumer.position(tp) < high:
                out.add(f"{tp.topic}:{tp.partition}")
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        assigned = self.consumer.assignment()
        commit = {}
        for key, offset in offsets.items():
            topic, _, part = key.rpartition(":")
            tp = TopicPartition(topic, int(part))
            if tp in assigned:
                commit[tp] = OffsetAndMetadata(offset, "", -1)
        if commit:
            self.consumer.commit(commit)

    def close(self) -> None:
        self.consumer.close(autocommit=False)
