"""The outcome evaluation: in-hospital death labels, the checkpoint's own patients left out, the horizon
cut-off, per-patient aggregation and the figures, on small plain tables (and one tiny run end to end)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cli.main import main
from models.card import _read_outcomes, outcome_section
from models.cohorts import cohort_readings, load_cohort, tidy_readings
from models.outcomes import (
    HOUR_MS,
    evaluate_outcomes,
    first_reading,
    in_hospital_death,
    patient_scores,
    select_patients,
    within_horizon,
)
from models.train import seen_real_patients
from sim.replay import read_tidy

T0 = 946_684_800_000  # 2000-01-01T00:00Z, where the Challenge anchors every stay


def outcomes_table(rows: list[tuple[str, str, str]]) -> pa.Table:
    subject, event, detail = (list(c) for c in zip(*rows, strict=True))
    return pa.table({"subject": subject, "event": event, "event_time_utc": [""] * len(rows), "detail": detail})


def write_cohort(root: Path, name: str, subjects: int, hours: int, died: set[int]) -> Path:
    """A tidy ICU cohort: hourly heart and respiration rate for `hours` hours; the patients in `died` have a
    fast heart rate and die in hospital; the last subject has readings but no outcome row."""
    folder = root / name
    folder.mkdir(parents=True)
    rows, outcome = ["subject,ts_utc,stream,value,unit"], ["subject,event,event_time_utc,detail"]
    for s in range(subjects):
        for h in range(hours):
            ts = f"2000-01-{1 + h // 24:02d}T{h % 24:02d}:{(7 * s) % 60:02d}:00Z"
            rows.append(f"{s},{ts},heart_rate,{135 if s in died else 80},bpm")
            rows.append(f"{s},{ts},respiration,{26 if s in died else 16},breaths/min")
        if s < subjects - 1:
            outcome.append(f"{s},icu_admission,2000-01-01T00:00:00Z,Medical ICU")
            what = "died in hospital" if s in died else "discharged alive"
            outcome.append(f"{s},hospital_discharge_or_death_day,2000-01-05T00:00:00Z,{what}")
    with gzip.open(folder / "readings.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    (folder / "outcomes.csv").write_text("\n".join(outcome) + "\n")
    return folder


# --- labels -------------------------------------------------------------------------------------------------


def test_in_hospital_death_reads_died_and_discharged_and_leaves_out_the_rest() -> None:
    table = outcomes_table(
        [
            ("1", "icu_admission", "Medical ICU"),
            ("1", "hospital_discharge_or_death_day", "died in hospital"),
            ("2", "hospital_discharge_or_death_day", "discharged alive"),
            ("2", "death_day", "after discharge"),  # death after discharge: not an in-hospital death
            ("3", "icu_admission", "Surgical ICU"),  # no outcome row: no label
            ("4", "hospital_discharge_or_death_day", "unknown"),  # unrecognised: no label
        ]
    )
    labels = in_hospital_death(table, prefix="c")
    assert labels.to_pylist() == [{"patient_id": "c:1", "died": True}, {"patient_id": "c:2", "died": False}]


def test_two_outcomes_for_one_stay_are_refused() -> None:
    table = outcomes_table(
        [
            ("1", "hospital_discharge_or_death_day", "died in hospital"),
            ("1", "hospital_discharge_or_death_day", "discharged alive"),
        ]
    )
    with pytest.raises(ValueError, match="one outcome per stay"):
        in_hospital_death(table)


def test_stays_without_an_outcome_are_counted_not_judged() -> None:
    labels = pa.table({"patient_id": ["a", "b", "c"], "died": [True, False, False]})
    chosen, counts = select_patients(labels, np.asarray(["a", "b", "x", "y"]), np.asarray([], object), 10, 0)
    assert chosen.column("patient_id").to_pylist() == ["a", "b", "c"]  # "c": labelled, no readings: judged
    assert counts["no_outcome"] == 2 and counts["stays_with_outcome"] == 3 and counts["drawn"] == 3


# --- the checkpoint's own patients --------------------------------------------------------------------------


def test_every_patient_the_training_draw_took_is_left_out(tmp_path: Path) -> None:
    write_cohort(tmp_path, "icu", subjects=30, hours=3, died={1, 2})
    config = {"real": ("icu",), "holdout": "", "real_patients": 12, "split_seed": 5}
    readings = cohort_readings("icu", (tmp_path,))
    assert readings is not None
    seen = seen_real_patients(config, "icu", readings)
    # the patients training itself loads with this config (train.build_data -> load_cohort), all of them
    trained = load_cohort("icu", (tmp_path,), 12, 240.0, 5)
    assert trained is not None
    assert set(seen.tolist()) == set(trained.readings.column("patient_id").to_pylist())
    assert len(seen) == 12
    labels = in_hospital_death(
        pa.table({c: pa.array(v, pa.string()) for c, v in _csv(tmp_path / "icu" / "outcomes.csv").items()}), "icu"
    )
    with_readings = np.asarray(pc.unique(readings.column("patient_id")).to_pylist(), object)
    chosen, counts = select_patients(labels, with_readings, seen, 1000, 0)
    assert not set(chosen.column("patient_id").to_pylist()) & set(seen.tolist())
    assert counts["seen_by_checkpoint"] + counts["eligible"] == counts["stays_with_outcome"] == 29
    # a cohort the checkpoint did not load: nobody was seen
    assert len(seen_real_patients(config | {"real": ("other",)}, "icu", readings)) == 0


def test_a_checkpoint_that_does_not_record_its_draw_is_refused() -> None:
    with pytest.raises(ValueError, match="split_seed"):
        seen_real_patients({"real": ("icu",), "real_patients": 5}, "icu", pa.table({"patient_id": ["a"]}))


def _csv(path: Path) -> dict[str, list[str]]:
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    cols: dict[str, list[str]] = {h: [] for h in head}
    for line in lines[1:]:
        for h, v in zip(head, line.split(","), strict=True):
            cols[h].append(v)
    return cols


# --- the horizon --------------------------------------------------------------------------------------------


def test_readings_after_the_horizon_are_dropped(tmp_path: Path) -> None:
    write_cohort(tmp_path, "icu", subjects=2, hours=30, died=set())
    readings = tidy_readings(read_tidy(tmp_path / "icu" / "readings.csv.gz"))
    first = first_reading(readings)
    kept = within_horizon(readings, first, 24)
    t = kept.column("event_time").cast(pa.int64()).to_numpy()
    start = dict(zip(first.column("patient_id").to_pylist(), first.column("first_ms").to_pylist(), strict=True))
    limit = np.asarray([start[p] + 24 * HOUR_MS for p in kept.column("patient_id").to_pylist()])
    assert (t < limit).all()
    assert len(kept) == 2 * 24 * 2  # 24 hourly readings of two streams, two patients


def windows(rows: list[tuple[str, float, float | None, float]]) -> pa.Table:
    """Scored windows: (patient, hours after T0 the window ends, risk or None, NEWS2)."""
    return pa.table(
        {
            "patient_id": [r[0] for r in rows],
            "window_end": pa.array([T0 + int(r[1] * HOUR_MS) for r in rows], pa.int64()),
            "risk_score": pa.array([r[2] for r in rows], pa.float64()),
            "news2": [r[3] for r in rows],
        }
    )


FIRST = pa.table({"patient_id": ["a", "b", "c"], "first_ms": [T0, T0 + 2 * HOUR_MS, T0]})
PATIENTS = pa.table({"patient_id": ["a", "b", "c", "d"], "died": [True, False, False, True]})


def test_a_window_ending_after_the_horizon_does_not_count() -> None:
    scored = windows(
        [
            ("a", 1.0, 0.1, 0.0),
            ("a", 24.0, 0.3, 2.0),  # ends exactly at the horizon: counts
            ("a", 24.1, 0.9, 6.0),  # ends after it: does not
            ("b", 25.0, 0.2, 1.0),  # b's stay began 2 h later: 23 h in, counts
            ("b", 26.5, 0.8, 5.0),  # 24.5 h in: does not
        ]
    )
    out = {r["patient_id"]: r for r in patient_scores(scored, FIRST, PATIENTS, 24).to_pylist()}
    assert out["a"]["risk_max"] == pytest.approx(0.3) and out["a"]["news2_max"] == 2.0
    assert out["a"]["risk_mean"] == pytest.approx(0.2) and out["a"]["windows"] == 2
    assert out["b"]["risk_max"] == pytest.approx(0.2) and out["b"]["windows"] == 1


def test_patient_scores_aggregate_only_windows_with_a_risk_and_keep_the_rest_as_not_assessable() -> None:
    scored = windows(
        [
            ("a", 1.0, 0.2, 1.0),
            ("a", 2.0, None, 6.0),  # insufficient_data: neither the risk nor NEWS2 of it counts
            ("a", 3.0, 0.4, 3.0),
            ("c", 1.0, None, 2.0),  # c has windows, none with a risk
        ]
    )
    out = {r["patient_id"]: r for r in patient_scores(scored, FIRST, PATIENTS, 24).to_pylist()}
    assert out["a"] == {
        "patient_id": "a",
        "died": True,
        "risk_max": pytest.approx(0.4),
        "risk_mean": pytest.approx(0.3),
        "news2_max": 3.0,
        "news2_mean": 2.0,
        "windows": 2,
        "assessable": True,
    }
    for p in ("b", "c", "d"):  # b: nothing in the horizon; d: no readings at all
        assert out[p]["assessable"] is False and out[p]["windows"] == 0 and out[p]["risk_max"] is None
    assert list(out) == ["a", "b", "c", "d"]


# --- the figures --------------------------------------------------------------------------------------------


def test_evaluate_counts_the_not_assessable_and_ranks_the_rest() -> None:
    scores = pa.table(
        {
            "patient_id": list("abcdefg"),
            "died": [True, True, False, False, False, True, False],
            "risk_max": [0.9, 0.8, 0.1, 0.2, 0.3, None, None],
            "risk_mean": [0.5, 0.4, 0.1, 0.2, 0.3, None, None],
            "news2_max": [0.0, 3.0, 3.0, 0.0, 1.0, None, None],
            "news2_mean": [0.0, 1.0, 1.0, 0.0, 0.5, None, None],
            "windows": [5, 5, 5, 5, 5, 0, 0],
            "assessable": [True] * 5 + [False] * 2,
        }
    )
    r = evaluate_outcomes(scores, reps=50)
    assert r["patients"] == 7 and r["deaths"] == 3 and r["death_rate"] == pytest.approx(3 / 7)
    assert r["not_assessable"] == {"patients": 2, "share": pytest.approx(2 / 7), "deaths": 1}
    assert r["assessable"]["patients"] == 5 and r["assessable"]["deaths"] == 2
    assert r["scores"]["risk_max"]["auroc"] == 1.0
    assert r["scores"]["news2_max"]["auroc"] == pytest.approx(0.5)  # pairs: 0 vs 3, 0, 1 and 3 vs 3, 0, 1
    assert r["scores"]["windows"]["auroc"] == 0.5  # all tied
    lo, hi = r["gains"]["risk_max - news2_max"]
    assert lo <= hi and not r["enough_deaths"]


# --- end to end (a tiny cohort, the shipped checkpoint, the command) ----------------------------------------


def test_the_command_judges_a_tiny_cohort_and_writes_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    died = {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31}
    write_cohort(tmp_path, "tiny_icu", subjects=36, hours=30, died=died)
    out = tmp_path / "outcomes.json"
    argv = ["outcomes", "--real-data", str(tmp_path), "--cohort", "tiny_icu", "--patients", "30", "--out", str(out)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["selection"] == {
        "stays_with_readings": 36,
        "stays_with_outcome": 35,
        "no_outcome": 1,
        "seen_by_checkpoint": 0,  # a cohort the shipped checkpoint never loaded
        "eligible": 35,
        "drawn": 30,
    }
    assert r["patients"] == 30 and r["not_assessable"]["patients"] == 0
    # hourly readings, 24 h kept per stay: 24 windows each, nothing from hours 24-30
    assert r["windows_in_horizon"] == 30 * 24
    assert r["scores"]["news2_max"]["auroc"] == 1.0  # the dying patients' vitals score NEWS2 3 + 3
    assert "partial NEWS2" in capsys.readouterr().out


def test_the_command_refuses_a_cohort_the_checkpoint_saw_whole(tmp_path: Path) -> None:
    write_cohort(tmp_path, "physionet_challenge2012", subjects=5, hours=3, died={1})
    argv = ["outcomes", "--real-data", str(tmp_path), "--out", str(tmp_path / "o.json")]
    assert main(argv) == 2  # ConfigError: all 5 are within the 200 the shipped checkpoint drew


def test_the_card_shows_the_outcomes_beside_it_only_for_its_own_checkpoint(tmp_path: Path) -> None:
    scores = pa.table(
        {
            "patient_id": list("abcd"),
            "died": [True, False, False, True],
            "risk_max": [0.9, 0.1, 0.2, None],
            "risk_mean": [0.5, 0.1, 0.2, None],
            "news2_max": [1.0, 3.0, 0.0, None],
            "news2_mean": [1.0, 1.0, 0.0, None],
            "windows": [3, 2, 1, 0],
            "assessable": [True, True, True, False],
        }
    )
    result = evaluate_outcomes(scores, reps=20) | {
        "cohort": "icu",
        "model_version": "lstm-a",
        "command": "vitalstream outcomes",
        "seconds": 1.0,
        "config": {"seed": 0, "hours": 24.0},
        "selection": {"seen_by_checkpoint": 5, "drawn": 4, "eligible": 9, "no_outcome": 1},
    }
    (tmp_path / "outcomes.json").write_text(json.dumps(result))
    card = tmp_path / "model_card.md"
    assert _read_outcomes(card, "lstm-b") is None  # another checkpoint's results
    section = "\n".join(outcome_section(_read_outcomes(card, "lstm-a")))
    assert "4 patients, 2 deaths (50.0 %)" in section and "not assessable (no risk in the horizon) 1 (25.0 %" in section
    assert "| overall risk, max over the windows | 1.000 [" in section
