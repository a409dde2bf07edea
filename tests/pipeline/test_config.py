"""One settings object: every setting documented (code and docs/operations.md) and shown by `vitalstream config`."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from cli.main import main
from pipeline.config import SETTING_DOCS, Settings, load_settings
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def configuration_section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("## Configuration")
    return text[start : text.index("\n## ", start + 1)]


def test_every_setting_has_a_doc_and_a_row_in_the_settings_table() -> None:
    # The table is generated from SETTING_DOCS (docs/generate.py); tests/system/test_docs.py checks it is current.
    section = configuration_section()
    table_rows = [line for line in section.splitlines() if line.startswith("| `")]
    for f in fields(Settings):
        assert SETTING_DOCS.get(f.name), f"setting {f.name} has no entry in pipeline.config.SETTING_DOCS"
        assert any(f"`{f.name}`" in row.split("|")[1] for row in table_rows), f"settings table lacks {f.name}"
    assert set(SETTING_DOCS) == {f.name for f in fields(Settings)}  # no doc for a setting that is gone


def test_config_command_shows_every_setting_with_default_and_doc(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text('[vitalstream]\ncompact_target_mb = 64\nscore_cron = "*/2 * * * *"\n')
    monkeypatch.setenv("VITALSTREAM_PARTITIONS", "6")
    assert main(["--config", str(toml), "config"]) == 0
    out = capsys.readouterr().out
    for f in fields(Settings):
        env = "VITALSTREAM_<OPTION> per option" if f.name == "kafka_security" else f"VITALSTREAM_{f.name.upper()}"
        assert f"\n{f.name} = " in "\n" + out and f"[{env}]" in out
        assert SETTING_DOCS[f.name] in out
    assert "partitions = 6   (default 3)" in out
    assert "compact_target_mb = 64.0   (default 128.0)" in out
    assert 'score_cron = "*/2 * * * *"   (default "* * * * *")' in out


def test_operations_settings_are_checked() -> None:
    assert load_settings(env={"VITALSTREAM_REPORT_HOURS": "6"}).report_hours == 6.0
    with pytest.raises(ConfigError):
        load_settings(env={"VITALSTREAM_COMPACT_TARGET_MB": "0"})
    with pytest.raises(ConfigError):
        load_settings(env={"VITALSTREAM_ARTIFACT_TOP_PATIENTS": "many"})


def test_output_cut_short_by_a_pipe_reader_gives_no_traceback() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        f"{sys.executable} -m cli.main config | head -1", shell=True, capture_output=True, text=True, timeout=60
    )
    assert r.stdout.startswith("bootstrap")
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_kafka_security_is_set_option_by_option_and_the_whole_table_variable_says_so() -> None:
    s = load_settings(env={"VITALSTREAM_SECURITY_PROTOCOL": "SSL", "VITALSTREAM_KAFKA_SSL_CAFILE": "/ca.pem"})
    assert s.kafka_security == {"security_protocol": "SSL", "ssl_cafile": "/ca.pem"}
    with pytest.raises(ConfigError, match="VITALSTREAM_SECURITY_PROTOCOL"):
        load_settings(env={"VITALSTREAM_KAFKA_SECURITY": "SSL"})
