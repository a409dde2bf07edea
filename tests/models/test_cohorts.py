"""Real recordings as labelled data: a tidy file becomes the live path's readings, windows and threshold
labels; augmentations of simulated readings (sensor configurations, pre-aggregation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from models.augment import CONFIGURATIONS, configure, pre_aggregate
from models.cohorts import COHORTS, REAL_DATA, cohort_file, load_cohort, sample, tidy_readings
from pipeline.features import window_features
from sim.replay import read_tidy
from sim.simulate import SimulationConfig, simulate

HEADER = "subject,ts_utc,stream,value,unit\n"


def tidy(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def test_a_tidy_recording_becomes_the_readings_the_live_path_keeps(tmp_path: Path) -> None:
    path = tidy(
        tmp_path / "r.csv",
        [
            "A,2024-01-01T10:00:00Z,glucose,3.0,mmol/L",  # 54.05 mg/dL
            "A,2024-01-01T10:05:00Z,glucose,2.0,mmol/L",  # 36 mg/dL: below the CGM range, censored at 40
            "A,2024-01-01T10:05:00Z,glucose,9.0,mmol/L",  # same patient, stream and time: a duplicate
            "A,2024-01-01T10:00:00Z,respiration,0,breaths/min",  # no measurement: missing
            "A,2024-01-01T10:01:00Z,respiration,14,breaths/min",
            "A,2024-01-01T10:02:00Z,heart_rate,5,bpm",  # outside the suite's range (20-300): dropped
        ],
    )
    r = tidy_readings(read_tidy(path), prefix="demo")
    rows = r.to_pylist()
    assert {x["patient_id"] for x in rows} == {"demo:A"}
    glucose = [x for x in rows if x["stream"] == "glucose"]
    assert [round(x["value"], 2) for x in glucose] == [54.05, 40.0]
    assert [x["censored"] for x in glucose] == [False, True]
    assert [x["value"] for x in rows if x["stream"] == "respiration"] == [14.0]
    assert not [x for x in rows if x["stream"] == "heart_rate"]
    assert r.schema.names[:5] == ["patient_id", "device_id", "stream", "event_time", "value"]


def test_labels_come_from_the_simulators_thresholds_on_each_patients_own_cadence(tmp_path: Path) -> None:
    # a flash CGM every 15 minutes: 60, 62, 65 mg/dL is < 70 for >= 15 minutes on its cadence
    rows = [
        f"L,2024-01-01T{10 + k // 4:02d}:{15 * (k % 4):02d}:00Z,glucose,{v},mg/dL"
        for k, v in enumerate([120, 110, 100, 60, 62, 65, 100, 120])
    ]
    # a 5-minute CGM beside it: one reading of 50 mg/dL is an instant event
    rows += [f"F,2024-01-01T10:{5 * k:02d}:00Z,glucose,{v},mg/dL" for k, v in enumerate([100, 90, 50, 90, 100])]
    r = tidy_readings(read_tidy(tidy(tmp_path / "r.csv", rows)))
    from sim.simulate import detect_events

    events = detect_events(r).to_pylist()
    assert sorted((e["patient_id"], e["condition"]) for e in events) == [("F", "hypoglycaemia"), ("L", "hypoglycaemia")]
    onset = {e["patient_id"]: e["onset"].strftime("%H:%M") for e in events}
    assert onset == {"F": "10:10", "L": "10:45"}


def test_sample_keeps_one_stretch_per_patient() -> None:
    readings = simulate(SimulationConfig(patients=6, hours=4.0, seed=2, start_ms=1_795_305_600_000)).readings
    part = sample(readings, max_patients=4, hours=1.0, seed=0)
    ids = pc.unique(part.column("patient_id")).to_pylist()
    assert len(ids) == 4
    for pid in ids:
        t = part.filter(pc.equal(part.column("patient_id"), pid)).column("event_time").cast(pa.int64()).to_numpy()
        assert t.max() - t.min() < 3_600_000


@pytest.mark.skipif(cohort_file("ddatshr") is None, reason="data/real/ddatshr not present")
def test_a_vendored_cohort_loads_into_windows_and_events() -> None:
    assert REAL_DATA.is_dir() and set(COHORTS) >= {"t1d_uom", "ddatshr", "mimic3_demo"}
    for name in ("t1d_uom", "ddatshr", "mimic3_demo"):
        folder = REAL_DATA / name
        assert (folder / "README.md").exists() and (folder / "ORIGINAL_LICENSE.txt").exists(), name
    assert "Open Database License" in (REAL_DATA / "mimic3_demo" / "ORIGINAL_LICENSE.txt").read_text()
    c = load_cohort("ddatshr", max_patients=3, hours=24.0, seed=1)
    assert c is not None and len(c.windows) > 0 and c.patient_days <= 3.01
    assert c.windows.equals(window_features(c.readings, 300_000))
    assert set(c.events.column("condition").to_pylist()) <= {"hypoglycaemia", "hyperglycaemia"}
    assert not c.windows.column("heart_rate_present").to_numpy(zero_copy_only=False).any()


# --- augmentations ----------------------------------------------------------------------------------------


def test_each_simulated_patient_keeps_only_the_streams_of_its_configuration() -> None:
    readings = simulate(SimulationConfig(patients=40, hours=1.0, seed=4, start_ms=1_795_305_600_000)).readings
    kept, configs = configure(readings, np.random.default_rng(0))
    assert set(configs) == set(readings.column("patient_id").to_pylist())
    assert set(configs.values()) <= {c for c, _ in CONFIGURATIONS} and len(set(configs.values())) >= 3
    for pid, stream in set(zip(kept.column("patient_id").to_pylist(), kept.column("stream").to_pylist(), strict=True)):
        assert stream in configs[pid]


def test_pre_aggregation_leaves_one_averaged_reading_per_interval() -> None:
    readings = simulate(SimulationConfig(patients=3, hours=0.5, seed=4, start_ms=1_795_305_600_000)).readings
    pid = readings.column("patient_id").to_pylist()[0]
    out = pre_aggregate(readings, [pid], interval_ms=300_000)
    w_in = window_features(readings, 300_000).to_pylist()
    w_out = {(r["patient_id"], r["window_start"]): r for r in window_features(out, 300_000).to_pylist()}
    for r in w_in:
        o = w_out[(r["patient_id"], r["window_start"])]
        if r["patient_id"] == pid and r["heart_rate_count"]:
            assert o["heart_rate_count"] == 1 and o["heart_rate_bpm_min"] is None
            assert o["heart_rate_bpm_mean"] == pytest.approx(r["heart_rate_bpm_mean"], abs=0.051)
        else:
            assert o["heart_rate_count"] == r["heart_rate_count"]
        assert o["glucose_count"] == r["glucose_count"]  # other streams untouched
