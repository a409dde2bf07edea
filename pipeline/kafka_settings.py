"""Where VitalStream's Kafka is and what its topics are called: settings, topic names, client options.

No Kafka client library here: the scoring process reads these settings on every run, and loads kafka-python
(pipeline/kafka_io.py, pipeline/kafka_publish.py) only when it talks to the broker itself. A run that finds
nothing leaves all Kafka traffic to its consumer process (pipeline/consumer_process.py).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.alerts import ACK_STREAM
from pipeline.contract import STREAMS
from pipeline.errors import BrokerUnavailable


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
    # How long the broker holds a consumer's fetch that finds nothing (new messages are answered at once).
    # Runs that end once caught up use a short wait to learn it fast (runtime.wiring.FETCH_WAIT_MS).
    fetch_max_wait_ms: int = 400

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


def unreachable(settings: KafkaSettings, exc: Exception) -> BrokerUnavailable:
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
