"""Does the product's risk rank who dies in hospital? The shipped checkpoint on recorded outcomes.

    vitalstream outcomes --real-data DIR [--cohort physionet_challenge2012] [--patients 2000] [--hours 24]

The rules, fixed before any result was looked at:
- **Label**: in-hospital death, from the cohort's `outcomes.csv` (`hospital_discharge_or_death_day`, detail
  "died in hospital" = 1, "discharged alive" = 0). A stay with readings but no such row, or another detail,
  has no label: it is left out and counted (`no_outcome`).
- **Patients**: only those the checkpoint never saw. Training drew up to `real_patients` patients per cohort
  (`models.train.seen_real_patients`, from the checkpoint's own recorded config, with the draw that
  training itself runs: `models.cohorts.draw_patients`); every drawn patient is left out, whether it landed
  in training, validation or test. From the rest, `patients` stays are drawn with a fixed seed.
- **Horizon**: the first `hours` (24) of each stay, counted from its first kept reading. Readings after
  that are dropped before windowing, and only windows that end within it count: the outcome comes later,
  so nothing after the cut-off is used.
- **Scores**: windows from the pipeline's `window_features`, scored as the product scores them
  (`models.scorer.Scorer.score`: the scorer's sensor configurations, calibration and `insufficient_data`
  rule), with no history before the stay. A patient's score is the max and the mean of the overall
  `risk_score` over their windows in the horizon that have one. Baselines on the same windows: partial
  NEWS2 (heart and respiration rate rows, `models.evaluate.news2_partial`), max and mean, and the number
  of those windows (a sicker patient may simply be measured more often).
- **Not assessable**: a patient with no window that has a risk score in the horizon (no readings, or
  `insufficient_data` throughout). Reported (count, share, deaths), not scored, not silently dropped.
- **Figures**: AUROC and AUPRC per score with 95 % patient-bootstrap intervals (`models.evaluate`), and the
  paired AUROC gain of the risk over NEWS2, on the assessable patients; death rate, patients and deaths.
  A cohort is reported only with at least `MIN_DEATHS` deaths among its assessable patients.

Plain functions over Arrow tables and NumPy; reading files and the checkpoint happens in `run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from models.cohorts import cohort_file, cohort_readings
from models.evaluate import _auroc_gain, _with_ci, bootstrap_ci, news2_partial
from models.lstm import Checkpoint
from models.scorer import HISTORY_SCHEMA, Scorer
from models.train import seen_real_patients
from pipeline.features import window_features

HOUR_MS = 3_600_000
OUTCOME_EVENT = "hospital_discharge_or_death_day"
DIED, DISCHARGED = "died in hospital", "discharged alive"
MIN_DEATHS = 10  # a cohort with fewer deaths among its assessable patients is not reported
# Patient-level scores, in the order of the printed table: the product's risk, then the baselines.
SCORES: dict[str, str] = {
    "risk_max": "overall risk, max over the windows",
    "risk_mean": "overall risk, mean over the windows",
    "news2_max": "partial NEWS2 (HR + RR), max",
    "news2_mean": "partial NEWS2 (HR + RR), mean",
    "windows": "number of scored windows",
}
GAINS = (("risk_max", "news2_max"), ("risk_mean", "news2_mean"))


@dataclass(frozen=True)
class OutcomeConfig:
    cohort: str = "physionet_challenge2012"
    patients: int = 2000  # stays drawn from those the checkpoint never saw
    hours: float = 24.0  # the horizon: from each stay's first reading
    seed: int = 0  # which stays are drawn, and the bootstrap
    bootstrap: int = 200  # patient resamples for the intervals
    window_ms: int = 300_000


# --- labels and patients ------------------------------------------------------------------------------------


def in_hospital_death(outcomes: pa.Table, prefix: str = "") -> pa.Table:
    """`outcomes.csv` rows (subject, event, event_time_utc, detail) -> one row per stay with a recorded
    hospital outcome: patient_id (`<prefix>:<subject>`, as models.cohorts names them), died (bool). Other
    events and unrecognised details give no row."""
    detail = pc.utf8_trim_whitespace(outcomes.column("detail").cast(pa.string()))
    known = pc.and_(pc.equal(outcomes.column("event"), OUTCOME_EVENT), pc.is_in(detail, pa.array([DIED, DISCHARGED])))
    known = pc.fill_null(known, False)
    subject = pc.utf8_trim_whitespace(outcomes.column("subject").cast(pa.string())).filter(known)
    pid = pc.binary_join_element_wise(prefix, subject, ":") if prefix else subject
    table = pa.table({"patient_id": pid, "died": pc.equal(detail.filter(known), DIED)})
    duplicated = len(table) - len(pc.unique(table.column("patient_id")))
    if duplicated:
        raise ValueError(f"{duplicated} stay(s) with more than one {OUTCOME_EVENT} row: one outcome per stay")
    return table


def select_patients(
    labels: pa.Table, with_readings: np.ndarray, seen: np.ndarray, count: int, seed: int
) -> tuple[pa.Table, dict[str, int]]:
    """The stays to judge: labelled (`labels`: in_hospital_death), never seen by the checkpoint (`seen`),
    `count` of them drawn with `seed` (all when fewer), sorted by id; and how many were left out and why.
    Stays with readings but no label are counted, not judged; stays with a label but no readings are judged
    (and come out not assessable)."""
    ids = np.asarray(labels.column("patient_id").to_pylist(), dtype=object)
    seen_set, labelled = set(np.asarray(seen).tolist()), set(ids.tolist())
    unseen = np.asarray(sorted(p for p in ids.tolist() if p not in seen_set), dtype=object)
    rng = np.random.default_rng(seed)
    chosen = unseen if len(unseen) <= count else np.sort(rng.choice(unseen, count, replace=False))
    counts = {
        "stays_with_readings": len(set(np.asarray(with_readings).tolist())),
        "stays_with_outcome": len(ids),
        "no_outcome": len(set(np.asarray(with_readings).tolist()) - labelled),
        "seen_by_checkpoint": len(labelled & seen_set),
        "eligible": len(unseen),
        "drawn": len(chosen),
    }
    return labels.filter(pc.is_in(labels.column("patient_id"), pa.array(chosen.tolist(), pa.string()))), counts


# --- the horizon and the patients' scores -------------------------------------------------------------------


def first_reading(readings: pa.Table) -> pa.Table:
    """patient_id, first_ms: each patient's first kept reading (epoch ms), the start of the horizon."""
    t = readings.append_column("t", readings.column("event_time").cast(pa.int64()))
    first = t.group_by("patient_id").aggregate([("t", "min")])
    return first.rename_columns(["patient_id", "first_ms"])


def _horizon_end(table: pa.Table, first: pa.Table, hours: float) -> np.ndarray:
    """Per row of `table`, its patient's first reading + `hours`, in epoch ms (int64)."""
    rows = table.select(["patient_id"]).append_column("row", pa.array(np.arange(len(table))))
    joined = rows.join(first, "patient_id")
    end = np.zeros(len(table), dtype=np.int64)
    end[joined.column("row").to_numpy()] = joined.column("first_ms").to_numpy() + int(hours * HOUR_MS)
    return end


def within_horizon(readings: pa.Table, first: pa.Table, hours: float) -> pa.Table:
    """The readings taken before each patient's first reading + `hours`."""
    t = readings.column("event_time").cast(pa.int64()).to_numpy()
    return readings.filter(pa.array(t < _horizon_end(readings, first, hours)))


def window_scores(ckpt: Checkpoint, windows: pa.Table, threads: int | None = None) -> pa.Table:
    """patient_id, window_end, risk_score (null where `insufficient_data`), news2: each window scored as the
    product scores it (`Scorer.score`, no history before the stay) and by partial NEWS2 on its own readings."""
    scored, _ = Scorer(ckpt, threads=threads).score(HISTORY_SCHEMA.empty_table(), windows)
    return pa.table(
        {
            "patient_id": scored.column("patient_id"),
            "window_end": scored.column("window_end").cast(pa.int64()),
            "risk_score": scored.column("risk_score"),
            "news2": pa.array(news2_partial(windows)),
        }
    )


def patient_scores(windows: pa.Table, first: pa.Table, patients: pa.Table, hours: float) -> pa.Table:
    """Per patient of `patients` (patient_id, died): the SCORES over their windows (`window_scores`) that end
    within `hours` of their first reading and have a risk score, and `assessable` (at least one such
    window); a patient without one gets nulls and `windows` 0."""
    end = windows.column("window_end").cast(pa.int64()).to_numpy()
    keep = (end <= _horizon_end(windows, first, hours)) & pc.is_valid(windows.column("risk_score")).to_numpy(
        zero_copy_only=False
    )
    kept = windows.filter(pa.array(keep))
    agg = kept.group_by("patient_id").aggregate(
        [("risk_score", "max"), ("risk_score", "mean"), ("news2", "max"), ("news2", "mean"), ("risk_score", "count")]
    )
    agg = agg.rename_columns(["patient_id", "risk_max", "risk_mean", "news2_max", "news2_mean", "windows"])
    out = patients.select(["patient_id", "died"]).join(agg, "patient_id", join_type="left outer")
    out = out.sort_by("patient_id")
    n = pc.fill_null(out.column("windows"), 0).cast(pa.int64())
    out = out.set_column(out.column_names.index("windows"), "windows", n)
    return out.append_column("assessable", pc.greater(n, 0))


# --- figures ------------------------------------------------------------------------------------------------


def evaluate_outcomes(scores: pa.Table, reps: int = 200, seed: int = 0) -> dict[str, Any]:
    """AUROC/AUPRC of each score for in-hospital death on the assessable patients (patient-bootstrap 95 %
    intervals), the paired AUROC gain of the risk over NEWS2, and the counts: patients, deaths, death rate,
    and the share not assessable with its deaths."""
    died = np.asarray(scores.column("died").to_numpy(zero_copy_only=False), dtype=bool)
    ok = np.asarray(scores.column("assessable").to_numpy(zero_copy_only=False), dtype=bool)
    patient = np.asarray(scores.column("patient_id").to_pylist(), dtype=object)[ok]
    y = died[ok].astype(np.int64)
    values = {
        name: np.asarray(pc.fill_null(scores.column(name), 0).to_numpy(zero_copy_only=False), np.float64)[ok]
        for name in SCORES
    }
    out: dict[str, Any] = {
        "patients": len(died),
        "deaths": int(died.sum()),
        "death_rate": float(died.mean()) if len(died) else float("nan"),
        "assessable": {"patients": int(ok.sum()), "deaths": int(y.sum()), "death_rate": _rate(y)},
        "not_assessable": {
            "patients": int((~ok).sum()),
            "share": float((~ok).mean()) if len(ok) else float("nan"),
            "deaths": int(died[~ok].sum()),
        },
        "enough_deaths": bool(y.sum() >= MIN_DEATHS),
        "scores": {name: _with_ci(y, s, patient, reps, seed) for name, s in values.items()},
        "gains": {  # paired: the same resampled patients for both scores
            f"{a} - {b}": list(bootstrap_ci(patient, _auroc_gain(y, values[a], values[b]), reps, seed))
            for a, b in GAINS
        },
    }
    return out


def _rate(y: np.ndarray) -> float:
    return float(y.mean()) if len(y) else float("nan")


# --- the run (I/O at the edge) ------------------------------------------------------------------------------


def run(ckpt: Checkpoint, cfg: OutcomeConfig, roots: tuple[Path, ...], threads: int | None = 1) -> dict[str, Any]:
    """Read the cohort and its outcomes, pick the stays, score their first `hours` and judge them."""
    t0 = time.perf_counter()
    readings = cohort_readings(cfg.cohort, roots)
    path = cohort_file(cfg.cohort, roots)
    if readings is None or path is None:
        raise FileNotFoundError(f"cohort {cfg.cohort!r} not found under data/real/ or the --real-data folders")
    outcome_file = path.with_name("outcomes.csv")
    if not outcome_file.exists():
        raise FileNotFoundError(f"{outcome_file}: the cohort has no recorded outcomes")
    with_readings = np.asarray(pc.unique(readings.column("patient_id")).to_pylist(), dtype=object)
    seen = seen_real_patients(ckpt.training.get("config", {}), cfg.cohort, readings)
    if len(with_readings) and set(with_readings.tolist()) <= set(seen.tolist()):
        raise ValueError(f"the checkpoint drew every patient of {cfg.cohort} in training: none is left to judge")
    as_text = {c: pa.string() for c in ("subject", "event", "detail")}
    outcomes = pacsv.read_csv(outcome_file, convert_options=pacsv.ConvertOptions(column_types=as_text))
    labels = in_hospital_death(outcomes, cfg.cohort)
    if len(labels) == 0:
        raise ValueError(f"{outcome_file}: no {OUTCOME_EVENT} rows saying {DIED!r} or {DISCHARGED!r}")
    patients, counts = select_patients(labels, with_readings, seen, cfg.patients, cfg.seed)
    mine = readings.filter(pc.is_in(readings.column("patient_id"), patients.column("patient_id")))
    first = first_reading(mine)
    windows = window_features(within_horizon(mine, first, cfg.hours), cfg.window_ms)
    scores = patient_scores(window_scores(ckpt, windows, threads), first, patients, cfg.hours)
    result = evaluate_outcomes(scores, cfg.bootstrap, cfg.seed)
    result |= {
        "cohort": cfg.cohort,
        "model_version": ckpt.version,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "selection": counts,
        "windows_in_horizon": len(windows),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return result


def summary(result: dict[str, Any]) -> list[str]:
    """The short table `vitalstream outcomes` prints."""
    s, a, na = result["selection"], result["assessable"], result["not_assessable"]
    lines = [
        f"{result['cohort']}: in-hospital death, first {result['config']['hours']:g} h, {result['model_version']}",
        f"stays: {s['stays_with_outcome']} with an outcome, {s['seen_by_checkpoint']} seen by the checkpoint (left "
        f"out), {s['no_outcome']} with readings but no outcome (left out); {s['drawn']} drawn of {s['eligible']}",
        f"patients {result['patients']}, deaths {result['deaths']} ({100 * result['death_rate']:.1f} %); "
        f"not assessable {na['patients']} ({100 * na['share']:.1f} %, {na['deaths']} deaths); judged on "
        f"{a['patients']} ({a['deaths']} deaths)",
        "",
        f"{'score':<40} {'AUROC [95 % CI]':<24} AUPRC [95 % CI]",
    ]
    for name, label in SCORES.items():
        r = result["scores"][name]
        lines.append(f"{label:<40} {_ci(r, 'auroc'):<24} {_ci(r, 'auprc')}")
    for pair, (lo, hi) in result["gains"].items():
        a_name, b_name = pair.split(" - ")
        gain = result["scores"][a_name]["auroc"] - result["scores"][b_name]["auroc"]
        lines.append(f"AUROC gain {pair}: {gain:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired)")
    if not result["enough_deaths"]:
        lines.append(f"fewer than {MIN_DEATHS} deaths among the assessable patients: not a result to report")
    return lines


def _ci(r: dict[str, Any], key: str) -> str:
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"
