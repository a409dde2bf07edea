"""`vitalstream replay --csv` for tidy recordings: reading, messages, one-line errors, and a replay through
the embedded broker and the scoring flow (the integration path, not mocked)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from cli.main import main
from pipeline.config import Settings
from pipeline.errors import ConfigError
from sim.broker import EmbeddedBroker
from sim.replay import is_tidy, read_tidy, tidy_messages

HEADER = "subject,ts_utc,stream,value,unit\n"


def write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    text = header + "".join(r + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def recording(path: Path, hours: float = 1.5) -> Path:
    """S1: CGM every 5 min (mmol/L) only; S2: a fitness tracker's heart rate, one value per 5 min, only."""
    rows = []
    for k in range(int(hours * 12)):
        minute = 5 * k
        ts = f"2024-01-01T{10 + minute // 60:02d}:{minute % 60:02d}:30Z"
        rows.append(f"S1,{ts},glucose,{6.0 + 0.01 * k:.2f},mmol/L")
        rows.append(f"S2,{ts},heart_rate,{70 + k % 5},bpm")
    return write(path, rows)


def test_a_tidy_recording_becomes_one_wire_message_per_row(tmp_path: Path) -> None:
    path = recording(tmp_path / "r.csv.gz", hours=0.5)
    assert is_tidy(path)
    frame = read_tidy(path)
    messages = tidy_messages(frame)
    assert messages[0].timestamp_ms == 1_704_103_230_000  # 2024-01-01T10:00:30Z, the recording's own time
    assert len(messages) == len(frame) == 12
    first = json.loads(messages[0].value)
    assert messages[0].stream == "glucose" and messages[0].key == b"S1"
    assert first == {"patient_id": "S1", "device_id": "cgm-S1", "ts": messages[0].timestamp_ms, "glucose_mmol_l": 6.0}
    assert [m.timestamp_ms for m in messages] == sorted(m.timestamp_ms for m in messages)
    hr = [json.loads(m.value) for m in messages if b"heart_rate_bpm" in m.value]
    assert {h["patient_id"] for h in hr} == {"S2"} and len(hr) == 6
    shifted = tidy_messages(frame, shift_ms=3_600_000)
    assert shifted[0].timestamp_ms == messages[0].timestamp_ms + 3_600_000


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("subject,time,stream,value\n", ["S1,2024-01-01T00:00:00Z,glucose,100"], "missing column(s) ts_utc, unit"),
        (HEADER, ["S1,2024-01-01T00:00:00Z,spo2,97,%"], "unknown stream(s) spo2"),
        (HEADER, ["S1,2024-01-01T00:00:00Z,glucose,100,g/L"], "unsupported unit(s) 'g/l' for glucose"),
        (HEADER, ["S1,yesterday,glucose,100,mg/dL"], "row 2: unreadable subject, ts_utc or value"),
    ],
)
def test_a_wrong_file_is_one_config_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: str, rows: list[str], message: str
) -> None:
    path = write(tmp_path / "bad.csv", rows, header=header)
    if header != HEADER:  # the wrong header reads as no tidy recording: checked by read_tidy itself
        with pytest.raises(ValueError, match=r"missing column\(s\) ts_utc, unit"):
            read_tidy(path)
        return
    assert main(["replay", "--csv", str(path), "--bootstrap", "127.0.0.1:9"]) == ConfigError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0]


def test_a_missing_file_is_one_config_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.csv.gz"
    assert main(["replay", "--csv", str(path), "--bootstrap", "127.0.0.1:9"]) == ConfigError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read" in err[0] and str(path) in err[0]


@pytest.mark.integration
def test_replay_csv_through_kafka_scores_only_what_each_patient_measures(
    session_broker: EmbeddedBroker,
    prefect_session: None,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.scoring import scoring_flow

    path = recording(tmp_path / "wearables.csv.gz")
    monkeypatch.setenv("VITALSTREAM_TOPIC_PREFIX", "tidy.")
    assert main(["replay", "--csv", str(path), "--bootstrap", session_broker.bootstrap]) == 0
    settings = Settings(topic_prefix="tidy.", lake=tmp_path / "lake", group="tidy", model_path=tiny_checkpoint)
    s = scoring_flow(settings, session_broker.bootstrap, mode="drain")
    assert s["consumed"] == 36 and s["balanced"] and s["quarantined"] == {}
    windows = ds.dataset(settings.lake / "windows", format="parquet", partitioning="hive").to_table().to_pandas()
    assert len(windows) == 36  # one reading per 5-minute window, per subject
    assert windows["heart_rate_bpm_min"].isna().all() and windows["glucose_mg_dl_max"].isna().all()
    scores = ds.dataset(settings.lake / "risk_scores", format="parquet", partitioning="hive").to_table().to_pandas()
    by = {p: g.sort_values("window_start") for p, g in scores.groupby("patient_id")}
    for patient, assessed, absent in (
        ("S1", ["p_hypoglycaemia", "p_hyperglycaemia"], ["p_cardiac", "p_respiratory", "p_fall"]),
        ("S2", ["p_cardiac"], ["p_hypoglycaemia", "p_hyperglycaemia", "p_respiratory", "p_fall"]),
    ):
        rows = by[patient]
        assert rows["risk_level"].iloc[0] == "insufficient_data" and rows["risk_score"].isna().iloc[0]
        later = rows.iloc[1:]
        assert later["risk_score"].between(0, 1).all() and later[assessed].notna().all().all()
        assert rows[absent].isna().all().all()  # no probability for what nobody measured
