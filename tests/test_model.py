"""The risk model: labels, training on a small simulation, safe loading, and the shipped checkpoint."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import T0

from models.labels import window_labels
from models.lstm import DEFAULT_CHECKPOINT, HEADS, load_checkpoint
from models.train import TrainConfig, auroc, clinical_score, train
from pipeline.score import MODEL_FEATURES

MIN = 60_000


def _windows(patient: list[str], end_minutes: list[int]) -> pa.Table:
    return pa.table(
        {
            "patient_id": patient,
            "window_end": pa.array([T0 + m * MIN for m in end_minutes], pa.int64()).cast(pa.timestamp("ms", "UTC")),
        }
    )


def _events(rows: list[tuple[str, str, int, int]]) -> pa.Table:
    return pa.table(
        {
            "patient_id": [r[0] for r in rows],
            "condition": [r[1] for r in rows],
            "onset": pa.array([T0 + r[2] * MIN for r in rows], pa.int64()).cast(pa.timestamp("ms", "UTC")),
            "end": pa.array([T0 + r[3] * MIN for r in rows], pa.int64()).cast(pa.timestamp("ms", "UTC")),
        }
    )


def test_labels_look_ahead_by_the_horizon_and_mark_ongoing_windows() -> None:
    windows = _windows(["A", "A", "A", "A", "B"], [0, 30, 65, 100, 30])
    events = _events([("A", "cardiac", 60, 90)])
    labels, ongoing = window_labels(windows, events, horizon_minutes=60)
    any_, cardiac, hypo = HEADS.index("any"), HEADS.index("cardiac"), HEADS.index("hypoglycaemia")
    # onset at 60 min: the windows ending at 0 (onset exactly at the horizon) and 30 min predict it
    assert labels[:, any_].tolist() == [1, 1, 0, 0, 0]
    assert labels[:, cardiac].tolist() == [1, 1, 0, 0, 0]
    assert labels[:, hypo].sum() == 0
    assert ongoing.tolist() == [False, False, True, False, False]  # 65 lies inside (60, 90]; B never


def test_labels_without_events_are_all_negative() -> None:
    labels, ongoing = window_labels(_windows(["A"], [0]), _events([]).slice(0, 0))
    assert labels.sum() == 0 and not ongoing.any()


def test_auroc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200), 1)  # ties count one half
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auroc(y.astype(float), s) == pytest.approx(pairwise)


def test_clinical_baseline_scores_news2_and_cgm_thresholds() -> None:
    t = pa.table(
        {
            "heart_rate_bpm_last": [70.0, 135.0, None],
            "respiration_rate_per_min_last": [16.0, 26.0, None],
            "glucose_mg_dl_last": [110.0, None, 50.0],
        }
    )
    assert clinical_score(t).tolist() == [0.0, 6.0, 6.0]


def test_a_small_training_run_learns_and_round_trips(tmp_path: Path) -> None:
    cfg = TrainConfig(patients=60, hours=4.0, epochs=3, hidden=16, layers=1, window_count=6, seed=3)
    ckpt, metrics = train(cfg, log=lambda _: None)
    assert metrics["test_windows"] > 0 and set(HEADS) <= set(metrics)
    assert ckpt.feature_names == list(MODEL_FEATURES) and len(ckpt.temperature) == len(HEADS)
    path = tmp_path / "m.pt"
    ckpt.save(path)
    loaded = load_checkpoint(path)
    assert loaded.version == ckpt.version and loaded.config == ckpt.config
    x = np.zeros((2, cfg.window_count, len(MODEL_FEATURES)), np.float32)
    import torch

    with torch.no_grad():
        a = ckpt.model()(torch.from_numpy(x)).numpy()
        b = loaded.model()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(a, b)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"config": Payload()}))
    with pytest.raises(ValueError, match="not a valid VitalStream checkpoint"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "junk.pt")


def test_the_shipped_checkpoint_is_trained_and_beats_the_clinical_rules() -> None:
    ckpt = load_checkpoint(DEFAULT_CHECKPOINT)
    assert ckpt.version.startswith("lstm-") and ckpt.feature_names == list(MODEL_FEATURES)
    m = ckpt.metrics
    assert m["test_windows"] > 1000
    # held-out patients; the full evaluation (alert budgets, intervals) is issue #3
    assert m["any"]["auroc"] > m["any"]["baseline_auroc"]
    for condition in HEADS[1:]:
        assert m[condition]["auroc"] > 0.5, condition
