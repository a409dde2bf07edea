"""The scoring flow: a Prefect run around the run loop (runtime.loop, wired by runtime.wiring).

What Prefect adds: the topics prepared with retries, a named run with its logs, and the artifacts the UI
shows (highest-risk patients, counts, quarantine, consumer lag, data quality). The batch protocol itself
lives in runtime.loop and runs the same without Prefect.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_scoring_artifacts
from pipeline.config import Settings
from pipeline.kafka_io import KafkaSettings, ensure_topics
from runtime.loop import Mode
from runtime.wiring import run_scoring


@task(name="prepare-topics", retries=3, retry_delay_seconds=[1, 2, 4], cache_policy=NO_CACHE)
def prepare_topics(kafka: KafkaSettings) -> None:
    ensure_topics(kafka)


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
    prepare_topics(kafka)
    summary = run_scoring(settings, bootstrap, mode, get_run_logger(), progress, max_idle_polls)
    publish_scoring_artifacts(settings, kafka, summary.as_dict(), summary.offsets)  # what the Prefect UI shows
    return summary.as_dict()
