from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import T0
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.features import PARTIAL_SCHEMA, finish, merge_partials, partials, window_columns, window_features

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


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["P1", "P2"]),
            st.sampled_from(["glucose", "heart_rate", "respiration", "fall"]),
            st.integers(0, 20 * 60),  # seconds
            st.floats(0, 300, allow_nan=False),
        ),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 6),
)
def test_incremental_aggregation_equals_aggregating_all_at_once(
    rows: list[tuple[str, str, int, float]], parts: int
) -> None:
    t = table(
        [
            {
                "patient_id": p,
                "stream": s,
                "event_time": T0 + sec * 1000,
                "value": v,
                "fall_confidence": 0.5 if s == "fall" else None,
                "impact_g": v / 100 if s == "fall" else None,
                "censored": v > 250 and s == "glucose",
            }
            for p, s, sec, v in rows
        ]
    )
    size = max(1, len(rows) // parts)
    merged = PARTIAL_SCHEMA.empty_table()
    for i in range(0, len(rows), size):
        merged = merge_partials(merged, partials(t.slice(i, size), 5 * MIN))
    got, want = finish(merged, 5 * MIN).to_pylist(), window_features(t, 5 * MIN).to_pylist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-9, abs=1e-9), k
            else:
                assert g[k] == w[k], k


def test_one_reading_in_a_window_has_no_min_max_or_slope() -> None:
    # A wearable that sends one averaged heart rate per 5 minutes: the window has a mean and a last value,
    # but no spread and no trend; the count says why (pre-aggregated, not flat).
    t = table(
        [
            {"patient_id": "P1", "stream": "heart_rate", "event_time": T0 + 1 * MIN, "value": 80.0},
            {"patient_id": "P1", "stream": "glucose", "event_time": T0 + 1 * MIN, "value": 100.0},
            {"patient_id": "P1", "stream": "glucose", "event_time": T0 + 3 * MIN, "value": 104.0},
        ]
    )
    w = window_features(t, 5 * MIN).to_pylist()[0]
    assert (w["heart_rate_bpm_mean"], w["heart_rate_bpm_last"], w["heart_rate_count"]) == (80.0, 80.0, 1)
    assert w["heart_rate_bpm_min"] is None and w["heart_rate_bpm_max"] is None
    assert w["heart_rate_bpm_slope_per_min"] is None
    assert (w["glucose_mg_dl_min"], w["glucose_mg_dl_max"], w["glucose_count"]) == (100.0, 104.0, 2)
    assert w["glucose_mg_dl_slope_per_min"] == pytest.approx(2.0)


def test_partials_merged_across_batches_unmask_min_and_max_once_a_second_reading_arrives() -> None:
    first = table([{"patient_id": "P1", "stream": "heart_rate", "event_time": T0 + 1 * MIN, "value": 80.0}])
    second = table([{"patient_id": "P1", "stream": "heart_rate", "event_time": T0 + 2 * MIN, "value": 90.0}])
    alone = finish(partials(first, 5 * MIN), 5 * MIN).to_pylist()[0]
    both = finish(merge_partials(partials(first, 5 * MIN), partials(second, 5 * MIN)), 5 * MIN).to_pylist()[0]
    assert alone["heart_rate_bpm_min"] is None
    assert (both["heart_rate_bpm_min"], both["heart_rate_bpm_max"]) == (80.0, 90.0)
