"""The scoring flow: a Prefect run around the run loop (runtime.loop, wired by runtime.wiring).

What Prefect adds: a named run with its logs, and the artifacts the UI shows (highest-risk patients,
counts, quarantine, consumer lag, data quality), and under `follow` with `metrics_port` set, the Prometheus
endpoint (ops.metrics). The batch protocol itself lives in runtime.loop and runs the same without Prefect.
The run's consumer process creates missing topics before it joins its group (pipeline.consumer_process);
this process loads no Kafka client unless it has something to send (pipeline/kafka_settings.py).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import publish_scoring_artifacts
from ops.metrics import LiveMetrics
from pipeline.config import Settings
from pipeline.kafka_settings import KafkaSettings
from runtime.engine import BatchOutput
from runtime.loop import Mode
from runtime.wiring import run_scoring


class _BatchMetrics:
    """The live run's Prometheus endpoint, fed from each committed batch."""

    def __init__(self, metrics: LiveMetrics) -> None:
        self.metrics = metrics

    def observe_batch(self, out: BatchOutput) -> None:
        seconds = time.monotonic() - out.started_at
        c = out.counts
        self.metrics.observe(
            out.consumed_by_topic, out.quarantine, c.scored, c.alerts, out.watermark_ms, seconds, out.offsets
        )


def live_metrics(settings: Settings, kafka: KafkaSettings) -> _BatchMetrics:
    from ops.lag import consumer_lag  # kafka-python: only for a live run's metrics endpoint

    return _BatchMetrics(LiveMetrics(settings.metrics_port, lag=lambda offsets: consumer_lag(kafka, offsets)))


@flow(name="vitalstream-scoring", validate_parameters=False)
def scoring_flow(
    settings: Settings,
    bootstrap: str,
    mode: Mode = "until-idle",
    progress: bool = False,
    max_idle_polls: int = 40,
) -> dict[str, Any]:
    """Consume the four topics, score closed windows, write the lake; returns the run summary."""
    kafka = settings.kafka(bootstrap)
    metrics = live_metrics(settings, kafka) if mode == "follow" and settings.metrics_port else None
    try:
        on_batch = metrics.observe_batch if metrics is not None else None
        summary = run_scoring(settings, bootstrap, mode, get_run_logger(), progress, max_idle_polls, on_batch=on_batch)
    finally:
        if metrics is not None:
            metrics.metrics.close()
    publish_scoring_artifacts(settings, summary.as_dict())  # what the Prefect UI shows
    return summary.as_dict()
