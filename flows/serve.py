"""Scheduled deployments, served by one long-running process (`vitalstream serve`), or registered to a
work pool with `prefect deploy` (prefect.yaml, generated from the same list: `DEPLOYMENTS` below; schedules
are settings, `vitalstream serve --list` prints them).

Scoring and compaction must never overlap themselves (two scoring runs in one group would share one state
checkpoint), so each deployment has a concurrency limit of one that cancels a run scheduled while the
previous is still going, instead of queueing them up. Scoring runs live (`follow`): one flow run that never
ends, and its schedule only starts a new one when that run has stopped (crashed, cancelled, host restarted).
Flow parameters are plain JSON: a worker reads its settings from its own VITALSTREAM_* environment or TOML
file, and the parameters carry only what the command line overrode.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prefect
from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.scoring import scoring_flow
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


@dataclass(frozen=True)
class Deployment:
    """One scheduled deployment: served by `vitalstream serve` and written to prefect.yaml for work pools."""

    name: str
    entrypoint: str  # module path "package.module:flow"
    cron_setting: str  # the Settings field holding its schedule
    description: str


# The one list of deployments; `deployments()` builds them for `serve`, `prefect_yaml()` for `prefect deploy`.
DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment(
        "scoring",
        "flows.serve:scheduled_scoring",
        "score_cron",
        "Live scoring, one long run (consume, score, alert, publish, write the lake); restarted if it stops",
    ),
    Deployment("compaction", "flows.compaction:compaction_flow", "compact_cron", "Merge small Parquet files"),
    Deployment(
        "validate",
        "flows.quality_report:validation_flow",
        "validate_cron",
        "Great Expectations on the samples scoring runs wrote",
    ),
    Deployment("quality-report", "flows.quality_report:quality_report_flow", "quality_cron", "Rebuild the Data Docs"),
    Deployment(
        "retraining",
        "flows.training:training_flow",
        "retrain_cron",
        "Retrain the risk model into a candidate checkpoint",
    ),
)


def parameters(d: Deployment, settings: Settings, lake: str | None, config: str | None) -> dict[str, Any]:
    """A deployment's flow parameters: the lake and config file for the lake's flows (None: the worker's own
    settings decide), the run mode and broker for scoring, the candidate checkpoint for retraining."""
    if d.name == "retraining":
        return {"out": str(candidate_checkpoint(settings))}
    params: dict[str, Any] = {k: v for k, v in (("lake", lake), ("config", config)) if v is not None}
    if d.name == "scoring":
        params["mode"] = "follow"  # one long-running live run; the schedule restarts it if it stops
        if settings.bootstrap and lake is not None:
            params["bootstrap"] = settings.bootstrap
    return params


def deployments(settings: Settings, config_file: Path | None = None) -> list[RunnerDeployment]:
    # Absolute: served runs start in their own processes, and the lake must not depend on their directory.
    settings = settings.with_overrides(lake=settings.lake.resolve())
    once = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    config = str(config_file) if config_file is not None else None
    return [
        _flow(d).to_deployment(
            d.name,
            schedules=[Cron(getattr(settings, d.cron_setting), timezone=settings.schedule_timezone)],
            parameters=parameters(d, settings, str(settings.lake), config),
            description=d.description,
            tags=["vitalstream", settings.group],
            concurrency_limit=once,
            # A module path, not a file path: the same entrypoint works from a checkout, a wheel or the image.
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for d in DEPLOYMENTS
    ]


def _flow(d: Deployment) -> Any:
    module, _, name = d.entrypoint.partition(":")
    return getattr(importlib.import_module(module), name)


def prefect_yaml(settings: Settings | None = None) -> str:
    """prefect.yaml for a work pool (`prefect deploy --all`): the same deployments for workers running the
    image (infra/Dockerfile), whose lake is /lake and whose settings come from their environment."""
    settings = settings or Settings(lake=Path("/lake"))
    lines = [
        "# Generated from flows/serve.py (DEPLOYMENTS) by `make docs`: edit there, not here.",
        "# Deployments for a Prefect work pool (`prefect deploy --all`), when one machine running `vitalstream serve`",
        "# is not enough. Workers read their settings from their own VITALSTREAM_* environment (see infra/).",
        "name: vitalstream",
        f"prefect-version: {prefect.__version__}",
        "",
        "build: null",
        "push: null",
        "# Workers run the code baked into the image (infra/Dockerfile), installed at /app.",
        "pull:",
        "  - prefect.deployments.steps.set_working_directory:",
        "      directory: /app",
        "",
        "definitions:",
        "  work_pool: &pool",
        "    name: vitalstream",
        "    work_queue_name: default",
        "  one_at_a_time: &once",
        "    limit: 1",
        "    collision_strategy: CANCEL_NEW",
        "",
        "deployments:",
    ]
    for d in DEPLOYMENTS:
        module, _, name = d.entrypoint.partition(":")
        lines += [
            f"  - name: {d.name}",
            f"    entrypoint: {module.replace('.', '/')}.py:{name}",
            f"    description: {d.description}",
            "    tags: [vitalstream]",
        ]
        params = parameters(d, settings, None, None)
        if params:
            lines += ["    parameters:", *(f"      {k}: {v}" for k, v in params.items())]
        lines += [
            "    schedules:",
            f'      - cron: "{getattr(settings, d.cron_setting)}"',
            f"        timezone: {settings.schedule_timezone}",
            "    concurrency_limit: *once",
            "    work_pool: *pool",
            "",
        ]
    return "\n".join(lines[:-1]) + "\n"


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
