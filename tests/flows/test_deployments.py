"""The scheduled deployments (flows/serve.py): one per DEPLOYMENTS entry, never overlapping themselves, on the
settings' schedules, with the parameters their flows take; prefect.yaml is generated from the same list."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from flows.serve import DEPLOYMENTS, _flow, candidate_checkpoint, deployments, prefect_yaml
from pipeline.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def crons(settings: Settings) -> dict[str, tuple[str, str]]:
    """deployment -> (cron, time zone) of its one schedule."""
    out = {}
    for d in deployments(settings):
        (schedule,) = d.schedules or []
        out[d.name] = (str(schedule.schedule.cron), str(schedule.schedule.timezone))  # type: ignore[union-attr]
    return out


def test_prefect_yaml_matches_the_served_deployments() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    doc = PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "prefect.yaml").read_text()))
    served = {d.name: d for d in deployments(Settings(bootstrap="kafka:9092"))}
    assert {d.name for d in doc.deployments} == set(served)
    for d in doc.deployments:
        s = served[d.name]
        assert [c.cron for c in d.schedules or []] == [x.schedule.cron for x in s.schedules or []]  # type: ignore[union-attr]
        path, _, attr = (d.entrypoint or "").partition(":")
        assert s.entrypoint == path.removesuffix(".py").replace("/", ".") + "." + attr
        assert d.concurrency_limit is not None and d.concurrency_limit.limit == 1
        assert d.work_pool is not None and d.work_pool.name == "vitalstream"


def test_one_deployment_per_entry_none_overlapping_itself() -> None:
    built = deployments(Settings(bootstrap="kafka:9092"))
    assert [d.name for d in built] == [d.name for d in DEPLOYMENTS]
    for d, spec in zip(built, DEPLOYMENTS, strict=True):
        assert d.concurrency_limit == 1, d.name
        assert d.concurrency_options is not None
        assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW", d.name  # not queued up
        assert d.entrypoint == spec.entrypoint.replace(":", "."), d.name
        assert d.description == spec.description
        assert "vitalstream" in (d.tags or [])


def test_schedules_come_from_the_settings_cron_fields() -> None:
    default = Settings(bootstrap="kafka:9092")
    assert crons(default) == {d.name: (getattr(default, d.cron_setting), "UTC") for d in DEPLOYMENTS}
    changed = crons(Settings(bootstrap="kafka:9092", compact_cron="15 */2 * * *", schedule_timezone="Europe/Oslo"))
    assert changed["compaction"] == ("15 */2 * * *", "Europe/Oslo")
    assert changed["scoring"] == (default.score_cron, "Europe/Oslo")  # the other schedules as they were


def test_the_parameters_carry_the_broker_an_absolute_lake_and_the_candidate_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(bootstrap="kafka-1:9092,kafka-2:9092", lake=Path("relative/lake"))
    params = {d.name: d.parameters for d in deployments(settings)}
    lake = tmp_path / "relative" / "lake"  # resolved: served runs start in processes of their own
    assert params["scoring"] == {"lake": str(lake), "mode": "follow", "bootstrap": "kafka-1:9092,kafka-2:9092"}
    for name in ("compaction", "validate", "quality-report"):
        assert params[name] == {"lake": str(lake)}
    assert params["retraining"] == {"out": str(lake / "_models" / "candidate" / "risk_lstm.pt")}
    assert Path(params["retraining"]["out"]).is_absolute()
    assert candidate_checkpoint(settings) == Path("relative/lake/_models/candidate/risk_lstm.pt")

    with_config = {d.name: d.parameters for d in deployments(settings, config_file=Path("/etc/vitalstream.toml"))}
    assert with_config["scoring"]["config"] == with_config["compaction"]["config"] == "/etc/vitalstream.toml"
    assert "config" not in with_config["retraining"]  # training reads no lake settings


def test_every_deployments_parameters_are_parameters_of_its_flow() -> None:
    for d, spec in zip(deployments(Settings(bootstrap="kafka:9092"), Path("v.toml")), DEPLOYMENTS, strict=True):
        accepted = set(inspect.signature(_flow(spec).fn).parameters)
        assert set(d.parameters) <= accepted, (d.name, set(d.parameters) - accepted)


def test_prefect_yaml_output_parses_and_equals_the_committed_file() -> None:
    text = prefect_yaml()
    assert text == (ROOT / "prefect.yaml").read_text()
    doc = yaml.safe_load(text)
    assert [d["name"] for d in doc["deployments"]] == [d.name for d in DEPLOYMENTS]
    defaults = Settings()
    for d, spec in zip(doc["deployments"], DEPLOYMENTS, strict=True):
        assert d["schedules"] == [{"cron": getattr(defaults, spec.cron_setting), "timezone": "UTC"}]
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}  # the YAML anchor
    by_name = {d["name"]: d for d in doc["deployments"]}
    assert by_name["retraining"]["parameters"] == {"out": "/lake/_models/candidate/risk_lstm.pt"}  # the image's lake
    assert by_name["scoring"]["parameters"] == {"mode": "follow"}  # the worker's own broker setting
