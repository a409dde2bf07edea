"""How often the next window's observed glucose mean falls inside the shipped checkpoint's 99 % forecast
interval on real recordings, and how wide that interval is (docs/alerts.md, "Alert rate on real
recordings"): the diagnosis behind `predicted_low_glucose` outside real events.

    PYTHONPATH=. python docs/studies/forecast_coverage.py [DATA]

DATA: the folder of cohorts (default ../shared/data). Each cohort: every patient, a 5-day stretch each
(models.cohorts.load_cohort, seed 0), scored as one batch with no earlier context.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from models.cohorts import load_cohort
from models.lstm import load_checkpoint
from models.scorer import Scorer, model_inputs
from pipeline.readings import epoch_ms


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def main(data: Path) -> None:
    scorer = Scorer(load_checkpoint())
    for name, patients in (("t1d_uom", 17), ("ddatshr", 11), ("mimic3_demo", 100)):
        cohort = load_cohort(name, (data,), max_patients=patients, hours=24 * 5, seed=0)
        if cohort is None:
            print(f"{name}: not found under {data}")
            continue
        w = cohort.windows
        scores, _ = scorer.score(model_inputs(w.slice(0, 0)), w)
        ends = epoch_ms(scores.column("window_end"))
        observed = dict(
            zip(
                zip(w.column("patient_id").to_pylist(), epoch_ms(w.column("window_start")).tolist(), strict=True),
                _floats(w, "glucose_mg_dl_mean").tolist(),
                strict=True,
            )
        )
        ids = scores.column("patient_id").to_pylist()
        nxt = np.array([observed.get(k, np.nan) for k in zip(ids, ends.tolist(), strict=True)], dtype=np.float64)
        mu, lo, hi = (_floats(scores, f"glucose_mg_dl_forecast{s}") for s in ("", "_low", "_high"))
        ok = ~np.isnan(nxt) & ~np.isnan(lo)
        inside = float(((nxt[ok] >= lo[ok]) & (nxt[ok] <= hi[ok])).mean()) if ok.any() else float("nan")
        print(
            f"{name}: {int(ok.sum())} windows with a forecast and a next-window glucose; inside the 99 % interval "
            f"{inside:.3f}; median half-width {np.median(mu[ok] - lo[ok]):.1f} mg/dL; median |error| "
            f"{np.median(np.abs(nxt[ok] - mu[ok])):.1f} mg/dL"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "data")
