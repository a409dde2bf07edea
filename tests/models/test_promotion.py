"""The procedure rule (`models.promotion`): which config changes make a new procedure, how two procedures'
leave-one-dataset-out runs are judged, and the training flow running it end to end on a tiny cohort."""

from __future__ import annotations

import gzip
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.lstm import load_checkpoint
from models.promotion import PROMOTION_TOLERANCE, active_procedure, procedure_changes, procedure_verdict
from models.train import TrainConfig

OWN = TrainConfig().own_stream_heads  # the default procedure's


def test_what_a_run_trains_on_is_not_a_new_procedure_but_how_it_learns_is() -> None:
    shipped = asdict(TrainConfig())
    data_only = asdict(TrainConfig(seed=3, patients=50, epochs=2, real=("a",), real_roots=("/x",), bootstrap=5))
    assert procedure_changes(data_only, shipped) == {}
    changed = asdict(TrainConfig(own_stream_heads=(), hidden=16))
    assert procedure_changes(changed, shipped) == {"own_stream_heads": (list(OWN), []), "hidden": (32, 16)}
    # a checkpoint trained before own_stream_heads was recorded was trained without it
    older = {k: v for k, v in changed.items() if k != "own_stream_heads"}
    assert procedure_changes(changed, older) == {}
    assert procedure_changes(shipped, older)["own_stream_heads"] == ([], list(OWN))


def test_the_shipped_procedure_is_the_candidate_config_with_the_old_values_of_what_changed() -> None:
    candidate = TrainConfig(own_stream_heads=(), real=("a", "b"), seed=4)
    active = active_procedure(candidate, procedure_changes(asdict(candidate), asdict(TrainConfig())))
    assert active == TrainConfig(real=("a", "b"), seed=4)  # same data, the shipped way of learning
    # a field the shipped checkpoint did not record cannot be rebuilt: no comparison rather than a guess
    unrecorded = {k: v for k, v in asdict(TrainConfig()).items() if k != "real_weight"}
    changes = procedure_changes(asdict(TrainConfig()), unrecorded)
    assert changes == {"real_weight": ("<not recorded>", 5.0)} and active_procedure(TrainConfig(), changes) is None


def runs(gains: dict[str, dict[str, list[float]]], enough: bool = True) -> dict[str, Any]:
    """Leave-one-dataset-out runs as `compare_procedures` returns them: per cohort and seed, the active
    procedure at 0.7 on every judged head and the candidate at 0.7 + the given gain."""
    out: dict[str, Any] = {}
    for name, by_head in gains.items():
        for head, per_seed in by_head.items():
            for seed, g in enumerate(per_seed):
                empty = {"candidate": {"heads": {}}, "active": {"heads": {}}}
                row = out.setdefault(name, {}).setdefault(str(seed), empty)
                row["candidate"]["heads"][head] = {"auroc": 0.7 + g, "enough_events": enough}
                row["active"]["heads"][head] = {"auroc": 0.7, "enough_events": enough}
    return out


MET = {"auroc": {"met": True}, "median_lead_minutes": {"met": False}}


def test_a_procedure_is_promoted_on_a_mean_gain_with_no_cohort_losing_beyond_the_tolerance() -> None:
    changes = {"own_stream_heads": ([], list(OWN))}
    better = runs({"a": {"any": [0.04, 0.03], "hypoglycaemia": [0.05, 0.05]}, "b": {"any": [-0.01, 0.0]}})
    ok, reason, gains = procedure_verdict(better, changes, MET, MET)
    assert ok and "mean any-event AUROC gain +0.015" in reason and "own_stream_heads" in reason
    assert np.isclose(gains["a"]["hypoglycaemia"], 0.05) and np.isclose(gains["b"]["any"], -0.005)
    # one cohort's mean over the seeds loses more than the tolerance on a judged head: kept
    loses = runs({"a": {"any": [0.2, 0.2]}, "b": {"any": [0.0, 0.0], "hypoglycaemia": [-0.03, -0.02]}})
    ok, reason, _ = procedure_verdict(loses, changes, MET, MET)
    assert not ok and "worst b hypoglycaemia -0.025" in reason and f"-{PROMOTION_TOLERANCE}" in reason
    # a seed's loss inside a cohort is averaged with its other seeds, not judged alone
    assert procedure_verdict(runs({"a": {"any": [-0.03, 0.03]}, "b": {"any": [0.01, 0.0]}}), changes, MET, MET)[0]
    assert not procedure_verdict(runs({"a": {"any": [0.0, 0.0]}}), changes, MET, MET)[0]  # no gain: kept


def test_a_procedure_is_not_judged_on_heads_without_enough_events_nor_promoted_losing_a_simulated_target() -> None:
    changes = {"hidden": (32, 16)}
    few = runs({"a": {"any": [0.1]}}, enough=False)
    ok, reason, _ = procedure_verdict(few, changes, MET, MET)
    assert not ok and "no held-out cohort had enough events" in reason
    better = runs({"a": {"any": [0.05]}})
    lost = {"auroc": {"met": False}, "median_lead_minutes": {"met": False}}
    ok, reason, _ = procedure_verdict(better, changes, lost, MET)
    assert not ok and "simulated target(s) no longer met: auroc" in reason
    assert procedure_verdict(better, changes, MET, lost)[0]  # a target the shipped one missed too does not count


def write_cohort(root: Path, name: str, subjects: int = 12, hours: int = 4) -> None:
    """A tiny wearable cohort: CGM and a watch's heart rate every 5 minutes, some patients drifting low."""
    rng = np.random.default_rng(0)
    rows = ["subject,ts_utc,stream,value,unit"]
    for s in range(subjects):
        glucose = 140.0
        for m in range(0, hours * 60, 5):
            glucose += rng.normal(-1.5 if s % 3 == 0 else 0.0, 3.0)
            ts = f"2000-01-01T{m // 60:02d}:{m % 60:02d}:00Z"
            rows.append(f"{s},{ts},glucose,{max(glucose, 40):.0f},mg/dL")
            rows.append(f"{s},{ts},heart_rate,{70 + rng.normal(0, 5):.0f},bpm")
    (root / name).mkdir(parents=True)
    with gzip.open(root / name / "readings.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")


def test_the_flow_judges_a_changed_procedure_leave_one_dataset_out(tmp_path: Path) -> None:
    from flows.training import training_flow

    data, out = tmp_path / "data", tmp_path / "ckpt" / "risk.pt"
    write_cohort(data, "wearables")
    kw = {"patients": 30, "hours": 3.0, "epochs": 1, "seed": 5, "out": out, "bootstrap": 5}
    real = {"real": ("wearables",), "real_roots": (str(data),), "procedure_seeds": (0,)}
    assert training_flow.fn(**kw, **real)["promoted"]  # nothing shipped yet
    shipped = load_checkpoint(out).version
    result = training_flow.fn(**kw, **real, procedure={"own_stream_heads": ()})
    procedure = result["metrics"]["promotion"]["procedure"]
    assert procedure["changes"] == {"own_stream_heads": (list(OWN), [])}
    # both procedures trained without the cohort and were scored on all of it, with the same seed
    pair = procedure["runs"]["wearables"]["0"]
    assert set(pair) == {"candidate", "active"} and "any" in pair["candidate"]["heads"]
    assert all(0 <= pair[w]["heads"]["any"]["auroc"] <= 1 for w in pair)
    assert f"procedure changed (own_stream_heads {list(OWN)} -> [])" in result["reason"]
    assert "the checkpoint rule alone" in result["reason"]
    card = (out.parent / f"model_card{'' if result['promoted'] else '.candidate'}.md").read_text()
    assert "| wearables | 0 |" in card
    if not result["promoted"]:
        assert load_checkpoint(out).version == shipped


def test_the_flow_refuses_a_procedure_that_sets_what_it_trains_on(tmp_path: Path) -> None:
    from flows.training import training_flow

    for wrong in ({"seed": 3}, {"hiden": 16}):
        with pytest.raises(ValueError, match=f"procedure: {next(iter(wrong))} not a training-procedure field"):
            training_flow.fn(out=tmp_path / "risk.pt", procedure=wrong)
    assert not (tmp_path / "risk.pt").exists()  # refused before training
