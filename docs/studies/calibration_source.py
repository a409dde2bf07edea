"""Which validation windows should the isotonic maps be fitted on? (docs/model.md, "Calibration on real windows
only: tried, not adopted"). One leave-one-dataset-out fold per call, as `vitalstream lodo` trains it (300
simulated patients, 12 epochs), then the same trained network calibrated three ways:

- `shipped`: `models.train.calibrate` (condition maps and the overall map on every validation window; a sensor
  configuration's map on its real windows where they are enough, else on all of its windows);
- `A`: the condition maps on real validation windows where they are enough
  (`models.train.enough_to_calibrate`, the rule the configuration maps use), else on all;
- `B`: A, and the overall map too; a configuration without enough real windows gets no map of its own (the
  overall map applies) instead of one fitted on simulated windows.

    PYTHONPATH=. python docs/studies/calibration_source.py HOLDOUT [SEED]

Prints, per variant, as JSON: the held-out cohort's any-event and hypoglycaemia AUROC, ECE, the top three
calibration bins, `high` alerts per patient-day on event-free days and overall; on the simulated test patients
the any-event AUROC, ECE, sensitivity and median lead at one alert per patient-day; and which windows each map
was fitted on. Environment: DATA (folder of cohorts, default ../shared/data). About 4 minutes per call on the
2-core development machine.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import replace
from typing import Any

import numpy as np

from models import evaluate as ev
from models.lstm import Checkpoint
from models.train import LODO_EPOCHS, LODO_PATIENTS, TrainConfig, enough_to_calibrate, train
from pipeline.model_contract import CONDITIONS, HEADS

COHORTS = ("t1d_uom", "ddatshr", "mimic3_demo", "physionet_challenge2012")


def calibrate(ckpt: Checkpoint, val: ev.Split, variant: str) -> dict[str, str]:
    """`models.train.calibrate` for the overall risk from the conditions, with the windows each map is fitted
    on chosen by `variant` (A or B); returns which (real or all) per map."""
    logits, _ = ev.network_outputs(ckpt, val.x)
    raw = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert val.assessed is not None and val.source is not None and val.keys is not None
    real = val.source != "sim"
    who = np.asarray(val.targets.column("patient_id").to_pylist(), dtype=object)
    ckpt.isotonic, ckpt.isotonic_by_config, ckpt.any_source = [{} for _ in HEADS], {}, "conditions"
    on: dict[str, str] = {}
    for j, c in enumerate(CONDITIONS):
        i, rows = HEADS.index(c), val.assessed[:, j]
        pick = rows & real if enough_to_calibrate(val.y[:, i], who, rows & real) else rows
        on[c] = "real" if pick is not rows else "all"
        ckpt.isotonic[i] = ev.fit_isotonic(raw[pick, i], val.y[pick, i]) if pick.any() else {}
    y = val.y[:, HEADS.index("any")]
    combined = ckpt.probabilities(logits, val.assessed, val.keys)[:, HEADS.index("any")]
    ok = ~np.isnan(combined)
    pick = ok & real if variant == "B" and enough_to_calibrate(y, who, ok & real) else ok
    on["overall"] = "real" if pick is not ok else "all"
    ckpt.isotonic[HEADS.index("any")] = ev.fit_isotonic(combined[pick], y[pick])
    for key in sorted(set(val.keys[ok].tolist())):
        rows = (val.keys == key) & ok
        for name, sel in (("real", rows & real), ("all", rows)):
            if name == "all" and variant == "B":
                break
            if enough_to_calibrate(y, who, sel):
                ckpt.isotonic_by_config[key] = ev.fit_isotonic(combined[sel], y[sel])
                on[key] = name
                break
    return on


def summary(ckpt: Checkpoint, splits: dict[str, ev.Split], holdout: str, cfg: TrainConfig) -> dict[str, Any]:
    test = splits["test"]
    assert test.source is not None
    rows = np.flatnonzero(test.source == holdout)
    r = ev.evaluate_real(ckpt, test.subset(rows, ev.patient_days(test, rows)), splits["train"], cfg)
    rows = np.flatnonzero(test.source == "sim")
    s = ev.evaluate_one(ckpt, test.subset(rows, ev.patient_days(test, rows)), splits["train"], cfg)
    hypo = r["heads"].get("hypoglycaemia", {}).get("model", {}).get("auroc", float("nan"))
    return {
        "any": round(r["heads"]["any"]["model"]["auroc"], 4),
        "hypoglycaemia": round(hypo, 4),
        "ece": round(r["calibration"]["ece"], 4),
        "top_bins": [[round(b[0], 2), round(b[1], 2), b[2]] for b in r["calibration"]["bins"][-3:]],
        "event_free_alerts_per_day": round(r["event_free_days"]["alerts_per_patient_day"], 3),
        "alerts_per_day": round(r["alerts_per_patient_day"], 3),
        "sim_any": round(s["heads"]["any"]["model"]["auroc"], 4),
        "sim_ece": round(s["calibration"]["ece"], 4),
        "sim_sensitivity": round(s["alerts"]["model"]["sensitivity"], 3),
        "sim_lead_minutes": round(s["alerts"]["model"]["median_lead_minutes"], 1),
    }


def main() -> None:
    holdout, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    data = os.environ.get("DATA", "../shared/data")
    cfg = TrainConfig(patients=LODO_PATIENTS, epochs=LODO_EPOCHS, seed=seed, bootstrap=10, real_roots=(data,))
    others = tuple(c for c in COHORTS if c != holdout)
    ckpt, splits = train(replace(cfg, real=others, holdout=holdout), lambda *a: None)
    print(json.dumps({"variant": "shipped", **summary(ckpt, splits, holdout, cfg)}))
    for variant in ("A", "B"):
        other = copy.deepcopy(ckpt)
        on = calibrate(other, splits["val"], variant)
        print(json.dumps({"variant": variant, **summary(other, splits, holdout, cfg), "fitted_on": on}))


if __name__ == "__main__":
    main()
