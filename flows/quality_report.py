"""Data quality with Great Expectations, outside the scoring runs.

- `vitalstream-validate` has Great Expectations validate every sample that scoring runs wrote and nobody
  validated yet (ops.quality), and publishes the verdicts. Served every few minutes; `vitalstream run`
  and `demo` call it when their scoring run ends.
- `vitalstream-quality-report` validates what is pending, then rebuilds the Data Docs site from the kept
  results (ops.datadocs) and publishes the latest verdict per suite. Served daily."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ops.datadocs import DataDocsSite, build_data_docs, kept_results, suite_names
from ops.quality import prune, validate_pending
from pipeline.config import Settings, load_settings


@task(name="validate-samples", cache_policy=NO_CACHE)
def validate_samples(lake: Path) -> list[dict[str, Any]]:
    return validate_pending(lake)


@flow(name="vitalstream-validate", validate_parameters=False)
def validation_flow(lake: str | None = None, config: str | None = None) -> list[dict[str, Any]]:
    """Great Expectations on every pending sample; one summary per sample validated."""
    settings = load_settings(Path(config) if config else None).with_overrides(lake=Path(lake) if lake else None)
    done = validate_samples(settings.lake)
    if done:
        create_table_artifact(
            key="vitalstream-validation",
            table=[{k: r[k] for k in ("suite", "sample", "rows", "success")} | {"failed": r["failed"]} for r in done],
            description="Great Expectations on the samples scoring runs wrote",
        )
    for r in done:
        if "error" in r:
            get_run_logger().warning("%s: %s", r["suite"], r["error"])
    failed = [f"{r['suite']} ({r['sample']})" for r in done if not r["success"] and "error" not in r]
    get_run_logger().info(
        "Great Expectations validated %d sample(s); %d with unexpected rows%s",
        len(done) - sum("error" in r for r in done),
        len(failed),
        ": " + ", ".join(failed) if failed else "",
    )
    return done


@task(name="build-data-docs", retries=2, retry_delay_seconds=[5, 60], cache_policy=NO_CACHE)
def build_site(settings: Settings) -> DataDocsSite:
    return build_data_docs(settings.lake, settings.quality_docs_runs)


def latest_verdicts(lake: Path) -> list[dict[str, Any]]:
    """Per suite, its newest kept validation: when, how many expectations failed, and which."""
    rows: list[dict[str, Any]] = []
    for suite in suite_names():
        results = kept_results(lake, suite)
        if not results:
            rows.append({"suite": suite, "run": "(none yet)", "success": None, "failed_expectations": ""})
            continue
        doc = json.loads(results[-1].read_text())
        failed = [
            f"{r['expectation_config']['type']}:{r['expectation_config']['kwargs'].get('column', '')}"
            for r in doc["results"]
            if not r["success"]
        ]
        runs_failed = sum(not json.loads(p.read_text()).get("success", False) for p in results[-50:])
        rows.append(
            {
                "suite": suite,
                "run": results[-1].stem,
                "success": bool(doc["success"]),
                "failed_expectations": ", ".join(failed),
                "failed_of_last_50_runs": runs_failed,
            }
        )
    return rows


@flow(name="vitalstream-quality-report", validate_parameters=False)
def quality_report_flow(lake: str | None = None, config: str | None = None) -> dict[str, Any]:
    settings = load_settings(Path(config) if config else None).with_overrides(lake=Path(lake) if lake else None)
    validate_samples(settings.lake)  # whatever the validate deployment has not reached yet
    removed = prune(settings.lake, settings.quality_keep_days)
    if removed:
        get_run_logger().info("deleted %d quality files older than %g days", removed, settings.quality_keep_days)
    site = build_site(settings)
    rows = latest_verdicts(settings.lake)
    create_table_artifact(key="vitalstream-data-quality", table=rows, description="Latest validation per suite")
    create_link_artifact(
        key="vitalstream-data-docs",
        link=site.index.resolve().as_uri(),
        link_text=f"Data Docs: {site.validations} validations of {site.suites} suites ({site.failed} failed)",
    )
    get_run_logger().info(
        "Data Docs rebuilt at %s (%d validations, %d failed)", site.index, site.validations, site.failed
    )
    return {"index": str(site.index), "validations": site.validations, "failed": site.failed, "latest": rows}
