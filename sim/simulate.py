"""Simulated patients: realistic, time-correlated sensor streams with ground-truth adverse events, and a
wire encoding with delivery faults. Deterministic for a seed; vectorised over patients and time.

`simulate(config)` gives the clean readings (the canonical reading schema) and the ground-truth events;
`encode(sim)` turns them into Kafka messages in arrival order, slice by slice, with out-of-order, very
late, duplicated and malformed deliveries. Message count = readings + duplicates (a malformed message
replaces the reading it would have carried); `Simulation.faults` has the injected counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.clinical import GLUCOSE_LOW, GLUCOSE_VERY_HIGH, GLUCOSE_VERY_LOW
from pipeline.clinical import HEART_RATE_RED as HR_RED
from pipeline.clinical import RESPIRATION_RED as RR_RED
from pipeline.model_contract import CONDITIONS

PROFILES = ("non_diabetic", "type1_diabetic", "respiratory", "frail_elderly")
PROFILE_SHARE = (0.35, 0.25, 0.20, 0.20)
MG_PER_MMOL = 18.016
CGM_RANGE = (40.0, 400.0)
TRUE_FALL_CONFIDENCE = 0.7  # detectors report real falls with high confidence; false alarms below this
# Episode probability per patient-hour, by profile (rows) and condition (columns, CONDITIONS order).
EPISODE_RATE = np.array(
    [
        [0.002, 0.0, 0.03, 0.01, 0.005],
        [0.10, 0.08, 0.01, 0.005, 0.005],
        [0.0, 0.0, 0.03, 0.12, 0.01],
        [0.01, 0.0, 0.05, 0.03, 0.08],
    ]
)


@dataclass(frozen=True)
class SimulationConfig:
    patients: int = 50
    hours: float = 2.0
    seed: int = 0
    start_ms: int | None = None  # epoch ms of the first sample; None -> now (floored to the minute) minus `hours`
    vitals_interval_s: float = 5.0
    cgm_interval_s: float = 300.0
    out_of_order_rate: float = 0.01
    very_late_rate: float = 0.0005
    duplicate_rate: float = 0.005
    malformed_rate: float = 0.002
    mmol_share: float = 0.15
    iso_ts_share: float = 0.5


class Message(NamedTuple):
    stream: str
    key: bytes
    value: bytes
    timestamp_ms: int


@dataclass
class Simulation:
    config: SimulationConfig
    readings: pa.Table
    events: pa.Table
    patients: pa.Table
    faults: dict[str, int] = field(default_factory=dict)
    # The injected episodes (not the ground truth, which `events` derives from the readings): onset and
    # precursor length, 0 for an episode with no warning. For judging what a model could foresee.
    episodes: pa.Table | None = None


def simulate(config: SimulationConfig) -> Simulation:
    rng = np.random.default_rng(config.seed)
    n = config.patients
    if config.start_ms is None:
        import time

        start = (int(time.time() * 1000) // 60_000) * 60_000 - int(config.hours * 3_600_000)
    else:
        start = config.start_ms
    width = max(6, len(str(n - 1)))
    ids = np.array([f"P{i:0{width}d}" for i in range(n)], dtype=object)
    profile = rng.choice(len(PROFILES), size=n, p=PROFILE_SHARE)
    dt_v = config.vitals_interval_s
    n_v = max(1, int(config.hours * 3600 / dt_v))
    n_g = max(1, int(config.hours * 3600 / config.cgm_interval_s))
    t_v = np.arange(n_v) * dt_v  # seconds since start
    t_g = np.arange(n_g) * config.cgm_interval_s
    hour_of_day = ((start / 3_600_000.0) + t_v / 3600.0) % 24

    # Heart rate and respiration: baseline + circadian + activity bouts (OU) + noise.
    hr_base = rng.uniform(60, 90, n) + np.where(profile == 3, 5, 0)
    rr_base = rng.uniform(12, 17, n) + np.where(profile == 2, 4, 0)
    circ = np.sin(2 * np.pi * (hour_of_day - 10) / 24)[None, :]
    activity = np.maximum(_ou(rng, n, n_v, dt_v, tau_s=600, sigma=1.0), 0) * np.where(profile == 3, 6, 12)[:, None]
    hr = hr_base[:, None] + 4 * circ + activity + _ou(rng, n, n_v, dt_v, tau_s=120, sigma=2.0)
    rr = rr_base[:, None] + 0.8 * circ + 0.12 * activity + _ou(rng, n, n_v, dt_v, tau_s=180, sigma=0.8)

    # Glucose on the CGM grid: baseline + meals + slow drift.
    g_base = np.where(profile == 1, rng.uniform(130, 170, n), rng.uniform(90, 110, n))
    swing = np.where(profile == 1, 70.0, 25.0)
    meals = _meal_response(rng, n, t_g, start, swing)
    glucose = (
        g_base[:, None]
        + meals
        + _ou(rng, n, n_g, config.cgm_interval_s, tau_s=3600, sigma=np.where(profile == 1, 20.0, 6.0)[:, None])
    )

    falls_t: list[np.ndarray] = [np.empty(0)] * n
    stumbles_t: list[np.ndarray] = [np.empty(0)] * n
    episodes = _episodes(rng, profile, config.hours, t_g, glucose)
    precursor = [_apply_episode(rng, ep, t_v, t_g, hr, rr, glucose, activity, falls_t, stumbles_t) for ep in episodes]
    episode_table = pa.table(
        {
            "patient_id": pa.array([ids[e.patient] for e in episodes], pa.string()),
            "condition": pa.array([CONDITIONS[e.condition] for e in episodes], pa.string()),
            "onset": pa.array([start + int(e.onset_s * 1000) for e in episodes], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "precursor_minutes": pa.array(precursor, pa.float64()),
        }
    )

    hr = np.clip(hr + rng.normal(0, 1.5, hr.shape), 25, 250)
    rr = np.clip(rr + rng.normal(0, 0.7, rr.shape), 3, 60)
    glucose_obs = _cgm_error(rng, glucose, config.cgm_interval_s)

    tables = [
        _stream_table(rng, ids, "heart_rate", "hr", start, t_v, hr, dropout=0.25),
        _stream_table(rng, ids, "respiration", "rr", start, t_v, rr, dropout=0.25),
        _stream_table(
            rng,
            ids,
            "glucose",
            "cgm",
            start,
            t_g,
            glucose_obs,
            dropout=0.2,
            wears=(profile == 1) | (rng.random(n) < 0.6),
        ),
        _fall_table(rng, ids, profile, start, config.hours, falls_t, stumbles_t),
    ]
    readings = pa.concat_tables(tables).sort_by([("event_time", "ascending"), ("patient_id", "ascending")])
    events = detect_events(readings)
    patients = pa.table({"patient_id": pa.array(ids, pa.string()), "profile": [PROFILES[i] for i in profile]})
    return Simulation(config, readings, events, patients, episodes=episode_table)


def _ou(rng: np.random.Generator, n: int, steps: int, dt: float, tau_s: float, sigma: float | np.ndarray) -> np.ndarray:
    """Ornstein-Uhlenbeck noise, stationary std `sigma`, vectorised over patients (loop over time in C)."""
    a = np.exp(-dt / tau_s)
    shocks = rng.normal(0, 1, (n, steps)) * np.sqrt(1 - a * a)
    shocks[:, 0] = rng.normal(0, 1, n)
    # x[t] = a x[t-1] + e[t]  ==  lfilter; done with cumulative scaling for speed and stability per block.
    out = np.empty_like(shocks)
    block = 256
    x = shocks[:, 0]
    out[:, 0] = x
    powers = a ** np.arange(1, block + 1)
    for s in range(1, steps, block):
        e = shocks[:, s : s + block]
        k = e.shape[1]
        # within a block: x_j = a^j x0 + sum_i a^(j-i) e_i, computed with a scaled cumulative sum
        scale = powers[:k] ** -1.0
        acc = np.cumsum(e * scale[None, :], axis=1) * powers[None, :k]
        out[:, s : s + k] = acc + x[:, None] * powers[None, :k]
        x = out[:, s + k - 1]
    return out * np.asarray(sigma)


def _cgm_error(rng: np.random.Generator, glucose: np.ndarray, dt_s: float) -> np.ndarray:
    """What a CGM reports for true glucose [patients, steps]: the interstitial lag (first order, 5-10 min per
    sensor), a calibration error that wanders slowly (Ornstein-Uhlenbeck, 6 % sd, 6 h time constant) and a
    little white noise (2 %). Real CGM error is smooth and autocorrelated, so a 30-minute trend carries
    signal; independent noise per reading would bury it."""
    n, steps = glucose.shape
    a = np.exp(-dt_s / (rng.uniform(5, 10, n) * 60))
    lagged = np.empty_like(glucose)
    lagged[:, 0] = glucose[:, 0]
    for k in range(1, steps):  # a loop over time steps, vectorised over patients
        lagged[:, k] = a * lagged[:, k - 1] + (1 - a) * glucose[:, k]
    drift = _ou(rng, n, steps, dt_s, tau_s=6 * 3600, sigma=0.06)
    return lagged * (1 + drift) * (1 + rng.normal(0, 0.02, glucose.shape))


def _meal_response(rng: np.random.Generator, n: int, t_g: np.ndarray, start: int, swing: np.ndarray) -> np.ndarray:
    hour = ((start / 3_600_000.0) + t_g / 3600.0) % 24
    out = np.zeros((n, len(t_g)))
    for meal_hour in (7.5, 12.5, 19.0):
        shift = rng.normal(0, 0.5, n)[:, None]
        since = (hour[None, :] - meal_hour - shift) % 24
        out += swing[:, None] * (since < 3) * since * np.exp(1 - since / 0.75) / 0.75 * 0.6
    return out


# Precursors: a share of episodes comes with no warning; glucose moves towards the episode's level at a CGM
# rate of change of 1-3 mg/dL/min (the trend-arrow bands of CGM manuals), and at 3-5 mg/dL/min ("rapidly
# falling/rising", the fastest band) when there is no other warning: glucose cannot jump, so even an
# unwarned glucose episode shows on the CGM for 10-20 minutes. Heart and respiration rate creep for 1-4 hours
# before a decompensation of minutes (abnormal vitals 1-4 h before most in-hospital cardiac arrests: Andersen
# et al., Resuscitation 2016); activity falls and low-confidence stumbles appear 0.5-3 hours before a fall
# (an assumption, like the creep's shape and the no-warning share). See the model card.
NO_PRECURSOR_SHARE = 0.25
GLUCOSE_RATE_MG_DL_MIN = (1.0, 3.0)
GLUCOSE_FAST_RATE_MG_DL_MIN = (3.0, 5.0)
CREEP_MINUTES = (60.0, 240.0)
FALL_PRODROME_MINUTES = (30.0, 180.0)
# Where a glucose episode starts: hypoglycaemia where glucose already runs low, hyperglycaemia where it runs
# high. The onset is drawn with weight exp(-(g - 70) / 20) (hypo) or exp((g - 180) / 40) (hyper) over the
# patient's own trajectory g before the episode. A uniform onset made the glucose level nearly useless as a
# predictor (P(onset within 60 min | 70-90 mg/dL) 4.5 % against 13-23 % in real type-1 cohorts); see
# docs/model.md, "What real recordings taught".
GLUCOSE_ONSET_SCALE_MG_DL = {  # condition index (CONDITIONS order) -> (reference, scale)
    CONDITIONS.index("hypoglycaemia"): (70.0, -20.0),
    CONDITIONS.index("hyperglycaemia"): (180.0, 40.0),
}


class Episode(NamedTuple):
    patient: int
    condition: int
    onset_s: float  # when the injected trajectory reaches its episode level (the threshold is crossed earlier)
    strength: float  # 0 = no precursor; else (0.3, 1]: how early and clearly the precursor shows


def _episodes(
    rng: np.random.Generator, profile: np.ndarray, hours: float, t_g: np.ndarray, glucose: np.ndarray
) -> list[Episode]:
    out = []
    rates = EPISODE_RATE[profile] * hours
    counts = rng.poisson(rates)
    step = float(t_g[1] - t_g[0]) if len(t_g) > 1 else hours * 3600
    for p, c in zip(*np.nonzero(counts), strict=True):
        weights = None
        if c in GLUCOSE_ONSET_SCALE_MG_DL:
            ref, scale = GLUCOSE_ONSET_SCALE_MG_DL[c]
            weights = np.exp(np.clip((glucose[p] - ref) / scale, -30, 30))
            weights /= weights.sum()
        for _ in range(counts[p, c]):
            if weights is None:
                onset = rng.uniform(0.0, 1.0) * hours * 3600  # anywhere, early in the record included
            else:
                onset = float(t_g[rng.choice(len(t_g), p=weights)] + rng.uniform(0.0, step))
            strength = 0.0 if rng.random() < NO_PRECURSOR_SHARE else rng.uniform(0.3, 1.0)
            out.append(Episode(int(p), int(c), onset, strength))
    return out


def _ramp(t: np.ndarray, onset: float, lead: float, duration: float, power: float = 1.0) -> np.ndarray:
    """0 before onset-lead, rising to 1 at onset (as a power curve: > 1 is slow at first, faster towards
    onset), 1 for `duration`, then back to 0 over 10 minutes."""
    up = np.clip((t - (onset - lead)) / max(lead, 1.0), 0, 1) ** power
    down = np.clip(1 - (t - (onset + duration)) / 600.0, 0, 1)
    return np.minimum(up, down)


def _visible_minutes(lead_s: float, power: float) -> float:
    """Minutes from when a precursor has covered a tenth of its excursion to the episode onset: before that
    it is lost in the noise, so this, not the ramp's full length, is the warning the signal gives."""
    return lead_s * (1 - 0.1 ** (1 / power)) / 60


def _apply_episode(
    rng: np.random.Generator,
    ep: Episode,
    t_v: np.ndarray,
    t_g: np.ndarray,
    hr: np.ndarray,
    rr: np.ndarray,
    glucose: np.ndarray,
    activity: np.ndarray,
    falls_t: list[np.ndarray],
    stumbles_t: list[np.ndarray],
) -> float:
    """Inject one episode into the patient's trajectories; returns its precursor length in minutes (0 for
    none), as `_visible_minutes` counts it."""
    p, onset, strength = ep.patient, ep.onset_s, ep.strength
    duration = rng.uniform(15, 40) * 60
    warned = strength > 0
    # Weaker precursors stay flat longer and steepen late (a higher power); no precursor = a 1-minute jump.
    power = 1.0 + 2.0 * (1.0 - strength) / 0.7 if warned else 1.0
    name = CONDITIONS[ep.condition]
    if name in ("hypoglycaemia", "hyperglycaemia"):
        target = rng.uniform(38, 55) if name == "hypoglycaemia" else rng.uniform(270, 380)
        rate = rng.uniform(*(GLUCOSE_RATE_MG_DL_MIN if warned else GLUCOSE_FAST_RATE_MG_DL_MIN)) / 60  # mg/dL/s
        at = np.interp(onset, t_g, glucose[p])
        lead = abs(at - target) / rate
        lead = float(np.clip(abs(np.interp(onset - lead, t_g, glucose[p]) - target) / rate, 300, 3 * 3600))
        shape = _ramp(t_g, onset, lead, duration)
        glucose[p] = glucose[p] + (target - glucose[p]) * shape
        if name == "hypoglycaemia" and warned:
            hr[p] += 12 * _ramp(t_v, onset, lead, duration) ** 2  # adrenergic response, late in the fall
        return _visible_minutes(lead, 1.0)
    if name in ("cardiac", "respiratory"):
        high = rng.random() < (0.8 if name == "cardiac" else 0.85)
        if name == "cardiac":
            target = rng.uniform(136, 160) if high else rng.uniform(32, 38)
            level = rng.uniform(100, 125) if high else rng.uniform(45, 55)
        else:
            target = rng.uniform(27, 34) if high else rng.uniform(5, 7)
            level = rng.uniform(20, 24) if high else rng.uniform(9, 11)
        # Decompensation: a 2-15 minute final ramp across the threshold to the episode level, preceded (when
        # warned) by a creep over 1-4 hours towards an abnormal level short of the NEWS2 red thresholds.
        final_s = rng.uniform(2, 15) * 60 if warned else 60.0
        final = _ramp(t_v, onset, final_s, duration)
        creep = np.zeros_like(final)
        creep_s = 0.0
        if warned:
            creep_s = rng.uniform(*CREEP_MINUTES) * 60
            creep = (0.4 + 0.6 * strength) * _ramp(t_v, onset - final_s, creep_s, duration + final_s, power)
        vital, other, coupling = (hr, rr, 4.0) if name == "cardiac" else (rr, hr, 15.0)
        vital[p] = vital[p] + (level - vital[p]) * creep
        vital[p] = vital[p] + (target - vital[p]) * final
        other[p] += coupling * high * np.maximum(0.5 * creep, final)
        return _visible_minutes(creep_s, power) + final_s / 60 if warned else 0.0
    # fall: less activity and unsteadiness (stumbles a detector reports with low confidence) before it
    falls_t[p] = np.append(falls_t[p], onset)
    if not warned:
        return 0.0
    lead = rng.uniform(*FALL_PRODROME_MINUTES) * 60
    pre = _ramp(t_v, onset, lead, 0, power)
    hr[p] -= 0.6 * activity[p] * pre
    rr[p] -= 0.6 * 0.12 * activity[p] * pre
    stumbles = rng.poisson(3.0 * strength * lead / 3600)
    stumbles_t[p] = np.append(stumbles_t[p], onset - lead * rng.random(stumbles) ** (1 / (power + 1)))
    return _visible_minutes(lead, power)


def _stream_table(
    rng: np.random.Generator,
    ids: np.ndarray,
    stream: str,
    prefix: str,
    start: int,
    t_s: np.ndarray,
    values: np.ndarray,
    dropout: float,
    wears: np.ndarray | None = None,
) -> pa.Table:
    n, steps = values.shape
    keep = np.ones((n, steps), dtype=bool)
    if wears is not None:
        keep &= wears[:, None]
    # Dropouts: some patients lose the sensor for 5-20 minutes once.
    lost = np.asarray(rng.random(n)) < dropout
    gap_start = np.asarray(rng.uniform(0, t_s[-1] + 1, n))
    gap_len = np.asarray(rng.uniform(300, 1200, n))
    keep &= ~(lost[:, None] & (t_s[None, :] >= gap_start[:, None]) & (t_s[None, :] < (gap_start + gap_len)[:, None]))
    offset_ms = np.asarray(rng.normal(0, 2000, n))  # device clock offset
    pi, ti = np.nonzero(keep)
    jitter = rng.normal(0, 300, len(pi))
    event_ms = (start + t_s[ti] * 1000 + offset_ms[pi] + jitter).astype(np.int64)
    v = values[pi, ti]
    censored = np.zeros(len(v), dtype=bool)
    if stream == "glucose":
        v = np.round(v)  # the reported integer decides: 40.4 reads 40, the sensor's floor, so it is censored
        censored = (v <= CGM_RANGE[0]) | (v >= CGM_RANGE[1])
        v = np.clip(v, *CGM_RANGE)
    else:
        v = np.round(v, 1)
    return _table(ids[pi], np.char.add(f"{prefix}-", ids[pi].astype(str)), stream, event_ms, v, None, None, censored)


def _fall_table(
    rng: np.random.Generator,
    ids: np.ndarray,
    profile: np.ndarray,
    start: int,
    hours: float,
    falls_t: list[np.ndarray],
    stumbles_t: list[np.ndarray],
) -> pa.Table:
    pid: list[int] = []
    t: list[float] = []
    conf: list[float] = []
    for p, times in enumerate(falls_t):
        for x in times:
            pid.append(p)
            t.append(x)
            conf.append(rng.uniform(0.75, 0.99))
    # Stumbles before a fall: detections below the fall threshold, like the false alarms below.
    for p, times in enumerate(stumbles_t):
        for x in times[(times >= 0) & (times < hours * 3600)]:
            pid.append(p)
            t.append(x)
            conf.append(rng.uniform(0.3, 0.65))
    # False alarms, mostly from frail patients: low-confidence detections.
    false_rate = np.where(profile == 3, 0.15, 0.02) * hours
    for q in np.flatnonzero(rng.poisson(false_rate)):
        pid.append(int(q))
        t.append(rng.uniform(0, hours * 3600))
        conf.append(rng.uniform(0.2, 0.6))
    pid_a = np.asarray(pid, dtype=np.int64)
    event_ms = (start + np.asarray(t) * 1000).astype(np.int64)
    conf_a = np.round(np.asarray(conf), 2)
    impact = np.round(
        np.where(conf_a >= TRUE_FALL_CONFIDENCE, rng.uniform(2, 6, len(pid)), rng.uniform(1.2, 2.5, len(pid))), 2
    )
    devices = np.char.add("fall-", ids[pid_a].astype(str)) if len(pid) else np.array([], dtype=str)
    return _table(
        ids[pid_a], devices, "fall", event_ms, np.ones(len(pid)), conf_a, impact, np.zeros(len(pid), dtype=bool)
    )


def _table(
    pids: np.ndarray,
    devices: np.ndarray,
    stream: str,
    event_ms: np.ndarray,
    value: np.ndarray,
    conf: np.ndarray | None,
    impact: np.ndarray | None,
    censored: np.ndarray,
) -> pa.Table:
    n = len(value)
    return pa.table(
        {
            "patient_id": pa.array(pids, pa.string()),
            "device_id": pa.array(devices.astype(object) if n else [], pa.string()),
            "stream": pa.array([stream] * n, pa.string()),
            "event_time": pa.array(event_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "value": pa.array(value, pa.float64()),
            "fall_confidence": pa.array(conf, pa.float64()) if conf is not None else pa.nulls(n, pa.float64()),
            "impact_g": pa.array(impact, pa.float64()) if impact is not None else pa.nulls(n, pa.float64()),
            "censored": pa.array(censored, pa.bool_()),
        }
    )


# --- ground truth -----------------------------------------------------------------------------------------


def detect_events(readings: pa.Table) -> pa.Table:
    """Adverse events by the published thresholds (pipeline.clinical), per patient and stream in event time:
    hypoglycaemia < 54 mg/dL (instant) or < 70 for >= 15 min; hyperglycaemia > 250 for >= 15 min;
    cardiac HR >= 131 or <= 40 for >= 5 min; respiratory RR >= 25 or <= 8 for >= 5 min; a fall with
    confidence >= 0.7 (or none given). A run is broken by a gap longer than 2x the stream's cadence
    (the patient's median spacing on that stream). Onset = the run's first reading; end = its last."""
    parts = []
    rules = [
        ("hypoglycaemia", "glucose", lambda v: v < GLUCOSE_VERY_LOW, 0.0),
        ("hypoglycaemia", "glucose", lambda v: v < GLUCOSE_LOW, 15 * 60_000.0),
        ("hyperglycaemia", "glucose", lambda v: v > GLUCOSE_VERY_HIGH, 15 * 60_000.0),
        ("cardiac", "heart_rate", lambda v: (v <= HR_RED[0]) | (v >= HR_RED[1]), 5 * 60_000.0),
        ("respiratory", "respiration", lambda v: (v <= RR_RED[0]) | (v >= RR_RED[1]), 5 * 60_000.0),
    ]
    for cond, stream, rule, min_ms in rules:
        sub = readings.filter(pc.equal(readings.column("stream"), stream))
        if len(sub) == 0:
            continue
        sub = sub.sort_by([("patient_id", "ascending"), ("event_time", "ascending")])
        pid = np.asarray(pc.dictionary_encode(sub.column("patient_id")).combine_chunks().indices, dtype=np.int64)
        t = sub.column("event_time").cast(pa.int64()).to_numpy()
        v = sub.column("value").to_numpy(zero_copy_only=False)
        hit = rule(v)
        cadence = _cadence(pid, t)  # per reading: its patient's median spacing on this stream
        new_run = np.r_[True, (pid[1:] != pid[:-1]) | (np.diff(t) > 2 * cadence[1:]) | (hit[1:] != hit[:-1])]
        run_id = np.cumsum(new_run) - 1
        starts = np.flatnonzero(new_run)
        ends = np.r_[starts[1:], len(t)] - 1
        run_hit = hit[starts]
        dur = t[ends] - t[starts] + (cadence[starts] if min_ms > 0 else 0)
        ok = run_hit & (dur >= min_ms)
        del run_id
        parts.append(
            pa.table(
                {
                    "patient_id": sub.column("patient_id").take(pa.array(starts[ok])),
                    "condition": pa.array([cond] * int(ok.sum()), pa.string()),
                    "onset": pa.array(t[starts[ok]], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                    "end": pa.array(t[ends[ok]], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                }
            )
        )
    falls = readings.filter(pc.equal(readings.column("stream"), "fall"))
    if len(falls):
        conf = pc.fill_null(falls.column("fall_confidence"), 1.0)
        real = falls.filter(
            pc.and_(pc.greater(falls.column("value"), 0.5), pc.greater_equal(conf, TRUE_FALL_CONFIDENCE))
        )
        parts.append(
            pa.table(
                {
                    "patient_id": real.column("patient_id"),
                    "condition": pa.array(["fall"] * len(real), pa.string()),
                    "onset": real.column("event_time"),
                    "end": real.column("event_time"),
                }
            )
        )
    if not parts:
        return pa.table(
            {
                "patient_id": pa.array([], pa.string()),
                "condition": pa.array([], pa.string()),
                "onset": pa.array([], pa.timestamp("ms", tz="UTC")),
                "end": pa.array([], pa.timestamp("ms", tz="UTC")),
            }
        )
    events = pa.concat_tables(parts)
    events = _merge_overlaps(events)
    return events.sort_by([("patient_id", "ascending"), ("onset", "ascending")])


def _cadence(pid: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per row (sorted by patient, then time): the median spacing of that patient's readings (a CGM every 5
    or 15 minutes, a monitor every second, charting every hour); 1 ms for a patient with one reading."""
    n_pat = int(pid.max()) + 1 if len(pid) else 0
    same = np.diff(pid) == 0
    d, who = np.diff(t)[same], pid[1:][same]
    order = np.lexsort((d, who))
    counts = np.bincount(who, minlength=n_pat)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    med = np.ones(n_pat)
    has = counts > 0
    lo = d[order][first[has] + (counts[has] - 1) // 2]
    hi = d[order][first[has] + counts[has] // 2]
    med[has] = (lo + hi) / 2
    return med[pid]


def _merge_overlaps(events: pa.Table) -> pa.Table:
    """The instant and the 15-minute hypoglycaemia rules can flag the same episode: keep the earliest onset
    of overlapping same-condition events."""
    if len(events) == 0:
        return events
    ev = events.sort_by([("patient_id", "ascending"), ("condition", "ascending"), ("onset", "ascending")])
    key = pc.binary_join_element_wise(ev.column("patient_id"), ev.column("condition"), "|")
    k = np.asarray(pc.dictionary_encode(key).combine_chunks().indices, dtype=np.int64)
    on = ev.column("onset").cast(pa.int64()).to_numpy()
    end = ev.column("end").cast(pa.int64()).to_numpy()
    running_end = np.copy(end)
    keep = np.ones(len(ev), dtype=bool)
    for i in range(1, len(ev)):  # events are few (per patient-hour), a loop here is cheap
        if k[i] == k[i - 1] and on[i] <= running_end[i - 1]:
            keep[i] = False
            running_end[i] = max(running_end[i - 1], end[i])
        else:
            running_end[i] = end[i]
    return ev.filter(pa.array(keep))


# --- wire encoding ------------------------------------------------------------------------------------------

_MALFORMED_KINDS = ("truncated", "not_utf8", "wrong_type", "missing_field", "empty", "impossible", "nan", "future")


def encode(sim: Simulation, slice_s: float = 60.0) -> Iterator[list[Message]]:
    cfg = sim.config
    rng = np.random.default_rng(cfg.seed + 1)
    r = sim.readings
    n = len(r)
    event_ms = r.column("event_time").cast(pa.int64()).to_numpy()
    delay = rng.exponential(800, n)
    ooo = rng.random(n) < cfg.out_of_order_rate
    delay[ooo] = rng.uniform(5_000, 180_000, int(ooo.sum()))
    very = rng.random(n) < cfg.very_late_rate
    delay[very] = rng.uniform(15 * 60_000, 40 * 60_000, int(very.sum()))
    arrival = event_ms + delay.astype(np.int64)
    dup = np.flatnonzero(rng.random(n) < cfg.duplicate_rate)
    malformed = rng.random(n) < cfg.malformed_rate
    malformed_kind = rng.integers(0, len(_MALFORMED_KINDS), n)
    sim.faults = {
        "readings": n,
        "duplicates": len(dup),
        "malformed": int(malformed.sum()),
        "out_of_order": int(ooo.sum()),
        "very_late": int(very.sum()),
        "messages": n + len(dup),
    }

    devices = r.column("device_id").to_numpy(zero_copy_only=False)
    uniq, dev_code = np.unique(devices.astype(str), return_inverse=True)
    dev_rng = np.random.default_rng(cfg.seed + 2)
    dev_iso = dev_rng.random(len(uniq)) < cfg.iso_ts_share
    dev_mmol = dev_rng.random(len(uniq)) < cfg.mmol_share
    dev_extra = dev_rng.random(len(uniq)) < 0.1

    order_idx = np.concatenate([np.arange(n), dup])
    order_arrival = np.concatenate([arrival, arrival[dup] + rng.integers(1_000, 30_000, len(dup))])
    order = np.argsort(order_arrival, kind="stable")
    order_idx, order_arrival = order_idx[order], order_arrival[order]

    pids = r.column("patient_id").to_numpy(zero_copy_only=False)
    streams = r.column("stream").to_numpy(zero_copy_only=False)
    values = r.column("value").to_numpy(zero_copy_only=False)
    conf = r.column("fall_confidence").to_numpy(zero_copy_only=False)
    impact = r.column("impact_g").to_numpy(zero_copy_only=False)
    bounds = np.searchsorted(
        order_arrival,
        np.arange(order_arrival[0] if n else 0, (order_arrival[-1] if n else 0) + slice_s * 1000 + 1, slice_s * 1000),
    )
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        idx = order_idx[a:b]
        iso = np.datetime_as_string(event_ms[idx].astype("datetime64[ms]"), unit="ms", timezone="UTC")
        out = []
        for j, i in enumerate(idx.tolist()):
            d = dev_code[i]
            ts = f'"{iso[j]}"' if dev_iso[d] else str(event_ms[i])
            stream = streams[i]
            head = f'{{"patient_id":"{pids[i]}","device_id":"{devices[i]}","ts":{ts},'
            if stream == "heart_rate":
                body = f'"heart_rate_bpm":{values[i]}'
            elif stream == "respiration":
                body = f'"respiration_rate_per_min":{values[i]}'
            elif stream == "glucose":
                body = (
                    f'"glucose_mmol_l":{round(values[i] / MG_PER_MMOL, 1)}'
                    if dev_mmol[d]
                    else f'"glucose_mg_dl":{int(values[i])}'
                )
            else:
                body = f'"fall_detected":true,"confidence":{conf[i]},"impact_g":{impact[i]}'
            extra = ',"battery":87' if dev_extra[d] else ""
            value = (head + body + extra + "}").encode()
            if malformed[i]:
                value = _break(value, _MALFORMED_KINDS[malformed_kind[i]], stream, event_ms[i])
            out.append(Message(stream, pids[i].encode(), value, int(order_arrival[a + j])))
        yield out


def _break(value: bytes, kind: str, stream: str, event_ms: int) -> bytes:
    field = {
        "heart_rate": b"heart_rate_bpm",
        "respiration": b"respiration_rate_per_min",
        "glucose": b"glucose_mg_dl",
        "fall": b"fall_detected",
    }[stream]
    if kind == "truncated":
        return value[: len(value) // 2]
    if kind == "not_utf8":
        return b"\xff\xfe" + value[2:]
    if kind == "wrong_type":
        return value[:-1] + b',"' + field + b'":"fast"}'
    if kind == "missing_field":
        return value.replace(b'"device_id"', b'"device_idx"', 1)
    if kind == "empty":
        return b""
    if kind == "impossible":
        return value[:-1] + b',"' + field + (b'":900}' if stream != "fall" else b'":1}')
    if kind == "nan":
        return value[:-1] + b',"' + field + b'":NaN}'
    future = str(event_ms + 2 * 86_400_000).encode()
    return value.replace(b'"ts":', b'"ts":' + future + b',"ts_orig":', 1)
