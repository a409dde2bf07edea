"""The scorer's plumbing on plain Arrow tables: features, context sequences with gaps, history pruning, the
model contract check, risk levels and forecasts only for vitals seen in the context (an untrained network:
the weights do not matter here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import T0, canonical_readings

from models.lstm import Checkpoint, load_checkpoint
from models.scorer import (
    COURSE_SCHEMA,
    HISTORY_SCHEMA,
    Scorer,
    course_rows,
    course_windows,
    feature_matrix,
    model_inputs,
    prune_history,
    sequences,
)
from pipeline.features import window_features
from pipeline.model_contract import (
    CONDITIONS,
    MODEL_FEATURES,
    RECENT_FEATURES,
    WINDOW_FEATURES,
    RiskLevels,
    sensor_configuration,
)

W = 300_000  # 5-minute windows, as the tiny checkpoint's contract says
UTC_MS = pa.timestamp("ms", tz="UTC")


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> Checkpoint:
    return load_checkpoint(tiny_checkpoint)


def history(rows: list[tuple[str, int]]) -> pa.Table:
    """HISTORY_SCHEMA rows (patient, window number from T0) with every feature missing."""
    n = len(rows)
    cols = {f.name: pa.nulls(n, f.type) for f in HISTORY_SCHEMA}
    cols["patient_id"] = pa.array([p for p, _ in rows], pa.string())
    cols["window_start"] = pa.array([T0 + k * W for _, k in rows], pa.int64()).cast(UTC_MS)
    return pa.table(cols, schema=HISTORY_SCHEMA)


def keys(table: pa.Table) -> list[tuple[str, int]]:
    starts = table.column("window_start").cast(pa.int64()).to_pylist()
    return sorted(zip(table.column("patient_id").to_pylist(), [(s - T0) // W for s in starts], strict=True))


def minutes(first_window: int, windows: int) -> list[float]:
    """A reading every 30 s through `windows` windows from window number `first_window`."""
    return [first_window * 5 + i * 0.5 for i in range(windows * 10)]


def test_feature_matrix_normalises_and_turns_missing_values_into_zero() -> None:
    n_f = len(MODEL_FEATURES)
    t = history([("P1", 0), ("P1", 1)])
    hr = MODEL_FEATURES.index("heart_rate_bpm_mean")
    t = t.set_column(t.schema.get_field_index("heart_rate_bpm_mean"), "heart_rate_bpm_mean", pa.array([90.0, None]))
    center, scale = np.full(n_f, 10.0), np.full(n_f, 2.0)
    x = feature_matrix(t, center, scale)
    assert x.shape == (2, n_f) and x.dtype == np.float32
    assert x[0, hr] == pytest.approx(40.0)  # (90 - 10) / 2
    assert np.all(x[1] == 0) and np.all(np.delete(x[0], hr) == 0)  # missing -> 0, not -center/scale
    inf = t.set_column(t.schema.get_field_index("heart_rate_bpm_mean"), "heart_rate_bpm_mean", pa.array([np.inf, 1]))
    assert feature_matrix(inf, center, scale)[0, hr] == 0


def test_sequences_gather_each_targets_previous_windows_at_their_lags_with_zeros_for_gaps() -> None:
    # P1 has windows 0, 1 and 3 (a gap at 2); P2 has windows 2 and 3. Rows are shuffled on purpose.
    context = history([("P2", 3), ("P1", 3), ("P1", 0), ("P2", 2), ("P1", 1)])
    context_x = np.arange(1, 6, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # row i: all i+1
    windows = [3, 3, 0, 2, 1]
    x_of = {k: context_x[i] for i, k in enumerate(zip(context.column("patient_id").to_pylist(), windows, strict=True))}
    targets = history([("P1", 3), ("P2", 3), ("P1", 1)])
    x, present = sequences(context, context_x, targets, W, length=4)
    zero = np.zeros(3, np.float32)
    assert x.shape == (3, 4, 3) and x.dtype == np.float32
    # oldest first: lag 3, 2, 1, 0
    np.testing.assert_array_equal(x[0], [x_of["P1", 0], x_of["P1", 1], zero, x_of["P1", 3]])
    np.testing.assert_array_equal(x[1], [zero, zero, x_of["P2", 2], x_of["P2", 3]])  # never P1's windows
    np.testing.assert_array_equal(x[2], [zero, zero, x_of["P1", 0], x_of["P1", 1]])  # never a later window
    assert present.tolist() == [3, 2, 2]
    x2, present2 = sequences(context, context_x, targets, W, length=2)
    np.testing.assert_array_equal(x2[0], [zero, x_of["P1", 3]])
    assert present2.tolist() == [1, 2, 2]


def test_prune_history_keeps_the_last_windows_of_each_patient_and_forgets_quiet_patients() -> None:
    context = history([("P1", k) for k in range(6)] + [("P2", 0), ("P2", 1)])
    # L = 3: per patient, windows within L-1 = 2 of the patient's latest
    assert keys(prune_history(context, W, 3)) == [("P1", 3), ("P1", 4), ("P1", 5), ("P2", 0), ("P2", 1)]
    # with a watermark at window 6: only windows starting after 6 - (L+1) = 2; P2 went quiet (at 4: after 0)
    assert keys(prune_history(context, W, 3, watermark_ms=T0 + 6 * W)) == [("P1", 3), ("P1", 4), ("P1", 5)]
    assert keys(prune_history(context, W, 3, watermark_ms=T0 + 4 * W)) == [
        ("P1", 3),
        ("P1", 4),
        ("P1", 5),
        ("P2", 1),
    ]
    extra = context.append_column("window_end", context.column("window_start"))
    assert prune_history(extra, W, 3).schema == HISTORY_SCHEMA  # only the model's inputs are kept
    assert len(prune_history(history([]), W, 3)) == 0


def test_the_scorer_refuses_a_checkpoint_trained_on_other_windows_and_says_what_to_do(tiny: Checkpoint) -> None:
    assert Scorer(tiny, window_ms=W).length == tiny.config.window_count  # the contract matches
    with pytest.raises(ValueError, match=r"5-minute windows but window_minutes is 10; set window_minutes=5"):
        Scorer(tiny, window_ms=2 * W)
    ten = dataclasses.replace(tiny, training={"config": {"window_ms": 2 * W}})
    assert ten.contract().window_ms == 2 * W
    Scorer(ten, window_ms=2 * W)
    with pytest.raises(ValueError, match=r"set window_minutes=10 or retrain the model"):
        Scorer(ten, window_ms=W)


def test_the_scorer_refuses_a_checkpoint_with_other_features_or_conditions(tiny: Checkpoint) -> None:
    swapped = dataclasses.replace(tiny, feature_names=list(reversed(tiny.feature_names)))
    with pytest.raises(ValueError, match=r"different feature set; retrain it \(vitalstream train\)"):
        Scorer(swapped)
    fewer = dataclasses.replace(tiny, config=dataclasses.replace(tiny.config, heads=("any", "cardiac")))
    with pytest.raises(ValueError, match=r"assesses cardiac, not .*; retrain it"):
        Scorer(fewer)


def test_risk_levels_follow_the_cut_offs() -> None:
    labels = RiskLevels().label(np.array([0.0, 0.1999, 0.2, 0.4999, 0.5, 1.0]))
    assert labels.to_pylist() == ["low", "low", "medium", "medium", "high", "high"]
    assert RiskLevels(medium=0.05, high=0.1).label(np.array([0.04, 0.07, 0.3])).to_pylist() == [
        "low",
        "medium",
        "high",
    ]


def test_scores_are_labelled_by_the_scorers_risk_levels(tiny: Checkpoint) -> None:
    readings = pa.concat_tables(
        [
            canonical_readings("heart_rate", minutes(0, 8), [60.0 + 10 * i for i in range(80)], "P1"),
            canonical_readings("glucose", minutes(0, 8), [40.0 + 5 * i for i in range(80)], "P2"),
        ]
    )
    closed = window_features(readings, W)
    p = Scorer(tiny).score(history([]), closed)[0].column("risk_score").to_numpy()
    cut = np.sort(np.unique(p))
    assert len(cut) >= 3  # different inputs, different scores
    levels = RiskLevels(medium=float(cut[len(cut) // 3]), high=float(cut[2 * len(cut) // 3]))
    scores, _ = Scorer(tiny, levels=levels).score(history([]), closed)
    got = scores.column("risk_level").to_pylist()
    expected = ["high" if s >= levels.high else "medium" if s >= levels.medium else "low" for s in p]
    assert got == expected and set(got) == {"low", "medium", "high"}


def test_a_vitals_forecast_is_null_when_its_sensor_never_appeared_in_the_context(tiny: Checkpoint) -> None:
    # Respiration in windows 0-1 only (the history); heart rate in windows 2, 3 and 5 (scored now).
    # L = 4: the scores of windows 2 and 3 see the respiration windows, the score of window 5 does not.
    assert tiny.config.window_count == 4
    past = model_inputs(window_features(canonical_readings("respiration", minutes(0, 2), [16.0] * 20), W))
    hr_minutes = minutes(2, 2) + minutes(5, 1)
    closed = window_features(canonical_readings("heart_rate", hr_minutes, [72.0] * len(hr_minutes)), W)
    scores, context = Scorer(tiny).score(past, closed)
    assert [(s - T0) // W for s in scores.column("window_start").cast(pa.int64()).to_pylist()] == [2, 3, 5]
    assert scores.column("context_windows").to_pylist() == [3, 4, 3]  # window 5: 2, 3 and 5
    for suffix in ("", "_low", "_high"):
        assert scores.column(f"heart_rate_bpm_forecast{suffix}").null_count == 0
        assert scores.column(f"respiration_rate_per_min_forecast{suffix}").to_pylist()[2] is None
        assert None not in scores.column(f"respiration_rate_per_min_forecast{suffix}").to_pylist()[:2]
        assert scores.column(f"glucose_mg_dl_forecast{suffix}").null_count == 3  # no CGM at all
    low, mean, high = (scores.column(f"heart_rate_bpm_forecast{s}").to_numpy() for s in ("_low", "", "_high"))
    assert np.all(low <= mean) and np.all(mean <= high)
    assert keys(context) == [("P1", k) for k in (0, 1, 2, 3, 5)]  # the history and the scored windows


# --- sensor configurations: what is not measured is not assessed ------------------------------------------


def test_a_condition_whose_stream_is_absent_from_the_context_gets_no_probability(tiny: Checkpoint) -> None:
    readings = pa.concat_tables(
        [
            canonical_readings("glucose", minutes(0, 3), [110.0] * 30, "CGM"),  # glucose only
            canonical_readings("heart_rate", minutes(0, 3), [70.0] * 30, "HR"),  # heart rate only
        ]
    )
    scores = {r["patient_id"]: r for r in Scorer(tiny).score(history([]), window_features(readings, W))[0].to_pylist()}
    cgm, hr = scores["CGM"], scores["HR"]
    assert cgm["p_hypoglycaemia"] is not None and cgm["p_hyperglycaemia"] is not None
    assert cgm["p_cardiac"] is None and cgm["p_respiratory"] is None and cgm["p_fall"] is None
    assert hr["p_cardiac"] is not None
    assert hr["p_hypoglycaemia"] is None and hr["p_hyperglycaemia"] is None and hr["p_respiratory"] is None
    # The overall risk combines only the assessed conditions (the tiny checkpoint has no calibration maps).
    assert cgm["risk_score"] == pytest.approx(1 - (1 - cgm["p_hypoglycaemia"]) * (1 - cgm["p_hyperglycaemia"]))
    assert hr["risk_score"] == pytest.approx(hr["p_cardiac"])
    assert {cgm["risk_level"], hr["risk_level"]} <= {"low", "medium", "high"}


def test_a_stream_seen_earlier_in_the_context_is_still_assessed(tiny: Checkpoint) -> None:
    past = model_inputs(window_features(canonical_readings("respiration", minutes(0, 2), [16.0] * 20), W))
    closed = window_features(canonical_readings("heart_rate", minutes(2, 1) + minutes(6, 1), [72.0] * 20), W)
    scores = Scorer(tiny).score(past, closed)[0]
    # window 2 sees respiration in windows 0-1 (L = 4); window 6 does not (its context is windows 3-6)
    assert scores.column("p_respiratory").is_null().to_pylist() == [False, True]
    assert scores.column("p_cardiac").null_count == 0


def test_too_little_history_or_nothing_assessable_is_insufficient_data(tiny: Checkpoint) -> None:
    single = canonical_readings("glucose", [0.0], [95.0], "NEW")  # a patient's very first reading
    closed = window_features(single, W)
    row = Scorer(tiny).score(history([]), closed)[0].to_pylist()[0]
    assert row["risk_level"] == "insufficient_data" and row["risk_score"] is None
    assert all(row[f"p_{c}"] is None for c in CONDITIONS)
    # a second reading in the next window gives it history
    closed = window_features(canonical_readings("glucose", [0.0, 5.0], [95.0, 96.0], "NEW"), W)
    rows = Scorer(tiny).score(history([]), closed)[0].to_pylist()
    assert [r["risk_level"] == "insufficient_data" for r in rows] == [True, False]
    assert rows[1]["p_hypoglycaemia"] is not None and rows[1]["p_cardiac"] is None


def test_a_null_risk_is_insufficient_data_and_the_level_rule_is_configurable() -> None:
    labels = RiskLevels().label(np.array([np.nan, 0.1, 0.6]))
    assert labels.to_pylist() == ["insufficient_data", "low", "high"]
    assert RiskLevels().min_context_readings == 2


def test_the_overall_risk_is_calibrated_per_sensor_configuration(tiny: Checkpoint) -> None:
    logits = np.zeros((3, len(tiny.config.heads)))  # every head at p = 0.5
    assessed = np.array([[True, True, False, False, False], [True, True, True, False, False], [False] * 5], dtype=bool)
    ckpt = dataclasses.replace(tiny, isotonic_by_config={"glucose": {"x": [0.0, 1.0], "y": [0.0, 0.5]}})
    p = ckpt.probabilities(logits, assessed)
    assert p[0, 0] == pytest.approx(0.75 * 0.5)  # 1 - 0.5 * 0.5, through the glucose map
    assert p[1, 0] == pytest.approx(1 - 0.5**3)  # no map for glucose+heart_rate: combined, uncalibrated
    assert np.isnan(p[2]).all()  # nothing assessed: no overall risk and no condition probability
    assert sensor_configuration(assessed).tolist() == ["glucose", "glucose+heart_rate", ""]


def test_an_overall_risk_from_the_any_event_head_is_masked_and_calibrated_per_configuration(tiny: Checkpoint) -> None:
    logits = np.zeros((3, len(tiny.config.heads)))
    logits[:, 0] = np.log(0.2 / 0.8)  # the any-event head at p = 0.2, every condition at p = 0.5
    assessed = np.array([[True, True, False, False, False], [True, True, True, False, False], [False] * 5], dtype=bool)
    ckpt = dataclasses.replace(
        tiny, any_source="head", isotonic_by_config={"glucose": {"x": [0.0, 1.0], "y": [0.0, 0.5]}}
    )
    p = ckpt.probabilities(logits, assessed)
    assert p[0, 0] == pytest.approx(0.1)  # the head's 0.2 through the glucose map, not 1 - prod(1 - p)
    assert p[1, 0] == pytest.approx(0.2)  # no map for glucose+heart_rate
    assert np.isnan(p[2]).all()  # nothing assessed: no overall risk even though the head answers
    assert np.isnan(p[0, 3:]).all() and p[0, 1] == pytest.approx(0.5)


def test_the_scorer_runs_the_network_on_the_threads_it_was_given_with_the_same_scores(tiny: Checkpoint) -> None:
    """A scoring run limits PyTorch to one thread (runtime.wiring.SCORING_THREADS): set in the thread that runs
    the network, and the scores do not depend on it."""
    import torch

    from runtime.wiring import SCORING_THREADS

    readings = canonical_readings("heart_rate", minutes(0, 8), [60.0 + 10 * i for i in range(80)], "P1")
    closed = window_features(readings, W)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        default, _ = Scorer(tiny).score(history([]), closed)
        assert torch.get_num_threads() == 2  # None: PyTorch's own setting is left alone
        one, _ = Scorer(tiny, threads=SCORING_THREADS).score(history([]), closed)
        assert torch.get_num_threads() == SCORING_THREADS == 1
    finally:
        torch.set_num_threads(before)
    assert one.drop_columns(["scored_at"]).equals(default.drop_columns(["scored_at"]))


# --- the patient's recent course: beyond the L windows of context -------------------------------------------


def hourly(stream: str, values: list[float], patient: str = "P1") -> pa.Table:
    """One reading per hour (charting), at the start of hour k for values[k]."""
    return canonical_readings(stream, [60.0 * k for k in range(len(values))], values, patient)


def test_recent_shares_are_the_last_six_hours_windows_out_of_range_among_those_that_hold_the_vital() -> None:
    rr = [16.0, 26.0, 16.0, 16.0, 30.0, 22.0, 16.0, 16.0]  # hour 1: red; hour 4: red; hour 5: amber only
    inputs = model_inputs(window_features(hourly("respiration", rr), W), window_ms=W)
    red, amber = (inputs.column(f"respiration_{band}_share").to_pylist() for band in ("red", "amber"))
    assert red[1] == pytest.approx(1 / 2) and amber[1] == pytest.approx(1 / 2)  # hours 0-1
    # hour 7: windows starting after 1:00 (6 h back) count, hour 1 no longer: hours 2-7, one red of six
    assert red[7] == pytest.approx(1 / 6) and amber[7] == pytest.approx(2 / 6)
    assert inputs.column("heart_rate_red_share").null_count == len(rr)  # no heart rate: not a share of 0
    assert inputs.column("glucose_low_share").null_count == len(rr)


def test_recent_shares_read_a_windows_range_and_a_single_readings_value() -> None:
    # window 0: 1 Hz-like readings touching 135 (its max); window 1: one averaged value of 45 (no min/max)
    hr = canonical_readings("heart_rate", [0.0, 0.5, 1.0, 5.0], [80.0, 135.0, 82.0, 45.0])
    shares = model_inputs(window_features(hr, W), window_ms=W)
    assert shares.column("heart_rate_red_share").to_pylist() == [1.0, 0.5]
    assert shares.column("heart_rate_amber_share").to_pylist() == [1.0, 1.0]  # 45 is below 51


def test_the_recent_course_kept_between_batches_gives_what_the_whole_record_gives(tiny: Checkpoint) -> None:
    rng = np.random.default_rng(3)
    rr = rng.normal(18, 5, 30).round().tolist()
    readings = pa.concat_tables([hourly("respiration", rr), hourly("heart_rate", (rng.normal(100, 25, 30)).tolist())])
    windows = window_features(readings, W)
    whole = model_inputs(windows, window_ms=W)
    early, late = windows.slice(0, 40), windows.slice(40)
    kept = prune_history(course_rows(early), W, course_windows(len(MODEL_FEATURES), W), schema=COURSE_SCHEMA)
    assert len(kept) < len(early) and kept.schema == COURSE_SCHEMA  # 6 hours of a few bits per window
    course = pa.concat_tables([kept, course_rows(late)])  # what the engine hands over with the closed windows
    streamed = model_inputs(late, course, window_ms=W)
    for name in RECENT_FEATURES:
        assert streamed.column(name).to_pylist() == whole.column(name).slice(40).to_pylist()
    _, context = Scorer(tiny).score(model_inputs(early, window_ms=W), late, course)
    got = context.slice(len(early)).column("respiration_red_share")
    assert got.to_pylist() == whole.column("respiration_red_share").slice(40).to_pylist()


def test_the_recent_course_is_kept_only_for_a_checkpoint_that_reads_it(tiny: Checkpoint) -> None:
    assert tiny.feature_names == MODEL_FEATURES and Scorer(tiny).course_windows == 6 * 12
    assert course_windows(len(WINDOW_FEATURES), W) == 0  # the window's own inputs: no course
    assert course_windows(len(MODEL_FEATURES), 60 * 60_000) == 6  # hourly windows
