"""The `vitalstream` command in-process: help, and expected failures as one line with their exit codes
(pipeline.errors), never a traceback. (`config` output: tests/pipeline/test_config.py; `report`: tests/ops.)"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from cli.main import _parser, main
from pipeline.errors import BrokerUnavailable, ConfigError, VitalStreamError
from sim.broker import free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No VITALSTREAM_* setting from the machine running the tests; a scratch working directory."""
    for name in list(os.environ):
        if name.startswith("VITALSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vitalstream: error: ")
    return lines[0]


def commands() -> list[str]:
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_help_lists_every_command_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    names = commands()
    assert {"demo", "broker", "simulate", "replay", "run", "train", "export-onnx", "query", "config"} <= set(names)
    assert {"serve", "compact", "quality", "report"} <= set(names)
    for name in names:
        assert re.search(rf"^ +{re.escape(name)} +\S", out, re.M), f"{name} has no line in --help"


def test_run_without_a_bootstrap_address_is_one_config_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == ConfigError.exit_code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--bootstrap" in line and "VITALSTREAM_BOOTSTRAP" in line


def test_run_against_a_closed_port_is_one_broker_unavailable_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VITALSTREAM_CONNECT_TIMEOUT_S", "0.3")
    address = f"127.0.0.1:{free_port()}"
    assert main(["run", "--bootstrap", address, "--lake", str(tmp_path / "lake")]) == BrokerUnavailable.exit_code == 3
    line = one_error_line(capsys.readouterr().err)
    assert address in line and "cannot reach Kafka broker" in line
    assert not list((tmp_path / "lake").rglob("*.parquet"))  # nothing ran


def test_an_unknown_setting_in_the_config_file_is_a_config_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text("[vitalstream]\nwindow_minutes = 5\nwindow_minuets = 10\n")
    assert main(["--config", str(toml), "config"]) == ConfigError.exit_code
    line = one_error_line(capsys.readouterr().err)
    assert "unknown setting(s): window_minuets" in line
    assert main(["--config", str(toml), "run", "--bootstrap", "127.0.0.1:9"]) == ConfigError.exit_code
    assert "window_minuets" in one_error_line(capsys.readouterr().err)


def test_query_on_an_empty_lake_is_an_error_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    assert main(["query", "SELECT count(*) FROM risk_scores", "--lake", str(lake)]) == VitalStreamError.exit_code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("vitalstream: error: query failed: ") and "risk_scores" in err
    assert main(["query", "SELECT 41 + 1 AS answer", "--lake", str(lake)]) == 0  # plain SQL still runs
    assert "42" in capsys.readouterr().out


def test_query_on_an_empty_lake_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["query", "SELECT count(*) FROM risk_scores", "--lake", str(tmp_path)]) == 1
    one_error_line(capsys.readouterr().err)


def test_the_demo_replaces_its_own_lake_and_refuses_anyone_elses(tmp_path: Path) -> None:
    from cli.main import DEMO_MARK, fresh_demo_lake

    demo = tmp_path / "demo"
    fresh_demo_lake(demo)  # a new directory
    (demo / "risk_scores").mkdir()
    fresh_demo_lake(demo)  # an earlier demo's lake: replaced
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARK]

    other = tmp_path / "analysts"
    (other / "risk_scores").mkdir(parents=True)
    with pytest.raises(ConfigError, match="the demo did not write"):
        fresh_demo_lake(other)
    assert (other / "risk_scores").is_dir()  # never deleted
