"""Real recordings as labelled data: tidy files -> canonical readings -> the pipeline's windows -> labels.

A tidy recording (`subject, ts_utc, stream, value, unit`; read by `sim.replay.read_tidy`, the same reader
`vitalstream replay --csv` uses) becomes what the live path would make of it:
- the readings the live path keeps: mmol/L converted with the stream contract's factor, values outside the
  expectation suites' ranges dropped (the live path quarantines them; a respiration rate of 0 is no
  measurement), duplicates of (patient, stream, event time) dropped (the first kept), CGM values beyond the
  reporting range kept at the bound and flagged `censored`;
- windows from `pipeline.features.window_features`, the code the live window step runs;
- events from `sim.simulate.detect_events`, the threshold definitions of the simulator's ground truth, on
  the readings each patient actually has (a patient without a CGM has no glucose events, and no glucose
  head is assessed for them).
Recorded outcomes (deaths, discharges) are not turned into labels here: `models/outcomes.py` judges the
shipped risk against in-hospital death on patients the checkpoint never saw. None of the converted recordings
carries activity data, so no exercise rule applies to their cardiac labels.

Cohorts ship in `data/real/<name>/` with their README (source, licence, attribution) and licence file;
`physionet_challenge2012` is not vendored (its licence is verified only second-hand): pass the folder that
holds it (`vitalstream train --real-data DIR`, e.g. a checkout of the shared data set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract import STREAMS, readings_suite_name, stream_contract, suite_json
from pipeline.features import window_features
from pipeline.readings import READINGS_SCHEMA, epoch_ms, span_days
from sim.replay import read_tidy
from sim.simulate import detect_events

REAL_DATA = Path(__file__).resolve().parents[1] / "data" / "real"
# name -> what it is (the sensor configuration it exercises)
COHORTS: dict[str, str] = {
    "t1d_uom": "adults with type 1 diabetes, free-living (UK): CGM 5/15 min + wrist heart rate 5 min",
    "ddatshr": "adolescents with type 1 diabetes (NL): flash CGM 15 min + scans, glucose only",
    "mimic3_demo": "ICU (MIMIC-III demo, all died later): charted heart and respiration rate ~hourly, sparse glucose",
    "physionet_challenge2012": "ICU stays, first 48 h: charted heart rate, respiration rate (some), lab glucose",
}


@dataclass
class Cohort:
    name: str
    readings: pa.Table  # READINGS_SCHEMA
    windows: pa.Table  # pipeline.features.window_schema()
    events: pa.Table  # patient_id, condition, onset, end
    patient_days: float  # time spanned by each patient's readings, summed


def cohort_file(name: str, roots: tuple[Path, ...] = ()) -> Path | None:
    """The cohort's readings.csv.gz under data/real/ or one of `roots` (first found), or None."""
    for root in (REAL_DATA, *roots):
        path = Path(root) / name / "readings.csv.gz"
        if path.exists():
            return path
    return None


def _value_range(stream: str) -> tuple[float | None, float | None, bool]:
    """(min, max, strict_min) of the stream's value expectation in its readings suite."""
    field = stream_contract(stream).value_field
    for exp in suite_json(readings_suite_name(stream))["expectations"]:
        kw = exp["kwargs"]
        if exp["type"] == "expect_column_values_to_be_between" and kw.get("column") == field:
            return kw.get("min_value"), kw.get("max_value"), bool(kw.get("strict_min"))
    return None, None, False


def tidy_readings(frame: pd.DataFrame, prefix: str = "") -> pa.Table:
    """A `read_tidy` frame -> canonical readings (READINGS_SCHEMA), as the live path would keep them; patient
    ids are `<prefix>:<subject>` when a prefix is given (unique across cohorts)."""
    stream = frame["stream"].to_numpy()
    value = frame["value"].to_numpy(np.float64).copy()
    keep = np.ones(len(frame), dtype=bool)
    censored = np.zeros(len(frame), dtype=bool)
    for name in STREAMS:
        rows = stream == name
        if not rows.any():
            continue
        contract = stream_contract(name)
        for unit_field, factor in contract.alternatives.items():  # e.g. glucose_mmol_l -> x 18.016
            unit = unit_field.removeprefix(f"{name}_").replace("_", "/")
            value[rows & (frame["unit"].to_numpy() == unit)] *= factor
        lo, hi, strict = _value_range(name)
        v = value[rows]
        bad = np.isnan(v)
        if lo is not None:
            bad |= (v <= lo) if strict else (v < lo)
        if hi is not None:
            bad |= v > hi
        keep[np.flatnonzero(rows)[bad]] = False
        if contract.reporting_range is not None:
            r_lo, r_hi = contract.reporting_range
            censored[rows] = (v <= r_lo) | (v >= r_hi)
            value[rows] = np.clip(v, r_lo, r_hi)
    subject = frame["subject"].astype(str).to_numpy()
    pid = np.char.add(f"{prefix}:", subject.astype(str)) if prefix else subject
    out = pd.DataFrame(
        {"patient_id": pid, "stream": stream, "event_ms": frame["event_ms"].to_numpy(), "value": value, "c": censored}
    )[keep]
    out = out.drop_duplicates(["patient_id", "stream", "event_ms"], keep="first")
    out = out.sort_values(["patient_id", "event_ms"], kind="stable")
    n = len(out)
    streams = out["stream"].to_numpy().astype(str)
    devices = np.char.add(np.char.add(streams, "-"), out["patient_id"].to_numpy().astype(str))
    return pa.table(
        {
            "patient_id": pa.array(out["patient_id"].to_numpy().astype(str), pa.string()),
            "device_id": pa.array(devices, pa.string()),
            "stream": pa.array(streams, pa.string()),
            "event_time": pa.array(out["event_ms"].to_numpy(np.int64), pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "value": pa.array(np.where(streams == "fall", (out["value"].to_numpy() > 0.5) * 1.0, out["value"])),
            "fall_confidence": pa.nulls(n, pa.float64()),
            "impact_g": pa.nulls(n, pa.float64()),
            "censored": pa.array(out["c"].to_numpy(bool)),
        },
        schema=READINGS_SCHEMA,
    )


def draw_patients(readings: pa.Table, max_patients: int, rng: np.random.Generator) -> np.ndarray:
    """The patients `sample` keeps: every one when there are at most `max_patients`, else that many drawn at
    random from `rng` (its first draw); the draw depends on the order in which patients first appear in
    `readings` (`tidy_readings` sorts them by id)."""
    ids = np.asarray(pc.unique(readings.column("patient_id")).to_pylist(), dtype=object)
    return ids if len(ids) <= max_patients else rng.choice(ids, max_patients, replace=False)


def sample(readings: pa.Table, max_patients: int, hours: float, seed: int) -> pa.Table:
    """Up to `max_patients` patients (drawn at random), each cut to one stretch of at most `hours` hours that
    starts at a random reading: records start anywhere, so early windows with short histories are common."""
    rng = np.random.default_rng(seed)
    chosen = draw_patients(readings, max_patients, rng)
    part = readings.filter(pc.is_in(readings.column("patient_id"), pa.array(chosen.tolist(), pa.string())))
    code = np.asarray(pc.dictionary_encode(part.column("patient_id")).combine_chunks().indices, dtype=np.int64)
    t = part.column("event_time").cast(pa.int64()).to_numpy()
    span = int(hours * 3_600_000)
    first = np.full(code.max() + 1 if len(code) else 0, np.iinfo(np.int64).max)
    last = np.full_like(first, np.iinfo(np.int64).min)
    np.minimum.at(first, code, t)
    np.maximum.at(last, code, t)
    # a start drawn uniformly where a whole stretch fits (the record's start when it is shorter)
    start = first + (rng.random(len(first)) * np.maximum(last - first - span, 0)).astype(np.int64)
    keep = (t >= start[code]) & (t < start[code] + span)
    return part.filter(pa.array(keep))


def cohort_readings(name: str, roots: tuple[Path, ...] = ()) -> pa.Table | None:
    """Every reading of the cohort as the live path would keep it (`tidy_readings`, patient ids prefixed with
    the cohort's name), before any patient is drawn; None when its file is not found."""
    path = cohort_file(name, roots)
    return None if path is None else tidy_readings(read_tidy(path), prefix=name)


def load_cohort(
    name: str,
    roots: tuple[Path, ...] = (),
    max_patients: int = 200,
    hours: float = 72.0,
    seed: int = 0,
    window_ms: int = 300_000,
) -> Cohort | None:
    """The cohort's readings (a random sample of patients and stretches), windows and threshold events;
    None when its file is not found."""
    every = cohort_readings(name, roots)
    if every is None:
        return None
    readings = sample(every, max_patients, hours, seed)
    windows = window_features(readings, window_ms)
    events = detect_events(readings)
    days = span_days(readings.column("patient_id"), epoch_ms(readings.column("event_time")), window_ms)
    return Cohort(name, readings, windows, events, days)
