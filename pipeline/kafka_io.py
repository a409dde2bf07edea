"""Consuming from Kafka, and the topics: a consumer that yields per-topic RawBatches, and topic creation.

The same kafka-python code runs against the embedded broker and any Kafka cluster. Settings that design
around the embedded broker's quirks (short session timeout for fast group joins, `highwater()` rather
than `end_offsets()` to decide "caught up") are also right for a real cluster. Where Kafka is and what its
topics are called: pipeline/kafka_settings.py; producers: pipeline/kafka_publish.py. In a run, this module
loads in the consumer process (pipeline/consumer_process.py), not in the scoring process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.batch import RawBatch, lag_beyond
from pipeline.errors import BrokerUnavailable
from pipeline.kafka_settings import KafkaSettings, unreachable
from pipeline.record_batches import RecordColumns

log = logging.getLogger(__name__)

# An empty poll_batch polls in slices this long, so that it can end once the broker has answered for every
# partition (`StreamConsumer._caught_up`) instead of fetching again until its timeout.
_POLL_SLICE_MS = 50


def ensure_topics(settings: KafkaSettings) -> None:
    """Create the four topics, the ack topic, the dead-letter topic and the live topics when missing, all with
    the same partition count (co-partitioned by key)."""
    try:
        admin = KafkaAdminClient(**settings.client_config())
    except (KafkaError, OSError) as exc:
        raise unreachable(settings, exc) from exc
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
                # the broker answered without asking it again (`reachable`; the broker's default is 500 ms),
                # and can end as soon as every partition has answered with nothing to read (`_caught_up`).
                fetch_max_wait_ms=settings.fetch_max_wait_ms,
            )
        except (KafkaError, OSError) as exc:
            raise unreachable(settings, exc) from exc
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
        become Arrow/NumPy columns at once, so at most one poll's record objects are alive at a time. A poll
        that finds nothing ends after `timeout_ms`, or sooner, once the broker has answered for every
        partition and none lags (`_caught_up`): a run that finds nothing does not wait out the timeout."""
        by_topic: dict[str, list[RawBatch]] = {}
        total = 0
        answered_before = self._responses.count if self._responses is not None else None
        deadline = time.monotonic() + timeout_ms / 1000
        while total < self.max_batch_records:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000)) if total == 0 else 0
            got = self.consumer.poll(
                timeout_ms=min(wait_ms, _POLL_SLICE_MS), max_records=self.max_batch_records - total
            )
            if not got:
                if wait_ms > _POLL_SLICE_MS and not self._caught_up(answered_before):
                    continue
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

    def _caught_up(self, answered_before: int | None) -> bool:
        """Has the broker answered a fetch for every assigned partition since `answered_before` (the fetch
        responses' count then), and does none of them hold unread messages? Then an empty poll can end: a
        fetch sent now would wait `fetch_max_wait_ms` and find nothing either. Unknown without the bulk
        decoder's count: the poll then waits out its timeout, as kafka-python's does."""
        assigned = self.consumer.assignment()
        if self._responses is None or answered_before is None or not assigned:
            return False
        if self._responses.count - answered_before < len(assigned):
            return False
        for tp in assigned:
            high = self.consumer.highwater(tp)
            if high is None or self.consumer.position(tp) < high:
                return False
        return True

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

    def _seen_high_water(self) -> dict[TopicPartition, int]:
        """The highest high-water mark a fetch response has shown, per assigned partition that has answered one.
        A rebalance (after an outage) makes kafka-python forget them; the last one seen is still a lower bound,
        and better than end_offsets(), which the embedded broker under-reports."""
        assigned = self.consumer.assignment()
        for tp in assigned:
            high = self.consumer.highwater(tp)
            if high is not None:
                self._high[tp] = max(high, self._high.get(tp, 0))
        return {tp: high for tp, high in self._high.items() if tp in assigned}

    def lagging(self) -> set[str]:
        """Assigned partitions ("topic:partition") whose position is behind their high-water mark."""
        seen = self._seen_high_water()
        out = set()
        for tp in self.consumer.assignment():
            high = seen.get(tp)
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

    def high_water(self) -> dict[str, int]:
        """The high-water mark last seen in a fetch response, per assigned partition ("topic:partition") that
        has answered one."""
        return {f"{tp.topic}:{tp.partition}": high for tp, high in self._seen_high_water().items()}

    def lag(self, offsets: dict[str, int]) -> dict[str, int]:
        """Messages beyond `offsets` (the state checkpoint's), per assigned partition (pipeline.batch.lag_beyond)."""
        return lag_beyond(self.high_water(), offsets)

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
