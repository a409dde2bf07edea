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
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.alerts import ACK_STREAM, to_json_rows
from pipeline.batch import RawBatch
from pipeline.contract import STREAMS
from pipeline.errors import BrokerUnavailable
from pipeline.record_batches import RecordColumns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    topic_prefix: str = "vitals."
    partitions: int = 3
    replication_factor: int = 1
    connect_timeout_s: float = 10.0
    security: dict[str, Any] = field(default_factory=dict)  # passed through: security_protocol, ssl_*, sasl_*
    dlq_topic: str = ""  # dead-letter topic; "" means <topic_prefix>dlq
    instance: tuple[int, int] | None = None  # (i, n): read partitions p with p % n == i; None: group-assigned
    assignment_timeout_s: float = 30.0  # how long to wait for the group to assign partitions
    risk_topic_name: str = ""  # live risk scores; "" means <topic_prefix>risk
    alerts_topic_name: str = ""  # live alert events; "" means <topic_prefix>alerts
    bulk_decode: bool = True  # fetched record batches to columns in bulk (pipeline/kafka_fetch.py)

    def topic(self, stream: str) -> str:
        return f"{self.topic_prefix}{stream}"

    def risk_topic(self) -> str:
        return self.risk_topic_name or f"{self.topic_prefix}risk"

    def alerts_topic(self) -> str:
        return self.alerts_topic_name or f"{self.topic_prefix}alerts"

    def ack_topic(self) -> str:
        """Acknowledgements of alerts, read with the four streams (keyed by patient id, so co-partitioned)."""
        return self.topic(ACK_STREAM)

    def input_topics(self) -> list[str]:
        return [*self.topics(), self.ack_topic()]

    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic_prefix}dlq"

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
        f"cannot reach Kafka broker at {settings.bootstrap} within {settings.connect_timeout_s:g} s "
        f"({'; '.join(errors)})"
    )


def ensure_topics(settings: KafkaSettings) -> None:
    """Create the four topics, the ack topic, the dead-letter topic and the live topics when missing, all with
    the same partition count (co-partitioned by key)."""
    try:
        admin = KafkaAdminClient(**settings.client_config())
    except (KafkaError, OSError) as exc:
        raise _unreachable(settings, exc) from exc
    try:
        existing = set(admin.list_topics())
        wanted = [
            *settings.input_topics(),
            settings.dead_letter_topic(),
            settings.risk_topic(),
            settings.alerts_topic(),
        ]
        missing = [t for t in dict.fromkeys(wanted) if t not in existing]
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


class _AcknowledgedProducer:
    """A producer made on first use whose sends all wait for the broker's acknowledgement."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: KafkaProducer | None = None

    def _client(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = producer(self.settings)
        return self._producer

    def _acknowledged(self, futures: list[Any], timeout_s: float, what: str) -> int:
        """Wait for every send; BrokerUnavailable naming `what` when the broker does not acknowledge them all."""
        try:
            self._client().flush(timeout=timeout_s)
            for f in futures:
                f.get(timeout=0)
        except (KafkaError, OSError) as exc:
            raise BrokerUnavailable(
                f"{what} on {self.settings.bootstrap} did not acknowledge {len(futures)} message(s) within "
                f"{timeout_s:.0f} s ({type(exc).__name__})"
            ) from exc
        return len(futures)

    def close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                self._producer.close(timeout=2)
            self._producer = None


class DeadLetters(_AcknowledgedProducer):
    """The dead-letter topic: every quarantined message, with its original key, value, headers and timestamp,
    plus `vitalstream.*` headers saying why and where it came from.

    Sent and acknowledged before the batch's files and checkpoint are written, so a message is never in the
    lake's quarantine without being in the topic. A crash after the send and before the checkpoint replays
    the batch and sends its dead letters again: delivery is at-least-once, and the header
    `vitalstream.source` ("topic:partition:offset" of the original message) is the key to deduplicate on.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(settings)
        self.topic = settings.dead_letter_topic()

    def send(self, table: Any, timeout_s: float) -> int:
        """Send the rows of a quarantine table (with its `headers` column); wait for every acknowledgement.
        Raises BrokerUnavailable when the broker does not acknowledge within `timeout_s`."""
        if len(table) == 0:
            return 0
        send = self._client().send
        cols = {name: table.column(name).to_pylist() for name in _DLQ_COLUMNS}
        futures = []
        for i in range(len(table)):  # quarantined rows only: a handful per batch, not the hot path
            headers = [(h["key"], h["value"]) for h in cols["headers"][i] or []]
            headers += [
                ("vitalstream.reason", cols["reason"][i].encode()),
                ("vitalstream.detail", (cols["detail"][i] or "").encode()),
                ("vitalstream.source", f"{cols['topic'][i]}:{cols['partition'][i]}:{cols['offset'][i]}".encode()),
            ]
            ts = cols["kafka_timestamp"][i]
            futures.append(
                send(
                    self.topic,
                    key=cols["key"][i],
                    value=cols["value"][i],
                    headers=headers,
                    timestamp_ms=int(ts.timestamp() * 1000) if ts is not None else None,
                )
            )
        return self._acknowledged(futures, timeout_s, f"dead-letter topic {self.topic}")


class LiveTopics(_AcknowledgedProducer):
    """The live outputs: each scored window on the risk topic and each alert event on the alerts topic, as
    JSON keyed by patient id (schemas/risk_message.json, schemas/alert_message.json), acknowledged by the
    broker before the batch is checkpointed. A crash before the checkpoint sends the batch's messages again
    with the same content: consumers deduplicate risk on (patient_id, window_end) and alerts on (alert_id,
    state, sequence)."""

    chunk = 4096  # messages serialised and awaited at a time

    def publish(self, risk_scores: pa.Table, alerts: pa.Table, timeout_s: float) -> int:
        """Send, chunk by chunk, each chunk acknowledged before the next is serialised: a batch that closes
        every patient's windows (50,000 risk messages) held all its JSON and send futures at once, about
        130 MiB more at its peak (docs/performance.md)."""
        send = self._client().send
        topics = f"live topics {self.settings.risk_topic()}, {self.settings.alerts_topic()}"
        sent = 0
        for topic, table in ((self.settings.risk_topic(), risk_scores), (self.settings.alerts_topic(), alerts)):
            for start in range(0, len(table), self.chunk):
                part = table.slice(start, self.chunk)
                keys = part.column("patient_id").to_pylist()
                futures = [send(topic, key=k.encode(), value=v) for k, v in zip(keys, to_json_rows(part), strict=True)]
                sent += self._acknowledged(futures, timeout_s, topics)
        return sent


_DLQ_COLUMNS = ("key", "value", "headers", "reason", "detail", "topic", "partition", "offset", "kafka_timestamp")


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

    def __init__(self, settings: KafkaSettings, group: str, max_batch_records: int = 50_000) -> None:
        self.settings = settings
        self.group = group
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
                # kafka-python keeps up to one fetched response per partition besides the one in flight: at
                # 8 MiB a partition (64 MiB a fetch) the consumer process peaked 50-80 MiB higher at 50,000
                # patients, with as many micro-batches (docs/performance.md). A batch larger than this still
                # comes whole (the broker returns at least one).
                max_partition_fetch_bytes=1024 * 1024,
                fetch_max_bytes=16 * 1024 * 1024,
                max_poll_interval_ms=600_000,
                # An empty fetch is answered within the 500 ms of poll_batch's first poll, which then knows
                # the broker answered without asking it again (`reachable`; the broker's default is 500 ms).
                fetch_max_wait_ms=400,
            )
        except (KafkaError, OSError) as exc:
            raise _unreachable(settings, exc) from exc
        self._responses = None
        self._answered = False  # the broker answered a fetch during the last poll_batch
        if settings.bulk_decode:
            from pipeline import kafka_fetch

            # poll() now returns RecordColumns chunks, not records
            self._responses = kafka_fetch.install(self.consumer)
        # Next offset to read per partition: the checkpoint's at start, then past every message handed out.
        self._seek_to: dict[TopicPartition, int] = {}
        self._high: dict[TopicPartition, int] = {}  # last high-water mark seen per partition
        if settings.instance is None:
            self.consumer.subscribe(settings.input_topics(), listener=_SeekOnAssign(self))

    def resume_from(self, offsets: dict[str, int]) -> None:
        """Offsets from the state checkpoint win over the group's committed ones (they match the state).
        Applied at the next assignment, and at once to the partitions already assigned (a consumer may join
        its group before the checkpoint is read)."""
        for key, offset in offsets.items():
            topic, _, part = key.rpartition(":")
            self._seek_to[TopicPartition(topic, int(part))] = offset
        self._apply_seeks(self.consumer.assignment())

    def wait_for_assignment(self, timeout_s: float | None = None) -> set[TopicPartition]:
        timeout_s = self.settings.assignment_timeout_s if timeout_s is None else timeout_s
        if self.settings.instance is not None:
            self._assign_instance(timeout_s)
            return set(self.consumer.assignment())
        deadline = time.monotonic() + timeout_s
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"consumer group {self.group!r} assigned no partitions within {timeout_s:.0f} s: the group may "
                    f"be stuck in a rebalance (see `assignment_timeout_s`; deleting the group clears it) or the "
                    f"topics {self.settings.topic_prefix}* may be missing"
                )
            self.consumer.poll(timeout_ms=200, max_records=1, update_offsets=False)
        self._apply_seeks(self.consumer.assignment())
        return set(self.consumer.assignment())

    def _assign_instance(self, timeout_s: float) -> None:
        """Scale-out: instance i of n reads partition p of every topic when p % n == i. The topics are
        co-partitioned by patient, so each patient's four streams meet in one instance, and no rebalance
        can move a patient's open windows to another process mid-run (as in Flink's Kafka source)."""
        assert self.settings.instance is not None
        i, n = self.settings.instance
        deadline = time.monotonic() + timeout_s
        counts: dict[str, int] = {}
        for topic in self.settings.input_topics():
            while not (parts := self.consumer.partitions_for_topic(topic)):
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"topic {topic} has no partitions on {self.settings.bootstrap}")
                time.sleep(0.2)
            counts[topic] = len(parts)
        if len(set(counts.values())) != 1:
            raise BrokerUnavailable(
                f"topics are not co-partitioned (partition counts {counts}); cannot split by patient"
            )
        mine = [TopicPartition(t, p) for t, c in counts.items() for p in range(c) if p % n == i]
        self.consumer.assign(mine)
        self._apply_seeks(mine)

    def _apply_seeks(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            if tp in self._seek_to:
                self.consumer.seek(tp, self._seek_to[tp])

    def reachable(self, timeout_s: float = 2.0) -> bool:
        """Does the broker answer a request? (A paused broker still accepts TCP connections: only a reply
        tells that it is alive.) A fetch it answered during the last poll says so; else it is asked, a
        request that waits behind a fetch in flight on the same connection (up to `fetch_max_wait_ms`)."""
        if self._answered:
            return True
        assigned = list(self.consumer.assignment())
        try:
            if assigned:
                self.consumer.end_offsets(assigned[:1], timeout_ms=int(timeout_s * 1000))
            else:
                self.consumer.topics()
            return True
        except (KafkaError, OSError):
            return False

    def poll_batch(self, timeout_ms: int = 500) -> list[RawBatch]:
        """Poll until `max_batch_records` or the input runs dry; one RawBatch per topic. Each poll's records
        become Arrow/NumPy columns at once, so at most one poll's record objects are alive at a time."""
        by_topic: dict[str, list[RawBatch]] = {}
        total = 0
        answered_before = self._responses.count if self._responses is not None else None
        while total < self.max_batch_records:
            got = self.consumer.poll(
                timeout_ms=timeout_ms if total == 0 else 0, max_records=self.max_batch_records - total
            )
            if not got:
                break
            for tp, records in got.items():
                raw = self._raw(tp, records)
                by_topic.setdefault(tp.topic, []).append(raw)
                total += len(raw)
                # After a rebalance (a broker outage can expire the session) resume here, not at the group's
                # committed offset, which may trail the messages already handed to the pipeline.
                self._seek_to[tp] = max(self._seek_to.get(tp, 0), int(raw.offsets[-1]) + 1)
        self._answered = self._responses is not None and self._responses.count != answered_before
        return [_concat(parts) for parts in by_topic.values()]

    def _raw(self, tp: TopicPartition, recs: list[Any]) -> RawBatch:
        if recs and isinstance(recs[0], RecordColumns):  # the bulk decoder's chunks
            cols = RecordColumns.concat(recs)
            return RawBatch(
                stream=self.settings.stream_of(tp.topic),
                topic=tp.topic,
                # a chunk may be a slice of a fetch's columns: compacted (one copy), or the pipe to the
                # pipeline would carry the whole fetch's bytes with every slice
                keys=pa.concat_arrays([cols.keys]),
                values=pa.concat_arrays([cols.values]),
                partitions=np.full(len(cols), tp.partition, dtype=np.int32),
                offsets=cols.offsets,
                timestamps_ms=cols.timestamps_ms,
                headers=cols.headers,
            )
        n = len(recs)
        headers = [r.headers for r in recs]
        return RawBatch(
            stream=self.settings.stream_of(tp.topic),
            topic=tp.topic,
            keys=pa.array([r.key for r in recs], pa.binary()),
            values=pa.array([r.value for r in recs], pa.binary()),
            partitions=np.full(n, tp.partition, dtype=np.int32),
            offsets=np.fromiter([r.offset for r in recs], dtype=np.int64, count=n),
            timestamps_ms=np.fromiter([r.timestamp for r in recs], dtype=np.int64, count=n),
            # Kept for the dead letters; `any` scans in C, and headers are rare.
            headers={i: list(h) for i, h in enumerate(headers) if h} if any(headers) else {},
        )

    def lagging(self) -> set[str]:
        """Assigned partitions ("topic:partition") whose position is behind their high-water mark."""
        out = set()
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                self._high[tp] = max(high, self._high.get(tp, 0))
            else:
                # A rebalance (after an outage) forgets the high-water marks; the last one seen is still a
                # lower bound, and better than end_offsets(), which the embedded broker under-reports.
                high = self._high.get(tp)
            if high is None:
                # No fetch response yet for this partition: it may simply be empty. Ask the broker; if it
                # does not answer, the partition may hold unread messages, so it keeps holding.
                try:
                    high = self.consumer.end_offsets([tp], timeout_ms=2000).get(tp, 0)
                except (KafkaError, OSError):
                    out.add(f"{tp.topic}:{tp.partition}")
                    continue
            if self.consumer.position(tp) < high:
                out.add(f"{tp.topic}:{tp.partition}")
        return out

    def commit(self, offsets: dict[str, int]) -> bool:
        """Commit for monitoring and lag; False when the broker did not take it. Not fatal: the state
        checkpoint, not the group, is what a restart resumes from, and the next commit catches up."""
        from kafka.structs import OffsetAndMetadata

        assigned = self.consumer.assignment()
        commit = {}
        for key, offset in offsets.items():
            topic, _, part = key.rpartition(":")
            tp = TopicPartition(topic, int(part))
            if tp in assigned:
                commit[tp] = OffsetAndMetadata(offset, "", -1)
        if not commit:
            return True
        try:
            self.consumer.commit(commit, timeout_ms=5000)
            return True
        except (KafkaError, OSError) as exc:
            log.warning("offset commit failed (%s); the next batch's commit catches up", type(exc).__name__)
            return False

    def close(self) -> None:
        self.consumer.close(autocommit=False, timeout_ms=3000)  # bounded: leaving a paused broker's group


def _concat(parts: list[RawBatch]) -> RawBatch:
    """One topic's RawBatches (one per partition and poll) as one."""
    if len(parts) == 1:
        return parts[0]
    headers: dict[int, list[tuple[str, bytes | None]]] = {}
    start = 0
    for part in parts:
        headers.update({start + i: h for i, h in part.headers.items()})
        start += len(part)
    return RawBatch(
        stream=parts[0].stream,
        topic=parts[0].topic,
        keys=pa.concat_arrays([p.keys for p in parts]),
        values=pa.concat_arrays([p.values for p in parts]),
        partitions=np.concatenate([p.partitions for p in parts]),
        offsets=np.concatenate([p.offsets for p in parts]),
        timestamps_ms=np.concatenate([p.timestamps_ms for p in parts]),
        headers=headers,
    )


class _SeekOnAssign(ConsumerRebalanceListener):
    """On (re)assignment, start from the checkpoint's offsets or past what was already handed out."""

    def __init__(self, owner: StreamConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner._apply_seeks(assigned)
