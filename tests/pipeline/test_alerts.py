"""The alarm lifecycle over plain Arrow tables: hysteresis, consecutive windows, repeats, acknowledgements and
snoozes, falls at once, silent sensors (and a topic outage that pages nobody), predicted low glucose, bad
policies and bad acks, and the same events whatever the batch split or a restart from the saved state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.alert_policy import AlertPolicy, default_policy, load_policy, parse_policy
from pipeline.alerts import ACK_STREAM, ALERT_SCHEMA, AlertState, apply_acks, evaluate, to_json_rows
from pipeline.batch import RawBatch
from pipeline.errors import ConfigError
from pipeline.readings import PROVENANCE_SCHEMA

T0 = 1_764_028_800_000  # 2025-11-25 00:00 UTC
MIN = 60_000
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TS = pa.timestamp("ms", tz="UTC")

POLICY_DOC: dict[str, Any] = {
    "version": "test.1",
    "conditions": {
        "cardiac": {
            "column": "p_cardiac",
            "raise": 0.6,
            "clear": 0.3,
            "windows": 2,
            "repeat_minutes": 10,
            "severity": "critical",
            "evidence": {"column": "heart_rate_bpm_mean", "label": "HR", "unit": "bpm"},
        },
        "predicted_low_glucose": {
            "column": "glucose_mg_dl_forecast_low",
            "direction": "below",
            "raise": 70,
            "clear": 80,
            "windows": 1,
            "repeat_minutes": 15,
            "severity": "warning",
        },
        "fall": {"min_confidence": 0.7, "repeat_minutes": 5, "clear_after_minutes": 30, "severity": "critical"},
        "sensor_silent": {
            "after_minutes": {"heart_rate": 5, "glucose": 15},
            "repeat_minutes": 30,
            "severity": "warning",
        },
    },
}


@pytest.fixture
def policy() -> AlertPolicy:
    return parse_policy(POLICY_DOC)


def window(end_min: int, rows: dict[str, dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    """Scores and windows ending at T0 + end_min for patients {id: {column: value}}; absent means null."""
    ids = list(rows)
    end = pa.array([T0 + end_min * MIN] * len(ids), pa.int64()).cast(TS)
    scores = {"patient_id": pa.array(ids, pa.string()), "window_end": end}
    for col in ("p_cardiac", "risk_score", "glucose_mg_dl_forecast_low", "glucose_mg_dl_forecast"):
        scores[col] = pa.array([rows[p].get(col) for p in ids], pa.float64())
    windows = {
        "patient_id": pa.array(ids, pa.string()),
        "heart_rate_bpm_mean": pa.array([rows[p].get("hr") for p in ids], pa.float64()),
    }
    for stream in ("glucose", "heart_rate", "respiration"):
        windows[f"{stream}_present"] = pa.array([rows[p].get(stream, True) for p in ids], pa.bool_())
        windows[f"{stream}_count"] = pa.array([rows[p].get(f"{stream}_count") for p in ids], pa.int64())
    return pa.table(scores), pa.table(windows)


def readings(rows: list[tuple[str, str, float, float | None]], source: str = "vitals.fall:0") -> pa.Table:
    """Canonical readings (patient, stream, minute, fall confidence)."""
    n = len(rows)
    return pa.table(
        {
            "patient_id": pa.array([r[0] for r in rows], pa.string()),
            "device_id": pa.array([f"d-{r[0]}" for r in rows], pa.string()),
            "stream": pa.array([r[1] for r in rows], pa.string()),
            "event_time": pa.array([T0 + int(r[2] * MIN) for r in rows], pa.int64()).cast(TS),
            "value": pa.array([1.0] * n, pa.float64()),
            "fall_confidence": pa.array([r[3] for r in rows], pa.float64()),
            "impact_g": pa.array([2.5] * n, pa.float64()),
            "censored": pa.array([False] * n),
            "source": pa.array([source if r[1] == "fall" else f"vitals.{r[1]}:0" for r in rows], pa.string()),
            "src": pa.array(range(n), pa.int32()),
        },
        schema=PROVENANCE_SCHEMA,
    )


NO_READINGS = PROVENANCE_SCHEMA.empty_table()


def run(
    state: AlertState,
    policy: AlertPolicy,
    end_min: int | None = None,
    rows: dict[str, dict[str, Any]] | None = None,
    falls: pa.Table = NO_READINGS,
    horizon_min: int | None = None,
    highs: dict[str, int] | None = None,
) -> list[tuple[str, str, str, int]]:
    """One batch; returns (patient, condition, state, sequence) per event."""
    if end_min is None:
        scores, wins = window(0, {})
    else:
        scores, wins = window(end_min, rows or {})
    horizon = None if horizon_min is None else T0 + horizon_min * MIN
    high = (
        highs
        if highs is not None
        else {"vitals.heart_rate:0": T0 + 10_000 * MIN, "vitals.glucose:0": T0 + 10_000 * MIN}
    )
    out = evaluate(state, policy, scores, wins, falls, high, horizon, NOW)
    assert out.schema == ALERT_SCHEMA
    return [(r["patient_id"], r["condition"], r["state"], r["sequence"]) for r in out.to_pylist()]


def test_consecutive_windows_and_hysteresis(policy: AlertPolicy) -> None:
    s = AlertState()
    assert run(s, policy, 5, {"P1": {"p_cardiac": 0.7, "hr": 138}}) == []  # one window is not enough
    assert run(s, policy, 10, {"P1": {"p_cardiac": 0.65, "hr": 140}}) == [("P1", "cardiac", "raised", 1)]
    assert run(s, policy, 15, {"P1": {"p_cardiac": 0.45}}) == []  # between clear and raise: stays open
    assert run(s, policy, 20, {"P1": {"p_cardiac": 0.8}}) == [("P1", "cardiac", "repeated", 2)]  # not raised again
    assert run(s, policy, 25, {"P1": {"p_cardiac": 0.25}}) == [("P1", "cardiac", "resolved", 3)]
    assert run(s, policy, 30, {"P1": {"p_cardiac": 0.7}}) == []  # a new run of windows starts from zero


def test_the_reason_quotes_the_numbers(policy: AlertPolicy) -> None:
    s = AlertState()
    for end, p in ((5, 0.7), (10, 0.71)):
        scores, wins = window(end, {"P1": {"p_cardiac": p, "hr": 138}})
        out = evaluate(s, policy, scores, wins, NO_READINGS, {}, None, NOW).to_pylist()
    (alert,) = out
    assert alert["reason"] == "p(cardiac) 0.71 >= 0.6 for 2 windows; HR 138 bpm"
    assert (alert["value"], alert["threshold"], alert["evidence"]) == (0.71, 0.6, 138.0)
    assert alert["event_time"] == datetime.fromtimestamp((T0 + 10 * MIN) / 1000, UTC)
    assert alert["emitted_at"] == NOW and alert["policy_version"] == "test.1" and alert["severity"] == "critical"


def test_a_null_probability_neither_raises_resolves_nor_breaks_the_run(policy: AlertPolicy) -> None:
    s = AlertState()
    assert run(s, policy, 5, {"P1": {"p_cardiac": 0.7}}) == []
    assert run(s, policy, 10, {"P1": {}}) == []  # not assessed
    assert run(s, policy, 15, {"P1": {"p_cardiac": 0.7}}) == [("P1", "cardiac", "raised", 1)]
    assert run(s, policy, 20, {"P1": {}}) == []  # not assessed: does not resolve
    assert run(s, policy, 25, {"P1": {"p_cardiac": 0.1}}) == [
        ("P1", "cardiac", "repeated", 2),  # due at 25, before the window ending at 25 resolves it
        ("P1", "cardiac", "resolved", 3),
    ]


def test_repeats_follow_event_time_until_acknowledged_or_snooze_ends(policy: AlertPolicy) -> None:
    s = AlertState()
    run(s, policy, 5, {"P1": {"p_cardiac": 0.9}})
    assert run(s, policy, 10, {"P1": {"p_cardiac": 0.9}}) == [("P1", "cardiac", "raised", 1)]
    assert run(s, policy, horizon_min=25) == [("P1", "cardiac", "repeated", 2)]  # due at 20
    assert run(s, policy, horizon_min=41) == [("P1", "cardiac", "repeated", 3), ("P1", "cardiac", "repeated", 4)]
    (aid,) = [a.alert_id for a in s.open.values()]
    result = apply_acks(s, policy, ack_batch([{"alert_id": aid, "by": "nurse-7"}], at_min=42), NOW)
    assert [e["state"] for e in result.events] == ["acknowledged"] and len(result.applied) == 1
    assert result.applied.column("by").to_pylist() == ["nurse-7"]
    assert run(s, policy, horizon_min=200) == []  # acknowledged: no more repeats
    result = apply_acks(
        s, policy, ack_batch([{"alert_id": aid, "by": "nurse-8", "snooze_minutes": 20}], at_min=200), NOW
    )
    assert run(s, policy, horizon_min=215) == []  # snoozed until 220
    assert [e["sequence"] for e in result.events] == [6]  # acknowledged again, with a snooze
    assert run(s, policy, horizon_min=231) == [("P1", "cardiac", "repeated", 7), ("P1", "cardiac", "repeated", 8)]
    assert run(s, policy, 235, {"P1": {"p_cardiac": 0.0}}) == [("P1", "cardiac", "resolved", 9)]


def test_an_alert_nobody_answers_repeats_at_most_max_repeats_times_then_stays_open_quietly() -> None:
    # A replay of date-shifted records (MIMIC's are years apart) moves event time decades past an open alert:
    # it repeated every 10 minutes across the gap, millions of events, until the process ran out of memory.
    policy = parse_policy({**POLICY_DOC, "max_repeats": 3})
    s = AlertState()
    run(s, policy, 5, {"P1": {"p_cardiac": 0.9}})
    assert run(s, policy, 10, {"P1": {"p_cardiac": 0.9}}) == [("P1", "cardiac", "raised", 1)]
    years = 40 * 365 * 24 * 60
    events = run(s, policy, horizon_min=years)
    assert events == [("P1", "cardiac", "repeated", k) for k in (2, 3, 4)]  # due at 20, 30 and 40, then quiet
    assert run(s, policy, horizon_min=2 * years) == [] and len(s.open) == 1  # still open, until acknowledged
    (aid,) = [a.alert_id for a in s.open.values()]
    apply_acks(s, policy, ack_batch([{"alert_id": aid, "by": "nurse-7", "snooze_minutes": 10}], at_min=years), NOW)
    assert len(run(s, policy, horizon_min=2 * years)) == 3  # a snooze's end starts a new count
    with pytest.raises(ValueError, match="max_repeats"):
        parse_policy({**POLICY_DOC, "max_repeats": -1})
    assert default_policy().max_repeats == 12


def ack_batch(acks: list[Any], at_min: int) -> RawBatch:
    values = [a if isinstance(a, bytes) else json.dumps(a).encode() for a in acks]
    n = len(values)
    return RawBatch(
        stream=ACK_STREAM,
        topic=f"vitals.{ACK_STREAM}",
        keys=[b"P1"] * n,
        values=values,
        partitions=np.zeros(n, np.int32),
        offsets=np.arange(n, dtype=np.int64),
        timestamps_ms=np.full(n, T0 + at_min * MIN, np.int64),
    )


def test_bad_and_unknown_acks_are_rejected_with_a_reason(policy: AlertPolicy) -> None:
    s = AlertState()
    run(s, policy, falls=readings([("P1", "fall", 1, 0.9)]))
    (aid,) = [a.alert_id for a in s.open.values()]
    batch = ack_batch(
        [
            b"{not json",
            b"[1]",
            {"by": "x"},
            {"alert_id": aid},
            {"alert_id": aid, "by": "x", "snooze_minutes": -5},
            {"alert_id": "0" * 20, "by": "x"},
            b"",
            {"alert_id": aid, "by": "nurse"},
        ],
        at_min=2,
    )
    result = apply_acks(s, policy, batch, NOW)
    assert result.rejected_src.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert result.reasons == [
        "invalid_json",
        "not_an_object",
        "missing_alert_id",
        "missing_by",
        "bad_snooze",
        "unknown_alert",
        "empty_message",
    ]
    assert len(result.applied) == 1 and result.applied.column("offset").to_pylist() == [7]


def test_a_fall_alerts_at_once_and_resolves_after_acknowledgement_and_quiet(policy: AlertPolicy) -> None:
    s = AlertState()
    weak = readings([("P1", "fall", 1, 0.4)])
    assert run(s, policy, falls=weak) == []  # below the confidence setting: a stumble
    assert run(s, policy, falls=readings([("P1", "fall", 2, 0.9), ("P2", "fall", 2, None)])) == [
        ("P1", "fall", "raised", 1),
        ("P2", "fall", "raised", 1),  # no confidence given: counts as certain
    ]
    assert run(s, policy, falls=readings([("P1", "fall", 3, 0.95)])) == []  # joins the open alert
    assert run(s, policy, horizon_min=8) == [("P1", "fall", "repeated", 2), ("P2", "fall", "repeated", 2)]
    aid = s.open[("P1", "fall", "")].alert_id
    apply_acks(s, policy, ack_batch([{"alert_id": aid, "by": "nurse"}], at_min=9), NOW)
    assert run(s, policy, horizon_min=32) == [("P2", "fall", "repeated", n) for n in range(3, 8)]  # P2 unacked
    assert run(s, policy, horizon_min=33) == [("P1", "fall", "resolved", 4)]  # 30 min after its last fall (3)


def test_a_silent_sensor_raises_naming_the_stream_and_resolves_when_data_returns(policy: AlertPolicy) -> None:
    s = AlertState()
    run(s, policy, falls=readings([("P1", "heart_rate", 1, None), ("P2", "heart_rate", 1, None)]))
    assert run(s, policy, 5, {"P1": {}, "P2": {}}) == []
    assert run(s, policy, 10, {"P1": {"heart_rate": False}, "P2": {}}) == [("P1", "sensor_silent", "raised", 1)]
    alert = next(iter(s.open.values()))
    assert alert.stream == "heart_rate" and "heart_rate silent" in alert.reason
    assert run(s, policy, 15, {"P1": {"heart_rate": False}, "P2": {}}) == []  # open: raised once
    assert run(s, policy, 20, {"P1": {}, "P2": {}}) == [("P1", "sensor_silent", "resolved", 2)]


def test_a_patient_with_no_windows_at_all_is_silent_too(policy: AlertPolicy) -> None:
    s = AlertState()
    run(s, policy, falls=readings([("P1", "heart_rate", 1, None), ("P2", "heart_rate", 1, None)]))
    run(s, policy, 5, {"P1": {}, "P2": {}})
    assert run(s, policy, 10, {"P2": {}}) == [("P1", "sensor_silent", "raised", 1)]


def charted(
    state: AlertState, policy: AlertPolicy, data_at: list[int], until: int, start: int = 5, count: int = 1
) -> list[tuple[int, str]]:
    """Heart rate of P1 (`count` readings) in the 5-min windows ending at `data_at` (minutes) only, every
    window from `start` to `until` closed in turn (P2 reports in each, so every window closes); (window end,
    raised or resolved) per event."""
    if not len(state):  # the patients' heart-rate partition, which silence is judged against
        run(state, policy, falls=readings([("P1", "heart_rate", 1, None), ("P2", "heart_rate", 1, None)]))
    events = []
    for end in range(start, until + 1, 5):
        rows = {"P1": {"heart_rate": end in data_at, "heart_rate_count": count}, "P2": {}}
        events += [(end, e[2]) for e in run(state, policy, end, rows) if e[0] == "P1" and e[2] != "repeated"]
    return events


def test_a_charted_vital_is_silent_after_three_of_its_usual_intervals_not_at_each_late_reading(
    policy: AlertPolicy,
) -> None:
    s = AlertState()
    hourly = [60, 120, 185, 240, 300, 365, 420]  # charted about hourly, some a window late
    assert charted(s, policy, hourly, 420) == [(65, "raised"), (120, "resolved")]  # the first gap: 5 min
    # then charting stops: silent three usual intervals (60 min) after its last data, not 5 min after
    assert charted(s, policy, [], 800, start=425)[:1] == [(600, "raised")]
    reason = next(iter(s.open.values())).reason
    assert "silent for >= 180 min (3x its usual 60 min between readings" in reason, reason


def test_a_monitor_keeps_after_minutes_and_one_outage_does_not_change_its_cadence(policy: AlertPolicy) -> None:
    s = AlertState()
    outage = [m for m in range(5, 200, 5) if not 50 <= m <= 150]  # silent from 50 to 150
    assert charted(s, policy, outage, 195, count=300) == [(50, "raised"), (155, "resolved")]  # 1 Hz
    # the median of its last five intervals is 1 s, the outage's among them: silent again after 5 min
    assert charted(s, policy, [], 210, start=200, count=300) == [(200, "raised")]


def test_one_averaged_value_per_window_is_silent_after_three_missed_values(policy: AlertPolicy) -> None:
    s = AlertState()  # a wearable's 5-min heart-rate averages: one reading per window
    assert charted(s, policy, list(range(5, 60, 5)), 55) == []
    assert charted(s, policy, [65, 80], 80, start=60) == []  # one or two missed values: not yet
    assert charted(s, policy, [], 100, start=85) == [(95, "raised")]  # 15 min after its last value


def test_the_cadence_is_kept_with_the_state(policy: AlertPolicy) -> None:
    s = AlertState()
    charted(s, policy, [60, 120, 180, 240], 240)
    restored = AlertState.from_tables(s.to_tables())
    assert np.array_equal(restored.recent_gaps("heart_rate"), s.recent_gaps("heart_rate"))
    assert charted(restored, policy, [], 420, start=245) == [(420, "raised")]  # 3 x 60 min after 240
    old = s.to_tables()  # a state saved before cadences were kept: after_minutes alone until it learns one
    old["alert_tracks"] = old["alert_tracks"].drop_columns(["gaps:heart_rate"])
    assert charted(AlertState.from_tables(old), policy, [], 250, start=245) == [(245, "raised")]


def test_a_whole_topic_outage_pages_nobody(policy: AlertPolicy) -> None:
    s = AlertState()
    run(s, policy, falls=readings([(f"P{i}", "heart_rate", 1, None) for i in range(5)]))
    run(s, policy, 5, {f"P{i}": {} for i in range(5)})
    # the heart-rate topic stopped at minute 5: its partition's high-water mark stays there
    stalled = {"vitals.heart_rate:0": T0 + 5 * MIN, "vitals.glucose:0": T0 + 60 * MIN}
    for end in (10, 15, 20):
        assert run(s, policy, end, {f"P{i}": {"heart_rate": False} for i in range(5)}, highs=stalled) == []


def test_predicted_low_glucose_from_the_forecasts_lower_bound(policy: AlertPolicy) -> None:
    s = AlertState()
    assert run(s, policy, 5, {"P1": {"glucose_mg_dl_forecast_low": 85}}) == []
    assert run(s, policy, 10, {"P1": {"glucose_mg_dl_forecast_low": 64}}) == [
        ("P1", "predicted_low_glucose", "raised", 1)
    ]
    assert run(s, policy, 15, {"P1": {"glucose_mg_dl_forecast_low": 75}}) == []  # below clear (80): open
    assert run(s, policy, 20, {"P1": {"glucose_mg_dl_forecast_low": 82}}) == [
        ("P1", "predicted_low_glucose", "resolved", 2)
    ]


def episode(policy: AlertPolicy, splits: list[int], restart_at: int | None = None) -> list[tuple]:
    """Twelve windows of two patients fed in batches of `splits` windows (and a restart from the saved state
    after batch `restart_at`); every event's (alert_id, state, sequence, event_time)."""
    p = [0.7, 0.8, 0.9, 0.5, 0.9, 0.2, 0.7, 0.7, None, 0.9, 0.1, 0.8]
    s = AlertState()
    out: list[tuple] = []
    i = 0
    for b, size in enumerate(splits):
        tables = [
            window(5 * (k + 1), {"A": {"p_cardiac": p[k]}, "B": {"p_cardiac": p[-1 - k]}}) for k in range(i, i + size)
        ]
        scores = pa.concat_tables([t[0] for t in tables])
        wins = pa.concat_tables([t[1] for t in tables])
        horizon = T0 + 5 * (i + size) * MIN
        events = evaluate(s, policy, scores, wins, NO_READINGS, {}, horizon, NOW)
        out += [(r["alert_id"], r["state"], r["sequence"], r["event_time"]) for r in events.to_pylist()]
        i += size
        if b == restart_at:
            s = AlertState.from_tables(s.to_tables())
    return sorted(out)


def test_an_observed_red_vital_alerts_while_the_prediction_is_low_and_silence_does_not_resolve_it() -> None:
    """The model predicts onsets; an event under way (HR in NEWS2's red band) alerts on the window's own
    mean, whatever p(cardiac) says, and a silent sensor (null mean) neither resolves nor re-raises it."""
    policy = parse_policy(
        {
            "version": "test.observed",
            "conditions": {
                "heart_rate_high": {
                    "column": "heart_rate_bpm_mean",
                    "raise": 131,
                    "clear": 120,
                    "windows": 1,
                    "repeat_minutes": 10,
                    "severity": "critical",
                }
            },
        }
    )
    s = AlertState()
    assert run(s, policy, 5, {"P1": {"p_cardiac": 0.1, "hr": 125}}) == []
    scores, wins = window(10, {"P1": {"p_cardiac": 0.1, "hr": 160}})
    (raised,) = evaluate(s, policy, scores, wins, NO_READINGS, {}, None, NOW).to_pylist()
    assert (raised["condition"], raised["state"], raised["value"]) == ("heart_rate_high", "raised", 160.0)
    assert raised["reason"] == "heart_rate_bpm_mean 160 >= 131"
    assert run(s, policy, 15, {"P1": {"p_cardiac": 0.1}}) == []  # sensor silent: no mean, stays open
    assert run(s, policy, 20, {"P1": {"hr": 118}}) == [
        ("P1", "heart_rate_high", "repeated", 2),
        ("P1", "heart_rate_high", "resolved", 3),
    ]


def test_the_same_events_whatever_the_batch_split_or_a_restart(policy: AlertPolicy) -> None:
    one = episode(policy, [12])
    assert one and {e[1] for e in one} == {"raised", "repeated", "resolved"}
    assert episode(policy, [1] * 12) == one
    assert episode(policy, [5, 2, 5], restart_at=0) == one
    assert episode(policy, [3, 3, 3, 3], restart_at=1) == one


def test_state_round_trips_through_tables(policy: AlertPolicy) -> None:
    s = AlertState()
    run(s, policy, falls=readings([("P1", "heart_rate", 1, None), ("P2", "fall", 1, 0.9)]))
    run(s, policy, 5, {"P1": {"p_cardiac": 0.7}})
    copy = AlertState.from_tables(s.to_tables())
    assert copy.open == s.open and copy.horizon_ms == s.horizon_ms
    assert run(copy, policy, 10, {"P1": {"p_cardiac": 0.7}}) == run(s, policy, 10, {"P1": {"p_cardiac": 0.7}})


def test_the_shipped_policy_loads() -> None:
    policy = default_policy()
    conditions = {r.condition for r in policy.rules}
    assert conditions == {
        "hypoglycaemia",
        "hyperglycaemia",
        "cardiac",
        "respiratory",
        "deterioration",
        "predicted_low_glucose",
        "heart_rate_high",
        "heart_rate_low",
        "respiration_high",
        "respiration_low",
        "glucose_low",
    }
    assert policy.fall is not None and policy.silence is not None
    assert policy.silence.after_ms == {"glucose": 15 * MIN, "heart_rate": 5 * MIN, "respiration": 5 * MIN}
    assert all(r.clear_at < r.raise_at if r.above else r.clear_at > r.raise_at for r in policy.rules)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"cardiac": {**POLICY_DOC["conditions"]["cardiac"], "clear": 0.7}},
            "cardiac: clear threshold 0.7 is above its raise threshold 0.6",
        ),
        (
            {"predicted_low_glucose": {**POLICY_DOC["conditions"]["predicted_low_glucose"], "clear": 60}},
            "clear threshold 60 is below",
        ),
        (
            {"cardiac": {**POLICY_DOC["conditions"]["cardiac"], "column": "p_heart"}},
            "not a risk_scores or windows column",
        ),
        ({"cardiac": {**POLICY_DOC["conditions"]["cardiac"], "windows": 0}}, "windows must be an integer >= 1"),
        ({"cardiac": {**POLICY_DOC["conditions"]["cardiac"], "severity": "loud"}}, "severity must be one of"),
        ({"sepsis": {}}, "unknown condition(s) sepsis"),
        (
            {"fall": {"min_confidence": 1.5, "repeat_minutes": 5, "clear_after_minutes": 30, "severity": "critical"}},
            "within 0-1",
        ),
        (
            {"sensor_silent": {"after_minutes": {"fall": 5}, "repeat_minutes": 30, "severity": "warning"}},
            "after_minutes",
        ),
        (
            {"sensor_silent": {**POLICY_DOC["conditions"]["sensor_silent"], "cadence_factor": 0.5}},
            "cadence_factor must be a number within 1-100",
        ),
    ],
)
def test_a_bad_policy_is_one_line_naming_the_fault(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({**POLICY_DOC, "conditions": {**POLICY_DOC["conditions"], **change}}))
    with pytest.raises(ConfigError, match=r"^alert policy .*policy\.json: ") as err:
        load_policy(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unreadable_policy_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_policy(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_policy(tmp_path / "bad.json")


def test_json_rows_have_iso_times_and_nulls() -> None:
    t = pa.table({"a": pa.array([T0 + 1234], pa.int64()).cast(TS), "b": pa.array([float("nan")]), "c": ["x"]})
    assert json.loads(to_json_rows(t)[0]) == {"a": "2025-11-25T00:00:01.234Z", "b": None, "c": "x"}


def test_the_tables_have_the_documented_columns() -> None:
    from pipeline.alerts import ACK_SCHEMA
    from pipeline.contract import output_schemas

    documented = output_schemas()
    assert [c["name"] for c in documented["alerts"]] == [*ALERT_SCHEMA.names, "date"]
    assert [c["name"] for c in documented["acks"]] == [*ACK_SCHEMA.names, "date"]


def test_scores_and_windows_must_be_row_aligned(policy: AlertPolicy) -> None:
    scores, wins = window(5, {"P1": {}, "P2": {}})
    with pytest.raises(ValueError, match="row-aligned"):
        evaluate(AlertState(), policy, scores, wins.take([1, 0]), NO_READINGS, {}, None, NOW)
