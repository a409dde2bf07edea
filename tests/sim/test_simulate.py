from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from conftest import T0
from conftest import canonical_readings as readings

from sim.simulate import SimulationConfig, detect_events, encode, simulate

MIN = 60_000


def conditions(t: pa.Table) -> list[tuple[str, int]]:
    return [
        (c, (o - T0) // MIN)
        for c, o in zip(t.column("condition").to_pylist(), t.column("onset").cast(pa.int64()).to_pylist(), strict=True)
    ]


def test_hypoglycaemia_rules() -> None:
    assert conditions(detect_events(readings("glucose", [0, 5, 10], [100, 50, 100]))) == [("hypoglycaemia", 5)]
    # < 70 for 15 minutes (4 CGM readings 5 min apart cover 20 min) counts; 10 minutes does not
    assert conditions(detect_events(readings("glucose", [0, 5, 10, 15, 20, 25], [100, 65, 66, 64, 65, 100]))) == [
        ("hypoglycaemia", 5)
    ]
    assert detect_events(readings("glucose", [0, 5, 10, 15], [100, 65, 66, 100])).num_rows == 0


def test_a_gap_breaks_a_run_and_cardiac_needs_five_minutes() -> None:
    t = [i / 12 for i in range(0, 60)]  # 5-second cadence for 5 minutes
    assert conditions(detect_events(readings("heart_rate", t, [140.0] * 60))) == [("cardiac", 0)]
    assert detect_events(readings("heart_rate", t[:40], [140.0] * 40)).num_rows == 0
    gapped = t[:30] + [x + 3 for x in t[30:]]
    assert detect_events(readings("heart_rate", gapped, [140.0] * 60)).num_rows == 0


def test_deterministic_for_a_seed_and_counts_add_up() -> None:
    cfg = SimulationConfig(patients=8, hours=0.5, seed=5, start_ms=T0, malformed_rate=0.02, duplicate_rate=0.02)
    sim = simulate(cfg)
    a = [m for chunk in encode(sim) for m in chunk]
    b = [m for chunk in encode(simulate(cfg)) for m in chunk]
    c = [m for chunk in encode(simulate(SimulationConfig(patients=8, hours=0.5, seed=6, start_ms=T0))) for m in chunk]
    assert a == b and a != c
    assert len(a) == sim.faults["messages"] == len(sim.readings) + sim.faults["duplicates"]
    arrivals = [m.timestamp_ms for m in a]
    assert arrivals == sorted(arrivals)
    parsed = 0
    for m in a:
        try:
            doc = json.loads(m.value)
        except ValueError:
            continue
        parsed += 1
        assert doc["patient_id"] == m.key.decode()
    assert parsed >= len(a) - sim.faults["malformed"]


def test_streams_cadence_and_censoring() -> None:
    sim = simulate(SimulationConfig(patients=30, hours=2, seed=3, start_ms=T0))
    r = sim.readings
    assert set(r.column("stream").unique().to_pylist()) <= {"glucose", "heart_rate", "respiration", "fall"}
    g = r.filter(pc.equal(r.column("stream"), "glucose"))
    v = g.column("value").to_numpy()
    assert v.min() >= 40 and v.max() <= 400
    assert np.array_equal(g.column("censored").to_numpy(zero_copy_only=False), (v <= 40) | (v >= 400))
    one = g.filter(pc.equal(g.column("patient_id"), g.column("patient_id")[0]))
    spacing = np.diff(np.sort(one.column("event_time").cast(pa.int64()).to_numpy()))
    assert 250_000 < np.median(spacing) < 350_000
    with_event = len(set(sim.events.column("patient_id").to_pylist())) / 30
    assert 0.05 < with_event < 0.8


def test_precursors_vary_in_length_and_some_events_have_none() -> None:
    sim = simulate(SimulationConfig(patients=120, hours=8, seed=2, start_ms=T0))
    assert sim.episodes is not None
    lead = sim.episodes.column("precursor_minutes").to_numpy()
    none = lead == 0
    assert 0.1 < none.mean() < 0.45  # a share comes with no warning at all
    # creeping vitals and glucose trends give tens of minutes to hours of warning, not all alike
    assert 30 < np.median(lead[~none]) < 180 and lead[~none].std() > 15


def test_stumbles_before_a_fall_are_not_falls() -> None:
    sim = simulate(SimulationConfig(patients=120, hours=8, seed=2, start_ms=T0))
    r = sim.readings
    falls = r.filter(pc.equal(r.column("stream"), "fall"))
    conf = falls.column("fall_confidence").to_numpy()
    real = int((conf >= 0.7).sum())
    assert real == sum(c == "fall" for c in sim.events.column("condition").to_pylist())
    assert (conf < 0.7).sum() > 0  # stumbles and false alarms are reported, below the threshold


def test_cgm_error_is_smooth_and_lags_blood_glucose() -> None:
    from sim.simulate import _cgm_error

    rng = np.random.default_rng(0)
    flat = np.full((200, 144), 120.0)  # 12 h of 5-minute readings at a constant true glucose
    err = _cgm_error(rng, flat, 300.0) / flat - 1
    lag1 = np.mean([np.corrcoef(e[:-1], e[1:])[0, 1] for e in err])
    assert lag1 > 0.5  # autocorrelated drift (independent noise per reading would give about 0)
    assert 0.03 < err.std() < 0.12
    step = np.where(np.arange(144) < 72, 100.0, 200.0)[None, :].repeat(50, axis=0)
    seen = _cgm_error(np.random.default_rng(1), step, 300.0)
    assert np.median(seen[:, 72] / 200.0) < 0.8  # 5 minutes after the jump the sensor has not caught up
    assert np.median(seen[:, 80] / 200.0) > 0.9


def test_glucose_episodes_start_where_glucose_already_runs_there_and_never_jump() -> None:
    from pipeline.model_contract import CONDITIONS
    from sim.simulate import PROFILES, _episodes

    # a trajectory that runs low in its second half: hypoglycaemia starts there far more often
    t_g = np.arange(0, 12 * 3600, 300, dtype=float)
    glucose = np.where(t_g < 6 * 3600, 160.0, 80.0)[None, :]
    onsets = [
        ep.onset_s
        for seed in range(40)
        for ep in _episodes(
            np.random.default_rng(seed), np.array([PROFILES.index("type1_diabetic")]), 12.0, t_g, glucose
        )
        if ep.condition == CONDITIONS.index("hypoglycaemia")
    ]
    assert len(onsets) > 20 and np.mean(np.asarray(onsets) >= 6 * 3600) > 0.9
    # even an episode with no other warning moves glucose at a CGM rate: it shows before its onset
    sim = simulate(SimulationConfig(patients=300, hours=12.0, seed=5, start_ms=T0))
    eps = sim.episodes
    assert eps is not None
    glucose_eps = eps.filter(pc.is_in(eps.column("condition"), pa.array(["hypoglycaemia", "hyperglycaemia"])))
    assert len(glucose_eps) > 20 and pc.min(glucose_eps.column("precursor_minutes")).as_py() >= 4.0
