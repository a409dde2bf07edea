"""The patient report over a lake the real engine wrote, with a known sensor gap and known bad messages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import T0, LakeEngine, raw_batch

from cli.main import main
from ops.report import gaps, high_risk_episodes, load_patient, write_report
from pipeline.errors import VitalStreamError
from pipeline.model_contract import RiskLevels

MIN = 60_000
SILENT_HR = range(20, 35)  # minutes 20-34: the heart-rate monitor sends nothing for three 5-minute windows


def stream_batch(stream: str, field: str, minutes: range, every_s: int, value: float, skip: range = range(0)) -> object:
    values: list[bytes | None] = []
    ts: list[int] = []
    for m in minutes:
        if m in skip:
            continue
        for s in range(0, 60, every_s):
            t = T0 + m * MIN + s * 1000
            values.append(json.dumps({"patient_id": "P7", "device_id": f"{stream}-7", "ts": t, field: value}).encode())
            ts.append(t)
    if stream == "heart_rate":
        values[5] = b"{not json"
        values[9] = json.dumps({"patient_id": "P7", "device_id": "hr-7", "ts": ts[9], field: 900}).encode()
    return raw_batch(stream, values, [b"P7"] * len(values), ts)


def build_lake(lake: Path, tiny_checkpoint: Path) -> Path:
    """One patient, one hour: heart rate with a 15-minute gap and two bad messages, respiration, glucose."""
    engine = LakeEngine(lake, tiny_checkpoint, "r")
    minutes = range(0, 60)
    batch = [
        stream_batch("heart_rate", "heart_rate_bpm", minutes, 10, 72.0, skip=SILENT_HR),
        stream_batch("respiration", "respiration_rate_per_min", minutes, 10, 15.0),
        stream_batch("glucose", "glucose_mg_dl", minutes, 60, 110.0),
    ]
    engine.write(engine.process(batch, drain=True))
    return lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return build_lake(tmp_path_factory.mktemp("report") / "lake", tiny_checkpoint)


def test_gaps_high_risk_episodes_and_the_aligned_grid(lake: Path) -> None:
    data = load_patient(lake, "P7", hours=2)  # only one hour of data: the range starts at the first window
    assert data.start == pd.Timestamp(T0, unit="ms", tz="UTC")
    assert data.end == pd.Timestamp(T0 + 60 * MIN, unit="ms", tz="UTC")
    assert len(data.windows) == 12 and data.windows.index.is_monotonic_increasing
    start = pd.Timestamp(T0 + 20 * MIN, unit="ms", tz="UTC")
    assert gaps(data) == [("heart_rate", start, start + pd.Timedelta(minutes=15))]
    scores = data.scores["risk_score"].dropna()
    assert len(scores) == 12
    cut = float(scores.sort_values().iloc[6])  # about half the windows at or above it
    found = high_risk_episodes(data, RiskLevels(medium=cut / 2, high=cut))
    covered = sum(int((row.to - row._1) / data.window) for row in found.itertuples())
    assert covered == int((scores >= cut).sum()) and len(found) >= 1


def test_report_writes_png_and_html_with_gaps_and_anomalies(lake: Path, tmp_path: Path) -> None:
    page, png = write_report(lake, "P7", hours=1, out_dir=tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    text = page.read_text()
    assert "data:image/png;base64," in text
    assert "<td>heart_rate</td><td>11-22 00:20</td><td>11-22 00:35</td><td>15</td>" in text
    assert "invalid_json" in text and "heart_rate_out_of_range" in text
    assert "glucose 100%" in text and "heart_rate 75%" in text
    # the heart-rate gap raised a silent-sensor alert, resolved when the monitor sent data again
    assert "<td>sensor_silent (heart_rate)</td><td>11-22 00:25</td><td>0</td><td>-</td><td>11-22 00:40</td>" in text


def test_report_cli_and_unknown_patient(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--patient", "P7", "--lake", str(lake), "--hours", "1"]) == 0
    assert (lake / "_reports" / "P7.html").exists() and "P7.html" in capsys.readouterr().out
    with pytest.raises(VitalStreamError, match="P404"):
        load_patient(lake, "P404", hours=1)
    assert main(["report", "--patient", "P404", "--lake", str(lake)]) == 1
