"""Replay real recordings through the wire contract: the BIDMC ICU numerics (PhysioNet), or any tidy
recording (`subject, ts_utc, stream, value, unit`, one row per reading, as in ../shared/data/*/readings.csv.gz).

BIDMC PPG and Respiration Dataset v1.0.0 (Pimentel et al., IEEE TBME 2016; Goldberger et al., Circulation
2000): heart rate and respiration rate at 1 Hz from 53 ICU patients, 8 minutes each. A copy with its
licence and attribution ships in sim/bidmc_data/. SpO2 and pulse are not among VitalStream's streams and are
not sent. Missing samples (empty cells) are not sent: a device that has no value sends nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sim.simulate import Message

BIDMC_CSV = Path(__file__).resolve().parent / "bidmc_data" / "bidmc_numerics_1hz.csv.gz"
TIDY_COLUMNS = ("subject", "ts_utc", "stream", "value", "unit")
# tidy stream -> (wire field per unit, device prefix); units are compared case-insensitively
_TIDY: dict[str, tuple[dict[str, str], str]] = {
    "glucose": ({"mg/dl": "glucose_mg_dl", "mmol/l": "glucose_mmol_l"}, "cgm"),
    "heart_rate": ({"bpm": "heart_rate_bpm", "/min": "heart_rate_bpm"}, "hr"),
    "respiration": (dict.fromkeys(("breaths/min", "/min", "rpm"), "respiration_rate_per_min"), "rr"),
    "fall": ({"": "fall_detected", "bool": "fall_detected", "flag": "fall_detected"}, "fall"),
}
_STREAMS = {
    "heart_rate": ("hr_bpm", "heart_rate_bpm", "hr"),
    "respiration": ("resp_rate_breaths_per_min", "respiration_rate_per_min", "rr"),
}


def read_bidmc(path: Path = BIDMC_CSV) -> pd.DataFrame:
    """The numerics table: subject_id, time_s, hr_bpm, pulse_bpm, resp_rate_breaths_per_min, spo2_percent."""
    frame = pd.read_csv(path)
    missing = {"subject_id", "time_s", "hr_bpm", "resp_rate_breaths_per_min"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a BIDMC numerics table (missing columns {sorted(missing)})")
    return frame


def bidmc_messages(frame: pd.DataFrame, start_ms: int) -> list[Message]:
    """One message per present sample, in event-time order; Kafka timestamp = event time (a replay)."""
    out: list[Message] = []
    event_ms = start_ms + frame["time_s"].to_numpy(np.int64) * 1000
    subjects = frame["subject_id"].astype(str).to_numpy()
    for stream, (column, field, prefix) in _STREAMS.items():
        values = frame[column].to_numpy(np.float64)
        for i in np.flatnonzero(~np.isnan(values)).tolist():
            pid = subjects[i]
            body = f'{{"patient_id":"{pid}","device_id":"{prefix}-{pid}","ts":{event_ms[i]},"{field}":{values[i]:g}}}'
            out.append(Message(stream, pid.encode(), body.encode(), int(event_ms[i])))
    out.sort(key=lambda m: m.timestamp_ms)
    return out


def is_tidy(path: Path) -> bool:
    """Whether the file's header names the tidy columns (BIDMC numerics otherwise)."""
    header = pd.read_csv(path, nrows=0).columns
    return set(TIDY_COLUMNS) <= set(header)


def read_tidy(path: Path) -> pd.DataFrame:
    """A tidy recording: subject, ts_utc (ISO-8601 with offset or Z), stream (glucose, heart_rate, respiration,
    fall), value, unit. Raises ValueError with one line saying what is wrong."""
    frame = pd.read_csv(path, dtype={"subject": str, "stream": str, "unit": str}, keep_default_na=False)
    missing = [c for c in TIDY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"not a tidy recording: missing column(s) {', '.join(missing)} "
            f"(expected {', '.join(TIDY_COLUMNS)}; found {', '.join(map(str, frame.columns))})"
        )
    unknown = sorted(set(frame["stream"]) - set(_TIDY))
    if unknown:
        raise ValueError(f"unknown stream(s) {', '.join(unknown[:5])}; expected {', '.join(_TIDY)}")
    units = frame["unit"].str.lower().str.strip()
    bad = [(st, u) for st, u in set(zip(frame["stream"], units, strict=True)) if u not in _TIDY[st][0]]
    if bad:
        raise ValueError(f"unsupported unit(s) {', '.join(f'{u!r} for {st}' for st, u in sorted(bad)[:5])}")
    ts = pd.to_datetime(frame["ts_utc"], utc=True, errors="coerce", format="ISO8601")
    value = pd.to_numeric(frame["value"], errors="coerce")
    broken = ts.isna() | value.isna() | (frame["subject"].str.len() == 0)
    if broken.any():
        row = int(np.flatnonzero(broken.to_numpy())[0])
        raise ValueError(f"row {row + 2}: unreadable subject, ts_utc or value ({broken.sum()} such rows)")
    return pd.DataFrame(
        {
            "subject": frame["subject"],
            "event_ms": ts.dt.as_unit("ms").astype("int64").to_numpy(),
            "stream": frame["stream"],
            "value": value.to_numpy(np.float64),
            "unit": units,
        }
    )


def tidy_messages(frame: pd.DataFrame, shift_ms: int = 0) -> list[Message]:
    """One message per row of a tidy recording (`read_tidy`), in event-time order; Kafka timestamp = event
    time + `shift_ms` (0 keeps the recording's own times)."""
    out: list[Message] = []
    event_ms = frame["event_ms"].to_numpy(np.int64) + shift_ms
    subjects = frame["subject"].to_numpy()
    values = frame["value"].to_numpy(np.float64)
    streams = frame["stream"].to_numpy()
    units = frame["unit"].to_numpy()
    for i in np.argsort(event_ms, kind="stable").tolist():
        stream, pid = streams[i], subjects[i]
        fields, prefix = _TIDY[stream]
        field = fields[units[i]]
        value = "true" if stream == "fall" and values[i] > 0.5 else "false" if stream == "fall" else f"{values[i]:g}"
        pid_json, device_json = json.dumps(pid), json.dumps(f"{prefix}-{pid}")
        body = f'{{"patient_id":{pid_json},"device_id":{device_json},"ts":{event_ms[i]},"{field}":{value}}}'
        out.append(Message(stream, str(pid).encode(), body.encode(), int(event_ms[i])))
    return out
