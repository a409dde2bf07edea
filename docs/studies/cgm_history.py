"""Does a day of the patient's own CGM history add to the last hour for hypoglycaemia within 60 minutes?
(docs/model.md, "How far CGM alone goes"). Exploratory, cross-cohort: a logistic regression trained on one
type-1 cohort and tested on the other (t1d_uom <-> ddatshr), on the cohorts' own windows and threshold events
(`models.cohorts.load_cohort`, `models.labels.window_labels`; windows during an event left out, and windows
without a glucose reading in the last 30 minutes or with under an hour of record).

- last hour: the carried-forward glucose, its slopes over 15, 30 (least squares) and 60 minutes, the 30-minute
  extrapolation, log glucose, LBGI and the minimum over the hour;
- + day: also the share of the last 24 hours' readings below 70 mg/dL, their minimum, mean and standard
  deviation, hours since the last reading below 70 (24 if none) and the share of the day recorded.

    PYTHONPATH=. python docs/studies/cgm_history.py

Prints the test cohort's AUROC for the 30-minute trend extrapolation (the issue's best baseline) and both
regressions. Environment: DATA (folder of cohorts, default ../shared/data). About 12 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.cohorts import load_cohort
from models.evaluate import auroc, fit_logistic, predict_logistic
from models.labels import window_labels
from pipeline.clinical import GLUCOSE_LOW
from pipeline.model_contract import HEADS

W = 300_000  # window, ms
HOUR, DAY = 12, 288  # windows


def _back(grid: np.ndarray, latest: np.ndarray, i: int, k: int) -> float:
    """The value carried forward k windows before window i, if read within the hour before i."""
    j = latest[i - k]
    return float(grid[j]) if j >= 0 and i - j <= HOUR else float("nan")


def features(name: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    cohort = load_cohort(name, (root,), 200, 240.0, 0, W)
    assert cohort is not None, f"{name} not found under {root}"
    w = cohort.windows
    labels, ongoing = window_labels(w, cohort.events, 60)
    hypo = labels[:, HEADS.index("hypoglycaemia")]
    pid = np.asarray(pc.dictionary_encode(w.column("patient_id")).combine_chunks().indices)
    t = w.column("window_start").cast(pa.int64()).to_numpy() // W
    g = w.column("glucose_mg_dl_mean").to_numpy(zero_copy_only=False).astype(float)
    xs, ys = [], []
    for p in np.unique(pid):
        m = np.flatnonzero(pid == p)
        t0, n = t[m].min(), t[m].max() - t[m].min() + 1
        grid, lab, skip = np.full(n, np.nan), np.zeros(n), np.ones(n, bool)
        grid[t[m] - t0], lab[t[m] - t0], skip[t[m] - t0] = g[m], hypo[m], ongoing[m]
        latest = np.maximum.accumulate(np.where(~np.isnan(grid), np.arange(n), -1))  # last window with glucose
        for i in range(HOUR, n):
            if skip[i] or latest[i] < 0 or i - latest[i] > 6:
                continue
            last = grid[latest[i]]
            hour = grid[i - HOUR + 1 : i + 1]
            hour = hour[~np.isnan(hour)]
            recent = grid[i - 5 : i + 1]
            at = np.flatnonzero(~np.isnan(recent))
            s30 = np.polyfit(at * 5.0, recent[at], 1)[0] if len(at) >= 2 else 0.0
            v15, v60 = _back(grid, latest, i, 3), _back(grid, latest, i, HOUR)
            s15 = (last - v15) / 15 if not np.isnan(v15) else s30
            s60 = (last - v60) / 60 if not np.isnan(v60) else s30
            f = np.log(np.maximum(hour, 20)) ** 1.084 - 5.381
            lbgi = float(np.mean(10 * np.minimum(1.509 * f, 0) ** 2))
            day = grid[max(0, i - DAY + 1) : i + 1]
            seen = day[~np.isnan(day)]
            low = np.flatnonzero(day < GLUCOSE_LOW)
            since = (len(day) - 1 - low[-1]) / HOUR if len(low) else 24.0
            last_hour = [last, s15, s30, s60, last + 30 * s30, np.log(last), lbgi, hour.min()]
            whole_day = [np.mean(seen < GLUCOSE_LOW), seen.min(), seen.mean(), seen.std(), since, len(day) / DAY]
            xs.append(last_hour + whole_day)
            ys.append(lab[i])
    return np.asarray(xs), np.asarray(ys)


def main() -> None:
    root = Path(os.environ.get("DATA", "../shared/data"))
    data = {name: features(name, root) for name in ("t1d_uom", "ddatshr")}
    for train_on, test_on in (("ddatshr", "t1d_uom"), ("t1d_uom", "ddatshr")):
        (x_tr, y_tr), (x_te, y_te) = data[train_on], data[test_on]
        mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-9
        out = {"30-min trend": auroc(y_te, -x_te[:, 4])}
        for label, cols in (("last hour", slice(0, 8)), ("last hour + day", slice(0, 14))):
            w = fit_logistic(((x_tr - mu) / sd)[:, cols], y_tr)
            out[label] = auroc(y_te, predict_logistic(w, ((x_te - mu) / sd)[:, cols]))
        scores = ", ".join(f"{k} {v:.3f}" for k, v in out.items())
        print(f"{train_on} -> {test_on} ({len(y_te)} windows, {int(y_te.sum())} positive): {scores}")


if __name__ == "__main__":
    main()
