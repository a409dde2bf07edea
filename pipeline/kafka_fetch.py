"""The one place that reaches into kafka-python's internals: its fetcher hands each partition's fetched bytes
to `record_batches.decode_fetch` instead of its per-record parser.

kafka-python (pinned 3.0.12) keeps connections, fetch requests, group membership, positions, commits and
security. Its `Fetcher` builds one `self.PartitionRecords(fetch_offset, tp, records, ...)` per completed
fetch and drains it with `take(n)`: it adds `len()` of what `take` returns to its count, extends its result
list with it, and sets the partition's position to `next_fetch_offset`. `BulkPartitionRecords` keeps that
contract: `take(n)` returns at most n records as one `RecordColumns` chunk (wrapped so that `len()` counts
records and iterating yields the one chunk), and moves `next_fetch_offset` and `leader_epoch` as the record
generator it replaces did. So `consumer.poll()` returns `{TopicPartition: [RecordColumns, ...]}`.

`install` sets the class on one consumer's fetcher (an instance attribute: other consumers are untouched)
and raises `BulkDecodingUnavailable` when the fetcher no longer looks as this module expects, so that a
kafka-python upgrade fails loudly here (and in tests/pipeline/test_kafka_fetch.py) instead of misreading.
It returns that consumer's count of partition fetch responses (`FetchResponses`): the fetcher builds one
PartitionRecords per partition the broker answered without an error, empty or not, so a count that moved
during a poll says the broker answered then, without asking it again.
"""

from __future__ import annotations

import bisect
import inspect
from collections.abc import Iterator
from typing import Any

from kafka.consumer.fetcher import Fetcher

from pipeline.record_batches import DecodedFetch, RecordColumns, decode_fetch

_PARTITION_RECORDS_ARGS = (
    "self",
    "fetch_offset",
    "tp",
    "records",
    "key_deserializer",
    "value_deserializer",
    "check_crcs",
    "isolation_level",
    "aborted_transactions",
    "metric_aggregator",
    "on_drain",
)


class BulkDecodingUnavailable(RuntimeError):
    """kafka-python's fetcher is not the one this hook was written for."""


class FetchResponses:
    """Partition fetch responses parsed by one consumer's fetcher (see the module docstring)."""

    def __init__(self) -> None:
        self.count = 0


def install(consumer: Any) -> FetchResponses:
    """Make `consumer` (a KafkaConsumer) decode fetched record batches in bulk; its fetch responses' count."""
    fetcher = getattr(consumer, "_fetcher", None)
    problems = hook_problems(fetcher)
    if problems:
        raise BulkDecodingUnavailable(
            "kafka-python's fetcher does not match the bulk decoder's hook (pipeline/kafka_fetch.py): "
            + "; ".join(problems)
            + ". Set VITALSTREAM_KAFKA_BULK_DECODE=false to use kafka-python's own parser."
        )
    assert fetcher is not None
    responses = FetchResponses()

    class CountedPartitionRecords(BulkPartitionRecords):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            responses.count += 1
            super().__init__(*args, **kwargs)

    fetcher.PartitionRecords = CountedPartitionRecords
    return responses


def hook_problems(fetcher: Any) -> list[str]:
    """What in the fetcher differs from what the hook relies on (empty when it matches)."""
    if not isinstance(fetcher, Fetcher):
        return ["the consumer has no `_fetcher` of class kafka.consumer.fetcher.Fetcher"]
    problems = []
    args = tuple(inspect.signature(Fetcher.PartitionRecords.__init__).parameters)
    if args != _PARTITION_RECORDS_ARGS:
        problems.append(f"PartitionRecords.__init__ takes {args}, expected {_PARTITION_RECORDS_ARGS}")
    if "PartitionRecords" not in Fetcher._parse_fetched_data.__code__.co_names:
        problems.append("Fetcher._parse_fetched_data no longer builds self.PartitionRecords")
    needed = {"take", "next_fetch_offset", "leader_epoch", "drain"}
    if missing := needed - set(Fetcher._append.__code__.co_names):
        problems.append(f"Fetcher._append no longer uses {sorted(missing)}")
    if not {"_buffer"} <= set(getattr(type(_memory_records_probe()), "__slots__", ())):
        problems.append("MemoryRecords no longer keeps its bytes in `_buffer`")
    return problems


class RecordChunk:
    """What `take` returns: one RecordColumns that counts as its records."""

    __slots__ = ("columns",)

    def __init__(self, columns: RecordColumns) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns)

    def __iter__(self) -> Iterator[RecordColumns]:
        yield self.columns


class BulkPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """One partition's completed fetch, decoded in bulk on the first `take` (see the module docstring)."""

    def __init__(
        self,
        fetch_offset: int,
        tp: Any,
        records: Any,
        key_deserializer: Any = None,
        value_deserializer: Any = None,
        check_crcs: bool = True,
        isolation_level: Any = None,
        aborted_transactions: Any = None,
        metric_aggregator: Any = None,
        on_drain: Any = lambda x: None,
    ) -> None:
        if key_deserializer is not None or value_deserializer is not None:
            raise BulkDecodingUnavailable("the bulk decoder hands out raw bytes: no key/value deserializers")
        # The parent's attributes, less its per-record generator (super().__init__ would build it).
        self.fetch_offset = fetch_offset
        self.topic_partition = tp
        self.leader_epoch = -1
        self.next_fetch_offset = fetch_offset
        self.bytes_read = 0
        self.records_read = 0
        self.isolation_level = isolation_level
        self.aborted_transactions = list(aborted_transactions or [])
        self.metric_aggregator = metric_aggregator
        self.check_crcs = check_crcs
        self.on_drain = on_drain
        self._next_inline_exception: Exception | None = None
        self.record_iterator: Any = iter(())  # not None while records remain: the fetcher tests bool(part)
        self._buffer = records._buffer
        self._decoded: DecodedFetch | None = None
        self._taken = 0

    def _decode(self) -> DecodedFetch:
        if self._decoded is None:
            tp = self.topic_partition
            self._decoded = decode_fetch(
                self._buffer,
                tp.topic,
                tp.partition,
                self.fetch_offset,
                check_crcs=self.check_crcs,
                read_committed=_is_read_committed(self.isolation_level),
                aborted_transactions=self.aborted_transactions,
            )
            self._buffer = b""  # the columns own their bytes now
        return self._decoded

    def take(self, n: int | None = None) -> Any:
        self._maybe_raise_next_inline_exception()
        if self.record_iterator is None:
            return []
        d = self._decode()
        left = len(d.records) - self._taken
        k = left if n is None else min(n, left)
        chunk = d.records.slice(self._taken, self._taken + k) if k else None
        self._taken += k
        if chunk is not None:
            last = int(chunk.offsets[-1])
            self.next_fetch_offset = last + 1
            self.leader_epoch = _epoch_at(d, last)
            self.records_read += k
            self.bytes_read += int(chunk.sizes.sum()) if chunk.sizes is not None else 0
        if n is None or k < n:  # the parent's generator would run to its end now
            self.next_fetch_offset = d.next_offset
            self.leader_epoch = d.last_leader_epoch if d.last_leader_epoch is not None else self.leader_epoch
            if d.error is None:
                self.drain()
            elif chunk is None:
                raise d.error  # and again at every later take: the position stays before the bad batch
            else:
                self._next_inline_exception = d.error  # raised by the next take, after these records
        return RecordChunk(chunk) if chunk is not None else []


def _epoch_at(d: DecodedFetch, offset: int) -> int:
    """The leader epoch of the batch holding `offset` (the parent sets it batch by batch)."""
    i = bisect.bisect_right(d.batch_base_offsets, offset) - 1
    return d.batch_leader_epochs[i] if i >= 0 else -1


def _is_read_committed(isolation_level: Any) -> bool:
    return "COMMITTED" in str(isolation_level).upper() and "UNCOMMITTED" not in str(isolation_level).upper()


def _memory_records_probe() -> Any:
    from kafka.record.memory_records import MemoryRecords

    return MemoryRecords(b"")
