"""What a scoring run shows in the Prefect UI: the highest-risk patients (table), the run's counts,
quarantine by reason, consumer lag and data-quality verdicts with links to the Data Docs (markdown).

Called once at the end of the scoring flow, on a run that has already written its outputs and checkpoint.
Nothing here talks to Kafka: the lag comes with the run's summary.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ops.datadocs import site_index
from ops.query import latest_risk
from pipeline.config import Settings


def publish_scoring_artifacts(settings: Settings, summary: dict[str, Any]) -> None:
    """`summary`: the run's (runtime.loop.RunSummary.as_dict); its lag comes from the high-water marks of the
    consumer's own fetches, so publishing asks the broker nothing."""
    logger = get_run_logger()
    lag: dict[str, int] = summary["lag"]
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
    logger.info("artifacts published; consumer lag %s messages", f"{sum(lag.values()):,}")


def run_markdown(settings: Settings, s: dict[str, Any], lag: dict[str, int]) -> str:
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
    lines += ["", "### Consumer lag (messages in Kafka beyond the checkpoint, as the run's last fetches saw it)", ""]
    if not lag:
        lines.append("unknown (no fetch answered during the run)")
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
