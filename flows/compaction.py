"""The compaction flow: merge each date partition's small Parquet files (see ops.compact).

Served hourly by `vitalstream serve`. Compaction is idempotent and finishes an interrupted predecessor's
swap, so a retry after a disk error is safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ops.compact import CompactionReport, compact
from pipeline.config import Settings, load_settings


@task(name="compact-lake", retries=3, retry_delay_seconds=[5, 30, 120], cache_policy=NO_CACHE)
def compact_lake(settings: Settings) -> CompactionReport:
    return compact(settings.lake, int(settings.compact_target_mb * 2**20))


@flow(name="vitalstream-compaction", validate_parameters=False)
def compaction_flow(lake: str | None = None, config: str | None = None) -> dict[str, Any]:
    """Compact the lake named by the settings (VITALSTREAM_* environment, TOML `config`) or `lake`."""
    settings = load_settings(Path(config) if config else None).with_overrides(lake=Path(lake) if lake else None)
    report = compact_lake(settings)
    logger = get_run_logger()
    logger.info("compaction: %s", report.as_dict())
    d = report.as_dict()
    create_markdown_artifact(
        key="vitalstream-compaction",
        description="Parquet compaction of the lake",
        markdown=(
            f"## Compaction of `{settings.lake}`\n\n"
            "| files before | files after | rows rewritten | MiB before | MiB after | repaired | seconds |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {d['files_before']} | {d['files_after']} | {d['rows']:,} | {report.bytes_before / 2**20:.1f} "
            f"| {report.bytes_after / 2**20:.1f} | {d['repaired']} | {d['seconds']} |\n"
        ),
    )
    return d
