"""The seed study in docs/model.md ("judged over eight seeds"): one training or one leave-one-dataset-out fold
per call, so that many can run side by side, one CPU thread each.

    PYTHONPATH=. python docs/studies/seed_study.py TAG SEED MODE OUT_DIR

MODE is `full` (the shipped configuration: 600 simulated patients, every cohort) or the name of the cohort to
hold out (as `vitalstream lodo`: 300 simulated patients, 12 epochs). TAG names the simulator under test (put
its tree first on PYTHONPATH). Environment: DATA (folder of cohorts, default ../shared/data), THREADS (1),
BOOT (bootstrap resamples, 30). Writes OUT_DIR/TAG_sSEED_MODE.json. The study ran 8 seeds x 2 simulators x
(1 full + 4 folds) = 80 runs in about 10 minutes on 16 cores; each run takes 1-3 minutes on one core.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.promotion import figures
from models.train import TrainConfig, train

COHORTS = ("t1d_uom", "ddatshr", "mimic3_demo", "physionet_challenge2012")


def _clean(o: Any) -> Any:
    if isinstance(o, float):
        return None if math.isnan(o) else round(o, 4)
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def _targets(t: dict[str, Any]) -> dict[str, Any]:
    keep = ("model", "required", "best_baseline", "met")
    return {k: {f: v.get(f) for f in keep} for k, v in t.items()}


def main(tag: str, seed: int, mode: str, out: Path) -> dict[str, Any]:
    data = os.environ.get("DATA", str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    boot = int(os.environ.get("BOOT", "30"))
    t0 = time.time()
    res: dict[str, Any] = {"tag": tag, "seed": seed, "mode": mode}
    if mode == "full":
        ckpt, splits = train(TrainConfig(seed=seed, bootstrap=boot, real=COHORTS, real_roots=(data,)), lambda *a: None)
        res["val_loss"] = min(h["val_loss"] for h in ckpt.training["history"])
        res["figures"] = figures(ckpt, splits["test"])  # real test windows: the same for every seed
        res["sim_heads"] = {h: v["model"]["auroc"] for h, v in ckpt.metrics["heads"].items()}
        res["sim_targets"] = _targets(ckpt.metrics["targets"])
        res["real"] = {c: _targets(r["targets"]) for c, r in ckpt.metrics["real"].items()}
    else:
        cfg = TrainConfig(
            patients=300, epochs=12, seed=seed, bootstrap=boot, real_roots=(data,),
            real=tuple(c for c in COHORTS if c != mode), holdout=mode,
        )  # fmt: skip
        ckpt, _ = train(cfg, lambda *a: None)
        res["targets"] = _targets(ckpt.metrics["real"][mode]["targets"])
    res["seconds"] = round(time.time() - t0, 1)
    (out / f"{tag}_s{seed}_{mode}.json").write_text(json.dumps(_clean(res), default=str, indent=1))
    return res


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    print(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))["seconds"])
