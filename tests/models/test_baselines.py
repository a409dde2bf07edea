"""The yardsticks of the model card, on hand-made examples: clinical baselines, metrics, alerting at a
budget, patient bootstrap."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models import evaluate as ev

MIN = 60_000


def _last(hr: list[float | None], rr: list[float | None], glucose: list[float | None]) -> pa.Table:
    return pa.table(
        {
            "heart_rate_bpm_last": pa.array(hr, pa.float64()),
            "respiration_rate_per_min_last": pa.array(rr, pa.float64()),
            "glucose_mg_dl_last": pa.array(glucose, pa.float64()),
        }
    )


def test_partial_news2_scores_the_published_bands() -> None:
    hr = [70, 45, 100, 120, 131, 40, 70, 70, 70, 70, None]
    rr = [16, 16, 16, 16, 16, 16, 10, 22, 25, 8, None]
    t = _last(hr, rr, [None] * len(hr))
    assert ev.news2_partial(t).tolist() == [0, 1, 1, 2, 3, 3, 1, 2, 3, 3, 0]
    assert ev.news2_red(t).tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0]


def test_cgm_consensus_levels_and_the_combination() -> None:
    g = [110, 70, 69, 54, 53, 180, 181, 250, 251, None]
    t = _last([None] * len(g), [None] * len(g), g)
    assert ev.cgm_level(t).tolist() == [0, 0, 1, 1, 2, 0, 1, 1, 2, 0]
    both = _last([70.0, 135.0, None], [16.0, 26.0, None], [110.0, None, 50.0])
    assert ev.clinical_score(both).tolist() == [0.0, 6.0, 6.0]


def test_auroc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    s = np.round(rng.random(200), 1)  # ties count one half
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert ev.auroc(y, s) == pytest.approx(pairwise)


def test_auprc_by_hand_and_for_a_constant_score() -> None:
    y = np.array([1, 0, 1, 0.0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    assert ev.auprc(y, s) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ev.auprc(y, np.zeros(4)) == pytest.approx(0.5)  # a rule that never varies earns the prevalence


def test_isotonic_calibration_is_monotone_and_fixes_an_overconfident_score() -> None:
    rng = np.random.default_rng(1)
    true_p = rng.random(5000) * 0.4
    y = (rng.random(5000) < true_p).astype(float)
    overconfident = np.sqrt(true_p)  # ranks right, probabilities too high
    knots = ev.fit_isotonic(overconfident, y)
    assert np.all(np.diff(knots["y"]) >= 0) and np.all(np.diff(knots["x"]) > 0)
    calibrated = np.interp(overconfident, knots["x"], knots["y"])
    assert ev.ece(y, overconfident) > 0.15
    assert ev.ece(y, calibrated) < 0.03
    assert ev.auroc(y, calibrated) == pytest.approx(ev.auroc(y, overconfident), abs=0.01)


def test_ece_of_a_perfectly_calibrated_bin_is_zero() -> None:
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0.0])
    p = np.array([0.25] * 4 + [0.75] * 4)
    assert ev.ece(y, p) == pytest.approx(0.0)
    assert ev.ece(y, np.full(8, 0.9)) == pytest.approx(0.4)


def test_logistic_regression_finds_the_informative_feature() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 3))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2 * x[:, 1] - 1)))).astype(float)
    w = ev.fit_logistic(x, y)
    assert w[2] == pytest.approx(2.0, abs=0.3) and abs(w[1]) < 0.2 and abs(w[3]) < 0.2
    assert ev.auroc(y, ev.predict_logistic(w, x)) > 0.8


def test_alerts_are_suppressed_for_one_horizon_and_scored_against_onsets() -> None:
    # one patient, a window every 5 min for 4 h; an event at 120 min and one at 200 min
    t = np.arange(0, 240, 5) * MIN
    patient = np.array(["A"] * len(t))
    fire = np.isin(t // MIN, [60, 65, 70, 100, 130, 190])
    a = ev.alerts(patient, t, fire, 60 * MIN)
    assert (t[a] // MIN).tolist() == [60, 130, 190]  # 65, 70 and 100 fall within an hour of the alert at 60
    r = ev.alert_stats(patient, t, fire, np.array(["A", "A"]), np.array([120, 200]) * MIN, 60 * MIN, patient_days=1.0)
    assert (r.alerts, r.events, r.detected) == (3, 2, 2)
    assert r.sensitivity == 1.0 and r.ppv == pytest.approx(2 / 3)  # the alert at 130 precedes no onset
    assert r.median_lead_minutes == pytest.approx((60 + 10) / 2)  # 120 - 60 and 200 - 190
    assert r.alerts_per_patient_day == 3.0
    assert r.leads_minutes == [60.0, 10.0] and r.lead_patients == ["A", "A"]  # per detected event, for intervals


def test_lead_time_never_exceeds_the_horizon() -> None:
    # an alert 90 min before onset is outside the hour: it neither detects the event nor gives its lead
    t = np.arange(0, 240, 5) * MIN
    patient = np.array(["A"] * len(t))
    fire = np.isin(t // MIN, [30, 100])
    r = ev.alert_stats(patient, t, fire, np.array(["A"]), np.array([120]) * MIN, 60 * MIN, patient_days=1.0)
    assert r.detected == 1 and r.median_lead_minutes == 20.0 and r.ppv == 0.5


def test_a_slow_glucose_ramp_is_matched_to_its_episode() -> None:
    # glucose crossing 250 at 1 mg/dL/min reaches 380 over two hours later: still the same episode
    ts = pa.timestamp("ms", tz="UTC")
    events = pa.table({"patient_id": ["A"], "condition": ["hyperglycaemia"], "onset": pa.array([0], ts)})
    episodes = pa.table(
        {
            "patient_id": ["A"],
            "condition": ["hyperglycaemia"],
            "onset": pa.array([130 * MIN], ts),
            "precursor_minutes": [180.0],
        }
    )
    assert ev.precursor_leads(events, episodes).tolist() == [50.0]  # 180 - 130 min before the threshold onset


def test_the_budget_picks_the_lowest_threshold_within_it() -> None:
    t = np.tile(np.arange(0, 24 * 60, 5) * MIN, 2)
    patient = np.repeat(["A", "B"], len(t) // 2)
    rng = np.random.default_rng(3)
    score = rng.random(len(t))
    r = ev.at_budget(score, patient, t, np.array(["A"]), np.array([600 * MIN]), 60 * MIN, patient_days=2.0)
    assert r.alerts_per_patient_day <= 1.0 and r.alerts == 2
    next_lower = score[score < r.threshold].max()
    assert len(ev.alerts(patient, t, score >= next_lower, 60 * MIN)) > 2  # any lower threshold: over budget


def test_patient_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(4)
    patient = np.repeat(np.arange(40), 25)
    y = (rng.random(1000) < 0.3).astype(float)
    s = y + rng.normal(0, 1, 1000)
    lo, hi = ev.bootstrap_ci(patient, lambda r: ev.auroc(y[r], s[r]), reps=100)
    assert lo < ev.auroc(y, s) < hi and hi - lo < 0.15


def test_real_targets_judge_each_figure_against_its_limit() -> None:
    from models.evaluate import real_targets

    head = {"model": {"auroc": 0.70}, "trend": {"auroc": 0.64}, "best_baseline": "trend", "enough_events": True}
    m = {
        "heads": {"any": head},
        "no_event_patients": {"patients": 0, "high_share": 0.0, "alerts_per_patient_day": 0.0},
        "calibration": {"ece": 0.08},
    }
    t = real_targets(m)
    assert t["any_auroc"]["met"] and abs(t["any_auroc"]["required"] - 0.69) < 1e-9
    assert t["hypoglycaemia_auroc"] == {"judged": False, "why": "not assessed in this cohort"}
    assert not t["ece"]["met"] and t["ece"]["judged"]
    quiet = t["no_event_high_share"]
    assert quiet["judged"] is False and quiet["why"] == "no patient without events"


def test_event_free_days_leave_out_each_day_an_event_touches_or_begins_within_the_hour_after() -> None:
    day, hour = 24 * 60 * MIN, 60 * MIN
    t = np.arange(3 * 24) * hour + hour  # hourly windows over three UTC days, ending 01:00 .. 00:00
    patient = np.repeat(["A", "B"], len(t))
    t_end = np.tile(t, 2)
    events = pa.table(
        {
            "patient_id": ["A", "B"],
            "onset": pa.array([day + 12 * hour, 2 * day + 30 * MIN], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "end": pa.array([day + 12 * hour + 30 * MIN, 2 * day + 40 * MIN], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
        }
    )
    calm, days = ev.event_free_days(patient, t_end, events, 60 * MIN, window_ms=hour)
    calm_days = {(p, int(e // day)) for p, e in zip(patient[calm], t_end[calm], strict=True)}
    # A: day 1 has its event; B: its onset at 00:30 on day 2 is within the hour after day 1's end
    assert calm_days == {("A", 0), ("A", 2), ("A", 3), ("B", 0), ("B", 3)}
    # days 0 (01:00-23:00, 23 windows of an hour), 2 (whole) and 3 (its 00:00 window): 23/24 + 1 + 1/24 for A
    assert days == pytest.approx((23 / 24 + 1 + 1 / 24) + (23 / 24 + 1 / 24))
