"""Per-window, per-stream aggregates: the features analysts read and the model scores.

One pass: sort the closed readings by (patient, window, stream, event time), find group boundaries, and
reduce each group with NumPy `reduceat`. No Python loop over readings or windows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract import STREAMS

# Streams with a numeric vital, and the unit-carrying prefix of their feature columns.
VITALS: dict[str, str] = {
    "glucose": "glucose_mg_dl",
    "heart_rate": "heart_rate_bpm",
    "respiration": "respiration_rate_per_min",
}
STATS = ("mean", "min", "max", "last", "slope_per_min")
_STREAM_CODE = {s: i for i, s in enumerate(STREAMS)}

READINGS_SCHEMA = pa.schema(
    [
        ("patient_id", pa.string()),
        ("device_id", pa.string()),
        ("stream", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("value", pa.float64()),
        ("fall_confidence", pa.float64()),
        ("impact_g", pa.float64()),
        ("censored", pa.bool_()),
    ]
)


def window_columns() -> list[str]:
    cols = ["patient_id", "window_start", "window_end", "reading_count"]
    for stream, prefix in VITALS.items():
        cols += [f"{prefix}_{s}" for s in STATS] + [f"{stream}_count", f"{stream}_present"]
    cols += [
        "glucose_censored_count",
        "fall_count",
        "fall_confidence_max",
        "fall_impact_g_max",
        "fall_present",
    ]
    return cols


def window_schema() -> pa.Schema:
    ts = pa.timestamp("ms", tz="UTC")
    fields = []
    for c in window_columns():
        if c == "patient_id":
            t: pa.DataType = pa.string()
        elif c in ("window_start", "window_end"):
            t = ts
        elif c.endswith("_present"):
            t = pa.bool_()
        elif c.endswith("_count"):
            t = pa.int32()
        else:
            t = pa.float64()
        fields.append(pa.field(c, t))
    return pa.schema(fields)


def window_features(readings: pa.Table, window_ms: int) -> pa.Table:
    """Aggregate canonical readings (READINGS_SCHEMA) into one row per (patient, tumbling window)."""
    n = len(readings)
    if n == 0:
        return window_schema().empty_table()
    enc = pc.dictionary_encode(readings.column("patient_id")).combine_chunks()
    patient_code = np.asarray(enc.indices, dtype=np.int64)
    patients = enc.dictionary
    t_ms = _ms(readings.column("event_time"))
    w = t_ms // window_ms
    w0 = int(w.min())
    w_span = int(w.max()) - w0 + 1
    stream_code = _stream_codes(readings.column("stream"))
    window_key = patient_code * w_span + (w - w0)
    group_key = window_key * len(STREAMS) + stream_code
    order = np.lexsort((t_ms, group_key))
    g = group_key[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], n] - 1
    value = np.nan_to_num(readings.column("value").to_numpy(zero_copy_only=False)[order].astype(np.float64))
    count = (ends - starts + 1).astype(np.int64)
    # Time in minutes from the window start keeps the least-squares sums well conditioned.
    t_min = (t_ms[order] - w[order] * window_ms) / 60_000.0
    s_v = np.add.reduceat(value, starts)
    s_t = np.add.reduceat(t_min, starts)
    s_tv = np.add.reduceat(t_min * value, starts)
    s_tt = np.add.reduceat(t_min * t_min, starts)
    denom = count * s_tt - s_t**2
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where((count >= 2) & (denom > 1e-12), (count * s_tv - s_t * s_v) / denom, np.nan)
    g_stream = g[starts] % len(STREAMS)
    g_window = g[starts] // len(STREAMS)

    windows, row = np.unique(g_window, return_inverse=True)
    m = len(windows)
    win_index = windows % w_span + w0
    out: dict[str, object] = {
        "patient_id": patients.take(pa.array(windows // w_span)),
        "window_start": pa.array(win_index * window_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "window_end": pa.array((win_index + 1) * window_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "reading_count": np.bincount(row, weights=count, minlength=m).astype(np.int32),
    }
    stats = {
        "mean": s_v / count,
        "min": np.minimum.reduceat(value, starts),
        "max": np.maximum.reduceat(value, starts),
        "last": value[ends],
        "slope_per_min": slope,
    }
    for stream, prefix in VITALS.items():
        sel = g_stream == _STREAM_CODE[stream]
        for name, arr in stats.items():
            col = np.full(m, np.nan)
            col[row[sel]] = arr[sel]
            out[f"{prefix}_{name}"] = pa.array(col, pa.float64(), from_pandas=True)  # NaN -> null
        cnt = np.zeros(m, np.int32)
        cnt[row[sel]] = count[sel]
        out[f"{stream}_count"] = cnt
        out[f"{stream}_present"] = cnt > 0

    censored = readings.column("censored").to_numpy(zero_copy_only=False)[order].astype(np.float64)
    cens = np.add.reduceat(censored, starts)
    glucose = g_stream == _STREAM_CODE["glucose"]
    col = np.zeros(m, np.int32)
    col[row[glucose]] = cens[glucose]
    out["glucose_censored_count"] = col

    fall = g_stream == _STREAM_CODE["fall"]
    conf = np.nan_to_num(
        readings.column("fall_confidence").to_numpy(zero_copy_only=False)[order].astype(float), nan=-1.0
    )
    impact = np.nan_to_num(readings.column("impact_g").to_numpy(zero_copy_only=False)[order].astype(float), nan=-1.0)
    detected = (value > 0.5).astype(np.float64)
    fall_count = np.zeros(m, np.int32)
    fall_count[row[fall]] = np.add.reduceat(detected, starts)[fall]
    out["fall_count"] = fall_count
    for name, arr in (("fall_confidence_max", conf), ("fall_impact_g_max", impact)):
        col_f = np.full(m, np.nan)
        mx = np.maximum.reduceat(arr, starts)[fall]
        col_f[row[fall]] = np.where(mx < 0, np.nan, mx)
        out[name] = pa.array(col_f, pa.float64(), from_pandas=True)
    present = np.zeros(m, bool)
    present[row[fall]] = True
    out["fall_present"] = present
    return pa.table(out, schema=window_schema())


def _ms(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _stream_codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    enc = pc.dictionary_encode(col).combine_chunks()
    lookup = np.array([_STREAM_CODE[s] for s in enc.dictionary.to_pylist()], dtype=np.int64)
    return lookup[np.asarray(enc.indices, dtype=np.int64)]
