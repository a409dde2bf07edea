"""What a scoring run shows in the Prefect UI: the highest-risk patients (table), the run's counts,
quarantine by reason, consumer lag and data-quality verdicts with links to the Data Docs (markdown).

Called once at the end of the scoring flow. Artifacts report on a run that has already written its
outputs and checkpoint, so a failure here (the broker gone while measuring lag) is logged, never raised.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ops.datadocs import site_index
from ops.lag import consumer_lag
from ops.query import latest_risk
from pipeline.config import Settings
from pipeline.errors import VitalStreamError
from pipeline.kafka_io import KafkaSettings


@task(name="consumer-lag", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def measure_lag(kafka: KafkaSettings, offsets: dict[str, int]) -> dict[str, int]:
    return consumer_lag(kafka, offsets)


def publish_scoring_artifacts(
    settings: Settings, kafka: KafkaSettings, summary: dict[str, Any], offsets: dict[str, int]
) -> None:
    logger = get_run_logger()
    try:
        lag: dict[str, int] | None = measure_lag(kafka, offsets)
    except VitalStreamError as exc:
        logger.warning("consumer lag not measured: %s", exc)
        lag = None
    top = latest_risk(settings.lake, settings.artifact_top_patients)
    create_table_artifact(
        key=f"{_key(settings.group)}-top-risk",
        table=top or [{"patient_id": "(no scores yet)"}],
        description=f"Highest-risk patients (latest window each) in {settings.lake} after run {summary['run_id']}",
    )
    create_markdown_artifact(
        key=f"{_key(settings.group)}-run-summary",
        markdown=run_markdown(settings, summary, lag),
        description=f"Scoring run {summary['run_id']}: counts, quarantine, lag, data quality",
    )
    total_lag = sum(lag.values()) if lag is not None else "unknown"
    logger.info("artifacts published; consumer lag %s messages", total_lag)


def run_markdown(settings: Settings, s: dict[str, Any], lag: dict[str, int] | None) -> str:
    q: dict[str, int] = s["quarantined"]
    lines = [
        f"## Scoring run `{s['run_id']}` ({s['mode']}), group `{settings.group}`",
        "",
        "| consumed | in windows | windows | scored | duplicates | quarantined | still open | accounting |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {s['consumed']:,} | {s['windowed']:,} | {s['windows']:,} | {s['scored']:,} | {s['duplicates']:,} "
        f"| {sum(q.values()):,} | {s['pending_after']:,} | {'holds' if s['balanced'] else '**DOES NOT HOLD**'} |",
        "",
        f"{s['batches']} batches in {s['seconds']:.1f} s.",
        "",
        "### Quarantined by reason",
        "",
    ]
    lines += (
        ["| reason | messages |", "|---|---:|", *(f"| {r} | {n:,} |" for r, n in sorted(q.items()))] if q else ["none"]
    )
    lines += ["", "### Consumer lag (messages in Kafka beyond the checkpoint)", ""]
    if lag is None:
        lines.append("not measured (broker unreachable after the run)")
    else:
        lines += [f"total **{sum(lag.values()):,}**", "", "| topic:partition | lag |", "|---|---:|"]
        lines += [f"| {tp} | {n:,} |" for tp, n in lag.items()]
    lines += ["", "### Data quality (the suites, compiled to Arrow, on every row)", ""]
    quality: dict[str, Any] = s.get("quality", {})
    if quality:
        lines += ["| suite | rows checked | unexpected (quarantined) | sample for Great Expectations |"]
        lines += ["|---|---:|---:|---|"]
        for suite, r in sorted(quality.items()):
            lines.append(f"| {suite} | {r['checked']:,} | {r['failed']:,} | `{r['sample']}` |")
        lines += [
            "",
            "Great Expectations validates each sample in the `vitalstream-validate` flow (every 5 minutes "
            "under `vitalstream serve`), which publishes its own verdicts.",
        ]
    else:
        lines.append("no rows checked in this run")
    docs = site_index(settings.lake).resolve()
    lines += [
        "",
        f"Data Docs (every suite, every run, the failures): [{docs}]({docs.as_uri()}), rebuilt daily by the "
        "`vitalstream-quality-report` deployment or now with `vitalstream quality`.",
    ]
    return "\n".join(lines)


def _key(group: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes; one key per consumer group."""
    return "vitalstream-" + "".join(c if c.isalnum() else "-" for c in group.lower()).strip("-")
