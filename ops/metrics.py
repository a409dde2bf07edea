"""Prometheus metrics of a live run (`metrics_port`; off by default): what operations watch.

    vitalstream_consumed_messages_total{topic}
    vitalstream_quarantined_messages_total{topic, reason}
    vitalstream_windows_scored_total
    vitalstream_alert_events_total{condition, state}
    vitalstream_consumer_lag_messages{partition}      (topic:partition, beyond the state checkpoint)
    vitalstream_watermark_delay_seconds               (wall clock - watermark, at the last batch)
    vitalstream_batch_seconds                         (histogram: a batch from processing to its offset commit)

Fed once per committed batch by the scoring flow; lag is refreshed at most every `lag_every_s` (it asks the
broker). Each `LiveMetrics` has its own registry, served on its own port.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class LiveMetrics:
    def __init__(
        self, port: int, lag: Callable[[dict[str, int]], dict[str, int]] | None = None, lag_every_s: float = 15.0
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter("vitalstream_consumed_messages", "Messages consumed", ["topic"], registry=r)
        self.quarantined = Counter(
            "vitalstream_quarantined_messages", "Messages quarantined", ["topic", "reason"], registry=r
        )
        self.scored = Counter("vitalstream_windows_scored", "Windows scored", registry=r)
        self.alerts = Counter("vitalstream_alert_events", "Alert events", ["condition", "state"], registry=r)
        self.lag_gauge = Gauge(
            "vitalstream_consumer_lag_messages", "Messages beyond the state checkpoint", ["partition"], registry=r
        )
        self.watermark_delay = Gauge(
            "vitalstream_watermark_delay_seconds", "Wall clock minus the watermark at the last batch", registry=r
        )
        self.batch_seconds = Histogram(
            "vitalstream_batch_seconds",
            "A batch from processing to its offset commit",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.lag, self.lag_every_s, self._lag_at = lag, lag_every_s, 0.0
        self.server, self._thread = start_http_server(port, registry=r)

    def observe(
        self,
        consumed_by_topic: Mapping[str, int],
        quarantine: pa.Table,
        scored: int,
        alerts: Mapping[str, int],
        watermark_ms: int | None,
        seconds: float,
        offsets: dict[str, int],
    ) -> None:
        """One committed batch: its counts (alerts by "condition:state"), watermark and duration."""
        for topic, n in consumed_by_topic.items():
            self.consumed.labels(topic).inc(n)
        if len(quarantine):
            pairs = zip(quarantine.column("topic").to_pylist(), quarantine.column("reason").to_pylist(), strict=True)
            for (topic, reason), n in _count(pairs).items():
                self.quarantined.labels(topic, reason).inc(n)
        self.scored.inc(scored)
        for key, n in alerts.items():
            condition, _, state = key.partition(":")
            self.alerts.labels(condition, state).inc(n)
        if watermark_ms is not None:
            self.watermark_delay.set(time.time() - watermark_ms / 1000)
        self.batch_seconds.observe(seconds)
        if self.lag is not None and time.monotonic() - self._lag_at >= self.lag_every_s:
            self._lag_at = time.monotonic()
            try:
                for partition, n in self.lag(offsets).items():
                    self.lag_gauge.labels(partition).set(n)
            except Exception:
                pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _count(pairs: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for p in pairs:
        out[p] = out.get(p, 0) + 1
    return out
