"""Ground truth for the risk model: events by the published thresholds (onset, persistence rules) and the
window labels built from them (horizon, windows during an ongoing event)."""

from __future__ import annotations

import pyarrow as pa
from conftest import T0
from conftest import canonical_readings as readings

from models.labels import window_labels
from pipeline.model_contract import HEADS
from sim.simulate import detect_events

MIN = 60_000


def events_of(t: pa.Table) -> list[tuple[str, float, float]]:
    onset = t.column("onset").cast(pa.int64()).to_pylist()
    end = t.column("end").cast(pa.int64()).to_pylist()
    return [
        (c, (o - T0) / MIN, (e - T0) / MIN)
        for c, o, e in zip(t.column("condition").to_pylist(), onset, end, strict=True)
    ]


def vitals(minutes: float, value: float, before: float = 2.0, after: float = 2.0, normal: float = 80.0) -> tuple:
    """5-second readings: `before` minutes normal, `minutes` at `value`, `after` minutes normal."""
    t, v = [], []
    for start, length, x in ((0.0, before, normal), (before, minutes, value), (before + minutes, after, normal)):
        k = round(length * 12)
        t += [start + i / 12 for i in range(k)]
        v += [x] * k
    return t, v


def test_cardiac_needs_five_minutes_and_takes_its_onset_from_the_first_reading() -> None:
    t, v = vitals(5.0, 135.0)
    assert events_of(detect_events(readings("heart_rate", t, v))) == [("cardiac", 2.0, 2.0 + 5 - 1 / 12)]
    t, v = vitals(4.5, 135.0)
    assert detect_events(readings("heart_rate", t, v)).num_rows == 0
    t, v = vitals(6.0, 38.0)  # bradycardia <= 40 counts too
    assert [e[:2] for e in events_of(detect_events(readings("heart_rate", t, v)))] == [("cardiac", 2.0)]
    t, v = vitals(6.0, 130.0)  # 130 is below the >= 131 threshold
    assert detect_events(readings("heart_rate", t, v)).num_rows == 0


def test_respiratory_needs_five_minutes_either_side() -> None:
    for value in (25.0, 8.0):
        t, v = vitals(5.0, value, normal=16.0)
        assert [e[:2] for e in events_of(detect_events(readings("respiration", t, v)))] == [("respiratory", 2.0)]
        t, v = vitals(4.0, value, normal=16.0)
        assert detect_events(readings("respiration", t, v)).num_rows == 0


def test_glucose_fifteen_minute_rules_and_the_instant_level_two_rule() -> None:
    cgm = [0, 5, 10, 15, 20, 25, 30]
    # > 250 for 15 min (readings at 5, 10, 15 cover 15 min with the 5-min cadence) is hyperglycaemia ...
    hyper = detect_events(readings("glucose", cgm, [200, 260, 270, 280, 200, 200, 200]))
    assert events_of(hyper) == [("hyperglycaemia", 5.0, 15.0)]
    # ... 10 minutes is not
    assert detect_events(readings("glucose", cgm, [200, 260, 270, 200, 200, 200, 200])).num_rows == 0
    # < 70 for 15 minutes is hypoglycaemia; a single reading < 54 is one at once (and the two merge)
    assert [e[:2] for e in events_of(detect_events(readings("glucose", cgm, [90, 65, 60, 66, 90, 90, 90])))] == [
        ("hypoglycaemia", 5.0)
    ]
    assert [e[:2] for e in events_of(detect_events(readings("glucose", cgm, [90, 65, 50, 66, 64, 90, 90])))] == [
        ("hypoglycaemia", 5.0)
    ]
    assert [e[:2] for e in events_of(detect_events(readings("glucose", cgm, [90, 90, 50, 90, 90, 90, 90])))] == [
        ("hypoglycaemia", 10.0)
    ]


def _windows(patient: list[str], end_minutes: list[int]) -> pa.Table:
    ends = pa.array([T0 + m * MIN for m in end_minutes], pa.int64()).cast(pa.timestamp("ms", "UTC"))
    return pa.table({"patient_id": patient, "window_end": ends})


def _events(rows: list[tuple[str, str, int, int]]) -> pa.Table:
    return pa.table(
        {
            "patient_id": [r[0] for r in rows],
            "condition": [r[1] for r in rows],
            "onset": pa.array([T0 + r[2] * MIN for r in rows], pa.int64()).cast(pa.timestamp("ms", "UTC")),
            "end": pa.array([T0 + r[3] * MIN for r in rows], pa.int64()).cast(pa.timestamp("ms", "UTC")),
        }
    )


def test_labels_look_ahead_exactly_one_horizon() -> None:
    # onset at 60: a window ending at 0 sees it at exactly H (included), one ending at -1 does not;
    # a window ending at the onset itself does not predict it (onset must lie after window_end)
    windows = _windows(["A"] * 4, [-1, 0, 55, 60])
    labels, ongoing = window_labels(windows, _events([("A", "respiratory", 60, 70)]), horizon_minutes=60)
    assert labels[:, HEADS.index("respiratory")].tolist() == [0, 1, 1, 0]
    assert labels[:, HEADS.index("any")].tolist() == [0, 1, 1, 0]
    assert ongoing.tolist() == [False, False, False, False]  # 60 is the onset, not after it
    labels, _ = window_labels(windows, _events([("A", "respiratory", 60, 70)]), horizon_minutes=30)
    assert labels[:, HEADS.index("respiratory")].tolist() == [0, 0, 1, 0]


def test_windows_during_an_ongoing_event_are_marked_and_other_conditions_still_count() -> None:
    windows = _windows(["A"] * 5 + ["B"], [50, 65, 90, 95, 100, 65])
    events = _events([("A", "hyperglycaemia", 60, 95), ("A", "fall", 120, 120)])
    labels, ongoing = window_labels(windows, events, horizon_minutes=60)
    assert ongoing.tolist() == [False, True, True, True, False, False]  # (60, 95]; patient B never
    assert labels[:, HEADS.index("hyperglycaemia")].tolist() == [1, 0, 0, 0, 0, 0]
    # a fall at 120 is within the hour after 65, 90, 95 and 100 even while hyperglycaemia goes on
    assert labels[:, HEADS.index("fall")].tolist() == [0, 1, 1, 1, 1, 0]


def test_labels_without_events_are_all_negative() -> None:
    labels, ongoing = window_labels(_windows(["A"], [0]), _events([]))
    assert labels.sum() == 0 and not ongoing.any()


def test_ongoing_matches_a_check_of_every_event_for_overlapping_events_of_many_patients() -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    pats = [f"P{i}" for i in range(6)]
    rows = [
        (str(rng.choice(pats)), str(rng.choice(["cardiac", "respiratory"])), int(o), int(o + d))
        for o, d in zip(rng.integers(0, 400, 40), rng.integers(0, 60, 40), strict=True)
    ]
    ends = list(range(0, 480, 5))
    windows = _windows([p for p in pats for _ in ends], [e for _ in pats for e in ends])
    _labels, ongoing = window_labels(windows, _events(rows))
    end = windows.column("window_end").cast(pa.int64()).to_numpy()
    who = np.asarray(windows.column("patient_id").to_pylist())
    expected = np.zeros(len(end), bool)
    for p, _c, o, e in rows:
        expected |= (who == p) & (end > T0 + o * MIN) & (end <= T0 + e * MIN)
    assert expected.any() and ongoing.tolist() == expected.tolist()
