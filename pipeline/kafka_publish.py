"""Producing to Kafka: the dead-letter topic, the live risk and alert topics, and plain sends (replay, tests).

kafka-python loads with the first producer: a run that has nothing to send (nothing quarantined, nothing
scored) never loads it in the scoring process (pipeline/kafka_settings.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.alerts import to_json_rows
from pipeline.errors import BrokerUnavailable
from pipeline.kafka_settings import KafkaSettings, unreachable

if TYPE_CHECKING:
    from kafka import KafkaProducer


def producer(settings: KafkaSettings) -> KafkaProducer:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

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
        raise unreachable(settings, exc) from exc


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
        from kafka.errors import KafkaError

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
            from kafka.errors import KafkaError

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
