"""Scheduled deployments, served by one long-running process (`vitalstream serve`), or registered to a
work pool with `prefect deploy` (see prefect.yaml).

| deployment        | flow                          | default schedule          |
|-------------------|-------------------------------|---------------------------|
| scoring           | vitalstream-scoring           | every minute              |
| compaction        | vitalstream-compaction        | hourly                    |
| validate          | vitalstream-validate          | every 5 minutes           |
| quality-report    | vitalstream-quality-report    | daily 06:30 UTC           |
| retraining        | vitalstream-train             | nightly 02:00 UTC         |

Scoring and compaction must never overlap themselves (two scoring runs in one group would share one state
checkpoint), so each deployment has a concurrency limit of one that cancels a run scheduled while the
previous is still going, instead of queueing them up. Flow parameters are plain JSON: a worker reads its
settings from its own VITALSTREAM_* environment or TOML file, and the parameters carry only what the
command line overrode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.compaction import compaction_flow
from flows.quality_report import quality_report_flow, validation_flow
from flows.scoring import scoring_flow
from flows.training import training_flow
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError


@flow(name="vitalstream-scoring", validate_parameters=False)
def scheduled_scoring(
    bootstrap: str | None = None, lake: str | None = None, mode: str = "until-idle", config: str | None = None
) -> dict[str, Any]:
    """The scoring flow with JSON parameters, for deployments; same flow name, so scheduled and manual
    runs appear together in the UI."""
    settings = load_settings(Path(config) if config else None).with_overrides(
        bootstrap=bootstrap, lake=Path(lake) if lake else None
    )
    if not settings.bootstrap:
        raise ConfigError("the scoring deployment needs a Kafka address (VITALSTREAM_BOOTSTRAP or bootstrap=...)")
    result: dict[str, Any] = scoring_flow.fn(settings, settings.bootstrap, mode=mode)  # type: ignore[arg-type]
    return result


def candidate_checkpoint(settings: Settings) -> Path:
    """Nightly retraining writes here, beside its model card: a new model is reviewed before it scores
    patients (point `model_path` at it to promote it), never swapped in silently."""
    return settings.lake / "_models" / "candidate" / "risk_lstm.pt"


def deployments(settings: Settings, config_file: Path | None = None) -> list[RunnerDeployment]:
    # Absolute: served runs start in their own processes, and the lake must not depend on their directory.
    common: dict[str, Any] = {"lake": str(settings.lake.resolve())}
    if config_file is not None:
        common["config"] = str(config_file)
    tz = settings.schedule_timezone
    once = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    tags = ["vitalstream", settings.group]
    scoring_params = {**common, "mode": "until-idle"}
    if settings.bootstrap:
        scoring_params["bootstrap"] = settings.bootstrap
    specs: list[tuple[Any, str, str, dict[str, Any], str]] = [
        (scheduled_scoring, "scoring", settings.score_cron, scoring_params, "Consume, score and write the lake"),
        (compaction_flow, "compaction", settings.compact_cron, common, "Merge small Parquet files"),
        (
            validation_flow,
            "validate",
            settings.validate_cron,
            common,
            "Great Expectations on the samples scoring runs wrote",
        ),
        (quality_report_flow, "quality-report", settings.quality_cron, common, "Rebuild the Data Docs"),
        (
            training_flow,
            "retraining",
            settings.retrain_cron,
            {"out": str(candidate_checkpoint(settings).resolve())},
            "Retrain the risk model into a candidate checkpoint",
        ),
    ]
    return [
        fl.to_deployment(
            name,
            schedules=[Cron(cron, timezone=tz)],
            parameters=params,
            description=doc,
            tags=tags,
            concurrency_limit=once,
            # A module path, not a file path: the same entrypoint works from a checkout, a wheel or the image.
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for fl, name, cron, params, doc in specs
    ]


def serve_all(built: list[RunnerDeployment]) -> None:
    """Serve the deployments until interrupted; needs a running Prefect server (PREFECT_API_URL)."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # Without a server Prefect starts a temporary one per process, which schedules nothing.
        raise ConfigError(
            "no Prefect server: start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (or `prefect config set PREFECT_API_URL=...`)"
        )
    serve(*built)


def main() -> None:
    """`python -m flows.serve`: the deployments from the environment's settings (used by the container)."""
    serve_all(deployments(load_settings()))


if __name__ == "__main__":
    main()
