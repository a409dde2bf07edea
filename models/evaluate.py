"""How the risk model is judged: discrimination, calibration, the clinical baselines on the same windows,
alerting at a fixed budget and patient-level bootstrap intervals (plain NumPy over arrays); `evaluate` puts
them together into the model card's figures for a checkpoint on its test patients.

Baselines (all scored on the last window of each test sequence, i.e. what a clinician sees now):
- partial NEWS2: the heart-rate and respiration-rate rows of NEWS2 (0-6), and its red rule as a binary alert;
- CGM consensus: the glucose level of the current value (0 in range, 1 level 1, 2 level 2, both sides);
- their combination: partial NEWS2 + 3 points per CGM level (a level-2 glucose counts like a red score);
- logistic regression on the last window's model features, fitted on the training patients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from models.lstm import Checkpoint
from models.scorer import FORECAST_VITALS, feature_matrix, sequences
from pipeline.clinical import (
    GLUCOSE_HIGH,
    GLUCOSE_LOW,
    GLUCOSE_VERY_HIGH,
    GLUCOSE_VERY_LOW,
    HEART_RATE_RED,
    NEWS2_PULSE,
    NEWS2_RESPIRATION,
    RESPIRATION_RED,
    news2_points,
)
from pipeline.model_contract import CONDITIONS, HEADS, WINDOW_FEATURES, RiskLevels, sensor_configuration
from pipeline.readings import epoch_ms, shared_codes, span_days

MINUTE_MS = 60_000
# The logistic-regression baseline reads the last window's own inputs, whatever else the model reads (its
# recent course): a baseline that does not move with the model's procedure.
BASE = len(WINDOW_FEATURES)

# The baselines of the model card, in its column order (their scores are defined below).
BASELINES: dict[str, str] = {
    "news2_partial": "partial NEWS2 (HR + RR)",
    "cgm": "CGM consensus level",
    "news2_cgm": "NEWS2 + CGM",
    "logistic": "logistic regression",
}


# --- discrimination and calibration ---------------------------------------------------------------------


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney); ties count one half."""
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        return float("nan")
    ranks = _rank(s)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def auprc(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision: precision at each positive, in descending score order; tied scores form one
    step (so a constant score gets the prevalence, not an order-dependent value)."""
    if not (y == 1).any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order] == 1, s[order]
    last_of_tie = np.r_[ss[1:] != ss[:-1], True]
    tp = np.cumsum(ys)[last_of_tie]
    seen = np.flatnonzero(last_of_tie) + 1
    new_tp = np.diff(np.r_[0, tp])
    return float((new_tp * tp / seen).sum() / ys.sum())


def _rank(s: np.ndarray) -> np.ndarray:
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    _uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]  # ties get their average rank


def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, count) per equal-width probability bin that holds windows."""
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    return [(float(p[idx == b].mean()), float(y[idx == b].mean()), int((idx == b).sum())) for b in np.unique(idx)]


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |predicted - observed| per bin, weighted by the bin's share of windows."""
    return float(sum(n * abs(mp - rate) for mp, rate, n in calibration_bins(y, p, bins)) / max(len(y), 1))


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Pool-adjacent-violators: the non-decreasing step function of p closest to y in squared error.
    Returns knots (block mean of p, block rate of y) for linear interpolation between blocks."""
    order = np.argsort(p, kind="stable")
    ps, ys = p[order].astype(np.float64), y[order].astype(np.float64)
    # merge tied scores first: a tie must map to one value
    _u, start = np.unique(ps, return_index=True)
    w = np.diff(np.r_[start, len(ps)]).astype(np.float64)
    sy = np.add.reduceat(ys, start)
    sp = np.add.reduceat(ps, start)
    blocks: list[list[float]] = []  # [sum y, sum p, weight]
    for a, b, c in zip(sy, sp, w, strict=True):
        blocks.append([a, b, c])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][2] >= blocks[-1][0] / blocks[-1][2]:
            a2, b2, c2 = blocks.pop()
            blocks[-1][0] += a2
            blocks[-1][1] += b2
            blocks[-1][2] += c2
    return {"x": [float(b[1] / b[2]) for b in blocks], "y": [float(b[0] / b[2]) for b in blocks]}


# --- clinical baselines -------------------------------------------------------------------------------------


def _col(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def news2_partial(windows: pa.Table) -> np.ndarray:
    """NEWS2 points for respiration rate and pulse (0-6) from the window's last readings; a missing
    stream scores 0, as an unmeasured parameter would."""
    hr = news2_points(_col(windows, "heart_rate_bpm_last"), NEWS2_PULSE)
    rr = news2_points(_col(windows, "respiration_rate_per_min_last"), NEWS2_RESPIRATION)
    return (hr + rr).astype(np.float64)


def news2_red(windows: pa.Table) -> np.ndarray:
    """The red rule as a 0/1 alert: a 3 in either parameter (HR <= 40 or >= 131, RR <= 8 or >= 25)."""
    hr = _col(windows, "heart_rate_bpm_last")
    rr = _col(windows, "respiration_rate_per_min_last")
    with np.errstate(invalid="ignore"):
        red = (hr <= HEART_RATE_RED[0]) | (hr >= HEART_RATE_RED[1])
        red |= (rr <= RESPIRATION_RED[0]) | (rr >= RESPIRATION_RED[1])
    return red.astype(np.float64)


def cgm_level(windows: pa.Table) -> np.ndarray:
    """International consensus glucose level of the current value: 0 in 70-180 mg/dL, 1 for 54-69 or
    181-250, 2 below 54 or above 250; no reading scores 0."""
    g = _col(windows, "glucose_mg_dl_last")
    with np.errstate(invalid="ignore"):
        level2 = (g < GLUCOSE_VERY_LOW) | (g > GLUCOSE_VERY_HIGH)
        level = np.where(level2, 2, np.where((g < GLUCOSE_LOW) | (g > GLUCOSE_HIGH), 1, 0))
    return np.where(np.isnan(g), 0, level).astype(np.float64)


def clinical_score(windows: pa.Table) -> np.ndarray:
    """Partial NEWS2 plus 3 points per CGM consensus level."""
    return news2_partial(windows) + 3 * cgm_level(windows)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 25) -> np.ndarray:
    """Logistic regression by Newton's method with a small ridge penalty; returns [intercept, weights]."""
    xb = np.c_[np.ones(len(x)), x.astype(np.float64)]
    w = np.zeros(xb.shape[1])
    reg = l2 * max(len(x), 1) * np.eye(xb.shape[1])
    reg[0, 0] = 0.0  # the intercept is not shrunk
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:  # no windows, or a constant feature and no penalty to fix it
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(w[0] + x.astype(np.float64) @ w[1:], -30, 30)))


# --- alerting at a fixed budget -------------------------------------------------------------------------


@dataclass
class AlertResult:
    threshold: float
    alerts: int
    alerts_per_patient_day: float
    events: int  # events with at least one scored window in the horizon before onset
    detected: int
    sensitivity: float
    ppv: float
    median_lead_minutes: float
    leads_minutes: list[float] = field(default_factory=list)  # per detected event, for intervals
    lead_patients: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def alerts(patient: np.ndarray, t_ms: np.ndarray, fire: np.ndarray, refractory_ms: int) -> np.ndarray:
    """Indices of alerts: a window whose score crosses the threshold raises one unless the same patient had
    an alert within `refractory_ms` before (one alarm per episode, as monitors suppress repeats)."""
    idx = np.flatnonzero(fire)
    idx = idx[np.lexsort((t_ms[idx], patient[idx]))]
    out: list[int] = []
    last_p, last_t = None, 0
    for i in idx.tolist():
        if patient[i] != last_p or t_ms[i] - last_t >= refractory_ms:
            out.append(i)
            last_p, last_t = patient[i], t_ms[i]
    return np.asarray(out, dtype=np.int64)


def alert_stats(
    patient: np.ndarray,
    t_ms: np.ndarray,
    fire: np.ndarray,
    ev_patient: np.ndarray,
    ev_onset: np.ndarray,
    horizon_ms: int,
    patient_days: float,
    threshold: float = float("nan"),
) -> AlertResult:
    """Sensitivity: share of events with an alert in [onset - H, onset); PPV: share of alerts followed by an
    onset within H; lead time: onset minus the first alert in that span. Only events with a scored window
    in the span count (the rest could not have been predicted from these windows)."""
    a = alerts(patient, t_ms, fire, horizon_ms)
    a_p, a_t = patient[a], t_ms[a]
    followed = np.zeros(len(a), dtype=bool)
    detected, counted = 0, 0
    leads, lead_patients = [], []
    for p, onset in zip(ev_patient.tolist(), ev_onset.tolist(), strict=True):
        in_span = (patient == p) & (t_ms < onset) & (t_ms >= onset - horizon_ms)
        if not in_span.any():
            continue
        counted += 1
        hit = (a_p == p) & (a_t < onset) & (a_t >= onset - horizon_ms)
        followed |= hit
        if hit.any():
            detected += 1
            leads.append((onset - a_t[hit].min()) / MINUTE_MS)
            lead_patients.append(p)
    return AlertResult(
        threshold=float(threshold),
        alerts=len(a),
        alerts_per_patient_day=len(a) / patient_days if patient_days else float("nan"),
        events=counted,
        detected=detected,
        sensitivity=detected / counted if counted else float("nan"),
        ppv=float(followed.mean()) if len(a) else float("nan"),
        median_lead_minutes=float(np.median(leads)) if leads else float("nan"),
        leads_minutes=[float(x) for x in leads],
        lead_patients=[str(x) for x in lead_patients],
    )


def at_budget(
    score: np.ndarray,
    patient: np.ndarray,
    t_ms: np.ndarray,
    ev_patient: np.ndarray,
    ev_onset: np.ndarray,
    horizon_ms: int,
    patient_days: float,
    budget_per_day: float = 1.0,
) -> AlertResult:
    """The lowest threshold whose alerts stay within `budget_per_day` per patient-day (binary search over
    the distinct scores: with the refractory period the alert count grows with a lower threshold)."""
    cand = np.unique(score)[::-1]  # highest first

    def rate(k: int) -> float:
        return len(alerts(patient, t_ms, score >= cand[k], horizon_ms)) / patient_days

    lo, hi = 0, len(cand) - 1  # invariant: cand[lo] within budget (or nothing is)
    if rate(lo) > budget_per_day:
        return alert_stats(patient, t_ms, np.zeros(len(score), bool), ev_patient, ev_onset, horizon_ms, patient_days)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rate(mid) <= budget_per_day:
            lo = mid
        else:
            hi = mid - 1
    thr = float(cand[lo])
    return alert_stats(patient, t_ms, score >= thr, ev_patient, ev_onset, horizon_ms, patient_days, thr)


# --- bootstrap ----------------------------------------------------------------------------------------------


def bootstrap_ci(
    patient: np.ndarray,
    metric: Callable[[np.ndarray], float],
    reps: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of `metric(row indices)` over resamples of patients with replacement: windows
    of one patient are correlated, so patients, not windows, are the unit of resampling."""
    rng = np.random.default_rng(seed)
    uniq, code = np.unique(patient, return_inverse=True)
    if len(uniq) == 0:
        return float("nan"), float("nan")
    rows_of = np.split(np.argsort(code, kind="stable"), np.cumsum(np.bincount(code))[:-1])
    values = []
    for _ in range(reps):
        pick = rng.integers(0, len(uniq), len(uniq))
        v = metric(np.concatenate([rows_of[i] for i in pick]))
        if not np.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


# --- what could be foreseen ---------------------------------------------------------------------------------


def head_mask(split: Split) -> np.ndarray:
    """[N, heads] bool: where each head is assessed (the "any" head wherever one condition is)."""
    a = np.ones((len(split.y), len(CONDITIONS)), bool) if split.assessed is None else split.assessed
    return np.c_[a.any(axis=1), a]


def precursor_leads(events: pa.Table, episodes: pa.Table, window_ms: int = 180 * MINUTE_MS) -> np.ndarray:
    """Per ground-truth event, minutes between the start of its injected precursor and its onset by the
    thresholds (0 for an episode injected with no warning, or an event no episode caused, e.g. a burst of
    activity). The event is matched to the same patient's nearest episode of the same condition whose
    injected onset lies within three hours after the threshold onset (a ramp crosses the threshold before
    it reaches its target: glucose moving at 1 mg/dL/min from 250 to 380 takes over two hours). No alert
    can lead an event by more than this on the signal it was given."""
    ev_p = np.asarray(events.column("patient_id").to_pylist(), dtype=object)
    ev_c = np.asarray(events.column("condition").to_pylist(), dtype=object)
    ev_t = events.column("onset").cast(pa.int64()).to_numpy()
    ep_p = np.asarray(episodes.column("patient_id").to_pylist(), dtype=object)
    ep_c = np.asarray(episodes.column("condition").to_pylist(), dtype=object)
    ep_t = episodes.column("onset").cast(pa.int64()).to_numpy()
    ep_lead = episodes.column("precursor_minutes").to_numpy()
    out = np.zeros(len(ev_t))
    for i in range(len(ev_t)):
        m = (ep_p == ev_p[i]) & (ep_c == ev_c[i]) & (ep_t >= ev_t[i] - 10 * MINUTE_MS) & (ep_t <= ev_t[i] + window_ms)
        if not m.any():
            continue
        j = np.flatnonzero(m)[np.argmin(np.abs(ep_t[m] - ev_t[i]))]
        if ep_lead[j] > 0:
            start = ep_t[j] - ep_lead[j] * MINUTE_MS
            out[i] = max(0.0, (ev_t[i] - start) / MINUTE_MS)
    return out


# --- a checkpoint on a split's windows ----------------------------------------------------------------------


@dataclass
class Split:
    """One group of patients (train, val or test): its scored windows as sequences and labels, and what the
    baselines and other checkpoints read."""

    x: np.ndarray  # [N, L, F], normalised with the trained model's center and scale
    y: np.ndarray  # [N, heads]
    targets: pa.Table  # the scored windows (not during an ongoing event): baselines read them
    context: pa.Table  # model inputs of every window of these patients: any checkpoint's sequences
    events: pa.Table  # ground-truth events of these patients
    patient_days: float
    # [N, conditions]: conditions assessed for each window (their stream has a reading in the context);
    # None: all of them
    assessed: np.ndarray | None = None
    source: np.ndarray | None = None  # [N] "sim" or the real cohort's name
    keys: np.ndarray | None = None  # [N] sensor configuration (model_contract.sensor_configuration)

    def subset(self, rows: np.ndarray, patient_days: float) -> Split:
        """The same split restricted to some of its scored windows (the context stays whole)."""
        events = self.events
        who = pa.array(sorted(set(self.targets.column("patient_id").take(pa.array(rows)).to_pylist())), pa.string())
        events = events.filter(pc.is_in(events.column("patient_id"), who))
        return Split(
            self.x[rows],
            self.y[rows],
            self.targets.take(pa.array(rows)),
            self.context,
            events,
            patient_days,
            None if self.assessed is None else self.assessed[rows],
            None if self.source is None else self.source[rows],
            None if self.keys is None else self.keys[rows],
        )


class EvalConfig(Protocol):
    """What `evaluate` reads of the training config (models.train.TrainConfig)."""

    seed: int
    horizon_minutes: int
    bootstrap: int
    alert_budget_per_day: float


def network_outputs(ckpt: Checkpoint, x: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    net = ckpt.model()
    logits, forecast = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            lo, fc = net(torch.from_numpy(x[i : i + batch]))
            logits.append(lo.numpy())
            forecast.append(fc.numpy())
    k2 = 2 * len(ckpt.config.forecast_pairs)
    if not logits:
        return np.zeros((0, len(ckpt.config.heads))), np.zeros((0, 2, k2))
    return np.concatenate(logits), np.concatenate(forecast)


def split_inputs(ckpt: Checkpoint, split: Split, window_ms: int = 300_000) -> np.ndarray:
    """The split's scored windows as sequences for `ckpt` (its own normalisation and context length)."""
    x, _ = sequences(
        split.context,
        feature_matrix(split.context, np.asarray(ckpt.center), np.asarray(ckpt.scale)),
        split.targets,
        window_ms,
        ckpt.config.window_count,
    )
    return x


def event_free_days(
    patient: np.ndarray, t_end: np.ndarray, events: pa.Table, horizon_ms: int, window_ms: int = 300_000
) -> tuple[np.ndarray, float]:
    """The windows in a patient's event-free days, and how many patient-days those are. A day is a UTC
    calendar day of a patient's record in which no event of any condition is under way or begins within the
    horizon after: a patient-level "without events" for cohorts whose every patient has some event over weeks
    of recording (type-1 diabetes: a low most weeks). Each such day counts for the time its windows span."""
    day = 86_400_000
    w_code, e_code = shared_codes(pa.array(patient, pa.string()), events.column("patient_id"))
    first = (events.column("onset").cast(pa.int64()).to_numpy() - horizon_ms) // day
    last = events.column("end").cast(pa.int64()).to_numpy() // day
    span = np.maximum(last - first + 1, 0)
    busy_days = np.repeat(first, span) + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
    busy = np.repeat(e_code, span) * (1 << 32) + busy_days
    key = w_code * (1 << 32) + t_end // day
    calm = ~np.isin(key, busy)
    if not calm.any():
        return calm, 0.0
    blocks, block = np.unique(key[calm], return_inverse=True)
    lo = np.full(len(blocks), np.iinfo(np.int64).max)
    hi = np.full(len(blocks), np.iinfo(np.int64).min)
    np.minimum.at(lo, block, t_end[calm])
    np.maximum.at(hi, block, t_end[calm])
    return calm, float(np.minimum(hi - lo + window_ms, day).sum() / day)


def patient_days(split: Split, rows: np.ndarray, window_ms: int = 300_000) -> float:
    """Days spanned by the context windows of the patients of `rows` (first window start to last window end)."""
    who = pa.array(sorted(set(split.targets.column("patient_id").take(pa.array(rows)).to_pylist())), pa.string())
    ctx = split.context.filter(pc.is_in(split.context.column("patient_id"), who))
    return span_days(ctx.column("patient_id"), epoch_ms(ctx.column("window_start")), window_ms)


def evaluate(ckpt: Checkpoint, splits: dict[str, Split], cfg: EvalConfig) -> dict[str, Any]:
    """The model card's figures: on the simulated test patients (the top-level figures, as before), and per
    real cohort in the test set (`real`: models.evaluate.evaluate_real)."""
    test = splits["test"]
    if test.source is None:
        return evaluate_one(ckpt, test, splits["train"], cfg)
    # every source's patient-days as the span of its test patients' windows (the split's own total is each
    # cohort's mean days per patient times its test patients: the difference is no simulated day)
    sim_rows = np.flatnonzero(test.source == "sim")
    metrics = evaluate_one(ckpt, test.subset(sim_rows, patient_days(test, sim_rows)), splits["train"], cfg)
    metrics["real"] = {
        cohort: evaluate_real(ckpt, test.subset(rows, patient_days(test, rows)), splits["train"], cfg)
        for cohort in sorted(set(test.source.tolist()) - {"sim"})
        if len(rows := np.flatnonzero(test.source == cohort))
    }
    return metrics


def evaluate_one(ckpt: Checkpoint, test: Split, train_split: Split, cfg: EvalConfig) -> dict[str, Any]:
    """The figures for one group of test windows, for the model and every baseline. Each head is judged on
    the windows that assess it (the product gives no probability elsewhere)."""
    logits, forecast = network_outputs(ckpt, test.x)
    assessed = np.ones((len(test.y), len(CONDITIONS)), bool) if test.assessed is None else test.assessed
    p = ckpt.probabilities(logits, assessed, test.keys)
    raw = 1 / (1 + np.exp(-logits.astype(np.float64)))
    # the same overall risk without the isotonic maps, to show what calibration does
    cond = [HEADS.index(c) for c in CONDITIONS]
    raw_any = 1 - np.prod(1 - np.where(assessed, raw[:, cond], 0.0), axis=1)
    last = test.x[:, -1, :BASE]
    scores: dict[str, np.ndarray] = {
        "news2_partial": news2_partial(test.targets),
        "cgm": cgm_level(test.targets),
        "news2_cgm": clinical_score(test.targets),
    }
    patient = np.asarray(test.targets.column("patient_id").to_pylist())
    t_end = test.targets.column("window_end").cast(pa.int64()).to_numpy()
    heads: dict[str, Any] = {}
    train_mask = head_mask(train_split)
    for i, head in enumerate(HEADS):
        ok = ~np.isnan(p[:, i])
        y = test.y[ok, i]
        fit_rows = train_mask[:, i]
        w = fit_logistic(train_split.x[fit_rows, -1, :BASE], train_split.y[fit_rows, i])
        per = {"model": p[ok, i], **{k: v[ok] for k, v in scores.items()}, "logistic": predict_logistic(w, last[ok])}
        row: dict[str, Any] = {"positives": int(y.sum()), "windows": int(ok.sum())}
        for name, s in per.items():
            row[name] = _with_ci(y, s, patient[ok], cfg.bootstrap, cfg.seed)
        best = max(BASELINES, key=lambda b: row[b]["auroc"] if not np.isnan(row[b]["auroc"]) else -1.0)
        row["best_baseline"] = best
        lo, hi = bootstrap_ci(patient[ok], _auroc_gain(y, per["model"], per[best]), cfg.bootstrap, cfg.seed)
        row["auroc_gain_ci"] = [lo, hi]  # paired: the same resampled patients for both scores
        heads[head] = row
        if head == "any":
            any_scores = {k: np.full(len(ok), -np.inf) for k in per}  # every kept window assesses something
            for k, v in per.items():
                any_scores[k][ok] = v
    ev_patient = np.asarray(test.events.column("patient_id").to_pylist())
    ev_onset = test.events.column("onset").cast(pa.int64()).to_numpy()
    h_ms = cfg.horizon_minutes * MINUTE_MS
    alerting = {
        name: at_budget(
            s, patient, t_end, ev_patient, ev_onset, h_ms, test.patient_days, cfg.alert_budget_per_day
        ).as_dict()
        for name, s in any_scores.items()
    }
    red = news2_red(test.targets) > 0
    alerting["news2_red"] = alert_stats(
        patient, t_end, red, ev_patient, ev_onset, h_ms, test.patient_days, 1.0
    ).as_dict()
    for a in alerting.values():
        a["median_lead_ci"] = _median_lead_ci(a.pop("leads_minutes"), a.pop("lead_patients"), cfg.bootstrap, cfg.seed)
    y_any = test.y[:, HEADS.index("any")]
    metrics: dict[str, Any] = {
        "test_windows": len(test.y),
        "test_patients": len(np.unique(patient)),
        "test_patient_days": test.patient_days,
        "heads": heads,
        "alerts": alerting,
        "alert_budget_per_day": cfg.alert_budget_per_day,
        "calibration": {
            "ece": ece(y_any, p[:, 0]),
            "ece_uncalibrated": ece(y_any, raw_any),
            "bins": calibration_bins(y_any, p[:, 0]),
            "bins_uncalibrated": calibration_bins(y_any, raw_any),
        },
        "any_source": ckpt.any_source,
        "validation_any_auroc": ckpt.metrics.get("validation_any_auroc", {}),
        "forecast": forecast_metrics(ckpt, test.x, forecast),
        "roc": {name: _roc(y_any, s) for name, s in any_scores.items()},
    }
    if "precursor_minutes" in test.events.column_names:
        metrics["precursors"] = foreseeable(test, patient, t_end, h_ms, alerting["model"])
    metrics["targets"] = targets(metrics)
    return metrics


def foreseeable(
    test: Split, patient: np.ndarray, t_end: np.ndarray, h_ms: int, model: dict[str, Any]
) -> dict[str, Any]:
    """How much warning the simulated signal gives, over the events that the alert figures count (a scored
    window in the hour before onset): the share with no precursor, and the median lead an alert would have
    if it fired the moment the precursor began (capped at the horizon)."""
    onset = test.events.column("onset").cast(pa.int64()).to_numpy()
    who = np.asarray(test.events.column("patient_id").to_pylist())
    counted = np.array(
        [((patient == p) & (t_end < o) & (t_end >= o - h_ms)).any() for p, o in zip(who, onset, strict=True)],
        dtype=bool,  # a test set with no events must still index (an empty float array cannot)
    )
    uncapped = test.events.column("precursor_minutes").to_numpy()[counted]
    lead = np.minimum(uncapped, h_ms / MINUTE_MS)
    present = uncapped[uncapped > 0]
    return {
        "precursor_minutes_quartiles_when_present": (
            [float(q) for q in np.percentile(present, [25, 50, 75])] if len(present) else []
        ),
        "events": int(counted.sum()),
        "no_precursor": int((lead == 0).sum()),
        "median_precursor_minutes": float(np.median(lead)) if len(lead) else float("nan"),
        "median_precursor_minutes_when_present": float(np.median(lead[lead > 0])) if (lead > 0).any() else float("nan"),
        "share_with_precursor_over_20_minutes": float((lead >= 20).mean()) if len(lead) else float("nan"),
        "model_detected": model["detected"],
    }


def _median_lead_ci(leads: list[float], patients: list[str], reps: int, seed: int) -> list[float]:
    """Interval of the median lead time over resamples of the patients whose events were detected (the
    threshold stays as chosen on the whole test set)."""
    if not leads:
        return [float("nan"), float("nan")]
    lead = np.asarray(leads)
    return list(bootstrap_ci(np.asarray(patients), lambda r: float(np.median(lead[r])), reps, seed))


def _auroc_gain(y: np.ndarray, model: np.ndarray, baseline: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda r: auroc(y[r], model[r]) - auroc(y[r], baseline[r])


def _with_ci(y: np.ndarray, s: np.ndarray, patient: np.ndarray, reps: int, seed: int) -> dict[str, Any]:
    return {
        "auroc": auroc(y, s),
        "auroc_ci": list(bootstrap_ci(patient, lambda r: auroc(y[r], s[r]), reps, seed)),
        "auprc": auprc(y, s),
        "auprc_ci": list(bootstrap_ci(patient, lambda r: auprc(y[r], s[r]), reps, seed)),
    }


def _roc(y: np.ndarray, s: np.ndarray, points: int = 60) -> list[tuple[float, float]]:
    """A coarse ROC curve (false positive rate, true positive rate) for the model card's picture."""
    if not (y == 1).any() or not (y == 0).any():
        return []
    thresholds = np.unique(np.quantile(s, np.linspace(0, 1, points)))[::-1]
    return [(float((s[y == 0] >= t).mean()), float((s[y == 1] >= t).mean())) for t in thresholds]


def forecast_metrics(ckpt: Checkpoint, x: np.ndarray, forecast: np.ndarray) -> dict[str, Any]:
    """Per vital: how often the observed window mean fell inside its interval (forecast from the windows
    before it), i.e. 1 - the anomaly rate, on test windows where the check applies."""
    out = {}
    centre, scale = np.asarray(ckpt.center), np.asarray(ckpt.scale)
    _mu, low, high = ckpt.forecast_intervals(forecast[:, 0])
    for j, (stream, (f, p)) in enumerate(zip(FORECAST_VITALS, ckpt.config.forecast_pairs, strict=True)):
        ok = (x[:, -1, p] > 0) & (x[:, :-1, p].sum(axis=1) > 0)
        observed = centre[f] + scale[f] * x[ok, -1, f]
        inside = (observed >= low[ok, j]) & (observed <= high[ok, j])
        out[stream] = {"windows": int(ok.sum()), "coverage": float(inside.mean()) if ok.any() else float("nan")}
    return out


def targets(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model's targets (see the model card), measured: each with the figures it compares and whether it is met."""
    row = m["heads"]["any"]
    best = row["best_baseline"]
    best_auprc = max(row[b]["auprc"] for b in BASELINES)
    model_alerts, red = m["alerts"]["model"], m["alerts"]["news2_red"]
    return {
        "auroc": {
            "model": row["model"]["auroc"],
            "required": row[best]["auroc"] + 0.05,
            "met": bool(row["model"]["auroc"] >= row[best]["auroc"] + 0.05),
        },
        "auprc": {
            "model": row["model"]["auprc"],
            "required": 1.5 * best_auprc,
            "met": bool(row["model"]["auprc"] >= 1.5 * best_auprc),
        },
        "sensitivity_at_budget": {
            "model": model_alerts["sensitivity"],
            "required": 1.5 * red["sensitivity"],
            "met": bool(model_alerts["sensitivity"] >= 1.5 * red["sensitivity"] and model_alerts["sensitivity"] > 0),
        },
        "median_lead_minutes": {
            "model": model_alerts["median_lead_minutes"],
            "required": 20.0,
            "met": bool(model_alerts["median_lead_minutes"] >= 20.0),
        },
        "ece": {"model": m["calibration"]["ece"], "required": 0.05, "met": bool(m["calibration"]["ece"] <= 0.05)},
    }


# --- real cohorts -------------------------------------------------------------------------------------------

# Baselines on real windows (scores, higher = more risk; only readings before the window end), per head:
REAL_BASELINES: dict[str, str] = {
    "last_value": "last value",
    "trend": "30-min trend extrapolation",
    "lbgi": "LBGI / HBGI (60 min)",
    "news2_partial": "partial NEWS2 (HR + RR)",
    "news2_cgm": "NEWS2 + CGM",
    "logistic": "logistic regression",
}
MIN_POSITIVES = 20  # a cohort "has enough events" for a head with at least this many positive windows...
MIN_EVENT_PATIENTS = 5  # ...from at least this many patients
MIN_EVENT_FREE_DAYS = 5.0  # event-free patient-days before their `high` share and alert rate are judged


def context_values(split: Split, column: str, length: int, window_ms: int = 300_000) -> np.ndarray:
    """[N, length]: `column` of each target's context windows (oldest first, the target last), NaN where the
    window is missing or the value null."""
    v = np.asarray(split.context.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
    m = np.stack([np.nan_to_num(v), ~np.isnan(v)], axis=1).astype(np.float32)
    seq, _ = sequences(split.context, m, split.targets, window_ms, length)
    return np.where(seq[:, :, 1] > 0, seq[:, :, 0].astype(np.float64), np.nan)


def _slope_last(series: np.ndarray, minutes_per_step: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope per minute over the available points of each row, and the last available value
    (NaN with fewer than 2 points / none)."""
    t = np.arange(series.shape[1], dtype=np.float64)[None, :] * minutes_per_step
    ok = ~np.isnan(series)
    n = ok.sum(axis=1)
    tm = np.where(ok, t, 0).sum(axis=1) / np.maximum(n, 1)
    vm = np.where(ok, series, 0).sum(axis=1) / np.maximum(n, 1)
    dt = np.where(ok, t - tm[:, None], 0)
    num = (dt * np.where(ok, series - vm[:, None], 0)).sum(axis=1)
    den = (dt * dt).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where((n >= 2) & (den > 0), num / den, np.nan)
    idx = np.where(ok, np.arange(series.shape[1])[None, :], -1).max(axis=1)
    last = np.where(idx >= 0, series[np.arange(len(series)), np.maximum(idx, 0)], np.nan)
    return slope, last


def kovatchev(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LBGI and HBGI per row over the available glucose values (mg/dL) of each row (NaN without any)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        f = 1.509 * (np.log(np.clip(g, 1, None)) ** 1.084 - 5.381)
    r = 10 * f * f
    ok = ~np.isnan(g)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        lbgi = np.where(ok & (f < 0), r, 0).sum(axis=1) / n
        hbgi = np.where(ok & (f > 0), r, 0).sum(axis=1) / n
    return np.where(n > 0, lbgi, np.nan), np.where(n > 0, hbgi, np.nan)


def real_baselines(split: Split, length: int = 12, window_ms: int = 300_000) -> dict[str, np.ndarray]:
    """Per baseline, [N, heads] scores (NaN where it says nothing about a head)."""
    n, h = len(split.y), {name: HEADS.index(name) for name in HEADS}
    out = {name: np.full((n, len(HEADS)), np.nan) for name in REAL_BASELINES if name != "logistic"}
    g = context_values(split, "glucose_mg_dl_mean", length, window_ms)
    hr = context_values(split, "heart_rate_bpm_mean", length, window_ms)
    rr = context_values(split, "respiration_rate_per_min_mean", length, window_ms)
    t = split.targets
    g_last, hr_last, rr_last = (
        _col(t, c) for c in ("glucose_mg_dl_last", "heart_rate_bpm_last", "respiration_rate_per_min_last")
    )
    out["last_value"][:, h["hypoglycaemia"]] = -g_last
    out["last_value"][:, h["hyperglycaemia"]] = g_last
    out["last_value"][:, h["cardiac"]] = np.abs(hr_last - 80)
    out["last_value"][:, h["respiratory"]] = np.abs(rr_last - 16)
    recent = slice(length - 7, length)  # the last 35 minutes of window means
    for series, heads_of in ((g, ("hypoglycaemia", "hyperglycaemia")), (hr, ("cardiac",)), (rr, ("respiratory",))):
        slope, last = _slope_last(series[:, recent])
        pred = last + 30 * np.nan_to_num(slope)
        if heads_of[0] == "hypoglycaemia":
            out["trend"][:, h["hypoglycaemia"]] = -pred
            out["trend"][:, h["hyperglycaemia"]] = pred
        else:
            out["trend"][:, h[heads_of[0]]] = np.abs(pred - (80 if heads_of[0] == "cardiac" else 16))
    lbgi, hbgi = kovatchev(g)
    out["lbgi"][:, h["hypoglycaemia"]] = lbgi
    out["lbgi"][:, h["hyperglycaemia"]] = hbgi
    out["lbgi"][:, h["any"]] = lbgi + hbgi
    news = news2_partial(t)
    has_vitals = ~(np.isnan(hr_last) & np.isnan(rr_last))
    for head in ("any", "cardiac", "respiratory"):
        out["news2_partial"][:, h[head]] = np.where(has_vitals, news, np.nan)
    out["news2_cgm"][:, h["any"]] = clinical_score(t)
    return out


def evaluate_real(ckpt: Checkpoint, test: Split, train_split: Split, cfg: EvalConfig) -> dict[str, Any]:
    """One real cohort's held-out windows: per head (on the windows that assess it) the model against every
    baseline that speaks to the head, with patient-bootstrap intervals and the paired gain over the best;
    the overall risk per sensor configuration; `high` windows and alerts among patients without events;
    calibration; the issue's targets, each with whether the cohort has enough events to judge it."""
    logits, _ = network_outputs(ckpt, test.x)
    assessed = np.ones((len(test.y), len(CONDITIONS)), bool) if test.assessed is None else test.assessed
    p = ckpt.probabilities(logits, assessed, test.keys)
    patient = np.asarray(test.targets.column("patient_id").to_pylist())
    base = real_baselines(test, ckpt.config.window_count)
    train_mask = head_mask(train_split)
    heads: dict[str, Any] = {}
    for i, head in enumerate(HEADS):
        ok = ~np.isnan(p[:, i])
        y = test.y[ok, i]
        if not ok.any():
            continue
        fit_rows = train_mask[:, i]
        w = fit_logistic(train_split.x[fit_rows, -1, :BASE], train_split.y[fit_rows, i])
        per = {"model": p[ok, i], "logistic": predict_logistic(w, test.x[ok, -1, :BASE])}
        for name, sc in base.items():
            if not np.isnan(sc[ok, i]).all():
                per[name] = np.nan_to_num(sc[ok, i], nan=-1e9)  # no reading: the lowest score
        row: dict[str, Any] = {
            "windows": int(ok.sum()),
            "positives": int(y.sum()),
            "event_patients": len(set(patient[ok][y > 0].tolist())),
        }
        for name, sc in per.items():
            row[name] = _with_ci(y, sc, patient[ok], cfg.bootstrap, cfg.seed)
        names = [b for b in per if b != "model"]
        best = max(names, key=lambda b: row[b]["auroc"] if not np.isnan(row[b]["auroc"]) else -1.0)
        row["best_baseline"] = best
        row["auroc_gain_ci"] = list(
            bootstrap_ci(patient[ok], _auroc_gain(y, per["model"], per[best]), cfg.bootstrap, cfg.seed)
        )
        row["enough_events"] = bool(row["positives"] >= MIN_POSITIVES and row["event_patients"] >= MIN_EVENT_PATIENTS)
        heads[head] = row
    any_p, y_any = p[:, 0], test.y[:, 0]
    keys = sensor_configuration(assessed) if test.keys is None else test.keys
    by_config = {}
    for key in sorted(set(keys.tolist())):
        rows = keys == key
        by_config[key] = {
            "windows": int(rows.sum()),
            "positives": int(y_any[rows].sum()),
            "auroc": auroc(y_any[rows], any_p[rows]),
            "ece": ece(y_any[rows], any_p[rows]),
        }
    levels = RiskLevels()
    with_event = set(test.events.column("patient_id").to_pylist())
    quiet = np.asarray([q not in with_event for q in patient.tolist()], dtype=bool)
    t_end = test.targets.column("window_end").cast(pa.int64()).to_numpy()
    h_ms = cfg.horizon_minutes * MINUTE_MS
    high = any_p >= levels.high
    quiet_days = patient_days(test, np.flatnonzero(quiet)) if quiet.any() else 0.0
    quiet_alerts = len(alerts(patient[quiet], t_end[quiet], high[quiet], h_ms))
    calm, calm_days = event_free_days(patient, t_end, test.events, h_ms)
    calm_alerts = len(alerts(patient[calm], t_end[calm], high[calm], h_ms))
    all_alerts = len(alerts(patient, t_end, high, h_ms))
    metrics: dict[str, Any] = {
        "windows": len(test.y),
        "patients": len(set(patient.tolist())),
        "patient_days": test.patient_days,
        "heads": heads,
        "by_configuration": by_config,
        "no_event_patients": {
            "patients": len(set(patient[quiet].tolist())),
            "windows": int(quiet.sum()),
            "high_share": float(high[quiet].mean()) if quiet.any() else float("nan"),
            "alerts_per_patient_day": quiet_alerts / quiet_days if quiet_days else float("nan"),
        },
        "event_free_days": {
            "patient_days": calm_days,
            "windows": int(calm.sum()),
            "high_share": float(high[calm].mean()) if calm.any() else float("nan"),
            "alerts_per_patient_day": calm_alerts / calm_days if calm_days else float("nan"),
        },
        "alerts_per_patient_day": all_alerts / test.patient_days if test.patient_days else float("nan"),
        "calibration": {"ece": ece(y_any, any_p), "bins": calibration_bins(y_any, any_p)},
    }
    metrics["targets"] = real_targets(metrics)
    return metrics


def real_targets(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets on one held-out real cohort; `judged` false where it has too few events."""
    out: dict[str, dict[str, Any]] = {}
    for key, head in (("hypoglycaemia_auroc", "hypoglycaemia"), ("any_auroc", "any")):
        row = m["heads"].get(head)
        if row is None:
            out[key] = {"judged": False, "why": "not assessed in this cohort"}
            continue
        need = row[row["best_baseline"]]["auroc"] + 0.05
        out[key] = {
            "model": row["model"]["auroc"],
            "required": need,
            "best_baseline": row["best_baseline"],
            "met": bool(row["model"]["auroc"] >= need),
            "judged": row["enough_events"],
        }
    quiet = m["no_event_patients"]
    judged = quiet["patients"] > 0
    why = {} if judged else {"why": "no patient without events"}
    out["no_event_high_share"] = _at_most(quiet["high_share"], 0.05, judged) | why
    out["no_event_alerts_per_day"] = _at_most(quiet["alerts_per_patient_day"], 1.0, judged) | why
    calm = m.get("event_free_days")  # absent from checkpoints evaluated before it was measured
    if calm is not None:
        judged = calm["patient_days"] >= MIN_EVENT_FREE_DAYS
        why = {} if judged else {"why": f"under {MIN_EVENT_FREE_DAYS} event-free patient-days"}
        out["event_free_high_share"] = _at_most(calm["high_share"], 0.05, judged) | why
        out["event_free_alerts_per_day"] = _at_most(calm["alerts_per_patient_day"], 1.0, judged) | why
    out["ece"] = _at_most(m["calibration"]["ece"], 0.05, True)
    return out


def _at_most(value: float, limit: float, judged: bool) -> dict[str, Any]:
    """A target that a figure must not exceed."""
    return {"model": value, "required": limit, "met": bool(value <= limit), "judged": judged}
