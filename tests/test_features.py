from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import T0

from pipeline.features import window_columns, window_features

MIN = 60_000


def table(rows: list[dict[str, object]]) -> pa.Table:
    base = {"device_id": "d", "fall_confidence": None, "impact_g": None, "censored": False}
    rows = [{**base, **r} for r in rows]
    t = pa.Table.from_pylist(rows)
    return t.set_column(
        t.schema.get_field_index("event_time"),
        "event_time",
        t.column("event_time").cast(pa.timestamp("ms", tz="UTC")),
    )


def test_mean_min_max_last_count_and_slope() -> None:
    t = table(
        [
            {"patient_id": "P1", "stream": "heart_rate", "event_time": T0 + 3 * MIN, "value": 76.0},
            {"patient_id": "P1", "stream": "heart_rate", "event_time": T0 + 1 * MIN, "value": 72.0},
            {"patient_id": "P1", "stream": "heart_rate", "event_time": T0 + 2 * MIN, "value": 74.0},
            {
                "patient_id": "P1",
                "stream": "glucose",
                "event_time": T0 + 2 * MIN,
                "value": 40.0,
                "censored": True,
            },
            {
                "patient_id": "P2",
                "stream": "fall",
                "event_time": T0 + 4 * MIN,
                "value": 1.0,
                "fall_confidence": 0.9,
                "impact_g": 3.5,
            },
            {
                "patient_id": "P2",
                "stream": "fall",
                "event_time": T0 + 4 * MIN + 1,
                "value": 0.0,
                "fall_confidence": 0.2,
                "impact_g": None,
            },
        ]
    )
    w = {r["patient_id"]: r for r in window_features(t, 5 * MIN).to_pylist()}
    assert set(window_features(t, 5 * MIN).column_names) == set(window_columns())
    p1 = w["P1"]
    assert p1["heart_rate_bpm_mean"] == pytest.approx(74.0)
    assert (p1["heart_rate_bpm_min"], p1["heart_rate_bpm_max"], p1["heart_rate_bpm_last"]) == (72, 76, 76)
    assert p1["heart_rate_bpm_slope_per_min"] == pytest.approx(2.0)
    assert p1["heart_rate_count"] == 3 and p1["reading_count"] == 4
    assert p1["glucose_mg_dl_slope_per_min"] is None  # one reading: no slope
    assert p1["glucose_censored_count"] == 1 and not p1["fall_present"]
    p2 = w["P2"]
    assert p2["fall_count"] == 1 and p2["fall_confidence_max"] == pytest.approx(0.9)
    assert p2["fall_impact_g_max"] == pytest.approx(3.5) and p2["fall_present"]
    assert not p2["heart_rate_present"] and p2["heart_rate_bpm_mean"] is None


def test_windows_are_separate_per_patient_and_time() -> None:
    rows = [
        {"patient_id": f"P{p}", "stream": "respiration", "event_time": T0 + m * MIN, "value": float(m)}
        for p in range(3)
        for m in range(12)
    ]
    w = window_features(table(rows), 5 * MIN)
    assert len(w) == 9
    assert w.column("respiration_count").to_pylist().count(5) == 6
