"""Replay real recordings through the wire contract: the BIDMC ICU numerics (PhysioNet).

BIDMC PPG and Respiration Dataset v1.0.0 (Pimentel et al., IEEE TBME 2016; Goldberger et al., Circulation
2000): heart rate and respiration rate at 1 Hz from 53 ICU patients, 8 minutes each. A copy with its
licence and attribution ships in sim/bidmc_data/. SpO2 and pulse are not among VitalStream's streams and are
not sent. Missing samples (empty cells) are not sent: a device that has no value sends nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.simulate import Message

BIDMC_CSV = Path(__file__).resolve().parent / "bidmc_data" / "bidmc_numerics_1hz.csv.gz"
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
