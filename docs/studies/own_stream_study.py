"""The study behind `own_stream_heads` (docs/model.md, "Judged from their own stream"): one leave-one-dataset-out
fold per call, as `vitalstream lodo` trains it (300 simulated patients, 12 epochs), so that folds run side by
side, one CPU thread each.

    PYTHONPATH=. python docs/studies/own_stream_study.py VARIANT SEED HOLDOUT [OUT_DIR]

VARIANT `own` trains and judges the glucose conditions from their own stream alone (the procedure of
`lstm-20261126-61239ebc`), `full` from every stream (the procedure before), `vitals` the cardiac and respiratory
conditions too; `recent` is `own` with the patient's recent course as inputs (`TrainConfig.recent_history`).
Prints, as JSON, the held-out cohort's AUROC per head, the best baseline per head, ECE, and for a cohort with a
wrist heart rate (t1d_uom) the hypoglycaemia AUROC per sensor configuration with the same trained network's
heart-rate inputs made absent (`models.lstm.absent_inputs`, how a stream the patient does not wear reads):
the diagnosis that led to the option. Environment: DATA (folder of cohorts, default
../shared/data). Each call takes 60-90 s on one core of the 2-core development machine.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.evaluate import auroc, network_outputs, real_baselines
from models.lstm import absent_inputs
from models.train import TrainConfig, train
from pipeline.model_contract import HEADS, MODEL_FEATURES

COHORTS = ("t1d_uom", "ddatshr", "mimic3_demo", "physionet_challenge2012")
GLUCOSE = ("hypoglycaemia", "hyperglycaemia")
# (own_stream_heads, recent_history)
VARIANTS = {
    "full": ((), False),
    "own": (GLUCOSE, False),
    "vitals": ((*GLUCOSE, "cardiac", "respiratory"), False),
    "recent": (GLUCOSE, True),
}


def main(variant: str, seed: int, hold: str) -> dict:
    data = os.environ.get("DATA", str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    t0 = time.time()
    cfg = TrainConfig(
        patients=300, epochs=12, seed=seed, bootstrap=30, real_roots=(data,),
        real=tuple(c for c in COHORTS if c != hold), holdout=hold,
        own_stream_heads=VARIANTS[variant][0], recent_history=VARIANTS[variant][1],
    )  # fmt: skip
    ckpt, splits = train(cfg, lambda *a: None)
    m = ckpt.metrics["real"][hold]
    heads = m["heads"].items()
    out: dict = {
        "variant": variant,
        "seed": seed,
        "holdout": hold,
        "auroc": {h: round(r["model"]["auroc"], 4) for h, r in m["heads"].items()},
        "best_baseline": {h: [r["best_baseline"], round(r[r["best_baseline"]]["auroc"], 4)] for h, r in heads},
        "ece": round(m["calibration"]["ece"], 4),
    }
    test = splits["test"]
    sub = test.subset(np.flatnonzero(test.source == hold), 1.0)
    hr = [i for i, f in enumerate(MODEL_FEATURES[: sub.x.shape[2]]) if f.startswith("heart_rate")]
    hi = HEADS.index("hypoglycaemia")
    if sub.keys is not None and any("heart_rate" in k and "glucose" in k for k in sub.keys.tolist()):
        logits, _ = network_outputs(ckpt, sub.x)
        absent = sub.x.copy()
        absent[:, :, hr] = absent_inputs(np.asarray(ckpt.center), np.asarray(ckpt.scale))[hr]
        without, _ = network_outputs(ckpt, absent)
        trend = real_baselines(sub, ckpt.config.window_count)["trend"][:, hi]
        rows = {}
        for key in ["all", *sorted(set(sub.keys.tolist()))]:
            ok = np.ones(len(sub.y), bool) if key == "all" else sub.keys == key
            ok &= sub.assessed[:, hi] if sub.assessed is not None else True
            y = sub.y[ok, hi]
            if y.sum() >= 5:
                rows[key] = {
                    "positives": int(y.sum()),
                    "network": round(auroc(y, logits[ok, hi]), 3),
                    "network, heart rate absent": round(auroc(y, without[ok, hi]), 3),
                    "trend": round(auroc(y, np.nan_to_num(trend[ok], nan=-1e9)), 3),
                }
        out["hypoglycaemia_by_configuration"] = rows
    out["seconds"] = round(time.time() - t0, 1)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    print(json.dumps(result))
    if len(sys.argv) > 4:
        Path(sys.argv[4], f"{sys.argv[1]}_s{sys.argv[2]}_{sys.argv[3]}.json").write_text(json.dumps(result, indent=1))
