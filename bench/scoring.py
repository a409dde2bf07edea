"""Windows scored per second by each scoring engine (PyTorch, onnxruntime), with the shipped checkpoint.

    python bench/scoring.py [--patients 2000] [--hours 1] [--repeats 3] [--boundary-hours 7]
                            [--checkpoint PATH ...]

1. All windows at once: simulates patients, builds their windows (not timed), then scores all windows with
   `Scorer.score` as the engine does (context gathering, network, calibration, forecasts, anomalies) once
   per engine and repeat; prints the best rate per engine and the largest difference between the engines'
   risk scores.
2. One window boundary, as a live run meets it: the same patients simulated for --boundary-hours; each
   patient's last window is scored with the context the engine keeps of the windows before it (`prune_history`:
   the last L windows, and 6 hours of recent course for a checkpoint that reads it), per checkpoint given
   (default: the shipped one), so a checkpoint that reads the recent course is timed beside one that does not.
A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--boundary-hours", type=float, default=7.0)
    ap.add_argument("--checkpoint", type=Path, action="append", default=[])
    args = ap.parse_args()
    import numpy as np
    import torch

    from models.lstm import load_checkpoint
    from models.scorer import ENGINES, HISTORY_SCHEMA, Scorer
    from pipeline.features import window_features
    from sim.simulate import SimulationConfig, simulate

    sim = simulate(SimulationConfig(patients=args.patients, hours=args.hours, seed=1, start_ms=1_795_305_600_000))
    windows = window_features(sim.readings, 300_000)
    ckpt = load_checkpoint()
    empty = HISTORY_SCHEMA.empty_table()
    print(
        f"{len(windows):,} windows of {args.patients:,} patients; checkpoint {ckpt.version}; "
        f"torch threads {torch.get_num_threads()}"
    )
    risk = {}
    for engine in ENGINES:
        scorer = Scorer(ckpt, engine=engine)
        scorer.score(empty, windows.slice(0, 256))  # warm-up (first calls allocate)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scores, _ = scorer.score(empty, windows)
            best = min(best, time.perf_counter() - t0)
        risk[engine] = scores.column("risk_score").to_numpy(zero_copy_only=False).astype(float)  # null -> NaN
        print(f"  {engine:<6} {len(windows) / best:>12,.0f} windows scored/s   ({best:.2f} s for all)")
    assessed = ~np.isnan(risk["torch"])
    same_nulls = bool(np.array_equal(assessed, ~np.isnan(risk["onnx"])))
    diff = float(np.abs(risk["torch"] - risk["onnx"])[assessed].max()) if assessed.any() else 0.0
    print(
        f"  largest |torch - onnx| risk_score difference: {diff:.2e} over {int(assessed.sum()):,} scored windows; "
        f"the same {int((~assessed).sum()):,} insufficient_data windows: {same_nulls}"
    )
    boundary(args)


def boundary(args: argparse.Namespace) -> None:
    """Each patient's last window scored with the context the engine keeps (the hot path of a live run)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from models.lstm import load_checkpoint
    from models.scorer import COURSE_SCHEMA, Scorer, course_rows, model_inputs, prune_history
    from pipeline.features import window_features
    from sim.simulate import SimulationConfig, simulate

    hours = args.boundary_hours
    sim = simulate(SimulationConfig(patients=args.patients, hours=hours, seed=1, start_ms=1_795_305_600_000))
    windows = window_features(sim.readings, 300_000)
    latest = windows.group_by("patient_id").aggregate([("window_start", "max")])
    start = windows.join(latest, "patient_id").sort_by([("patient_id", "ascending"), ("window_start", "ascending")])
    last = pc.equal(start.column("window_start"), start.column("window_start_max"))
    start = start.drop_columns(["window_start_max"])
    closed, before = start.filter(last), start.filter(pc.invert(last))
    print(f"one window boundary: {len(closed):,} patients' last window after {hours:g} h of windows")
    for path in args.checkpoint or [None]:
        ckpt = load_checkpoint(path) if path is not None else load_checkpoint()
        scorer = Scorer(ckpt)
        t0 = time.perf_counter()
        history = prune_history(model_inputs(before), 300_000, scorer.length)
        kept_course = prune_history(course_rows(before), 300_000, scorer.course_windows, schema=COURSE_SCHEMA)
        course = pa.concat_tables([kept_course, course_rows(closed)])  # as the engine hands it over
        kept = time.perf_counter() - t0
        scorer.score(history, closed.slice(0, 256), course)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scorer.score(history, closed, course)
            best = min(best, time.perf_counter() - t0)
        print(
            f"  {ckpt.version} ({len(ckpt.feature_names)} inputs): context kept {len(history):,} windows and "
            f"{len(kept_course):,} of course ({(history.nbytes + kept_course.nbytes) / 2**20:,.1f} MiB; built in "
            f"{kept:.2f} s); {len(closed) / best:>10,.0f} windows scored/s ({best:.2f} s for the boundary)"
        )


if __name__ == "__main__":
    main()
